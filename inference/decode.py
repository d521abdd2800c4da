"""Decode anything that holds a photo into an upright 8-bit sRGB PIL image, safely.

Every path from bytes to pixels goes through :func:`decode_image`, so the CLI, the HTTP
server and the Python API reject the same inputs with the same typed errors
(:mod:`iqa.inference.errors`), and no input can make the process allocate gigabytes.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
import simplejpeg
from PIL import Image, ImageFile, UnidentifiedImageError

from .colour import to_srgb, usable_profile
from .errors import (
    ImageDecodeError,
    ImageTooLargeError,
    ImageTooSmallError,
    TruncatedImageError,
)

# 64 MP: a 50 MP phone photo (8160x6144) still fits, and it stays below Pillow's own
# decompression-bomb warning (~89 MP), so Pillow never warns for an image we accept.
# A decoded 64 MP RGB image takes about 200 MB.
DEFAULT_MAX_PIXELS = 64_000_000

# Below 8 px a side there is nothing left to judge: blur, noise and compression are
# properties of neighbourhoods of pixels. Smaller images raise ImageTooSmallError.
DEFAULT_MIN_SIDE = 8

# Formats we let Pillow open. An allow-list, because some Pillow plugins are risky on
# untrusted input (EPS runs Ghostscript) or are not photos at all (fonts, icons, PDF).
# JPEG covers MPO (multi-picture JPEGs from phones and 3D cameras) too.
ALLOWED_FORMATS: tuple[str, ...] = (
    "JPEG",
    "PNG",
    "GIF",
    "WEBP",
    "BMP",
    "DIB",
    "TIFF",
    "AVIF",
    "PPM",
    "TGA",
)


def _heif_formats() -> tuple[str, ...]:
    """("HEIF",) where pi-heif (`pip install "iqa[heif]"`) or pillow-heif is installed to
    read HEIF/HEIC, the format iPhones save photos in, which Pillow cannot read alone.
    Optional because their wheels bundle libheif and libde265 (LGPL)."""
    if "HEIF" in Image.OPEN:  # the host program registered one, with its own options
        return ("HEIF",)
    for module in ("pi_heif", "pillow_heif"):
        try:
            importlib.import_module(module).register_heif_opener()
        except Exception:  # absent, or broken: scoring must still import
            continue
        return ("HEIF",)
    return ()


ALLOWED_FORMATS += _heif_formats()
HEIF_INSTALL_HINT = 'pip install "iqa[heif]"'
# ISO base media "ftyp" brands of HEIF stills (not AVIF, which Pillow reads itself).
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")

# File extensions that `iqa score DIR` picks up when it walks a folder.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".mpo",
        ".png",
        ".apng",
        ".gif",
        ".webp",
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".avif",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".tga",
        ".heic",  # read with iqa[heif]; without it, named with the install command
        ".heif",
    }
)

_WHITE = (255, 255, 255)

ImageSource = (
    str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray
)


def decode_image(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    target_shorter_side: int | Callable[[int, int], int] | None = None,
    name: str | None = None,
    srgb: bool = True,
) -> Image.Image:
    """Decode ``source`` into an upright sRGB image.

    ``source`` is a path, encoded bytes, a binary file object, a PIL image or a uint8
    numpy array (HxW, HxWx1, HxWx3 or HxWx4). The EXIF orientation is applied, the first
    frame of an animation is used, transparency is composited over white, 16-bit or
    float greyscale is scaled to 8 bits over its full range, and an RGB photo tagged with
    another colour profile (Adobe RGB, Display P3) is converted to sRGB.

    ``max_pixels`` is checked against the size in the file's header, before any pixel
    data is decoded (``None`` disables it; Pillow's own limit of
    ``2 * PIL.Image.MAX_IMAGE_PIXELS`` still applies). ``target_shorter_side`` lets a
    JPEG decode at a reduced scale (1/2, 1/4 or 1/8, in the DCT), never below that
    shorter side; a function of the header's (width, height) may give it instead, for a
    policy whose target depends on the aspect ratio. ``name`` names the image in error
    messages when ``source`` has no path. ``srgb`` False leaves the colour conversion to
    the caller, to do at a smaller size (a 3-megapixel conversion takes 40 ms): the
    profile it needs is in ``image.info["icc_profile"]``, for
    :func:`iqa.inference.colour.to_srgb`, which ignores one that does not fit RGB pixels.
    The model's preprocessing converts at its view.

    Raises ImageDecodeError (not an image, unsupported format, unreadable file),
    TruncatedImageError, ImageTooLargeError or ImageTooSmallError.
    """
    if isinstance(source, (str, os.PathLike)):
        name = name or str(source)
    label = name or "image"
    if isinstance(source, np.ndarray):
        return _from_array(source, label, max_pixels, min_side)
    if isinstance(source, Image.Image):
        # No draft: it would shrink the caller's own image object.
        return _finish(source, label, max_pixels, min_side, None, srgb=srgb)
    return _from_encoded(source, label, max_pixels, min_side, target_shorter_side, srgb)


def _from_encoded(source, label, max_pixels, min_side, target_shorter_side,
                  srgb: bool) -> Image.Image:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if memoryview(source).nbytes == 0:
            raise ImageDecodeError(f"{label}: empty input (0 bytes)")
        if isinstance(source, memoryview) and not source.contiguous:
            # BytesIO takes only contiguous buffers; a strided view's bytes are its C-order copy.
            source = source.tobytes()
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_file() and path.stat().st_size == 0:
            raise ImageDecodeError(f"{label}: empty file (0 bytes)")
    elif isinstance(source, io.TextIOBase):
        raise ImageDecodeError(f"{label}: a file opened in text mode; open it in binary "
                               "mode (open(path, 'rb')) or pass the path")
    elif not hasattr(source, "read"):
        raise ImageDecodeError(
            f"{label}: cannot decode an object of type {type(source).__name__}; "
            "pass a path, bytes, a binary file, a PIL image or a uint8 numpy array"
        )
    try:
        opened = Image.open(source, formats=ALLOWED_FORMATS)
    except UnidentifiedImageError as exc:
        head = _head(source)
        if _is_heif(head):
            if "HEIF" not in ALLOWED_FORMATS:
                raise ImageDecodeError(f"{label}: a HEIF/HEIC photo (the iPhone's format); "
                                       f"reading it needs pi-heif: {HEIF_INSTALL_HINT}") from exc
            raise ImageDecodeError(f"{label}: a HEIF/HEIC photo that cannot be read (cut "
                                   "short or damaged)") from exc
        what = _sniff(head)
        raise ImageDecodeError(
            f"{label}: looks like {what}, not an image in a supported format "
            f"({', '.join(ALLOWED_FORMATS)})"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses far beyond our limit on its own, with a message naming its own
        # MAX_IMAGE_PIXELS; the caller only knows (and can change) max_pixels.
        raise ImageTooLargeError(_bomb_message(label, exc, max_pixels)) from exc
    except OSError as exc:  # missing file, a directory, no permission, short header
        reason = exc.strerror or str(exc)
        if "truncated" in reason.lower():  # a header cut short: "Truncated File Read"
            raise TruncatedImageError(f"{label}: the image data ends early ({reason})") from exc
        raise ImageDecodeError(f"{label}: cannot read: {reason}") from exc
    except (ValueError, SyntaxError, EOFError, struct.error) as exc:
        # Plugins raise these on corrupt headers (found by fuzzing: a PNG whose IHDR
        # length is 0 gives ValueError("Truncated IHDR chunk")); libheif reads a HEIC
        # cut short as "Unexpected end of file".
        if "end of file" in str(exc).lower():
            raise TruncatedImageError(f"{label}: the image data ends early ({exc})") from exc
        raise ImageDecodeError(f"{label}: corrupt image header ({exc})") from exc
    with opened as image:
        return _finish(image, label, max_pixels, min_side, target_shorter_side,
                       opened_here=True, srgb=srgb)


def _bomb_message(label: str, exc: Exception, max_pixels: int | None) -> str:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = _pixels(int(found.group(1))) if found else "too many pixels"
    pillow_limit = 2 * Image.MAX_IMAGE_PIXELS
    if max_pixels is not None and max_pixels < pillow_limit:
        return f"{label}: {size}, more than the limit of {_pixels(max_pixels)}"
    # A max_pixels above Pillow's own limit cannot lift it: name the limit that refused.
    return f"{label}: {size}, more than the decoder's limit of {_pixels(pillow_limit)}"


def _pixels(count: float) -> str:
    """12.0 MP, or 120,000 pixels where one decimal of a megapixel would read as 0.1."""
    return f"{count / 1e6:.1f} MP" if count >= 1e6 else f"{int(count):,} pixels"


def _head(source, size: int = 512) -> bytes:
    """The first bytes of a source, for a better error message; b"" if not re-readable."""
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as handle:
                return handle.read(size)
        source.seek(0)
        return source.read(size)
    except (OSError, AttributeError, ValueError):
        return b""


def _is_heif(head: bytes) -> bool:
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def _sniff(head: bytes) -> str:
    """Name what a non-image most likely is: a URL that serves an error page, an SVG..."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in text or (text.startswith(b"<?xml") and b"svg" in text):
        return "SVG vector graphics (rasterise it first)"
    if head.startswith(b"%PDF-"):
        return "a PDF document (export its pages as images first)"
    if text.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "text"
    return "unknown data"


