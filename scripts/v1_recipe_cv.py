"""v1's recipe (configs/livec.yaml) inside 5-fold CV on the committed folds: the comparison
model v2 needs before it can replace v1.

    python scripts/v1_recipe_cv.py splits  [--out runs/v1-cv]        # one split.csv per fold
    python scripts/v1_recipe_cv.py train   [--out runs/v1-cv] [--folds 0 1] [-- --set optim.epochs=16]
    python scripts/v1_recipe_cv.py train --config configs/livec_levels.yaml --out runs/levels-cv
    python scripts/v1_recipe_cv.py summary [--out runs/v1-cv]        # mean +- std over folds
    python scripts/v1_recipe_cv.py compare --out runs/levels-cv --baseline runs/v1-cv   # paired
    python scripts/v1_recipe_cv.py compare --out runs/levels-s448 \
        --recorded docs/model_v2/levels_s448_cv.json --baseline docs/model_v2/levels_cv.json

``splits`` writes ``<out>/fold<k>/split.csv`` (``path,split``: fold k is ``val``, the others
``train``) from configs/splits/livec_5fold.csv, the folds every v2 figure uses. ``train``
runs ``iqa train configs/livec.yaml`` (or ``--config``: any recipe of the same trainer, such
as the v2 candidate configs/livec_levels.yaml) once per fold with ``data.split.method=csv`` (hours
per fold on 2 CPU cores; minutes on a GPU); a fold whose run is complete is skipped, and a
killed one resumes. ``summary`` reads each run's ``metrics.csv`` and reports the
**last** epoch's validation SRCC/PLCC: v1's trainer keeps ``best.pt`` by validation SRCC,
and a figure chosen on the held-out fold would not be a cross-validation figure.

Runs are hours of work and ``runs/`` is not committed, so a study often spans machines: the
committed summary JSON of folds that ran elsewhere (what ``summary`` writes, as under
docs/model_v2/) stands in for them. ``--baseline`` may be such a file instead of a run
folder, and ``--recorded FILE`` adds its folds to ``--out``'s where ``--out`` has no
finished run of its own.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

FOLDS = Path("configs/splits/livec_5fold.csv")
CONFIG = "configs/livec.yaml"


def read_folds(path: Path) -> dict[str, int]:
    with path.open() as f:
        return {row["image"]: int(row["fold"]) for row in csv.DictReader(f)}


def write_splits(folds: dict[str, int], out: Path) -> list[Path]:
    paths = []
    for k in sorted(set(folds.values())):
        path = out / f"fold{k}" / "split.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "split"])
            for image, fold in sorted(folds.items()):
                writer.writerow([image, "val" if fold == k else "train"])
        paths.append(path)
    return paths


def last_validation(run: Path) -> dict | None:
    """The last ``val`` row of ``run/metrics.csv`` as floats, or None if there is none."""
    path = run / "metrics.csv"
    if not path.is_file():
        return None
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "val"]
    if not rows:
        return None
    last = rows[-1]
    return {"epoch": int(last["epoch"]), "srcc": float(last["val_srcc"]),
            "plcc": float(last["val_plcc"]), "n": int(last["val_n"])}


def read_recorded(path: Path, folds: list[int]) -> dict[int, dict]:
    """The per-fold figures of a committed summary JSON, restricted to ``folds``."""
    try:
        recorded = json.loads(path.read_text())["folds"]
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"{path}: not a CV summary written by `summary` ({error})") from None
    return {int(k): v for k, v in recorded.items() if int(k) in folds}


def summarise(out: Path, folds: list[int], recorded: Path | None = None) -> dict:
    """Last-epoch figures of the folds whose run is complete; running ones are listed apart,
    since their last validation is of an epoch part-way through the recipe. ``recorded``
    (a summary JSON) fills the folds that have no complete run under ``out``; ``out`` may
    itself be such a file."""
    if out.is_file():
        return _with_stats({"folds": read_recorded(out, folds)})
    per_fold, running = {}, []
    for k in folds:
        run = out / f"fold{k}" / "run"
        result = last_validation(run)
        if result is None:
            continue
        if (run / "summary.json").is_file():
            per_fold[k] = result
        else:
            running.append(k)
    if recorded is not None:
        from_file = {k: v for k, v in read_recorded(recorded, folds).items() if k not in per_fold}
        per_fold = dict(sorted({**per_fold, **from_file}.items()))
        running = [k for k in running if k not in from_file]
    summary: dict = {"folds": per_fold}
    if running:
        summary["running"] = running
    return _with_stats(summary)


def _with_stats(summary: dict) -> dict:
    per_fold = summary["folds"]
    if len(per_fold) >= 2:
        for metric in ("srcc", "plcc"):
            values = [r[metric] for r in per_fold.values()]
            summary[metric] = {"mean": statistics.mean(values), "std": statistics.stdev(values)}
    return summary


def compare(out: Path, baseline: Path, folds: list[int], recorded: Path | None = None) -> dict:
    """Paired last-epoch differences, ``out`` minus ``baseline``, on the folds both finished:
    per fold, mean ± std, and a 95 % t-interval over folds (optimistic: the folds' training
    sets overlap, so their differences are not independent)."""
    from scipy import stats

    ours = summarise(out, folds, recorded)["folds"]
    theirs = summarise(baseline, folds)["folds"]
    shared = sorted(set(ours) & set(theirs))
    report: dict = {"recipe": str(out), "baseline": str(baseline), "folds": shared}
    for metric in ("srcc", "plcc"):
        diffs = [ours[k][metric] - theirs[k][metric] for k in shared]
        entry: dict = {"per_fold": {k: {"recipe": ours[k][metric], "baseline": theirs[k][metric],
                                        "difference": d} for k, d in zip(shared, diffs, strict=True)}}
        if len(diffs) >= 2:
            mean, std = statistics.mean(diffs), statistics.stdev(diffs)
            half = stats.t.ppf(0.975, len(diffs) - 1) * std / len(diffs) ** 0.5
            entry.update(mean=mean, std=std, ci95=[mean - half, mean + half],
                         better_on=sum(d > 0 for d in diffs))
        report[metric] = entry
    return report


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("splits", "train", "summary", "compare"))
    parser.add_argument("--out", type=Path, default=Path("runs/v1-cv"))
    parser.add_argument("--fold-file", type=Path, default=FOLDS)
    parser.add_argument("--config", default=CONFIG, help=f"recipe to train (default: {CONFIG})")
    parser.add_argument("--folds", type=int, nargs="*", help="these folds only (default: all)")
    parser.add_argument("--baseline", type=Path,
                        help="compare: the other recipe's --out, subtracted from this one's, "
                             "or its committed summary JSON")
    parser.add_argument("--recorded", type=Path,
                        help="summary JSON of folds this recipe finished elsewhere; fills the "
                             "folds --out has no finished run for (summary, compare)")
    args = parser.parse_args(argv)
    if args.action == "compare" and args.baseline is None:
        parser.error("compare needs --baseline OTHER_OUT")

    folds = read_folds(args.fold_file)
    chosen = args.folds if args.folds else sorted(set(folds.values()))
    if args.action in ("splits", "train"):
        for path in write_splits(folds, args.out):
            print(f"wrote {path}")
    if args.action == "train":
        for k in chosen:
            run = args.out / f"fold{k}" / "run"
            if (run / "summary.json").is_file():
                print(f"fold {k}: complete, skipped ({run})")
                continue
            split = (args.out / f"fold{k}" / "split.csv").resolve()
            if (run / "last.pt").is_file():
                command = ["iqa", "train", "--resume", str(run)]
            else:
                command = ["iqa", "train", args.config, "--output", str(run),
                           "--set", "data.split.method=csv", "--set", f"data.split_csv={split}",
                           *extra]
            print("+", " ".join(command), flush=True)
            subprocess.run(command, check=True)
    if args.action == "compare":
        print(json.dumps(compare(args.out, args.baseline, chosen, args.recorded), indent=1))
    if args.action in ("train", "summary"):
        summary = summarise(args.out, chosen, args.recorded)
        print(json.dumps(summary, indent=1))
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
