"""ONNX export of model v2 (two inputs, three outputs) and its parity check.

The graph takes ``image`` (global view, N x 3 x H x W, dynamic H and W) and ``detail``
(N x 3 x S x S mosaic of native patches) and returns ``score`` (calibrated), ``mos``
(raw) and ``factors``. The metadata adds :data:`META_INPUTS`, the recipe of the detail
input, so that anyone with onnxruntime can build both inputs from the metadata alone
(ARCHITECTURE.md).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np

from iqa.inference.contract import (
    DETAIL_INPUT,
    FACTORS_OUTPUT,
    INPUT_NAME,
    META_CALIBRATION,
    META_INPUTS,
    MOS_OUTPUT,
    SCORE_OUTPUT,
    DetailView,
    Preprocessing,
)

from .export import default_metadata, set_metadata
from .onnx_graph import ExportError
from .parity import PARITY_ATOL, ParityError, ParityReport, max_abs_difference, parity_images

OUTPUTS = (SCORE_OUTPUT, MOS_OUTPUT, FACTORS_OUTPUT)


def is_multiview(checkpoint_or_model) -> bool:
    kwargs = (checkpoint_or_model.get("model_kwargs") if isinstance(checkpoint_or_model, dict)
              else getattr(checkpoint_or_model, "model_kwargs", None)) or {}
    return kwargs.get("architecture") == "multiview"


def model_from_checkpoint(checkpoint: dict):
    from iqa.models.multiview import create_multiview_model

    kwargs = dict(checkpoint["model_kwargs"])
    kwargs.pop("architecture", None)
    backbone = kwargs.pop("backbone")
    try:
        model = create_multiview_model(backbone, False, **{**kwargs,
                                                           "stages": tuple(kwargs["stages"])})
        state = checkpoint["model"]
        # The calibration's knot count is data, not architecture: size it before loading.
        model.heads.calibration.set_knots(state["heads.calibration.knots_x"],
                                          state["heads.calibration.knots_y"])
        model.load_state_dict(state, strict=True)
    except (TypeError, RuntimeError, KeyError, ValueError) as exc:
        raise ExportError(f"cannot rebuild the v2 model from the checkpoint: {exc}") from exc
    if checkpoint.get("preprocessing"):
        model.preprocessing = Preprocessing.from_json(json.dumps(checkpoint["preprocessing"]))
    return model.eval()


def export_multiview_onnx(model, out_path, metadata: dict | None = None, opset: int = 17) -> Path:
    import onnx
    import torch

    model.eval()
    side = model.detail_view.side
    sample = (torch.zeros(1, 3, 64, 96), torch.zeros(1, 3, side, side))
    axes = {INPUT_NAME: {0: "N", 2: "H", 3: "W"}, DETAIL_INPUT: {0: "N"},
            SCORE_OUTPUT: {0: "N"}, MOS_OUTPUT: {0: "N"}, FACTORS_OUTPUT: {0: "N"}}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice; see export._torch_to_onnx_bytes.
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        torch.onnx.export(model, sample, buffer, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME, DETAIL_INPUT], output_names=list(OUTPUTS),
                          dynamic_axes=axes, do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    calibration = {"knots_x": model.heads.calibration.knots_x.tolist(),
                   "knots_y": model.heads.calibration.knots_y.tolist()}
    meta = {**default_metadata(model, model.preprocessing),
            META_INPUTS: {DETAIL_INPUT: json.loads(model.detail_view.to_json())},
            META_CALIBRATION: calibration, **(metadata or {})}
    set_metadata(proto, meta)
    onnx.checker.check_model(proto)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(out_path), save_as_external_data=False)
    return out_path


def parity_inputs(prep: Preprocessing, view: DetailView) -> list[dict[str, np.ndarray]]:
    """Real photos through the inference preprocessing, one at a time and as a batch."""
    from PIL import Image

    from iqa.inference.preprocess import to_model_inputs

    photos = [Image.fromarray(a).convert("RGB") for a in parity_images()]
    singles = [to_model_inputs(p, prep, view) for p in photos]
    batches = [{k: v[None] for k, v in s.items()} for s in singles]
    same = [s for s in singles if s[INPUT_NAME].shape == singles[0][INPUT_NAME].shape]
    if len(same) > 1:
        batches.append({k: np.stack([s[k] for s in same]) for k in same[0]})
    return batches


def check_multiview_parity(model, onnx_path, atol: float = PARITY_ATOL,
                           label: str | None = None) -> ParityReport:
    """Compare every output of torch and onnxruntime; raise ParityError beyond ``atol`` or
    on NaN. ``label`` names the model in messages (default ``onnx_path``)."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = dict.fromkeys(OUTPUTS, 0.0)
    batches = parity_inputs(model.preprocessing, model.detail_view)
    model.eval()
    for batch in batches:
        with torch.no_grad():
            expected = model(torch.from_numpy(batch[INPUT_NAME]),
                             torch.from_numpy(batch[DETAIL_INPUT]))
        got = session.run(list(OUTPUTS), batch)
        for name, e, g in zip(OUTPUTS, expected, got, strict=True):
            worst[name] = max(worst[name], max_abs_difference(e.numpy(), g))
    report = ParityReport(max(worst[SCORE_OUTPUT], worst[MOS_OUTPUT]), worst[FACTORS_OUTPUT],
                          tuple(b[INPUT_NAME].shape for b in batches))
    if max(worst.values()) > atol:
        raise ParityError(f"{label or onnx_path}: torch and onnxruntime disagree beyond {atol}: "
                          f"{worst}")
    return report
