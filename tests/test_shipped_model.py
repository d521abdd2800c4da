"""The shipped model against the score semantics of DESIGN.md, on photos it never saw.

The clean photos are scikit-image's bundled, permissively licensed ones (none is in LIVE
Challenge or the pristine set used for training); the distorted versions come from our own
distortion library at fixed seeds (iqa.training.semantic_checks, which
``scripts/shipped_checks.py MODEL`` prints as figures).

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
from iqa.training import semantic_checks as checks

# IQA_CANDIDATE_MODEL=path.onnx runs these checks on a model before it ships: a strict xfail
# that then "XPASS"es is a gap the candidate closes.
MODEL_PATH = Path(os.environ.get("IQA_CANDIDATE_MODEL") or default_model_path())

pytestmark = pytest.mark.skipif(not MODEL_PATH.is_file(), reason=f"no model at {MODEL_PATH}")


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
    return checks.skimage_photos()


_scores = checks.scores_of
_distorted = checks.distorted


def test_the_metadata_says_what_the_model_was_trained_on(model):
    from iqa.inference.contract import META_TRAINING_DATA

    text = model.metadata[META_TRAINING_DATA]
    assert "LIVE" in text and "README-LIVE.txt" in text  # the licence notice travels
    if model.metadata.get("iqa.calibration"):  # v2 and later learnt page-scale levels
        assert "never an absolute score" not in text
        assert "absolute page-scale levels" in text


@_known_gap("clean photos average 0.76 (0.60-0.86; v2.0: 0.73, v1: 0.67)")
def test_clean_photos_score_high(model, photos):
    scores = _scores(model, photos.values())
    assert scores.mean() > 0.8, dict(zip(photos, scores.round(3), strict=True))


@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur"])
def test_strong_whole_frame_blur_is_very_poor_for_most_photos(model, photos, name):
    scores = _scores(model, _distorted(photos, name, 0.8))
    assert np.median(scores) < 0.25, scores.round(3)


@_known_gap("median < 0.25, but chelsea 0.31-0.33 and the coffee cup 0.36-0.41 (v2.0: 0.26 "
            "and 0.30-0.37, v1: 0.41-0.46)")
@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur"])
def test_strong_whole_frame_blur_is_very_poor(model, photos, name):
    scores = _scores(model, _distorted(photos, name, 0.8))
    assert scores.max() < 0.25, scores.round(3)


@_known_gap("2 EV under / 1.5 EV over cost little: medians 0.63 / 0.64, clean 0.76 (v2.0: "
            "0.61 / 0.62, clean 0.73)")
@pytest.mark.parametrize("name", ["underexposure", "overexposure"])
def test_bad_exposure_lands_in_the_poor_to_decent_band(model, photos, name):
    scores = _scores(model, _distorted(photos, name, 0.5))
    assert 0.3 <= np.median(scores) <= 0.55, scores.round(3)


# v1 missed this band by 0.002 (median 0.552); v2.0 lands at 0.50, v2.1 at 0.51.
def test_night_flare_lands_in_the_poor_to_decent_band(model, photos):
    scores = _scores(model, checks.night_flare(photos))
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


@_known_gap("2 of 40 photo x family rows rise, both at overexposure 0.25: chelsea 0.595 to "
            "0.616, rocket 0.679 to 0.703 (v2.0: the same two rows)")
def test_score_is_monotone_in_every_family(model, photos):
    assert checks.reversals(model, photos) == []


def test_a_jpeg_scores_as_a_file_what_it_scores_fully_decoded(model, photos, monkeypatch):
    # libjpeg's DCT-scaled decode filters differently from the resize the model was
    # trained behind.
    # Decoding a 1024x768 JPEG straight to the 512x384 view scored it lower (astronaut
    # 0.751 against 0.778); the reduced decode now stops at 3x the view.
    import io

    from PIL import Image

    from iqa.inference import preprocess

    buffer = io.BytesIO()
    Image.fromarray(photos["astronaut"]).resize((1024, 768), Image.Resampling.LANCZOS).save(
        buffer, "JPEG", quality=92)
    data = buffer.getvalue()
    full = model.score(Image.open(io.BytesIO(data)).convert("RGB")).score
    assert model.score(data).score == pytest.approx(full, abs=1e-6)
    monkeypatch.setattr(preprocess, "REDUCTION_GAP", 1)  # the decode before iqa 0.3.2
    assert model.score(data).score < full - 0.01
