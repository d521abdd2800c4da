"""How the size of the view and a serving pixel budget change ranking, on held-out folds.

    python scripts/view_scale_cv.py score runs/levels-s448/fold2/run \
        runs/levels-s448/fold4/run --root ../shared/datasets/livec \
        --out docs/model_v2/view_scale_s448.json
    python scripts/view_scale_cv.py compare docs/model_v2/view_scale_s448.json \
        docs/model_v2/view_scale_s384.json --pair "4:3 crop, budget=4:3 crop"

``score``: each run is one cross-validation fold (a run directory with ``last.pt`` and the
``split.csv`` it trained on). Its held-out photos are scored by its own network, never by
one that trained on them, in two families of views:

- **scale**: the whole photo at several shorter sides (default 320-512), to see how far the
  ranking drifts when photos are seen smaller or larger than in training;
- **aspect**: a centred crop of each photo to 4:3, 3:2 and 16:9 (the crop keeps its MOS as
  a proxy label), seen under the run's own policy and under the same policy with the pixel
  budget (default 384 x 512). LIVE Challenge's photos are square, where that budget
  changes no view at 448 px (scripts/budget_views.py); these crops are where it does.

For each view: SRCC and PLCC against MOS, and the paired difference from the reference
view (the training scale, or the crop without the budget) with a 95 % bootstrap interval
over the fold's photos; the report keeps every prediction. ``compare`` puts two recipes'
reports of the same folds side by side: the paired SRCC difference between one view of
each, photo for photo. Only the torch network is needed, not an export; decoding, resize
and normalisation are inference's own.
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
    from tqdm import tqdm

    from iqa.inference.decode import decode_image
    from iqa.training.checkpoint import load_checkpoint
    from iqa.training.export import model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(run / args.checkpoint))
    # The run's policy without any budget (a calibrated checkpoint may carry one), so that
    # "plain" and "budget" differ by the budget alone.
    plain = dataclasses.replace(model.preprocessing, pixel_budget=None)
    budgeted = dataclasses.replace(plain, pixel_budget=args.pixel_budget)
    records = held_out(run, args.root, args.dataset)
    mos = np.asarray([r.mos for r in records], dtype=np.float64)
    photos = [decode_image(record.path) for record in
              tqdm(records, desc=f"{run_label(run)}: decoding", unit="img", mininterval=2)]

    views: dict[str, dict] = {}
    preds: dict[str, np.ndarray] = {}

    def add(name, images, prep, reference=None):
        pred, sizes = predict(model, images, prep)
        preds[name] = pred
        common = max(set(sizes), key=sizes.count)
        views[name] = {"view": f"{common[0]}x{common[1]}", **rank_metrics(pred, mos),
                       "predictions": [round(float(p), 6) for p in pred]}
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
    return {"run": str(run), "fold": run_label(run), "checkpoint": args.checkpoint,
            "photos": len(records), "names": [Path(r.path).name for r in records],
            "mos": [float(m) for m in mos],
            "policy": {"shorter_side": plain.shorter_side, "pixel_budget": args.pixel_budget,
                       "checkpoint_pixel_budget": model.preprocessing.pixel_budget},
            "views": views}


def summary(folds: list[dict]) -> dict:
    """Each view's metrics and differences averaged over folds."""
    out = {}
    for name in folds[0]["views"]:
        rows = [f["views"][name] for f in folds]
        entry = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in ("srcc", "plcc")}
        for key in [k for k in rows[0] if k.startswith("vs_")]:
            entry[key] = round(float(np.mean([r[key]["delta"] for r in rows])), 4)
        out[name] = entry
    return out


def markdown(report: dict) -> str:
    folds = report["folds"]
    head = "| view | " + " | ".join(f["fold"] for f in folds)
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


