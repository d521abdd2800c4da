"""Train model v2 from a YAML recipe: cache features, cross-validate, fit, calibrate, save.

    iqa train configs/livec_v2.yaml                       # CV report + final model
    iqa train configs/livec_v2.yaml --set cv.folds=0      # final model only
    iqa train configs/livec_v2.yaml --set heads.level_weight=0.5 --output runs/try

The run directory gets ``cv.json`` / ``cv.md`` (per-fold and mean +- std SRCC, PLCC for
``mos`` and ``score``), ``oof_predictions.csv``, ``calibration.png``, ``model.pt`` (for
``iqa export``) and the resolved ``config.yaml``. Stopping it loses nothing that took
long: the feature cache is written in complete chunks and resumes where it stopped.
"""

from __future__ import annotations

import copy
import csv
import json
import time
from dataclasses import asdict, fields
from functools import partial
from pathlib import Path

import numpy as np

from .feature_cache import FeatureTable
from .heads import (
    HeadRecipe,
    fit_calibration,
    group_folds,
    level_to_mos_prior,
    predict,
    prior_calibration,
    train_heads,
)
from .multiview_data import LEVEL, MOS

RECIPE_KEY = "multiview"


def is_multiview_config(raw: dict) -> bool:
    return (raw.get("model") or {}).get("architecture") == RECIPE_KEY


