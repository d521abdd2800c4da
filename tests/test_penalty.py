"""`iqa penalty`: a detail-view penalty fitted after training on synthetic versions only,
subtracted from the global view's MOS, exported inside the graph."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("onnx")
pytest.importorskip("sklearn")

from test_train_fakes import (  # noqa: E402, F401  (fixtures)
    fake_root,
    feature_cache_dir,
    levels_checkpoint,
)

from iqa.inference import QualityModel  # noqa: E402
from iqa.inference.cli import main  # noqa: E402
from iqa.inference.preprocess import to_model_inputs  # noqa: E402
from iqa.models.penalty import DetailPenalty  # noqa: E402
from iqa.training.checkpoint import load_checkpoint  # noqa: E402
from iqa.training.export import model_from_checkpoint  # noqa: E402
from iqa.training.multiview_data import level_samples  # noqa: E402
from iqa.training.penalty import fit_penalty, penalty_model, penalty_targets  # noqa: E402


@pytest.fixture(scope="module")
def trained(levels_checkpoint):  # noqa: F811
    return levels_checkpoint


@pytest.fixture(scope="module")
def penalised(trained):
    out = trained.parent / "penalty.pt"
    assert main(["penalty", str(trained), "-o", str(out), "--threads", "1", "--no-progress",
                 "--json", str(out.with_suffix(".json"))]) == 0
    return out


def _photo(seed: int, shape=(120, 160)) -> np.ndarray:
    return (np.random.default_rng(seed).random((*shape, 3)) * 255).astype(np.uint8)


def _inputs(model, image, detail_source=None):
    from PIL import Image

    arrays = to_model_inputs(Image.fromarray(image), model.preprocessing, model.detail_view,
                             detail_source=detail_source)
    return [torch.from_numpy(a)[None] for a in arrays.values()]


def test_detail_penalty_is_a_clipped_linear_map():
    head = DetailPenalty(3)
    assert torch.equal(head(torch.ones(2, 3)), torch.zeros(2))  # zero until fitted
    head.set_fit([1.0, 0.0, 0.0], [2.0, 1.0, 1.0], [1.0, -1.0, 0.5], 0.1)
    x = torch.tensor([[5.0, 1.0, 2.0], [1.0, 9.0, 0.0]])
    # (5-1)/2 - 1 + 1 + 0.1 = 2.1; the second is negative and clipped to 0.
    assert torch.allclose(head(x), torch.tensor([2.1, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        head.set_fit([0.0], [1.0], [1.0], 0.0)


def test_an_unfitted_penalty_leaves_the_trained_model_unchanged(trained):
    checkpoint = load_checkpoint(trained)
    base, model = model_from_checkpoint(checkpoint), penalty_model(checkpoint)
    assert model.detail_view is not None and model.penalty is not None
    image = _photo(1)
    with torch.no_grad():
        want = base(*_inputs(base, image)[:1])[0]
        got = model(*_inputs(model, image))[0]
    assert torch.allclose(want, got)


def test_the_penalty_reads_only_the_detail_view_and_only_lowers(trained):
    model = penalty_model(load_checkpoint(trained))
    from PIL import Image, ImageFilter

    image = _photo(2)
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(3)))
    sharp_in, blurred_in = _inputs(model, image), _inputs(model, image, blurred)
    assert torch.equal(sharp_in[0], blurred_in[0])  # the same global view
    with torch.no_grad():
        sharp_feats = model.detail_features(model.forward_frozen(sharp_in[1]))[0]
        soft_feats = model.detail_features(model.forward_frozen(blurred_in[1]))[0]
        # A penalty of 0 at the sharp mosaic's features and 0.05 at the blurred one's.
        step = soft_feats - sharp_feats
        model.penalty.set_fit(sharp_feats, torch.ones_like(step), 0.05 * step / step.dot(step),
                              0.0)
        before = penalty_model(load_checkpoint(trained))(*sharp_in)[0]
        sharp, soft = model(*sharp_in)[0], model(*blurred_in)[0]
    assert float(before) > 0.05
    assert float(sharp) == pytest.approx(float(before), abs=1e-6)
    assert float(soft) == pytest.approx(float(before) - 0.05, abs=1e-4)


def test_fit_penalty_recovers_a_clipped_linear_residual():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 25)
    feats = rng.normal(size=(len(groups), 30)) * rng.uniform(0.5, 5, 30)
    truth = np.maximum(feats[:, :3] @ np.array([0.05, -0.02, 0.01]) - 0.02, 0.0)
    fit = fit_penalty(feats, truth + rng.normal(0, 0.005, len(truth)), groups)
    assert fit.alpha in fit.cv_mse and fit.cv_mse[fit.alpha] == min(fit.cv_mse.values())
    # A linear fit of a clipped linear target: close, not exact.
    assert np.corrcoef(fit.predict(feats), truth)[0, 1] > 0.9
    assert np.all(fit.predict(feats) >= 0)


def test_penalty_targets_are_the_clipped_gap_above_the_level_prior():
    mos = np.array([0.8, 0.5, 0.2])
    levels = np.array([0.9, 0.4, 0.9])
    # prior: MOS = 0.1 + 0.8 * level -> targets on the MOS scale 0.82, 0.42, 0.82
    assert np.allclose(penalty_targets(mos, levels, (0.1, 0.8)), [0.0, 0.08, 0.0])


def test_iqa_penalty_fits_on_every_training_version(penalised, trained, fake_root):  # noqa: F811
    state = torch.load(penalised, weights_only=False)
    kwargs = state["model_kwargs"]
    assert kwargs["detail_penalty"] and kwargs["detail_grid"] == 7 and kwargs["pool_stages"]
    # The defaults: it reads both views and is gated by the photo's native scale.
    assert kwargs["penalty_global"] and kwargs["penalty_gate"] == [1.5, 3.0]
    report = state["metadata"]["detail_penalty"]
    assert json.loads(penalised.with_suffix(".json").read_text()) == json.loads(
        json.dumps({"checkpoint": str(trained), **report}))
    photos = sorted(p for p in (fake_root / "pristine").rglob("*.jpg") if "bsds500" not in str(p))
    # Every level version, the ones only a detail view shows included.
    assert report["versions"] == len(list(level_samples(photos, per_distortion=3)))
    assert any(name.endswith("|hidden") for name in report["by_distortion"])
    assert report["alpha"] in [float(a) for a in report["group_cv_mse"]]
    assert report["detail_view"]["kind"] == "grid_fragments"  # the default placement
    assert state["metadata"]["training_data"].endswith(
        f"detail penalty: fitted after training on {report['versions_fitted']} level versions "
        "of 3 synthetic photos (training data only)")
    before = torch.load(trained, weights_only=False)["model"]
    assert all(torch.equal(before[k], state["model"][k]) for k in before)  # weights kept
    assert "optimizer" not in state



@pytest.fixture(scope="module")
def gated_onnx(penalised):
    # Own names: test_calibrate.py writes calibrated.pt beside the same shared run.
    calibrated = penalised.parent / "penalty-calibrated.pt"
    onnx_path = penalised.parent / "penalised.onnx"
    assert main(["calibrate", str(penalised), "-o", str(calibrated), "--threads", "1",
                 "--no-progress"]) == 0
    assert main(["export", str(calibrated), "-o", str(onnx_path)]) == 0
    return onnx_path


def test_the_gated_model_exports_and_scores_like_torch(gated_onnx, trained):
    calibrated = gated_onnx.parent / "penalty-calibrated.pt"
    scorer = QualityModel(gated_onnx)
    assert scorer.input_names == ["image", "detail", "detail_scale"]
    assert scorer.detail_view.native_scale
    model = model_from_checkpoint(load_checkpoint(calibrated))
    unpenalised = model_from_checkpoint(load_checkpoint(trained))
    # A photo the global view shrinks 4x (the gate is open) and one it barely shrinks.
    for image, gated in ((_photo(3, (1200, 1600)), True), (_photo(5, (64, 96)), False)):
        inputs = _inputs(model, image)
        width = image.shape[1]
        expected = width / model.preprocessing.target_size(width, image.shape[0])[0]
        assert float(inputs[2][0, 0]) == pytest.approx(expected)
        assert (expected >= 3.0) if gated else (expected <= 1.5)
        result = scorer.score(image)
        with torch.no_grad():
            score, mos, _ = model.forward_calibrated(*inputs)
            plain, _ = unpenalised(inputs[0])
        assert result.mos == pytest.approx(float(mos[0]), abs=1e-4)
        assert result.score == pytest.approx(float(score[0]), abs=1e-4)
        if not gated:  # below the gate the penalty is 0: the trained model's own MOS
            assert float(mos[0]) == pytest.approx(float(plain[0]), abs=1e-5)


def test_bad_checkpoints_exit_2_with_a_message(trained, penalised, tmp_path, capsys):
    out = tmp_path / "o.pt"
    assert main(["penalty", str(tmp_path / "nope.pt"), "-o", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["penalty", str(penalised), "-o", str(out)]) == 2
    assert "already has a detail view" in capsys.readouterr().err
    state = torch.load(trained, weights_only=False)
    torch.save({**state, "model_kwargs": {**state["model_kwargs"], "calibrated": True}},
               tmp_path / "calibrated.pt")
    assert main(["penalty", str(tmp_path / "calibrated.pt"), "-o", str(out)]) == 2
    assert "penalise before calibrating" in capsys.readouterr().err
    assert not out.exists()


def test_a_penalty_that_reads_both_views_sees_the_global_vector_too(trained):
    checkpoint = load_checkpoint(trained)
    model = penalty_model(checkpoint, global_view=True)
    detail_only = penalty_model(checkpoint)
    assert model.penalty.width == 2 * detail_only.penalty.width
    assert model.model_kwargs["penalty_global"]
    inputs = _inputs(model, _photo(4))
    with torch.no_grad():
        whole = model.global_features(model.forward_frozen(inputs[0]))
        feats = model.penalty_features(model.forward_frozen(inputs[1]), whole)
        half = detail_only.penalty.width
        assert torch.equal(feats[:, half:], whole)
        # A penalty on the global half only: 0.03 below the unpenalised MOS.
        weight = torch.zeros(model.penalty.width)
        weight[half] = 1.0
        mean = feats[0].clone()
        model.penalty.set_fit(mean, torch.ones_like(mean), weight, 0.03)
        assert float(model(*inputs)[0]) == pytest.approx(float(detail_only(*inputs)[0]) - 0.03,
                                                         abs=1e-5)
    with pytest.raises(ValueError, match="global"):
        model.penalty_features(model.forward_frozen(inputs[1]))


def test_the_description_of_old_level_runs_is_corrected():
    from iqa.training.penalty import training_data

    old = ("livec: 10 train; synthetic: 4 groups, supervising only rankings against their "
           "originals and the factor head, never an absolute score")
    report = {"versions_fitted": 40, "photos": 2}
    text = training_data({"metadata": {"training_data": old},
                          "config": {"loss": {"level_weight": 0.5}}}, report)
    assert "never an absolute score" not in text
    assert "absolute page-scale levels from the severity (loss.level_weight 0.5)" in text
    # Without level targets the old words were true and stay.
    kept = training_data({"metadata": {"training_data": old}, "config": {"loss": {}}}, report)
    assert kept.startswith(old) and kept.endswith("(training data only)")


def test_the_scale_travels_through_the_pixel_path_and_the_metadata(gated_onnx, tmp_path):
    import onnx

    from iqa.inference.errors import ModelLoadError

    scorer = QualityModel(gated_onnx)
    image = _photo(6, (900, 1200))
    direct = scorer.prepare(image)
    via_pixels = scorer.inputs_from_pixels(scorer.preparer().prepare_pixels(image))
    assert sorted(direct) == sorted(via_pixels) == ["detail", "detail_scale", "image"]
    for name in direct:
        assert np.array_equal(direct[name], via_pixels[name])
    assert scorer.score_tensors([direct])[0].score == pytest.approx(scorer.score(image).score)
    # A file whose detail recipe forgets the scale input is refused, not run half-fed.
    proto = onnx.load(str(gated_onnx))
    for prop in proto.metadata_props:
        if prop.key == "iqa.inputs":
            recipes = json.loads(prop.value)
            recipes["detail"]["native_scale"] = False
            prop.value = json.dumps(recipes)
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    with pytest.raises(ModelLoadError, match="detail_scale"):
        QualityModel(broken)


def test_calibration_treats_detail_only_versions_as_large_photos(penalised):
    from PIL import Image, ImageFilter

    from iqa.training.calibrate import predict_mos
    from iqa.training.levels import HIDDEN_VERSION_SCALE

    model = model_from_checkpoint(load_checkpoint(penalised))
    clean = _photo(7, (64, 96))  # below the gate at its own size
    blurred = np.asarray(Image.fromarray(clean).filter(ImageFilter.GaussianBlur(2)))
    got = predict_mos(model, [(clean, blurred)], progress=False)[0]
    arrays = to_model_inputs(Image.fromarray(clean), model.preprocessing, model.detail_view,
                             detail_source=blurred, scale=HIDDEN_VERSION_SCALE)
    own_size = to_model_inputs(Image.fromarray(clean), model.preprocessing, model.detail_view,
                               detail_source=blurred)
    assert float(own_size["detail_scale"][0]) < 1.5 < 3.0 < HIDDEN_VERSION_SCALE
    with torch.no_grad():
        want = model(*(torch.from_numpy(a)[None] for a in arrays.values()))[0]
    assert got == pytest.approx(float(want[0]), abs=1e-6)


def _script(name: str):
    """Import scripts/<name>.py, which imports its sibling scripts by bare name."""
    from script_loader import load_script

    return load_script(name)


def test_the_exposure_penalty_cv_script_fits_on_training_folds_only(trained, tmp_path):
    """scripts/exposure_penalty_cv.py on a one-fold layout of the tiny run: it scores the
    run's held-out photos with and without a penalty fitted on its training data."""
    import shutil

    module = _script("exposure_penalty_cv")
    run = tmp_path / "runs" / "fold0" / "run"
    shutil.copytree(trained.parent, run)
    shutil.copy(trained, run / "last.pt")
    out = tmp_path / "report.json"
    assert module.main(["--runs", str(tmp_path / "runs"), "--max-photos", "2",
                        "--fit-on", "exposure", "--reads", "stats", "--anchors", "none",
                        "rated", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    held_out = sum(1 for line in (run / "split.csv").read_text().splitlines()
                   if line.endswith(",val"))
    assert set(report["variants"]) == {"exposure/stats/none", "exposure/stats/rated"}
    for variant in report["variants"].values():
        fold = variant["folds"]["0"]
        assert fold["held_out"] == held_out > 0
        assert fold["held_out_penalty"]["mean"] >= 0.0
        # Only the exposure families' gap is taught: the others' penalty is fitted to 0.
        versions = fold["training_versions"]
        assert {"clean", "underexposure", "overexposure"} <= set(versions)
        assert variant["srcc"]["without"]["mean"] == fold["without"]["srcc"]


def test_the_seed_ensemble_script_scores_each_run_and_their_mean(trained, tmp_path):
    """scripts/seed_ensemble_cv.py on two checkpoints of the tiny run (same split)."""
    module = _script("seed_ensemble_cv")
    out = tmp_path / "ensemble.json"
    runs = [trained, trained.parent / "last.pt"]
    assert module.main([*map(str, runs), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert len(report["runs"]) == 2 and report["held_out"] > 0
    assert set(report["ensemble"]) == {"srcc", "plcc"}
    gain = report["ensemble_srcc_gain_over_mean_member"]
    if gain["resamples"]:  # the tiny run may rank its few held-out photos as ties
        assert gain["ci95"][0] <= gain["mean"] <= gain["ci95"][1]


def test_a_textured_penalty_exports_and_scores_like_torch(trained, tmp_path):
    out = tmp_path / "textured.pt"
    assert main(["penalty", str(trained), "-o", str(out), "--threads", "1", "--no-progress",
                 "--placement", "textured", "--candidates", "2"]) == 0
    state = torch.load(out, weights_only=False)
    kwargs = state["model_kwargs"]
    assert kwargs["detail_kind"] == "textured_fragments" and kwargs["detail_candidates"] == 2
    assert state["metadata"]["detail_penalty"]["detail_view"]["kind"] == "textured_fragments"
    onnx_path = tmp_path / "textured.onnx"
    assert main(["export", str(out), "-o", str(onnx_path)]) == 0
    scorer = QualityModel(onnx_path)
    # Anyone with onnxruntime builds the detail input from the metadata alone.
    assert scorer.detail_view.kind == "textured_fragments"
    assert scorer.detail_view.candidates == 2
    model = model_from_checkpoint(load_checkpoint(out))
    assert model.detail_view == scorer.detail_view
    image = _photo(7, (1200, 1600))  # the gate is open: the penalty reads the mosaic
    image[:600] //= 16  # a dark, flat half, where the textured patches differ from centred
    inputs = _inputs(model, image)
    with torch.no_grad():
        mos, _ = model(*inputs)
    # Not calibrated: the exported score is the (penalised) MOS itself.
    assert scorer.score(image).score == pytest.approx(float(mos[0]), abs=1e-4)


def test_the_level_prior_reads_only_the_split_files_training_rows(trained, tmp_path):
    from iqa.training.datasets import load_dataset
    from iqa.training.datasets.splits import load_split_csv
    from iqa.training.levels import rated_training_mos

    state = load_checkpoint(trained)
    data = state["config"]["data"]
    split = load_split_csv(trained.parent / "split.csv")
    records = load_dataset(data["dataset"], data["root"])
    train = [r.mos for r in records if split[r.path.name] == "train"]
    assert 0 < len(train) < len(records)  # validation photos are left out
    mos = rated_training_mos(state, trained.parent / "split.csv")
    assert sorted(mos) == sorted(train)
    # --data-root: the same photos found where the data moved to.
    (tmp_path / "moved").symlink_to(state["config"]["data_root"])
    assert np.array_equal(rated_training_mos(state, trained.parent / "split.csv",
                                             tmp_path / "moved"), mos)


def test_photos_of_one_name_in_two_folders_stay_apart(tmp_path):
    from PIL import Image

    from iqa.training.levels import rated_training_mos

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "x.jpg")
    (tmp_path / "labels.csv").write_text("image,mos\na/x.jpg,20\nb/x.jpg,80\n")
    (tmp_path / "split.csv").write_text("path,split\na/x.jpg,train\nb/x.jpg,val\n")
    state = {"config": {"data_root": str(tmp_path), "data": {
        "dataset": "csv", "root": str(tmp_path), "options": {"score_range": [0, 100]},
        "split": {"train": "train", "val": "val"}}}}
    assert rated_training_mos(state, tmp_path / "split.csv").tolist() == [pytest.approx(0.2)]
    (tmp_path / "split.csv").write_text("path,split\na/x.jpg,train\nc/y.jpg,train\n")
    with pytest.raises(ValueError, match="1 of the 2 'train' rows .* match no csv image"):
        rated_training_mos(state, tmp_path / "split.csv")


def test_penalty_refuses_to_guess_its_training_photos(trained, tmp_path, capsys):
    out = tmp_path / "p.pt"
    state = torch.load(trained, weights_only=False)
    (tmp_path / "alone").mkdir()
    torch.save(state, tmp_path / "alone" / "last.pt")  # no split.csv beside it
    assert main(["penalty", str(tmp_path / "alone" / "last.pt"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no split file at" in err and "--split-file" in err
    config = state["config"]
    synthetic_only = {**state, "config": {**config, "data": {**config["data"], "dataset": None}}}
    torch.save(synthetic_only, tmp_path / "synthetic.pt")
    assert main(["penalty", str(tmp_path / "synthetic.pt"), "-o", str(out),
                 "--split-file", str(trained.parent / "split.csv")]) == 2
    assert "synthetic photos only (data.dataset is null)" in capsys.readouterr().err
    gone = {**state, "config": {**config, "data": {**config["data"],
                                                   "root": str(tmp_path / "gone")}}}
    torch.save(gone, tmp_path / "gone.pt")
    assert main(["penalty", str(tmp_path / "gone.pt"), "-o", str(out),
                 "--split-file", str(trained.parent / "split.csv")]) == 2
    err = capsys.readouterr().err
    assert "data.root is not a folder" in err and "--data-root" in err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("options, message", [
    (["--patch", "0"], "--patch must be >= 32, got 0"),
    (["--patch", "48"], "--patch must be a multiple of 32"),
    (["--grid", "0"], "--grid must be >= 1, got 0"),
    (["--placement", "textured", "--candidates", "1"], "--candidates must be >= 2, got 1"),
    (["--threads", "-1"], "--threads must be >= 1, got -1"),
    (["--per-distortion", "0"], "--per-distortion must be >= 1, got 0"),
    (["--gate", "3", "1.5"], "--gate needs 0 < LOW < HIGH"),
    (["--json", "{out}"], "--json and -o are the same file"),
])
def test_penalty_refuses_bad_settings_up_front(trained, tmp_path, capsys, options, message):
    out = tmp_path / "p.pt"
    options = [o.format(out=out) for o in options]
    assert main(["penalty", str(trained), "-o", str(out), *options]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_penalty_never_writes_over_its_input_or_into_a_folder(trained, tmp_path, capsys):
    before = trained.read_bytes()
    assert main(["penalty", str(trained), "-o", str(trained)]) == 2
    assert "is the input" in capsys.readouterr().err
    assert trained.read_bytes() == before
    assert main(["penalty", str(trained), "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    (tmp_path / "afile.txt").write_text("x")
    assert main(["penalty", str(trained), "-o", str(tmp_path / "p.pt"),
                 "--json", str(tmp_path / "afile.txt" / "r.json")]) == 2
    assert "--json" in capsys.readouterr().err
    # Both before the fit: -o used to be written and only then the --json write to fail.
    assert main(["penalty", str(trained), "-o", "/proc/p.pt"]) == 2
    assert "-o /proc/p.pt: cannot write in /proc" in capsys.readouterr().err
    assert main(["penalty", str(trained), "-o", str(tmp_path / "p.pt"),
                 "--json", "/proc/r.json"]) == 2
    assert "--json /proc/r.json: cannot write in /proc" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile.txt"]
