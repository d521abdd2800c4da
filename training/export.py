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
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from iqa.inference.contract import (
    DETAIL_INPUT,
    DETAIL_SCALE_INPUT,
    FACTORS_OUTPUT,
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
    MOS_OUTPUT,
    SCORE_OUTPUT,
    Preprocessing,
)

from .half_weights import (
    FP16_PARITY_ATOL,
    META_WEIGHT_STORAGE,
    MIN_ELEMENTS,
    store_weights_in_float16,
)

DEFAULT_OPSET = 17  # the TorchScript exporter's best-tested opset; onnxruntime 1.17+ runs it
MIN_OPSET = 17  # the contract's
PARITY_ATOL = 1e-4
WEIGHT_STORAGE = ("float32", "float16")

LIVE_NOTICE = (
    "Trained on the LIVE In the Wild Image Quality Challenge Database: Copyright (c) 2015 "
    "The University of Texas at Austin. D. Ghadiyaram and A.C. Bovik, \"Massive Online "
    "Crowdsourced Study of Subjective and Objective Picture Quality\", IEEE TIP; "
    "http://live.ece.utexas.edu/research/ChallengeDB/index.html. See README-LIVE.txt for "
    "the full notice, which must accompany copies of the database."
)


class ExportError(RuntimeError):
    """The model could not be exported, or the export does not match torch."""


class ParityError(ExportError):
    """onnxruntime's outputs differ from torch's by more than the tolerance."""


@dataclass(frozen=True)
class ParityReport:
    max_abs_score: float
    max_abs_factors: float
    shapes: tuple[tuple[int, ...], ...]

    def __str__(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.shapes)
        return (f"max |torch - onnxruntime|: score {self.max_abs_score:.2e}, "
                f"factors {self.max_abs_factors:.2e} on {shapes}")


def _graph_module(model):
    """What the exporter traces, returning the tensors of :func:`output_names` in order."""
    import torch

    class Outputs(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, detail=None, scale=None):
            if _is_calibrated(self.inner):
                score, mos, factors = self.inner.forward_calibrated(x, detail, scale)
                return (score, mos, factors) if _has_factors(self.inner) else (score, mos)
            score, factors = self.inner(x, detail, scale)
            return (score, factors) if _has_factors(self.inner) else score

    return Outputs(model)


def _detail_view(model):
    return getattr(model, "detail_view", None)


def input_names(model) -> list[str]:
    """``image``, ``detail`` for a model with a detail view, ``detail_scale`` if that view
    has ``native_scale``."""
    view = _detail_view(model)
    return ([INPUT_NAME] + ([DETAIL_INPUT] if view is not None else [])
            + ([DETAIL_SCALE_INPUT] if view is not None and view.native_scale else []))


def _is_calibrated(model) -> bool:
    return getattr(model, "calibration", None) is not None


def output_names(model) -> list[str]:
    """``score`` (+ ``mos`` for a calibrated model, whose ``score`` is on the page's scale)
    (+ ``factors``)."""
    return ([SCORE_OUTPUT] + ([MOS_OUTPUT] if _is_calibrated(model) else [])
            + ([FACTORS_OUTPUT] if _has_factors(model) else []))


def _device_of(model):
    return next(model.parameters()).device


def _has_factors(model) -> bool:
    return getattr(model, "num_factors", 0) > 0


def _torch_to_onnx_bytes(model, opset: int, exporter: str) -> bytes:
    import torch

    module = _graph_module(model)
    outputs, inputs = output_names(model), input_names(model)
    device = _device_of(model)
    sample = (torch.zeros(1, 3, 64, 96, device=device),)
    view = _detail_view(model)
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
    if _has_factors(model):
        meta[META_FACTOR_NAMES] = json.dumps(list(model.factor_names))
    if _detail_view(model) is not None:
        meta[META_INPUTS] = json.dumps({DETAIL_INPUT: json.loads(model.detail_view.to_json())})
    if _is_calibrated(model):
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


def parity_images() -> list[np.ndarray]:
    """Real photos for the parity check: scikit-image's public-domain samples.

    Without scikit-image (a dev dependency) smooth synthetic images stand in; they still
    exercise every layer, just with less natural statistics.
    """
    try:
        from skimage import data

        return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    except ImportError:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:480, 0:640] / 480.0
        base = np.stack([np.sin(3 * xx), np.cos(2 * yy), xx * yy], axis=-1)
        noisy = base + rng.normal(0, 0.05, base.shape)
        return [np.clip((noisy * 0.5 + 0.5) * 255, 0, 255).astype(np.uint8)]


