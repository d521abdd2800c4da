"""Exposure statistics of the input pixels, for the heads to see beside the CNN features.

An ImageNet backbone is trained to recognise objects whatever the light, so its features
are nearly blind to exposure: v1 and the first v2 candidate scored a photo 2 stops under
within 0.05 of the clean one even on the very photos whose underexposed copies they were
taught to score 0.4 lower (MODEL_CARD.md, "Exposure"). A soft luminance histogram, the
shares of clipped shadows and highlights, the mean colour and the luminance spread say
directly what exposure does, cost nothing next to the backbone, and are computed inside
the graph from the normalised input, so the ONNX contract does not change.
"""

from __future__ import annotations

import torch
from torch import nn

from iqa.inference.contract import LUMA_WEIGHTS as LUMA

HISTOGRAM_BINS = 8
# Shadows and highlights this close to 0 or 1 count as clipped (8-bit values <= 5, >= 250).
CLIP_MARGIN = 0.02
NUM_EXPOSURE_STATS = HISTOGRAM_BINS + 2 + 3 + 1
EMBED_WIDTH = 64


def exposure_stats(rgb: torch.Tensor) -> torch.Tensor:
    """(N, NUM_EXPOSURE_STATS) statistics of an (N, 3, H, W) batch of sRGB values in [0, 1]:
    a soft luminance histogram, the clipped shares at both ends, the mean of each channel
    and the luminance's standard deviation.

    Triangular bins rather than hard ones keep it smooth and export to plain ONNX ops.
    """
    y = sum(w * rgb[:, c] for c, w in enumerate(LUMA)).flatten(1)  # (N, H*W)
    centres = (torch.arange(HISTOGRAM_BINS, dtype=rgb.dtype, device=rgb.device) + 0.5)
    centres = centres / HISTOGRAM_BINS
    weights = torch.relu(1.0 - (y.unsqueeze(-1) - centres).abs() * HISTOGRAM_BINS)
    histogram = weights.mean(1)  # (N, BINS)
    # A steep sigmoid rather than a comparison: the same value, and it exports as one op.
    dark = torch.sigmoid((CLIP_MARGIN - y) * 400.0).mean(1, keepdim=True)
    bright = torch.sigmoid((y - (1.0 - CLIP_MARGIN)) * 400.0).mean(1, keepdim=True)
    colour = rgb.flatten(2).mean(-1)  # (N, 3)
    spread = (y - y.mean(1, keepdim=True)).pow(2).mean(1, keepdim=True).add(1e-6).sqrt()
    return torch.cat([histogram, dark, bright, colour, spread], dim=1)


class ExposureFeatures(nn.Module):
    """Normalised model input -> exposure statistics -> a small learnt embedding.

    ``mean`` and ``std`` are the preprocessing's, so the statistics are taken on the
    photo's own sRGB values. The embedding lifts 14 numbers in [0, 1] to the scale of the
    layer-normalised CNN features the heads also see.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.embed = nn.Sequential(nn.Linear(NUM_EXPOSURE_STATS, EMBED_WIDTH), nn.GELU())

    def stats(self, x: torch.Tensor) -> torch.Tensor:
        """Statistics of a normalised (N, 3, H, W) input (what the feature cache stores)."""
        rgb = (x.float() * self.std + self.mean).clamp(0.0, 1.0)
        return exposure_stats(rgb)

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        return self.embed(stats)
