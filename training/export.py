"""Export a trained QualityNet to a self-contained ONNX file that follows the contract.

``iqa export CHECKPOINT -o OUT.onnx`` rebuilds the model from the checkpoint, exports it
with dynamic batch, height and width, writes the metadata inference needs, and checks
that onnxruntime gives the same numbers as torch on real photos before it succeeds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from iqa.inference.contract import (
    DETAIL_INPUT,
    INPUT_NAME,
    META_BACKBONE,
    META_CALIBRATION,
    META_CREATED,
    META_FACTOR_NAMES,
    META_INPUTS,
    META_LICENSE,
    META_METRICS,
    META_MODEL_VERSION,
    META_PREPROCESSING,
    META_TRAINING_DATA,
    SCORE_OUTPUT,
    Preprocessing,
)

from .half_weights import (
    FP16_PARITY_ATOL,
    META_WEIGHT_STORAGE,
    MIN_ELEMENTS,
    store_weights_in_float16,
)
from .onnx_graph import (
    ExportError,
    detail_view_of,
    device_of,
    graph_module,
    has_factors,
    input_names,
    is_calibrated,
    output_names,
)
from .parity import PARITY_ATOL, ParityError, check_parity, parity_images

DEFAULT_OPSET = 17  # the TorchScript exporter's best-tested opset; onnxruntime 1.17+ runs it
MIN_OPSET = 17  # the contract's
WEIGHT_STORAGE = ("float32", "float16")

LIVE_NOTICE = (
    "Trained on the LIVE In the Wild Image Quality Challenge Database: Copyright (c) 2015 "
    "The University of Texas at Austin. D. Ghadiyaram and A.C. Bovik, \"Massive Online "
    "Crowdsourced Study of Subjective and Objective Picture Quality\", IEEE TIP; "
    "http://live.ece.utexas.edu/research/ChallengeDB/index.html. See README-LIVE.txt for "
    "the full notice, which must accompany copies of the database."
)


def _torch_to_onnx_bytes(model, opset: int, exporter: str) -> bytes:
    import torch

    module = graph_module(model)
    outputs, inputs = output_names(model), input_names(model)
    device = device_of(model)
    sample = (torch.zeros(1, 3, 64, 96, device=device),)
    view = detail_view_of(model)
    if view is not None:
        sample += (torch.zeros(1, 3, view.side, view.side, device=device),)
        if view.native_scale:
            # Past the gate, so that the penalty's branch is traced with live values.
            sample += (torch.full((1, 1), 8.0, device=device),)
    if exporter == "torchscript":
        # The TorchScript exporter is deprecated in favour of dynamo, but it exports a
        # Lite0 in under a second where dynamo takes minutes on a small CPU, and both give
        # the same graph numerically (parity below 1e-6). Silence only its deprecation notice.
        axes = {INPUT_NAME: {0: "N", 2: "H", 3: "W"},
                **{name: {0: "N"} for name in [*inputs[1:], *outputs]}}
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
            torch.onnx.export(module, sample, buffer, dynamo=False, opset_version=opset,
                              input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, do_constant_folding=True)
        return buffer.getvalue()
    if exporter == "dynamo":
        if view is not None:
            raise ExportError("--exporter dynamo supports single-view models only")
        dim = torch.export.Dim.DYNAMIC
        program = torch.onnx.export(module, sample, dynamo=True, opset_version=max(opset, 18),
                                    input_names=[INPUT_NAME], output_names=outputs,
                                    dynamic_shapes=({0: dim, 2: dim, 3: dim},),
                                    external_data=False, verbose=False)
        return program.model_proto.SerializeToString()
    raise ExportError(f"unknown exporter '{exporter}' (use 'torchscript' or 'dynamo')")


def default_metadata(model, preprocessing: Preprocessing) -> dict[str, str]:
    """Metadata every export carries; the caller's entries are added on top."""
    kwargs = getattr(model, "model_kwargs", {})
    meta = {
        META_PREPROCESSING: preprocessing.to_json(),
        META_BACKBONE: str(kwargs.get("backbone", type(model).__name__)),
        META_MODEL_VERSION: "unversioned",
        META_TRAINING_DATA: "unknown",
        META_METRICS: json.dumps({}),
        META_CREATED: datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    }
    if has_factors(model):
        meta[META_FACTOR_NAMES] = json.dumps(list(model.factor_names))
    if detail_view_of(model) is not None:
        meta[META_INPUTS] = json.dumps({DETAIL_INPUT: json.loads(model.detail_view.to_json())})
    if is_calibrated(model):
        meta[META_CALIBRATION] = json.dumps({"knots_x": model.calibration.knots_x.tolist(),
                                             "knots_y": model.calibration.knots_y.tolist()})
    return meta


