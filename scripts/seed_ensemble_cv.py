"""Does averaging runs of the same recipe rank better than one run? A CV fold's test.

Distilling an ensemble into the shipped model (issue 12) only pays if the ensemble itself
ranks better than its members. This scores one CV fold's held-out LIVE Challenge photos
with each run trained on that fold's training photos (the same recipe, other seeds:
``scripts/v1_recipe_cv.py train ... -- --set seed=N``) and with the mean of their MOS, and
reports SRCC and PLCC for each, with a paired bootstrap interval (over held-out photos) for
the ensemble's gain over its mean member.

    python scripts/seed_ensemble_cv.py runs/levels-cv/fold0/run/last.pt \
        runs/levels-seed1/fold0/run/last.pt --out docs/model_v2/seed_ensemble_fold0.json

Every run must share the held-out photos (the same split.csv) and the frozen front.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exposure_penalty_cv import fronts, rest  # noqa: E402
from penalty_cv import held_out, metrics, write_report  # noqa: E402

BOOTSTRAP = 2000


def bootstrap_gain(ensemble: np.ndarray, members: list[np.ndarray], mos: np.ndarray,
                   seed: int = 0) -> dict:
    """SRCC of the ensemble minus the mean SRCC of its members, resampling photos."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(BOOTSTRAP):
        pick = rng.integers(0, len(mos), len(mos))
        single = np.mean([stats.spearmanr(m[pick], mos[pick])[0] for m in members])
        gains.append(stats.spearmanr(ensemble[pick], mos[pick])[0] - single)
    # A resample that repeats too few photos has no rank correlation: left out.
    gains = np.asarray(gains)[np.isfinite(gains)]
    if not len(gains):
        return {"mean": float("nan"), "ci95": [float("nan")] * 2, "resamples": 0}
    low, high = np.percentile(gains, [2.5, 97.5])
    return {"mean": float(np.mean(gains)), "ci95": [float(low), float(high)],
            "resamples": int(len(gains))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="last.pt of each run (2 or more)")
    parser.add_argument("--out", type=Path, help="write the report here (JSON)")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give at least two runs")

    import torch

    from iqa.inference.decode import decode_image
    from iqa.training.checkpoint import load_checkpoint
    from iqa.training.datasets import load_dataset
    from iqa.training.export import model_from_checkpoint

    checkpoints = [load_checkpoint(p) for p in args.runs]
    splits = [held_out(p.parent / "split.csv") for p in args.runs]
    if any(s != splits[0] for s in splits):
        raise SystemExit("seed_ensemble_cv: the runs hold out different photos")
    model = model_from_checkpoint(checkpoints[0]).eval()
    cfg = checkpoints[0]["config"]
    records = [r for r in load_dataset(cfg["data"]["dataset"], cfg["data"]["root"],
                                       **(cfg["data"]["options"] or {}))
               if r.path.name in splits[0]]
    mos = np.asarray([r.mos for r in records])
    # The front is frozen and shared: run it once, then each run's trained rest.
    held = fronts(model, (decode_image(r.path) for r in records), "held-out photos: front")
    reference = {k: v.clone() for k, v in model.frozen_modules().state_dict().items()}
    members = []
    for path, checkpoint in zip(args.runs, checkpoints, strict=True):
        model.load_state_dict(model_from_checkpoint(checkpoint).state_dict())
        front = model.frozen_modules().state_dict()
        if any(not torch.equal(front[k], reference[k]) for k in front):
            raise SystemExit(f"seed_ensemble_cv: {path} has another frozen front")
        members.append(rest(model, held)[0])
    ensemble = np.mean(members, axis=0)
    report = {"held_out": len(records),
              "runs": {str(p): metrics(m, mos) for p, m in zip(args.runs, members, strict=True)},
              "ensemble": metrics(ensemble, mos),
              "ensemble_srcc_gain_over_mean_member": bootstrap_gain(ensemble, members, mos)}
    for name, row in report["runs"].items():
        print(f"{name}: SRCC {row['srcc']:.4f}, PLCC {row['plcc']:.4f}")
    gain = report["ensemble_srcc_gain_over_mean_member"]
    print(f"mean of {len(members)}: SRCC {report['ensemble']['srcc']:.4f}, PLCC "
          f"{report['ensemble']['plcc']:.4f}; gain over the mean member {gain['mean']:+.4f} "
          f"[{gain['ci95'][0]:+.4f}, {gain['ci95'][1]:+.4f}] ({len(records)} photos)")
    if args.out:
        write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
