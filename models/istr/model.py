"""ISTR (Hu et al., 2021): end-to-end instance segmentation with transformers and a fixed PCA mask codec (V1).

    images (0..1) -> resize (short side min_size, long side <= max_size), normalise, pad to /32
      -> TimmBackbone -> FPN (P2..P5)
      -> queries: N learnable boxes (the whole image at start; optionally a grid) and features = sum over levels
         of the spatial mean of P_l, plus N learnable positional embeddings
      -> DynamicHead: S stages of RoIAlign -> self-attention -> dynamic interaction -> FFN -> class / box / mask
         embedding, boxes refined and detached stage to stage
      -> [training] Hungarian matching per stage + ISTRLoss      -> loss_cls, loss_box, loss_giou, loss_mask, loss_dice
      -> [inference] top-k over queries x classes, masks decoded by the codec and pasted at the input resolution

The mask codec (models.istr.mask_codec) is fixed, never trained, and lives in buffers, so every checkpoint carries
the codec its weights were trained with. Where it comes from (`codec_path`):
  - a file from `maskbench fit-codec` (or a converted official checkpoint): loaded at construction; its K and mask
    size must equal codec_components / codec_mask_size;
  - a path to a file that does not exist yet: at the start of `fit` the codec is fitted on the datamodule's
    training split and written there;
  - None: the same fit at the start of `fit`, cached under $MASKBENCH_CACHE/istr_codecs (keyed by the annotation
    file, K, M and codec_seed), so a later run on the same data reuses it.
The fit is deterministic (seeded soft-logit noise, dataset order). `codec: dct` uses ISTR V2's data-free DCT codec
instead and needs none of this.

Labels are the datamodule's contiguous labels directly (sigmoid classifier, no background class).
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from models.base import InstanceSegmentationModule
from models.common.backbone import TimmBackbone
from models.common.fpn import FPN
from models.common.speed_split import ModelSplit
from models.common.transform import ResizeNormalizeTransform, backbone_pixel_stats
from models.istr.head import DynamicHead, StageOutput
from models.istr.loss import ISTRLoss
from models.istr.mask_codec import CODEC_KINDS, CodecError, PCAMaskCodec, build_codec
from models.istr.matcher import HungarianMatcher
from models.istr.postprocess import ISTRPostProcess
from models.istr.targets import match_targets

PROPOSAL_INITS = ("image", "grid")


class ISTR(InstanceSegmentationModule):
    """ISTR with any timm backbone.

    Args:
        num_classes: object classes, contiguous labels 0..num_classes-1.
        backbone, out_indices, pretrained, pretrained_path, pretrained_download, frozen_stages, norm: the timm backbone (see
            models.common.backbone.TimmBackbone); out_indices pick C2..C5 ([1, 2, 3, 4] for ResNets). The official
            model: ResNet-50/101, frozen BatchNorm, stem + res2 frozen (frozen_stages 2). Trained from scratch:
            norm "bn", frozen_stages 0.
        fpn_channels: width of P2..P5 and of the head (the official 256); `fpn_norm` "none" (official) or "bn".
        min_size, max_size: input resize (short side min_size unless the long side would exceed max_size); a list
            of min_size trains multi-scale (one drawn per image; the last is the test size).
        num_queries: N learnable query boxes; num_stages: head stages S; num_heads: self-attention heads;
            dim_feedforward: FFN width; dynamic_dim: the dynamic interaction's width D; pooler_resolution: RoI side;
            num_cls_layers / num_reg_layers / num_mask_layers: tower depths; dropout; prior_prob: the focal
            classifier's initial foreground probability.
        codec: "pca" (V1, fitted) or "dct" (V2's data-free codec); codec_path, codec_components (K),
            codec_mask_size (M), codec_seed: see the module docstring.
        class_weight, l1_weight, giou_weight, mask_weight, dice_weight: loss weights, also the matching costs
            (cost_class, cost_l1, cost_giou, cost_mask; the dice term has no cost); focal_alpha / focal_gamma;
            deep_supervision: supervise every stage (else the last only).
        detections_per_img, mask_threshold, stage_average: inference (models.istr.postprocess); `stage_average`
            is official V2's rule (class logits averaged over stages 3-6, boxes and masks of the last), off in V1.
        proposal_init: initial value of the learnable query boxes: "image" (official: every box the whole image) or
            "grid" (Sparse R-CNN's grid initialisation, ablated in its paper: box i centred on cell i of a
            near-square grid, twice the cell's size, so queries start on distinct regions).
        pixel_mean, pixel_std: normalisation of the RGB input on the 0..1 scale; None: the backbone weights' own
            (timm's pretrained config; the official's 123.675/116.28/103.53, 58.395/57.12/57.375 are ImageNet's).
        **kwargs: optimiser and schedule settings of InstanceSegmentationModule (official: AdamW 2.5e-5, weight
            decay 1e-4, warm-up 1000 steps from 0.01, gradient clipping 1.0 via the trainer).
    """

    # The official train_net.py gives every trainable parameter the weight decay (no norm or bias exemption).
    WEIGHT_DECAY_RULE = "all"

    # Stages of the speed breakdown (models.common.speed_split): transform -> backbone -> FPN -> [query boxes and
    # features] -> dynamic head (every stage: RoIAlign, attention, dynamic interaction, class / box /
    # mask-embedding outputs) -> [top-k, codec decoding, pasting].
    SPEED_SPLIT = ModelSplit(
        stages={"preprocess": ("transform",), "backbone_neck": ("backbone", "neck"), "heads": ("head",)},
        raw_outputs=("head",),
    )

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        out_indices: list[int] = [1, 2, 3, 4],
        pretrained: bool = False,
        pretrained_path: str | None = None,
        pretrained_download: bool = True,
        frozen_stages: int = 2,
        norm: str = "frozen_bn",
        fpn_channels: int = 256,
        fpn_norm: str = "none",
        min_size: int | list[int] = 800,
        max_size: int = 1333,
        num_queries: int = 300,
        num_stages: int = 6,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        dynamic_dim: int = 64,
        pooler_resolution: int = 7,
        num_cls_layers: int = 3,
        num_reg_layers: int = 3,
        num_mask_layers: int = 3,
        dropout: float = 0.0,
        prior_prob: float = 0.01,
        codec: str = "pca",
        codec_path: str | None = None,
        codec_components: int = 60,
        codec_mask_size: int = 28,
        codec_seed: int = 0,
        class_weight: float = 2.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        mask_weight: float = 2.0,
        dice_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        deep_supervision: bool = True,
        detections_per_img: int = 100,
        mask_threshold: float = 0.5,
        stage_average: bool = False,
        proposal_init: str = "image",
        pixel_mean: list[float] | None = None,
        pixel_std: list[float] | None = None,
        **kwargs: Any,
    ):
        super().__init__(num_classes=num_classes, **kwargs)
        if len(out_indices) < 1:
            raise ValueError("ISTR: out_indices must pick at least one backbone level")
        if codec not in CODEC_KINDS:
            raise ValueError(f"ISTR: codec must be one of {CODEC_KINDS}, got {codec!r}")
        if codec == "dct" and codec_path is not None:
            raise ValueError(f"ISTR: codec 'dct' is data-free; codec_path={codec_path!r} applies to 'pca' only")
        if fpn_channels % num_heads:
            raise ValueError(f"ISTR: fpn_channels ({fpn_channels}) must be divisible by num_heads ({num_heads})")
        for name, value in (("num_queries", num_queries), ("num_stages", num_stages)):
            if value < 1:
                raise ValueError(f"ISTR: {name} must be >= 1, got {value}")
        if proposal_init not in PROPOSAL_INITS:
            raise ValueError(f"ISTR: proposal_init must be one of {PROPOSAL_INITS}, got {proposal_init!r}")
        if not 0 < prior_prob < 1:
            raise ValueError(f"ISTR: prior_prob must be in (0, 1), got {prior_prob}")

        mean, std = backbone_pixel_stats(backbone, pixel_mean, pixel_std)
        self.transform = ResizeNormalizeTransform(min_size, max_size, mean, std)
        self.backbone = TimmBackbone(
            backbone, out_indices, pretrained, pretrained_path, frozen_stages, norm, pretrained_download
        )
        self.neck = FPN(self.backbone.channels, self.backbone.strides, fpn_channels, extra_levels="none",
                        norm=fpn_norm)
        self.init_proposal_boxes = nn.Embedding(num_queries, 4)
        self.pos_embeddings = nn.Embedding(num_queries, fpn_channels)
        self.head = DynamicHead(
            num_classes, codec_components, self.neck.strides, num_stages, fpn_channels, num_heads, dim_feedforward,
            dynamic_dim, pooler_resolution, num_cls_layers, num_reg_layers, num_mask_layers, dropout, prior_prob,
        )
        self.codec = build_codec(codec, codec_components, codec_mask_size)
        if isinstance(self.codec, PCAMaskCodec) and codec_path is not None and os.path.isfile(codec_path):
            self.codec.load_file(codec_path)
        self.criterion = ISTRLoss(
            num_classes,
            HungarianMatcher(class_weight, l1_weight, giou_weight, mask_weight, focal_alpha, focal_gamma),
            class_weight, l1_weight, giou_weight, mask_weight, dice_weight, focal_alpha, focal_gamma,
            deep_supervision,
        )
        self.postprocess = ISTRPostProcess(detections_per_img, mask_threshold, stage_average)
        with torch.no_grad():
            self.init_proposal_boxes.weight.copy_(initial_proposals(num_queries, proposal_init))

    # ---------------------------------------------------------------------------------------- model contract

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections for `images` (list of float [3, H_i, W_i] in 0..1), the same in train and eval mode.

        Returns per image: `boxes` float [K, 4] xyxy in the input's pixels, `scores` float [K], `labels` int64 [K]
        contiguous, `masks` bool [K, H_i, W_i]; K = min(detections_per_img, num_queries * num_classes).
        """
        stages, resized_sizes = self.network(images)
        return self.postprocess(stages, self.codec, resized_sizes, _sizes(images))

    def compute_losses(self, images: list[Tensor], targets: list[dict[str, Any]]) -> dict[str, Tensor]:
        """loss_cls, loss_box, loss_giou, loss_mask, loss_dice of a batch (the datamodule's targets), in any mode."""
        stages, resized_sizes = self.network(images)
        return self._losses(stages, resized_sizes, images, targets)

    def predict_and_losses(
        self, images: list[Tensor], targets: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """`forward` and `compute_losses` sharing one network pass (validation)."""
        stages, resized_sizes = self.network(images)
        predictions = self.postprocess(stages, self.codec, resized_sizes, _sizes(images))
        return predictions, self._losses(stages, resized_sizes, images, targets)

    # ------------------------------------------------------------------------------------------------- parts

    def network(self, images: list[Tensor]) -> tuple[list[StageOutput], list[tuple[int, int]]]:
        """list of [3, H_i, W_i] -> every stage's outputs (boxes in the resized frame) and the resized sizes."""
        batch, _ = self.transform(images)
        features = list(self.neck(self.backbone(batch.tensors)).values())
        resized_sizes = [(int(h), int(w)) for h, w in batch.image_sizes]
        # Boxes in float32 whatever the features' precision (bfloat16 would round them to 4-8 px steps), scaled by
        # Python numbers: a size tensor built here would be a blocking host-to-device copy on every forward.
        unit = box_convert(self.init_proposal_boxes.weight.float(), "cxcywh", "xyxy")  # [N, 4] in 0..1
        boxes = torch.stack(
            [torch.stack((unit[:, 0] * w, unit[:, 1] * h, unit[:, 2] * w, unit[:, 3] * h), dim=1)
             for h, w in resized_sizes]
        )  # [B, N, 4]
        image_features = torch.stack([level.mean(dim=(2, 3)) for level in features]).sum(0)  # [B, C]
        queries = image_features[:, None, :] + self.pos_embeddings.weight[None]  # [B, N, C]
        return self.head(features, boxes, queries), resized_sizes

    def _losses(self, stages: list[StageOutput], resized_sizes: list[tuple[int, int]], images: list[Tensor],
                targets: list[dict[str, Any]]) -> dict[str, Tensor]:
        wanted = match_targets(targets, _sizes(images), resized_sizes, self.codec, self.hparams.codec_mask_size,
                               stages[-1].boxes.device)
        return self.criterion(stages, wanted, self.codec)

    # ------------------------------------------------------------------------------------------------ codec

    def setup(self, stage: str) -> None:
        """At the start of `fit`, fit the PCA codec on the training split when none was loaded (module docstring)."""
        if stage == "fit":
            self.prepare_codec(self.trainer.datamodule, self.trainer)

    def prepare_codec(self, datamodule, trainer=None) -> str | None:
        """Load the PCA codec fitted on `datamodule`'s training split (fitting and caching it first if no file
        exists) when none is loaded yet; returns the file loaded, None when nothing had to be (a DCT codec, or a
        codec already in place). Under a `trainer`, only global rank 0 fits and the others wait for it. Also what
        `maskbench bench` calls to time a config that names no codec file."""
        if not isinstance(self.codec, PCAMaskCodec) or bool(self.codec.ready):
            return None
        from models.istr.codec_data import cached_codec_path, ensure_codec_file  # the data stack, only when fitting

        if datamodule is None or not hasattr(datamodule, "split_paths"):
            raise CodecError(
                "ISTR: no mask codec and no datamodule with split_paths() to fit one on: give model.codec_path "
                "(maskbench fit-codec --config DATA.yaml --components K --out FILE)"
            )
        image_dir, ann_file = datamodule.split_paths("train")
        hp = self.hparams
        path = hp.codec_path or str(cached_codec_path(ann_file, hp.codec_components, hp.codec_mask_size, hp.codec_seed))
        if trainer is None or trainer.is_global_zero:
            workers = int(getattr(datamodule, "hparams", {}).get("num_workers", 0))
            ensure_codec_file(path, image_dir, ann_file, hp.codec_components, hp.codec_mask_size, hp.codec_seed,
                              workers)
        if trainer is not None:
            trainer.strategy.barrier("istr-codec")
        self.codec.load_file(path)
        return path


def initial_proposals(num_queries: int, kind: str = "image") -> Tensor:
    """float [N, 4] normalised (cx, cy, w, h) starting boxes: "image" (0.5, 0.5, 1, 1) or "grid" (see ISTR)."""
    if kind == "image":
        return torch.tensor([0.5, 0.5, 1.0, 1.0]).repeat(num_queries, 1)
    rows = max(1, int(num_queries**0.5))
    cols = -(-num_queries // rows)
    index = torch.arange(num_queries)
    centre_x = (index % cols + 0.5) / cols
    centre_y = (index // cols + 0.5) / rows
    return torch.stack([centre_x, centre_y, torch.full_like(centre_x, min(1.0, 2.0 / cols)),
                        torch.full_like(centre_y, min(1.0, 2.0 / rows))], dim=1)


def _sizes(images: list[Tensor]) -> list[tuple[int, int]]:
    return [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
