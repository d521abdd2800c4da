"""How the size of the view and a serving pixel budget change ranking, on held-out folds.

    python scripts/view_scale_cv.py runs/levels-s448/fold2/run runs/levels-s448/fold4/run \
        --root ../shared/datasets/livec --pixel-budget 196608 \
        --out docs/model_v2/view_scale_cv.json

Each run is one cross-validation fold (a run directory with ``last.pt`` and the
``split.csv`` it trained on). Its held-out photos are scored by its own network, never by
one that trained on them, in two families of views:

- **scale**: the whole photo at several shorter sides (default 320-512), to see how far the
  ranking drifts when photos are seen smaller or larger than in training;
- **aspect**: a centred crop of each photo to 4:3, 3:2 and 16:9 (the crop keeps its MOS as
  a proxy label), seen under the run's own policy and under the same policy with the pixel
  budget. LIVE Challenge's photos are square, where a budget of 384 x 512 changes no view
  (scripts/budget_views.py); these crops are where it does.

For each view: SRCC and PLCC against MOS, and the paired difference from the reference
view (the training scale, or the crop without the budget) with a 95 % bootstrap interval
over the fold's photos. Only the torch network is needed, not an export; the pixels come
from inference's own preprocessing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ASPECTS = {"4:3": (4, 3), "3:2": (3, 2), "16:9": (16, 9)}


def centre_crop(image, aspect: tuple[int, int]):
    """The largest centred landscape crop of ``image`` with width:height = ``aspect``."""
    w, h = image.size
    aw, ah = aspect
    if w * ah >= h * aw:  # too wide already: narrow it
        cw, ch = round(h * aw / ah), h
    else:
        cw, ch = w, round(w * ah / aw)
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch))


def predict(model, images, prep) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """MOS-scale prediction of each PIL image under ``prep``, and the view sizes it used."""
    import torch

    from iqa.inference.preprocess import to_model_input

    out, sizes = [], []
    with torch.inference_mode():
        for image in images:
            x = to_model_input(image, prep)
            sizes.append((x.shape[2], x.shape[1]))
            out.append(float(model(torch.from_numpy(x)[None])[0]))
    return np.asarray(out), sizes


def rank_metrics(pred: np.ndarray, mos: np.ndarray) -> dict:
    from iqa.training.metrics import evaluate_predictions

    result = evaluate_predictions(pred, mos, n_boot=0)
    return {"srcc": round(float(result["srcc"]["value"]), 4),
            "plcc": round(float(result["plcc"]["value"]), 4)}


def srcc_difference(pred: np.ndarray, reference: np.ndarray, mos: np.ndarray,
                    resamples: int, seed: int) -> dict:
    """SRCC(pred) - SRCC(reference) on the same photos, with a paired 95 % bootstrap."""
    from scipy import stats

    def statistic(a, b, m):
        return stats.spearmanr(a, m)[0] - stats.spearmanr(b, m)[0]

    delta = float(statistic(pred, reference, mos))
    if len(mos) < 4 or resamples <= 0:
        return {"delta": round(delta, 4), "ci": None}
    boot = stats.bootstrap((pred, reference, mos), statistic, paired=True, vectorized=False,
                           n_resamples=resamples, method="percentile",
                           rng=np.random.default_rng(seed))
    low, high = boot.confidence_interval
    return {"delta": round(delta, 4), "ci": [round(float(low), 4), round(float(high), 4)]}


def held_out(run: Path, root: Path, dataset: str):
    from iqa.training.datasets import load_dataset, select_split
    from iqa.training.datasets.splits import apply_split

    split = run / "split.csv"
    if not split.is_file():
        raise FileNotFoundError(f"{run} has no split.csv: not a fold run of `iqa train`?")
    return select_split(apply_split(load_dataset(dataset, root), split), "val")


def run_label(run: Path) -> str:
    """``fold2`` for runs/levels-s448/fold2/run: the folder that names the fold."""
    return run.parent.name if run.name == "run" and run.parent.name else run.name


def study_fold(run: Path, args) -> dict:
    from PIL import Image
    from tqdm import tqdm

    from iqa.training.checkpoint import load_checkpoint
    from iqa.training.export import model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(run / args.checkpoint))
    plain = model.preprocessing
    budgeted = dataclasses.replace(plain, pixel_budget=args.pixel_budget)
    records = held_out(run, args.root, args.dataset)
    mos = np.asarray([r.mos for r in records], dtype=np.float64)
    photos = []
    for record in tqdm(records, desc=f"{run_label(run)}: decoding", unit="img", mininterval=2):
        with Image.open(record.path) as image:
            photos.append(image.convert("RGB"))

    views: dict[str, dict] = {}
    preds: dict[str, np.ndarray] = {}

    def add(name, images, prep, reference=None):
        pred, sizes = predict(model, images, prep)
        preds[name] = pred
        common = max(set(sizes), key=sizes.count)
        views[name] = {"view": f"{common[0]}x{common[1]}", **rank_metrics(pred, mos)}
        if reference is not None:
            views[name]["vs_" + reference] = srcc_difference(pred, preds[reference], mos,
                                                             args.resamples, args.seed)

    trained = f"shorter {plain.shorter_side}"
    add(trained, photos, plain)
    for side in tqdm(args.scales, desc=f"{run_label(run)}: scales", unit="view"):
        if side != plain.shorter_side:
            add(f"shorter {side}", photos, dataclasses.replace(plain, shorter_side=side), trained)
    for name in tqdm(args.aspects, desc=f"{run_label(run)}: aspects", unit="crop"):
        crops = [centre_crop(p, ASPECTS[name]) for p in photos]
        add(f"{name} crop", crops, plain)
        add(f"{name} crop, budget", crops, budgeted, f"{name} crop")
    return {"run": str(run), "checkpoint": args.checkpoint, "photos": len(records),
            "policy": {"shorter_side": plain.shorter_side, "pixel_budget": args.pixel_budget},
            "views": views}


def summary(folds: list[dict]) -> dict:
    """Each view's metrics and differences averaged over folds."""
    out = {}
    for name in folds[0]["views"]:
        rows = [f["views"][name] for f in folds]
        entry = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in ("srcc", "plcc")}
        for key in (k for k in rows[0] if k.startswith("vs_")):
            entry[key] = round(float(np.mean([r[key]["delta"] for r in rows])), 4)
        out[name] = entry
    return out


