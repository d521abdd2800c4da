"""`iqa info`: print what a quality model is, how it was trained and how it is fed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print a model's metadata: version, backbone, training data, validation metrics, "
        "preprocessing, factor names, inputs/outputs and onnxruntime providers."
    )
    parser.add_argument("--model", metavar="PATH", help="ONNX model (default: the shipped one)")
    parser.add_argument(
        "--providers", metavar="LIST", help="comma-separated onnxruntime providers to load with"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    from .decode import ALLOWED_FORMATS
    from .errors import IQAError
    from .model import QualityModel, available_providers

    providers = [p.strip() for p in args.providers.split(",")] if args.providers else None
    try:
        model = QualityModel(args.model, providers=providers)
    except IQAError as exc:
        print(f"iqa info: {exc}", file=sys.stderr)
        return 2
    info = model.info()
    info["available_providers"] = available_providers()
    # Not the model's but this install's: whether a HEIC can be scored depends on pi-heif.
    info["image_formats"] = list(ALLOWED_FORMATS)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_info(info))
    return 0


def format_info(info: dict) -> str:
    prep = info["preprocessing"]
    lines = [
        f"model               {info['path']}",
        f"version             {info['version'] or '-'}",
        f"backbone            {info['backbone'] or '-'}",
        f"training data       {info['training_data'] or '-'}",
        f"created             {info['created'] or '-'}",
        f"license             {info['license'] or '-'}",
        "validation metrics  " + (_metrics(info["validation_metrics"]) if
                                  info["validation_metrics"] else _no_metrics(info)),
        "preprocessing       "
        f"shorter side {prep['shorter_side']} px, longer side <= {prep['max_longer_side']} px, "
        + (f"<= {prep['pixel_budget']:,} pixels, " if prep.get("pixel_budget") else "")
        + f"multiple of {prep['size_multiple']}, {prep['resample']} resize",
        f"                    mean {_floats(prep['mean'])}, std {_floats(prep['std'])}",
        "factors             " + (", ".join(info["factor_names"]) or "- (score only)"),
    ]
    for kind in ("inputs", "outputs"):
        for node in info[kind]:
            shape = "x".join(str(d) for d in node["shape"])
            lines.append(f"{kind[:-1]:<20}{node['name']}: {node['type']} [{shape}]")
    lines.append("providers           " + ", ".join(info["providers"]))
    lines.append("available           " + ", ".join(info.get("available_providers", [])))
    if "image_formats" in info:
        formats = ", ".join(info["image_formats"])
        lines.append("image formats       " + formats + ("" if "HEIF" in info["image_formats"]
                                                         else " (HEIF: pip install \"iqa[heif]\")"))
    for key, value in sorted(info.get("other_metadata", {}).items()):
        lines.append(f"{key:<20}{_calibration(value) if key == CALIBRATION_KEY else value}")
    return "\n".join(lines)


CALIBRATION_KEY = "iqa.calibration"


def _no_metrics(info: dict) -> str:
    # The shipped model saw every rated image, so it has no held-out figure to carry; its
    # recipe's cross-validation is in the model card.
    from .model import default_model_path

    if Path(info["path"]).resolve() == default_model_path().resolve():
        return "- (trained on every rated image; cross-validated figures: MODEL_CARD.md)"
    return "-"


def _calibration(value: str) -> str:
    """The knots in one line: how many, and the ranges they map (--json has them all)."""
    try:
        knots = json.loads(value)
        xs, ys = knots["knots_x"], knots["knots_y"]
        return (f"{len(xs)} knots, mos {xs[0]:.3f}-{xs[-1]:.3f} -> score "
                f"{ys[0]:.3f}-{ys[-1]:.3f}, increasing (all knots: --json)")
    except (ValueError, KeyError, TypeError, IndexError):
        return value


def _floats(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _metrics(metrics) -> str:
    if not metrics:
        return "-"
    if not isinstance(metrics, dict):
        return str(metrics)
    parts = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k}={_number(v)}" for k, v in value.items())
            parts.append(f"{key}: {inner}")
        else:
            parts.append(f"{key}={_number(value)}")
    return "\n                    ".join(parts)


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
