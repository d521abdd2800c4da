"""The contract's numbers, pinned to DESIGN.md and to sizes worked out by hand.

Every expected value below is written out literally (or derived in a comment), never
taken from the function under test, so a changed threshold, cap or rounding rule fails
here even when the rest of the suite stays self-consistent.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from iqa.inference.contract import (
    BUCKETS,
    DEFAULT_THRESHOLD,
    DETAIL_INPUT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_NAME,
    MAX_LONGER_SIDE,
    PREPROCESSING_KEYS,
    SHORTER_SIDE,
    DetailView,
    Preprocessing,
    bucket_for,
    normalise_mos,
)
from iqa.inference.preprocess import (
    REDUCTION_GAP,
    decode_for_model,
    detail_mosaic,
    normalise,
    resize_for_model,
    to_detail_input,
    to_model_input,
    to_model_inputs,
)

# --------------------------------------------------------------------------- buckets

# DESIGN.md "Score semantics": < 0.25 | 0.25-0.45 | 0.45-0.6 | 0.6-0.85 | > 0.85, lower
# bound inclusive. Each bound is probed just below, at, and just above.
BUCKET_CASES = [
    (0.0, "very_poor"),
    (0.14, "very_poor"),  # the page's blurriest example
    (0.2499, "very_poor"),
    (0.25, "poor"),
    (0.2501, "poor"),
    (0.39, "poor"),  # the page's underexposed example
    (0.44, "poor"),  # the page's night light distortions
    (0.4499, "poor"),
    (0.45, "decent"),
    (0.4501, "decent"),
    (0.51, "decent"),  # the page's overexposed example
    (0.5999, "decent"),
    (0.60, "good"),
    (0.6001, "good"),
    (0.8499, "good"),
    (0.85, "very_good"),
    (0.8501, "very_good"),
    (1.0, "very_good"),
]


@pytest.mark.parametrize(("score", "name"), BUCKET_CASES)
def test_bucket_bounds_follow_the_design_table(score, name):
    assert bucket_for(score) == name


def test_bucket_table_is_the_design_table():
    assert BUCKETS == (
        (0.25, "very_poor"),
        (0.45, "poor"),
        (0.60, "decent"),
        (0.85, "good"),
        (float("inf"), "very_good"),
    )
    assert DEFAULT_THRESHOLD == 0.5


def test_scores_beyond_the_table_still_get_the_top_bucket():
    # A model output that is not clipped (or a calibration overshoot) must not crash
    # the API or fall into no bucket.
    assert bucket_for(float("inf")) == "very_good"
    assert bucket_for(float("nan")) == "very_good"
    assert bucket_for(-0.1) == "very_poor"


# --------------------------------------------------------------------------- MOS scale


def test_normalise_mos_by_hand():
    assert normalise_mos(50, 0, 100) == 0.5  # LIVE Challenge: MOS / 100
    assert normalise_mos(2, 1, 5) == 0.25  # KonIQ: (MOS - 1) / 4
    assert normalise_mos(5, 1, 5) == 1.0
    assert normalise_mos(25, 0, 100, higher_is_better=False) == 0.75  # DMOS-like scales
    with pytest.raises(ValueError, match="high > low"):
        normalise_mos(3, 5, 5)
    with pytest.raises(ValueError, match="high > low"):
        normalise_mos(3, 5, 1)


# --------------------------------------------------------------------------- resize policy


def test_policy_constants():
    assert (SHORTER_SIDE, MAX_LONGER_SIDE) == (320, 1024)
    prep = Preprocessing()
    assert (prep.shorter_side, prep.max_longer_side, prep.size_multiple) == (320, 1024, 32)
    assert (prep.resample, prep.antialias) == ("bicubic", True)
    assert prep.mean == (0.485, 0.456, 0.406) == IMAGENET_MEAN
    assert prep.std == (0.229, 0.224, 0.225) == IMAGENET_STD
    assert (INPUT_NAME, DETAIL_INPUT) == ("image", "detail")


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((500, 500), (320, 320)),
        # 320/768 = 0.4167; 1024 * 0.4167 = 426.7 px = 13.3 cells of 32 -> 13 -> 416.
        ((1024, 768), (416, 320)),
        ((768, 1024), (320, 416)),
        # 1100 * 320/700 = 502.9 px = 15.7 cells -> rounds up to 16 -> 512 (not 480).
        ((1100, 700), (512, 320)),
        # Tiny images are brought up to the same scale, not left small.
        ((10, 10), (320, 320)),
        ((1, 1), (320, 320)),
        # Panoramas: 4000x1000 at shorter side 320 would be 1280 wide, over the 1024 cap,
        # so the scale is 1024/4000 = 0.256 and the short side becomes 256.
        ((4000, 1000), (1024, 256)),
        ((1000, 4000), (256, 1024)),
        # 2000x1000: 640x320 is under the cap, untouched by it.
        ((2000, 1000), (640, 320)),
        # 10000x10: the cap leaves 1.02 px of height; a side is never below one cell.
        ((10000, 10), (1024, 32)),
        ((10, 10000), (32, 1024)),
    ],
)
def test_target_size_by_hand(size, expected):
    assert Preprocessing().target_size(*size) == expected


def test_target_size_follows_a_custom_policy():
    prep = Preprocessing(shorter_side=64, max_longer_side=128, size_multiple=16)
    # 64/300 * 900 = 192 > 128: capped at 128/900; 300 * 0.1422 = 42.7 px = 2.67 cells -> 48.
    assert prep.target_size(900, 300) == (128, 48)
    assert prep.target_size(100, 80) == (80, 64)  # 100 * 0.8 = 80 = 5 cells of 16


BUDGET = Preprocessing(shorter_side=448, pixel_budget=384 * 512)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        # 448 x 448 = 200,704 > 196,608: scale sqrt(196608 / 250000) = 0.8868, 443.4 px =
        # 13.86 cells -> 14 -> 448. Rounding may pass the budget by under a cell per side.
        ((500, 500), (448, 448)),
        # At shorter side 448 a 4:3 photo would be 597 x 448 = 267,456 px: the budget
        # wins, sqrt(196608 / 786432) = 0.5 exactly.
        ((1024, 768), (512, 384)),
        ((768, 1024), (384, 512)),
        ((4000, 3000), (512, 384)),
        # 3:2: sqrt(196608 / 393216) = 0.7071; 543.1 x 362.0 px = 16.97 x 11.3 cells.
        ((768, 512), (544, 352)),
        # 448^2 is over the budget, so at shorter side 448 the budget always binds:
        # sqrt(196608 / 172032) = 1.069; 478.9 x 410.5 px = 14.97 x 12.83 cells -> 480 x 416.
        ((448, 384), (480, 416)),
        # The longer-side cap still applies after the budget: 6000 x 1000 at the budget is
        # 1086 x 181 px, over 1024, so 1024 / 6000 = 0.1707 and 170.7 px -> 160.
        ((6000, 1000), (1024, 160)),
    ],
)
def test_pixel_budget_target_size_by_hand(size, expected):
    assert BUDGET.target_size(*size) == expected


def test_the_shorter_side_rules_under_the_pixel_budget():
    prep = Preprocessing(shorter_side=320, pixel_budget=384 * 512)
    assert prep.target_size(500, 500) == (320, 320)  # 102,400 px: under the budget
    assert prep.target_size(1024, 768) == Preprocessing().target_size(1024, 768)


def test_pixel_budget_is_optional_and_validated():
    # No budget: the JSON has no key for it, so every policy exported before it existed
    # keeps its bytes (and feature caches their fingerprints).
    assert "pixel_budget" not in json.loads(Preprocessing().to_json())
    raw = json.loads(BUDGET.to_json())
    assert raw["pixel_budget"] == 196608 and list(raw) == sorted(raw)
    assert Preprocessing.from_json(BUDGET.to_json()) == BUDGET
    assert Preprocessing.from_json(Preprocessing().to_json()).pixel_budget is None
    with pytest.raises(ValueError, match="pixel_budget must be at least"):
        Preprocessing(pixel_budget=1000)


@pytest.mark.parametrize("size", [(0, 10), (10, 0), (-5, 10), (0, 0)])
def test_target_size_rejects_empty_images(size):
    with pytest.raises(ValueError, match="must be positive"):
        Preprocessing().target_size(*size)


def test_preprocessing_json_round_trip_and_tolerance():
    prep = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), shorter_side=64,
                         max_longer_side=160, resample="bilinear", extra={"note": 1})
    raw = json.loads(prep.to_json())
    assert raw["mean"] == [0.5, 0.5, 0.5] and raw["shorter_side"] == 64
    assert list(raw) == sorted(raw)  # stable text: the same policy gives the same bytes
    back = Preprocessing.from_json(prep.to_json())
    assert back == prep and isinstance(back.mean, tuple) and isinstance(back.std, tuple)
    # Keys written by a newer exporter are ignored; missing keys take today's defaults.
    newer = Preprocessing.from_json(json.dumps({"shorter_side": 256, "future_key": 3,
                                                "mean": [0, 0, 0], "std": [1, 1, 1]}))
    assert newer == Preprocessing(shorter_side=256, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert isinstance(newer.mean[0], float) and isinstance(newer.std[0], float)


def test_a_models_preprocessing_must_have_every_exported_key():
    # A new field must either be required here or stay optional, as pixel_budget does.
    assert sorted(json.loads(Preprocessing().to_json())) == sorted(PREPROCESSING_KEYS)
    full = json.loads(BUDGET.to_json())
    assert Preprocessing.from_model_metadata(json.dumps({**full, "future_key": 3})) == BUDGET
    for text, reason in (("{bad", "not JSON"), ("[]", "not a JSON object"),
                         (json.dumps({k: v for k, v in full.items() if k != "std"}), "no std"),
                         (json.dumps({**full, "pixel_budget": 10}), "unusable values")):
        with pytest.raises(ValueError, match=reason):
            Preprocessing.from_model_metadata(text)


def _coordinates_image(width: int, height: int) -> np.ndarray:
    """Every pixel says where it came from: (row mod 256, column mod 256, high bits)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([y % 256, x % 256, (y // 256) * 16 + x // 256], -1).astype(np.uint8)


def test_a_panorama_is_resized_under_the_cap():
    panorama = Image.fromarray(_coordinates_image(4000, 1000))
    prep = Preprocessing()
    resized = resize_for_model(panorama, prep)
    assert resized.size == (1024, 256)
    assert to_model_input(panorama, prep).shape == (3, 256, 1024)


def test_resize_uses_the_policy_filter_and_skips_no_op_resizes():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8))
    for name, flt in (("bicubic", Image.Resampling.BICUBIC),
                      ("bilinear", Image.Resampling.BILINEAR),
                      ("lanczos", Image.Resampling.LANCZOS)):
        prep = Preprocessing(shorter_side=64, max_longer_side=256, resample=name)
        # 200 * 64/150 = 85.3 px = 2.67 cells -> 96.
        expected = photo.resize((96, 64), flt)
        assert np.array_equal(np.asarray(resize_for_model(photo, prep)), np.asarray(expected))
    exact = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    assert resize_for_model(exact, Preprocessing(shorter_side=64)) is exact


def test_big_photos_are_box_reduced_first_with_a_gap_of_3():
    # 2400 x 1920 to 384 x 320 is a 6.25x reduction: with reducing_gap 3 Pillow first
    # box-reduces by 2, which a plain bicubic resize (or a gap of 4) would not do.
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 256, (1920, 2400, 3), dtype=np.uint8))
    out = np.asarray(resize_for_model(photo, Preprocessing()))
    gap3 = np.asarray(photo.resize((384, 320), Image.Resampling.BICUBIC, reducing_gap=3.0))
    plain = np.asarray(photo.resize((384, 320), Image.Resampling.BICUBIC))
    assert np.array_equal(out, gap3) and not np.array_equal(out, plain)


