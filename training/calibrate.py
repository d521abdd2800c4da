"""``iqa calibrate``: fit the MOS -> page-scale calibration of a trained QualityNet.

A network trained on LIVE Challenge predicts on its MOS scale, which is compressed (mean
0.55, best image 0.92) and is not the reference page's scale. The calibration is a
monotone map fitted on **training data only**: the clean photos the run's synthetic
groups were drawn from (``synthetic.root``/``subsets`` of its config) and their
distorted versions at known strengths, whose targets come from the page's semantics
table (:mod:`iqa.training.levels`). An isotonic regression of target on predicted MOS,
read at a few knots (:func:`iqa.training.heads.fit_calibration`), is written into the
checkpoint; ``iqa export`` then bakes it into the graph as ``score`` and keeps the raw
prediction as ``mos``. A monotone map changes no ranking, so SRCC is the same for both.

    iqa calibrate runs/livec_levels/best.pt -o runs/livec_levels/calibrated.pt
    iqa export runs/livec_levels/calibrated.pt -o iqa-v2.onnx
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by `iqa train` (.pt)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="calibrated checkpoint to write (then `iqa export` it)")
    add_photo_arguments(parser)
    parser.add_argument("--per-distortion", type=int, default=3,
                        help="strengths drawn per photo and distortion (default 3)")
    parser.add_argument("--knots", type=int, default=10,
                        help="quantile knots of the baked-in curve (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the strengths drawn")
    parser.add_argument("--pixel-budget", type=int, metavar="PIXELS",
                        help="serve the model with views of at most this many pixels "
                        "(e.g. 196608 = 384 x 512; the contract's `pixel_budget`): the "
                        "calibration is fitted under that policy and `iqa export` writes "
                        "it into the file. Photos whose training view fits the budget "
                        "(LIVE Challenge's 500 x 500 at 448 px) are seen as in training; "
                        "wider or larger ones get fewer pixels than the shorter side alone "
                        "would give them. Default: the policy the run trained with")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_photo_arguments(parser: argparse.ArgumentParser) -> None:
    """--photos, --subsets and --data-root: which clean training photos (shared with
    `iqa penalty`)."""
    parser.add_argument("--photos", type=Path,
                        help="folder of clean training photos (default: the run's "
                        "synthetic.root); never photos kept for evaluation")
    parser.add_argument("--subsets", nargs="*",
                        help="sub-folders of --photos to use (default: the run's "
                        "synthetic.subsets)")
    parser.add_argument("--data-root", type=Path, metavar="DIR",
                        help="where the run's data lives now, if it moved: the run's data "
                        "paths (synthetic.root, data.root) are taken relative to the "
                        "data_root it trained with and placed under DIR, as `iqa train "
                        "--data-root` places a config's")


def option_problem(options: dict[str, tuple], outputs: list[tuple], checkpoint: Path
                   ) -> str | None:
    """The first of ``options`` (:func:`iqa.inference.option_ranges.out_of_range` rules)
    out of range, or the first of ``outputs`` ((path, option) pairs) that cannot be
    written, or one that would replace ``checkpoint`` or another output; None when all are
    fine. Checked before the checkpoint is loaded: these used to fail only after the fit."""
    from iqa.inference.option_ranges import out_of_range
    from iqa.inference.output_files import output_problem

    problem = out_of_range(options)
    if problem:
        return problem
    seen: dict[Path, str] = {}
    for path, option in outputs:
        if path is None:
            continue
        resolved = Path(path).resolve()
        if resolved in seen:
            return f"{option} and {seen[resolved]} are the same file: {path}"
        seen[resolved] = option
        problem = output_problem(path, option, inputs=[checkpoint])
        if problem:
            return problem
    return None


def run_data_path(checkpoint: dict, key: str, data_root: Path | None) -> Path | None:
    """The run's ``data.root`` or ``synthetic.root`` (``key``), moved under ``data_root``
    when given; None when the run's config has none."""
    config = checkpoint.get("config") or {}
    section, name = key.split(".")
    value = (config.get(section) or {}).get(name)
    if not value:
        return None
    if data_root is None:
        return Path(value)
    old = config.get("data_root")
    try:
        return data_root / Path(value).relative_to(old)
    except (TypeError, ValueError):
        raise ValueError(f"the run's {key} {value} is not under the data_root it trained "
                         f"with ({old}), so --data-root cannot move it") from None


