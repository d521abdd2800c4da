"""A fine-tuned QualityNet with a detail view: native-resolution patches beside the global
view, through the model, the training data, the feature cache, training and export."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
onnx = pytest.importorskip("onnx")

from PIL import Image  # noqa: E402
from test_train_fakes import (  # noqa: E402, F401  (fixtures)
    fake_root,
    feature_cache_dir,
    make_photo,
    tiny_overrides,
    train_tiny,
)

from iqa.inference import QualityModel  # noqa: E402
from iqa.inference.cli import main  # noqa: E402
from iqa.inference.contract import DetailView, Preprocessing  # noqa: E402
from iqa.inference.preprocess import detail_mosaic, resize_for_model, to_model_inputs  # noqa: E402
from iqa.models import create_model  # noqa: E402
from iqa.training.data import ImageSpec, render, render_views  # noqa: E402

PREP = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, shorter_side=64, max_longer_side=128)
VIEW = DetailView(grid=2, patch=32, mean=(0.5,) * 3, std=(0.5,) * 3)
DETAIL_SETS = ["model.detail_grid=2", "model.detail_patch=32"]


@pytest.fixture(scope="module")
def two_view():
    torch.manual_seed(0)
    return create_model(pretrained=False, freeze_blocks=4, pool_stages=[3, 6], head_hidden=16,
                        detail_grid=2).eval()


def test_the_heads_see_both_views(two_view):
    single = create_model(pretrained=False, freeze_blocks=4, pool_stages=[3, 6], head_hidden=16)
    assert two_view.score_head.fc1.in_features == 2 * single.score_head.fc1.in_features
    x, d = torch.randn(2, 3, 64, 96), torch.randn(2, 3, 64, 64)
    score, factors = two_view(x, d)
    assert score.shape == (2,) and factors.shape == (2, 8)
    split = two_view.forward_trainable(two_view.forward_frozen(x), two_view.forward_frozen(d))
    assert torch.equal(score, split[0])
    # The detail view reaches the score: another mosaic, another score.
    assert not torch.allclose(score, two_view(x, torch.randn(2, 3, 64, 64))[0])
    with pytest.raises(ValueError, match="detail"):
        two_view(x)


def test_detail_view_round_trips_through_model_kwargs(two_view):
    assert two_view.model_kwargs["detail_grid"] == 2
    clone = create_model(**two_view.model_kwargs, pretrained=False).eval()
    clone.load_state_dict(two_view.state_dict(), strict=True)
    assert clone.detail_view == two_view.detail_view
    x, d = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    assert torch.equal(clone(x, d)[0], two_view(x, d)[0])
    groups = {g["name"]: g for g in two_view.param_groups(1e-3)}
    head = {id(p) for g in ("head", "head_no_decay") for p in groups[g]["params"]}
    assert {id(p) for p in two_view.detail_norms.parameters()} <= head


def test_render_views_distorts_the_native_photo_before_either_view(tmp_path):
    path = make_photo(tmp_path / "p.png", 200, 150, seed=3)
    spec = ImageSpec(str(path), distortion="gaussian_blur", severity=0.6, seed=5, flip=True)
    (image, detail), labels = render_views(spec, PREP, VIEW)
    # The same distortion on the native pixels, then inference's own views of them.
    from iqa.training.augment import distort_labelled

    native = np.asarray(Image.open(path).convert("RGB"))
    blurred, _ = distort_labelled(native, "gaussian_blur", 0.6, np.random.default_rng(5))
    blurred = np.ascontiguousarray(blurred[:, ::-1])
    assert np.array_equal(detail, detail_mosaic(blurred, VIEW))
    assert np.array_equal(image, np.asarray(resize_for_model(Image.fromarray(blurred), PREP)))
    assert labels.max() > 0
    # v1's render distorts after the resize instead: a different global view.
    assert not np.array_equal(render(spec, PREP)[0], image)


def _train(run_dir, fake_root, cache_dir, extra):  # noqa: F811
    return train_tiny("livec_levels", run_dir, fake_root,
                      [*tiny_overrides(cache_dir), *DETAIL_SETS, *extra])


def test_training_caches_both_views_and_exports_a_two_input_model(
        fake_root, tmp_path, tmp_path_factory):  # noqa: F811
    cache_dir = tmp_path_factory.mktemp("detail_cache")
    run_dir = tmp_path / "run"
    assert _train(run_dir, fake_root, cache_dir, []) == 0
    entries = list(cache_dir.rglob("*.npz"))
    assert entries
    with np.load(entries[0]) as data:
        # Frozen front (stride 16) of the 64 x 64 mosaic beside the global view's map.
        assert data["detail"].shape == (80, 4, 4) and data["feats"].shape[0] == 80
    state = torch.load(run_dir / "best.pt", weights_only=False)
    assert state["model_kwargs"]["detail_grid"] == 2

    calibrated = tmp_path / "calibrated.pt"
    assert main(["calibrate", str(run_dir / "best.pt"), "-o", str(calibrated), "--threads", "1",
                 "--no-progress"]) == 0
    report = torch.load(calibrated, weights_only=False)["metadata"]["calibration"]
    from iqa.training.multiview_data import level_samples

    photos = sorted(p for p in (fake_root / "pristine").rglob("*.jpg") if "bsds500" not in str(p))
    # A two-view model is also calibrated on the versions only its detail view can see.
    assert report["versions"] == len(list(level_samples(photos, per_distortion=3)))

    out = tmp_path / "two_view.onnx"
    assert main(["export", str(calibrated), "-o", str(out)]) == 0
    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == ["image", "detail"]
    assert [o.name for o in proto.graph.output] == ["score", "mos", "factors"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["iqa.inputs"])["detail"]["grid"] == 2
    scorer = QualityModel(out)
    photo = Image.fromarray((np.random.default_rng(1).random((300, 400, 3)) * 255).astype(np.uint8))
    from iqa.training.export import model_from_checkpoint

    model = model_from_checkpoint(torch.load(calibrated, weights_only=False))
    inputs = to_model_inputs(photo, model.preprocessing, model.detail_view)
    with torch.no_grad():
        score, mos, _ = model.forward_calibrated(*(torch.from_numpy(v)[None] for v in inputs.values()))
    result = scorer.score(photo)
    assert result.score == pytest.approx(float(score), abs=1e-4)
    assert result.mos == pytest.approx(float(mos), abs=1e-4)


def test_training_on_the_fly_sees_both_views(fake_root, tmp_path):  # noqa: F811
    assert _train(tmp_path / "run", fake_root, tmp_path / "unused",
                  ["cache_features=false"]) == 0
    assert not (tmp_path / "unused").exists() or not list((tmp_path / "unused").rglob("*.npz"))
