"""What a run trains and validates on: the split records, the synthetic pool, and the
``training_data`` text that travels into the model's metadata."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from iqa.inference.contract import Preprocessing

from .config import ConfigError
from .data import SyntheticGroup, build_synthetic_pool, list_photos
from .distributed import DistInfo

DATASET_NOTES = {
    "livec": (
        "LIVE In the Wild Image Quality Challenge Database (D. Ghadiyaram and A. C. Bovik, "
        "LIVE, The University of Texas at Austin), used under the LIVE copyright notice "
        "(README-LIVE.txt of the release, which must accompany any copy)"
    ),
    "koniq10k": "KonIQ-10k (Hosu, Lin, Sziranyi and Saupe, University of Konstanz), research use",
    "spaq": "SPAQ smartphone photo quality database (Fang et al., CVPR 2020)",
    "kadid10k": "KADID-10k (Lin, Hosu and Saupe, 2019), synthetically distorted images",
    "csv": "a custom CSV of (image, MOS)",
}


@dataclass
class TrainData:
    train: list
    val: list
    pool: list[SyntheticGroup]
    photos: list[Path]
    description: str


def prepare_data(cfg: dict, run_dir: Path, info: DistInfo, resuming: bool) -> TrainData:
    """Records of the train and val splits, and the synthetic pool.

    The split is saved as ``split.csv`` in the run directory; a resumed run reads it back
    instead of recomputing it.
    """
    from iqa.training.datasets import load_dataset
    from iqa.training.datasets.splits import apply_split, random_split, save_split_csv

    data = cfg["data"]
    split = data["split"]
    train, val = [], []
    if data["dataset"]:
        if not data["root"]:
            raise ConfigError("data.dataset is set but data.root is not")
        records = load_dataset(data["dataset"], data["root"], **(data["options"] or {}))
        method = split["method"]
        split_file = run_dir / "split.csv"
        if method == "none":
            records = [dataclasses.replace(r, split=split["train"]) for r in records]
        elif method == "official":
            pass
        elif resuming and split_file.is_file():
            records = apply_split(records, split_file)
        elif method == "random":
            fraction = float(split["val_fraction"])
            ratios = {split["train"]: 1.0 - fraction, split["val"]: fraction}
            records = random_split(records, ratios, seed=int(split["seed"]))
        elif method == "csv":
            records = apply_split(records, data["split_csv"])
        train = [r for r in records if r.split == split["train"]]
        val = [r for r in records if r.split == split["val"]] if method != "none" else []
        if not train:
            raise ConfigError(f"no record of {data['dataset']} is in split '{split['train']}'")
        if info.is_main and not (resuming and split_file.is_file()):
            save_split_csv([r for r in records if r.split is not None], split_file)
        if data["max_train_images"]:
            train = train[: int(data["max_train_images"])]
        if data["max_val_images"]:
            val = val[: int(data["max_val_images"])]
    pool, photos = [], []
    syn = cfg["synthetic"]
    if syn["enabled"]:
        photos = list_photos(syn["root"], syn["max_photos"], int(syn["seed"]), syn.get("subsets"))
        pool = build_synthetic_pool(photos, syn["root"], syn)
    return TrainData(train, val, pool, photos, describe_data(cfg, train, val, photos, pool))


def describe_data(cfg: dict, train: list, val: list, photos: list, pool: list) -> str:
    """The human-readable ``training_data`` metadata string carried into the ONNX model."""
    data, syn = cfg["data"], cfg["synthetic"]
    level_weight = (cfg.get("loss") or {}).get("level_weight", 0.0)
    parts = []
    if data["dataset"]:
        name = data["dataset"]
        method = data["split"]["method"]
        how = {
            "official": "the official split",
            "random": f"a seeded random split (seed {data['split']['seed']}, "
                      f"{1 - float(data['split']['val_fraction']):.0%}/"
                      f"{float(data['split']['val_fraction']):.0%}, saved as split.csv)",
            "csv": "the split in split.csv",
            "none": "all images, no validation split",
        }[method]
        parts.append(
            f"{name}: {len(train)} train / {len(val)} val images, {how}; "
            f"{DATASET_NOTES.get(name, name)}"
        )
    if syn["enabled"]:
        parts.append(
            f"synthetic: {len(pool)} distortion groups from {len(photos)} pristine photos "
            f"({syn['groups_per_photo']} single-distortion groups at two severities and "
            f"{syn['composed_per_photo']} composed copies per photo), supervising "
            + (
                f"rankings against their originals, the factor head and absolute page-scale "
                f"levels from the severity (loss.level_weight {float(level_weight):g})"
                if level_weight
                else "only rankings against their originals and the factor head, never an "
                "absolute score"
            )
        )
    return "; ".join(parts)


def preprocessing_for(model, cfg: dict) -> Preprocessing:
    """The backbone's preprocessing with the config's overrides."""
    overrides = dict(cfg["preprocessing"] or {})
    unknown = set(overrides) - set(Preprocessing.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown preprocessing key(s): {', '.join(sorted(unknown))}")
    for key in ("mean", "std"):
        if key in overrides:
            overrides[key] = tuple(float(v) for v in overrides[key])
    prep = dataclasses.replace(model.preprocessing, **overrides)
    exposure = getattr(model, "exposure", None)
    if exposure is not None and (prep.mean, prep.std) != (model.preprocessing.mean,
                                                           model.preprocessing.std):
        # The exposure statistics undo the backbone's normalisation inside the graph.
        raise ConfigError("model.exposure_stats needs the backbone's own preprocessing "
                          "mean and std; drop preprocessing.mean/std from the config")
    return prep
