"""torchvision's (dx, dy, dw, dh) box coder, decoding in float32 and encoding without a host synchronisation.

torchvision's `BoxCoder.decode_single` casts the reference boxes to the deltas' dtype, so under mixed precision the
decoded boxes are float16 / bfloat16 (bfloat16 rounds 1000.3 px to 1000 and 1333 to 1336), and it builds its 0.5
constant with `torch.tensor(0.5, device=...)`: on CUDA a blocking host-to-device copy on every call, which stops
the host from queueing ahead (and a decode inside a CUDA graph impossible). Its `encode_single` likewise copies
the weights to the device (`torch.as_tensor(weights, device=...)`) on every call, i.e. every training step of the
models that encode targets. Both are replaced with the same formulas on Python-number weights; `encode` / `decode`
(the per-image wrappers) and the clamp are torchvision's.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder


class Float32BoxCoder(BoxCoder):
    """`BoxCoder(weights, bbox_xform_clip)` whose decode runs in float32, and whose encode and decode use
    Python-number constants (no host-to-device copy).

    `encode_single(reference_boxes [K, 4], proposals [K, 4]) -> [K, 4]`: torchvision's
    `encode_boxes`, operation for operation (equal results, bit for bit).

    `decode_single(rel_codes [K, 4*A], boxes [K, 4]) -> float32 [K, 4*A]`: the same formula as torchvision's
    (centre moved by d * size / weight, sides scaled by exp(d / weight) with d clamped at `bbox_xform_clip`).
    """

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        rel_codes, boxes = rel_codes.float(), boxes.float()
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx = rel_codes[:, 0::4] / wx
        dy = rel_codes[:, 1::4] / wy
        dw = torch.clamp(rel_codes[:, 2::4] / ww, max=self.bbox_xform_clip)
        dh = torch.clamp(rel_codes[:, 3::4] / wh, max=self.bbox_xform_clip)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        half_w = 0.5 * torch.exp(dw) * widths[:, None]
        half_h = 0.5 * torch.exp(dh) * heights[:, None]
        return torch.stack(
            (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=2
        ).flatten(1)

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        wx, wy, ww, wh = self.weights
        ex_widths = proposals[:, 2:3] - proposals[:, 0:1]
        ex_heights = proposals[:, 3:4] - proposals[:, 1:2]
        ex_ctr_x = proposals[:, 0:1] + 0.5 * ex_widths
        ex_ctr_y = proposals[:, 1:2] + 0.5 * ex_heights
        gt_widths = reference_boxes[:, 2:3] - reference_boxes[:, 0:1]
        gt_heights = reference_boxes[:, 3:4] - reference_boxes[:, 1:2]
        gt_ctr_x = reference_boxes[:, 0:1] + 0.5 * gt_widths
        gt_ctr_y = reference_boxes[:, 1:2] + 0.5 * gt_heights
        return torch.cat((
            wx * (gt_ctr_x - ex_ctr_x) / ex_widths,
            wy * (gt_ctr_y - ex_ctr_y) / ex_heights,
            ww * torch.log(gt_widths / ex_widths),
            wh * torch.log(gt_heights / ex_heights),
        ), dim=1)
