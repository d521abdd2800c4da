"""Noise: additive white Gaussian noise, and realistic high-ISO sensor noise.

Noise is per pixel, and a model sees photos resized to a fixed shorter side. Shrinking an
image k times averages k x k pixels and divides the noise's standard deviation by k, so
the standard deviation is proportional to the shorter side (the tables hold it at the
reference 512 px): a 2000 px photo and its 500 px copy then carry the same visible noise
once both are brought to the same size.
"""

from __future__ import annotations

import cv2
import numpy as np

from .base import (
    SeverityTable,
    linear_to_srgb,
    luminance,
    pixel_scale,
    register,
    srgb_to_linear,
    standard_normal,
    to_uint8,
)

# Standard deviation on the sRGB [0, 1] scale. Fitted by scripts/calibrate_augment.py.
GAUSSIAN_NOISE_STD = SeverityTable(
    (0.0, 0.0259, 0.0421, 0.0583, 0.0761, 0.0976, 0.124, 0.159, 0.209, 0.289, 0.45)
)

# Shot-noise gain of the Poisson-Gaussian model in linear light: var(x) = gain * x + read^2,
# the linear-light variance per unit signal (1 / photo-electrons at white). Fitted by
# scripts/calibrate_augment.py.
SENSOR_GAIN = SeverityTable(
    (0.0, 0.000874, 0.00226, 0.0043, 0.00702, 0.011, 0.0166, 0.0253, 0.038, 0.0595, 0.1)
)
# Read noise relative to the shot noise at white: it dominates the deep shadows.
READ_NOISE_RATIO = 0.06
# Chroma noise: spatially correlated colour blotches (demosaicing spreads them over a few
# pixels), stronger in the shadows where the colour-correction matrix amplifies noise most.
CHROMA_GRAIN_SIGMA = 1.0


@register("gaussian_noise", "noise")
def gaussian_noise(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    std = GAUSSIAN_NOISE_STD(severity) * pixel_scale(image)
    noise = standard_normal(image.shape, rng) * np.float32(std)
    return to_uint8(image.astype(np.float32) / 255.0 + noise)


@register("sensor_noise", "noise")
def sensor_noise(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """High-ISO noise: Poisson-Gaussian in linear light, with colour blotches in the shadows.

    The shot noise (variance proportional to the signal) is approximated by a Gaussian of
    matching variance, which is exact enough at these photon counts and much faster.
    """
    scale = pixel_scale(image)
    gain = SENSOR_GAIN(severity)
    h, w, _ = image.shape
    # All random draws come first and do not depend on severity, so one seed gives the same
    # noise pattern at every severity, only stronger.
    luma_noise = standard_normal((h, w, 1), rng)
    chroma_noise = standard_normal((h, w, 3), rng)
    grain = CHROMA_GRAIN_SIGMA * pixel_scale(image)
    chroma_noise = cv2.GaussianBlur(chroma_noise, (0, 0), grain)
    chroma_noise /= max(float(chroma_noise.std()), 1e-6)

    linear = srgb_to_linear(image)
    lightness = np.sqrt(luminance(linear))[..., None]
    chroma_weight = 0.35 + 0.9 * (1.0 - lightness) ** 2
    unit_noise = 0.8 * luma_noise + chroma_weight * chroma_noise
    read = READ_NOISE_RATIO * np.sqrt(gain)
    std = np.sqrt(gain * linear + np.float32(read * read)) * np.float32(scale)
    return linear_to_srgb(np.clip(linear + std * unit_noise, 0.0, 1.0))
