"""Turn decoded RGB pixels into the model's input tensor, exactly as training does.

Training imports these functions too, so the two sides cannot drift apart.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .colour import to_srgb
from .contract import LUMA_WEIGHTS, DetailView, Preprocessing
from .decode import ImageSource, decode_image

# The cheap reductions (the DCT-scaled JPEG decode, Pillow's box pre-reduce) stop at this
# multiple of the model's view; the antialiased resize does the rest, as in training.
REDUCTION_GAP = 3

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
}


def decode_for_model(source: ImageSource, prep: Preprocessing, *, native: bool = False,
                     **decode_options) -> Image.Image:
    """Decode ``source`` to RGB the way the model needs it; training decodes through here too.

    JPEGs decode at a reduced DCT scale (1/2, 1/4, 1/8) only while the shorter side stays
    at least ``REDUCTION_GAP`` times the one the policy resizes that photo to, and the
    bicubic resize does the rest. libjpeg's scaled decode filters differently from that
    resize: decoded to within 2x of the model's view, a photo's view kept 30 % more
    Laplacian variance (decoded straight to it) or 11-20 % less (resized after it), and
    scored 0.01-0.05 lower than fully decoded, though the pixels differed by under 1/255
    on average. At 3x and more the gap fell to a few thousandths (BENCHMARKS.md,
    "Decoding at a reduced scale"; scripts/decode_scale_gap.py).

    ``native`` decodes every pixel: a model with a detail view judges the photo's own
    resolution, which a reduced decode would throw away.

    An embedded colour profile is not applied here but by :func:`resize_for_model` and
    :func:`detail_mosaic_srgb`, on the model's views: converting a 12-megapixel Display
    P3 photo decoded at half scale took 40 ms, its 512x384 view about 3.
    """
    def target(width: int, height: int) -> int:
        return REDUCTION_GAP * min(prep.target_size(width, height))

    return decode_image(source, target_shorter_side=None if native else target,
                        srgb=False, **decode_options)


def resize_for_model(image: Image.Image, prep: Preprocessing) -> Image.Image:
    """Resize an RGB PIL image to the policy's size (aspect kept, sides a multiple of 32),
    in sRGB: a colour profile :func:`decode_for_model` left in its info is applied to the
    result (converting and resizing nearly commute; the resize is the cheaper first)."""
    size = prep.target_size(*image.size)
    icc = image.info.get("icc_profile")
    if size == image.size:
        return to_srgb(image, icc)
    # Pillow's resize filters are antialiased by construction when downscaling. A photo
    # at least 6x the target is first box-reduced by an integer factor (reducing_gap):
    # 4000x3000 -> 416x320 took 27 ms instead of 73 (mean difference 1/255 on noise, the
    # worst case); photos under 6x, all training photos among them, are untouched.
    return to_srgb(image.resize(size, _RESAMPLE[prep.resample], reducing_gap=REDUCTION_GAP),
                   icc)


def normalise(rgb: np.ndarray, prep: Preprocessing | DetailView) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3xHxW float32, scaled to [0, 1] then mean/std normalised."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 array, got {rgb.shape} {rgb.dtype}")
    mean = (np.asarray(prep.mean, dtype=np.float32) * 255.0)[:, None, None]
    inv_std = (1.0 / (np.asarray(prep.std, dtype=np.float32) * 255.0))[:, None, None]
    # Transposed while still uint8, then converted inside the subtraction: the same float32
    # values as converting first, in a seventh of the time (0.3 against 2.2 ms at 512x384),
    # which matters where the scoring process normalises (`iqa batch`'s actors).
    out = np.subtract(np.ascontiguousarray(rgb.transpose(2, 0, 1)), mean, dtype=np.float32)
    out *= inv_std
    return out


def to_model_input(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """RGB PIL image -> 3xHxW float32 input at the policy's resolution."""
    return normalise(np.asarray(resize_for_model(image, prep)), prep)


