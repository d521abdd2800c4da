"""A detail-view penalty: what the native-resolution patches show that the global view's
MOS misses, subtracted from that MOS.

Fusing the detail view's features into the MOS head (configs/livec_levels_detail.yaml)
let the rated photos' loss train on them, and over 5 CV folds that cost ranking
(MODEL_CARD.md, "The detail view in the full 5-fold CV"). This head is fitted after
training instead, on the synthetic copies only (``iqa penalty``,
:mod:`iqa.training.penalty`): a ridge regression of how far each copy's predicted MOS sits
above its level target, read from the detail view's pooled features. The ReLU keeps it a
penalty: it can lower a score, never raise one.
"""

from __future__ import annotations

import torch
from torch import nn


class DetailPenalty(nn.Module):
    """``relu(w . (f - mean) / std + b)`` on a pooled feature vector ``f``: (N, F) -> (N,).

    Buffers, not parameters: the weights come from a closed-form fit, never from the
    optimiser, and travel in the state_dict. Zero until fitted.
    """

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(width))
        self.register_buffer("feature_std", torch.ones(width))
        self.register_buffer("weight", torch.zeros(width))
        self.register_buffer("bias", torch.zeros(()))

    @property
    def width(self) -> int:
        return int(self.weight.shape[0])

    def set_fit(self, mean, std, weight, bias: float) -> None:
        for name, value in (("feature_mean", mean), ("feature_std", std), ("weight", weight)):
            value = torch.as_tensor(value, dtype=torch.float32)
            if value.shape != (self.width,):
                raise ValueError(f"{name} must have shape ({self.width},), got {tuple(value.shape)}")
            setattr(self, name, value)
        self.bias = torch.tensor(float(bias), dtype=torch.float32)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = (features - self.feature_mean) / self.feature_std
        return torch.relu(z @ self.weight + self.bias)
