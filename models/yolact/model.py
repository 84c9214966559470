"""YOLACT (Bolya et al., 2019): real-time one-stage instance segmentation by prototypes x coefficients.

    images (0..1, any size) -> resize to input_size x input_size (aspect not kept) -> normalise
      -> TimmBackbone (C3, C4, C5) -> YolactFPN (P3..P7)
      -> Protonet(P3) -> k prototypes [B, k, 2*H3, 2*W3]
      -> PredictionHead shared over P3..P7 -> box deltas, class logits (C+1), tanh coefficients per anchor
      -> [training] semantic head on P3 + YolactLoss        -> loss_cls, loss_box, loss_mask, loss_semantic
      -> [inference] YolactPostProcess (Fast NMS, mask assembly) -> detections at each image's own size

Labels: the class head's index 0 is background, contiguous label c is index c + 1.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import InstanceSegmentationModule
from models.common.anchors import grid_anchors
from models.common.backbone import TimmBackbone
from models.common.nms import NMS_MODES
from models.common.speed_split import ModelSplit
from models.common.transform import backbone_pixel_stats, input_scale
from models.yolact.fpn import YolactFPN
from models.yolact.head import PredictionHead
from models.yolact.loss import YolactLoss, YolactOutputs, YolactTarget
from models.yolact.postprocess import YolactPostProcess
from models.yolact.protonet import Protonet

# The official ResNet normalisation (RGB means / stds on the 0-255 scale), here on the 0-1 scale.
RESNET_MEAN = [123.68 / 255, 116.78 / 255, 103.94 / 255]
RESNET_STD = [58.40 / 255, 57.12 / 255, 57.38 / 255]


class YOLACT(InstanceSegmentationModule):
    """YOLACT with any timm backbone.

    Args:
        num_classes: object classes (background excluded), contiguous labels 0..num_classes-1.
        backbone: timm model name ("resnet50", "resnet101", "darknet53", ...); `out_indices` pick C3, C4, C5 from
            its feature_info ([2, 3, 4] for ResNets, [3, 4, 5] for darknet53). `pretrained`, `pretrained_path`,
            `pretrained_download`, `frozen_stages`, `norm`: see models.common.backbone.TimmBackbone. The official code trains BatchNorm
            (norm "bn") at 8 images per GPU and freezes it below 6 ("frozen_bn").
        fpn_channels: channels of P3..P7 (and of the head's input); `num_extra_levels` stride-2 levels above P5.
        num_prototypes: k; `proto_channels` the Protonet's hidden width; `head_channels` the head's upfeature width.
        input_size: the side of the square network input (550 official; 400 / 700 variants).
        anchor_scales: one anchor scale per level P3..P7, in pixels of the input (official 24..384 at 550, scaled
            by input_size / 550 in the 400 / 700 configs); `aspect_ratios` width / height ratios.
        square_anchors: the official v1 configs' quirk (anchors square, side scale * sqrt(ratio)); needed to reuse
            their weights.
        pixel_mean, pixel_std: per-channel RGB normalisation on the 0..1 scale (the official ResNet values are
            RESNET_MEAN / RESNET_STD; DarkNet: mean 0, std 1); None: the backbone weights' own (timm's pretrained
            config). Images may be uint8 0..255 or float 0..1.
        pos_iou_thresh, neg_iou_thresh, crowd_iou_thresh: anchor matching (models.yolact.targets).
        negpos_ratio, box_loss_weight, mask_loss_weight, semantic_loss_weight, masks_to_train: the loss
            (models.yolact.loss); semantic_loss_weight 0 drops the semantic head's loss (the head still exists).
        score_thresh, nms ("fast" | "cross_class" | "batched"), nms_iou_thresh, nms_top_k, detections_per_img:
            inference (models.yolact.postprocess).
        **kwargs: optimiser and schedule settings of InstanceSegmentationModule.
    """

    # The official recipe: torch.optim.SGD(net.parameters(), weight_decay=5e-4) decays every parameter, and
    # train.py freezes BatchNorm when a GPU holds fewer than 6 images.
    WEIGHT_DECAY_RULE = "all"
    BN_MIN_BATCH = 6

    # Stages of the speed breakdown (models.common.speed_split): resize + normalise (a method, so in the
    # remainder) -> backbone -> FPN -> Protonet -> shared prediction head -> [anchors, box decoding, Fast NMS,
    # prototypes x coefficients, crop, up-sampling to full resolution].
    SPEED_SPLIT = ModelSplit(
        stages={"backbone_neck": ("backbone", "neck"), "heads": ("protonet", "head")},
        raw_outputs=("head",),
    )

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        out_indices: list[int] = [2, 3, 4],
        pretrained: bool = False,
        pretrained_path: str | None = None,
        pretrained_download: bool = True,
        frozen_stages: int = 0,
        norm: str = "bn",
        fpn_channels: int = 256,
        num_extra_levels: int = 2,
        num_prototypes: int = 32,
        proto_channels: int = 256,
        head_channels: int = 256,
        input_size: int = 550,
        anchor_scales: list[float] = [24, 48, 96, 192, 384],
        aspect_ratios: list[float] = [1.0, 0.5, 2.0],
        square_anchors: bool = False,
        pixel_mean: list[float] | None = None,
        pixel_std: list[float] | None = None,
        pos_iou_thresh: float = 0.5,
        neg_iou_thresh: float = 0.4,
        crowd_iou_thresh: float = 0.7,
        negpos_ratio: int = 3,
        box_loss_weight: float = 1.5,
        mask_loss_weight: float = 6.125,
        semantic_loss_weight: float = 1.0,
        masks_to_train: int = 100,
        score_thresh: float = 0.05,
        nms: str = "fast",
        nms_iou_thresh: float = 0.5,
        nms_top_k: int = 200,
        detections_per_img: int = 100,
        **kwargs: Any,
    ):
        super().__init__(num_classes=num_classes, **kwargs)
        if len(out_indices) != 3:
            raise ValueError(f"YOLACT: out_indices must pick C3, C4, C5 (three entries), got {out_indices}")
        if len(anchor_scales) != 3 + num_extra_levels:
            raise ValueError(
                f"YOLACT: anchor_scales needs one scale per level ({3 + num_extra_levels}), got {anchor_scales}"
            )
        if nms not in NMS_MODES:
            raise ValueError(f"YOLACT: nms must be one of {NMS_MODES}, got {nms!r}")
        if input_size < 32:
            raise ValueError(f"YOLACT: input_size must be >= 32, got {input_size}")
        if not 0 <= neg_iou_thresh <= pos_iou_thresh <= 1:
            raise ValueError(
                f"YOLACT: need 0 <= neg_iou_thresh <= pos_iou_thresh <= 1, got {neg_iou_thresh}, {pos_iou_thresh}"
            )
        pixel_mean, pixel_std = backbone_pixel_stats(backbone, pixel_mean, pixel_std)

        self.backbone = TimmBackbone(
            backbone, out_indices, pretrained, pretrained_path, frozen_stages, norm, pretrained_download
        )
        self.neck = YolactFPN(self.backbone.channels, fpn_channels, num_extra_levels)
        self.protonet = Protonet(fpn_channels, proto_channels, num_prototypes)
        self.head = PredictionHead(fpn_channels, num_classes, len(aspect_ratios), num_prototypes, head_channels)
        self.semantic_head = nn.Conv2d(fpn_channels, num_classes, 1)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)
        self.criterion = YolactLoss(
            pos_iou_thresh, neg_iou_thresh, crowd_iou_thresh, negpos_ratio, box_loss_weight, mask_loss_weight,
            semantic_loss_weight, masks_to_train,
        )
        self.postprocess = YolactPostProcess(score_thresh, nms, nms_iou_thresh, nms_top_k, detections_per_img)
        self._anchor_cache: dict[tuple, Tensor] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform weights and zero biases for every conv outside the backbone, as the official."""
        for part in (self.neck, self.protonet, self.head, self.semantic_head):
            for module in part.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.xavier_uniform_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    # ---------------------------------------------------------------------------------------- model contract

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections for `images` (list of float [3, H_i, W_i] in 0..1), the same in train and eval mode.

        Returns per image: `boxes` float [K, 4] xyxy in the input's pixels, `scores` float [K], `labels` int64 [K]
        contiguous, `masks` bool [K, H_i, W_i].
        """
        outputs = self.network(self.preprocess(images), semantic=False)
        return self.postprocess(outputs, _sizes(images))

    def compute_losses(self, images: list[Tensor], targets: list[dict[str, Any]]) -> dict[str, Tensor]:
        """loss_cls, loss_box, loss_mask, loss_semantic of a batch (the datamodule's targets), in any mode."""
        outputs = self.network(self.preprocess(images), semantic=True)
        return self.criterion(outputs, self.training_targets(images, targets))

    def predict_and_losses(
        self, images: list[Tensor], targets: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """`forward` and `compute_losses` sharing one network pass (validation)."""
        outputs = self.network(self.preprocess(images), semantic=True)
        return self.postprocess(outputs, _sizes(images)), self.criterion(outputs, self.training_targets(images, targets))

    # ------------------------------------------------------------------------------------------------- parts

    def preprocess(self, images: list[Tensor]) -> Tensor:
        """list of [3, H_i, W_i] in 0..1 -> normalised [B, 3, S, S] (bilinear, aspect not kept, as the official)."""
        size = self.hparams.input_size
        batch = torch.stack(
            [F.interpolate(image[None].float(), size=(size, size), mode="bilinear", align_corners=False)[0]
             for image in images]
        )
        scale = input_scale(images)  # uint8 images: 255x the statistics, equal to normalising x / 255
        return (batch - self.pixel_mean * scale) / (self.pixel_std * scale)

    def network(self, batch: Tensor, semantic: bool) -> YolactOutputs:
        """Normalised [B, 3, S, S] -> YolactOutputs (semantic logits only when `semantic`)."""
        levels = self.neck(self.backbone(batch))
        prototypes = self.protonet(levels[0])
        box_deltas, class_logits, coefficients = self.head(levels)
        input_size = (int(batch.shape[-2]), int(batch.shape[-1]))
        anchors = self._anchors([(int(level.shape[-2]), int(level.shape[-1])) for level in levels], input_size,
                                batch.device)
        return YolactOutputs(
            box_deltas=box_deltas,
            class_logits=class_logits,
            coefficients=coefficients,
            prototypes=prototypes,
            semantic_logits=self.semantic_head(levels[0]) if semantic else None,
            anchors=anchors,
            input_size=input_size,
        )

    def _anchors(self, feature_sizes: list[tuple[int, int]], input_size: tuple[int, int], device: torch.device
                 ) -> Tensor:
        """The anchors of an input size, built once per size and device (as the official `make_priors`): rebuilding
        them cost ~90 ops and a host-to-device copy per forward. A plain dict, so never in the state dict."""
        key = (tuple(feature_sizes), input_size, str(device))
        if key not in self._anchor_cache:
            self._anchor_cache[key] = grid_anchors(
                feature_sizes, input_size, list(self.hparams.anchor_scales), list(self.hparams.aspect_ratios),
                square=self.hparams.square_anchors, device=device,
            )
        return self._anchor_cache[key]

    def training_targets(self, images: list[Tensor], targets: list[dict[str, Any]]) -> list[YolactTarget]:
        """The datamodule's targets in the network-input frame, crowd regions split off."""
        size = self.hparams.input_size
        converted = []
        for image, target in zip(images, targets):
            height, width = image.shape[-2:]
            # Scaled by Python numbers: a scale tensor built here would be a blocking host-to-device copy per image.
            boxes = target["boxes"].to(image.device, torch.float32).clone()
            boxes[:, 0::2] *= size / width
            boxes[:, 1::2] *= size / height
            crowd = target["iscrowd"].to(image.device).bool()
            # Two index lists (the split's size is data-dependent: one host sync each), not four boolean masks.
            kept, crowds = torch.nonzero(~crowd).squeeze(1), torch.nonzero(crowd).squeeze(1)
            converted.append(
                YolactTarget(
                    boxes=boxes[kept],
                    labels=target["labels"].to(image.device)[kept],
                    masks=target["masks"].to(image.device)[kept],
                    crowd_boxes=boxes[crowds],
                )
            )
        return converted


def _sizes(images: list[Tensor]) -> list[tuple[int, int]]:
    return [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
