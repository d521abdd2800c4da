"""How much accuracy and speed int8 quantization trades, on a labelled IQA set.

Quantizes an exported fp32 model (static QDQ and/or dynamic, calibrated on images that
are not evaluated), scores the evaluation images with every variant, and prints a
Markdown table: SRCC/PLCC against MOS, agreement with fp32, file size and model time per
image (preprocessing excluded, one thread by default).

    python scripts/quantize_eval.py model.onnx --dataset livec \\
        --root /work/shared/datasets/livec --split-csv configs/splits/livec_seed0.csv
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="fp32 ONNX model exported by `iqa export`")
    p.add_argument("--int8", type=Path, nargs="*", default=[],
                   help="already quantized models to compare instead of quantizing here")
    p.add_argument("--methods", nargs="+", choices=("static", "dynamic"), default=["static"],
                   help="quantization methods to try (default: static)")
    p.add_argument("--calibrations", nargs="+", choices=("percentile", "minmax"),
                   default=["percentile"], help="static calibration methods to try")
    p.add_argument("--dataset", required=True, help="dataset name (iqa.training.datasets)")
    p.add_argument("--root", type=Path, required=True, help="dataset folder")
    p.add_argument("--split-csv", type=Path,
                   help="split file; evaluate on --split, calibrate on the train split")
    p.add_argument("--split", default="val", help="split to evaluate (default val)")
    p.add_argument("--limit", type=int, default=0, help="evaluate at most N images (0 = all)")
    p.add_argument("--calibration", type=int, default=32,
                   help="number of calibration images (default 32)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    return p.parse_args(argv)


def split_records(args):
    from iqa.training.datasets import load_dataset, select_split
    from iqa.training.datasets.splits import apply_split

    records = load_dataset(args.dataset, args.root)
    if args.split_csv:
        records = apply_split(records, args.split_csv)
    if any(r.split for r in records):
        evaluate = select_split(records, args.split)
        calibrate = select_split(records, "train")
    else:  # no split: calibrate on every other image, evaluate on the rest
        evaluate, calibrate = records[1::2], records[0::2]
    if args.limit:
        evaluate = evaluate[: args.limit]
    step = max(1, len(calibrate) // args.calibration)
    return evaluate, calibrate[::step][: args.calibration]


def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def score_timed(model_path: Path, tensors: list[np.ndarray], threads: int):
    from iqa.inference import QualityModel

    model = QualityModel(model_path, threads=threads)
    model.run(tensors[0][None])  # warm-up: first-run allocations are not the model's speed
    scores, seconds = [], []
    for tensor in tensors:
        start = time.perf_counter()
        score, _ = model.run(tensor[None])
        seconds.append(time.perf_counter() - start)
        scores.append(float(score[0]))
    return np.array(scores), float(np.median(seconds))


def main(argv: list[str] | None = None) -> int:
    from PIL import Image
    from scipy import stats

    from iqa.inference import QualityModel
    from iqa.inference.preprocess import to_model_input
    from iqa.training.quantize import quantize_onnx

    args = parse_args(argv)
    evaluate, calibrate = split_records(args)
    prep = QualityModel(args.model).preprocessing
    print(f"evaluating {len(evaluate)} images, calibrating on {len(calibrate)}", file=sys.stderr)
    tensors = [to_model_input(Image.fromarray(load_rgb(r.path)), prep) for r in evaluate]
    mos = np.array([r.mos for r in evaluate])

    with tempfile.TemporaryDirectory() as tmp:
        variants = [("fp32", args.model)] + [(p.name, p) for p in args.int8]
        if not args.int8:
            calibration = [load_rgb(r.path) for r in calibrate]
            plans = [(m, c) for m in args.methods
                     for c in (args.calibrations if m == "static" else ["none"])]
            for method, calib in plans:
                name = f"int8 {method}" + (f" {calib}" if method == "static" else "")
                start = time.perf_counter()
                path = quantize_onnx(args.model, Path(tmp) / f"{method}-{calib}.onnx",
                                     images=calibration, method=method, calibration=calib)
                print(f"{name}: quantized in {time.perf_counter() - start:.0f} s",
                      file=sys.stderr)
                variants.append((name, path))
        rows, reference = [], None
        for name, path in variants:
            scores, seconds = score_timed(path, tensors, args.threads)
            reference = scores if reference is None else reference
            delta = np.abs(scores - reference)
            rows.append((name, path.stat().st_size / 1e6,
                         stats.spearmanr(scores, mos).statistic,
                         stats.pearsonr(scores, mos).statistic,
                         stats.spearmanr(scores, reference).statistic,
                         delta.mean(), delta.max(), seconds * 1000))

    shape = "x".join(map(str, tensors[0].shape[1:]))
    print(f"{args.dataset} {args.split if any(r.split for r in evaluate) else ''} "
          f"({len(evaluate)} images, first input {shape}, {args.threads} thread(s))\n")
    print("| model | MB | SRCC | PLCC | SRCC vs fp32 | mean abs diff | max abs diff | ms/image |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, mb, srcc, plcc, agree, mean_d, max_d, ms in rows:
        print(f"| {name} | {mb:.1f} | {srcc:.4f} | {plcc:.4f} | {agree:.4f} | "
              f"{mean_d:.4f} | {max_d:.4f} | {ms:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