def _as_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def set_metadata(proto, metadata: dict) -> None:
    """Replace an ONNX model's metadata_props by ``metadata`` (non-strings as JSON)."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, _as_text(value)


def export_onnx(
    model,
    out_path: str | os.PathLike,
    preprocessing: Preprocessing | None = None,
    metadata: dict | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = "torchscript",
    weights: str = "float32",
) -> Path:
    """Export ``model`` (a QualityNet) to one self-contained ONNX file.

    ``preprocessing`` defaults to ``model.preprocessing``; ``metadata`` entries (contract
    keys, values as strings or JSON-able objects) override the defaults. ``weights="float16"``
    stores the large weights at half precision (``iqa.training.half_weights``).
    """
    import onnx

    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: the contract needs opset {MIN_OPSET} "
                          "or newer")
    if weights not in WEIGHT_STORAGE:
        raise ExportError(f"weights must be one of {', '.join(WEIGHT_STORAGE)}, not {weights!r}")
    preprocessing = preprocessing or model.preprocessing
    was_training = model.training
    model.eval()
    try:
        proto = onnx.load_from_string(_torch_to_onnx_bytes(model, opset, exporter))
    finally:
        model.train(was_training)
    metadata = {**default_metadata(model, preprocessing), **(metadata or {})}
    if weights == "float16":
        count = store_weights_in_float16(proto)
        metadata[META_WEIGHT_STORAGE] = (f"float16 ({count} initializers of >= {MIN_ELEMENTS} "
                                         "values; computed in float32)")
    set_metadata(proto, metadata)
    onnx.checker.check_model(proto)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Weights stay inside the file (a Lite0 is ~16 MB, far below protobuf's 2 GB limit).
    onnx.save_model(proto, str(out_path), save_as_external_data=False)
    return out_path


# ------------------------------------------------------------------ checkpoint -> ONNX


def license_text(checkpoint: dict) -> str:
    """The licence notice for the exported weights, from the checkpoint's metadata."""
    from iqa.models import BACKBONES

    metadata = checkpoint.get("metadata") or {}
    if metadata.get("license"):
        return str(metadata["license"])
    kwargs = checkpoint.get("model_kwargs") or {}
    backbone = kwargs.get("backbone", "unknown")
    pretrained = ((checkpoint.get("config") or {}).get("model") or {}).get("pretrained", True)
    source = BACKBONES.get(backbone)
    if pretrained is True and source is not None:
        parts = [f"Backbone {backbone} initialised from the ImageNet weights of the "
                 f"{source.pip_name} package ({source.license})."]
    elif pretrained:
        parts = [f"Backbone {backbone} initialised from {Path(str(pretrained)).name}: "
                 "see the licence of those weights."]
    else:
        parts = [f"Backbone {backbone} trained from random initialisation."]
    training_data = str(metadata.get("training_data", "")).lower()
    if "livec" in training_data or "live challenge" in training_data:
        parts.append(LIVE_NOTICE)
    return " ".join(parts)


def model_from_checkpoint(checkpoint: dict, *, fresh_calibration: bool = False):
    """Rebuild the QualityNet a checkpoint was trained as, with its weights.

    ``fresh_calibration``: hold an identity calibration instead of the checkpoint's own (if
    any), for `iqa calibrate` to fit.
    """
    from iqa.models import BackboneError, create_model

    missing = [k for k in ("model", "model_kwargs") if k not in checkpoint]
    if missing:
        raise ExportError(f"checkpoint lacks {', '.join(missing)}: not written by `iqa train`?")
    kwargs, state = dict(checkpoint["model_kwargs"]), dict(checkpoint["model"])
    if fresh_calibration:
        kwargs["calibrated"] = True
        state = {k: v for k, v in state.items() if not k.startswith("calibration.")}
    try:
        model = create_model(**kwargs, pretrained=False)
        if fresh_calibration:
            state.update({f"calibration.{k}": v
                          for k, v in model.calibration.state_dict().items()})
        elif model.calibration is not None:
            # The knot count is data, not architecture: size the buffers before loading.
            model.calibration.set_knots(state["calibration.knots_x"],
                                        state["calibration.knots_y"])
        model.load_state_dict(state, strict=True)
    except (BackboneError, TypeError, RuntimeError, KeyError, ValueError) as exc:
        raise ExportError(f"cannot rebuild the model from the checkpoint: {exc}") from exc
    if checkpoint.get("preprocessing"):  # the trainer's resolved policy, overrides included
        model.preprocessing = Preprocessing.from_json(json.dumps(checkpoint["preprocessing"]))
    return model.eval()