def _finish(image: Image.Image, label, max_pixels, min_side, target_shorter_side,
            opened_here: bool = False, srgb: bool = True) -> Image.Image:
    """Size checks on the header, then draft, decode, orientation, mode conversion and
    colour profile (applied, or with ``srgb`` False left in ``info`` for later).

    ``opened_here``: ``image`` was opened from encoded data by this module, so its file
    can be read again (a caller's own PIL image may be loaded and its file closed).
    """
    caller_image = image
    _check_size(image.size, label, max_pixels, min_side)
    if callable(target_shorter_side):
        target_shorter_side = target_shorter_side(*image.size)
    # Kept before the strict JPEG decode below, which returns an image without them.
    icc, source_mode = image.info.get("icc_profile"), image.mode
    if opened_here and image.format in ("JPEG", "MPO") and image.mode in _STRICT_JPEG_MODES:
        # A JPEG's EXIF is in its header; the new image built from the pixels has none.
        orientation = _orientation(image)
        image = _decode_jpeg(image, label, target_shorter_side)
    else:
        if target_shorter_side and image.format in ("JPEG", "MPO"):
            # Both sides of a draft stay >= the requested box, so the shorter side does too.
            image.draft(None, (int(target_shorter_side), int(target_shorter_side)))
        _load(image, label)
        orientation = _orientation(image)  # after the load: a PNG may keep EXIF at its end
        icc = image.info.get("icc_profile", icc)  # likewise its colour profile
    rgb = _to_rgb(_upright(image, orientation), label)
    icc = usable_profile(icc, source_mode)
    if srgb:
        return to_srgb(rgb, icc)
    if rgb is not caller_image:  # never edit the caller's own image; its profile is its own
        if icc:
            rgb.info["icc_profile"] = icc
        else:
            rgb.info.pop("icc_profile", None)
    return rgb


