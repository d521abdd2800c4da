"""ONNX export: contract I/O, metadata, torch/onnxruntime parity, int8 and `iqa export`."""

from __future__ import annotations

import copy
import json
import os
import stat
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("timm")

from PIL import Image  # noqa: E402

from iqa.inference import QualityModel  # noqa: E402
from iqa.inference.cli import main  # noqa: E402
from iqa.inference.contract import (  # noqa: E402
    FACTOR_NAMES,
    META_BACKBONE,
    META_CREATED,
    META_FACTOR_NAMES,
    META_LICENSE,
    META_METRICS,
    META_MODEL_VERSION,
    META_PREPROCESSING,
    META_TRAINING_DATA,
    Preprocessing,
)
from iqa.inference.preprocess import to_model_input  # noqa: E402
from iqa.models import create_model  # noqa: E402
from iqa.training.export import export_onnx  # noqa: E402
from iqa.training.parity import (  # noqa: E402
    ParityError,
    check_parity,
    parity_inputs,
    parity_sizes,
)
from iqa.training.quantize import META_QUANTIZATION  # noqa: E402

K = len(FACTOR_NAMES)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = create_model("tf_efficientnet_lite0", pretrained=False, freeze_blocks=4, head_hidden=32)
    # A small resolution policy keeps the parity runs fast; the graph is the same at 320 px.
    net.preprocessing = replace(net.preprocessing, shorter_side=64, max_longer_side=160)
    return net.eval()


@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "lite0.onnx"
    return export_onnx(model, out, metadata={META_MODEL_VERSION: "test-1",
                                             META_METRICS: {"srcc": 0.5}})


@pytest.fixture(scope="module")
def cli_run(model, tmp_path_factory):
    """`iqa export --quantize` on a checkpoint in the trainer's format."""
    folder = tmp_path_factory.mktemp("cli")
    checkpoint = {
        "model": model.state_dict(),
        "model_kwargs": model.model_kwargs,
        "config": {"name": "lite0-test", "model": {"pretrained": True}},
        "preprocessing": json.loads(model.preprocessing.to_json()),
        "epoch": 3, "step": 30, "best_metric": 0.5,
        "metadata": {"training_data": "livec: 8 train / 2 val images",
                     "validation_metrics": {"srcc": 0.42}},
        "optimizer": {},
    }
    torch.save(checkpoint, folder / "best.pt")
    out = folder / "model.onnx"
    code = main(["export", str(folder / "best.pt"), "-o", str(out), "--quantize"])
    return code, out, folder / "model.int8.onnx"


def _metadata(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_graph_follows_the_contract(onnx_path):
    proto = onnx.load(str(onnx_path))
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(proto.graph.input) + list(proto.graph.output)
    }
    assert dims == {"image": ["N", 3, "H", "W"], "score": ["N"], "factors": ["N", K]}
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    # Self-contained: every weight is stored inside the file.
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer)
    assert list(onnx_path.parent.iterdir()) == [onnx_path]
    assert 10e6 < onnx_path.stat().st_size < 20e6


def test_metadata_carries_what_inference_needs(onnx_path, model):
    meta = _metadata(onnx_path)
    prep = Preprocessing.from_json(meta[META_PREPROCESSING])
    assert prep == model.preprocessing and prep.mean == (0.5, 0.5, 0.5)
    assert json.loads(meta[META_FACTOR_NAMES]) == list(FACTOR_NAMES)
    assert meta[META_BACKBONE] == "tf_efficientnet_lite0"
    assert meta[META_MODEL_VERSION] == "test-1"
    assert json.loads(meta[META_METRICS]) == {"srcc": 0.5}
    assert meta[META_CREATED][:2] == "20"


def test_parity_on_real_photos_at_several_sizes(model, onnx_path):
    inputs = parity_inputs(model.preprocessing)
    shapes = {b.shape for b in inputs}
    assert (2, 3, 128, 256) in shapes  # the batch of two
    assert {(h, w) for _, _, h, w in shapes} >= set(parity_sizes(model.preprocessing))
    report = check_parity(model, onnx_path, inputs)
    assert report.max_abs_score < 1e-4 and report.max_abs_factors < 1e-4


