"""Can frozen v2 features rank LIVE Challenge *and* meet the page's levels? A CV study.

    python scripts/v2_levels_study.py [--config configs/livec_v2.yaml] [--out docs/model_v2]

Model v2's open problem (MODEL_CARD.md, "Model v2 study"): putting the synthetic level
targets into the MOS head costs ranking. This script measures the alternative of two heads
on the same cached features (the config's cache; `iqa train CONFIG` writes it):

- a **MOS head**: ridge on rated photos only; its calibrated output is the *inverse of the
  linear level prior* (:func:`iqa.training.heads.level_to_mos_prior`, fitted on the
  training folds' MOS alone), so it ranks exactly as the MOS head does;
- a **level head**: ridge on the synthetic versions (page-scale targets) plus the rated
  photos, whose MOS is put on the page's scale by the same prior, at weight ``w_r``;
- **score = min(calibrated MOS, level + margin)**: a defect the level head is sure of caps
  the score; the margin says how sure it must be.

Every figure is out of fold on the committed folds (`configs/splits/livec_5fold.csv`;
synthetic versions are folded by source photo): SRCC/PLCC of each score on held-out rated
photos (mean +- std over folds), and on held-out synthetic versions the median score of
clean photos and the signed error per distortion family (score - target). Writes
``levels_tradeoff.json`` and ``levels_tradeoff.png`` (ranking against level error).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

STAGES_ONLY = True  # the ablation's best column set: pooled stages, without the conv head
HEAD_WIDTH = 1280  # Lite0's conv head; its mean and std close each view's columns
ALPHAS = tuple(np.logspace(1, 4.5, 8))
RATED_WEIGHTS = (0.0, 0.3, 1.0, 3.0)
MARGINS = (0.0, 0.05, 0.1)
CLEAN_WEIGHT = 5.0  # one clean photo per ~38 distorted versions: weight the clean ones up


def columns(width: int) -> np.ndarray:
    view = width // 2
    keep = view - 2 * HEAD_WIDTH if STAGES_ONLY else view
    return np.r_[np.arange(keep), np.arange(view, view + keep)]


def family(key: str) -> str:
    name = key.split("|")[1].split("@")[0]
    return name + (" (hidden)" if key.endswith("|hidden") else "")


def out_of_fold(x, table, folds, rated, level):
    """Calibrated MOS and level predictions for every sample, each from the heads of the
    fold that did not see it."""
    from sklearn.linear_model import RidgeCV

    from iqa.training.heads import HeadRecipe, level_to_mos_prior

    cal = np.full(len(table), np.nan)
    lvl = {w: np.full(len(table), np.nan) for w in RATED_WEIGHTS}
    clean = level & np.array(["|" not in k for k in table.keys])
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        mean, std = x[train].mean(0), x[train].std(0) + 1e-4
        z = (x - mean) / std
        a, b = level_to_mos_prior(table.targets[train & rated], HeadRecipe())
        mos = RidgeCV(alphas=ALPHAS).fit(z[train & rated], table.targets[train & rated])
        cal[test] = np.clip((mos.predict(z[test]) - a) / b, 0.0, 0.98)
        page = np.where(rated, np.clip((table.targets - a) / b, 0.0, 0.98), table.targets)
        for w in RATED_WEIGHTS:
            weight = np.where(rated, w, 1.0) * np.where(clean, CLEAN_WEIGHT, 1.0)
            use = train & (weight > 0)
            fit = RidgeCV(alphas=ALPHAS).fit(z[use], page[use], sample_weight=weight[use])
            lvl[w][test] = fit.predict(z[test])
        print(f"  fold {k + 1}: MOS ridge alpha {mos.alpha_:g}", flush=True)
    return cal, lvl, clean


def summary(score, table, folds, rated, level, clean) -> dict:
    from scipy import stats

    per_fold = [((folds == k) & rated) for k in np.unique(folds)]
    srcc = [stats.spearmanr(score[m], table.targets[m])[0] for m in per_fold]
    plcc = [stats.pearsonr(score[m], table.targets[m])[0] for m in per_fold]
    distorted = level & ~clean
    errors: dict[str, list[float]] = {}
    for i in np.flatnonzero(distorted):
        errors.setdefault(family(table.keys[i]), []).append(score[i] - table.targets[i])
    return {
        "srcc": [float(np.mean(srcc)), float(np.std(srcc, ddof=1))],
        "plcc": [float(np.mean(plcc)), float(np.std(plcc, ddof=1))],
        "clean_median": float(np.median(score[clean])),
        "clean_q10": float(np.quantile(score[clean], 0.1)),
        "level_mae": float(np.mean(np.abs(score[distorted] - table.targets[distorted]))),
        "family_error": {f: round(float(np.mean(v)), 3) for f, v in sorted(errors.items())},
    }


def plot(path: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    for name, r in results.items():
        ax.errorbar(r["srcc"][0], r["level_mae"], xerr=r["srcc"][1], fmt="o", ms=4,
                    capsize=2, label=name if len(results) < 12 else None)
        ax.annotate(name, (r["srcc"][0], r["level_mae"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel("5-fold CV SRCC on LIVE Challenge (mean ± std)")
    ax.set_ylabel("level MAE on held-out synthetic versions")
    ax.set_title("Ranking against page-scale levels (frozen Lite0, ridge heads)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    from iqa.training.multiview_data import LEVEL, MOS
    from iqa.training.train_multiview import (
        build_model,
        fold_assignment,
        load_config,
        load_features,
    )

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/livec_v2.yaml")
    parser.add_argument("--data-root", help="datasets folder (default: the config's)")
    parser.add_argument("--out", type=Path, default=Path("docs/model_v2"))
    args = parser.parse_args()

    config = load_config(args.config, [])
    table = load_features(config, build_model(config), args.data_root)
    x = table.features[:, columns(table.features.shape[1])].astype(np.float64)
    folds = fold_assignment(table, config, Path(config["cv"]["fold_file"]))
    rated, level = table.kinds == MOS, table.kinds == LEVEL
    print(f"{int(rated.sum())} rated photos, {int(level.sum())} synthetic versions, "
          f"{x.shape[1]} columns", flush=True)
    cal, lvl, clean = out_of_fold(x, table, folds, rated, level)

    results = {"calibrated MOS": summary(cal, table, folds, rated, level, clean)}
    for w, pred in lvl.items():
        results[f"level head, w_r={w:g}"] = summary(pred, table, folds, rated, level, clean)
        for margin in MARGINS:
            results[f"min(MOS, level+{margin:g}), w_r={w:g}"] = summary(
                np.minimum(cal, pred + margin), table, folds, rated, level, clean)
    for name, r in results.items():
        print(f"{name:32s} SRCC {r['srcc'][0]:.3f}±{r['srcc'][1]:.3f}  clean median "
              f"{r['clean_median']:.2f}  level MAE {r['level_mae']:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "levels_tradeoff.json").write_text(json.dumps(
        {"config": args.config, "folds": config["cv"]["fold_file"], "columns": int(x.shape[1]),
         "rated": int(rated.sum()), "synthetic": int(level.sum()), "results": results},
        indent=1))
    plot(args.out / "levels_tradeoff.png", results)
    print(f"wrote {args.out / 'levels_tradeoff.json'} and levels_tradeoff.png")


if __name__ == "__main__":
    main()
