"""`iqa eval`: score an IQA dataset with an ONNX model and report agreement with MOS.

The pieces are reusable from Python (the trainer and the model card call them on
validation sets)::

    predictions, metrics = evaluate_model(QualityModel(path), records)
    write_report(out_dir, predictions, metrics, context={...})

Only argparse is imported at module level: ``iqa eval --help`` works on the base
install, and numpy/scipy/matplotlib load inside the functions that need them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

DATASET_NAMES = ("koniq10k", "livec", "spaq", "kadid10k", "csv")
SPLIT_CHOICES = ("auto", "train", "val", "test", "all")
# The model outputs `iqa eval` can compare with the MOS (QualityResult attributes).
OUTPUTS = ("score", "mos")
REPORT_FILES = {
    "predictions": "predictions.csv",
    "metrics": "metrics.json",
    "table": "metrics.md",
    "scatter": "scatter.png",
}


@dataclass(frozen=True)
class Prediction:
    """One image's MOS and model score, or the error that prevented scoring it."""

    path: str
    mos: float  # normalised to [0, 1], the scale the model predicts on
    mos_raw: float
    prediction: float | None
    error: str | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None, metavar="MODEL.onnx",
        help="ONNX model to evaluate (default: the model shipped with iqa)",
    )
    parser.add_argument(
        "--dataset", required=True, metavar="NAME",
        help=f"dataset layout: {', '.join(DATASET_NAMES)}",
    )
    parser.add_argument(
        "--root", required=True, metavar="DIR",
        help="dataset folder as released (for csv: the folder image paths are relative to)",
    )
    parser.add_argument(
        "--dataset-option", action="append", default=[], metavar="KEY=VALUE",
        help="extra loader option, repeatable, e.g. resolution=512x384 (koniq10k) or "
        "images=TestImage_512 (spaq); true/false become booleans",
    )
    parser.add_argument(
        "--split", default="auto", choices=SPLIT_CHOICES,
        help="records to evaluate: 'auto' (default) is the official test split when the "
        "dataset has one and every record otherwise, or with --split-file its test rows, "
        "else its val rows; 'all' ignores splits",
    )
    parser.add_argument(
        "--split-file", default=None, metavar="SPLIT.csv",
        help="apply a saved split (from iqa.training.datasets.splits.save_split_csv, e.g. "
        "the one a training run wrote) before choosing --split",
    )
    parser.add_argument(
        "--output-dir", default=None, metavar="DIR",
        help="where to write the report (default: runs/eval/MODEL-DATASET-SPLIT)",
    )
    parser.add_argument("--batch-size", type=int, default=16, metavar="N",
                        help="images per ONNX Runtime call (default 16)")
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="threads decoding images ahead of the model; 0 decodes in the "
                        "main thread (default 2)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="ONNX Runtime intra-op threads (default: onnxruntime's choice)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="evaluate only the first N records (a quick check)")
    parser.add_argument(
        "--output", default="score", choices=OUTPUTS,
        help="which prediction to compare with the MOS: 'score' (default), the calibrated "
        "page-scale score everyone gets, or 'mos', the raw MOS-scale prediction of v2 models "
        "(what research papers and MODEL_CARD.md report; rank metrics are the same)",
    )
    parser.add_argument("--logistic", default="4pl", choices=("4pl", "5pl"),
                        help="logistic mapping for the fitted PLCC/RMSE (default 4pl)")
    parser.add_argument("--n-boot", type=int, default=1000, metavar="N",
                        help="bootstrap resamples for the 95%% CIs; 0 skips them (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")

    group = parser.add_argument_group("generic CSV datasets (--dataset csv)")
    group.add_argument("--csv-file", default=None, metavar="LABELS.csv",
                       help="label file (default: labels.csv in --root)")
    group.add_argument("--csv-path-col", default=None, metavar="COLUMN",
                       help="column with image paths, relative to --root (default: image)")
    group.add_argument("--csv-mos-col", default=None, metavar="COLUMN",
                       help="column with MOS values (default: mos)")
    group.add_argument("--csv-range", nargs=2, type=float, default=None,
                       metavar=("LOW", "HIGH"), help="the MOS scale, e.g. 1 5 (required)")
    group.add_argument("--csv-split-col", default=None, metavar="COLUMN",
                       help="column with train/val/test, so --split can pick one")
    group.add_argument("--csv-lower-better", action="store_true",
                       help="lower MOS means better quality (e.g. DMOS)")


# --- scoring ---------------------------------------------------------------------------

def _describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def score_records(
    model,
    records: Sequence,
    *,
    batch_size: int = 16,
    workers: int = 2,
    progress: bool = True,
    output: str = "score",
) -> list[Prediction]:
    """Score every record with a QualityModel; failures become error rows, not exceptions.

    ``output`` is ``"score"`` or ``"mos"``, the raw prediction of a model that has one."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    if output == "mos" and not model.has_mos:
        raise ValueError(f"{model.path.name} has no 'mos' output (only model v2 and later "
                         "do); evaluate its 'score'")
    from tqdm import tqdm

    from iqa.inference import QualityResult

    predictions: list[Prediction | None] = [None] * len(records)
    failed = 0
    with tqdm(total=len(records), desc="scoring", unit="img", file=sys.stderr,
              disable=not progress, dynamic_ncols=True) as bar:
        results = model.iter_scores(
            [record.path for record in records], batch_size=batch_size, workers=workers
        )
        for index, result in results:
            record = records[index]
            if isinstance(result, QualityResult):
                score, error = float(getattr(result, output)), None
            else:
                score, error = None, _describe_error(result)
                failed += 1
                bar.set_postfix(failed=failed)
            predictions[index] = Prediction(
                str(record.path), float(record.mos), float(record.mos_raw), score, error
            )
            bar.update()
    return predictions  # type: ignore[return-value]


def scored_pairs(predictions: Sequence[Prediction]):
    """(predictions, MOS) arrays of the images that were scored."""
    import numpy as np

    ok = [p for p in predictions if p.error is None]
    return (
        np.array([p.prediction for p in ok], dtype=float),
        np.array([p.mos for p in ok], dtype=float),
    )


def evaluate_model(
    model,
    records: Sequence,
    *,
    batch_size: int = 16,
    workers: int = 2,
    progress: bool = True,
    logistic: str = "4pl",
    n_boot: int = 1000,
    seed: int = 0,
    output: str = "score",
) -> tuple[list[Prediction], dict]:
    """Score ``records`` and compute every metric over the images that scored.

    Raises ValueError (from the metrics) when fewer than 3 images scored or the scores
    are all equal; call :func:`score_records` and :func:`metrics_for` separately to keep
    the predictions in that case.
    """
    predictions = score_records(
        model, records, batch_size=batch_size, workers=workers, progress=progress, output=output
    )
    return predictions, metrics_for(predictions, logistic=logistic, n_boot=n_boot, seed=seed)


def metrics_for(predictions: Sequence[Prediction], **options) -> dict:
    """:func:`~iqa.training.metrics.evaluate_predictions` over the scored predictions,
    plus how many images were evaluated and how many failed."""
    from .metrics import evaluate_predictions

    pred, mos = scored_pairs(predictions)
    failed = sum(p.error is not None for p in predictions)
    if pred.size < 3:
        raise ValueError(
            f"only {pred.size} of {len(predictions)} images could be scored "
            f"({failed} failed); metrics need at least 3"
        )
    metrics = evaluate_predictions(pred, mos, **options)
    metrics["n_images"] = len(predictions)
    metrics["n_failed"] = failed
    return metrics


# --- report ----------------------------------------------------------------------------

def write_predictions_csv(path: Path, predictions: Sequence[Prediction]) -> None:
    from iqa.inference.csv_safe import spreadsheet_safe

    fields = [f.name for f in Prediction.__dataclass_fields__.values()]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for prediction in predictions:
            row = asdict(prediction)
            # 10 significant digits: exact for released MOS, without float noise (0.3256110000001).
            row["mos"], row["mos_raw"] = f"{row['mos']:.10g}", f"{row['mos_raw']:.10g}"
            row["prediction"] = "" if row["prediction"] is None else f"{row['prediction']:.6f}"
            # Path and error are the dataset's text; the number cells must stay numbers.
            row["path"] = spreadsheet_safe(str(row["path"]))
            row["error"] = spreadsheet_safe(row["error"] or "")
            writer.writerow(row)


def write_report(
    out_dir: str | os.PathLike,
    predictions: Sequence[Prediction],
    metrics: dict | None,
    *,
    context: dict | None = None,
    title: str | None = None,
) -> dict[str, Path]:
    """Write predictions.csv and, when ``metrics`` is given, metrics.json, metrics.md
    and scatter.png into ``out_dir``. Returns {kind: path} of the files written.

    ``context`` (model info, dataset, split, ...) is stored next to the metrics in
    metrics.json so the file says what was evaluated on what.
    """
    from .metrics import metrics_to_markdown
    from .plots import scatter_plot

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / name for kind, name in REPORT_FILES.items()}
    write_predictions_csv(paths["predictions"], predictions)
    if metrics is None:
        return {"predictions": paths["predictions"]}
    document = {**(context or {}), "metrics": metrics}
    paths["metrics"].write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    paths["table"].write_text(metrics_to_markdown(metrics, title=title), encoding="utf-8")
    pred, mos = scored_pairs(predictions)
    scatter_plot(pred, mos, metrics, paths["scatter"], title=title)
    return paths


def prepare_report_dir(out_dir: str | os.PathLike) -> None:
    """Create ``out_dir`` and remove a previous run's report files from it.

    Done before scoring, so an unwritable folder fails in a second rather than after an
    hour, and a run that ends without metrics never leaves an older run's metrics.json,
    metrics.md and scatter.png beside its own predictions.csv. Only the files this
    command writes are removed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES.values():
        (out / name).unlink(missing_ok=True)
    probe = out / ".iqa-eval-write-test"
    probe.write_bytes(b"")
    probe.unlink()


# --- command line ------------------------------------------------------------------------

def _loader_options(args: argparse.Namespace) -> dict:
    """Loader kwargs from the --csv-* flags (see iqa.training.datasets.generic_csv)."""
    flags = {
        "--csv-file": ("labels", args.csv_file),
        "--csv-path-col": ("path_column", args.csv_path_col),
        "--csv-mos-col": ("mos_column", args.csv_mos_col),
        "--csv-range": ("score_range", None if args.csv_range is None else tuple(args.csv_range)),
        "--csv-split-col": ("split_column", args.csv_split_col),
        "--csv-lower-better": ("higher_is_better", False if args.csv_lower_better else None),
    }
    given = {flag: option for flag, option in flags.items() if option[1] is not None}
    if args.dataset != "csv" and given:
        raise ValueError(f"{', '.join(given)} only apply to --dataset csv")
    if args.dataset == "csv" and "--csv-range" not in given:
        # Guessing the scale would silently mis-normalise every MOS.
        raise ValueError("--dataset csv needs --csv-range LOW HIGH (the MOS scale, e.g. 1 5)")
    options = dict(given.values())
    for item in args.dataset_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--dataset-option takes KEY=VALUE, got {item!r}")
        # load_dataset rejects unknown keys with the loader's list of options.
        options[key.strip()] = {"true": True, "false": False}.get(value.strip().lower(), value)
    return options


def select_records(records: list, split: str, split_file: str | None) -> tuple[list, str]:
    """The records to evaluate and the name of the split actually used."""
    from iqa.training.datasets import select_split

    if split_file is not None:
        from iqa.training.datasets.splits import apply_split, load_split_csv

        records = apply_split(records, load_split_csv(split_file))
        present = sorted({record.split for record in records})
        if split == "auto":
            # A trainer's split file names its held-out part val: evaluating "every record"
            # would score its training images too.
            held_out = [name for name in ("test", "val") if name in present]
            if not held_out:
                raise ValueError(f"--split-file {split_file} has no test or val rows (its "
                                 f"splits: {', '.join(present)}); choose one with --split")
            return select_split(records, held_out[0]), held_out[0]
        if split != "all" and split not in present:
            raise ValueError(f"--split {split}: {split_file} has no such rows (its splits: "
                             f"{', '.join(present)})")
    if split == "all":
        return list(records), "all"
    if split == "auto":
        if any(record.split == "test" for record in records):
            return select_split(records, "test"), "test"
        print("iqa eval: the dataset has no test split; evaluating every record "
              "(use --split-file to evaluate a held-out split)", file=sys.stderr)
        return list(records), "all"
    return select_split(records, split), split


def _fail(message: str, status: int = 1) -> int:
    print(f"iqa eval: {message}", file=sys.stderr)
    return status


def _refuse(message: str) -> int:
    """A wrong option, dataset, model or report folder: status 2, as in every iqa command,
    before any image is scored. Status 1 is left for an evaluation that failed."""
    return _fail(message, 2)


def run(args: argparse.Namespace) -> int:
    from iqa.inference import IQAError, QualityModel, __version__
    from iqa.inference.option_ranges import out_of_range
    from iqa.training.datasets import DATASETS, load_dataset

    if args.dataset not in DATASETS:
        return _refuse(f"unknown dataset {args.dataset!r}; choose one of {', '.join(DATASETS)}")
    # Checked before scoring: --n-boot and --seed used to fail only once every image was
    # scored.
    problem = out_of_range({
        "--batch-size": (args.batch_size, 1, False),
        "--workers": (args.workers, 0, False),
        "--threads": (args.threads, 1, False),
        "--limit": (args.limit, 1, False),
        "--n-boot": (args.n_boot, 0, False),
        "--seed": (args.seed, 0, False),
    })
    if problem:
        return _refuse(problem)
    try:
        records = load_dataset(args.dataset, args.root, **_loader_options(args))
        records, split = select_records(records, args.split, args.split_file)
        model = QualityModel(args.model, threads=args.threads)
    except (IQAError, ValueError) as exc:
        return _refuse(str(exc))
    if args.output == "mos" and not model.has_mos:
        return _refuse(f"{model.path.name} has no 'mos' output (only model v2 and later do); "
                       "evaluate its 'score'")
    if args.limit is not None:
        records = records[: args.limit]
    if not records:
        return _refuse("no records to evaluate")

    out_dir = Path(args.output_dir or Path("runs", "eval", f"{model.path.stem}-{args.dataset}-{split}"))
    try:
        prepare_report_dir(out_dir)
    except OSError as exc:
        return _refuse(f"cannot write the report to {out_dir}: {exc.strerror or exc}")
    output = "" if args.output == "score" else f" `{args.output}`"
    title = f"{model.path.name}{output} on {args.dataset} ({split}, {len(records)} images)"
    try:
        predictions = score_records(model, records, batch_size=args.batch_size,
                                    workers=args.workers, progress=not args.quiet,
                                    output=args.output)
    except ValueError as exc:  # an --output the checks above let through: still usage
        return _refuse(str(exc))
    failed = [p for p in predictions if p.error is not None]
    if failed:
        print(f"iqa eval: {len(failed)} of {len(predictions)} image(s) could not be scored "
              f"and are left out of the metrics (see the error column of predictions.csv); "
              f"first: {failed[0].path}: {failed[0].error}", file=sys.stderr)
    context = {
        "iqa_version": __version__,
        "model": model.info(),
        "output": args.output,
        "dataset": {
            "name": args.dataset,
            "root": str(Path(args.root).resolve()),
            "split": split,
            "split_file": args.split_file,
            "count": len(records),
            "scored": len(predictions) - len(failed),
            "failed": len(failed),
        },
    }
    try:
        metrics = metrics_for(predictions, logistic=args.logistic, n_boot=args.n_boot,
                              seed=args.seed)
    except ValueError as exc:
        write_report(out_dir, predictions, None)
        return _fail(f"{exc}; predictions written to {out_dir / REPORT_FILES['predictions']}")
    paths = write_report(out_dir, predictions, metrics, context=context, title=title)
    from .metrics import metrics_to_markdown

    print(metrics_to_markdown(metrics, title=title), end="")
    if not metrics["logistic"]["converged"]:
        print(f"iqa eval: warning: {metrics['logistic']['message']}", file=sys.stderr)
    print(f"iqa eval: wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0
