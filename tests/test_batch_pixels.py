"""`iqa batch` hands images from the decode tasks to the actors as uint8 pixels.

The actors normalise them; these tests check, without starting Ray, that this gives
exactly the inputs (and so the scores) of ``QualityModel.prepare``, for one-input (v1)
and two-input (v2: `image` + `detail`) models, and that the decode side needs no model.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pa = pytest.importorskip("pyarrow")

from iqa.inference import QualityModel  # noqa: E402
from iqa.inference.batch import sources as batch_sources  # noqa: E402
from iqa.inference.batch import stages as batch_stages  # noqa: E402
from iqa.inference.contract import (  # noqa: E402
    DETAIL_INPUT,
    INPUT_NAME,
    META_INPUTS,
    META_MODEL_VERSION,
    META_PREPROCESSING,
    SCORE_OUTPUT,
    DetailView,
    Preprocessing,
)
from iqa.inference.model import ImagePreparer  # noqa: E402


def build_tiny_v2_model(path: Path) -> Path:
    """Two inputs, one output: sigmoid of a weighted mean of each input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array([0.7], np.float32), "a"),
             numpy_helper.from_array(np.array([-1.3], np.float32), "b"),
             numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes")]
    nodes = [
        helper.make_node("ReduceMean", [INPUT_NAME, "axes"], ["mi"], keepdims=0),
        helper.make_node("ReduceMean", [DETAIL_INPUT, "axes"], ["md"], keepdims=0),
        helper.make_node("Mul", ["mi", "a"], ["wi"]),
        helper.make_node("Mul", ["md", "b"], ["wd"]),
        helper.make_node("Add", ["wi", "wd"], ["s"]),
        helper.make_node("Sigmoid", ["s"], [SCORE_OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_v2",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, "H", "W"]),
         helper.make_tensor_value_info(DETAIL_INPUT, TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info(SCORE_OUTPUT, TensorProto.FLOAT, ["N"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    meta = {
        META_PREPROCESSING: Preprocessing(shorter_side=64, max_longer_side=128).to_json(),
        META_INPUTS: json.dumps({DETAIL_INPUT: json.loads(DetailView(grid=2).to_json())}),
        META_MODEL_VERSION: "tiny-v2-test",
    }
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    out = []
    for i, size in enumerate([(200, 150), (150, 200), (97, 61)]):
        path = folder / f"p{i}.jpg"
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
        out.append(path)
    return out


@pytest.fixture(scope="module", params=["v1", "v2"])
def model(request, tmp_path_factory) -> QualityModel:
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "v1":
        from tiny_model import build_tiny_model

        path = build_tiny_model(folder / "tiny.onnx")
    else:
        path = build_tiny_v2_model(folder / "tiny_v2.onnx")
    return QualityModel(path, providers=["CPUExecutionProvider"], threads=1)


def test_pixels_normalised_equal_prepare_bit_for_bit(model, photos):
    preparer = model.preparer()
    assert (preparer.detail_view is not None) == (DETAIL_INPUT in model.input_names)
    # Small and model-free: decode tasks get this, never the model.
    assert len(pickle.dumps(preparer)) < 2000
    for photo in photos:
        pixels = preparer.prepare_pixels(photo, str(photo))
        assert sorted(pixels) == sorted(model.input_names)
        assert all(p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3
                   for p in pixels.values())
        expected = model.prepare(photo, str(photo))
        got = model.inputs_from_pixels(pixels)
        assert sorted(got) == sorted(expected)
        for name in expected:
            assert got[name].dtype == expected[name].dtype
            np.testing.assert_array_equal(got[name], expected[name])
        np.testing.assert_array_equal(preparer.prepare(photo)[INPUT_NAME], expected[INPUT_NAME])


def test_inputs_from_pixels_refuses_a_detail_view_for_a_v1_model(photos):
    from tiny_model import build_tiny_model

    folder = Path(tempfile.mkdtemp())
    try:
        v1 = QualityModel(build_tiny_model(folder / "m.onnx"), providers=["CPUExecutionProvider"])
        two = ImagePreparer(v1.preprocessing, DetailView(grid=2)).prepare_pixels(photos[0])
        with pytest.raises(ValueError, match="detail"):
            v1.inputs_from_pixels(two)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_prepare_block_and_score_actor_match_quality_model(model, photos, tmp_path):
    """The two Ray stages called directly: same scores as QualityModel.score, error rows."""
    data = model.path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    # _load_model reads the shipped bytes from this cache when present (no Ray needed).
    cache = Path(tempfile.gettempdir()) / "iqa-batch-models"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"{sha}.onnx").write_bytes(data)
    spec = batch_stages.ModelSpec(sha, None, model.max_pixels, model.min_side)
    missing = str(tmp_path / "missing.jpg")
    paths = [str(p) for p in photos] + [missing]
    block = batch_stages.prepare_block(
        pa.table({"path": pa.array(paths, pa.string())}), model.preparer(),
        batch_sources.ReadOptions(),
    )
    assert block.column("prepared").null_count == 1
    actor = batch_stages.ScoreActor(spec, ("CPUExecutionProvider",), 1)
    rows = {r["path"]: r for r in actor(block).to_pylist()}
    for photo in photos:
        assert rows[str(photo)]["status"] == "ok"
        assert abs(rows[str(photo)]["score"] - model.score(photo).score) <= 1e-6
    assert rows[missing]["status"] == "error" and rows[missing]["error_type"]
