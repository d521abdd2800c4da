"""``iqa penalty``: give a trained single-view QualityNet a detail-view penalty.

The network's MOS comes from its downscaled global view, so damage that only shows at the
photo's own resolution (a 1.5 px blur on a 12-megapixel photo) barely moves it. Fusing a
native-resolution detail view into the MOS head fixes that but lets the rated photos'
loss train on the detail view, which cost ranking over 5 CV folds (MODEL_CARD.md).

Here the trained network stays as it is. Its backbone also runs on the detail view, and a
linear penalty on that view's pooled features, and by default the global view's too
(:class:`iqa.models.penalty.DetailPenalty`), is fitted on **training data only**: the clean synthetic photos of the run's config and
their level versions, the same ones ``iqa calibrate`` uses (including the "hidden" ones,
whose damage only the detail view shows). The penalty's target is how far each version's
predicted MOS sits above its level target on the MOS scale (the run's level prior, fitted
on its training MOS), clipped at 0. The ridge penalty is chosen by cross-validation
grouped by source photo, so no photo's siblings choose it for it.

Ungated, every variant cost LIVE Challenge ranking in the 5-fold CV, so by default the
penalty is weighed by the photo's native scale (``--gate``): photos the global view sees
at nearly their own resolution get none of it (MODEL_CARD.md, "A detail penalty fitted
after training" and "The gated penalty on fold 0").

    iqa penalty runs/levels/last.pt -o runs/levels/penalty.pt
    iqa calibrate runs/levels/penalty.pt -o runs/levels/calibrated.pt
    iqa export runs/levels/calibrated.pt -o model.onnx
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Ridge penalties tried on standardised features; the grid spans under- to over-smoothing
# for a few thousand versions of 2,688 features.
ALPHAS = (30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0)
GROUP_FOLDS = 5
# The families whose damage lives in fine detail, the detail view's job; exposure, flare,
# contrast and the night and background-blur styles are the global view's.
DETAIL_FAMILIES = frozenset({"gaussian_blur", "defocus_blur", "motion_blur", "gaussian_noise",
                             "jpeg"})
# Which versions teach the penalty (scripts/penalty_cv.py compares them):
#   all    - every version, its target the gap above its level;
#   detail - every version, but only detail families keep their gap: the others teach the
#            penalty to stay at 0 where the global view is the one to judge;
#   hidden - the clean photos and the versions only the detail view shows.
FIT_SETS = ("all", "detail", "hidden")
# The default gate on the photo's native scale s (width over the global view's width):
# none of the penalty up to 1.5 (LIVE Challenge's 500 px photos are 1.3, where the 384 px
# global view already sees nearly every pixel, and where every ungated variant cost
# ranking in the CV), all of it from 3 (photos of 1,152 px on the shorter side and up).
DEFAULT_GATE = (1.5, 3.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .calibrate import add_photo_arguments

    parser.add_argument("checkpoint", type=Path,
                        help="single-view checkpoint written by `iqa train` (.pt)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="checkpoint to write, with the detail view and its penalty "
                        "(then `iqa calibrate` and `iqa export` it)")
    parser.add_argument("--grid", type=int, default=7,
                        help="the detail view's mosaic is GRID x GRID patches (default 7)")
    parser.add_argument("--patch", type=int, default=32,
                        help="native-resolution patch side in px (default 32)")
    parser.add_argument("--placement", choices=("grid", "textured"), default="grid",
                        help="where each patch sits in its grid cell: its centre (grid, "
                        "the default) or the most textured of --candidates x --candidates "
                        "positions (textured), so that smooth sky or walls in a large photo "
                        "do not fill the mosaic with patches that show no detail")
    parser.add_argument("--candidates", type=int, default=3,
                        help="positions per axis and cell that --placement textured chooses "
                        "from (default 3)")
    add_photo_arguments(parser)
    parser.add_argument("--split-file", type=Path,
                        help="the run's split.csv (default: the one beside the checkpoint), "
                        "whose training rows give the level prior; validation photos never do")
    parser.add_argument("--reads", choices=("both", "detail"), default="both",
                        help="what the penalty reads: both views' pooled features (default: "
                        "it can learn what the mosaic shows beyond the global view) or the "
                        "mosaic's only")
    parser.add_argument("--gate", type=float, nargs=2, default=list(DEFAULT_GATE),
                        metavar=("LOW", "HIGH"),
                        help="weigh the penalty by the photo's native scale (its width over "
                        "its global view's): 0 up to LOW, 1 from HIGH (default "
                        f"{DEFAULT_GATE[0]:g} {DEFAULT_GATE[1]:g}); the model then takes a "
                        "third input, detail_scale")
    parser.add_argument("--no-gate", action="store_true",
                        help="apply the penalty to every photo, whatever its size")
    parser.add_argument("--per-distortion", type=int, default=3,
                        help="strengths drawn per photo and distortion (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the strengths drawn")
    parser.add_argument("--fit-on", choices=FIT_SETS, default="detail",
                        help="which versions teach the penalty: detail (default: only blur, "
                        "noise and JPEG keep their gap, the rest teach 0), all, or hidden "
                        "(clean photos and the damage only the detail view shows)")
    parser.add_argument("--json", type=Path,
                        help="also write the fit's report (the per-distortion table, the "
                        "ridge penalty, the gate) to this JSON file")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def penalty_model(checkpoint: dict, grid: int = 7, patch: int = 32, global_view: bool = False,
                  gate: tuple[float, float] | None = None, kind: str = "grid_fragments",
                  candidates: int = 1):
    """The checkpoint's single-view QualityNet with a detail view and an unfitted (zero)
    penalty; its outputs equal the checkpoint's until :func:`fit_penalty` is applied."""
    from iqa.models import create_model

    from .export import ExportError, model_from_checkpoint

    kwargs = dict(checkpoint.get("model_kwargs") or {})
    if kwargs.get("detail_grid"):
        raise ExportError("this checkpoint already has a detail view; `iqa penalty` adds one "
                          "to a single-view model")
    if kwargs.get("calibrated"):
        raise ExportError("penalise before calibrating: the calibration is fitted on the "
                          "penalised MOS (`iqa penalty`, then `iqa calibrate`)")
    base = model_from_checkpoint(checkpoint)
    model = create_model(**kwargs, pretrained=False, detail_grid=grid, detail_patch=patch,
                         detail_kind=kind, detail_candidates=candidates,
                         detail_penalty=True, penalty_global=global_view, penalty_gate=gate)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(not k.startswith("penalty.") for k in missing):
        raise ExportError(f"cannot add a penalty to this model: missing {missing}, "
                          f"unexpected {unexpected}")
    model.preprocessing = base.preprocessing
    return model.eval()


