"""The detail-view penalty (``iqa penalty``) inside the committed 5-fold CV.

For each fold's trained run (``scripts/v1_recipe_cv.py train``), the penalty is fitted on
that run's training data only: the clean synthetic photos and their level versions, with
the level prior from the fold's training MOS. The fold's held-out LIVE Challenge photos
are then scored with and without it, through inference's own preprocessing, and the
paired difference is reported per fold and with a 95 % t-interval over folds.

    python scripts/penalty_cv.py --runs runs/levels-cv --out docs/model_v2/penalty_cv.json

Every fold's run shares the frozen front (ImageNet weights, checked), so the front runs
once per image for all folds; only the trained rest runs per fold. About 15 minutes for
5 folds on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

import numpy as np


def fold_runs(runs: Path, folds: list[int] | None) -> dict[int, Path]:
    found = {int(p.parent.parent.name.removeprefix("fold")): p
             for p in sorted(runs.glob("fold*/run/last.pt"))}
    if folds:
        missing = sorted(set(folds) - set(found))
        if missing:
            raise SystemExit(f"penalty_cv: no run/last.pt for folds {missing} under {runs}")
        found = {k: found[k] for k in folds}
    if not found:
        raise SystemExit(f"penalty_cv: no fold*/run/last.pt under {runs}")
    return found


def held_out(split_csv: Path) -> set[str]:
    with split_csv.open(newline="") as handle:
        return {row["path"] for row in csv.DictReader(handle) if row["split"] == "val"}


def load_weights(model, checkpoint: dict, reference_front: dict | None) -> dict:
    """The fold's trained weights into ``model`` with its penalty reset to zero; returns
    the frozen front's state, which must equal every other fold's."""
    import torch

    from iqa.training.penalty import penalty_model

    fresh = penalty_model(checkpoint, model.detail_view.grid, model.detail_view.patch)
    model.load_state_dict(fresh.state_dict())
    front = {k: v.clone() for k, v in model.frozen_modules().state_dict().items()}
    if reference_front is not None and any(not torch.equal(front[k], reference_front[k])
                                           for k in front):
        raise SystemExit("penalty_cv: the folds' frozen fronts differ; run each fold alone")
    return front


def metrics(pred: np.ndarray, mos: np.ndarray) -> dict:
    from scipy import stats

    return {"srcc": float(stats.spearmanr(pred, mos)[0]),
            "plcc": float(stats.pearsonr(pred, mos)[0])}


def paired(per_fold: dict, metric: str) -> dict:
    from scipy import stats

    diffs = [f["with_penalty"][metric] - f["without"][metric] for f in per_fold.values()]
    out = {"differences": diffs}
    if len(diffs) >= 2:
        mean, std = statistics.mean(diffs), statistics.stdev(diffs)
        half = stats.t.ppf(0.975, len(diffs) - 1) * std / len(diffs) ** 0.5
        out.update(mean=mean, std=std, ci95=[mean - half, mean + half],
                   better_on=sum(d > 0 for d in diffs))
    for arm in ("without", "with_penalty"):
        values = [f[arm][metric] for f in per_fold.values()]
        out[arm] = {"mean": statistics.mean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def summarise_variants(report: dict) -> None:
    """Add each variant's paired SRCC and PLCC over folds to ``report`` and print them."""
    for name, variant in report["variants"].items():
        for metric in ("srcc", "plcc"):
            r = variant[metric] = paired(variant["folds"], metric)
            line = (f"{name}, {metric.upper()}: {r['without']['mean']:.4f} ± "
                    f"{r['without']['std']:.4f} -> {r['with_penalty']['mean']:.4f} ± "
                    f"{r['with_penalty']['std']:.4f}")
            if "ci95" in r:
                line += (f"; paired {r['mean']:+.4f} [{r['ci95'][0]:+.4f}, "
                         f"{r['ci95'][1]:+.4f}], better on {r['better_on']} of "
                         f"{len(r['differences'])}")
            print(line)


def finish(report: dict, out: Path | None) -> int:
    """Summarise the variants, write the report if asked; the script's exit status."""
    summarise_variants(report)
    if out:
        write_report(out, report)
    return 0