def test_normalise_by_hand():
    rgb = np.array([[[0, 128, 255], [255, 0, 51]]], dtype=np.uint8)  # 1 x 2 pixels
    prep = Preprocessing(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 0.2))
    out = normalise(rgb, prep)
    assert out.shape == (3, 1, 2) and out.dtype == np.float32 and out.flags.c_contiguous
    # (value / 255 - mean) / std, channel first.
    expected = np.array([
        [[(0 / 255 - 0.5) / 0.5, (255 / 255 - 0.5) / 0.5]],
        [[(128 / 255 - 0.25) / 0.25, (0 / 255 - 0.25) / 0.25]],
        [[(255 / 255 - 0.0) / 0.2, (51 / 255 - 0.0) / 0.2]],
    ])
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_normalise_equals_convert_then_normalise_bit_for_bit():
    """The fast path (transpose as uint8, convert inside the subtraction) gives exactly
    the float32 values of the plain formula, so no score moves with it."""
    rgb = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    prep = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    mean = np.asarray(prep.mean, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(prep.std, dtype=np.float32) * 255.0)
    plain = ((rgb.astype(np.float32) - mean) * inv_std).transpose(2, 0, 1)
    assert np.array_equal(normalise(rgb, prep), plain)


@pytest.mark.parametrize("bad", [
    np.zeros((4, 4), np.uint8),
    np.zeros((4, 4, 4), np.uint8),
    np.zeros((4, 4, 3), np.float32),
])
def test_normalise_rejects_what_is_not_hxwx3_uint8(bad):
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        normalise(bad, Preprocessing())


