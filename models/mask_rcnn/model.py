"""Mask R-CNN (He et al., 2017) with any timm backbone + FPN, assembled from torchvision's detection parts.

    images (uint8 or 0..1) -> ResizeNormalizeTransform (the weights' normalisation, resize to min/max size, pad to /32)
      -> TimmBackbone -> FPN (P2..P5 + P6 by max-pool) -> RPN -> RoI heads (box + mask)
      -> boxes rescaled and masks pasted at each input image's own resolution

torchvision's RPN and RoI heads decide by `self.training` whether they return losses or detections. Here each has
a subclass that calls the same torchvision pieces explicitly (`ProposalNetwork.predict/proposals/losses`,
`MaskRoIHeads.detect/losses`), so that `forward` is inference in every mode and `compute_losses` is the training
loss in every mode (validation loss included). The loss path always uses the training top-n and RoI sampling,
the inference path the testing top-n, whatever `self.training` says.

Pixel convention (`mask_aligned`): False is torchvision's (MultiScaleRoIAlign aligned=False, sampling 2; targets
cropped with aligned=False; legacy integer-box paste), which converted torchvision weights were trained with. True
is detectron2's (ROIAlignV2: aligned, adaptive sampling, for box and mask pooling; aligned mask targets; aligned
paste): a perfect 28x28 mask of a small object pastes back onto its own pixels, where the legacy convention loses
about one pixel per edge (tests/models/test_mask_rcnn.py measures the oracle's segm AP under both).

Labels: internally class 0 is background, so the datamodule's contiguous label c (0-based) is internal class
c + 1 in the box/mask predictors; targets are shifted up on the way in and predictions down on the way out.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import MultiScaleRoIAlign

from models.base import InstanceSegmentationModule
from models.common.backbone import TimmBackbone
from models.common.fpn import FPN
from models.common.masks import paste_masks
from models.common.speed_split import ModelSplit
from models.common.transform import ResizeNormalizeTransform, backbone_pixel_stats
from models.mask_rcnn.roi_heads import LevelPool, MaskRoIHeads
from models.mask_rcnn.rpn import ProposalNetwork, RPNOutput
from models.mask_rcnn.targets import training_targets

HEAD_NORMS = {"none": None, "bn": nn.BatchNorm2d}


class MaskRCNN(InstanceSegmentationModule):
    """Mask R-CNN with a timm backbone and an FPN.

    Args:
        num_classes: object classes (background excluded), contiguous labels 0..num_classes-1.
        backbone: timm model name; `out_indices` the feature_info entries fed to the FPN (strides 4..32 for
            ResNets). `pretrained`, `pretrained_path`, `pretrained_download`, `frozen_stages`, `norm`: see `TimmBackbone`. The defaults
            (frozen BatchNorm, stem + layer1 frozen) are for pretrained weights; a backbone trained from scratch
            needs norm="bn" and frozen_stages=0 (frozen, timm's zero-initialised last BatchNorm of every residual
            block would keep the residual branches dead).
        fpn_channels: channels of every pyramid level (and of the RPN / RoI features).
        head_norm: "none" (the paper's FPN and mask head) or "bn": BatchNorm in the FPN and after every mask-head
            convolution (torchvision's Mask R-CNN v2 choice), which a network trained from scratch needs to learn
            quickly.
        min_size, max_size: the input is resized so its short side is `min_size` unless the long side would
            exceed `max_size` (torchvision's / Detectron's rule), then padded to a multiple of 32. A list of
            min_size is multi-scale training: one drawn per image in train mode, the last one at test
            (models.common.transform.ResizeNormalizeTransform).
        pixel_mean, pixel_std: normalisation on the 0..1 scale; None: the backbone weights' own (timm's pretrained
            config; models.common.transform.backbone_pixel_stats).
        anchor_sizes: one anchor size (pixels of the resized input) per pyramid level P2..P6;
            `aspect_ratios` the height/width ratios at every location.
        rpn_*: proposal network. `pre_nms_top_n` is per level, `post_nms_top_n` per image; `batch_size_per_image`
            anchors sampled per image for the loss with `positive_fraction` positives at most.
        box_*: RoI box head. `box_batch_size_per_image` RoIs sampled per image for the loss,
            `box_positive_fraction` of them positives at most; `box_head_width` the two FC layers' width;
            `box_score_thresh`, `box_nms_thresh` (per class), `detections_per_img` the inference output.
        mask_head_layers, mask_head_channels: the mask FCN (3x3 convs) before the 2x up-sampling predictor.
        mask_resolution: side of the predicted box-relative mask (RoIs are pooled at half of it).
        mask_aligned: detectron2's pixel convention for pooling, mask targets and pasting (module docstring); False,
            torchvision's, for converted torchvision weights.
        **kwargs: optimiser and schedule settings of `InstanceSegmentationModule`.
    """

    # Stages of the speed breakdown (models.common.speed_split): transform (resize, normalise, pad) -> backbone ->
    # FPN -> RPN head -> [anchors, proposal decoding + NMS] -> box RoI pool/head/predictor -> [box decoding +
    # per-class NMS] -> mask RoI pool/head/predictor -> [mask probabilities of the predicted class, boxes rescaled,
    # masks pasted at full resolution].
    SPEED_SPLIT = ModelSplit(
        stages={
            "preprocess": ("transform",),
            "backbone_neck": ("backbone", "neck"),
            "heads": (
                "rpn.head",
                "roi_heads.box_roi_pool", "roi_heads.box_head", "roi_heads.box_predictor",
                "roi_heads.mask_roi_pool", "roi_heads.mask_head", "roi_heads.mask_predictor",
            ),
        },
        raw_outputs=("roi_heads.mask_predictor",),
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
        head_norm: str = "none",
        min_size: int | list[int] = 800,
        max_size: int = 1333,
        pixel_mean: list[float] | None = None,
        pixel_std: list[float] | None = None,
        anchor_sizes: list[int] = [32, 64, 128, 256, 512],
        aspect_ratios: list[float] = [0.5, 1.0, 2.0],
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_test: int = 1000,
        rpn_nms_thresh: float = 0.7,
        rpn_fg_iou_thresh: float = 0.7,
        rpn_bg_iou_thresh: float = 0.3,
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        box_fg_iou_thresh: float = 0.5,
        box_bg_iou_thresh: float = 0.5,
        box_batch_size_per_image: int = 512,
        box_positive_fraction: float = 0.25,
        box_head_width: int = 1024,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        mask_head_layers: int = 4,
        mask_head_channels: int = 256,
        mask_resolution: int = 28,
        mask_aligned: bool = False,
        **kwargs,
    ):
        super().__init__(num_classes=num_classes, **kwargs)
        if head_norm not in HEAD_NORMS:
            raise ValueError(f"MaskRCNN: head_norm must be one of {tuple(HEAD_NORMS)}, got {head_norm!r}")
        if mask_resolution < 2 or mask_resolution % 2:
            raise ValueError(f"MaskRCNN: mask_resolution must be even (RoIs are pooled at half), got {mask_resolution}")
        mean, std = backbone_pixel_stats(backbone, pixel_mean, pixel_std)
        self.transform = ResizeNormalizeTransform(min_size, max_size, mean, std)
        self.backbone = TimmBackbone(
            backbone, out_indices, pretrained, pretrained_path, frozen_stages, norm, pretrained_download
        )
        self.neck = FPN(
            self.backbone.channels, self.backbone.strides, fpn_channels, extra_levels="pool", norm=head_norm
        )
        num_levels = len(self.neck.level_names)
        if len(anchor_sizes) != num_levels:
            raise ValueError(
                f"MaskRCNN: anchor_sizes needs one size per pyramid level {self.neck.level_names}, got {anchor_sizes}"
            )

        anchor_generator = AnchorGenerator(
            sizes=tuple((size,) for size in anchor_sizes), aspect_ratios=(tuple(aspect_ratios),) * num_levels
        )
        self.rpn = ProposalNetwork(
            anchor_generator,
            RPNHead(fpn_channels, len(aspect_ratios)),
            fg_iou_thresh=rpn_fg_iou_thresh,
            bg_iou_thresh=rpn_bg_iou_thresh,
            batch_size_per_image=rpn_batch_size_per_image,
            positive_fraction=rpn_positive_fraction,
            pre_nms_top_n={"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
            post_nms_top_n={"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test},
            nms_thresh=rpn_nms_thresh,
        )

        # RoIs are pooled from the backbone levels only (P2..P5), not from the extra P6 (as in the paper).
        roi_levels = self.neck.level_names[: len(self.backbone.channels)]
        box_pool_size, mask_pool_size = 7, mask_resolution // 2
        roi_strides = self.neck.strides[: len(roi_levels)]
        mask_layers = [mask_head_channels] * mask_head_layers
        self.roi_heads = MaskRoIHeads(
            box_roi_pool=_roi_pool(roi_levels, roi_strides, box_pool_size, mask_aligned),
            box_head=TwoMLPHead(fpn_channels * box_pool_size**2, box_head_width),
            box_predictor=FastRCNNPredictor(box_head_width, num_classes + 1),
            fg_iou_thresh=box_fg_iou_thresh,
            bg_iou_thresh=box_bg_iou_thresh,
            batch_size_per_image=box_batch_size_per_image,
            positive_fraction=box_positive_fraction,
            bbox_reg_weights=None,  # torchvision's (10, 10, 5, 5)
            score_thresh=box_score_thresh,
            nms_thresh=box_nms_thresh,
            detections_per_img=detections_per_img,
            mask_roi_pool=_roi_pool(roi_levels, roi_strides, mask_pool_size, mask_aligned),
            mask_head=MaskRCNNHeads(fpn_channels, mask_layers, dilation=1, norm_layer=HEAD_NORMS[head_norm]),
            mask_predictor=MaskRCNNPredictor(
                mask_layers[-1] if mask_layers else fpn_channels, mask_head_channels, num_classes + 1
            ),
            mask_aligned=mask_aligned,
        )

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections for `images` (list of float [3, H_i, W_i] in 0..1), the same in train and eval mode.

        Returns per image: `boxes` float [K, 4] xyxy in the input's pixels, `scores` float [K], `labels` int64 [K]
        contiguous, `masks` bool [K, H_i, W_i].
        """
        batch, _ = self.transform(images)
        features = self.neck(self.backbone(batch.tensors))
        rpn_output = self.rpn.predict(batch, list(features.values()))
        return self._predictions(features, rpn_output, batch, images)

    def compute_losses(self, images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
        """Training losses on a batch, the same computation in train and eval mode (BatchNorm aside, if used).

        `images`: list of float [3, H_i, W_i] in 0..1; `targets`: the datamodule's dicts (`boxes` [N, 4] xyxy
        pixels, `labels` [N] contiguous, `masks` [N, H_i, W_i], `iscrowd` [N]).
        Returns `loss_rpn_cls`, `loss_rpn_box`, `loss_cls`, `loss_box`, `loss_mask` (scalars).
        """
        batch, targets = self.transform(images, training_targets(targets, self.hparams.num_classes))
        features = self.neck(self.backbone(batch.tensors))
        rpn_output = self.rpn.predict(batch, list(features.values()))
        return self._losses(features, rpn_output, batch, targets)

    def predict_and_losses(
        self, images: list[Tensor], targets: list[dict]
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """`forward` and `compute_losses` of one batch sharing the backbone, FPN and RPN head pass (validation)."""
        batch, resized_targets = self.transform(images, training_targets(targets, self.hparams.num_classes))
        features = self.neck(self.backbone(batch.tensors))
        rpn_output = self.rpn.predict(batch, list(features.values()))
        predictions = self._predictions(features, rpn_output, batch, images)
        return predictions, self._losses(features, rpn_output, batch, resized_targets)

    def _predictions(
        self, features: dict[str, Tensor], rpn_output: RPNOutput, batch: ImageList, images: list[Tensor]
    ) -> list[dict[str, Tensor]]:
        """Inference from the shared pass: testing top-n proposals, detections, boxes and masks at input size."""
        proposals = self.rpn.proposals(rpn_output, batch.image_sizes, training_top_n=False)
        detections = self.roi_heads.detect(features, proposals, batch.image_sizes)
        return self.to_input_resolution(detections, batch.image_sizes, [tuple(image.shape[-2:]) for image in images])

    def to_input_resolution(
        self,
        detections: list[dict[str, Tensor]],
        resized_sizes: list[tuple[int, int]],
        input_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """`MaskRoIHeads.detect`'s detections (resized frame, internal labels, box-relative mask probabilities) ->
        predictions at each input's resolution: boxes rescaled, labels shifted down, masks pasted in the model's
        pixel convention (`mask_aligned`)."""
        predictions = []
        for detection, resized_size, input_size in zip(detections, resized_sizes, input_sizes):
            input_size = (int(input_size[0]), int(input_size[1]))
            boxes = resize_boxes(detection["boxes"], resized_size, input_size)
            predictions.append(
                {
                    "boxes": boxes,
                    "scores": detection["scores"],
                    "labels": detection["labels"] - 1,
                    "masks": paste_masks(
                        detection["mask_probs"], boxes, input_size, threshold=0.5, aligned=self.hparams.mask_aligned
                    ),
                }
            )
        return predictions

    def _losses(
        self, features: dict[str, Tensor], rpn_output: RPNOutput, batch: ImageList, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Losses from the shared pass: RPN losses, then RoI losses on training top-n proposals."""
        proposals = self.rpn.proposals(rpn_output, batch.image_sizes, training_top_n=True)
        losses = self.rpn.losses(rpn_output, targets)
        losses.update(self.roi_heads.losses(features, proposals, batch.image_sizes, targets))
        return losses


def _roi_pool(level_names: list[str], strides: list[int], output_size: int, aligned: bool) -> nn.Module:
    """torchvision's pooler (aligned=False, sampling 2) or detectron2's ROIAlignV2 (`LevelPool`)."""
    if aligned:
        return LevelPool(level_names, strides, output_size)
    return MultiScaleRoIAlign(level_names, output_size=output_size, sampling_ratio=2)
