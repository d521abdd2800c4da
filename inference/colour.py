"""Embedded colour profiles: pixels of an RGB photo tagged with another profile (Adobe RGB
from cameras, Display P3 from phones, ProPhoto from raw converters) are converted to sRGB.

The model was trained on untagged photos, which mean sRGB. Read as sRGB without the
conversion, an Adobe RGB photo looks washed out, and the shipped model scored such photos
lower (BENCHMARKS.md, "Colour profiles"; `scripts/colour_profile_gap.py`). Browsers and
photo viewers convert them, so the score should judge what they show.
"""

from __future__ import annotations

import functools
import io
import logging

import numpy as np
from PIL import Image, ImageCms

log = logging.getLogger(__name__)

# The 4-byte data colour space of an ICC header (offset 16): only RGB profiles describe the
# RGB pixels we hold; a greyscale or CMYK profile belongs to pixels already converted.
_RGB_SPACE = b"RGB "
_SRGB = ImageCms.createProfile("sRGB")
# Display profiles are 0.5-60 KB; a JPEG may carry up to 16 MB of "profile". Larger ones
# are ignored, so that an upload cannot make the cache below hold hundreds of megabytes.
MAX_PROFILE_BYTES = 1 << 20


def usable_profile(icc: bytes | None, source_mode: str) -> bytes | None:
    """``icc`` where it describes the pixels: an RGB profile of RGB or palette pixels
    (``source_mode``, the mode before any conversion to RGB); None otherwise, as browsers
    ignore a profile that does not fit."""
    if (not icc or len(icc) > MAX_PROFILE_BYTES or icc[16:20] != _RGB_SPACE
            or not source_mode.startswith(("RGB", "P"))):
        return None
    return bytes(icc)


def to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """``image`` (RGB) in sRGB: converted through ``icc`` (see :func:`usable_profile`)
    unless that is sRGB itself or cannot be read, in which case ``image`` is returned."""
    if (not icc or len(icc) > MAX_PROFILE_BYTES or image.mode != "RGB"
            or icc[16:20] != _RGB_SPACE):
        return image
    transform = _transform_to_srgb(bytes(icc))
    if transform is None:
        return image
    return ImageCms.applyTransform(image, transform)  # its info names the sRGB profile


@functools.lru_cache(maxsize=16)
def _transform_to_srgb(icc: bytes) -> ImageCms.ImageCmsTransform | None:
    """The transform from ``icc`` to sRGB, or None for sRGB itself and unreadable profiles.
    Cached: building one takes milliseconds, and a camera's photos share one profile."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        # NOCACHE: lcms2's one-pixel cache is not safe when decode threads share a transform.
        transform = ImageCms.buildTransform(
            profile, _SRGB, "RGB", "RGB",
            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
            flags=ImageCms.Flags.NOCACHE)
        probe = ImageCms.applyTransform(_PROBE, transform)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        log.debug("ignoring an unreadable colour profile: %s", exc)
        return None
    # sRGB under another name (cameras embed their own copies) changes nothing but the
    # time taken. Judged by what the transform does, not by the name: "sRGB linear" is
    # not sRGB.
    change = np.abs(np.asarray(probe, dtype=np.int16) - np.asarray(_PROBE, dtype=np.int16))
    return None if change.max() <= 1 else transform


def _probe_image() -> Image.Image:
    """16 levels of every channel in every combination, then a 256-step grey ramp."""
    levels = np.linspace(0, 255, 16).round().astype(np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    return Image.fromarray(np.concatenate([grid, ramp]).reshape(-1, 64, 3))


_PROBE = _probe_image()