# JPEGs whose colours libjpeg-turbo converts exactly as Pillow does (pixel for pixel, DCT
# scaling included); CMYK and YCCK ones keep Pillow's decoder and its Adobe inversion.
_STRICT_JPEG_MODES = {"RGB": "RGB", "L": "GRAY"}

# libjpeg reports damaged entropy-coded data as a *warning* and fills what is missing with
# flat blocks, which Pillow then returns without complaint: a JPEG cut short but closed
# with an end-of-image marker decodes "fine" as a half-grey picture. simplejpeg's strict
# mode turns the first warning into an error; these are the ones that mean lost pixels.
_TRUNCATION_WARNINGS = ("premature end",)
_CORRUPTION_WARNINGS = ("bad huffman code", "instead of rst", "corrupt jpeg data")


def _decode_jpeg(image: Image.Image, label: str, target_shorter_side) -> Image.Image:
    """Decode a JPEG with libjpeg-turbo (simplejpeg), refusing damaged data.

    ``target_shorter_side`` scales in the DCT exactly as Pillow's draft does (so the
    pixels are Pillow's, bit for bit): by the largest of 1, 1/2, 1/4 and 1/8 that keeps
    both sides at or above it. libjpeg-turbo would also pick factors such as 3/8 or 5/8,
    so the output size is asked for exactly.
    """
    fp = image.fp
    # An upload already sits in memory: hand libjpeg its buffer instead of a copy.
    if isinstance(fp, io.BytesIO):
        data = fp.getbuffer()
    else:
        fp.seek(0)
        data = fp.read()
    width, height = image.size
    fits = min(width, height) // int(target_shorter_side) if target_shorter_side else 1
    scale = next(s for s in (8, 4, 2, 1) if s <= max(fits, 1))
    size = {"min_width": -(-width // scale), "min_height": -(-height // scale)}
    colorspace = _STRICT_JPEG_MODES[image.mode]
    try:
        try:
            pixels = simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=True,
                                            **size)
        except ValueError as exc:
            text = str(exc).lower()
            if any(w in text for w in _TRUNCATION_WARNINGS):
                raise TruncatedImageError(f"{label}: the image data ends early ({exc})") from exc
            # Extraneous bytes before a marker (some cameras write them) and other
            # warnings leave every pixel intact: decode again without strict checks.
            if "extraneous bytes" not in text and any(w in text for w in _CORRUPTION_WARNINGS):
                raise ImageDecodeError(f"{label}: corrupt image data ({exc})") from exc
            pixels = simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=False,
                                            **size)
    except ValueError as exc:
        raise ImageDecodeError(f"{label}: corrupt image data ({exc})") from exc
    except MemoryError as exc:
        raise ImageTooLargeError(f"{label}: not enough memory to decode it") from exc
    finally:
        # A live export would make the caller's BytesIO refuse close() with BufferError.
        if isinstance(data, memoryview):
            data.release()
    return Image.fromarray(pixels[:, :, 0] if colorspace == "GRAY" else pixels)


