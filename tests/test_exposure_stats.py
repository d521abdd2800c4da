"""Exposure statistics of the input pixels (iqa.models.exposure): what they measure, that
the feature cache's path and the image path agree, and that a model with them trains,
caches, calibrates and exports with the same ONNX inputs as one without."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
onnx = pytest.importorskip("onnx")

from PIL import Image  # noqa: E402
from test_train_fakes import (  # noqa: E402, F401  (fixtures)
    fake_root,
    tiny_overrides,
    train_tiny,
)

from iqa.inference import QualityModel  # noqa: E402
from iqa.inference.cli import main  # noqa: E402
from iqa.inference.preprocess import to_model_inputs  # noqa: E402
from iqa.models import create_model  # noqa: E402
from iqa.models.exposure import HISTOGRAM_BINS, LUMA, NUM_EXPOSURE_STATS, exposure_stats  # noqa: E402


def _photo(seed: int = 0, size=(48, 64)) -> np.ndarray:
    """A smooth, mid-toned test picture in [0, 1], (H, W, 3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[0], 0:size[1]] / max(size)
    base = 0.25 + 0.5 * np.stack([xx, yy, (xx + yy) / 2], -1)
    return np.clip(base + rng.normal(0, 0.03, base.shape), 0, 1)


def _stats(rgb: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None]
    return exposure_stats(x)[0].numpy()


def test_statistics_match_a_plain_numpy_reading():
    rgb = _photo()
    stats = _stats(rgb)
    assert stats.shape == (NUM_EXPOSURE_STATS,)
    y = rgb @ np.asarray(LUMA)
    centres = (np.arange(HISTOGRAM_BINS) + 0.5) / HISTOGRAM_BINS
    histogram = np.maximum(0, 1 - np.abs(y[..., None] - centres) * HISTOGRAM_BINS).mean((0, 1))
    np.testing.assert_allclose(stats[:HISTOGRAM_BINS], histogram, atol=1e-5)
    # No pixel is clipped in a mid-toned picture; colour and spread are plain moments.
    np.testing.assert_allclose(stats[HISTOGRAM_BINS:HISTOGRAM_BINS + 2], 0, atol=1e-4)
    np.testing.assert_allclose(stats[-4:-1], rgb.mean((0, 1)), atol=1e-5)
    assert stats[-1] == pytest.approx(y.std(), abs=1e-4)


def test_darkening_moves_the_histogram_down_and_clips_shadows():
    rgb = _photo()
    bins = np.arange(HISTOGRAM_BINS)
    clean, dark = _stats(rgb), _stats(rgb * 0.15)
    mean_bin = (clean[:HISTOGRAM_BINS] @ bins, dark[:HISTOGRAM_BINS] @ bins)
    assert mean_bin[1] < mean_bin[0] - 2
    assert dark[HISTOGRAM_BINS] > clean[HISTOGRAM_BINS]  # share of crushed shadows
    blown = _stats(np.clip(rgb * 3.0, 0, 1))
    assert blown[HISTOGRAM_BINS + 1] > 0.3  # share of clipped highlights
    # Geometry does not matter: a mirrored photo has the same statistics.
    np.testing.assert_allclose(_stats(rgb[:, ::-1].copy()), _stats(rgb), atol=1e-6)


@pytest.fixture(scope="module")
def exposure_model():
    torch.manual_seed(0)
    return create_model(pretrained=False, freeze_blocks=4, pool_stages=[3, 6], head_hidden=16,
                        exposure_stats=True).eval()


def test_the_cached_path_equals_the_image_path(exposure_model):
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        direct, _ = exposure_model(x)
        cached, _ = exposure_model.forward_trainable(
            exposure_model.forward_frozen(x), exposure_model.exposure.stats(x))
    torch.testing.assert_close(direct, cached)
    with pytest.raises(ValueError, match="exposure statistics: True"):
        exposure_model.forward_trainable(exposure_model.forward_frozen(x))


def test_the_heads_react_to_exposure_through_the_statistics(exposure_model):
    """Statistics of a darker input change the score with the CNN features held fixed."""
    x = torch.rand(1, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        feats = exposure_model.forward_frozen(x)
        bright, _ = exposure_model.forward_trainable(feats, exposure_model.exposure.stats(x))
        dark, _ = exposure_model.forward_trainable(feats, exposure_model.exposure.stats(x - 1.5))
    assert abs(float(bright) - float(dark)) > 1e-4


def test_mean_std_overrides_are_refused(exposure_model):
    from iqa.training.config import ConfigError
    from iqa.training.run_data import preprocessing_for

    with pytest.raises(ConfigError, match="exposure_stats"):
        preprocessing_for(exposure_model, {"preprocessing": {"mean": [0.4] * 3}})


def test_training_caches_statistics_and_exports_the_same_inputs(
        fake_root, tmp_path, tmp_path_factory):  # noqa: F811
    cache_dir = tmp_path_factory.mktemp("exposure_cache")
    run_dir = tmp_path / "run"
    assert train_tiny("livec_exposure", run_dir, fake_root, tiny_overrides(cache_dir)) == 0
    entries = list(cache_dir.rglob("*.npz"))
    assert entries
    with np.load(entries[0]) as data:
        assert data["exposure"].shape == (NUM_EXPOSURE_STATS,)
        assert "detail" not in data

    calibrated = tmp_path / "calibrated.pt"
    assert main(["calibrate", str(run_dir / "best.pt"), "-o", str(calibrated), "--threads", "1",
                 "--no-progress"]) == 0
    out = tmp_path / "exposure.onnx"
    assert main(["export", str(calibrated), "-o", str(out)]) == 0
    proto = onnx.load(str(out))
    # The statistics are computed inside the graph: the ONNX inputs do not change.
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["score", "mos", "factors"]

    from iqa.training.export import model_from_checkpoint

    model = model_from_checkpoint(torch.load(calibrated, weights_only=False))
    assert model.model_kwargs["exposure_stats"] is True
    photo = Image.fromarray((_photo(2, (90, 120)) * 255).astype(np.uint8))
    (pixels,) = to_model_inputs(photo, model.preprocessing, None).values()
    with torch.no_grad():
        score, mos, _ = model.forward_calibrated(torch.from_numpy(pixels)[None])
    result = QualityModel(out).score(photo)
    assert result.score == pytest.approx(float(score), abs=1e-4)
    assert result.mos == pytest.approx(float(mos), abs=1e-4)
