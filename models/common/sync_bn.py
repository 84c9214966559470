"""Synchronised BatchNorm that keeps timm's fused activations: the Lightning plugin behind `sync_batchnorm`.

torch's `nn.SyncBatchNorm.convert_sync_batchnorm` (what Lightning's own `TorchSyncBatchNorm` plugin calls) turns
timm's `BatchNormAct2d` (BatchNorm + activation + drop in one module: DarkNet, VoVNet's ConvNormAct, EfficientNet)
into a plain SyncBatchNorm and silently drops the activation, so a converted darknet53 loses every LeakyReLU.
timm's `convert_sync_batchnorm` maps it to `SyncBatchNormAct` instead, which keeps them; plain BatchNorm layers
(ResNets, the heads' own norms) become nn.SyncBatchNorm as before.

`TimmSyncBatchNorm` is that conversion as a Lightning `LayerSync` plugin, for the whole LightningModule (backbone and
heads). It subclasses Lightning's `TorchSyncBatchNorm` because Lightning accepts only that class next to
`sync_batchnorm=True`; experiments/configs/trainer/ddp.yaml lists it in `trainer.plugins`.
"""
from __future__ import annotations

import torch
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from timm.layers import convert_sync_batchnorm
from timm.layers.norm_act import BatchNormAct2d, SyncBatchNormAct
from torch import nn


class TimmSyncBatchNorm(TorchSyncBatchNorm):
    """`apply`: every BatchNorm -> SyncBatchNorm, timm's BatchNormAct2d -> SyncBatchNormAct (activation kept).
    `revert` (Lightning calls it after fitting): SyncBatchNormAct -> BatchNormAct2d, the rest as Lightning's."""

    def apply(self, model: nn.Module) -> nn.Module:
        return convert_sync_batchnorm(model)

    def revert(self, model: nn.Module) -> nn.Module:
        if not isinstance(model, SyncBatchNormAct):
            return super().revert(model)  # recurses into children through this method
        reverted = BatchNormAct2d(model.num_features, model.eps, model.momentum, model.affine,
                                  model.track_running_stats, apply_act=False)
        reverted.act, reverted.drop = model.act, model.drop
        if model.affine:
            with torch.no_grad():
                reverted.weight, reverted.bias = model.weight, model.bias
        reverted.running_mean = model.running_mean
        reverted.running_var = model.running_var
        reverted.num_batches_tracked = model.num_batches_tracked
        reverted.train(model.training)
        return reverted
