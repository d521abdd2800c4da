"""The shipped model against the score semantics of DESIGN.md, on photos it never saw.

The clean photos are scikit-image's bundled, permissively licensed ones (none is in LIVE
Challenge or the pristine set used for training); the distorted versions come from our own
distortion library at fixed seeds.

The shipped model (MODEL_CARD.md) ranks distortions correctly and its calibrated score sits
closer to the page's scale than v1's did, but some absolute targets of DESIGN.md are not met
yet. Those checks are strict xfails that state the measured values: a model that meets a
target turns its xfail into a failure, and the marker must then go.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from iqa.inference import QualityModel, default_model_path

# IQA_CANDIDATE_MODEL=path.onnx runs these checks on a model before it ships: a strict xfail
# that then "XPASS"es is a gap the candidate closes.
MODEL_PATH = Path(os.environ.get("IQA_CANDIDATE_MODEL") or default_model_path())

pytestmark = pytest.mark.skipif(not MODEL_PATH.is_file(), reason=f"no model at {MODEL_PATH}")

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left")


def _known_gap(reason: str):
    # raises=AssertionError: only a missed target counts as the known gap; a crash in the
    # model or the test itself fails the suite instead of passing as "expected".
    return pytest.mark.xfail(reason=f"known gap of the shipped model: {reason}", strict=True,
                             raises=AssertionError)


@pytest.fixture(scope="module")
def model() -> QualityModel:
    return QualityModel(MODEL_PATH)


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    from skimage import data

    out = {}
    for name in PHOTOS:
        image = getattr(data, name)() if name != "motorcycle_left" else data.stereo_motorcycle()[0]
        out[name] = np.ascontiguousarray(image[..., :3])
    return out


def _scores(model, images) -> np.ndarray:
    return np.array([r.score for r in model.score_many(list(images))])


def _distorted(photos, name: str, severity: float, seed: int = 0) -> list[np.ndarray]:
    from iqa.training.augment import distort

    return [
        distort(img, name, severity, np.random.default_rng(seed + i))
        for i, img in enumerate(photos.values())
    ]


@_known_gap("clean photos average 0.73 (0.53-0.84; v1: 0.67)")
def test_clean_photos_score_high(model, photos):
    scores = _scores(model, photos.values())
    assert scores.mean() > 0.8, dict(zip(photos, scores.round(3), strict=True))


@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur"])
def test_strong_whole_frame_blur_is_very_poor_for_most_photos(model, photos, name):
    scores = _scores(model, _distorted(photos, name, 0.8))
    assert np.median(scores) < 0.25, scores.round(3)


@_known_gap("median < 0.25, but chelsea 0.26 and the coffee cup 0.30-0.37 (v1: 0.41-0.46)")
@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur"])
def test_strong_whole_frame_blur_is_very_poor(model, photos, name):
    scores = _scores(model, _distorted(photos, name, 0.8))
    assert scores.max() < 0.25, scores.round(3)


@_known_gap("2 EV under / 1.5 EV over cost little: medians 0.61 / 0.62, clean 0.73")
@pytest.mark.parametrize("name", ["underexposure", "overexposure"])
def test_bad_exposure_lands_in_the_poor_to_decent_band(model, photos, name):
    scores = _scores(model, _distorted(photos, name, 0.5))
    assert 0.3 <= np.median(scores) <= 0.55, scores.round(3)


# v1 missed this band by 0.002 (median 0.552); v2 lands at 0.50.
def test_night_flare_lands_in_the_poor_to_decent_band(model, photos):
    from iqa.training.augment import distort

    # A night scene: the photo 1.3 stops down (severity 0.3), then light flare around its highlights.
    night = _distorted(photos, "underexposure", 0.3)
    flared = [distort(img, "flare", 0.7, np.random.default_rng(i)) for i, img in enumerate(night)]
    scores = _scores(model, flared)
    assert 0.3 <= np.median(scores) <= 0.55, scores.round(3)


def test_background_blur_costs_less_than_whole_frame_blur(model, photos):
    background = _scores(model, _distorted(photos, "background_blur", 0.8))
    whole = _scores(model, _distorted(photos, "gaussian_blur", 0.8))
    clean = _scores(model, photos.values())
    assert np.all(background > whole), (background.round(3), whole.round(3))
    assert np.all(background < clean + 0.05), (background.round(3), clean.round(3))


def test_score_falls_with_blur_severity(model, photos):
    means = [_scores(model, _distorted(photos, "gaussian_blur", s)).mean() for s in (0.0, 0.4, 0.8)]
    assert means[0] > means[1] > means[2], np.round(means, 3)


@pytest.mark.parametrize(
    "name", ["gaussian_blur", "motion_blur", "underexposure", "gaussian_noise", "jpeg", "flare"]
)
def test_every_family_lowers_the_score(model, photos, name):
    clean = _scores(model, photos.values())
    distorted = _scores(model, _distorted(photos, name, 0.7))
    assert distorted.mean() < clean.mean(), (distorted.round(3), clean.round(3))


# One distortion per family of the factor table; severities in the library's [0, 1].
MONOTONE_FAMILIES = ("gaussian_blur", "motion_blur", "gaussian_noise", "jpeg", "underexposure",
                     "overexposure", "low_contrast", "flare")
SEVERITIES = (0.0, 0.25, 0.5, 0.75, 1.0)
# A rise this small between two severities is not a reversal: scores are not exact to the
# third decimal across nearly identical inputs (JPEG at neighbouring qualities, say).
MONOTONE_TOLERANCE = 0.01


def _reversals(model, photos) -> list[tuple]:
    from iqa.training.augment import distort

    reversals = []
    for name in MONOTONE_FAMILIES:
        for i, (photo_name, image) in enumerate(photos.items()):
            # The same seed at every severity: only the strength changes along a row.
            versions = [image if s == 0 else distort(image, name, s, np.random.default_rng(i))
                        for s in SEVERITIES]
            scores = _scores(model, versions)
            rises = np.flatnonzero(np.diff(scores) > MONOTONE_TOLERANCE)
            reversals += [(name, photo_name, SEVERITIES[j], SEVERITIES[j + 1],
                           round(float(scores[j]), 3), round(float(scores[j + 1]), 3))
                          for j in rises]
    return reversals


@_known_gap("2 of 40 photo x family rows rise, both at overexposure 0.25: chelsea 0.525 to "
            "0.546, rocket 0.715 to 0.726")
def test_score_is_monotone_in_every_family(model, photos):
    assert _reversals(model, photos) == []