def training_photos(checkpoint: dict, photos: Path | None, subsets,
                    data_root: Path | None = None) -> tuple[Path, list[Path]]:
    """(root, clean photos): ``photos``/``subsets``, or else the run's synthetic ones
    (moved under ``data_root`` if given). Errors name the option that chose the folder."""
    from .data import list_photos

    syn = (checkpoint.get("config") or {}).get("synthetic") or {}
    if photos is not None:
        root, chosen_by = photos, "--photos"
    else:
        root = run_data_path(checkpoint, "synthetic.root", data_root)
        if root is None:
            raise ValueError("the checkpoint's config names no synthetic.root: pass --photos")
        chosen_by = "the run's synthetic.root" + (" under --data-root" if data_root else "")
    if not root.is_dir():
        hint = "" if photos is not None else "; pass --photos, or --data-root if the data moved"
        raise ValueError(f"{chosen_by} is not a folder: {root}{hint}")
    if subsets is None:
        subsets, chosen_by = syn.get("subsets"), "the run's synthetic.subsets"
        hint = "; pass --subsets to choose others (with no name: every photo under it)"
    else:
        chosen_by, hint = "--subsets", ""
    missing = [name for name in subsets or () if not (root / name).is_dir()]
    if missing:
        raise ValueError(f"{chosen_by}: no such folder(s) under {root}: "
                         f"{', '.join(missing)}{hint}")
    return root, list_photos(root, None, 0, subsets or None)


def weights_checkpoint(checkpoint: dict, model, metadata: dict) -> dict:
    """``checkpoint`` with ``model``'s weights and kwargs and ``metadata`` added to its own.

    The weights and what describes them, not the trainer's state, so that nobody resumes
    training from a fitted file (a fit made after training would not survive an epoch).
    """
    trainer_state = ("optimizer", "scheduler", "scaler", "rng", "history")
    out = {k: v for k, v in checkpoint.items() if k not in trainer_state}
    out["model"] = model.state_dict()
    out["model_kwargs"] = dict(model.model_kwargs)
    out["metadata"] = {**(checkpoint.get("metadata") or {}), **metadata}
    return out


def calibration_samples(photos: list[Path], per_distortion: int, seed: int,
                        detail: bool = False):
    """(image, detail source or None, target, distortion name) of every clean photo and
    its level versions.

    Versions whose damage only a native-resolution detail view shows (a clean global view,
    a distorted detail view) are kept for a model with a detail view only: a single-view
    model sees their clean thumbnail, so their targets would be wrong for it.
    """
    from .multiview_data import level_samples

    for sample in level_samples(photos, seed=seed, per_distortion=per_distortion):
        if sample.detail_source is not None and not detail:
            continue
        name = sample.key.split("|")[1].split("@")[0] if "|" in sample.key else "clean"
        yield sample.image, sample.detail_source, sample.target, name


def predict_mos(model, samples, *, progress: bool = True) -> np.ndarray:
    """The model's MOS-scale score of each (HxWx3 uint8 image, detail source or None),
    through inference's own preprocessing."""
    import torch
    from PIL import Image
    from tqdm import tqdm

    from iqa.inference.preprocess import to_model_inputs

    from .levels import HIDDEN_VERSION_SCALE

    view = getattr(model, "detail_view", None)
    model.eval()
    out = []
    with torch.inference_mode():
        for image, detail_source in tqdm(samples, desc="distorting and predicting",
                                         unit="img", disable=not progress, mininterval=2):
            inputs = to_model_inputs(Image.fromarray(image), model.preprocessing, view,
                                     detail_source=detail_source,
                                     scale=None if detail_source is None else HIDDEN_VERSION_SCALE)
            tensors = [torch.from_numpy(x)[None] for x in inputs.values()]
            out.append(float(model(*tensors)[0]))
    return np.asarray(out)


