"""The monotone map from the MOS scale onto the reference page's scale, baked into graphs."""

from __future__ import annotations

import torch
from torch import nn


class MonotoneCalibration(nn.Module):
    """Piecewise-linear, non-decreasing map through ``(knots_x, knots_y)``, flat outside.

    Written as a sum of clamped ramps so that it exports to plain ONNX ops (Sub, Relu, Min,
    Mul, ReduceSum, Add) and never changes the order of two predictions. The module allows
    flat segments; the fits that produce knots (``training/heads.py``) make them strictly
    increasing, so that distinct predictions keep distinct scores.
    """

    def __init__(self, knots_x: list[float] | None = None, knots_y: list[float] | None = None):
        super().__init__()
        knots_x = list(knots_x) if knots_x is not None else [0.0, 1.0]
        knots_y = list(knots_y) if knots_y is not None else [0.0, 1.0]
        self.register_buffer("knots_x", torch.tensor(knots_x, dtype=torch.float32))
        self.register_buffer("knots_y", torch.tensor(knots_y, dtype=torch.float32))
        self._check()

    def _check(self) -> None:
        x, y = self.knots_x, self.knots_y
        if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
            raise ValueError("calibration needs two equal-length 1-D knot lists of length >= 2")
        if not bool(torch.all(x[1:] > x[:-1])) or not bool(torch.all(y[1:] >= y[:-1])):
            raise ValueError("calibration knots must be increasing in x and non-decreasing in y")

    def set_knots(self, knots_x, knots_y) -> None:
        self.knots_x = torch.as_tensor(knots_x, dtype=torch.float32)
        self.knots_y = torch.as_tensor(knots_y, dtype=torch.float32)
        self._check()

    def forward(self, mos: torch.Tensor) -> torch.Tensor:
        x, y = self.knots_x, self.knots_y
        widths = x[1:] - x[:-1]
        slopes = (y[1:] - y[:-1]) / widths
        ramps = torch.minimum(torch.relu(mos.unsqueeze(-1) - x[:-1]), widths)
        return y[0] + (ramps * slopes).sum(-1)
