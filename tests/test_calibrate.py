"""`iqa calibrate`: a trained QualityNet's MOS -> page-scale calibration, fitted on the
run's clean training photos and their level versions, baked into the exported graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
onnx = pytest.importorskip("onnx")

from test_train_fakes import (  # noqa: E402, F401  (fixtures)
    fake_root,
    feature_cache_dir,
    levels_checkpoint,
)

from iqa.inference import QualityModel  # noqa: E402
from iqa.inference.cli import main  # noqa: E402
from iqa.training.calibrate import calibration_samples  # noqa: E402
from iqa.training.multiview_data import level_samples  # noqa: E402


@pytest.fixture(scope="module")
def trained(levels_checkpoint):  # noqa: F811
    return levels_checkpoint


@pytest.fixture(scope="module")
def calibrated(trained):
    out = trained.parent / "calibrated.pt"
    assert main(["calibrate", str(trained), "-o", str(out), "--threads", "1",
                 "--no-progress"]) == 0
    return out


def test_calibration_is_fitted_on_the_runs_own_training_photos(trained, calibrated, fake_root):  # noqa: F811
    state = torch.load(calibrated, weights_only=False)
    report = state["metadata"]["calibration"]
    # The run's synthetic.subsets (kodak24, wikipedia), never the excluded folder.
    photos = sorted(p for p in (fake_root / "pristine").rglob("*.jpg") if "bsds500" not in str(p))
    assert report["photos"] == len(photos) == 3
    # Every version a single view can see: not the ones whose damage only a native detail
    # view shows (their global view is the clean photo).
    visible = [s for s in level_samples(photos, per_distortion=3) if s.detail_source is None]
    assert report["versions"] == len(visible) == len(list(calibration_samples(photos, 3, 0)))
    assert report["by_distortion"]["clean"]["n"] == 3
    assert report["by_distortion"]["clean"]["mean_target"] == pytest.approx(0.92)
    assert state["model_kwargs"]["calibrated"] and state["model_kwargs"]["pool_stages"]
    xs, ys = np.asarray(report["knots_x"]), np.asarray(report["knots_y"])
    assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) > 0)  # strictly: ranks never tie
    assert np.allclose(state["model"]["calibration.knots_x"].numpy(), xs)
    assert calibrated.with_suffix(".png").stat().st_size > 10_000
    assert "optimizer" not in state and "rng" not in state  # weights, not a run to resume
    # Training weights are carried over unchanged.
    before = torch.load(trained, weights_only=False)["model"]
    assert all(torch.equal(before[k], state["model"][k]) for k in before)


def test_calibration_fits_the_targets_better_than_none(calibrated, fake_root):  # noqa: F811
    # The isotonic fit, read at its knots, must explain the level targets better than the
    # raw MOS does: recompute both from the calibrated model itself.
    from iqa.training.calibrate import calibrated_model, predict_mos

    state = torch.load(calibrated, weights_only=False)
    model = calibrated_model({**state, "model": state["model"]})
    model.calibration.set_knots(state["model"]["calibration.knots_x"],
                                state["model"]["calibration.knots_y"])
    photos = sorted(p for p in (fake_root / "pristine").rglob("*.jpg") if "bsds500" not in str(p))
    samples = list(calibration_samples(photos, 3, 0))
    mos = predict_mos(model, [(s[0], s[1]) for s in samples], progress=False)
    targets = np.asarray([s[2] for s in samples])
    with torch.no_grad():
        score = model.calibration(torch.from_numpy(mos.astype(np.float32))).numpy()
    assert np.mean((score - targets) ** 2) < np.mean((mos - targets) ** 2)


def test_export_bakes_the_calibration_into_score_and_keeps_mos(calibrated, tmp_path):
    out = tmp_path / "calibrated.onnx"
    assert main(["export", str(calibrated), "-o", str(out)]) == 0
    proto = onnx.load(str(out))
    assert [o.name for o in proto.graph.output] == ["score", "mos", "factors"]
    knots = json.loads({p.key: p.value for p in proto.metadata_props}["iqa.calibration"])
    scorer = QualityModel(out)
    image = (np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)
    result = scorer.score(image)
    assert result.score == pytest.approx(
        float(np.interp(result.mos, knots["knots_x"], knots["knots_y"])), abs=1e-5)


def test_bad_inputs_exit_2_with_a_message(tmp_path, trained, capsys):
    assert main(["calibrate", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "o.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    state = torch.load(trained, weights_only=False)
    torch.save({**state, "model_kwargs": {**state["model_kwargs"], "architecture": "multiview"}},
               tmp_path / "v2.pt")
    assert main(["calibrate", str(tmp_path / "v2.pt"), "-o", str(tmp_path / "o.pt")]) == 2
    assert "calibrated by `iqa train`" in capsys.readouterr().err
    assert main(["calibrate", str(trained), "-o", str(tmp_path / "o.pt"),
                 "--photos", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()


def test_pixel_budget_is_fitted_under_and_exported(trained, tmp_path, fake_root):  # noqa: F811
    # A serving budget chosen at calibration: the fit sees the budgeted views, and the
    # exported file carries the same policy, so the knots match what ONNX users feed.
    from iqa.inference.contract import Preprocessing
    from iqa.training.calibrate import calibrated_model, predict_mos

    state = torch.load(trained, weights_only=False)
    trained_policy = Preprocessing.from_json(json.dumps(state["preprocessing"]))
    budget = 64 * 64
    out = tmp_path / "budget.pt"
    assert main(["calibrate", str(trained), "-o", str(out), "--threads", "1",
                 "--no-progress", "--pixel-budget", str(budget)]) == 0
    calibrated_state = torch.load(out, weights_only=False)
    assert calibrated_state["metadata"]["calibration"]["pixel_budget"] == budget
    policy = Preprocessing.from_json(json.dumps(calibrated_state["preprocessing"]))
    assert policy.pixel_budget == budget
    assert policy.shorter_side == trained_policy.shorter_side  # only the budget changes

    photos = sorted(p for p in (fake_root / "pristine").rglob("*.jpg") if "bsds500" not in str(p))
    clean = [image for image, _, _, name in calibration_samples(photos, 3, 0) if name == "clean"]
    height, width = clean[0].shape[:2]
    assert policy.target_size(width, height) != trained_policy.target_size(width, height)
    model = calibrated_model(calibrated_state)
    assert model.preprocessing == policy
    mos = predict_mos(model, [(image, None) for image in clean], progress=False)
    report = calibrated_state["metadata"]["calibration"]
    assert report["by_distortion"]["clean"]["median_mos"] == pytest.approx(
        float(np.median(mos)), abs=1e-3)
    # ... and not on the training views, which give other predictions.
    model.preprocessing = trained_policy
    unbudgeted = predict_mos(model, [(image, None) for image in clean], progress=False)
    assert abs(float(np.median(unbudgeted)) - report["by_distortion"]["clean"]["median_mos"]) > 2e-3

    onnx_path = tmp_path / "budget.onnx"
    assert main(["export", str(out), "-o", str(onnx_path)]) == 0
    assert QualityModel(onnx_path).preprocessing == policy


def test_a_pixel_budget_below_one_cell_exits_2(trained, tmp_path, capsys):
    assert main(["calibrate", str(trained), "-o", str(tmp_path / "o.pt"),
                 "--pixel-budget", "100"]) == 2
    assert "pixel_budget must be at least" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize("options, message", [
    (["--per-distortion", "0"], "--per-distortion must be >= 1, got 0"),
    (["--knots", "1"], "--knots must be >= 2, got 1"),
    (["--knots", "0"], "--knots must be >= 2, got 0"),
    (["--knots", "-3"], "--knots must be >= 2, got -3"),
    (["--threads", "-1"], "--threads must be >= 1, got -1"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
])
def test_degenerate_settings_are_refused_up_front(trained, tmp_path, capsys, options, message):
    assert main(["calibrate", str(trained), "-o", str(tmp_path / "o.pt"), *options]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_outputs_are_checked_before_the_fit_and_never_replace_the_input(trained, tmp_path,
                                                                        capsys):
    before = trained.read_bytes()
    assert main(["calibrate", str(trained), "-o", str(trained)]) == 2
    assert "is the input" in capsys.readouterr().err
    assert trained.read_bytes() == before  # the run can still be resumed from it
    assert main(["calibrate", str(trained), "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["calibrate", str(trained), "-o", str(tmp_path / "c.png")]) == 2
    assert "the plot (-o with .png) and -o are the same file" in capsys.readouterr().err
    # Before the fit: root passes os.access() here, and the save at the end used to fail.
    assert main(["calibrate", str(trained), "-o", "/proc/c.pt"]) == 2
    assert "-o /proc/c.pt: cannot write in /proc" in capsys.readouterr().err
    text = tmp_path / "livec.yaml"
    text.write_text("# a config\n")
    assert main(["calibrate", str(text), "-o", str(tmp_path / "o.pt")]) == 2
    assert "is not a checkpoint written by `iqa train`" in capsys.readouterr().err


def test_photo_errors_name_the_option_that_chose_the_folder(trained, tmp_path, capsys):
    out = str(tmp_path / "o.pt")
    assert main(["calibrate", str(trained), "-o", out, "--subsets", "nope"]) == 2
    assert "--subsets: no such folder(s) under" in capsys.readouterr().err
    assert main(["calibrate", str(trained), "-o", out, "--photos", str(tmp_path),
                 "--subsets", "nope"]) == 2
    assert f"--subsets: no such folder(s) under {tmp_path}: nope" in capsys.readouterr().err
    state = torch.load(trained, weights_only=False)
    moved = {**state, "config": {**state["config"],
                                 "synthetic": {**state["config"]["synthetic"],
                                               "root": str(tmp_path / "gone")}}}
    torch.save(moved, tmp_path / "moved.pt")
    assert main(["calibrate", str(tmp_path / "moved.pt"), "-o", out]) == 2
    err = capsys.readouterr().err
    assert "the run's synthetic.root is not a folder" in err and "pass --photos" in err


def test_data_root_moves_the_runs_data_paths(trained, tmp_path):
    from iqa.training.calibrate import run_data_path, training_photos

    state = torch.load(trained, weights_only=False)
    old = Path(state["config"]["data_root"])
    syn_root = Path(state["config"]["synthetic"]["root"])
    (tmp_path / "moved").symlink_to(old)
    assert run_data_path(state, "synthetic.root", tmp_path / "moved") == (
        tmp_path / "moved" / syn_root.relative_to(old))
    here = training_photos(state, None, None)[1]
    there = training_photos(state, None, None, tmp_path / "moved")[1]
    assert [p.relative_to(syn_root) for p in here] == [
        p.relative_to(tmp_path / "moved" / syn_root.relative_to(old)) for p in there]
    elsewhere = {**state, "config": {**state["config"], "data_root": str(tmp_path / "x")}}
    with pytest.raises(ValueError, match="not under the data_root it trained with"):
        run_data_path(elsewhere, "synthetic.root", tmp_path)


def test_a_calibrated_file_cannot_be_resumed(calibrated):
    from iqa.training.checkpoint import CheckpointError, load_checkpoint

    assert load_checkpoint(calibrated)["model_kwargs"]["calibrated"]
    with pytest.raises(CheckpointError, match="holds weights only"):
        load_checkpoint(calibrated, resumable=True)
