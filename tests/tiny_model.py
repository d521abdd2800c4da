"""Build a tiny ONNX model that follows the iqa contract, with onnx.helper only (no torch).

Random but seeded weights: the scores mean nothing, but every code path between bytes
and JSON runs for real on a real onnxruntime session.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from iqa.inference.contract import (
    FACTOR_NAMES,
    FACTORS_OUTPUT,
    INPUT_NAME,
    META_FACTOR_NAMES,
    META_METRICS,
    META_MODEL_VERSION,
    META_PREPROCESSING,
    META_TRAINING_DATA,
    SCORE_OUTPUT,
    Preprocessing,
)


def build_tiny_model(
    path: Path,
    *,
    with_factors: bool = True,
    preprocessing: Preprocessing | None = None,
    seed: int = 0,
) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    k = len(FACTOR_NAMES)
    prep = preprocessing or Preprocessing(shorter_side=64, max_longer_side=128)
    conv_w = rng.normal(0, 0.5, size=(4, 3, 3, 3)).astype(np.float32)
    fc_w = rng.normal(0, 0.5, size=(4, 1 + k)).astype(np.float32)
    fc_b = np.zeros(1 + k, dtype=np.float32)
    inits = [
        numpy_helper.from_array(conv_w, "conv_w"),
        numpy_helper.from_array(fc_w, "fc_w"),
        numpy_helper.from_array(fc_b, "fc_b"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
        numpy_helper.from_array(np.array([1, k], dtype=np.int64), "split_sizes"),
    ]
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "conv_w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probs"]),
        helper.make_node("Split", ["probs", "split_sizes"], ["score2d", "fac"], axis=1),
        helper.make_node("Squeeze", ["score2d", "one"], [SCORE_OUTPUT]),
    ]
    outputs = [helper.make_tensor_value_info(SCORE_OUTPUT, TensorProto.FLOAT, ["N"])]
    if with_factors:
        nodes.append(helper.make_node("Identity", ["fac"], [FACTORS_OUTPUT]))
        outputs.append(helper.make_tensor_value_info(FACTORS_OUTPUT, TensorProto.FLOAT, ["N", k]))
    graph = helper.make_graph(
        nodes,
        "tiny_iqa",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, "H", "W"])],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {
        META_PREPROCESSING: prep.to_json(),
        META_FACTOR_NAMES: json.dumps(list(FACTOR_NAMES)),
        META_MODEL_VERSION: "tiny-test",
        META_TRAINING_DATA: "none (random weights, for tests)",
        META_METRICS: json.dumps({}),
    }
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
