"""Model v1's ONNX file (iqa-lite0, shipped with iqa 0.1) still loads and scores.

Users keep their own copies of it, so `--model` and `QualityModel(path)` must read its
single-input, uncalibrated contract after v2 became the default. The file itself is
kept, byte for byte as it shipped, in tests/data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iqa.inference import QualityModel, default_model_path
from iqa.inference.cli import main

V1_MODEL = Path(__file__).parent / "data" / "iqa-lite0-v1.onnx"


@pytest.fixture(scope="module")
def v1() -> QualityModel:
    return QualityModel(V1_MODEL, threads=1)


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory) -> Path:
    from skimage import data

    path = tmp_path_factory.mktemp("v1") / "astronaut.jpg"
    Image.fromarray(data.astronaut()).save(path, quality=92)
    return path


def test_v1_file_keeps_its_contract(v1):
    info = v1.info()
    assert info["version"] == "livec"
    assert info["preprocessing"]["shorter_side"] == 320
    assert [i["name"] for i in info["inputs"]] == ["image"]
    assert [o["name"] for o in info["outputs"]] == ["score", "factors"]
    assert v1.detail_view is None and not v1.has_mos


def test_v1_file_scores_like_it_did(v1, photo_file):
    result = v1.score(photo_file)
    # v1 on the astronaut, as recorded when it was the shipped model (MODEL_CARD.md:
    # clean photos 0.51-0.74); its MOS-scale score is its only score.
    assert 0.5 < result.score < 0.8
    assert result.mos is None  # no calibration: the score is on LIVE Challenge's MOS scale
    assert set(result.factors) == {"blur", "motion_blur", "underexposure", "overexposure",
                                   "low_contrast", "light_distortion", "noise", "compression"}


def test_cli_scores_with_the_v1_file(photo_file, capsys):
    assert main(["score", str(photo_file), "--model", str(V1_MODEL), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["status"] == "ok"
    assert rows[0]["score"] == pytest.approx(
        QualityModel(V1_MODEL, threads=1).score(photo_file).score, abs=1e-6)


def test_the_default_model_is_not_v1():
    assert default_model_path().name != V1_MODEL.name
    assert QualityModel().info()["version"] != "livec"
    assert np.isfinite(QualityModel().score(np.full((64, 64, 3), 128, np.uint8)).score)