def frozen_fronts(model, inputs, *, progress: bool = True, desc: str = "frozen front"):
    """Yield the frozen front's outputs for each (image, detail source or None), through
    inference's own preprocessing: (global view, detail view[, exposure statistics]), in
    forward_trainable's order. Lazy, so a single fit keeps no image; the front is frozen,
    so runs that share a backbone can share a list of these (scripts/penalty_cv.py)."""
    import torch
    from PIL import Image
    from tqdm import tqdm

    from iqa.inference.contract import DETAIL_INPUT, INPUT_NAME
    from iqa.inference.preprocess import to_model_inputs

    with torch.inference_mode():
        for image, detail_source in tqdm(inputs, desc=desc, unit="img", disable=not progress,
                                         mininterval=2):
            arrays = to_model_inputs(Image.fromarray(image) if isinstance(image, np.ndarray)
                                     else image, model.preprocessing, model.detail_view,
                                     detail_source=detail_source)
            x, detail = (torch.from_numpy(arrays[n])[None] for n in (INPUT_NAME, DETAIL_INPUT))
            parts = [model.forward_frozen(x), model.forward_frozen(detail)]
            if model.exposure is not None:
                parts.append(model.exposure.stats(x))
            yield tuple(parts)


def mos_and_views(model, fronts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the global view's MOS, the detail view's pooled features, the global view's pooled
    features), for a model whose penalty is not fitted yet (:func:`penalty_model`)."""
    import torch

    mos, detail, whole = [], [], []
    # A gated penalty needs a scale; a closed gate (0) leaves the MOS before any penalty.
    closed = torch.zeros(1) if model.penalty.gate_range is not None else None
    with torch.inference_mode():
        for parts in fronts:
            score, _ = model.forward_trainable(*parts, scale=closed)
            mos.append(float(score[0]))
            detail.append(model.detail_features(parts[1])[0].numpy())
            whole.append(model.global_features(parts[0])[0].numpy())
    return (np.asarray(mos), np.stack(detail).astype(np.float64),
            np.stack(whole).astype(np.float64))


def penalty_inputs(model, detail: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """What the model's penalty reads, in its order (QualityNet.penalty_features)."""
    return np.concatenate([detail, whole], axis=1) if model.penalty_global else detail


