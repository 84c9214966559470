"""CenterMask and CenterMask-Lite (Lee & Park, CVPR 2020): FCOS boxes + spatial attention-guided masks.

    images (0..1) -> [RGB -> BGR if input_format="BGR"] -> resize (min/max size), normalise, pad to /32
      -> backbone (VoVNetV2 or any timm model): C3, C4, C5 -> FPN: P3..P5 + P6, P7 (strided convs from P5)
      -> FCOSHead on P3..P7 -> [loss] FCOS targets + losses (loss.py)  -> loss_fcos_cls, loss_fcos_box, loss_fcos_ctr
                            -> detections (class-wise NMS, top n; postprocess.py)
      -> boxes [train: detached top 100 + ground truth, IoU >= 0.5 foreground | test: top 50]
      -> LevelRoIAlign on P3..P5 (scale-adaptive level, 14x14, aligned)
      -> SAG-Mask head (class-specific 28x28)  -> loss_mask
      -> MaskIoU head (RoI features + mask)    -> loss_maskiou; mask score = box score x predicted mask IoU
      -> postprocess.py: boxes rescaled and clipped, empty ones dropped, masks pasted (aligned) at each input's
         own resolution

Labels are the datamodule's contiguous classes throughout: FCOS classifies with one sigmoid per class, and
"background" is the label `num_classes` inside the target assignment only.

Inference scores each detection twice, as centermask2 does: `scores` is the box score sqrt(cls x ctr) (box AP) and,
with the MaskIoU head, `mask_scores` = box score x predicted mask IoU (mask AP; the evaluator ranks masks by it).
The FCOS boxes stay unclipped through NMS and the mask branch; only the returned boxes are clipped to the image
(boxes left empty are dropped) and the masks pasted into them, as detectron2's detector_postprocess does.
"""
from __future__ import annotations

from typing import Any

import timm
import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from models.base import InstanceSegmentationModule
from models.centermask.fcos_head import FCOSHead
from models.centermask.fcos_targets import level_locations
from models.centermask.loss import CenterMaskLoss
from models.centermask.mask_rois import foreground_rois
from models.centermask.mask_targets import maskiou_targets
from models.centermask.maskiou_head import MaskIoUHead
from models.centermask.postprocess import CenterMaskPostProcess
from models.centermask.sag_mask_head import SAGMaskHead
from models.common.backbone import TimmBackbone
from models.common.fpn import FPN
from models.common.roi_pooler import LEVEL_RULES, LevelRoIAlign
from models.common.speed_split import ModelSplit
from models.common.transform import ResizeNormalizeTransform, backbone_pixel_stats
from models.common.vovnet import VOVNET_CONFIGS, VoVNetBackbone

INPUT_FORMATS = ("RGB", "BGR")
FPN_NORMS = ("none", "bn")


