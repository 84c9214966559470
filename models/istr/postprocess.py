"""From ISTR's stage outputs to detections at each input image's own resolution (no NMS: a set prediction).

1. scores = sigmoid(class logits) [N, C] of the last stage (official V1), or with `stage_average` official V2's
   rule (`projects/ISTR/istr/head.py` at HEAD, DynamicHead.forward at inference): sigmoid of the MEAN of the class
   logits of the stages from the third on (stages 3-6 of 6; the last stage alone when there are fewer than three),
   while boxes and mask embeddings stay the last stage's;
2. the best `detections_per_img` (query, class) pairs over all N x C scores;
3. boxes scaled to the input image and clipped to it; a box left without area is dropped (detectron2's
   detector_postprocess keeps `boxes.nonempty()` only), so an image may get fewer than `detections_per_img`;
4. only the kept queries' embeddings are decoded by the codec (the official code decodes all N and repeats them
   C times before the top-k) and pasted into their boxes at `mask_threshold`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from models.common.masks import paste_masks
from models.istr.head import StageOutput

# V2 averages the class logits from the third stage (0-based index 2) on.
V2_FIRST_AVERAGED_STAGE = 2


class ISTRPostProcess:
    """Args: detections_per_img, mask_threshold, stage_average.

    `__call__(stages, codec, resized_sizes [(H', W')], input_sizes [(H, W)]) -> list[dict(boxes [K,4],
    scores [K], labels [K], masks bool [K, H, W])]`, sorted by decreasing score, K <= detections_per_img.
    """

    def __init__(self, detections_per_img: int = 100, mask_threshold: float = 0.5, stage_average: bool = False):
        if detections_per_img < 1:
            raise ValueError(f"ISTRPostProcess: detections_per_img must be >= 1, got {detections_per_img}")
        self.detections_per_img = detections_per_img
        self.mask_threshold = mask_threshold
        self.stage_average = stage_average

    @torch.no_grad()
    def __call__(
        self,
        stages: list[StageOutput],
        codec,
        resized_sizes: list[tuple[int, int]],
        input_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        last = stages[-1]
        averaged = (stages[V2_FIRST_AVERAGED_STAGE:] or stages[-1:]) if self.stage_average else stages[-1:]
        scores = torch.stack([s.class_logits.float() for s in averaged]).mean(0).sigmoid()
        boxes, embeddings = last.boxes.float(), last.mask_embeddings
        return [
            self.detect(scores[i], boxes[i], embeddings[i], codec, resized_sizes[i], input_sizes[i])
            for i in range(len(input_sizes))
        ]

    def detect(self, scores: Tensor, boxes: Tensor, embeddings: Tensor, codec, resized_size: tuple[int, int],
               input_size: tuple[int, int]) -> dict[str, Tensor]:
        """One image: scores [N, C], boxes [N, 4] (resized frame), embeddings [N, K] -> its detections."""
        num_classes = scores.shape[1]
        top_scores, flat_index = scores.flatten().topk(min(self.detections_per_img, scores.numel()))
        query = flat_index // num_classes
        labels = flat_index % num_classes
        height, width = input_size
        scale = boxes.new_tensor([width / resized_size[1], height / resized_size[0]] * 2)
        kept_boxes = boxes[query] * scale
        kept_boxes[:, 0::2] = kept_boxes[:, 0::2].clamp(0, width)
        kept_boxes[:, 1::2] = kept_boxes[:, 1::2].clamp(0, height)
        nonempty = torch.nonzero((kept_boxes[:, 2] > kept_boxes[:, 0]) & (kept_boxes[:, 3] > kept_boxes[:, 1]))
        nonempty = nonempty.squeeze(1)
        kept_boxes, top_scores, query, labels = (
            kept_boxes[nonempty], top_scores[nonempty], query[nonempty], labels[nonempty]
        )
        # Decoded only for the kept queries; a query kept under two classes is decoded twice (at most
        # detections_per_img decodes either way).
        probs = codec.decode(embeddings[query].float())
        masks = paste_masks(probs, kept_boxes, input_size, threshold=self.mask_threshold, aligned=True)
        return {"boxes": kept_boxes, "scores": top_scores, "labels": labels, "masks": masks}