def test_parity_check_catches_a_different_model(model, onnx_path):
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.score_head.fc2.bias += 0.5
    with pytest.raises(ParityError, match="disagree"):
        check_parity(other, onnx_path, parity_inputs(model.preprocessing)[:1])


def test_quality_model_scores_like_torch(model, onnx_path, photo):
    scorer = QualityModel(onnx_path)
    assert scorer.preprocessing == model.preprocessing
    result = scorer.score(photo)
    x = torch.from_numpy(to_model_input(Image.fromarray(photo), model.preprocessing))[None]
    with torch.no_grad():
        score, factors = model(x)
    assert result.score == pytest.approx(float(score), abs=1e-4)
    assert list(result.factors) == list(FACTOR_NAMES)
    assert np.allclose(list(result.factors.values()), factors[0].numpy(), atol=1e-4)


@pytest.mark.parametrize("pool_head", [True, False], ids=["with-head", "stages-only"])
def test_multi_level_checkpoint_exports_and_scores_like_torch(tmp_path, photo, pool_head):
    # A pool_stages model goes through the same checkpoint -> ONNX path as v1's, and its
    # hand-written std pooling must survive the exporter; so must a model that stops at
    # its highest pooled stage (pool_head=False).
    from iqa.training.export import model_from_checkpoint

    torch.manual_seed(1)
    net = create_model(pretrained=False, freeze_blocks=4, head_hidden=16, pool_stages=[3, 5],
                       pool_head=pool_head)
    net.preprocessing = replace(net.preprocessing, shorter_side=96, max_longer_side=192)
    checkpoint = {"model": net.state_dict(), "model_kwargs": net.model_kwargs,
                  "preprocessing": json.loads(net.preprocessing.to_json())}
    rebuilt = model_from_checkpoint(checkpoint)
    path = export_onnx(rebuilt, tmp_path / "levels.onnx")
    assert check_parity(rebuilt, path).max_abs_score < 1e-4
    x = torch.from_numpy(to_model_input(Image.fromarray(photo), rebuilt.preprocessing))[None]
    with torch.no_grad():
        expected = float(net.eval()(x)[0])
    assert QualityModel(path).score(photo).score == pytest.approx(expected, abs=1e-4)


def test_calibrated_checkpoint_exports_score_mos_and_factors(tmp_path, photo):
    # The calibration is baked into the graph: `score` is on the page's scale, `mos` is the
    # network's raw output, and the metadata records the knots.
    from iqa.training.export import model_from_checkpoint

    torch.manual_seed(2)
    net = create_model(pretrained=False, freeze_blocks=4, head_hidden=16, calibrated=True)
    net.preprocessing = replace(net.preprocessing, shorter_side=96, max_longer_side=192)
    knots = ([0.0, 0.3, 0.6, 1.0], [0.0, 0.1, 0.9, 0.95])
    net.calibration.set_knots(*knots)
    checkpoint = {"model": net.state_dict(), "model_kwargs": net.model_kwargs,
                  "preprocessing": json.loads(net.preprocessing.to_json())}
    rebuilt = model_from_checkpoint(checkpoint)  # sizes the 4-knot buffers before loading
    path = export_onnx(rebuilt, tmp_path / "calibrated.onnx")
    proto = onnx.load(str(path))
    assert [o.name for o in proto.graph.output] == ["score", "mos", "factors"]
    meta = _metadata(path)
    assert json.loads(meta["iqa.calibration"]) == {
        "knots_x": pytest.approx(knots[0]), "knots_y": pytest.approx(knots[1])}
    assert check_parity(rebuilt, path).max_abs_score < 1e-4
    result = QualityModel(path).score(photo)
    assert result.score == pytest.approx(float(np.interp(result.mos, *knots)), abs=1e-5)
    assert result.mos != pytest.approx(result.score, abs=1e-3)


def test_parity_check_refuses_a_graph_with_other_outputs(tmp_path, model, onnx_path):
    calibrated = create_model(pretrained=False, freeze_blocks=4, head_hidden=32, calibrated=True)
    calibrated.preprocessing = model.preprocessing
    with pytest.raises(ParityError, match="outputs"):
        check_parity(calibrated.eval(), onnx_path, parity_inputs(model.preprocessing)[:1])


