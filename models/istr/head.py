"""ISTR's iterative head: stages that refine query boxes, query features and mask embeddings.

    boxes [B, N, 4] (pixels of the resized input), queries [B, N, C]
    for each stage (separate weights):
      RoIAlign 7x7 on P2..P5 (level by box size, LevelRoIAlign)         -> roi [B*N, 49, C]
      self-attention among the N queries of an image, residual + LN
      dynamic interaction(query, roi), residual + LN
      FFN C -> F -> C (ELU), residual + LN                                -> queries for the next stage
      class tower -> class_logits [C_cls]; box tower -> deltas -> boxes (weights 2,2,1,1); mask tower -> [K]
      boxes detached before the next stage

Every stage's outputs are returned (deep supervision; the inference option of averaging them). Sub-module names
follow the official `RCNNHead` (self_attn, inst_interact, linear1/2, norm1-3, cls_module, reg_module,
mask_module, class_logits, bboxes_delta, mask_logits) so the converter maps official weights one to one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from models.common.box_coder import Float32BoxCoder
from models.common.roi_pooler import LevelRoIAlign
from models.istr.interaction import DynamicInteraction

BOX_WEIGHTS = (2.0, 2.0, 1.0, 1.0)
# Width / height deltas are clamped so exp() cannot overflow: the official (Sparse R-CNN's) bound.
BOX_SCALE_CLAMP = math.log(100000.0 / 16)


def istr_box_coder() -> Float32BoxCoder:
    """(dx, dy, dw, dh) deltas with weights (2, 2, 1, 1) and the official clamp; decode_single (float32, no host
    sync) / encode_single."""
    return Float32BoxCoder(weights=BOX_WEIGHTS, bbox_xform_clip=BOX_SCALE_CLAMP)


def _tower(width: int, depth: int) -> nn.Sequential:
    """depth x (Linear without bias, LayerNorm, ELU): the official class / box / mask towers."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width, bias=False), nn.LayerNorm(width), nn.ELU()]
    return nn.Sequential(*layers)


@dataclass
class StageOutput:
    class_logits: Tensor  # [B, N, num_classes]
    boxes: Tensor  # [B, N, 4] xyxy, pixels of the resized input
    mask_embeddings: Tensor  # [B, N, K]


class ISTRStage(nn.Module):
    """One stage. `forward(features, boxes [B,N,4], queries [B,N,C], pooler) -> (StageOutput, queries [B,N,C])`."""

    def __init__(
        self,
        num_classes: int,
        mask_dim: int,
        hidden_dim: int = 256,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        dynamic_dim: int = 64,
        pooler_resolution: int = 7,
        num_cls_layers: int = 3,
        num_reg_layers: int = 3,
        num_mask_layers: int = 3,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.self_attn = nn.MultiheadAttention(hidden_dim, num_heads, dropout=dropout, batch_first=True)
        self.inst_interact = DynamicInteraction(hidden_dim, dynamic_dim, pooler_resolution)
        self.linear1 = nn.Linear(hidden_dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, hidden_dim)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.norm3 = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.activation = nn.ELU()
        self.cls_module = _tower(hidden_dim, num_cls_layers)
        self.reg_module = _tower(hidden_dim, num_reg_layers)
        self.mask_module = _tower(hidden_dim, num_mask_layers)
        self.class_logits = nn.Linear(hidden_dim, num_classes)
        self.bboxes_delta = nn.Linear(hidden_dim, 4)
        self.mask_logits = nn.Linear(hidden_dim, mask_dim)
        self.box_coder = istr_box_coder()

    def forward(
        self, features: list[Tensor], boxes: Tensor, queries: Tensor, pooler: LevelRoIAlign
    ) -> tuple[StageOutput, Tensor]:
        batch, num_queries = boxes.shape[:2]
        roi = pooler(features, list(boxes.unbind(0)))  # [B*N, C, S, S]
        roi = roi.flatten(2).transpose(1, 2)  # [B*N, S*S, C]

        attended = self.self_attn(queries, queries, queries, need_weights=False)[0]
        queries = self.norm1(queries + self.dropout(attended))
        flat = queries.reshape(batch * num_queries, self.hidden_dim)
        flat = self.norm2(flat + self.dropout(self.inst_interact(flat, roi)))
        flat = self.norm3(flat + self.dropout(self.linear2(self.dropout(self.activation(self.linear1(flat))))))

        class_logits = self.class_logits(self.cls_module(flat))
        deltas = self.bboxes_delta(self.reg_module(flat))
        mask_embeddings = self.mask_logits(self.mask_module(flat))
        new_boxes = self.box_coder.decode_single(deltas, boxes.reshape(-1, 4))  # float32 under mixed precision
        output = StageOutput(
            class_logits=class_logits.view(batch, num_queries, -1),
            boxes=new_boxes.view(batch, num_queries, 4),
            mask_embeddings=mask_embeddings.view(batch, num_queries, -1),
        )
        return output, flat.view(batch, num_queries, self.hidden_dim)


class DynamicHead(nn.Module):
    """`num_stages` ISTRStages sharing one RoI pooler.

    Args: num_classes, mask_dim (K), strides of the pooled levels, num_stages, prior_prob (initial foreground
    probability of the focal classifier), and the stage's sizes (see ISTRStage).

    `forward(features: list[Tensor[B, C, H_l, W_l]], boxes [B, N, 4], queries [B, N, C]) -> list[StageOutput]`
    (one per stage, in order).
    """

    def __init__(
        self,
        num_classes: int,
        mask_dim: int,
        strides: list[int],
        num_stages: int = 6,
        hidden_dim: int = 256,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        dynamic_dim: int = 64,
        pooler_resolution: int = 7,
        num_cls_layers: int = 3,
        num_reg_layers: int = 3,
        num_mask_layers: int = 3,
        dropout: float = 0.0,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        # The official ROIPooler: ROIAlignV2, sampling 2, detectron2's FPN level rule; gathered off the CPU so that
        # the six stages never wait for the device.
        self.pooler = LevelRoIAlign(strides, pooler_resolution, level_rule="mask_rcnn", sampling_ratio=2,
                                    aligned=True, gather_levels=None)
        self.stages = nn.ModuleList(
            ISTRStage(num_classes, mask_dim, hidden_dim, num_heads, dim_feedforward, dynamic_dim, pooler_resolution,
                      num_cls_layers, num_reg_layers, num_mask_layers, dropout)
            for _ in range(num_stages)
        )
        self._reset_parameters(prior_prob)

    def _reset_parameters(self, prior_prob: float) -> None:
        """Xavier-uniform for every weight with >= 2 dims (official); the classifier biases at the focal prior.

        The official code instead sets EVERY parameter whose last dimension equals the class count to the prior,
        which silently overwrites unrelated weights when a layer happens to have that width; only the classifier
        biases are meant, and only they are set here.
        """
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        bias = -math.log((1 - prior_prob) / prior_prob)
        for stage in self.stages:
            nn.init.constant_(stage.class_logits.bias, bias)

    def forward(self, features: list[Tensor], boxes: Tensor, queries: Tensor) -> list[StageOutput]:
        outputs = []
        for stage in self.stages:
            output, queries = stage(features, boxes, queries, self.pooler)
            outputs.append(output)
            boxes = output.boxes.detach()
        return outputs
