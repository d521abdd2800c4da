"""Feature-map statistics shared by every model that pools more than one stage."""

from __future__ import annotations

import torch


def mean_std(x: torch.Tensor) -> list[torch.Tensor]:
    """Per-channel mean and standard deviation of an (N, C, H, W) map: [(N, C), (N, C)].

    The std is written out (not ``torch.std``) so that it exports to plain ONNX ops; the
    epsilon keeps its gradient finite on a flat map.
    """
    flat = x.flatten(2)
    mean = flat.mean(-1)
    std = (flat - mean.unsqueeze(-1)).pow(2).mean(-1).add(1e-6).sqrt()
    return [mean, std]
