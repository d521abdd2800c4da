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

    def __init__(self, width: int, gate: tuple[float, float] | None = None):
        super().__init__()
        # With a gate the penalty is weighed by the photo's native scale s (the
        # ``detail_scale`` input): 0 up to gate[0], rising linearly to 1 at gate[1]. Where
        # the global view sees the photo at nearly its own resolution, the mosaic shows
        # nothing the global view misses. Fixed by the recipe, never fitted.
        self.gate_range = None
        if gate is not None:
            low, high = (float(g) for g in gate)
            if not 0 < low < high:
                raise ValueError(f"the gate must be 0 < low < high, got {gate}")
            self.gate_range = (low, high)
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

    def gate(self, scale: torch.Tensor) -> torch.Tensor:
        """(N,) or (N, 1) native scales -> (N,) weights in [0, 1]."""
        low, high = self.gate_range
        return ((scale.reshape(-1) - low) / (high - low)).clamp(0.0, 1.0)

    def forward(self, features: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        z = (features - self.feature_mean) / self.feature_std
        penalty = torch.relu(z @ self.weight + self.bias)
        if self.gate_range is None:
            return penalty
        if scale is None:
            raise ValueError("this penalty is gated by the photo's native scale: pass "
                             "the detail_scale input")
        return penalty * self.gate(scale)
