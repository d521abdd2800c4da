"""Two models on the same photos: which ranks better, beyond the photos' sampling noise?

Reads the ``predictions.csv`` that ``iqa eval`` writes for each model (the same dataset and
split), and reports SRCC and PLCC of each and a paired bootstrap interval (over the photos)
for B's SRCC minus A's. A screen inside one training run, such as a weight average against
the same run's own weights, has no run-to-run noise, so this interval is all there is.

    iqa eval --model A.onnx --dataset livec --root DIR --split-file SPLIT.csv --output-dir a
    iqa eval --model B.onnx --dataset livec --root DIR --split-file SPLIT.csv --output-dir b
    python scripts/paired_eval.py a/predictions.csv b/predictions.csv --out report.json
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from penalty_cv import metrics, write_report  # noqa: E402
from seed_ensemble_cv import bootstrap_gain  # noqa: E402


def read_predictions(path: Path) -> dict[str, tuple[float, float]]:
    """path -> (mos, prediction) of the photos `iqa eval` scored (failed ones left out)."""
    with open(path, newline="") as handle:
        return {row["path"]: (float(row["mos"]), float(row["prediction"]))
                for row in csv.DictReader(handle) if not row.get("error")}


def compare(a: dict[str, tuple[float, float]], b: dict[str, tuple[float, float]]) -> dict:
    if a.keys() != b.keys():
        raise ValueError(f"the two files score different photos ({len(a.keys() ^ b.keys())} "
                         "in one only): evaluate both on the same dataset and split")
    if len(a) < 3:
        raise ValueError(f"{len(a)} photos: too few to compare rankings")
    paths = sorted(a)
    mos = np.asarray([a[p][0] for p in paths])
    pred_a = np.asarray([a[p][1] for p in paths])
    pred_b = np.asarray([b[p][1] for p in paths])
    gain = bootstrap_gain(pred_b, [pred_a], mos)
    return {"photos": len(paths), "a": metrics(pred_a, mos), "b": metrics(pred_b, mos),
            "srcc_b_minus_a": gain,
            "largest_score_change": float(np.max(np.abs(pred_b - pred_a)))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="predictions.csv of model A (the reference)")
    parser.add_argument("b", type=Path, help="predictions.csv of model B")
    parser.add_argument("--out", type=Path, help="write the report here (JSON)")
    args = parser.parse_args(argv)
    try:
        report = compare(read_predictions(args.a), read_predictions(args.b))
    except (OSError, KeyError, ValueError) as exc:
        print(f"paired_eval: {exc}", file=sys.stderr)
        return 2
    gain = report["srcc_b_minus_a"]
    print(f"A: SRCC {report['a']['srcc']:.4f}, PLCC {report['a']['plcc']:.4f}; B: SRCC "
          f"{report['b']['srcc']:.4f}, PLCC {report['b']['plcc']:.4f}; B - A: SRCC "
          f"{report['b']['srcc'] - report['a']['srcc']:+.4f} [{gain['ci95'][0]:+.4f}, "
          f"{gain['ci95'][1]:+.4f}] ({report['photos']} photos, {gain['resamples']} resamples)")
    if args.out:
        write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
