"""Model v2: the detail view, the calibration, level targets, training, export, loading.

The end-to-end test trains v2 from a tiny rated set and a tiny folder of clean photos that
the test writes itself, with a randomly initialised backbone (no ImageNet weights needed),
exports it, and scores through onnxruntime with the production QualityModel.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from iqa.inference.contract import DETAIL_INPUT, INPUT_NAME, META_INPUTS, DetailView
from iqa.inference.preprocess import detail_mosaic, to_detail_input, to_model_inputs

torch = pytest.importorskip("torch")


# ------------------------------------------------------------------ detail view (no torch)


def test_cell_origins_by_hand():
    view = DetailView(grid=7, patch=32)
    # 500 px in 7 cells of 71.43 px: centres at 35.7, 107.1, ..., 464.3; a patch starts
    # 16 px before its centre: round(35.71 - 16) = 20, round(107.14 - 16) = 91, ...
    lefts, tops = view.cell_origins(500, 300)
    assert lefts == [20, 91, 163, 234, 305, 377, 448]
    # 300 px: cell 42.86 px; centres 21.4, 64.3, ...; first origin round(5.43) = 5, the
    # last round(278.57 - 16) = 263 (clamped to 300 - 32 = 268 would not bind).
    assert tops == [5, 48, 91, 134, 177, 220, 263]


def test_cell_origins_clamp_on_small_photos():
    lefts, _ = DetailView(grid=4, patch=32).cell_origins(40, 40)
    assert lefts == [0, 0, 8, 8]  # every patch stays inside the 40 px photo


def test_mosaic_copies_native_pixels_unscaled():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (600, 900, 3), dtype=np.uint8)
    view = DetailView(grid=3, patch=32)
    mosaic = detail_mosaic(photo, view)
    assert mosaic.shape == (96, 96, 3)
    lefts, tops = view.cell_origins(900, 600)
    for row, top in enumerate(tops):
        for col, left in enumerate(lefts):
            np.testing.assert_array_equal(
                mosaic[row * 32 : (row + 1) * 32, col * 32 : (col + 1) * 32],
                photo[top : top + 32, left : left + 32],
            )


def test_tiny_photo_is_edge_padded_not_upscaled():
    photo = np.zeros((10, 20, 3), dtype=np.uint8)
    photo[:, :, 0] = np.arange(20, dtype=np.uint8)
    mosaic = detail_mosaic(photo, DetailView(grid=2, patch=32))
    assert mosaic.shape == (64, 64, 3)
    # Edge replication keeps only values that exist in the photo.
    assert set(np.unique(mosaic[..., 0])) <= set(range(20))


def test_detail_input_is_normalised_with_the_views_statistics():
    photo = np.full((64, 64, 3), 255, dtype=np.uint8)
    view = DetailView(grid=2, patch=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = to_detail_input(photo, view)
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    np.testing.assert_allclose(out, 1.0)  # (1 - 0.5) / 0.5


def test_detail_view_metadata_round_trip_and_unknown_kind():
    view = DetailView(grid=5, patch=64, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    assert DetailView.from_json(view.to_json()) == view
    with pytest.raises(ValueError, match="unknown detail view kind"):
        DetailView.from_json(json.dumps({"kind": "saliency_crops"}))


def _reference_textured_mosaic(rgb: np.ndarray, view: DetailView) -> np.ndarray:
    """The contract's textured_fragments rule, written out loop by loop (ARCHITECTURE.md)."""
    p = view.patch
    tops, lefts = view.candidate_origins(rgb.shape[0]), view.candidate_origins(rgb.shape[1])
    out = np.zeros((view.grid * p, view.grid * p, 3), np.uint8)
    for r in range(view.grid):
        for c in range(view.grid):
            best = None
            for top in tops[r]:
                for left in lefts[c]:
                    patch = rgb[top : top + p, left : left + p]
                    q = patch.astype(np.int64)
                    luma = q[..., 0] * 2126 + q[..., 1] * 7152 + q[..., 2] * 722
                    texture = (np.abs(np.diff(luma, axis=1)).sum()
                               + np.abs(np.diff(luma, axis=0)).sum())
                    if best is None or texture > best[0]:
                        best = (texture, patch)
            out[r * p : (r + 1) * p, c * p : (c + 1) * p] = best[1]
    return out


