"""Tests of the synthetic distortion library (iqa.training.augment) on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from iqa.inference.contract import FACTOR_NAMES
from iqa.training.augment import (
    DISTORTIONS,
    FAMILY_ORDER,
    apply_plan,
    compose,
    distort,
    distort_labelled,
    labels_to_vector,
    sample_plan,
)
from iqa.training.augment.base import linear_to_srgb, srgb_to_linear
from iqa.training.augment.exposure import OVEREXPOSURE_EV, UNDEREXPOSURE_EV
from iqa.training.augment.fidelity import fidelity, ssim

NAMES = sorted(DISTORTIONS)
LOCAL = {"background_blur", "local_motion_blur"}


def _resize_shorter(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = side / min(h, w)
    size = (round(w * scale), round(h * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Three real, permissively licensed photos from scikit-image, shorter side 256."""
    from skimage import data

    return [_resize_shorter(p, 256) for p in (data.astronaut(), data.coffee(), data.chelsea())]


def test_every_family_has_a_distortion():
    families = {d.family for d in DISTORTIONS.values()}
    assert families == set(FACTOR_NAMES)
    for name, d in DISTORTIONS.items():
        assert d.name == name


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_exact_identity(name, photos):
    image = photos[1]
    out, label = distort_labelled(image, name, 0.0, np.random.default_rng(0))
    assert np.array_equal(out, image)
    assert out is not image
    assert label == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output_and_shape_kept(name, photos):
    image = photos[2][:97, :131].copy()  # odd size
    image.setflags(write=False)  # distortions must never write into their input
    a = distort(image, name, 0.6, np.random.default_rng(7))
    b = distort(image, name, 0.6, np.random.default_rng(7))
    assert np.array_equal(a, b)
    assert a.shape == image.shape and a.dtype == np.uint8
    assert not np.array_equal(a, image)


@pytest.mark.parametrize("name", NAMES)
def test_quality_falls_monotonically_with_severity(name, photos):
    severities = (0.2, 0.5, 0.8, 1.0)
    scores = np.array(
        [
            [fidelity(p, distort(p, name, s, np.random.default_rng(i))) for s in severities]
            for i, p in enumerate(photos)
        ]
    )
    mean = scores.mean(axis=0)
    assert np.all(np.diff(mean) < 0), f"{name}: mean fidelity {mean} does not fall"
    # Every single photo degrades too (small slack for ties on near-uniform content).
    assert np.all(np.diff(scores, axis=1) < 0.01), f"{name}: per-photo fidelity {scores}"
    assert mean[0] < 0.999, f"{name}: severity 0.2 leaves the photos untouched"


@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur", "motion_blur", "gaussian_noise"])
def test_severity_means_the_same_at_twice_the_resolution(name, photos):
    """Distorting a 2x larger copy and viewing it at the small size gives the same quality."""
    small = _resize_shorter(photos[0], 192)
    big = cv2.resize(small, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    seen = cv2.resize(big, small.shape[1::-1], interpolation=cv2.INTER_AREA)
    for severity in (0.4, 0.8):
        direct = ssim(small, distort(small, name, severity, np.random.default_rng(1)))
        out_big = distort(big, name, severity, np.random.default_rng(1))
        via_big = ssim(seen, cv2.resize(out_big, small.shape[1::-1], interpolation=cv2.INTER_AREA))
        # Without scaling, the large copy would look about half as distorted.
        unscaled = ssim(small, distort(small, name, severity / 2, np.random.default_rng(1)))
        assert abs(direct - via_big) < 0.05, (name, severity, direct, via_big)
        assert abs(direct - via_big) < abs(direct - unscaled), (name, direct, via_big, unscaled)


def test_srgb_round_trip_is_exact():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    assert np.array_equal(linear_to_srgb(srgb_to_linear(values)), values)


def test_underexposure_is_an_ev_shift_in_linear_light(photos):
    image = photos[1]
    severity = 0.5
    out = distort(image, "underexposure", severity, np.random.default_rng(0))
    ratio = 2.0 ** -UNDEREXPOSURE_EV(severity)
    lin_in, lin_out = srgb_to_linear(image), srgb_to_linear(out)
    bright = lin_in > 0.2  # away from 8-bit quantisation of the darkened shadows
    np.testing.assert_allclose(lin_out[bright], lin_in[bright] * ratio, rtol=0.03, atol=2e-3)
    out = distort(image, "overexposure", severity, np.random.default_rng(0))
    ratio = 2.0 ** OVEREXPOSURE_EV(severity)
    lin_out = srgb_to_linear(out)
    unclipped = (lin_in > 0.05) & (lin_in * ratio < 0.9)
    np.testing.assert_allclose(lin_out[unclipped], lin_in[unclipped] * ratio, rtol=0.03)
    assert np.all(lin_out[lin_in * ratio > 1.0] == 1.0)  # highlights burn out


def test_flare_glows_around_a_bright_light():
    image = np.full((256, 384, 3), 25, np.uint8)
    cv2.circle(image, (100, 80), 4, (255, 255, 255), -1)
    out = distort(image, "flare", 0.5, np.random.default_rng(3)).astype(int)
    gain = out.mean(axis=2) - 25
    near, far = gain[80, 112], gain[200, 350]
    assert near > far > 0, (near, far)  # a glow that fades with distance, over a veil


def test_local_blurs_have_reduced_labels(photos):
    for name in sorted(LOCAL):
        _, label = distort_labelled(photos[0], name, 0.8, np.random.default_rng(5))
        assert 0.0 < label < 0.8, (name, label)
    _, label = distort_labelled(photos[0], "gaussian_blur", 0.8, np.random.default_rng(5))
    assert label == 0.8


def test_bad_inputs_raise_clear_errors(photos):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="uint8"):
        distort(photos[0].astype(np.float32), "jpeg", 0.5, rng)
    with pytest.raises(ValueError, match="H x W x 3"):
        distort(photos[0][..., 0], "jpeg", 0.5, rng)
    with pytest.raises(ValueError, match="severity"):
        distort(photos[0], "jpeg", 1.5, rng)
    with pytest.raises(KeyError, match="unknown distortion"):
        distort(photos[0], "sepia", 0.5, rng)
    with pytest.raises(ValueError, match="unknown families"):
        compose(photos[0], rng, families=["sharpness"])


