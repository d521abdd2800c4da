"""Turn decoded RGB pixels into the model's input tensor, exactly as training does.

Training imports these functions too, so the two sides cannot drift apart.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .contract import Preprocessing

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
}


def resize_for_model(image: Image.Image, prep: Preprocessing) -> Image.Image:
    """Resize an RGB PIL image to the policy's size (aspect kept, sides a multiple of 32)."""
    size = prep.target_size(*image.size)
    if size == image.size:
        return image
    # Pillow's resize filters are antialiased by construction when downscaling.
    return image.resize(size, _RESAMPLE[prep.resample])


def normalise(rgb: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3xHxW float32, scaled to [0, 1] then mean/std normalised."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 array, got {rgb.shape} {rgb.dtype}")
    mean = np.asarray(prep.mean, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(prep.std, dtype=np.float32) * 255.0)
    out = (rgb.astype(np.float32) - mean) * inv_std
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def to_model_input(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """RGB PIL image -> 3xHxW float32 input at the policy's resolution."""
    return normalise(np.asarray(resize_for_model(image, prep)), prep)