def parity_sizes(preprocessing: Preprocessing) -> list[tuple[int, int]]:
    """(height, width) of the parity inputs, around the policy's own resolution.

    For the default 320 px policy: 320x320, 320x448 (landscape), 448x320 (portrait) and
    384x512 (larger than inference ever sends).
    """
    m = preprocessing.size_multiple
    side = max(m, preprocessing.shorter_side // m * m)
    long = side + 4 * m
    return [(side, side), (side, long), (long, side), (side + 2 * m, long + 2 * m)]


def parity_inputs(preprocessing: Preprocessing,
                  images: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Batches (N x 3 x H x W) of real photos, built with the inference preprocessing code.

    Each photo is cropped to a size's aspect ratio and resized by the policy itself, so
    the resize and normalisation are exactly what inference runs. The last size is also
    run as a batch of two, and one photo goes through the unmodified policy.
    """
    from PIL import Image

    from iqa.inference.preprocess import to_model_input

    photos = [Image.fromarray(a).convert("RGB") for a in (images or parity_images())]

    def at(photo: Image.Image, height: int, width: int) -> np.ndarray:
        w, h = photo.size
        scale = min(w / width, h / height)
        cw, ch = int(width * scale), int(height * scale)
        left, top = (w - cw) // 2, (h - ch) // 2
        cropped = photo.crop((left, top, left + cw, top + ch))
        policy = replace(preprocessing, shorter_side=min(height, width),
                         max_longer_side=max(height, width), pixel_budget=None)
        return to_model_input(cropped, policy)

    sizes = parity_sizes(preprocessing)
    batches = [at(photos[i % len(photos)], h, w)[None] for i, (h, w) in enumerate(sizes)]
    batches.append(np.stack([at(photos[i % len(photos)], *sizes[-1]) for i in (1, 2)]))
    batches.append(to_model_input(photos[0], preprocessing)[None])
    return batches


def check_parity(
    model,
    onnx_path: str | os.PathLike,
    inputs: list[np.ndarray] | None = None,
    atol: float = PARITY_ATOL,
    label: str | None = None,
) -> ParityReport:
    """Compare torch and onnxruntime outputs; raise ParityError beyond ``atol``, or where
    either gives NaN. ``label`` names the model in messages (default ``onnx_path``)."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if names != output_names(model):
        raise ParityError(f"{label or onnx_path}: outputs {names}, torch model has "
                          f"{output_names(model)}")
    view = _detail_view(model)
    if inputs is None:
        if view is not None:
            from .export_multiview import parity_inputs as two_view_inputs

            inputs = two_view_inputs(model.preprocessing, view)
        else:
            inputs = parity_inputs(model.preprocessing)
    device = _device_of(model)
    was_training = model.training
    model.eval()
    graph = _graph_module(model)
    worst = {name: 0.0 for name in names}
    try:
        for batch in inputs:
            feed = batch if isinstance(batch, dict) else {INPUT_NAME: batch}
            with torch.no_grad():
                expected = graph(*(torch.from_numpy(feed[n]).to(device)
                                   for n in input_names(model)))
            expected = expected if isinstance(expected, tuple) else (expected,)
            got = session.run(names, feed)
            for name, e, g in zip(names, expected, got, strict=True):
                worst[name] = max(worst[name], max_abs_difference(e.cpu().numpy(), g))
    finally:
        model.train(was_training)
    worst_score = max(worst[SCORE_OUTPUT], worst.get(MOS_OUTPUT, 0.0))
    worst_factors = worst.get(FACTORS_OUTPUT, 0.0)
    shapes = tuple((b[INPUT_NAME] if isinstance(b, dict) else b).shape for b in inputs)
    report = ParityReport(worst_score, worst_factors, shapes)
    if worst_score > atol or worst_factors > atol:
        raise ParityError(f"{label or onnx_path}: torch and onnxruntime disagree beyond {atol}: "
                          f"{report}")
    return report


def max_abs_difference(expected: np.ndarray, got: np.ndarray) -> float:
    """max |expected - got|, infinite where either holds NaN: a NaN compares False with
    any tolerance, so it would otherwise pass as a perfect match."""
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(expected, np.float64))
    return float("inf") if np.isnan(diff).any() else float(diff.max())


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
    from .checkpoint import output_problem
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