@dataclass
class PenaltyFit:
    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray
    bias: float
    alpha: float
    cv_mse: dict[float, float]

    def predict(self, feats: np.ndarray) -> np.ndarray:
        return np.maximum((feats - self.mean) / self.std @ self.weight + self.bias, 0.0)

    def apply(self, model) -> None:
        model.penalty.set_fit(self.mean, self.std, self.weight, self.bias)


def penalty_targets(mos: np.ndarray, levels: np.ndarray, prior: tuple[float, float]
                    ) -> np.ndarray:
    """How far each version's MOS sits above its level on the MOS scale, clipped at 0."""
    a, b = prior
    return np.maximum(mos - (a + b * levels), 0.0)


def select_versions(names: list[str], targets: np.ndarray, fit_on: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(mask of versions used, their targets) for one of :data:`FIT_SETS`."""
    family = np.asarray([n.split("|")[0] for n in names])
    hidden = np.asarray([n.endswith("|hidden") for n in names])
    if fit_on == "all":
        return np.ones(len(names), bool), targets
    if fit_on == "detail":
        return np.ones(len(names), bool), np.where(np.isin(family, list(DETAIL_FAMILIES)),
                                                   targets, 0.0)
    if fit_on == "hidden":
        return hidden | (family == "clean"), targets
    raise ValueError(f"unknown fit set {fit_on!r}; choose from {', '.join(FIT_SETS)}")


def fit_penalty(feats: np.ndarray, targets: np.ndarray, groups: np.ndarray,
                alphas=ALPHAS) -> PenaltyFit:
    """Ridge of ``targets`` on standardised ``feats``; alpha by GroupKFold over ``groups``
    (source photos), scored on the clipped prediction the model will use."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GroupKFold

    mean = feats.mean(0)
    std = np.maximum(feats.std(0), 1e-4)
    z = (feats - mean) / std
    folds = list(GroupKFold(min(GROUP_FOLDS, len(np.unique(groups)))).split(z, targets, groups))
    cv_mse = {}
    for alpha in alphas:
        errors = np.empty_like(targets)
        for train, test in folds:
            fit = Ridge(alpha=alpha).fit(z[train], targets[train])
            errors[test] = np.maximum(fit.predict(z[test]), 0.0) - targets[test]
        cv_mse[float(alpha)] = float(np.mean(errors ** 2))
    best = min(cv_mse, key=cv_mse.get)
    fit = Ridge(alpha=best).fit(z, targets)
    return PenaltyFit(mean, std, fit.coef_.astype(np.float64), float(fit.intercept_), best,
                      cv_mse)


def version_table(names: list[str], residual: np.ndarray, penalty: np.ndarray) -> dict:
    """Per distortion: versions, mean residual before the penalty, mean penalty, after."""
    rows = {}
    names_arr = np.asarray(names)
    for name in sorted(set(names)):
        pick = names_arr == name
        rows[name] = {"n": int(pick.sum()),
                      "mean_residual": round(float(residual[pick].mean()), 4),
                      "mean_penalty": round(float(penalty[pick].mean()), 4),
                      "mean_residual_after": round(float((residual - penalty)[pick].mean()), 4)}
    return rows


@dataclass
class Versions:
    """What :func:`synthetic_versions` has yielded so far, one entry per version: its
    page-scale level, its distortion (``|hidden`` when only the detail view shows it) and
    the index of its source photo."""

    levels: list[float] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)


def synthetic_versions(photos: list[Path], per_distortion: int, seed: int, record: Versions):
    """Yield (image, detail source or None) of every clean photo and level version, every
    version kept (the model has a detail view), filling ``record`` as it goes. Streamed: a
    version is distorted at its photo's own resolution, used and dropped."""
    from .calibrate import calibration_samples

    for index, path in enumerate(photos):
        for image, detail_source, target, name in calibration_samples([path], per_distortion,
                                                                      seed, detail=True):
            record.levels.append(target)
            record.names.append(name + ("|hidden" if detail_source is not None else ""))
            record.groups.append(index)
            yield image, detail_source