def compare(new: dict, old: dict, pairs: list[tuple[str, str]], resamples: int,
            seed: int) -> dict:
    """SRCC(new network's view) - SRCC(old network's view) on each fold's same photos."""
    if [f["fold"] for f in new["folds"]] != [f["fold"] for f in old["folds"]]:
        raise ValueError("the two reports cover different folds: "
                         f"{[f['fold'] for f in new['folds']]} against "
                         f"{[f['fold'] for f in old['folds']]}")
    out = {}
    for a, b in pairs:
        rows = {}
        for fa, fb in zip(new["folds"], old["folds"], strict=True):
            if fa["names"] != fb["names"]:
                raise ValueError(f"fold {fa['fold']}: the reports scored different photos")
            missing = [v for v, f in ((a, fa), (b, fb)) if v not in f["views"]]
            if missing:
                raise ValueError(f"no view {missing[0]!r} in one of the reports")
            rows[fa["fold"]] = {
                "views": [fa["views"][a]["view"], fb["views"][b]["view"]],
                **srcc_difference(np.asarray(fa["views"][a]["predictions"]),
                                  np.asarray(fb["views"][b]["predictions"]),
                                  np.asarray(fa["mos"]), resamples, seed)}
        mean = round(float(np.mean([r["delta"] for r in rows.values()])), 4)
        out[f"{a} = {b}"] = {"folds": rows, "mean_delta": mean}
    return out


def compare_markdown(result: dict) -> str:
    folds = list(next(iter(result.values()))["folds"])
    lines = ["| new view = old view | " + " | ".join(folds) + " | mean Δ SRCC |",
             "|---|" + "---|" * (len(folds) + 1)]
    for pair, entry in result.items():
        cells = []
        for fold in folds:
            r = entry["folds"][fold]
            ci = f" [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]" if r["ci"] else ""
            cells.append(f"{r['views'][0]} vs {r['views'][1]}: {r['delta']:+.4f}{ci}")
        lines.append(f"| {pair} | " + " | ".join(cells) + f" | {entry['mean_delta']:+.4f} |")
    return "\n".join(lines)