def test_to_model_input_is_resize_then_normalise_by_hand():
    flat = Image.new("RGB", (100, 50), (255, 0, 128))
    prep = Preprocessing(shorter_side=32, max_longer_side=64, mean=(0, 0, 0), std=(1, 1, 1))
    out = to_model_input(flat, prep)
    assert out.shape == (3, 32, 64)
    np.testing.assert_allclose(out[:, 5, 7], [1.0, 0.0, 128 / 255], atol=1e-6)


def _jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_coordinates_image(width, height)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_jpegs_decode_at_a_reduced_scale_down_to_three_times_the_view():
    # libjpeg's scaled decode filters unlike the resize the model was trained behind: it
    # stops at REDUCTION_GAP times the view's shorter side, the resize does the rest.
    assert REDUCTION_GAP == 3
    data = _jpeg(2048, 1536)
    # Shorter side 320: 1/2 would leave 768 < 3 x 320 = 960, so the decode is full size.
    assert decode_for_model(data, Preprocessing()).size == (2048, 1536)
    # 160: 1/2 leaves 768 >= 480, 1/4 would leave 384 < 480.
    assert decode_for_model(data, Preprocessing(shorter_side=160)).size == (1024, 768)
    # 100: 1/4 leaves 384 >= 300, 1/8 would leave 192 < 300.
    assert decode_for_model(data, Preprocessing(shorter_side=100)).size == (512, 384)
    # A model with a detail view needs every pixel: no reduced decode.
    small = Preprocessing(shorter_side=100)
    assert decode_for_model(data, small, native=True).size == (2048, 1536)
    # The caller's decode limits reach the decoder.
    from iqa.inference.errors import ImageTooLargeError

    with pytest.raises(ImageTooLargeError):
        decode_for_model(data, Preprocessing(), max_pixels=1_000_000)