def test_model_without_factor_head_exports_score_only(tmp_path):
    net = create_model(pretrained=False, num_factors=0, head_hidden=16).eval()
    path = export_onnx(net, tmp_path / "score_only.onnx")
    scorer = QualityModel(path)
    assert not scorer.has_factors and META_FACTOR_NAMES not in scorer.metadata


def test_cli_export_writes_checked_model_and_int8_copy(cli_run, model):
    code, fp32, int8 = cli_run
    assert code == 0
    meta = _metadata(fp32)
    assert meta[META_MODEL_VERSION] == "lite0-test"
    assert meta[META_TRAINING_DATA].startswith("livec")
    assert json.loads(meta[META_METRICS]) == {"srcc": 0.42}
    assert "Apache-2.0" in meta[META_LICENSE] and "LIVE" in meta[META_LICENSE]
    int8_meta = _metadata(int8)
    assert "static QDQ" in int8_meta[META_QUANTIZATION]
    assert {k: v for k, v in int8_meta.items() if k != META_QUANTIZATION} == meta
    assert int8.stat().st_size < fp32.stat().st_size / 2


def test_int8_scores_stay_close_to_fp32(cli_run, photo):
    from skimage import data

    _, fp32, int8 = cli_run
    exact, quantized = QualityModel(fp32), QualityModel(int8)
    images = [photo, photo[::2, ::2], photo[:300], data.coffee(), data.chelsea()[:200, :250]]
    diffs = np.array([abs(exact.score(i).score - quantized.score(i).score) for i in images])
    # A random-init network at 64 px is a harsh case for int8 (few pixels to average the
    # rounding over); scripts/quantize_eval.py measures a real model on a labelled set.
    assert diffs.mean() < 0.1 and diffs.max() < 0.2


def test_float16_weights_halve_the_file_and_barely_move_the_scores(model, onnx_path, tmp_path,
                                                                   photo):
    from iqa.training.half_weights import FP16_PARITY_ATOL, META_WEIGHT_STORAGE, MIN_ELEMENTS

    path = export_onnx(model, tmp_path / "half.onnx", weights="float16")
    assert path.stat().st_size < 0.6 * onnx_path.stat().st_size
    large = [t for t in onnx.load(str(path)).graph.initializer
             if np.prod(t.dims) >= MIN_ELEMENTS]
    assert large and all(t.data_type == onnx.TensorProto.FLOAT16 for t in large)
    assert _metadata(path)[META_WEIGHT_STORAGE].startswith(f"float16 ({len(large)} ")
    report = check_parity(model, path, atol=FP16_PARITY_ATOL)
    assert 0 < report.max_abs_score < FP16_PARITY_ATOL  # rounded, not exact, and still close
    half, full = QualityModel(path), QualityModel(onnx_path)
    assert half.score(photo).score == pytest.approx(full.score(photo).score, abs=FP16_PARITY_ATOL)


def test_cli_float16_export_and_its_limits(cli_run, tmp_path, capsys):
    checkpoint = str(cli_run[1].parent / "best.pt")
    out = tmp_path / "half.onnx"
    assert main(["export", checkpoint, "-o", str(out), "--weights", "float16"]) == 0
    assert "parity: max |torch - onnxruntime|" in capsys.readouterr().out
    assert out.stat().st_size < cli_run[1].stat().st_size * 0.6
    code = main(["export", checkpoint, "-o", str(out), "--weights", "float16", "--quantize"])
    assert code == 2 and "--quantize needs --weights float32" in capsys.readouterr().err


