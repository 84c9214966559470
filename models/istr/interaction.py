"""ISTR's dynamic interaction ("dynamic attention", Sparse R-CNN's dynamic instance interaction).

Each query generates the weights of a two-layer 1x1 network that it applies to its own RoI features:

    params = dynamic_layer(query)                 [Q, 2 * C * D]   -> P1 [Q, C, D], P2 [Q, D, C]
    x = ELU(LN_D(roi @ P1))                       [Q, S*S, D]
    x = ELU(LN_C(x @ P2))                         [Q, S*S, C]
    out = ELU(LN_C(out_layer(flatten(x))))        [Q, C]

with C the hidden width (256), D the dynamic width (64) and S the RoI side (7). No library offers a per-sample
generated linear layer, hence the batched matrix products here. Module names follow the official
`inst_interact` so converted weights keep their meaning.
"""
from __future__ import annotations

from torch import Tensor, nn


class DynamicInteraction(nn.Module):
    """Args: hidden_dim C, dynamic_dim D, pooler_resolution S.

    `forward(queries [Q, C], roi_features [Q, S*S, C]) -> [Q, C]`.
    """

    def __init__(self, hidden_dim: int = 256, dynamic_dim: int = 64, pooler_resolution: int = 7):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.dynamic_dim = dynamic_dim
        self.num_params = hidden_dim * dynamic_dim
        self.dynamic_layer = nn.Linear(hidden_dim, 2 * self.num_params)
        self.norm1 = nn.LayerNorm(dynamic_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.out_layer = nn.Linear(hidden_dim * pooler_resolution**2, hidden_dim)
        self.norm3 = nn.LayerNorm(hidden_dim)
        self.activation = nn.ELU()

    def forward(self, queries: Tensor, roi_features: Tensor) -> Tensor:
        num_queries = queries.shape[0]
        if roi_features.shape[0] != num_queries or roi_features.shape[2] != self.hidden_dim:
            raise ValueError(f"DynamicInteraction: roi_features must be [{num_queries}, S*S, {self.hidden_dim}], got "
                             f"{tuple(roi_features.shape)}")
        params = self.dynamic_layer(queries)
        first = params[:, : self.num_params].view(num_queries, self.hidden_dim, self.dynamic_dim)
        second = params[:, self.num_params :].view(num_queries, self.dynamic_dim, self.hidden_dim)
        x = self.activation(self.norm1(roi_features.bmm(first)))
        x = self.activation(self.norm2(x.bmm(second)))
        return self.activation(self.norm3(self.out_layer(x.flatten(1))))