TEXTURED = DetailView(grid=7, patch=32, kind="textured_fragments", candidates=3)


def test_textured_candidates_by_hand():
    # 700 px, 7 cells of 100 px: 3 origins from the cell's first pixel to 100 - 32 past it.
    assert TEXTURED.candidate_origins(700)[:2] == [[0, 34, 68], [100, 134, 168]]
    # Cells narrower than a patch keep the one centred origin of the grid kind.
    narrow = DetailView(grid=4, patch=32, kind="textured_fragments", candidates=3)
    assert narrow.candidate_origins(40) == [[o] for o in narrow.cell_origins(40, 40)[0]]
    assert narrow.candidate_origins(40) == [[0], [0], [8], [8]]


def test_textured_mosaic_takes_the_detailed_patch_of_each_cell():
    rng = np.random.default_rng(0)
    photo = np.full((700, 700, 3), 120, np.uint8)  # flat: no texture anywhere...
    photo[134:166, 168:200] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # ...but here
    mosaic = detail_mosaic(photo, TEXTURED)
    # Cell (1, 1) spans 100-200 px; its textured candidate is the one at (134, 168).
    np.testing.assert_array_equal(mosaic[32:64, 32:64], photo[134:166, 168:200])
    # The grid kind's centred patch of that cell misses most of it.
    grid = detail_mosaic(photo, DetailView(grid=7, patch=32))
    assert grid[32:64, 32:64].std() < mosaic[32:64, 32:64].std()
    # Flat cells are ties, and a tie goes to the first candidate: the cell's top left.
    np.testing.assert_array_equal(mosaic[:32, 64:96], photo[0:32, 200:232])