def detail_mosaic(rgb: np.ndarray, view: DetailView) -> np.ndarray:
    """HxWx3 uint8 photo at its own resolution -> the view's mosaic of unscaled patches."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 array, got {rgb.shape}")
    height, width = rgb.shape[:2]
    if height < view.patch or width < view.patch:
        # Tiny photos: replicate the edge rather than upscale, so no pixel is invented
        # by an interpolation filter that training never saw.
        pad_h, pad_w = max(0, view.patch - height), max(0, view.patch - width)
        rgb = np.pad(rgb, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                           (0, 0)), mode="edge")
        height, width = rgb.shape[:2]
    if view.kind == "textured_fragments":
        return _textured_mosaic(rgb, view)
    p = view.patch
    lefts, tops = view.cell_origins(width, height)
    rows = [np.concatenate([rgb[t : t + p, x : x + p] for x in lefts], axis=1) for t in tops]
    return np.ascontiguousarray(np.concatenate(rows, axis=0))


def _textured_mosaic(rgb: np.ndarray, view: DetailView) -> np.ndarray:
    """The ``textured_fragments`` mosaic (DetailView): in each cell, the candidate patch
    with the largest sum of absolute luma differences between neighbours."""
    p, g = view.patch, view.grid
    tops, lefts = view.candidate_origins(rgb.shape[0]), view.candidate_origins(rgb.shape[1])
    flat_tops = np.asarray([t for cell in tops for t in cell])
    flat_lefts = np.asarray([x for cell in lefts for x in cell])
    # Every candidate of every cell in one gather from a strided view of all p x p
    # windows: (tops, lefts, 3, p, p), in 0.2 ms whatever the photo's size.
    windows = np.lib.stride_tricks.sliding_window_view(rgb, (p, p), axis=(0, 1))
    patches = windows[flat_tops[:, None], flat_lefts[None, :]].astype(np.int32)
    # Integer luma (LUMA_WEIGHTS x 10,000) and integer sums: exact, so any implementation
    # of the contract picks the same patches, ties included.
    r, gr, b = (int(round(w * 10_000)) for w in LUMA_WEIGHTS)
    luma = patches[:, :, 0] * r + patches[:, :, 1] * gr + patches[:, :, 2] * b
    texture = (np.abs(np.diff(luma, axis=3)).sum(axis=(2, 3), dtype=np.int64)
               + np.abs(np.diff(luma, axis=2)).sum(axis=(2, 3), dtype=np.int64))
    mosaic = np.empty((g * p, g * p, 3), dtype=rgb.dtype)
    row_start = np.cumsum([0] + [len(cell) for cell in tops])
    col_start = np.cumsum([0] + [len(cell) for cell in lefts])
    for row in range(g):
        for col in range(g):
            block = texture[row_start[row] : row_start[row + 1],
                            col_start[col] : col_start[col + 1]]
            # argmax is row-major and returns the first maximum: top to bottom, then
            # left to right, wins a tie.
            i, j = np.unravel_index(int(block.argmax()), block.shape)
            top, left = flat_tops[row_start[row] + i], flat_lefts[col_start[col] + j]
            mosaic[row * p : (row + 1) * p, col * p : (col + 1) * p] = (
                rgb[top : top + p, left : left + p])
    return mosaic


def detail_mosaic_srgb(image: Image.Image | np.ndarray, view: DetailView) -> np.ndarray:
    """:func:`detail_mosaic` of a decoded photo, in sRGB: a colour profile that
    :func:`decode_for_model` left in its info is applied to the grid's mosaic rather than
    the whole photo. The textured kind picks its patches by their pixels, so there the
    photo is converted first, as training (which decodes in sRGB) picked them."""
    icc = image.info.get("icc_profile") if isinstance(image, Image.Image) else None
    if icc and view.kind == "textured_fragments":
        return detail_mosaic(np.asarray(to_srgb(image, icc)), view)
    mosaic = detail_mosaic(np.asarray(image), view)
    return np.asarray(to_srgb(Image.fromarray(mosaic), icc)) if icc else mosaic


def to_detail_input(image: Image.Image | np.ndarray, view: DetailView) -> np.ndarray:
    """RGB photo at its own resolution -> 3 x side x side float32 detail input."""
    return normalise(detail_mosaic_srgb(image, view), view)


def native_scale(size: tuple[int, int], prep: Preprocessing) -> np.ndarray:
    """The ``detail_scale`` input of a photo of ``size`` (width, height): its width over
    its global view's width."""
    width, height = size
    return np.asarray([width / prep.target_size(width, height)[0]], dtype=np.float32)


def to_model_inputs(
    image: Image.Image, prep: Preprocessing, view: DetailView | None, detail_source=None,
    scale: float | None = None,
) -> dict[str, np.ndarray]:
    """Every input of the model, by ONNX input name, from one decoded photo.

    ``view`` None means a single-input (v1) model. ``detail_source`` lets training build
    the detail view from another version of the photo, and ``scale`` overrides the
    photo's ``detail_scale`` (a training version that stands for a larger photo);
    inference passes neither.
    """
    from .contract import DETAIL_INPUT, DETAIL_SCALE_INPUT, INPUT_NAME

    inputs = {INPUT_NAME: to_model_input(image, prep)}
    if view is not None:
        inputs[DETAIL_INPUT] = to_detail_input(image if detail_source is None else detail_source,
                                               view)
        if view.native_scale:
            inputs[DETAIL_SCALE_INPUT] = (native_scale(image.size, prep) if scale is None
                                          else np.asarray([scale], dtype=np.float32))
    return inputs


def to_model_pixels(
    image: Image.Image, prep: Preprocessing, view: DetailView | None
) -> dict[str, np.ndarray]:
    """Every input of the model as HxWx3 uint8 pixels, before :func:`normalise`.

    A quarter of the bytes of :func:`to_model_inputs`, for handing images to another
    process; :func:`normalise_pixels` then gives exactly what ``to_model_inputs`` gives.
    """
    from .contract import DETAIL_INPUT, DETAIL_SCALE_INPUT, INPUT_NAME

    pixels = {INPUT_NAME: np.asarray(resize_for_model(image, prep))}
    if view is not None:
        pixels[DETAIL_INPUT] = detail_mosaic_srgb(image, view)
        if view.native_scale:
            pixels[DETAIL_SCALE_INPUT] = native_scale(image.size, prep)
    return pixels


def normalise_pixels(
    pixels: dict[str, np.ndarray], prep: Preprocessing, view: DetailView | None
) -> dict[str, np.ndarray]:
    """:func:`to_model_pixels` output -> the model's float32 inputs, by input name."""
    from .contract import DETAIL_INPUT, DETAIL_SCALE_INPUT, INPUT_NAME

    inputs = {INPUT_NAME: normalise(pixels[INPUT_NAME], prep)}
    if DETAIL_INPUT in pixels:
        if view is None:
            raise ValueError(f"a '{DETAIL_INPUT}' input, but the model has no detail view")
        inputs[DETAIL_INPUT] = normalise(pixels[DETAIL_INPUT], view)
    if DETAIL_SCALE_INPUT in pixels:  # already float32: nothing to normalise
        inputs[DETAIL_SCALE_INPUT] = pixels[DETAIL_SCALE_INPUT]
    return inputs
