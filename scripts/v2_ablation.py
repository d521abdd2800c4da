"""Which v2 features buy accuracy: ridge on cached pooled features, k-fold CV, committed folds.

    python scripts/v2_ablation.py CACHE_DIR [CACHE_DIR ...] [--folds configs/splits/livec_5fold.csv]

Each CACHE_DIR is a feature cache of rated photos written by `iqa train` with a v2 config
(``.cache/iqa-v2/livec-<backbone>-s<side>-g<grid>p<patch>``). For every column subset (the
global view, the detail view, both; with or without the conv head's pooled features) it
fits a ridge regression on the training folds (penalty chosen by leave-one-out on those
folds only) and prints SRCC and PLCC on each held-out fold, as mean +- std over folds.
Rated photos only: this measures how well each subset ranks human MOS, nothing else.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np


def subsets(width: int, head: int) -> dict[str, np.ndarray]:
    """Column subsets of one cache row: [global view | detail view], each ending in the
    conv head's mean and std (2 * head columns)."""
    g, d = np.arange(width), np.arange(width, 2 * width)
    return {
        "global view": g,
        "detail view": d,
        "global + detail": np.r_[g, d],
        "global + detail, stages only": np.r_[g[: width - 2 * head], d[: width - 2 * head]],
        "global, conv head only (v1's features)": g[width - 2 * head :],
    }


def cross_validate(x: np.ndarray, y: np.ndarray, folds: np.ndarray) -> dict:
    from scipy import stats
    from sklearn.linear_model import RidgeCV

    srcc, plcc = [], []
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        mean, std = x[train].mean(0), x[train].std(0) + 1e-4
        fit = RidgeCV(alphas=np.logspace(1, 4.5, 8)).fit((x[train] - mean) / std, y[train])
        pred = fit.predict((x[test] - mean) / std)
        srcc.append(stats.spearmanr(pred, y[test])[0])
        plcc.append(stats.pearsonr(pred, y[test])[0])
    return {"srcc": [float(np.mean(srcc)), float(np.std(srcc, ddof=1))],
            "plcc": [float(np.mean(plcc)), float(np.std(plcc, ddof=1))]}


def main() -> None:
    from iqa.training import feature_cache

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("caches", nargs="+", type=Path)
    parser.add_argument("--folds", type=Path, default=Path("configs/splits/livec_5fold.csv"))
    parser.add_argument("--head", type=int, default=1280, help="conv head width (Lite0: 1280)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with args.folds.open() as f:
        fold_of = {row["image"]: int(row["fold"]) for row in csv.DictReader(f)}
    results = {}
    for cache in args.caches:
        table = feature_cache.load(cache)
        folds = np.array([fold_of[key.split(":", 1)[1]] for key in table.keys])
        width = table.features.shape[1] // 2
        for name, cols in subsets(width, args.head).items():
            r = cross_validate(table.features[:, cols].astype(np.float64), table.targets, folds)
            results[f"{cache.name}: {name}"] = r
            print(f"{cache.name:45s} {name:40s} SRCC {r['srcc'][0]:.4f} +- {r['srcc'][1]:.4f}"
                  f"  PLCC {r['plcc'][0]:.4f} +- {r['plcc'][1]:.4f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