class CenterMask(InstanceSegmentationModule):
    """CenterMask / CenterMask-Lite with a VoVNetV2 or timm backbone.

    Args:
        num_classes: object classes, contiguous labels 0..num_classes-1.
        backbone: a timm model name, or a VoVNet configuration (`models.common.vovnet.VOVNET_CONFIGS`:
            "ese_vovnet19b", "ese_vovnet39b", "ese_vovnet57b", "ese_vovnet99b", ...); `out_indices` pick C3, C4, C5
            (strides 8, 16, 32: [2, 3, 4] for VoVNets and ResNets).
        ese_every_block: build the official VoVNetV2 (eSE in every OSA block, models.common.vovnet) instead of
            timm's model (eSE in the last block of each stage). Needed for centermask2 weights; CenterMask-Lite's
            V-19 ("ese_vovnet19b", which timm does not register) exists only this way.
        pretrained, pretrained_path, frozen_stages, norm, pretrained_download: see TimmBackbone; with `ese_every_block`,
            `pretrained_path` is an official (detectron2-format) ImageNet VoVNet such as vovnet39_ese_detectron2.pth
            and timm's cache is not used.
        fpn_channels: channels of P3..P7 (256; Lite 128). `fpn_norm`: "none" (official) or "bn" (helps training from
            scratch).
        min_size, max_size: short side resized to min_size unless the long side would exceed max_size (800/1333;
            Lite 600/1000); a list of min_size trains multi-scale (one drawn per image; the last is the test size).
            `pixel_mean`, `pixel_std`: normalisation on the 0..1 scale in `input_format` channel order ("RGB", or
            "BGR" for detectron2-trained weights; converted centermask2 weights carry detectron2's BGR means with
            std 1/255); None: the timm backbone weights' own statistics (ImageNet's for a VoVNet timm lacks).
        fcos_num_convs: conv-GN-ReLU layers per FCOS tower (4; Lite 2); `fcos_norm_groups` GroupNorm groups.
        prior_prob: initial classifier foreground probability. `sizes_of_interest`: the 4 boundaries of the 5
            levels' regression ranges (inclusive). `center_sampling_radius`: in strides (0 disables it).
        focal_alpha, focal_gamma: focal loss.
        score_thresh, pre_nms_top_n (per level), nms_thresh (class-wise): FCOS detection;
            `post_nms_top_n_train` detections feed the mask branch in training (with the ground truth),
            `post_nms_top_n_test` are the output at inference.
        roi_level_rule: "scale_adaptive" (CenterMask) or "mask_rcnn" (FPN's rule, the ablation);
            `roi_resolution`: side of the pooled RoI features (the masks are twice that).
        mask_iou_thresh, mask_batch_size_per_image, mask_positive_fraction: the foreground RoIs of the mask branch.
        mask_head_convs, mask_head_channels: SAG-Mask head (4 x 256; Lite 2 x 128); `sag_attention` False removes
            the spatial attention (ablation).
        maskiou: use the MaskIoU head; `maskiou_convs`, `maskiou_channels` (4 x 256; Lite 2 x 128),
            `maskiou_loss_weight`.
        mask_threshold: probability above which a pasted mask pixel is foreground.
        **kwargs: optimiser and schedule settings of InstanceSegmentationModule.
    """

    # Stages of the speed breakdown (models.common.speed_split): transform -> backbone -> FPN -> FCOS head ->
    # [locations, box decoding, class-wise NMS, top n] -> RoIAlign -> SAG-Mask head -> MaskIoU head (optional) ->
    # [mask scores, masks pasted at full resolution].
    SPEED_SPLIT = ModelSplit(
        stages={
            "preprocess": ("transform",),
            "backbone_neck": ("backbone", "neck"),
            "heads": ("fcos_head", "roi_pool", "mask_head", "maskiou_head"),
        },
        raw_outputs=("maskiou_head", "mask_head"),
    )

    def __init__(
        self,
        num_classes: int,
        backbone: str = "ese_vovnet39b",
        out_indices: list[int] = [2, 3, 4],
        ese_every_block: bool = True,
        pretrained: bool = False,
        pretrained_path: str | None = None,
        pretrained_download: bool = True,
        frozen_stages: int = 0,
        norm: str = "frozen_bn",
        fpn_channels: int = 256,
        fpn_norm: str = "none",
        min_size: int | list[int] = 800,
        max_size: int = 1333,
        pixel_mean: list[float] | None = None,
        pixel_std: list[float] | None = None,
        input_format: str = "RGB",
        fcos_num_convs: int = 4,
        fcos_norm_groups: int = 32,
        prior_prob: float = 0.01,
        sizes_of_interest: list[float] = [64, 128, 256, 512],
        center_sampling_radius: float = 1.5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        score_thresh: float = 0.05,
        pre_nms_top_n: int = 1000,
        nms_thresh: float = 0.6,
        post_nms_top_n_train: int = 100,
        post_nms_top_n_test: int = 50,
        roi_level_rule: str = "scale_adaptive",
        roi_resolution: int = 14,
        mask_iou_thresh: float = 0.5,
        mask_batch_size_per_image: int = 512,
        mask_positive_fraction: float = 0.25,
        mask_head_convs: int = 4,
        mask_head_channels: int = 256,
        sag_attention: bool = True,
        maskiou: bool = True,
        maskiou_convs: int = 4,
        maskiou_channels: int = 256,
        maskiou_loss_weight: float = 1.0,
        mask_threshold: float = 0.5,
        **kwargs: Any,
    ):
        super().__init__(num_classes=num_classes, **kwargs)
        if len(out_indices) != 3:
            raise ValueError(f"CenterMask: out_indices must pick C3, C4, C5 (three entries), got {out_indices}")
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"CenterMask: input_format must be one of {INPUT_FORMATS}, got {input_format!r}")
        if fpn_norm not in FPN_NORMS:
            raise ValueError(f"CenterMask: fpn_norm must be one of {FPN_NORMS}, got {fpn_norm!r}")
        if roi_level_rule not in LEVEL_RULES:
            raise ValueError(f"CenterMask: roi_level_rule must be one of {LEVEL_RULES}, got {roi_level_rule!r}")
        if len(sizes_of_interest) != 4 or list(sizes_of_interest) != sorted(sizes_of_interest):
            raise ValueError(f"CenterMask: sizes_of_interest needs 4 increasing boundaries (5 levels), got "
                             f"{sizes_of_interest}")
        if not (focal_gamma == 0 or focal_gamma >= 1) or not 0 <= focal_alpha <= 1:
            # d/dp (1 - p)^gamma is infinite at p = 1 for 0 < gamma < 1: a confident location would make NaN gradients.
            raise ValueError(f"CenterMask: focal_gamma must be 0 or >= 1 and focal_alpha in [0, 1], got "
                             f"{focal_gamma}, {focal_alpha}")
        if not 0 < mask_positive_fraction <= 1 or mask_batch_size_per_image < 1:
            raise ValueError("CenterMask: mask_batch_size_per_image must be >= 1 and mask_positive_fraction in (0, 1]")

        mean, std = backbone_pixel_stats(backbone, pixel_mean, pixel_std)
        self.transform = ResizeNormalizeTransform(min_size, max_size, mean, std)
        self.backbone = _build_backbone(
            backbone, out_indices, ese_every_block, pretrained, pretrained_path, frozen_stages, norm,
            pretrained_download,
        )
        if self.backbone.strides != [8, 16, 32]:
            raise ValueError(f"CenterMask: out_indices {out_indices} of {backbone!r} give strides "
                             f"{self.backbone.strides}, not C3-C5's [8, 16, 32]")
        self.neck = FPN(
            self.backbone.channels, self.backbone.strides, fpn_channels, extra_levels="p6p7", extra_source="p5",
            norm=fpn_norm,
        )
        self.fcos_head = FCOSHead(
            fpn_channels, num_classes, len(self.neck.strides), fcos_num_convs, fcos_norm_groups, prior_prob
        )
        self.roi_pool = LevelRoIAlign(self.backbone.strides, roi_resolution, roi_level_rule)
        self.mask_head = SAGMaskHead(fpn_channels, num_classes, mask_head_convs, mask_head_channels, sag_attention)
        self.maskiou_head = (
            MaskIoUHead(fpn_channels, num_classes, maskiou_convs, maskiou_channels, roi_resolution) if maskiou else None
        )
        self.criterion = CenterMaskLoss(
            num_classes, self.neck.strides, list(sizes_of_interest), center_sampling_radius, focal_alpha, focal_gamma,
            maskiou_loss_weight,
        )
        self.postprocess = CenterMaskPostProcess(
            score_thresh, pre_nms_top_n, nms_thresh, post_nms_top_n_train, post_nms_top_n_test, mask_threshold
        )

    # ---------------------------------------------------------------------------------------- model contract

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections for `images` (list of float [3, H_i, W_i] in 0..1), the same in train and eval mode.

        Returns per image: `boxes` float [K, 4] xyxy in the input's pixels, `scores` float [K] (box scores),
        `labels` int64 [K] contiguous, `masks` bool [K, H_i, W_i], with the MaskIoU head `mask_scores` float [K];
        K <= post_nms_top_n_test, in decreasing box score.
        """
        batch, _ = self.transform(self._to_input_format(images))
        levels, head = self._network(batch)
        return self._predictions(levels, head, batch, images)

    def compute_losses(self, images: list[Tensor], targets: list[dict[str, Any]]) -> dict[str, Tensor]:
        """loss_fcos_cls, loss_fcos_box, loss_fcos_ctr, loss_mask (+ loss_maskiou) of a batch, in any mode.

        `images`: list of float [3, H_i, W_i] in 0..1; `targets`: the datamodule's dicts (`boxes` [N, 4] xyxy
        pixels, `labels` [N] contiguous, `masks` [N, H_i, W_i], `iscrowd` [N]; crowd regions are left out).
        """
        batch, resized = self.transform(self._to_input_format(images), self._instance_targets(targets))
        levels, head = self._network(batch)
        return self._losses(levels, head, batch, resized)

    def predict_and_losses(
        self, images: list[Tensor], targets: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """`forward` and `compute_losses` sharing one backbone, FPN and FCOS-head pass (validation)."""
        batch, resized = self.transform(self._to_input_format(images), self._instance_targets(targets))
        levels, head = self._network(batch)
        return self._predictions(levels, head, batch, images), self._losses(levels, head, batch, resized)

    # ------------------------------------------------------------------------------------------------- parts

    def _network(self, batch: ImageList) -> tuple[list[Tensor], tuple[list[Tensor], list[Tensor], list[Tensor]]]:
        """Pyramid levels P3..P7 and the FCOS head's (cls_logits, box_regression, centerness) per level."""
        levels = list(self.neck(self.backbone(batch.tensors)).values())
        return levels, self.fcos_head(levels)

    def _locations(self, levels: list[Tensor]) -> list[Tensor]:
        """Per level float [H_l * W_l, 2]: the pixel centres of the level's cells."""
        sizes = [(int(level.shape[-2]), int(level.shape[-1])) for level in levels]
        return level_locations(sizes, self.neck.strides, levels[0].device)

    def _predictions(
        self, levels: list[Tensor], head: tuple[list[Tensor], ...], batch: ImageList, images: list[Tensor]
    ) -> list[dict[str, Tensor]]:
        """Test-time path: top-n FCOS detections (unclipped) -> masks (+ predicted IoUs) -> input resolution."""
        detections = self.postprocess.detections(head, self._locations(levels), self.neck.strides)
        boxes = [d["boxes"] for d in detections]
        labels = torch.cat([d["labels"] for d in detections])
        side = 2 * self.roi_pool.output_size
        mask_probs, predicted_iou = levels[0].new_zeros((0, 1, side, side)), None
        if labels.numel():
            pooled = self.roi_pool(levels[: len(self.roi_pool.strides)], boxes, batch.image_sizes)
            index = torch.arange(labels.numel(), device=labels.device)
            mask_probs = self.mask_head(pooled)[index, labels][:, None].sigmoid()
            if self.maskiou_head is not None:
                predicted_iou = self.maskiou_head(pooled, mask_probs)[index, labels]
        elif self.maskiou_head is not None:
            predicted_iou = levels[0].new_zeros(0)
        input_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        return self.postprocess(detections, mask_probs, predicted_iou, batch.image_sizes, input_sizes)

    def _losses(
        self, levels: list[Tensor], head: tuple[list[Tensor], ...], batch: ImageList, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Training path: FCOS losses on every location, mask (and MaskIoU) losses on foreground RoIs."""
        locations = self._locations(levels)
        losses = self.criterion.fcos(head, locations, targets)
        proposals = self.postprocess.detections(head, locations, self.neck.strides, training=True)
        hp = self.hparams
        rois = foreground_rois(
            [p["boxes"] for p in proposals], [t["boxes"] for t in targets], hp.mask_iou_thresh,
            hp.mask_batch_size_per_image, hp.mask_positive_fraction,
        )
        roi_boxes = [boxes for boxes, _ in rois]
        pooled = self.roi_pool(levels[: len(self.roi_pool.strides)], roi_boxes, batch.image_sizes)
        logits = self.mask_head(pooled)
        labels, crops, gt_areas = self.criterion.mask_targets(targets, rois, logits.shape[-1])
        losses["loss_mask"], selected = self.criterion.loss_mask(logits, labels, crops)
        if self.maskiou_head is not None:
            iou_targets = maskiou_targets(selected, crops, gt_areas, torch.cat(roi_boxes))
            # The mask goes in with its gradient, as in centermask2: the MaskIoU loss also shapes the mask head.
            predicted_iou = self.maskiou_head(pooled, selected[:, None].sigmoid())
            losses["loss_maskiou"] = self.criterion.loss_maskiou(predicted_iou, labels, iou_targets)
        return losses

    # ------------------------------------------------------------------------------------------------ inputs

    def _to_input_format(self, images: list[Tensor]) -> list[Tensor]:
        if self.hparams.input_format == "BGR":
            return [image.flip(0) for image in images]
        return list(images)

    def _instance_targets(self, targets: list[dict[str, Any]]) -> list[dict[str, Tensor]]:
        """Per image `boxes` float [N, 4], `labels` int64 [N], `masks` uint8 [N, H, W], crowd regions left out.

        A crowd region kept as an instance would teach the detector one box around a whole crowd (the official
        dataset mapper drops them too). Raises ValueError naming the image when a label is out of range.
        """
        num_classes = self.hparams.num_classes
        converted = []
        for target in targets:
            labels = target["labels"]
            keep = target["iscrowd"] == 0 if "iscrowd" in target else torch.ones_like(labels, dtype=torch.bool)
            labels = labels[keep].long()
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
                raise ValueError(
                    f"image {target.get('image_id', '?')}: target labels must be in [0, {num_classes}), got "
                    f"{labels.tolist()}"
                )
            converted.append(
                {"boxes": target["boxes"][keep].float(), "labels": labels, "masks": target["masks"][keep].to(torch.uint8)}
            )
        return converted


def _build_backbone(
    name: str,
    out_indices: list[int],
    ese_every_block: bool,
    pretrained: bool,
    pretrained_path: str | None,
    frozen_stages: int,
    norm: str,
    pretrained_download: bool = True,
) -> nn.Module:
    """The official VoVNetV2 structure (`ese_every_block`) or timm's model of that name."""
    if ese_every_block:
        if name not in VOVNET_CONFIGS:
            raise ValueError(f"CenterMask: ese_every_block needs a VoVNet backbone ({', '.join(VOVNET_CONFIGS)}), "
                             f"got {name!r}")
        if pretrained and pretrained_path is None:
            raise ValueError(
                f"CenterMask: pretrained=True with ese_every_block=True needs pretrained_path: the official ImageNet "
                f"VoVNet (e.g. vovnet39_ese_detectron2.pth); timm has no weights for the official {name!r} structure"
            )
        if pretrained_path is not None and not pretrained:
            raise ValueError(f"CenterMask: pretrained_path={pretrained_path!r} given with pretrained=False")
        return VoVNetBackbone(name, out_indices, True, pretrained_path, frozen_stages, norm)
    if name in VOVNET_CONFIGS and not timm.is_model(name):
        raise ValueError(f"CenterMask: timm registers no {name!r} model; use ese_every_block: true (the official "
                         f"VoVNetV2 structure; for single-block stages such as V-19 it is the same network)")
    return TimmBackbone(name, out_indices, pretrained, pretrained_path, frozen_stages, norm, pretrained_download)
