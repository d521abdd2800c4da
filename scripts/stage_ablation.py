"""Which frozen Lite0 stages rank LIVE Challenge best: ridge on pooled stages, committed folds.

    python scripts/stage_ablation.py --root ../shared/datasets/livec --shorter-side 448 \
        --out docs/model_v2/stage_ablation_s448.json

Every photo is decoded, resized and normalised by inference's own code (the shorter side
given, as v2.1's training view), passed once through the ImageNet Lite0, and the
per-channel mean and standard deviation of each block's output (0-6) and of the 1x1 head
convolution's are kept. For each subset of those stages a ridge regression is fitted on
the training folds (penalty chosen by leave-one-out on them only) and scored on the
held-out fold. The subsets are compared photo-set by photo-set with the one v2.1's heads
see (blocks 3-6 and the head convolution). A lead for fine-tuning, not a result: the
network here is frozen, and the recipe trains blocks 4-6 and the head convolution.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np

HEAD = 7  # the 1x1 head convolution, after blocks 0-6
SUBSETS = {
    "blocks 3-6 + head conv (v2.1's heads)": [3, 4, 5, 6, HEAD],
    "blocks 3-6": [3, 4, 5, 6],
    "blocks 2-6 + head conv": [2, 3, 4, 5, 6, HEAD],
    "blocks 1-6 + head conv": [1, 2, 3, 4, 5, 6, HEAD],
    "blocks 0-6 + head conv": [0, 1, 2, 3, 4, 5, 6, HEAD],
    "blocks 1-6": [1, 2, 3, 4, 5, 6],
    "blocks 0-6": [0, 1, 2, 3, 4, 5, 6],
}
REFERENCE = next(iter(SUBSETS))


def stage_features(root: Path, shorter_side: int) -> tuple[np.ndarray, np.ndarray, list[str],
                                                             list[int]]:
    """(features (N, D), MOS/100 (N,), image names, width of each stage's mean + std)."""
    import torch
    from PIL import Image
    from tqdm import tqdm

    from iqa.inference.preprocess import to_model_input
    from iqa.models.backbones import backbone_preprocessing, create_backbone

    net = create_backbone("tf_efficientnet_lite0", pretrained=True).eval()
    prep = dataclasses.replace(backbone_preprocessing(net), shorter_side=shorter_side)
    with (root / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))

    def pooled(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], dim=1)

    feats, widths = [], []
    with torch.no_grad():
        for row in tqdm(rows, desc="frozen features", unit="photo"):
            with Image.open(root / row["image"]) as image:
                x = torch.from_numpy(to_model_input(image.convert("RGB"), prep))[None]
            x = net.bn1(net.conv_stem(x))
            parts = []
            for block in net.blocks:
                x = block(x)
                parts.append(pooled(x))
            parts.append(pooled(net.bn2(net.conv_head(x))))
            widths = [p.shape[1] for p in parts]
            feats.append(torch.cat(parts, dim=1)[0].numpy())
    mos = np.array([float(r["mos"]) / 100 for r in rows])
    return np.array(feats, dtype=np.float64), mos, [Path(r["image"]).name for r in rows], widths


def fold_srcc(x: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    from scipy import stats
    from sklearn.linear_model import RidgeCV

    out = []
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        mean, std = x[train].mean(0), x[train].std(0) + 1e-4
        fit = RidgeCV(alphas=np.logspace(1, 4.5, 8)).fit((x[train] - mean) / std, y[train])
        out.append(stats.spearmanr(fit.predict((x[test] - mean) / std), y[test])[0])
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="LIVE Challenge folder")
    parser.add_argument("--folds", type=Path, default=Path("configs/splits/livec_5fold.csv"))
    parser.add_argument("--shorter-side", type=int, default=448)
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    args = parser.parse_args()
    x, y, names, widths = stage_features(args.root, args.shorter_side)
    with args.folds.open() as f:
        fold_of = {row["image"]: int(row["fold"]) for row in csv.DictReader(f)}
    folds = np.array([fold_of[n] for n in names])
    edges = np.r_[0, np.cumsum(widths)]
    per_fold = {}
    for name, stages in SUBSETS.items():
        cols = np.concatenate([np.arange(edges[s], edges[s + 1]) for s in stages])
        per_fold[name] = fold_srcc(x[:, cols], y, folds)
    results = {}
    for name, srcc in per_fold.items():
        diff = srcc - per_fold[REFERENCE]
        results[name] = {"srcc": [float(srcc.mean()), float(srcc.std(ddof=1))],
                         "per_fold": srcc.round(4).tolist(),
                         "minus_reference": [float(diff.mean()), diff.round(4).tolist()],
                         "better_on": int((diff > 0).sum())}
        print(f"{name:40s} SRCC {srcc.mean():.4f} +- {srcc.std(ddof=1):.4f}   "
              f"minus v2.1's {diff.mean():+.4f}, better on {int((diff > 0).sum())} of "
              f"{len(diff)}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"shorter_side": args.shorter_side,
                                        "reference": REFERENCE, "subsets": results},
                                       indent=1) + "\n")


if __name__ == "__main__":
    main()
