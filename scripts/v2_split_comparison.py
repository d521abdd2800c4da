"""Frozen v2 features against the shipped v1 on v1's own validation split, paired.

    python scripts/v2_split_comparison.py CACHE [CACHE ...] [--split configs/splits/livec_seed0.csv]

Each CACHE is a feature cache of the rated LIVE Challenge photos (``iqa train`` with a v2
config writes one; ``.cache/iqa-v2/livec-<backbone>-s<side>-g<grid>p<patch>``). A ridge
head (penalty by leave-one-out on the training rows) is fitted on the split's training
photos, the 697 that v1 trained on, over the stage columns of both views, and scored on
its 174 validation photos; the shipped model scores the same photos. The paired bootstrap
(2,000 resamples of the validation photos) gives a 95 % interval for the SRCC difference.

v1's figure on this split is optimistic: its best epoch was selected on these photos.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

HEAD_WIDTH = 1280  # Lite0's conv head: its mean and std close each view's columns


def main() -> None:
    from scipy import stats
    from sklearn.linear_model import RidgeCV

    from iqa.inference import QualityModel
    from iqa.training import feature_cache

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("caches", nargs="+", type=Path)
    parser.add_argument("--split", type=Path, default=Path("configs/splits/livec_seed0.csv"))
    parser.add_argument("--images", type=Path, default=Path("../shared/datasets/livec/images"))
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()

    with args.split.open() as f:
        split = {row["path"]: row["split"] for row in csv.DictReader(f)}
    predictions, truth = {}, {}
    for cache in args.caches:
        table = feature_cache.load(cache)
        names = np.array([k.split(":", 1)[1] for k in table.keys])
        view = table.features.shape[1] // 2
        keep = view - 2 * HEAD_WIDTH
        x = table.features[:, np.r_[np.arange(keep), np.arange(view, view + keep)]]
        x = x.astype(np.float64)
        train = np.array([split[n] == "train" for n in names])
        mean, std = x[train].mean(0), x[train].std(0) + 1e-4
        fit = RidgeCV(alphas=np.logspace(1, 4.5, 8)).fit((x[train] - mean) / std,
                                                        table.targets[train])
        pred = fit.predict((x[~train] - mean) / std)
        predictions[cache.name] = dict(zip(names[~train], pred, strict=True))
        truth.update(zip(names[~train], table.targets[~train], strict=True))
    val = sorted(truth)
    y = np.array([truth[n] for n in val])
    v1 = np.array([r.score for r in QualityModel().score_many([args.images / n for n in val])])
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(val), (args.resamples, len(val)))
    v1_srcc = stats.spearmanr(v1, y)[0]
    print(f"{len(val)} validation photos; shipped v1 SRCC {v1_srcc:.4f}")
    for name, pred in predictions.items():
        p = np.array([pred[n] for n in val])
        diff = [stats.spearmanr(p[i], y[i])[0] - stats.spearmanr(v1[i], y[i])[0] for i in draws]
        lo, hi = np.quantile(diff, [0.025, 0.975])
        print(f"{name}: SRCC {stats.spearmanr(p, y)[0]:.4f}, minus v1 "
              f"{stats.spearmanr(p, y)[0] - v1_srcc:+.4f} [{lo:+.4f}, {hi:+.4f}]")


if __name__ == "__main__":
    main()