def test_the_reduced_decode_follows_the_size_the_policy_resizes_to():
    data = _jpeg(3072, 2304)
    # Shorter side 448 alone: 1/2 would leave 1152 < 3 x 448, so the decode is full size.
    assert decode_for_model(data, Preprocessing(shorter_side=448)).size == (3072, 2304)
    # Under the budget the same photo is resized to 512 x 384, so the half-scale decode
    # (1152 = 3 x 384) is enough: the budget keeps the decode as cheap as the view.
    assert decode_for_model(data, BUDGET).size == (1536, 1152)
    # A 1024 x 768 photo, the commonest size on the web, is decoded in full: 1/2 would be
    # the view itself, and scored 0.016 lower on average (BENCHMARKS.md).
    assert decode_for_model(_jpeg(1024, 768), BUDGET).size == (1024, 768)
    # A square photo is resized to 448 x 448: 1/2 (1344 = 3 x 448) is allowed, 1/4 is not.
    assert decode_for_model(_jpeg(2688, 2688), BUDGET).size == (1344, 1344)


# --------------------------------------------------------------------------- detail view

# 500 px in 7 cells: cell width 500/7 = 71.43 px, centres at (i + 0.5) * 71.43 =
# 35.71, 107.14, 178.57, 250.00, 321.43, 392.86, 464.29; minus half a patch (16):
# 19.71, 91.14, 162.57, 234.00, 305.43, 376.86, 448.29, rounded to the nearest pixel.
ORIGINS_500 = [20, 91, 163, 234, 305, 377, 448]


