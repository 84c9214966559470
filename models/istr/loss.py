"""ISTR's set-prediction loss: per stage, a Hungarian matching, then five terms on the matched pairs.

    loss_cls   sigmoid focal loss (alpha 0.25, gamma 2) over every query x class, matched queries positive  x 2
    loss_box   L1 between matched boxes divided by the image size (xyxy)                                    x 5
    loss_giou  1 - GIoU of matched boxes                                                                    x 2
    loss_mask  MSE between predicted and ground-truth mask embeddings, divided by K                         x 2
    loss_dice  dice loss between decoded predicted masks and the ground-truth box crops (M x M)             x 2

Each term is summed over matched pairs (over all queries for loss_cls) and divided by the number of ground truths
in the batch, averaged across processes (at least 1). With deep supervision every stage is matched independently
and its weighted terms are added to the same five keys (the official code logs them per stage; one key per term
keeps the logs readable).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from models.common.distributed import mean_over_processes
from models.istr.head import StageOutput
from models.istr.matcher import HungarianMatcher, MatchTarget

LOSS_TERMS = ("loss_cls", "loss_box", "loss_giou", "loss_mask", "loss_dice")


class ISTRLoss:
    """Args: num_classes, matcher, the five term weights, focal_alpha / focal_gamma, deep_supervision.

    `__call__(stages: list[StageOutput], targets: list[MatchTarget], codec) -> dict` of the five scalar terms;
    `codec` decodes embeddings for the dice term (models.istr.mask_codec).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        class_weight: float = 2.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        mask_weight: float = 2.0,
        dice_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        deep_supervision: bool = True,
    ):
        self.num_classes = num_classes
        self.matcher = matcher
        self.weights = dict(loss_cls=class_weight, loss_box=l1_weight, loss_giou=giou_weight, loss_mask=mask_weight,
                            loss_dice=dice_weight)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.deep_supervision = deep_supervision

    def __call__(self, stages: list[StageOutput], targets: list[MatchTarget], codec) -> dict[str, Tensor]:
        device = stages[-1].boxes.device
        # Ground truths per process averaged over the processes, at least 1: the official loss normaliser.
        num_boxes = max(mean_over_processes(float(sum(len(t.labels) for t in targets)), device), 1.0)
        truth = _concatenate(targets)
        offsets = [0]
        for target in targets[:-1]:
            offsets.append(offsets[-1] + len(target.labels))
        supervised = stages if self.deep_supervision else stages[-1:]
        totals: dict[str, Tensor] = {}
        for output in supervised:
            matches = self.matcher(output.class_logits, output.boxes, output.mask_embeddings, targets)
            pairs = _matched_pairs(matches, offsets, device)
            terms = {
                "loss_cls": self.loss_labels(output, truth, pairs, num_boxes),
                **self.loss_boxes(output, truth, pairs, num_boxes),
                **self.loss_masks(output, truth, pairs, num_boxes, codec),
            }
            for name, value in terms.items():
                weighted = self.weights[name] * value
                totals[name] = totals[name] + weighted if name in totals else weighted
        return totals

    # ------------------------------------------------------------------------------------------------ terms
    # `truth` holds every image's ground truths concatenated (see _concatenate); `pairs` int64 [3, m] the matched
    # (image, query, ground truth) triples of the batch, ground truths indexing `truth`.

    def loss_labels(self, output: StageOutput, truth: MatchTarget, pairs: Tensor, num_boxes: float) -> Tensor:
        """Focal loss over all B x N x C logits; the matched queries' target class is the positive."""
        logits = output.class_logits.float()
        onehot = torch.zeros_like(logits)
        onehot[pairs[0], pairs[1], truth.labels[pairs[2]]] = 1.0
        return sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma, reduction="sum") / num_boxes

    def loss_boxes(self, output: StageOutput, truth: MatchTarget, pairs: Tensor, num_boxes: float
                   ) -> dict[str, Tensor]:
        predicted = output.boxes[pairs[0], pairs[1]].float()
        wanted, sizes = truth.boxes[pairs[2]].float(), truth.image_size[pairs[2]].float()
        l1 = (predicted / sizes - wanted / sizes).abs().sum() / num_boxes
        giou = generalized_box_iou_loss(predicted, wanted, reduction="sum") / num_boxes
        return {"loss_box": l1, "loss_giou": giou}

    def loss_masks(self, output: StageOutput, truth: MatchTarget, pairs: Tensor, num_boxes: float, codec
                   ) -> dict[str, Tensor]:
        predicted = output.mask_embeddings[pairs[0], pairs[1]].float()
        embeddings = truth.embeddings[pairs[2]].float()
        masks = truth.masks[pairs[2]].flatten(1).float()
        embedding = (predicted - embeddings).pow(2).sum() / num_boxes / predicted.shape[1]
        decoded = codec.decode(predicted).flatten(1)
        intersection = (decoded * masks).sum(1)
        union = decoded.pow(2).sum(1) + masks.pow(2).sum(1) + 1e-5
        dice = (1 - 2 * intersection / union).sum() / num_boxes
        return {"loss_mask": embedding, "loss_dice": dice}


def _concatenate(targets: list[MatchTarget]) -> MatchTarget:
    """The batch's ground truths as one MatchTarget; image_size becomes [T, 4], one row per ground truth."""
    return MatchTarget(
        labels=torch.cat([t.labels for t in targets]),
        boxes=torch.cat([t.boxes for t in targets]),
        image_size=torch.cat([t.image_size.expand(len(t.labels), 4) for t in targets]),
        masks=torch.cat([t.masks for t in targets]),
        embeddings=torch.cat([t.embeddings for t in targets]),
    )


def _matched_pairs(matches: list[tuple[Tensor, Tensor]], offsets: list[int], device: torch.device) -> Tensor:
    """int64 [3, m] (image, query, ground truth in the concatenated batch) from the matcher's per-image CPU indices.

    Assembled on the CPU and sent in one copy (pinned and asynchronous on CUDA) rather than two or three blocking
    copies per image.
    """
    pairs = torch.cat([
        torch.stack([torch.full_like(rows, image), rows, cols + offset])
        for image, ((rows, cols), offset) in enumerate(zip(matches, offsets))
    ], dim=1) if matches else torch.zeros((3, 0), dtype=torch.int64)
    if device.type == "cuda":
        return pairs.pin_memory().to(device, non_blocking=True)
    return pairs.to(device)