def training_data(checkpoint: dict, report: dict) -> str:
    """The checkpoint's training-data description, with what the penalty was fitted on."""
    from .export import training_data_text

    return (f"{training_data_text(checkpoint)}; detail penalty: fitted after training on "
            f"{report['versions_fitted']} level versions of {report['photos']} synthetic "
            "photos (training data only)")


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from iqa.inference.errors import IQAError

    from .calibrate import option_problem, training_photos, weights_checkpoint
    from .checkpoint import atomic_path, atomic_save, load_checkpoint
    from .export import ExportError
    from .levels import level_to_mos_prior, rated_training_mos

    problem = option_problem(
        {"--grid": (args.grid, 1, False),
         # The contract's patch is a multiple of the backbone's stride (DetailView).
         "--patch": (args.patch, 32, False),
         "--candidates": (args.candidates, 2 if args.placement == "textured" else 1, False),
         "--per-distortion": (args.per_distortion, 1, False),
         "--seed": (args.seed, 0, False),
         "--threads": (args.threads, 1, False)},
        [(args.output, "-o"), (args.json, "--json")], args.checkpoint)
    if not problem and args.patch % 32:
        problem = f"--patch must be a multiple of 32 (the backbone's stride), got {args.patch}"
    if not problem and not args.no_gate and not 0 < args.gate[0] < args.gate[1]:
        problem = f"--gate needs 0 < LOW < HIGH, got {args.gate[0]:g} {args.gate[1]:g}"
    if problem:
        print(f"iqa penalty: {problem}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        checkpoint = load_checkpoint(args.checkpoint)
        model = penalty_model(checkpoint, args.grid, args.patch, args.reads == "both",
                              None if args.no_gate else tuple(args.gate),
                              kind=f"{args.placement}_fragments", candidates=args.candidates)
        split_file = args.split_file or args.checkpoint.parent / "split.csv"
        prior = level_to_mos_prior(rated_training_mos(checkpoint, split_file, args.data_root))
        root, photos = training_photos(checkpoint, args.photos, args.subsets, args.data_root)
    except (KeyError, ValueError, IQAError, ExportError) as exc:
        print(f"iqa penalty: {exc}", file=sys.stderr)
        return 2

    print(f"fitting the detail penalty on {len(photos)} clean training photos under {root} "
          f"and their level versions; level prior: MOS = {prior[0]:.3f} + {prior[1]:.3f} x "
          "level", flush=True)
    versions = Versions()
    fronts = frozen_fronts(model, synthetic_versions(photos, args.per_distortion, args.seed,
                                                     versions),
                           progress=not args.no_progress, desc="distorting and running the front")
    mos, detail, whole = mos_and_views(model, fronts)
    levels, names, groups = (np.asarray(versions.levels), versions.names,
                             np.asarray(versions.groups))
    feats = penalty_inputs(model, detail, whole)
    use, targets = select_versions(names, penalty_targets(mos, levels, prior), args.fit_on)
    fit = fit_penalty(feats[use], targets[use], groups[use])
    fit.apply(model)
    penalty = fit.predict(feats)
    report = {"method": "ridge on pooled view features, fitted on training photos' level "
                        "versions (iqa.training.penalty)",
              "photos": len(photos), "versions": int(len(levels)), "prior": list(prior),
              "fit_on": args.fit_on, "versions_fitted": int(use.sum()),
              "reads": "detail and global views" if args.reads == "both" else "detail view",
              "gate": None if args.no_gate else list(args.gate),
              "detail_view": json.loads(model.detail_view.to_json()),
              "alpha": fit.alpha, "group_cv_mse": fit.cv_mse,
              "by_distortion": version_table(names, mos - (prior[0] + prior[1] * levels),
                                             penalty)}
    out = weights_checkpoint(checkpoint, model, {"detail_penalty": report,
                                                 "training_data": training_data(checkpoint,
                                                                                report)})
    atomic_save(out, args.output)
    if args.json:
        with atomic_path(args.json) as part:
            part.write_text(json.dumps({"checkpoint": str(args.checkpoint), **report},
                                       indent=1))
    print(f"ridge alpha {fit.alpha:g} (grouped {GROUP_FOLDS}-fold CV over source photos)")
    print("| versions | n | MOS above target | penalty | after |\n|---|---:|---:|---:|---:|")
    for name, row in report["by_distortion"].items():
        print(f"| {name} | {row['n']} | {row['mean_residual']:+.3f} | {row['mean_penalty']:.3f} "
              f"| {row['mean_residual_after']:+.3f} |")
    print(f"wrote {args.output}\nnext: iqa calibrate {args.output} -o calibrated.pt")
    return 0