def write_report(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/levels-cv"),
                        help="folder of fold<k>/run/last.pt (default runs/levels-cv)")
    parser.add_argument("--folds", type=int, nargs="*", help="these folds only (default: all)")
    parser.add_argument("--out", type=Path, help="write the report here (JSON)")
    parser.add_argument("--per-distortion", type=int, default=3,
                        help="strengths per photo and distortion (default 3, as iqa penalty)")
    parser.add_argument("--fit-on", nargs="*", default=list(("all", "detail", "hidden")),
                        help="which versions teach the penalty; each is compared "
                        "(iqa penalty --fit-on; default: all three)")
    parser.add_argument("--reads", nargs="*", default=["detail", "both"],
                        choices=("detail", "both"),
                        help="what the penalty reads: the detail view, or both views "
                        "(iqa penalty --global-view); each is compared (default: both)")
    parser.add_argument("--threads", type=int, help="torch threads")
    args = parser.parse_args(argv)

    import torch

    from iqa.inference.decode import decode_image
    from iqa.training.calibrate import training_photos
    from iqa.training.checkpoint import load_checkpoint
    from iqa.training.datasets import load_dataset
    from iqa.training.levels import level_to_mos_prior, rated_training_mos
    from iqa.training.penalty import (
        Versions,
        fit_penalty,
        frozen_fronts,
        mos_and_views,
        penalty_model,
        penalty_targets,
        select_versions,
        synthetic_versions,
        version_table,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    runs = fold_runs(args.runs, args.folds)
    first = load_checkpoint(next(iter(runs.values())))
    model = penalty_model(first)  # its own penalty unused: the variants are fitted here
    root, photos = training_photos(first, None, None)
    versions = Versions()
    # Kept: every fold's rest runs on these fronts (the images themselves are not kept).
    syn_fronts = list(frozen_fronts(model, synthetic_versions(photos, args.per_distortion, 0,
                                                              versions),
                                    desc="synthetic versions: front"))
    levels, names, groups = (np.asarray(versions.levels), versions.names,
                             np.asarray(versions.groups))
    n_photos = len(photos)
    print(f"{n_photos} clean training photos under {root}, {len(levels)} versions", flush=True)
    cfg = first["config"]
    records = load_dataset(cfg["data"]["dataset"], cfg["data"]["root"],
                           **(cfg["data"]["options"] or {}))
    rated_fronts = list(frozen_fronts(model, ((decode_image(r.path), None) for r in records),
                                      desc="rated photos: front"))
    names_rated = [r.path.name for r in records]
    mos_rated = np.asarray([r.mos for r in records])

    report: dict = {"runs": str(args.runs), "synthetic_photos": n_photos,
                    "versions": int(len(levels)), "rated_photos": len(records), "variants": {}}
    reference = None
    for k, path in runs.items():
        checkpoint = load_checkpoint(path)
        reference = load_weights(model, checkpoint, reference)
        prior = level_to_mos_prior(rated_training_mos(checkpoint, path.parent / "split.csv"))
        mos, detail, whole = mos_and_views(model, syn_fronts)
        targets = penalty_targets(mos, levels, prior)
        residual = mos - (prior[0] + prior[1] * levels)
        val = held_out(path.parent / "split.csv")
        pick = np.asarray([n in val for n in names_rated])
        mos_val, detail_val, whole_val = mos_and_views(model, [f for f, keep in zip(rated_fronts, pick, strict=True) if keep])
        without = metrics(mos_val, mos_rated[pick])
        for fit_on, reads in [(f, r) for r in args.reads for f in args.fit_on]:
            variant = f"{fit_on}/{reads}"
            feats, feats_val = ((detail, detail_val) if reads == "detail" else
                                (np.hstack([detail, whole]), np.hstack([detail_val, whole_val])))
            use, wanted = select_versions(names, targets, fit_on)
            fit = fit_penalty(feats[use], wanted[use], groups[use])
            penalty_val = fit.predict(feats_val)
            row = {"held_out": int(pick.sum()), "prior": list(prior), "alpha": fit.alpha,
                   "versions_fitted": int(use.sum()), "without": without,
                   "with_penalty": metrics(np.maximum(mos_val - penalty_val, 0.0),
                                           mos_rated[pick]),
                   "held_out_penalty": {"share_above_0.01": float(np.mean(penalty_val > 0.01)),
                                        "mean": float(penalty_val.mean()),
                                        "max": float(penalty_val.max())},
                   "training_versions": version_table(names, residual, fit.predict(feats))}
            report["variants"].setdefault(variant, {"folds": {}})["folds"][k] = row
            print(f"fold {k}, fit on/reads {variant}: alpha {fit.alpha:g}; SRCC {without['srcc']:.4f} -> "
                  f"{row['with_penalty']['srcc']:.4f}, PLCC {without['plcc']:.4f} -> "
                  f"{row['with_penalty']['plcc']:.4f}; held-out penalty mean "
                  f"{row['held_out_penalty']['mean']:.3f}, > 0.01 on "
                  f"{row['held_out_penalty']['share_above_0.01']:.0%}", flush=True)
    return finish(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