def test_cli_reports_a_bad_checkpoint(tmp_path, capsys, model):
    # A checkpoint that cannot be loaded is a wrong input, like a missing file: exit 2.
    torch.save({"model": {}}, tmp_path / "bad.pt")
    assert main(["export", str(tmp_path / "bad.pt"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "not a checkpoint written by `iqa train` (no model_kwargs)" in capsys.readouterr().err
    wrong_kwargs = {**model.model_kwargs, "head_hidden": 8}
    torch.save({"model": model.state_dict(), "model_kwargs": wrong_kwargs}, tmp_path / "bad.pt")
    assert main(["export", str(tmp_path / "bad.pt"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "cannot rebuild the model" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_cli_refuses_files_that_are_not_checkpoints(tmp_path, capsys):
    config = tmp_path / "livec.yaml"
    config.write_text("# a config, not a checkpoint\nbase: livec.yaml\n")
    assert main(["export", str(config), "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert f"{config} is not a checkpoint written by `iqa train`" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    run = tmp_path / "run"
    run.mkdir()
    assert main(["export", str(run), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "a folder with no best.pt or last.pt" in capsys.readouterr().err
    torch.save({"model": {}, "model_kwargs": {}}, run / "last.pt")
    assert main(["export", str(run), "-o", str(tmp_path / "m.onnx")]) == 2
    assert f"give {run / 'last.pt'}" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("options, message", [
    (["--opset", "12"], "--opset must be 17 to"),
    (["--opset", "99"], "--opset must be 17 to"),
    (["--quantize", "--calibration-images", "nonexist_dir"],
     "calibration image or folder not found: nonexist_dir"),
    (["--quantize", "--calibration-images", "configs"], ".webp) under configs\n"),
])
def test_cli_refuses_bad_options_before_exporting(cli_run, tmp_path, capsys, options, message):
    out = tmp_path / "m.onnx"
    assert main(["export", str(cli_run[1].parent / "best.pt"), "-o", str(out), *options]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "m.int8.onnx").exists()


def test_cli_checks_the_output_path_first(cli_run, tmp_path, capsys):
    checkpoint = cli_run[1].parent / "best.pt"
    before = checkpoint.read_bytes()
    (tmp_path / "afile.txt").write_text("x")
    pipe = tmp_path / "pipe"  # as root, a rename over it (or over /dev/null) replaced it
    os.mkfifo(pipe)
    for out, message in ((tmp_path, "is a folder"),
                         (tmp_path / "afile.txt" / "m.onnx", "afile.txt is a file, not a folder"),
                         (checkpoint, "is the input"),
                         ("/proc/m.onnx", "-o /proc/m.onnx: cannot write in /proc"),
                         (pipe, "is a pipe, not a file")):
        assert main(["export", str(checkpoint), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    (tmp_path / "m.int8.onnx").mkdir()
    assert main(["export", str(checkpoint), "-o", str(tmp_path / "m.onnx"), "--quantize"]) == 2
    assert "--quantize's int8 file" in capsys.readouterr().err
    assert checkpoint.read_bytes() == before and not (tmp_path / "m.onnx").exists()
    assert stat.S_ISFIFO(pipe.stat().st_mode)


def test_a_failed_parity_check_leaves_the_previous_model_in_place(cli_run, model, tmp_path,
                                                                  capsys):
    # fc1's weights shrunk below float16's range and fc2's grown to match: torch computes
    # the same model, but float16 storage rounds fc1 to 0, a real parity failure.
    out = tmp_path / "model.onnx"
    out.write_bytes(cli_run[1].read_bytes())
    good = out.read_bytes()
    net = copy.deepcopy(model)
    with torch.no_grad():
        net.score_head.fc1.weight *= 1e-9
        net.score_head.fc1.bias.zero_()
        net.score_head.fc2.weight *= 1e9
    torch.save({"model": net.state_dict(), "model_kwargs": net.model_kwargs,
                "preprocessing": json.loads(net.preprocessing.to_json())}, tmp_path / "x.pt")
    assert main(["export", str(tmp_path / "x.pt"), "-o", str(out), "--weights", "float16"]) == 1
    err = capsys.readouterr().err
    failed = tmp_path / "model.parity-failed.onnx"
    assert f"{out}: torch and onnxruntime disagree" in err
    assert f"{out} was not written (the failed export is {failed}" in err
    assert out.read_bytes() == good and failed.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["model.onnx", "model.parity-failed.onnx", "x.pt"])  # no temp file left


def test_nan_never_passes_the_parity_check():
    from iqa.training.parity import max_abs_difference

    assert max_abs_difference(np.array([0.5, 0.2]), np.array([0.5, 0.25])) == pytest.approx(0.05)
    assert max_abs_difference(np.array([0.5, 0.2]), np.array([np.nan, 0.2])) == float("inf")