def test_compose_labels_match_what_was_applied(photos):
    image = photos[0]
    for seed in range(6):
        out, labels = compose(image, np.random.default_rng(seed))
        # Re-draw the same plan from the same generator state and apply it by hand.
        rng = np.random.default_rng(seed)
        plan = sample_plan(rng)
        manual, expected = image, {}
        for name, severity in plan:
            manual, label = DISTORTIONS[name].apply(manual, severity, rng)
            expected[DISTORTIONS[name].family] = label
            if name not in LOCAL:
                assert label == severity
        assert np.array_equal(out, manual)
        assert labels == expected
        assert 1 <= len(labels) <= 3
        assert all(0.0 <= v <= 1.0 for v in labels.values())
        vector = labels_to_vector(labels)
        assert vector.dtype == np.float32 and vector.shape == (len(FACTOR_NAMES),)
        for i, family in enumerate(FACTOR_NAMES):
            assert vector[i] == np.float32(labels.get(family, 0.0))


def test_compose_is_deterministic(photos):
    a, la = compose(photos[2], np.random.default_rng(11), max_ops=3)
    b, lb = compose(photos[2], np.random.default_rng(11), max_ops=3)
    assert np.array_equal(a, b) and la == lb


def test_sampled_plans_use_distinct_families_in_pipeline_order():
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(300):
        plan = sample_plan(rng, severity_range=(0.3, 0.6))
        families = [DISTORTIONS[name].family for name, _ in plan]
        counts.add(len(plan))
        assert len(set(families)) == len(families)
        assert families == sorted(families, key=FAMILY_ORDER.index)
        assert not {"underexposure", "overexposure"} <= set(families)
        assert all(0.3 <= s <= 0.6 for _, s in plan)
    assert counts == {1, 2, 3}


def test_sample_plan_respects_families():
    rng = np.random.default_rng(1)
    for _ in range(50):
        plan = sample_plan(rng, min_ops=2, max_ops=2, families=["underexposure", "overexposure"])
        assert len(plan) == 1  # the two exposure families contradict each other
        plan = sample_plan(rng, min_ops=2, max_ops=3, families=["noise", "compression"])
        assert {DISTORTIONS[n].family for n, _ in plan} == {"noise", "compression"}


def test_apply_plan_rejects_a_family_twice(photos):
    with pytest.raises(ValueError, match="twice"):
        apply_plan(photos[0], [("jpeg", 0.3), ("webp", 0.3)], np.random.default_rng(0))


def test_severity_tables_are_monotone_and_validated():
    from iqa.training.augment import SeverityTable

    table = SeverityTable((100.0, 50.0, 1.0))
    assert table(0.0) == 100.0 and table(0.25) == 75.0 and table(1.0) == 1.0
    with pytest.raises(ValueError, match="monotone"):
        SeverityTable((0.0, 2.0, 1.0))


def test_labels_to_vector_orders_and_validates():
    vector = labels_to_vector({"noise": 0.5, "blur": 0.25})
    assert vector[FACTOR_NAMES.index("noise")] == 0.5
    assert vector[FACTOR_NAMES.index("blur")] == 0.25
    assert vector.sum() == 0.75
    with pytest.raises(ValueError, match="unknown families"):
        labels_to_vector({"sharpness": 0.1})