@pytest.mark.parametrize("shape", [(500, 500), (333, 777), (1600, 2560), (40, 300), (32, 33)])
def test_textured_mosaic_follows_the_written_rule_exactly(shape):
    rng = np.random.default_rng(sum(shape))
    photo = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    photo[: shape[0] // 2] //= 8  # dark, low-texture half
    photo[:, : shape[1] // 3] = 90  # a flat third: ties
    np.testing.assert_array_equal(detail_mosaic(photo, TEXTURED),
                                  _reference_textured_mosaic(photo, TEXTURED))


def test_textured_view_metadata_round_trip_and_checks():
    assert DetailView.from_json(TEXTURED.to_json()) == TEXTURED
    assert json.loads(TEXTURED.to_json())["candidates"] == 3
    # The grid kind's metadata stays what it was before textured views existed.
    assert "candidates" not in json.loads(DetailView().to_json())
    with pytest.raises(ValueError, match="candidates >= 2"):
        DetailView(kind="textured_fragments", candidates=1)


# ------------------------------------------------------------------------- calibration


def test_calibration_hand_values_and_flat_ends():
    from iqa.models.calibration import MonotoneCalibration

    cal = MonotoneCalibration([0.2, 0.4, 0.8], [0.1, 0.5, 0.9])
    x = torch.tensor([0.0, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0])
    expected = [0.1, 0.1, 0.3, 0.5, 0.7, 0.9, 0.9]
    np.testing.assert_allclose(cal(x).numpy(), expected, atol=1e-6)


def test_calibration_rejects_non_monotone_knots():
    from iqa.models.calibration import MonotoneCalibration

    with pytest.raises(ValueError, match="non-decreasing"):
        MonotoneCalibration([0.0, 0.5, 1.0], [0.2, 0.6, 0.4])
    with pytest.raises(ValueError, match="increasing in x"):
        MonotoneCalibration([0.0, 0.0, 1.0], [0.1, 0.2, 0.3])


def test_fit_calibration_is_monotone_and_follows_the_levels():
    from iqa.training.heads import fit_calibration

    rng = np.random.default_rng(0)
    mos = rng.uniform(0.1, 0.8, 500)
    levels = np.clip(1.3 * mos - 0.05 + rng.normal(0, 0.03, 500), 0, 1)
    xs, ys = fit_calibration(mos, levels, knots=8)
    assert xs[0] <= 0.0 and xs[-1] >= 1.0
    assert all(b > a for a, b in zip(xs, xs[1:], strict=False))
    # Strictly increasing: no two MOS values may tie in score.
    assert all(b > a for a, b in zip(ys, ys[1:], strict=False))
    # Mid-range, the curve reproduces the generating line within noise.
    assert abs(np.interp(0.5, xs, ys) - 0.60) < 0.05


def test_prior_calibration_inverts_the_level_prior_by_hand():
    from iqa.models.calibration import MonotoneCalibration
    from iqa.training.heads import prior_calibration

    # MOS = 0.2 + 0.6 * page: page 0 at MOS 0.2, page 0.98 at MOS 0.788.
    xs, ys = prior_calibration((0.2, 0.6))
    np.testing.assert_allclose(xs, [0.0, 0.2, 0.788, 1.0], atol=1e-9)
    np.testing.assert_allclose(ys, [0.0, 0.02, 0.98, 0.99], atol=1e-9)
    cal = MonotoneCalibration(xs, ys)
    # MOS 0.494 is halfway along the line: 0.02 + 0.5 * 0.96 = 0.5.
    got = cal(torch.tensor([0.0, 0.1, 0.2, 0.494, 0.788, 0.894, 1.0])).numpy()
    np.testing.assert_allclose(got, [0.0, 0.01, 0.02, 0.5, 0.98, 0.985, 0.99], atol=1e-5)
    assert np.all(np.diff(got) > 0)  # strictly increasing: no ties, no ranking change


def test_prior_calibration_rejects_a_prior_outside_the_mos_range():
    from iqa.training.heads import prior_calibration

    with pytest.raises(ValueError, match="does not fit"):
        prior_calibration((0.3, 1.0))  # page 0.98 would need MOS 1.28


# ------------------------------------------------------------------------------ levels


def test_levels_follow_the_semantics_table():
    from iqa.training.levels import CLEAN_TARGET, LEVELS

    assert CLEAN_TARGET > 0.85  # "very good to perfect"
    for level in LEVELS.values():
        assert list(level.strengths) == sorted(level.strengths)
        assert all(b < a for a, b in zip(level.targets, level.targets[1:], strict=False)), level
    # The full-resolution checks and the page's examples, on the target curves.
    assert LEVELS["gaussian_blur"].target(3.0) < 0.5
    assert CLEAN_TARGET - LEVELS["gaussian_blur"].target(1.5) >= 0.08
    assert CLEAN_TARGET - LEVELS["gaussian_noise"].target(12 / 255) >= 0.08
    assert 0.3 <= LEVELS["underexposure"].target(2.0) <= 0.55
    assert 0.3 <= LEVELS["overexposure"].target(1.5) <= 0.55
    assert LEVELS["gaussian_blur"].target(10.0) < 0.25


def test_severity_for_applies_native_strength():
    from iqa.training.augment.blur import GAUSSIAN_SIGMA
    from iqa.training.levels import LEVELS, severity_for

    level = LEVELS["gaussian_blur"]
    small = np.zeros((512, 700, 3), np.uint8)
    large = np.zeros((1024, 1400, 3), np.uint8)
    # The library scales sigma with the shorter side (reference 512 px): 3 native px on a
    # 1024 px photo is the library's 1.5 px.
    assert GAUSSIAN_SIGMA(severity_for(level, 3.0, small)) == pytest.approx(3.0, abs=1e-6)
    assert GAUSSIAN_SIGMA(severity_for(level, 3.0, large)) == pytest.approx(1.5, abs=1e-6)
    jpeg = LEVELS["jpeg"]
    from iqa.training.augment.compression import JPEG_QUALITY

    assert JPEG_QUALITY(severity_for(jpeg, 92.0, small)) == pytest.approx(8.0, abs=1e-6)


# ---------------------------------------------------------------- train, export, load


def _write_photo(path, seed, size=(160, 120)):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([np.sin(xx / (5 + seed % 7)), np.cos(yy / (4 + seed % 5)),
                     np.sin((xx + yy) / 9)], -1)
    img = np.clip((base * 0.4 + 0.5 + rng.normal(0, 0.02, base.shape)) * 255, 0, 255)
    Image.fromarray(img.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A v2 run on 24 rated photos and 4 clean photos, random backbone, 3-fold CV."""
    import yaml

    from iqa.inference.cli import main

    root = tmp_path_factory.mktemp("v2data")
    rated = root / "rated"
    rated.mkdir()
    rows = []
    for i in range(24):
        _write_photo(rated / f"r{i}.png", i)
        rows.append({"image": f"r{i}.png", "mos": 20 + 2.5 * i})
    with (rated / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "mos"])
        writer.writeheader()
        writer.writerows(rows)
    clean = root / "pristine" / "set_a"
    clean.mkdir(parents=True)
    for i in range(4):
        _write_photo(clean / f"p{i}.png", 100 + i, size=(200, 150))
    config = {
        "name": "tiny_v2", "data_root": str(root), "cache_dir": str(root / "cache"),
        "data": {"dataset": "csv", "root": "rated", "options": {"score_range": [0, 100]}},
        "levels": {"enabled": True, "root": "pristine", "per_distortion": 1, "seed": 0},
        "model": {"architecture": "multiview", "backbone": "tf_efficientnet_lite0",
                  "pretrained": False, "shorter_side": 64, "detail_grid": 2,
                  "detail_patch": 32},
        "heads": {"alphas": [1.0, 10.0, 100.0], "calibration_knots": 5},
        "cv": {"folds": 3, "seed": 0, "fold_file": str(root / "folds.csv"), "final": True},
        "metadata": {"model_version": "tiny-v2", "training_data": "synthetic test photos"},
    }
    path = root / "tiny_v2.yaml"
    path.write_text(yaml.safe_dump(config))
    out = root / "run"
    # One torch thread: on a loaded 2-core machine, two threads that wait on each other
    # made these tiny convolutions 50x slower.
    assert main(["train", str(path), "--output", str(out), "--threads", "1"]) == 0
    return {"root": root, "config": path, "out": out, "rated": rated}


def test_training_writes_cv_report_folds_and_checkpoint(tiny_run):
    out = tiny_run["out"]
    report = json.loads((out / "cv.json").read_text())
    assert len(report["folds"]) == 3
    assert sum(f["n"] for f in report["folds"]) == 24
    for metric in ("srcc", "plcc"):
        assert set(report["summary"][metric]) == {"mean", "std"}
    # The calibration changes no ranking: pooled SRCC of score equals that of mos.
    pooled = report["pooled_out_of_fold"]
    assert pooled["score"]["srcc"] == pytest.approx(pooled["mos"]["srcc"], abs=1e-9)
    folds = list(csv.DictReader((tiny_run["root"] / "folds.csv").open()))
    assert len(folds) == 24 and {r["fold"] for r in folds} == {"0", "1", "2"}
    assert (out / "model.pt").is_file() and (out / "calibration.png").is_file()


def test_rerun_reuses_the_feature_cache_and_the_fold_file(tiny_run, capsys):
    from iqa.inference.cli import main

    before = (tiny_run["root"] / "folds.csv").read_text()
    chunks = sorted((tiny_run["root"] / "cache").rglob("chunk-*.npz"))
    assert main(["train", str(tiny_run["config"]), "--output", str(tiny_run["root"] / "again"),
                 "--set", "cv.final=false", "--threads", "1"]) == 0
    assert (tiny_run["root"] / "folds.csv").read_text() == before
    assert sorted((tiny_run["root"] / "cache").rglob("chunk-*.npz")) == chunks
    first = json.loads((tiny_run["out"] / "cv.json").read_text())["folds"]
    second = json.loads((tiny_run["root"] / "again" / "cv.json").read_text())["folds"]
    assert [f["srcc"] for f in first] == [f["srcc"] for f in second]


@pytest.fixture(scope="module")
def exported(tiny_run):
    from iqa.inference.cli import main

    path = tiny_run["out"] / "tiny_v2.onnx"
    assert main(["export", str(tiny_run["out"] / "model.pt"), "-o", str(path)]) == 0
    return path


def test_export_has_two_inputs_three_outputs_and_the_detail_recipe(exported):
    import onnx

    proto = onnx.load(str(exported))
    assert [i.name for i in proto.graph.input] == [INPUT_NAME, DETAIL_INPUT]
    assert [o.name for o in proto.graph.output] == ["score", "mos", "factors"]
    meta = {p.key: p.value for p in proto.metadata_props}
    recipe = json.loads(meta[META_INPUTS])[DETAIL_INPUT]
    assert DetailView.from_json(recipe) == DetailView(grid=2, patch=32, mean=(0.5,) * 3,
                                                      std=(0.5,) * 3)
    assert "knots_x" in json.loads(meta["iqa.calibration"])


def test_quality_model_scores_v2_like_torch(exported, tiny_run):
    from iqa.inference import QualityModel
    from iqa.training.checkpoint import load_checkpoint
    from iqa.training.export_multiview import model_from_checkpoint

    qm = QualityModel(exported)
    assert qm.detail_view is not None and qm.has_mos
    photo = tiny_run["rated"] / "r3.png"
    result = qm.score(photo)
    model = model_from_checkpoint(load_checkpoint(tiny_run["out"] / "model.pt"))
    inputs = to_model_inputs(Image.open(photo).convert("RGB"), model.preprocessing,
                             model.detail_view)
    with torch.no_grad():
        score, mos, factors = model(*(torch.from_numpy(inputs[k])[None]
                                      for k in (INPUT_NAME, DETAIL_INPUT)))
    assert result.score == pytest.approx(float(score), abs=1e-4)
    assert result.mos == pytest.approx(float(mos), abs=1e-4)
    assert set(result.factors) == set(qm.factor_names)
    # The calibration is applied inside the graph: score = curve(mos).
    knots = json.loads(qm.metadata["iqa.calibration"])
    assert result.score == pytest.approx(float(np.interp(result.mos, knots["knots_x"],
                                                         knots["knots_y"])), abs=1e-4)


def test_v2_reads_native_pixels_not_a_draft(exported, tmp_path):
    from iqa.inference import QualityModel

    photo = tmp_path / "big.jpg"
    Image.new("RGB", (1600, 1200), (120, 130, 140)).save(photo, quality=90)
    assert QualityModel(exported).decode(photo).size == (1600, 1200)


def test_detail_input_without_recipe_is_a_load_error(exported, tmp_path):
    import onnx

    from iqa.inference import ModelLoadError, QualityModel

    proto = onnx.load(str(exported))
    kept = [p for p in proto.metadata_props if p.key != META_INPUTS]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    broken = tmp_path / "no_recipe.onnx"
    onnx.save(proto, str(broken))
    with pytest.raises(ModelLoadError, match=META_INPUTS):
        QualityModel(broken)


def test_every_v2_recipe_runs_on_fake_releases(tmp_path):
    """configs/*.yaml with model.architecture multiview, through `iqa train`, made tiny."""
    import yaml
    from test_train_fakes import CONFIGS, fake_data_root

    from iqa.inference.cli import main

    recipes = [p for p in sorted(CONFIGS.glob("*.yaml"))
               if (yaml.safe_load(p.read_text()).get("model") or {}).get("architecture")
               == "multiview"]
    assert recipes, "configs/livec_v2.yaml should be found"
    root = fake_data_root(tmp_path / "fake")
    for recipe in recipes:
        out = tmp_path / recipe.stem
        argv = ["train", str(recipe), "--output", str(out), "--data-root", str(root),
                "--threads", "1",
                "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "model.shorter_side=64",
                "--set", "model.detail_grid=2", "--set", "levels.per_distortion=1",
                "--set", "cv.folds=2", "--set", f"cv.fold_file={tmp_path / 'folds.csv'}"]
        assert main(argv) == 0, recipe
        assert len(json.loads((out / "cv.json").read_text())["folds"]) == 2
        assert (out / "model.pt").is_file()