def peek_config(path: str | Path) -> dict:
    """The YAML at ``path`` as a dict, or {} if it is not a YAML mapping."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return raw if isinstance(raw, dict) else {}


def multiview_defaults() -> dict:
    """Every key a multiview recipe may set, at its default: a key not here is a typo."""
    heads = {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
             for f in fields(HeadRecipe)}
    return {
        "name": "v2", "data_root": None, "output_dir": "runs", "cache_dir": ".cache/iqa-v2",
        "data": {"dataset": None, "root": None, "options": {}},
        "levels": {"enabled": True, "root": "pristine", "subsets": None, "per_distortion": 3,
                   "seed": 0},
        "model": {"architecture": RECIPE_KEY, "backbone": "tf_efficientnet_lite0",
                  "pretrained": True, "stages": [1, 2, 3, 4, 5, 6], "shorter_side": None,
                  "detail_grid": 7, "detail_patch": 32},
        "heads": heads,
        "cv": {"folds": 5, "seed": 0, "fold_file": None, "final": True},
        "metadata": {},
    }


# Kinds the defaults above cannot show (training/config.py check_types).
MULTIVIEW_KINDS: dict[str, tuple[str, ...]] = {
    "data_root": ("str", "null"),
    "data.dataset": ("str", "null"),
    "data.root": ("str", "null"),
    "levels.subsets": ("list:str", "null"),
    "model.pretrained": ("bool", "str"),
    "model.stages": ("list:int",),
    "model.shorter_side": ("int", "null"),
    "heads.alphas": ("list:number",),
    "heads.feature_slice": ("list:int", "null"),
    "cv.fold_file": ("str", "null"),
}


def load_config(path: str | Path, overrides: list[str]) -> dict:
    """The recipe over :func:`multiview_defaults` (``base:`` included), then ``--set``
    overrides; unknown keys and values of the wrong kind are :class:`ConfigError`."""
    from iqa.inference.option_ranges import out_of_range

    from .config import ConfigError, apply_override, check_types, load_file

    defaults = multiview_defaults()
    config = load_file(Path(path), copy.deepcopy(defaults), defaults=defaults)
    for item in overrides:
        apply_override(config, item, defaults)
    check_types(config, defaults, MULTIVIEW_KINDS)
    if not config["data"]["dataset"] or not config["data"]["root"]:
        raise ConfigError("a multiview recipe needs data.dataset and data.root")
    if config["model"]["architecture"] != RECIPE_KEY:
        raise ConfigError(f"model.architecture must stay {RECIPE_KEY!r} in this recipe")
    problem = out_of_range({
        "cv.folds": (config["cv"]["folds"], 0, False),
        "levels.per_distortion": (config["levels"]["per_distortion"], 1, False),
        "model.detail_grid": (config["model"]["detail_grid"], 1, False),
        "model.detail_patch": (config["model"]["detail_patch"], 1, False),
        "model.shorter_side": (config["model"]["shorter_side"], 32, False),
        "heads.calibration_knots": (config["heads"]["calibration_knots"], 2, False),
    })
    if problem:
        raise ConfigError(problem)
    if config["heads"]["calibration"] not in ("isotonic", "prior"):
        raise ConfigError(f"heads.calibration must be 'isotonic' or 'prior', got "
                          f"{config['heads']['calibration']!r}")
    return config


def head_recipe(config: dict) -> HeadRecipe:
    raw = dict(config.get("heads") or {})
    if raw.get("alphas") is not None:
        raw["alphas"] = tuple(float(a) for a in raw["alphas"])
    if raw.get("feature_slice") is not None:
        raw["feature_slice"] = tuple(raw["feature_slice"])
    return HeadRecipe(**raw)


def build_model(config: dict):
    from iqa.models.multiview import create_multiview_model

    m = dict(config.get("model") or {})
    m.pop("architecture", None)
    return create_multiview_model(
        m.pop("backbone", "tf_efficientnet_lite0"), m.pop("pretrained", True),
        stages=tuple(m.pop("stages", (1, 2, 3, 4, 5, 6))), detail_grid=m.pop("detail_grid", 7),
        detail_patch=m.pop("detail_patch", 32), shorter_side=m.pop("shorter_side", None), **m)


def _data_root(config: dict, data_root: str | None) -> Path:
    import os

    return Path(data_root or os.environ.get("IQA_DATA_ROOT") or config.get("data_root") or ".")


def load_features(config: dict, model, data_root: str | None = None, *,
                  progress: bool = True) -> FeatureTable:
    """Cached features of the rated photos and of the synthetic level set."""
    from iqa.training.datasets import load_dataset

    from . import feature_cache
    from .multiview_data import level_samples, rated_samples

    root = _data_root(config, data_root)
    cache = Path(config.get("cache_dir", ".cache/iqa-v2"))
    side = model.preprocessing.shorter_side
    tag = f"{model.model_kwargs['backbone']}-s{side}-g{model.detail_view.grid}" \
          f"p{model.detail_view.patch}"
    data = config["data"]
    records = load_dataset(data["dataset"], root / data["root"], **(data.get("options") or {}))
    tables = [feature_cache.extract(lambda done: rated_samples(records, skip=done), model,
                                    cache / f"{data['dataset']}-{tag}", total=len(records),
                                    desc=data["dataset"], progress=progress)]
    synthetic = config.get("levels") or {}
    if synthetic.get("enabled", True):
        photos = _pristine_photos(root / synthetic.get("root", "pristine"),
                                  synthetic.get("subsets"))
        samples = partial(level_samples, photos, seed=int(synthetic.get("seed", 0)),
                          per_distortion=int(synthetic.get("per_distortion", 3)))
        tables.append(feature_cache.extract(lambda done: samples(skip=done), model,
                                            cache / f"levels-{tag}",
                                            desc="synthetic levels", progress=progress))
    return FeatureTable.concat(tables)


def _pristine_photos(root: Path, subsets: list[str] | None) -> list[Path]:
    from iqa.inference.decode import IMAGE_EXTENSIONS

    photos = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if subsets:
        photos = [p for p in photos if p.relative_to(root).parts[0] in set(subsets)]
    if not photos:
        raise FileNotFoundError(f"no clean photos under {root} (subsets: {subsets})")
    return photos


def fold_assignment(table: FeatureTable, config: dict, fold_file: Path | None) -> np.ndarray:
    """Fold per sample. Rated photos take their fold from ``fold_file`` (written on first
    use, committed to the repository); synthetic versions are folded by source photo."""
    cv = config.get("cv") or {}
    k, seed = int(cv.get("folds", 5)), int(cv.get("seed", 0))
    folds = group_folds(table.groups, k, seed + 1)
    rated = table.kinds == MOS
    names = np.array([key.split(":", 1)[1] for key in table.keys])
    if fold_file is not None:
        if fold_file.is_file():
            with fold_file.open() as f:
                mapping = {row["image"]: int(row["fold"]) for row in csv.DictReader(f)}
            missing = [n for n in names[rated] if n not in mapping]
            if missing:
                raise ValueError(f"{fold_file} has no fold for {len(missing)} images, e.g. "
                                 f"{missing[:3]}")
            folds[rated] = [mapping[n] for n in names[rated]]
        else:
            fold_file.parent.mkdir(parents=True, exist_ok=True)
            with fold_file.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["image", "fold"])
                for n, fold in sorted(zip(names[rated], folds[rated], strict=True)):
                    writer.writerow([n, int(fold)])
    return folds


def cross_validate(table: FeatureTable, recipe: HeadRecipe, folds: np.ndarray,
                   *, progress: bool = True) -> dict:
    """Per-fold SRCC/PLCC on held-out rated photos, and out-of-fold predictions."""
    from scipy import stats

    k = int(folds.max()) + 1
    oof_mos = np.full(len(table), np.nan, dtype=np.float32)
    per_fold = []
    for fold in range(k):
        started = time.time()
        heads, _ = train_heads(table.subset(folds != fold), recipe)
        held = folds == fold
        pred = predict(heads, table.subset(held), recipe)["mos"]
        oof_mos[held] = pred
        rated = table.kinds[held] == MOS
        y = table.targets[held][rated]
        per_fold.append({"fold": fold, "n": int(rated.sum()),
                         "srcc": float(stats.spearmanr(pred[rated], y)[0]),
                         "plcc": float(stats.pearsonr(pred[rated], y)[0]),
                         "seconds": round(time.time() - started, 1)})
        if progress:
            f = per_fold[-1]
            print(f"  fold {fold + 1}/{k}: SRCC {f['srcc']:.4f}  PLCC {f['plcc']:.4f}  "
                  f"({f['n']} images, {f['seconds']} s)", flush=True)
    return {"folds": per_fold, "oof_mos": oof_mos}


def summarise(per_fold: list[dict]) -> dict:
    out = {}
    for metric in ("srcc", "plcc"):
        values = np.array([f[metric] for f in per_fold])
        out[metric] = {"mean": float(values.mean()), "std": float(values.std(ddof=1))
                       if len(values) > 1 else 0.0}
    return out


def calibration_from_oof(table: FeatureTable, oof_mos: np.ndarray, recipe: HeadRecipe):
    """Knots fitted on out-of-fold predictions of the synthetic levels (training data), or
    the inverse level prior of the rated photos' MOS (``calibration: prior``)."""
    if recipe.calibration == "prior":
        return prior_calibration(level_to_mos_prior(table.targets[table.kinds == MOS], recipe))
    levels = (table.kinds == LEVEL) & ~np.isnan(oof_mos)
    if levels.sum() < 20:
        raise ValueError("too few synthetic level samples to fit the calibration")
    return fit_calibration(oof_mos[levels], table.targets[levels], recipe.calibration_knots)


