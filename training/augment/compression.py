"""Lossy compression: JPEG and WebP, encoded and decoded by OpenCV.

Compression artefacts live on a fixed pixel grid (8 x 8 JPEG blocks, 4 x 4 to 16 x 16 WebP
blocks), so unlike blur they do not scale with the image: apply them at the resolution the
model will see.
"""

from __future__ import annotations

import cv2
import numpy as np

from .base import SeverityTable, register

# Encoder quality (100 best). Fitted by scripts/calibrate_augment.py; rounded to integers.
JPEG_QUALITY = SeverityTable((100.0, 85.3, 54.4, 27.2, 18.9, 11.6, 9.08, 7.06, 5.04, 3.02, 1.0))
# WebP at its lowest quality still shows the content (it smears rather than blocks), so the
# WebP level goes on past quality 0: from 0 to 1 the quality falls from 99 to 0, from 1 to 2
# the frame is also shrunk before encoding, up to WEBP_MAX_SHRINK (thumbnail-grade bitrates,
# then upscaled for display). Fitted by scripts/calibrate_augment.py.
WEBP_LEVEL = SeverityTable((0.0, 0.154, 0.456, 0.717, 0.843, 0.918, 0.993, 1.11, 1.26, 1.57, 2.0))
WEBP_MAX_SHRINK = 3.0


def _encode_decode(image: np.ndarray, extension: str, flag: int, quality: int) -> np.ndarray:
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(extension, bgr, (flag, quality))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {extension} at quality {quality}")
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@register("jpeg", "compression")
def jpeg(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    quality = int(round(JPEG_QUALITY(severity)))
    return _encode_decode(image, ".jpg", cv2.IMWRITE_JPEG_QUALITY, max(1, quality))


@register("webp", "compression")
def webp(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    level = WEBP_LEVEL(severity)
    # OpenCV's WebP quality runs from 1 to 100, and 100 switches to lossless coding.
    quality = min(99, max(1, int(round(99 * (1 - min(level, 1.0))))))
    shrink = 1.0 + (WEBP_MAX_SHRINK - 1.0) * min(max(level - 1.0, 0.0), 1.0)
    if shrink < 1.01:
        return _encode_decode(image, ".webp", cv2.IMWRITE_WEBP_QUALITY, quality)
    h, w = image.shape[:2]
    small = (max(8, round(w / shrink)), max(8, round(h / shrink)))
    image = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
    decoded = _encode_decode(image, ".webp", cv2.IMWRITE_WEBP_QUALITY, quality)
    return cv2.resize(decoded, (w, h), interpolation=cv2.INTER_LINEAR)