def markdown(report: dict) -> str:
    folds = report["folds"]
    head = "| view | " + " | ".join(run_label(Path(f["run"])) for f in folds)
    lines = [head + " | mean SRCC | mean Δ SRCC |",
             "|---|" + "---|" * (len(folds) + 2)]
    for name, mean in report["mean"].items():
        cells = []
        for f in folds:
            v = f["views"][name]
            cell = f"{v['view']}: {v['srcc']:.4f}"
            diff = next((v[k] for k in v if k.startswith("vs_")), None)
            if diff is not None:
                ci = diff["ci"]
                cell += f" ({diff['delta']:+.4f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}])" if ci else ")")
            cells.append(cell)
        delta = next((f"{mean[k]:+.4f}" for k in mean if k.startswith("vs_")), "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean['srcc']:.4f} | {delta} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+",
                        help="fold run directories (last.pt and split.csv in each)")
    parser.add_argument("--root", type=Path, required=True, help="the dataset's folder")
    parser.add_argument("--dataset", default="livec", help="dataset loader (default livec)")
    parser.add_argument("--checkpoint", default="last.pt",
                        help="file in each run to score with (default last.pt: the CV's "
                             "last epoch, never a selected one)")
    parser.add_argument("--pixel-budget", type=int, default=196608,
                        help="the serving budget in pixels (default 196608 = 384 x 512)")
    parser.add_argument("--scales", type=int, nargs="*", default=[320, 384, 448, 512],
                        help="shorter sides of the whole-photo views (default 320 384 448 512)")
    parser.add_argument("--aspects", nargs="*", default=list(ASPECTS), choices=list(ASPECTS),
                        help="centred crops to score with and without the budget")
    parser.add_argument("--resamples", type=int, default=2000,
                        help="bootstrap resamples per difference (0: no interval)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--out", type=Path, help="also write the report here as JSON")
    args = parser.parse_args(argv)
    from iqa.inference.contract import Preprocessing

    try:
        Preprocessing(pixel_budget=args.pixel_budget)
    except ValueError as exc:
        parser.error(str(exc))
    if any(side < 32 for side in args.scales):
        parser.error("--scales must be at least 32 px")
    for run in args.runs:
        if not (run / args.checkpoint).is_file():
            parser.error(f"{run} has no {args.checkpoint}")
    try:
        folds = [study_fold(run, args) for run in args.runs]
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = {"folds": folds, "mean": summary(folds)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
