"""Region proposal network: torchvision's RPN with proposals and losses as two explicit calls.

torchvision's `RegionProposalNetwork.forward` returns losses only when `self.training` and also picks its
pre/post-NMS top-n by `self.training`, so it can neither give a validation loss nor test-time proposals from a
module in train mode. This subclass keeps every torchvision piece (head, anchor generator, box coder, matcher,
sampler, `filter_proposals`, `compute_loss`) and only re-sequences them: the caller says which top-n setting
it wants, and the loss is a separate call that works in any mode. Nothing in torchvision is patched.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers

from models.common.box_coder import Float32BoxCoder


class RPNOutput(NamedTuple):
    """The RPN head over a batch. A = anchors over all levels of one image, B = batch size."""

    objectness: Tensor  # [B*A, 1] logits
    box_deltas: Tensor  # [B*A, 4] deltas w.r.t. the anchors
    anchors: list[Tensor]  # per image [A, 4] xyxy in the padded batch
    decoded: Tensor  # [B, A, 4] anchors moved by the (detached) deltas
    num_anchors_per_level: list[int]


class ProposalNetwork(RegionProposalNetwork):
    """`RegionProposalNetwork` whose top-n choice is an argument instead of `self.training`."""

    _top_n_setting = "testing"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The same coder, decoding in float32 without torchvision's per-call host-to-device copy.
        self.box_coder = Float32BoxCoder(self.box_coder.weights, self.box_coder.bbox_xform_clip)

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n[self._top_n_setting]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n[self._top_n_setting]

    def predict(self, images: ImageList, features: list[Tensor]) -> RPNOutput:
        """Objectness and box deltas at every anchor of `images` (padded batch) from the pyramid `features`."""
        objectness, box_deltas = self.head(features)
        # torchvision builds the anchors in the features' dtype (bfloat16 would round them to 2-4 px steps); it reads
        # only their shapes, dtype and device, so float32 stand-ins that allocate nothing are passed instead.
        float_shapes = [torch.empty((), device=f.device).expand(f.shape) for f in features]
        anchors = self.anchor_generator(images, float_shapes)
        num_anchors_per_level = [o[0].numel() for o in objectness]  # anchors/location x H x W, per level
        objectness, box_deltas = concat_box_prediction_layers(objectness, box_deltas)
        # Proposals are not back-propagated through (Faster R-CNN's approximate joint training). Decoded in float32:
        # torchvision decodes in the deltas' dtype, and bfloat16 would round proposal corners to 4-8 px steps.
        decoded = self.box_coder.decode(box_deltas.detach().float(), anchors).view(len(anchors), -1, 4)
        return RPNOutput(objectness, box_deltas, anchors, decoded, num_anchors_per_level)

    def proposals(self, output: RPNOutput, image_sizes: list[tuple[int, int]], training_top_n: bool) -> list[Tensor]:
        """Per image [P, 4] proposals (xyxy, resized image) after per-level top-n, clipping and NMS.

        `training_top_n` picks the training pre/post-NMS top-n (the loss path) or the testing one (inference).
        """
        # `filter_proposals` reads the top-n through the two methods above; set the choice for this call.
        self._top_n_setting = "training" if training_top_n else "testing"
        proposals, _ = self.filter_proposals(
            output.decoded, output.objectness, image_sizes, output.num_anchors_per_level
        )
        return proposals

    def losses(self, output: RPNOutput, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Objectness (BCE) and box (smooth-L1) losses over the sampled anchors of `output`.

        `targets[i]["boxes"]` are [N_i, 4] xyxy in the resized image (crowd regions already removed).
        """
        labels, matched_gt_boxes = self.assign_targets_to_anchors(output.anchors, targets)
        regression_targets = self.box_coder.encode(matched_gt_boxes, output.anchors)
        loss_cls, loss_box = self.compute_loss(output.objectness, output.box_deltas, labels, regression_targets)
        return {"loss_rpn_cls": loss_cls, "loss_rpn_box": loss_box}