def score_metrics(table: FeatureTable, oof_mos: np.ndarray, knots) -> dict:
    """SRCC/PLCC of ``mos`` and of calibrated ``score`` over all out-of-fold rated photos."""
    from scipy import stats

    rated = (table.kinds == MOS) & ~np.isnan(oof_mos)
    mos, y = oof_mos[rated], table.targets[rated]
    score = np.interp(mos, knots[0], knots[1])
    return {
        "mos": {"srcc": float(stats.spearmanr(mos, y)[0]), "plcc": float(stats.pearsonr(mos, y)[0])},
        "score": {"srcc": float(stats.spearmanr(score, y)[0]),
                  "plcc": float(stats.pearsonr(score, y)[0])},
        "n": int(rated.sum()),
    }


def plot_calibration(path: Path, table: FeatureTable, oof_mos: np.ndarray, knots) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = (table.kinds == LEVEL) & ~np.isnan(oof_mos)
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    ax.scatter(oof_mos[levels], table.targets[levels], s=5, alpha=0.3,
               label="synthetic versions (out-of-fold)")
    xs = np.linspace(0, 1, 200)
    ax.plot(xs, np.interp(xs, knots[0], knots[1]), color="C3", label="calibration")
    ax.set_xlabel("predicted MOS (LIVE Challenge MOS/100)")
    ax.set_ylabel("score (reference page's scale)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(config_path: str, overrides: list[str], output: str | None,
        data_root: str | None = None, threads: int | None = None, *,
        progress: bool = True) -> int:
    import torch
    import yaml

    from .config import ConfigError

    if threads:
        torch.set_num_threads(threads)
    config = load_config(config_path, overrides)
    recipe = head_recipe(config)
    out = Path(output or Path(config["output_dir"]) /
               f"{config['name']}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file, not a folder")
    if (out / "model.pt").exists() or (out / "cv.json").exists():
        raise ConfigError(f"{out} already holds a run (cv.json or model.pt); choose another "
                          "--output")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    model = build_model(config)
    table = load_features(config, model, data_root, progress=progress)
    print(f"features: {int((table.kinds == MOS).sum())} rated photos, "
          f"{int((table.kinds == LEVEL).sum())} synthetic versions, {table.features.shape[1]} "
          "columns", flush=True)
    cv_cfg = config.get("cv") or {}
    fold_file = Path(cv_cfg["fold_file"]) if cv_cfg.get("fold_file") else None
    report: dict = {"config": config_path, "recipe": asdict(recipe)}
    knots = None
    if int(cv_cfg.get("folds", 5)) > 1:
        folds = fold_assignment(table, config, fold_file)
        print(f"{int(folds.max()) + 1}-fold cross-validation", flush=True)
        cv = cross_validate(table, recipe, folds, progress=progress)
        knots = calibration_from_oof(table, cv["oof_mos"], recipe)
        report |= {"folds": cv["folds"], "summary": summarise(cv["folds"]),
                   "pooled_out_of_fold": score_metrics(table, cv["oof_mos"], knots)}
        s = report["summary"]
        print(f"CV SRCC {s['srcc']['mean']:.4f} +- {s['srcc']['std']:.4f}, "
              f"PLCC {s['plcc']['mean']:.4f} +- {s['plcc']['std']:.4f}", flush=True)
        _write_oof(out / "oof_predictions.csv", table, folds, cv["oof_mos"], knots)
        plot_calibration(out / "calibration.png", table, cv["oof_mos"], knots)
    (out / "cv.json").write_text(json.dumps(report, indent=2))
    if not cv_cfg.get("final", True):
        return 0
    print("final heads on all samples", flush=True)
    heads, prior = train_heads(table, recipe, progress=progress)
    if recipe.calibration == "prior":
        knots = prior_calibration(prior)
    if knots is not None:
        heads.calibration.set_knots(*knots)
    model.heads = heads
    metadata = dict(config.get("metadata") or {})
    if "summary" in report:
        metadata["validation_metrics"] = {
            "protocol": f"{len(report['folds'])}-fold CV over {report['pooled_out_of_fold']['n']}"
                        " rated photos; heads retrained per fold; backbone frozen",
            "cv": report["summary"], "pooled_out_of_fold": report["pooled_out_of_fold"]}
    torch.save({"model": model.state_dict(), "model_kwargs": model.model_kwargs,
                "preprocessing": json.loads(model.preprocessing.to_json()),
                "detail_view": json.loads(model.detail_view.to_json()),
                "calibration": knots, "level_prior": prior, "config": config,
                "metadata": metadata}, out / "model.pt")
    print(f"wrote {out / 'model.pt'}", flush=True)
    return 0


def _write_oof(path: Path, table: FeatureTable, folds, oof_mos, knots) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "kind", "fold", "target", "mos_pred", "score_pred"])
        for i, key in enumerate(table.keys):
            writer.writerow([key, table.kinds[i], int(folds[i]), f"{table.targets[i]:.4f}",
                             f"{oof_mos[i]:.4f}", f"{np.interp(oof_mos[i], *knots):.4f}"])