def test_detail_view_defaults_and_json():
    view = DetailView()
    assert (view.grid, view.patch, view.side, view.kind) == (7, 32, 224, "grid_fragments")
    assert view.mean == IMAGENET_MEAN and view.std == IMAGENET_STD
    assert DetailView(grid=5, patch=64).side == 320
    text = DetailView(grid=5, patch=64, mean=(0.5, 0.5, 0.5)).to_json()
    assert list(json.loads(text)) == sorted(json.loads(text))
    back = DetailView.from_json(text)
    assert back == DetailView(grid=5, patch=64, mean=(0.5, 0.5, 0.5))
    assert isinstance(back.mean, tuple) and isinstance(back.std, tuple)
    # A dict (already parsed metadata) works too; unknown keys are ignored; kind defaults.
    parsed = DetailView.from_json({"grid": 3, "std": [1, 1, 1], "later": True})
    assert parsed == DetailView(grid=3, std=(1.0, 1.0, 1.0))
    assert isinstance(parsed.std[0], float)
    with pytest.raises(ValueError, match="unknown detail view kind 'crops'"):
        DetailView.from_json(json.dumps({"kind": "crops"}))


def test_cell_origins_by_hand():
    view = DetailView()
    assert view.cell_origins(500, 500) == (ORIGINS_500, ORIGINS_500)
    # 224 px = exactly 7 patches: cell width 32, origins at 32 * i.
    # 64 px high: cells of 9.14 px, centres minus 16 = -11.4, -2.3, 6.9, 16, 25.1, 34.3,
    # 43.4: clamped into [0, 64 - 32].
    assert view.cell_origins(224, 64) == ([0, 32, 64, 96, 128, 160, 192],
                                          [0, 0, 7, 16, 25, 32, 32])
    assert view.cell_origins(32, 32) == ([0] * 7, [0] * 7)
    # 3 cells of 100 px on 300 x 200 with 64 px patches: centres 50, 150, 250 -> 18, 118,
    # 218; 200 px: 33.3, 100, 166.7 -> 1.3, 68, 134.7.
    assert DetailView(grid=3, patch=64).cell_origins(300, 200) == ([18, 118, 218], [1, 68, 135])


@pytest.mark.parametrize("size", [(31, 40), (40, 31)])
def test_cell_origins_refuse_photos_smaller_than_a_patch(size):
    with pytest.raises(ValueError, match="smaller than one 32px patch"):
        DetailView().cell_origins(*size)


def test_detail_mosaic_copies_unscaled_patches_from_the_hand_computed_origins():
    rgb = _coordinates_image(500, 500)
    mosaic = detail_mosaic(rgb, DetailView())
    assert mosaic.shape == (224, 224, 3) and mosaic.dtype == np.uint8
    assert mosaic.flags.c_contiguous
    for r, top in enumerate(ORIGINS_500):
        for c, left in enumerate(ORIGINS_500):
            tile = mosaic[32 * r : 32 * (r + 1), 32 * c : 32 * (c + 1)]
            assert np.array_equal(tile, rgb[top : top + 32, left : left + 32]), (r, c)
    # Spot checks written out: the first tile starts at pixel (20, 20), tile (1, 2) at
    # row 91, column 163.
    assert tuple(mosaic[0, 0]) == (20, 20, 0)
    assert tuple(mosaic[32, 64]) == (91, 163, 0)