def summarise(names: list[str], targets: np.ndarray, mos: np.ndarray, score: np.ndarray) -> dict:
    """Per distortion: how many versions, mean target and median calibrated score."""
    rows = {}
    for name in sorted(set(names)):
        pick = np.asarray([n == name for n in names])
        rows[name] = {"n": int(pick.sum()), "mean_target": round(float(targets[pick].mean()), 3),
                      "median_mos": round(float(np.median(mos[pick])), 3),
                      "median_score": round(float(np.median(score[pick])), 3)}
    return rows


def calibrated_model(checkpoint: dict):
    """The checkpoint's QualityNet rebuilt with a (still identity) calibration module."""
    from .export import model_from_checkpoint

    return model_from_checkpoint(checkpoint, fresh_calibration=True)


def run(args: argparse.Namespace) -> int:
    import torch

    from iqa.inference.errors import IQAError

    from .checkpoint import atomic_save, load_checkpoint
    from .export import ExportError
    from .heads import fit_calibration
    from .plots import calibration_plot

    plot = args.output.with_suffix(".png")
    problem = option_problem(
        {"--per-distortion": (args.per_distortion, 1, False),
         # Two knots are the lowest and highest prediction: fewer read the fit at one point
         # and flatten the curve (1 put clean photos at 0.157).
         "--knots": (args.knots, 2, False),
         "--seed": (args.seed, 0, False),
         "--threads": (args.threads, 1, False),
         "--pixel-budget": (args.pixel_budget, 1, False)},
        [(args.output, "-o"), (plot, "the plot (-o with .png)")], args.checkpoint)
    if problem:
        print(f"iqa calibrate: {problem}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        checkpoint = load_checkpoint(args.checkpoint)
        if (checkpoint.get("model_kwargs") or {}).get("architecture") == "multiview":
            raise ValueError("v2 multi-view models are calibrated by `iqa train` itself")
        model = calibrated_model(checkpoint)
        if args.pixel_budget is not None:
            # The serving policy is chosen here, not at export: the calibration must be
            # fitted on the views the exported file will see.
            model.preprocessing = replace(model.preprocessing, pixel_budget=args.pixel_budget)
        root, photos = training_photos(checkpoint, args.photos, args.subsets, args.data_root)
    except (KeyError, ValueError, IQAError, ExportError) as exc:
        print(f"iqa calibrate: {exc}", file=sys.stderr)
        return 2

    print(f"calibrating on {len(photos)} clean training photos under {root} and their "
          f"distorted versions ({args.per_distortion} strengths per distortion)", flush=True)
    # Streamed: a version is distorted at its photo's own resolution, scored and dropped.
    targets, names = [], []

    detail = getattr(model, "detail_view", None) is not None

    def samples():
        for image, detail_source, target, name in calibration_samples(
                photos, args.per_distortion, args.seed, detail):
            targets.append(target)
            names.append(name)
            yield image, detail_source

    mos = predict_mos(model, samples(), progress=not args.no_progress)
    targets = np.asarray(targets)
    knots = fit_calibration(mos, targets, args.knots)
    model.calibration.set_knots(*knots)
    with torch.no_grad():
        score = model.calibration(torch.from_numpy(mos.astype(np.float32))).numpy()

    from scipy.stats import spearmanr

    report = {"method": "isotonic on clean training photos and their level versions",
              "photos": len(photos), "versions": len(targets),
              "knots_x": knots[0], "knots_y": knots[1],
              "srcc_mos_vs_target": round(float(spearmanr(mos, targets)[0]), 4),
              "by_distortion": summarise(names, targets, mos, score)}
    if args.pixel_budget is not None:
        report["pixel_budget"] = args.pixel_budget
    out = weights_checkpoint(checkpoint, model, {"calibration": report})
    if args.pixel_budget is not None:
        out["preprocessing"] = json.loads(model.preprocessing.to_json())
    atomic_save(out, args.output)
    calibration_plot(plot, mos, targets, names, knots)
    clean = report["by_distortion"].get("clean", {})
    print(f"wrote {args.output} and {plot}\n"
          f"clean training photos: median score {clean.get('median_score')} "
          f"(MOS {clean.get('median_mos')}); SRCC of MOS against the level targets "
          f"{report['srcc_mos_vs_target']}\n"
          f"next: iqa export {args.output} -o model.onnx")
    return 0
