"""Exposure and contrast: EV shifts in linear light, flat contrast, and atmospheric haze."""

from __future__ import annotations

import cv2
import numpy as np

from .base import SeverityTable, linear_to_srgb, register, srgb_to_linear

# Exposure shift in stops (EV). The image is decoded to linear light, multiplied by 2^EV
# and clipped at the sensor's white, then re-encoded: highlights burn out and shadows
# crush and posterise as they do in a real camera. Fitted by scripts/calibrate_augment.py.
UNDEREXPOSURE_EV = SeverityTable((0.0, 0.508, 0.923, 1.3, 1.67, 2.06, 2.48, 2.96, 3.56, 4.41, 6.0))
OVEREXPOSURE_EV = SeverityTable((0.0, 0.388, 0.69, 0.971, 1.25, 1.54, 1.85, 2.21, 2.64, 3.18, 4.0))

# Share of the contrast removed (1 would leave a flat grey frame).
CONTRAST_LOSS = SeverityTable(
    (0.0, 0.129, 0.245, 0.351, 0.448, 0.536, 0.619, 0.699, 0.776, 0.853, 0.93)
)

# Haze extinction coefficient beta: transmission t = exp(-beta * depth), depth in (0, 1].
HAZE_BETA = SeverityTable((0.0, 0.0254, 0.0656, 0.128, 0.211, 0.323, 0.482, 0.696, 1.04, 1.66, 3.5))


_CODES = np.arange(256, dtype=np.uint8)[None, :, None].repeat(3, axis=2)


def _exposure_curve(ev: float) -> np.ndarray:
    # A per-pixel function of the value, so it is evaluated once per code and looked up.
    return linear_to_srgb(np.minimum(srgb_to_linear(_CODES) * np.float32(2.0**ev), 1.0))[0, :, 0]


@register("underexposure", "underexposure")
def underexposure(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    return cv2.LUT(image, _exposure_curve(-UNDEREXPOSURE_EV(severity)))


@register("overexposure", "overexposure")
def overexposure(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    return cv2.LUT(image, _exposure_curve(OVEREXPOSURE_EV(severity)))


@register("low_contrast", "low_contrast")
def low_contrast(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Pull every pixel toward the frame's mean grey (a flat, washed-out picture).

    Done on sRGB values, where equal steps look equally large, and toward a neutral grey so
    colour fades with contrast as in a flat scan or a cheap lens.
    """
    keep = 1.0 - CONTRAST_LOSS(severity)
    grey = float(image.mean())
    curve = grey + keep * (np.arange(256, dtype=np.float64) - grey)
    return cv2.LUT(image, np.clip(curve + 0.5, 0, 255).astype(np.uint8))


@register("haze", "low_contrast")
def haze(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Atmospheric scattering (Koschmieder): I = J t + A (1 - t), t = exp(-beta d).

    There is no depth map, so depth follows the usual photo layout: far (d = 1) above a
    random horizon, nearer toward the bottom edge. The airlight A is a bright, slightly
    blue or warm grey.
    """
    h = image.shape[0]
    horizon = rng.uniform(0.25, 0.6) * h
    nearest = rng.uniform(0.15, 0.45)
    brightness = rng.uniform(0.65, 0.95)
    tint = rng.uniform(-0.06, 0.08)  # > 0 bluish (daylight haze), < 0 warm (smog)
    airlight = brightness * np.array([1 - tint, 1.0, 1 + tint], np.float32).clip(0, 1)

    rows = np.arange(h, dtype=np.float32)
    below = np.clip((rows - horizon) / max(h - horizon, 1.0), 0, 1)
    depth = 1.0 - (1.0 - nearest) * below
    beta = HAZE_BETA(severity)
    transmission = np.exp(-beta * depth).astype(np.float32)[:, None, None]
    linear = srgb_to_linear(image)
    return linear_to_srgb(linear * transmission + airlight * (1 - transmission))
