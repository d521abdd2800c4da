"""Prediction heads on top of a backbone's pooled features."""

from __future__ import annotations

import torch
from torch import nn


class MLPHead(nn.Module):
    """Linear -> GELU -> Dropout -> Linear -> sigmoid: values in [0, 1]."""

    def __init__(self, in_features: int, hidden: int, out_features: int, dropout: float = 0.1):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(self.drop(self.act(self.fc1(x)))))
