"""The shipped model on camera-resolution photos: does it see what 100 % shows?

Issue 12's full-resolution checks, on five textured 2560x1600 photos from Debian's
plasma-workspace-wallpapers (LGPL-3.0; `python scripts/fetch_eval_photos.py` puts them in
.cache/eval-photos/plasma/, with a SOURCES.csv naming each author). They are evaluation
photos: nothing trains, calibrates or selects a model on them. Distortions are applied at
the photo's own resolution with OpenCV and numpy, independently of the training library
(iqa.training.semantic_checks; ``scripts/shipped_checks.py MODEL`` prints the figures):

- a Gaussian blur of sigma 3 px (plainly soft at 100 %) must land below 0.5;
- sigma 1.5 px must cost at least 0.08;
- Gaussian noise of sigma 12 (0-255 scale) must cost at least 0.08.

Gaps of the shipped model are strict xfails that state the measured values (see
tests/test_shipped_model.py for the convention).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from iqa.inference import QualityModel, default_model_path
from iqa.training import semantic_checks as checks

PHOTO_DIR = checks.fullres_dir()
PHOTOS = checks.FULLRES_PHOTOS

# As in test_shipped_model.py: IQA_CANDIDATE_MODEL=path.onnx checks a model before it ships.
MODEL_PATH = Path(os.environ.get("IQA_CANDIDATE_MODEL") or default_model_path())

pytestmark = [
    pytest.mark.skipif(not MODEL_PATH.is_file(), reason=f"no model at {MODEL_PATH}"),
    pytest.mark.skipif(not checks.fullres_available(PHOTO_DIR),
                       reason=f"no evaluation photos in {PHOTO_DIR}: run "
                              "python scripts/fetch_eval_photos.py"),
]


def _known_gap(reason: str):
    return pytest.mark.xfail(reason=f"known gap of the shipped model: {reason}", strict=True,
                             raises=AssertionError)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    out = checks.fullres_photos(PHOTO_DIR)
    assert all(max(p.shape[:2]) >= 2000 for p in out), [p.shape for p in out]
    return out


@pytest.fixture(scope="module")
def scores(photos) -> dict[str, np.ndarray]:
    return checks.fullres_scores(QualityModel(MODEL_PATH), photos)


def _table(scores) -> dict:
    return {k: dict(zip(PHOTOS, v.round(3), strict=True)) for k, v in scores.items()}


def test_the_distortions_are_real(photos):
    """The fixtures do what the checks claim: sigma 3 removes fine detail, noise adds it."""
    import cv2

    def detail(image):  # variance of the Laplacian, a standard sharpness measure
        return cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()

    image = photos[PHOTOS.index("OneStandsOut")]
    assert detail(checks.gaussian_blur(image, 3.0)) < 0.1 * detail(image)
    noisy = checks.gaussian_noise(image, 12.0, seed=0)
    assert detail(noisy) > detail(image)
    # sigma 12 where clipping at 0 and 255 cannot shrink it
    midtones = (image > 48) & (image < 207)
    assert abs(float(np.std(noisy[midtones].astype(np.float32) - image[midtones])) - 12.0) < 0.5


@_known_gap("sigma 3 px blur: median 0.58 (0.38-0.73; v2.0 0.58, v1 0.69); a 576 x 352 view "
            "of a 2560 x 1600 photo hides it")
def test_sigma_3_blur_at_full_resolution_is_below_half(scores):
    assert np.median(scores["blur 3"]) < 0.5, _table(scores)


@_known_gap("sigma 1.5 px blur costs a median 0.042 (v2.0 0.049, v1 0.028)")
def test_sigma_1_5_blur_costs_at_least_0_08(scores):
    drop = scores["clean"] - scores["blur 1.5"]
    assert np.median(drop) >= 0.08, _table(scores)


@_known_gap("sigma 12 noise costs a median 0.038 (v2.0 0.031, v1 0.020)")
def test_sigma_12_noise_costs_at_least_0_08(scores):
    drop = scores["clean"] - scores["noise 12"]
    assert np.median(drop) >= 0.08, _table(scores)