def test_detail_mosaic_pads_tiny_photos_by_edge_replication():
    rgb = _coordinates_image(9, 21)  # 9 wide, 21 high
    mosaic = detail_mosaic(rgb, DetailView())
    assert mosaic.shape == (224, 224, 3)
    # Pads of 11 rows (5 above, 6 below) and 23 columns (11 left, 12 right) give one
    # 32 x 32 photo, and every cell's patch is that whole photo.
    tile = mosaic[:32, :32]
    assert np.array_equal(tile[5:26, 11:20], rgb)
    assert np.array_equal(tile[0, 11:20], rgb[0]) and np.array_equal(tile[31, 11:20], rgb[-1])
    assert np.array_equal(tile[5:26, 0], rgb[:, 0]) and np.array_equal(tile[5:26, 31], rgb[:, -1])
    assert np.array_equal(mosaic[192:, 192:], tile)
    # Only the short side is padded when the other already fits.
    wide = _coordinates_image(40, 30)
    wide_tile = detail_mosaic(wide, DetailView(grid=1))
    assert wide_tile.shape == (32, 32, 3)
    # 40 px, one cell: centre 20 - 16 = 4; 30 px padded by 1 above, 1 below.
    assert np.array_equal(wide_tile[1:31], wide[:, 4:36])


def test_detail_mosaic_pads_only_the_side_that_is_short():
    # 41 px: one cell, centre 20.5 - 16 = 4.5, rounds (half to even) to 4. Padding the
    # long side by even one pixel would move it to 5.
    tall = _coordinates_image(20, 41)
    tile = detail_mosaic(tall, DetailView(grid=1))
    assert np.array_equal(tile[:, 6:26], tall[4:36])
    wide = _coordinates_image(41, 20)
    tile = detail_mosaic(wide, DetailView(grid=1))
    assert np.array_equal(tile[6:26], wide[:, 4:36])


@pytest.mark.parametrize("bad", [np.zeros((64, 64), np.uint8), np.zeros((64, 64, 4), np.uint8)])
def test_detail_mosaic_rejects_non_rgb(bad):
    with pytest.raises(ValueError, match="HxWx3"):
        detail_mosaic(bad, DetailView())


def test_detail_input_and_model_inputs():
    rgb = np.zeros((500, 500, 3), np.uint8)
    rgb[..., 0] = 255
    view = DetailView()
    detail = to_detail_input(Image.fromarray(rgb), view)
    assert detail.shape == (3, 224, 224) and detail.dtype == np.float32
    np.testing.assert_allclose(detail[:, 100, 100],
                               [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225],
                               rtol=1e-5)

    prep = Preprocessing(shorter_side=64, max_longer_side=128)
    photo = Image.fromarray(rgb)
    v1 = to_model_inputs(photo, prep, None)
    assert list(v1) == ["image"] and v1["image"].shape == (3, 64, 64)
    v2 = to_model_inputs(photo, prep, view)
    assert sorted(v2) == ["detail", "image"] and v2["detail"].shape == (3, 224, 224)
    np.testing.assert_array_equal(v2["detail"], detail)
    # Training may cut the detail view from another version of the photo (e.g. the
    # un-augmented original): that source wins for `detail`, never for `image`.
    other = np.full((300, 300, 3), 255, np.uint8)
    mixed = to_model_inputs(photo, prep, view, detail_source=other)
    np.testing.assert_array_equal(mixed["image"], v2["image"])
    np.testing.assert_allclose(mixed["detail"][1, 0, 0], (1 - 0.456) / 0.224, rtol=1e-5)
