"""How far a trained model's synthetic copies land from their level targets, per distortion.

The copies are the run's own synthetic pool (the training photos, rebuilt from the
checkpoint's config), so this measures the fit, not generalisation: a family whose copies
sit far above their targets even here is one the training could not teach, whatever the
calibration does afterwards. Targets are mapped onto the MOS scale with the run's level
prior (fitted on its training MOS), exactly as the level loss saw them.

    python scripts/level_residuals.py runs/levels-cv/fold0/run/last.pt [--every 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="best.pt or last.pt of an `iqa train` run")
    parser.add_argument("--every", type=int, default=3,
                        help="use every N-th synthetic group (default 3; 1 = all)")
    parser.add_argument("--json", type=Path, help="also write the table here")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)

    import torch
    from tqdm import tqdm

    from iqa.inference.contract import Preprocessing
    from iqa.inference.preprocess import normalise
    from iqa.training.data import build_synthetic_pool, list_photos, render
    from iqa.training.export import model_from_checkpoint
    from iqa.training.levels import level_to_mos_prior, rated_training_mos

    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    cfg = checkpoint["config"]
    if not cfg["synthetic"]["enabled"]:
        print("level_residuals: the run has no synthetic copies", file=sys.stderr)
        return 2
    model = model_from_checkpoint(checkpoint).eval()
    prep = Preprocessing.from_json(json.dumps(checkpoint["preprocessing"]))
    a, b = level_to_mos_prior(rated_training_mos(checkpoint, args.checkpoint.parent / "split.csv"))

    syn = cfg["synthetic"]
    photos = list_photos(syn["root"], syn["max_photos"], int(syn["seed"]), syn.get("subsets"))
    pool = build_synthetic_pool(photos, syn["root"], syn)[:: max(1, args.every)]
    residuals: dict[str, list[float]] = defaultdict(list)
    with torch.inference_mode():
        for group in tqdm(pool, desc="scoring copies", unit="group", mininterval=2):
            for member, target in zip(group.members[1:], (group.targets or ())[1:], strict=False):
                if target is None:
                    continue
                rgb, _ = render(member, prep)
                score, _ = model(torch.from_numpy(normalise(rgb, prep))[None])
                residuals[member.distortion].append(float(score) - (a + b * target))
    table = {name: {"n": len(v), "mean_residual": round(float(np.mean(v)), 4),
                    "mean_abs_residual": round(float(np.mean(np.abs(v))), 4)}
             for name, v in sorted(residuals.items())}
    print(f"level prior: MOS = {a:.3f} + {b:.3f} * level; residual = predicted MOS - target")
    print("| distortion | copies | mean residual | mean abs residual |\n|---|---:|---:|---:|")
    for name, row in table.items():
        print(f"| {name} | {row['n']} | {row['mean_residual']:+.3f} | {row['mean_abs_residual']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": str(args.checkpoint), "prior": [a, b],
                                         "every": args.every, "by_distortion": table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
