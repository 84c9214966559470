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
import torch.distributed as dist
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

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
        num_boxes = _average_count(sum(len(t.labels) for t in targets), stages[-1].boxes.device)
        supervised = stages if self.deep_supervision else stages[-1:]
        totals: dict[str, Tensor] = {}
        for output in supervised:
            matches = self.matcher(output.class_logits, output.boxes, output.mask_embeddings, targets)
            terms = {
                "loss_cls": self.loss_labels(output, targets, matches, num_boxes),
                **self.loss_boxes(output, targets, matches, num_boxes),
                **self.loss_masks(output, targets, matches, num_boxes, codec),
            }
            for name, value in terms.items():
                weighted = self.weights[name] * value
                totals[name] = totals[name] + weighted if name in totals else weighted
        return totals

    # ------------------------------------------------------------------------------------------------ terms

    def loss_labels(self, output: StageOutput, targets: list[MatchTarget], matches, num_boxes: float) -> Tensor:
        """Focal loss over all B x N x C logits; the matched queries' target class is the positive."""
        logits = output.class_logits.float()
        onehot = torch.zeros_like(logits)
        for image, (rows, cols) in enumerate(matches):
            onehot[image, rows.to(logits.device), targets[image].labels[cols.to(logits.device)]] = 1.0
        return sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma, reduction="sum") / num_boxes

    def loss_boxes(self, output: StageOutput, targets: list[MatchTarget], matches, num_boxes: float
                   ) -> dict[str, Tensor]:
        predicted, wanted, sizes = [], [], []
        for image, (rows, cols) in enumerate(matches):
            target = targets[image]
            predicted.append(output.boxes[image, rows.to(target.boxes.device)])
            wanted.append(target.boxes[cols.to(target.boxes.device)])
            sizes.append(target.image_size.expand(len(rows), 4))
        predicted, wanted, sizes = torch.cat(predicted).float(), torch.cat(wanted).float(), torch.cat(sizes).float()
        l1 = (predicted / sizes - wanted / sizes).abs().sum() / num_boxes
        giou = generalized_box_iou_loss(predicted, wanted, reduction="sum") / num_boxes
        return {"loss_box": l1, "loss_giou": giou}

    def loss_masks(self, output: StageOutput, targets: list[MatchTarget], matches, num_boxes: float, codec
                   ) -> dict[str, Tensor]:
        predicted, embeddings, masks = [], [], []
        for image, (rows, cols) in enumerate(matches):
            target = targets[image]
            predicted.append(output.mask_embeddings[image, rows.to(target.boxes.device)])
            embeddings.append(target.embeddings[cols.to(target.boxes.device)])
            masks.append(target.masks[cols.to(target.boxes.device)])
        predicted, embeddings = torch.cat(predicted).float(), torch.cat(embeddings).float()
        masks = torch.cat(masks).flatten(1).float()
        embedding = (predicted - embeddings).pow(2).sum() / num_boxes / predicted.shape[1]
        decoded = codec.decode(predicted).flatten(1)
        intersection = (decoded * masks).sum(1)
        union = decoded.pow(2).sum(1) + masks.pow(2).sum(1) + 1e-5
        dice = (1 - 2 * intersection / union).sum() / num_boxes
        return {"loss_mask": embedding, "loss_dice": dice}


def _average_count(count: int, device: torch.device) -> float:
    """Ground truths per process, averaged over all processes (>= 1): the official loss normaliser."""
    total = torch.tensor(float(count), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        total = total / dist.get_world_size()
    return max(float(total), 1.0)