# How run_data described synthetic groups before it knew about level targets. A run with
# loss.level_weight > 0 did train absolute levels (the shipped v2 among them), so the
# clause is corrected wherever a checkpoint's description is read.
_STALE_CLAUSE = ("only rankings against their originals and the factor head, never an "
                 "absolute score")


def training_data_text(checkpoint: dict) -> str:
    """The checkpoint's ``metadata.training_data``, with the stale clause corrected."""
    text = str((checkpoint.get("metadata") or {}).get("training_data", "unknown"))
    level_weight = float(((checkpoint.get("config") or {}).get("loss") or {})
                         .get("level_weight") or 0)
    if level_weight and _STALE_CLAUSE in text:
        text = text.replace(_STALE_CLAUSE, "rankings against their originals, the factor head "
                            "and absolute page-scale levels from the severity "
                            f"(loss.level_weight {level_weight:g})")
    return text


def checkpoint_metadata(checkpoint: dict, source: Path, model_version: str | None) -> dict:
    metadata = checkpoint.get("metadata") or {}
    config = checkpoint.get("config") or {}
    version = model_version or metadata.get("model_version") or config.get("name") or source.stem
    return {
        META_MODEL_VERSION: str(version),
        META_TRAINING_DATA: training_data_text(checkpoint),
        META_METRICS: metadata.get("validation_metrics") or {},
        META_LICENSE: license_text(checkpoint),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by `iqa train` (.pt)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, 17 or newer (default {DEFAULT_OPSET})")
    parser.add_argument("--model-version", help="version string stored in the metadata "
                        "(default: the config's name or the checkpoint's file name)")
    parser.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                        help="torch ONNX exporter (default torchscript: fast, tested)")
    parser.add_argument("--weights", choices=WEIGHT_STORAGE, default="float32",
                        help="how the file stores large weights: float32 (default) or float16, "
                        "half the file size, still computed in float32; scores move by about "
                        f"0.001 (the parity check then allows {FP16_PARITY_ATOL:g})")
    parser.add_argument("--quantize", action="store_true",
                        help="also write OUT.int8.onnx, quantized to int8 with onnxruntime")
    parser.add_argument("--quantize-method", choices=("static", "dynamic"), default="static",
                        help="static QDQ calibrated on photos (default; faster than fp32 on "
                        "CPU) or dynamic (no calibration, but much slower for conv nets)")
    parser.add_argument("--calibration-method", choices=("percentile", "minmax"),
                        default="percentile",
                        help="activation ranges for static int8: percentile (default, closer "
                        "to fp32) or minmax (faster to calibrate)")
    parser.add_argument("--calibration-images", type=Path, nargs="+",
                        help="images or folders for int8 calibration (default: sample photos)")
    parser.add_argument("--no-parity-check", action="store_true",
                        help="skip comparing torch and onnxruntime outputs")


def max_opset(exporter: str) -> int:
    """The newest opset torch's ``exporter`` writes; a newer one fails inside torch."""
    from torch.onnx import _constants

    if exporter == "dynamo":
        return int(getattr(_constants, "ONNX_MAX_OPSET", 23))
    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))