def plot_reports(new: dict, old: dict, labels: tuple[str, str],
                 pairs: list[tuple[str, str]], out: Path) -> None:
    """Left: SRCC against the view's shorter side, one line per report (mean over its
    folds, each fold a dot). Right: the compared views of the pairs that are not whole
    photos (crops), side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    scale_ax, crop_ax = fig.subplots(1, 2)
    colours = ("tab:blue", "tab:orange")
    for report, label, colour in zip((new, old), labels, colours, strict=True):
        sides = sorted(int(v.split()[1]) for v in report["mean"] if v.startswith("shorter "))
        scale_ax.plot(sides, [report["mean"][f"shorter {s}"]["srcc"] for s in sides],
                      marker="o", color=colour, label=label)
        for fold in report["folds"]:
            scale_ax.scatter(sides, [fold["views"][f"shorter {s}"]["srcc"] for s in sides],
                             color=colour, alpha=0.35, s=12)
        scale_ax.axvline(report["folds"][0]["policy"]["shorter_side"], color=colour,
                         linestyle=":", linewidth=1)
    scale_ax.set_xlabel("shorter side of the view, px (dotted: the training view)")
    scale_ax.set_ylabel("held-out SRCC (mean of folds; dots: folds)")
    scale_ax.set_title("whole photos (square)")
    scale_ax.legend(fontsize=8)
    crops = [(a, b) for a, b in pairs if not a.startswith("shorter ")]
    x = np.arange(len(crops))
    for i, (report, label, colour) in enumerate(zip((new, old), labels, colours, strict=True)):
        heights = [report["mean"][pair[i]]["srcc"] for pair in crops]
        crop_ax.bar(x + (i - 0.5) * 0.4, heights, width=0.4, color=colour, label=label)
        for fold in report["folds"]:  # the folds' own values: the bars alone hide the spread
            crop_ax.scatter(x + (i - 0.5) * 0.4, [fold["views"][pair[i]]["srcc"] for pair in crops],
                            color="black", s=10, zorder=3)
    crop_ax.set_xticks(x, ["\n".join(p) for p in crops], fontsize=7)
    if crops:
        low = min(min(p.get_height() for p in crop_ax.patches),
                  *(o.get_offsets()[:, 1].min() for o in crop_ax.collections))
        crop_ax.set_ylim(low - 0.01, None)  # truncated: see the dots and the table's intervals
    crop_ax.set_ylabel("held-out SRCC (mean of folds)")
    crop_ax.set_title("centred crops (new view / old view); dots: folds")
    crop_ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def parse_pair(text: str) -> tuple[str, str]:
    new, sep, old = text.partition("=")
    if not sep or not new.strip() or not old.strip():
        raise argparse.ArgumentTypeError(f"expected NEW_VIEW=OLD_VIEW, got {text!r}")
    return new.strip(), old.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="score fold runs' held-out photos in each view")
    score.add_argument("runs", type=Path, nargs="+",
                       help="fold run directories (last.pt and split.csv in each)")
    score.add_argument("--root", type=Path, required=True, help="the dataset's folder")
    score.add_argument("--dataset", default="livec", help="dataset loader (default livec)")
    score.add_argument("--checkpoint", default="last.pt",
                       help="file in each run to score with (default last.pt: the CV's "
                            "last epoch, never a selected one)")
    score.add_argument("--pixel-budget", type=int, default=196608,
                       help="the serving budget in pixels (default 196608 = 384 x 512)")
    score.add_argument("--scales", type=int, nargs="*", default=[320, 384, 448, 512],
                       help="shorter sides of the whole-photo views (default 320 384 448 512)")
    score.add_argument("--aspects", nargs="*", default=list(ASPECTS), choices=list(ASPECTS),
                       help="centred crops to score with and without the budget")
    cmp = commands.add_parser("compare", help="paired SRCC differences between two reports "
                                              "of the same folds (two recipes' networks)")
    cmp.add_argument("new", type=Path, help="report of the recipe to judge (`score --out`)")
    cmp.add_argument("old", type=Path, help="report of the recipe to compare it with")
    cmp.add_argument("--labels", nargs=2, default=("new", "old"), metavar=("NEW", "OLD"),
                     help="names of the two recipes in the plot")
    cmp.add_argument("--plot", type=Path, help="also draw both reports' views to this PNG")
    cmp.add_argument("--pair", type=parse_pair, action="append", required=True,
                     metavar="NEW_VIEW=OLD_VIEW",
                     help='views to compare, e.g. "4:3 crop, budget=4:3 crop" (repeatable)')
    for sub in (score, cmp):
        sub.add_argument("--resamples", type=int, default=2000,
                         help="bootstrap resamples per difference (0: no interval)")
        sub.add_argument("--seed", type=int, default=0, help="bootstrap seed")
        sub.add_argument("--out", type=Path, help="also write the result here as JSON")
    args = parser.parse_args(argv)
    if args.command == "compare":
        for path in (args.new, args.old):
            if not path.is_file():
                cmp.error(f"no report at {path}")
        new, old = json.loads(args.new.read_text()), json.loads(args.old.read_text())
        try:
            result = compare(new, old, args.pair, args.resamples, args.seed)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        write_json(args.out, result)
        if args.plot:
            plot_reports(new, old, tuple(args.labels), args.pair, args.plot)
        print(compare_markdown(result))
        return 0
    from iqa.inference.contract import Preprocessing
    from iqa.inference.errors import IQAError

    try:
        Preprocessing(pixel_budget=args.pixel_budget)
    except ValueError as exc:
        score.error(str(exc))
    args.scales = sorted(set(args.scales))
    if any(side < 32 for side in args.scales):
        score.error("--scales must be at least 32 px")
    for run in args.runs:
        if not (run / args.checkpoint).is_file():
            score.error(f"{run} has no {args.checkpoint}")
    try:
        folds = [study_fold(run, args) for run in args.runs]
    except (OSError, ValueError, RuntimeError, IQAError) as exc:  # RuntimeError: ExportError
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = {"folds": folds, "mean": summary(folds)}
    write_json(args.out, report)
    print(markdown(report))
    return 0


def write_json(path: Path | None, data: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