def _check_size(size: tuple[int, int], label: str, max_pixels: int | None, min_side: int) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{label}: {width}x{height} is {_pixels(width * height)}, more than the "
            f"limit of {_pixels(max_pixels)}"
        )
    if min(width, height) < min_side:
        raise ImageTooSmallError(
            f"{label}: {width}x{height} is too small to judge (each side needs at least "
            f"{min_side} px)"
        )


def _load(image: Image.Image, label: str) -> None:
    # A scorer must never see the grey fill Pillow pads truncated images with; some
    # libraries switch this process-wide flag on at import time, so switch it back off.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{label}: {exc}") from exc
    except (OSError, EOFError, SyntaxError, ValueError) as exc:
        text = str(exc).strip()
        # "Unexpected end of file": libheif's word for a HEIC cut short.
        if any(w in text.lower() for w in ("truncated", "end of file")) or isinstance(
                exc, EOFError):
            raise TruncatedImageError(f"{label}: the image data ends early ({text})") from exc
        raise ImageDecodeError(f"{label}: corrupt image data ({text})") from exc
    except MemoryError as exc:
        raise ImageTooLargeError(f"{label}: not enough memory to decode it") from exc


_ORIENTATION_TAG = 0x0112

# EXIF orientation -> the transpose that makes the picture upright (EXIF 2.3, tag 274).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation, read from the header; a broken EXIF block reads as upright."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
        return value if value in _UPRIGHT else 1  # a malformed value may not even hash
    except Exception:  # noqa: BLE001 - malformed EXIF is common and harmless to the pixels
        return 1


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    return image.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else image


def _to_rgb(image: Image.Image, label: str) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("L", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    if mode == "P":
        has_alpha = "transparency" in image.info or getattr(image.palette, "mode", "") == "RGBA"
        return _over_white(image.convert("RGBA")) if has_alpha else image.convert("RGB")
    if mode == "La":  # premultiplied; Pillow converts it to LA only
        image = image.convert("LA")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return _over_white(image.convert("RGBA"))
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(image), mode), "L").convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageDecodeError(f"{label}: unsupported pixel mode {mode!r}") from exc


def _over_white(rgba: Image.Image) -> Image.Image:
    # Transparent areas of product shots and logos are meant to be seen on a light page;
    # black (Pillow's default when the alpha is dropped) would read as underexposure.
    canvas = Image.new("RGB", rgba.size, _WHITE)
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    return canvas


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale high-bit-depth greyscale to uint8 over its nominal range, keeping exposure.

    A dark 16-bit photo must stay dark, so 16-bit modes always map 0..65535 to 0..255.
    Mode I (32-bit) carries 8- or 16-bit data in practice, told apart by its largest
    value; floats are read as [0, 1] or [0, 255]. Only data outside those ranges is
    stretched from its minimum to its maximum.
    """
    values = values.astype(np.float32)
    if mode == "F":
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if mode.startswith("I;16"):
        span_low, span_high = 0.0, 65535.0
    elif mode == "F" and low >= 0 and high <= 1.0:
        span_low, span_high = 0.0, 1.0
    elif low >= 0 and high <= 255:
        span_low, span_high = 0.0, 255.0
    elif low >= 0 and high <= 65535:
        span_low, span_high = 0.0, 65535.0
    else:
        span_low, span_high = low, max(high, low + 1e-6)
    out = (values - span_low) * (255.0 / (span_high - span_low))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _from_array(array: np.ndarray, label, max_pixels, min_side) -> Image.Image:
    if (
        array.dtype != np.uint8
        or array.ndim not in (2, 3)
        or (array.ndim == 3 and array.shape[2] not in (1, 3, 4))
    ):
        raise ImageDecodeError(
            f"{label}: numpy images must be uint8 with shape HxW, HxWx1, HxWx3 or HxWx4; "
            f"got {array.dtype} {array.shape}"
        )
    height, width = array.shape[:2]
    _check_size((width, height), label, max_pixels, min_side)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    image = Image.fromarray(np.ascontiguousarray(array))
    return _to_rgb(image, label)


__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "IMAGE_EXTENSIONS",
    "ImageSource",
    "decode_image",
]