def option_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options and output paths, or None; checked before the
    checkpoint is loaded, so that no export is made only to be refused."""
    from iqa.inference.output_files import output_problem

    from .quantize import int8_path_for

    newest = max_opset(args.exporter)
    if not MIN_OPSET <= args.opset <= newest:
        return (f"--opset must be {MIN_OPSET} to {newest} (the contract needs {MIN_OPSET} or "
                f"newer; torch's {args.exporter} exporter writes up to {newest}), "
                f"got {args.opset}")
    if args.quantize and args.weights != "float32":
        return "--quantize needs --weights float32: it quantizes from float32"
    outputs = [(args.output, "-o")]
    if args.quantize:
        outputs.append((int8_path_for(args.output), "--quantize's int8 file"))
    for path, option in outputs:
        problem = output_problem(path, option, inputs=[args.checkpoint])
        if problem:
            return problem
    return None


def _fail(message, code: int) -> int:
    print(f"iqa export: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    """Exit 2 when the options, paths or checkpoint are wrong (checked before any export),
    1 when the export itself fails (parity, quantization), as `iqa score` does."""
    from iqa.training import export_multiview as v2
    from iqa.training.checkpoint import CheckpointError, atomic_path, load_checkpoint

    problem = option_problem(args)
    if problem:
        return _fail(problem, 2)
    try:
        images = None
        if args.quantize and args.quantize_method == "static":
            from iqa.training.quantize import calibration_images_from

            images = calibration_images_from(args.calibration_images)
        checkpoint = load_checkpoint(args.checkpoint)
        metadata = checkpoint_metadata(checkpoint, args.checkpoint, args.model_version)
        multiview = v2.is_multiview(checkpoint)
        if multiview and (args.quantize or args.exporter != "torchscript"
                          or args.weights != "float32"):
            raise ExportError("--quantize, --weights float16 and --exporter dynamo support "
                              "QualityNet models only")
        model = v2.model_from_checkpoint(checkpoint) if multiview else model_from_checkpoint(
            checkpoint)
    except (CheckpointError, ExportError) as exc:
        return _fail(exc, 2)

    out = args.output
    try:
        # Written beside -o and moved over it only once checked: a failed export or parity
        # check never replaces a good model already there.
        with atomic_path(out) as tmp:
            if multiview:
                v2.export_multiview_onnx(model, tmp, metadata, opset=args.opset)
            else:
                export_onnx(model, tmp, metadata=metadata, opset=args.opset,
                            exporter=args.exporter, weights=args.weights)
            if not args.no_parity_check:
                check = v2.check_multiview_parity if multiview else check_parity
                atol = FP16_PARITY_ATOL if args.weights == "float16" else PARITY_ATOL
                try:
                    parity = check(model, tmp, atol=atol, label=str(out))
                except ParityError as exc:
                    # Kept for a look, under a name no scorer would take for the model.
                    failed = out.with_name(f"{out.stem}.parity-failed{out.suffix}")
                    try:
                        os.replace(tmp, failed)
                        kept = f"the failed export is {failed}"
                    except OSError:
                        kept = "the failed export was not kept"
                    raise ParityError(f"{exc}; {out} was not written ({kept}; "
                                      "--no-parity-check writes it anyway)") from exc
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, opset {args.opset})")
        if not args.no_parity_check:
            print(f"parity: {parity}")
        if args.quantize:
            from iqa.training.quantize import quantize_onnx

            int8 = quantize_onnx(out, images=images, method=args.quantize_method,
                                 calibration=args.calibration_method)
            report = compare_int8(out, int8, model.preprocessing)
            print(f"wrote {int8} ({int8.stat().st_size / 1e6:.1f} MB); {report}")
    except ExportError as exc:
        return _fail(exc, 1)
    return 0


def compare_int8(fp32_path: Path, int8_path: Path, preprocessing: Preprocessing) -> str:
    """One line on how far the int8 model's scores are from the fp32 model's.

    The photos go through the model's own resize policy, as at inference.
    """
    import onnxruntime as ort
    from PIL import Image

    from iqa.inference.preprocess import to_model_input

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                for p in (fp32_path, int8_path)]
    diffs = []
    for photo in parity_images():
        batch = to_model_input(Image.fromarray(photo), preprocessing)[None]
        fp32, int8 = (s.run([SCORE_OUTPUT], {INPUT_NAME: batch})[0] for s in sessions)
        diffs.append(float(np.abs(fp32 - int8).max()))
    return (f"int8 vs fp32 on {len(diffs)} sample photos: max |score difference| "
            f"{max(diffs):.4f} (scripts/quantize_eval.py measures SRCC on a labelled set)")
