"""Training configuration: YAML recipes merged over defaults, CLI overrides, path resolution.

Every hyperparameter lives in the config; the code reads it from here and nowhere else.
Unknown keys are errors, so a typo in a recipe or a ``--set`` fails loudly instead of
silently training with a default.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

from iqa.inference.errors import IQAError

DATA_ROOT_ENV = "IQA_DATA_ROOT"
_EXPONENT_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")

# Keys whose value is a filesystem path to data: relative ones are resolved against the data
# root, which is --data-root, else $IQA_DATA_ROOT, else the config's ``data_root``, else the
# current directory (a relative data root is itself taken from the current directory).
DATA_PATH_KEYS = ("data.root", "data.split_csv", "synthetic.root")
# Paths that belong to this machine rather than to the data: resolved against the current
# directory only.
LOCAL_PATH_KEYS = ("output_dir", "cache_dir")

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "data_root": None,
    "output_dir": "runs",
    # Frozen-feature cache: compute the frozen stem+blocks once, train the rest from disk.
    "cache_features": True,
    "cache_dir": ".cache/iqa-features",
    "checkpoint_every_steps": 200,
    "data": {
        # A name from iqa.training.datasets.DATASETS, or null for synthetic-only training.
        "dataset": None,
        "root": None,
        "options": {},  # extra keyword arguments of the dataset loader
        "split": {
            # official: the release's own split (record.split); random: seeded split of
            # all records (by record.group when the dataset has groups); csv: read
            # data.split_csv; none: train on everything, no validation.
            "method": "random",
            "val_fraction": 0.2,
            "seed": 0,
            "train": "train",  # official split names
            "val": "val",
        },
        "split_csv": None,
        # Limits for smoke runs: keep only the first N records of each split (after the
        # split, so the split itself does not change).
        "max_train_images": None,
        "max_val_images": None,
    },
    "synthetic": {
        "enabled": True,
        "root": None,  # folder of pristine photos, walked recursively
        "subsets": None,  # only these sub-folders of root (e.g. licence-compatible sets)
        "max_photos": None,
        "groups_per_photo": 2,  # (original, weak, strong) groups of one distortion each
        "composed_per_photo": 1,  # (original, compose()d) pairs
        "distortions": None,  # restrict to these DISTORTIONS names; null = all
        "severity_weak": [0.15, 0.45],
        "severity_gap": [0.2, 0.5],  # s_strong = s_weak + gap, capped at 1
        "compose_max_ops": 3,
        "flip": False,  # also cache mirrored synthetic images
        "groups_per_epoch": 256,
        "seed": 1234,  # seeds the fixed variant pool (independent of the training seed)
    },
    "model": {
        "backbone": "tf_efficientnet_lite0",
        "pretrained": True,
        "head_hidden": 256,
        "dropout": 0.1,
        "freeze_blocks": 4,
        # Blocks whose mean/std the heads also see (multi-level pooling); [] = v1's single
        # global average of the last stage. The lowest allowed is freeze_blocks - 1.
        "pool_stages": [],
        # Whether the heads also see the 1x1 head convolution's global average beside the
        # pooled stages (False needs pool_stages; the head convolution is then never run).
        "pool_head": True,
        # A detail view: a detail_grid x detail_grid mosaic of native detail_patch-px
        # patches beside the global view (null = the global view only, as v1). Its
        # distortions are applied at the photo's own resolution.
        "detail_grid": None,
        "detail_patch": 32,
        # The heads also see a luminance histogram, clipping and colour of the input
        # (iqa.models.exposure): CNN features alone hardly see exposure.
        "exposure_stats": False,
    },
    # Overrides of the model's Preprocessing (iqa.inference.contract); the mean/std come
    # from the backbone unless set here.
    "preprocessing": {},
    "augment": {
        "crop": 320,  # square training crop in pixels at model resolution (null = whole)
        "flip": True,  # horizontal flips of authentic images
    },
    "loss": {
        "mos": "smooth_l1",  # l1 | smooth_l1 | mse, on the normalised MOS
        "mos_weight": 1.0,
        "smooth_l1_beta": 0.05,
        "plcc_weight": 0.5,
        "rank_weight": 0.5,  # pairwise rank hinge within the authentic batch
        "synthetic_rank_weight": 1.0,
        "synthetic_margin": 0.02,
        "margin_per_severity": 0.1,  # margin grows with the severity gap between members
        "factor": "bce",  # bce | mse
        "factor_weight": 0.5,
        "pristine_floor": None,  # a prior: pristine originals should score at least this
        "pristine_floor_weight": 1.0,
        # Absolute page-scale levels of synthetic copies (training/levels.py), mapped onto
        # the MOS scale by quantiles of the training MOS; 0 = ranking only (v1).
        "level_weight": 0.0,
        # Multipliers of level_weight per distortion (names in iqa.training.augment), e.g.
        # {underexposure: 4}: a family whose level the rated photos pull against.
        "level_weights": {},
    },
    "optim": {
        "epochs": 20,
        "max_steps": None,  # stop early after this many steps (smoke runs)
        "batch_size": 16,  # authentic images per step (global, across all ranks)
        "lr": 1.0e-3,
        "backbone_lr_mult": 0.1,
        "weight_decay": 0.01,
        "warmup_steps": 100,
        "min_lr_ratio": 0.01,
        "grad_clip": 1.0,
        "amp": True,  # mixed precision, only ever on CUDA
        # An exponential moving average of the weights (0 = off). When on, validation and
        # the checkpoints' "model" use the average; the optimiser's own weights are kept in
        # the checkpoint for resuming. It starts at ema_start (a fraction of the run's steps)
        # so that the randomly initialised heads of the first steps are not averaged in.
        "ema_decay": 0.0,
        "ema_start": 0.5,
    },
    "eval": {
        "batch_size": 8,
    },
    "loader": {
        "num_workers": 0,  # DataLoader worker processes for the on-the-fly path
    },
    "logging": {
        "tensorboard": True,
        "progress": True,
    },
}


# What a key may hold, where its default alone does not say (None, or a list or a free-form
# section whose items have a kind). Every other key holds what its default holds; an int
# default takes only whole numbers, a float default any number.
KINDS: dict[str, tuple[str, ...]] = {
    "data_root": ("str", "null"),
    "data.dataset": ("str", "null"),
    "data.root": ("str", "null"),
    "data.split_csv": ("str", "null"),
    "data.max_train_images": ("int", "null"),
    "data.max_val_images": ("int", "null"),
    "synthetic.root": ("str", "null"),
    "synthetic.subsets": ("list:str", "null"),
    "synthetic.max_photos": ("int", "null"),
    "synthetic.distortions": ("list:str", "null"),
    "synthetic.severity_weak": ("pair:number",),
    "synthetic.severity_gap": ("pair:number",),
    "model.pretrained": ("bool", "str"),
    "model.pool_stages": ("list:int",),
    "model.detail_grid": ("int", "null"),
    "augment.crop": ("int", "null"),
    "loss.pristine_floor": ("number", "null"),
    "loss.level_weights": ("dict:number",),
    "optim.max_steps": ("int", "null"),
}

class ConfigError(IQAError):
    """A config file or override is malformed, has an unknown key, or a bad value."""

    error_type = "config_error"


def _merge(base: dict, update: dict, where: str = "", defaults: dict | None = None) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key '{path}'")
        if isinstance(base[key], dict) and isinstance(value, dict):
            if _is_free_form(path.split("."), defaults):
                # Loader options, preprocessing: whatever keys they are given, merged over
                # a base config's (a recipe that builds on another adds to its keys).
                out[key] = {**base[key], **copy.deepcopy(value)}
            elif base[key]:
                out[key] = _merge(base[key], value, f"{path}.", defaults)
            else:
                out[key] = copy.deepcopy(value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_DESCRIBE = {
    "bool": "true or false", "int": "a whole number", "number": "a number",
    "str": "a string", "null": "null", "dict": "a mapping",
    "list:str": "a list of strings", "list:int": "a list of whole numbers",
    "list:number": "a list of numbers", "pair:number": "a list of two numbers",
    "dict:number": "a mapping of names to numbers",
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fits(value: Any, kind: str) -> bool:
    if kind.startswith("list:"):
        return isinstance(value, list) and all(_fits(v, kind[5:]) for v in value)
    if kind == "pair:number":
        return isinstance(value, list) and len(value) == 2 and all(map(_is_number, value))
    if kind == "dict:number":
        return isinstance(value, dict) and all(map(_is_number, value.values()))
    return {
        "bool": lambda: isinstance(value, bool),
        "int": lambda: isinstance(value, int) and not isinstance(value, bool),
        "number": lambda: _is_number(value),
        "str": lambda: isinstance(value, str),
        "null": lambda: value is None,
        "dict": lambda: isinstance(value, dict),
    }[kind]()


def _default_kinds(default: Any) -> tuple[str, ...]:
    if isinstance(default, bool):
        return ("bool",)
    if isinstance(default, int):
        return ("int",)
    if isinstance(default, float):
        return ("number",)
    if isinstance(default, str):
        return ("str",)
    if isinstance(default, dict):
        return ("dict",)
    if isinstance(default, list):
        return ("list:str",)
    return ("null",)


def _as_number(value: Any) -> Any:
    """YAML 1.1 reads ``3e-4`` (no dot) as a string; in a recipe it means a number."""
    if isinstance(value, str) and _EXPONENT_NUMBER.match(value):
        return float(value)
    return value


def check_types(cfg: dict, defaults: dict | None = None,
                kinds: dict[str, tuple[str, ...]] | None = None, where: str = "") -> dict:
    """Refuse a value of the wrong kind (``optim.lr: abc``, ``augment.flip: nope``,
    ``optim: 5``) by its key, before anything reads it; the defaults say what each key
    holds, ``kinds`` where they cannot."""
    defaults = DEFAULTS if defaults is None else defaults
    kinds = KINDS if kinds is None else kinds
    for key, default in defaults.items():
        dotted = f"{where}{key}"
        value = cfg.get(key, default)
        if isinstance(default, dict) and default and dotted not in kinds:
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted} must be a section (a mapping of its keys), "
                                  f"got {value!r}")
            check_types(value, default, kinds, f"{dotted}.")
            continue
        allowed = kinds.get(dotted) or _default_kinds(default)
        if {"number", "pair:number", "list:number"} & set(allowed):
            value = [_as_number(v) for v in value] if isinstance(value, list) \
                else _as_number(value)
            cfg[key] = value
        if not any(_fits(value, kind) for kind in allowed):
            described = " or ".join(_DESCRIBE[kind] for kind in allowed)
            raise ConfigError(f"{dotted} must be {described}, got {value!r}")
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 0.0003); values are parsed as YAML."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from exc
    if isinstance(value, str) and _EXPONENT_NUMBER.match(value):
        # YAML 1.1 reads "3e-4" (no dot) as a string; on a command line it means a number.
        value = float(value)
    return keys, value


def apply_override(cfg: dict, text: str, defaults: dict | None = None) -> None:
    """Set one ``key.sub=value`` in ``cfg``, whose keys and free-form sections are
    those of ``defaults`` (:data:`DEFAULTS` unless given)."""
    keys, value = parse_override(text)
    node = cfg
    for i, key in enumerate(keys[:-1]):
        if not isinstance(node, dict) or key not in node:
            raise ConfigError(f"unknown config key '{'.'.join(keys[: i + 1])}' in '{text}'")
        node = node[key]
    if not isinstance(node, dict):
        raise ConfigError(f"'{'.'.join(keys[:-1])}' is not a section, in '{text}'")
    free_form = node is not cfg and _is_free_form(keys[:-1], defaults)
    if keys[-1] not in node and not free_form:
        raise ConfigError(f"unknown config key '{'.'.join(keys)}' in '{text}'")
    current = node.get(keys[-1])
    if isinstance(current, dict) and not _is_free_form(keys, defaults):
        # A section: a mapping merges into it (unknown keys refused), anything else would
        # silently drop every key of it.
        if not isinstance(value, dict):
            raise ConfigError(f"'{'.'.join(keys)}' is a section, in '{text}'; set one of its "
                              f"keys instead, e.g. {'.'.join(keys)}.{next(iter(current), 'key')}"
                              "=...")
        value = _merge(current, value, f"{'.'.join(keys)}.", defaults)
    node[keys[-1]] = value


def _is_free_form(keys: list[str], defaults: dict | None = None) -> bool:
    """Whether the section at ``keys`` takes any keys: its default is an empty dict."""
    node: Any = DEFAULTS if defaults is None else defaults
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return isinstance(node, dict) and not node


def get(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        node = node[key]
    return node


def _set(cfg: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = cfg
    for key in parents:
        node = node[key]
    node[last] = value


def resolve_paths(cfg: dict, data_root: str | Path | None = None, cwd: Path | None = None) -> dict:
    """Make every path in the config absolute (data paths against the data root).

    ``data_root`` (the --data-root option) wins over $IQA_DATA_ROOT, which wins over the
    config's own ``data_root``.
    """
    cwd = Path(cwd or Path.cwd())
    data_root = data_root or os.environ.get(DATA_ROOT_ENV) or cfg.get("data_root") or None
    data_base = Path(str(data_root)).expanduser() if data_root else cwd
    if not data_base.is_absolute():
        data_base = (cwd / data_base).resolve()
    cfg["data_root"] = str(data_base)
    for dotted, base in [(k, data_base) for k in DATA_PATH_KEYS] + [
        (k, cwd) for k in LOCAL_PATH_KEYS
    ]:
        value = get(cfg, dotted)
        if value is None or value == "":
            continue
        path = Path(str(value)).expanduser()
        _set(cfg, dotted, str((path if path.is_absolute() else base / path).resolve()))
    pretrained = cfg["model"]["pretrained"]
    if isinstance(pretrained, str):  # a weights file: resolve like a data path
        path = Path(pretrained).expanduser()
        cfg["model"]["pretrained"] = str(path if path.is_absolute() else (data_base / path))
    return cfg


# (key, lowest value, whether the lowest itself is refused): ranges that would otherwise
# fail deep inside training, or train something else than asked for without a word.
_RANGES: tuple[tuple[str, float, bool], ...] = (
    ("seed", 0, False),
    ("checkpoint_every_steps", 1, False),
    ("data.max_train_images", 1, False),
    ("data.max_val_images", 1, False),
    ("synthetic.max_photos", 1, False),
    ("synthetic.groups_per_photo", 0, False),
    ("synthetic.composed_per_photo", 0, False),
    ("synthetic.compose_max_ops", 1, False),
    ("synthetic.groups_per_epoch", 0, False),
    ("model.head_hidden", 1, False),
    ("model.dropout", 0, False),
    ("model.freeze_blocks", 0, False),
    ("model.detail_grid", 1, False),
    ("model.detail_patch", 1, False),
    ("augment.crop", 32, False),
    ("loss.mos_weight", 0, False),
    ("loss.smooth_l1_beta", 0, True),
    ("loss.plcc_weight", 0, False),
    ("loss.rank_weight", 0, False),
    ("loss.synthetic_rank_weight", 0, False),
    ("loss.synthetic_margin", 0, False),
    ("loss.margin_per_severity", 0, False),
    ("loss.factor_weight", 0, False),
    ("loss.pristine_floor_weight", 0, False),
    ("loss.level_weight", 0, False),
    ("optim.epochs", 1, False),
    ("optim.max_steps", 1, False),
    ("optim.batch_size", 1, False),
    ("optim.lr", 0, True),
    ("optim.backbone_lr_mult", 0, False),
    ("optim.weight_decay", 0, False),
    ("optim.warmup_steps", 0, False),
    ("optim.min_lr_ratio", 0, False),
    ("optim.grad_clip", 0, True),
    ("optim.ema_decay", 0, False),
    ("optim.ema_start", 0, False),
    ("eval.batch_size", 1, False),
    ("loader.num_workers", 0, False),
)


def validate(cfg: dict) -> dict:
    """Check kinds and value ranges that would otherwise fail deep inside training."""
    from iqa.inference.option_ranges import out_of_range

    check_types(cfg)
    problem = out_of_range({key: (get(cfg, key), low, strict) for key, low, strict in _RANGES})
    if problem:
        raise ConfigError(problem)
    if not cfg["model"]["dropout"] < 1:
        raise ConfigError(f"model.dropout must be < 1, got {cfg['model']['dropout']}")
    if not cfg["optim"]["min_lr_ratio"] <= 1:
        raise ConfigError(f"optim.min_lr_ratio must be <= 1, got {cfg['optim']['min_lr_ratio']}")
    if not cfg["optim"]["ema_decay"] < 1:
        raise ConfigError(f"optim.ema_decay must be < 1, got {cfg['optim']['ema_decay']}")
    if not cfg["optim"]["ema_start"] < 1:
        raise ConfigError(f"optim.ema_start must be < 1 (a fraction of the run's steps), got "
                          f"{cfg['optim']['ema_start']}")
    method = cfg["data"]["split"]["method"]
    if method not in ("official", "random", "csv", "none"):
        raise ConfigError(
            f"data.split.method must be official, random, csv or none, got '{method}'"
        )
    if method == "csv" and not cfg["data"]["split_csv"]:
        raise ConfigError("data.split.method is 'csv' but data.split_csv is not set")
    if not 0.0 < cfg["data"]["split"]["val_fraction"] < 1.0:
        raise ConfigError("data.split.val_fraction must be in (0, 1)")
    if cfg["loss"]["mos"] not in ("l1", "smooth_l1", "mse"):
        raise ConfigError(f"loss.mos must be l1, smooth_l1 or mse, got '{cfg['loss']['mos']}'")
    if cfg["loss"]["factor"] not in ("bce", "mse"):
        raise ConfigError(f"loss.factor must be bce or mse, got '{cfg['loss']['factor']}'")
    from .levels import LEVEL_DISTORTIONS

    unknown = set(cfg["loss"]["level_weights"] or {}) - set(LEVEL_DISTORTIONS)
    if unknown:
        raise ConfigError(f"loss.level_weights: unknown distortion(s) {sorted(unknown)}; "
                          f"known: {', '.join(LEVEL_DISTORTIONS)}")
    syn = cfg["synthetic"]
    if syn["enabled"] and not syn["root"]:
        raise ConfigError("synthetic.enabled is true but synthetic.root is not set")
    lo, hi = syn["severity_weak"]
    glo, ghi = syn["severity_gap"]
    if not (0.0 < lo <= hi < 1.0 and 0.0 < glo <= ghi):
        raise ConfigError("synthetic.severity_weak must be 0 < lo <= hi < 1 and gaps positive")
    if not cfg["data"]["dataset"] and not syn["enabled"]:
        raise ConfigError("nothing to train on: set data.dataset or enable synthetic")
    return cfg


def build_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    data_root: str | Path | None = None,
    cwd: Path | None = None,
) -> dict:
    """Defaults <- YAML file (and its ``base``) <- ``--set`` overrides, then paths resolved
    and values checked. ``data_root`` falls back to $IQA_DATA_ROOT.
    """
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        cfg = load_file(Path(path), cfg)
    for text in overrides:
        apply_override(cfg, text)
    return validate(resolve_paths(check_types(cfg), data_root, cwd))


def load_file(path: Path, cfg: dict, seen: tuple[Path, ...] = (),
              defaults: dict | None = None) -> dict:
    """Merge a YAML file over ``cfg``; a ``base: other.yaml`` key (relative to this file)
    is merged first, so a recipe can restate only what differs from another."""
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path} is a folder, not a config file: give a YAML recipe "
                          "(e.g. configs/livec.yaml)") from exc
    except UnicodeDecodeError as exc:
        # An image or a checkpoint given by mistake; its bytes say nothing useful.
        raise ConfigError(f"{path} is not a text YAML file (not UTF-8 text at byte "
                          f"{exc.start})") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = loaded.pop("base", None)
    if base:
        base_path = (path.parent / str(base)).resolve()
        if base_path in seen:
            raise ConfigError(f"{path}: 'base' chain loops back to {base_path}")
        cfg = load_file(base_path, cfg, (*seen, path.resolve()), defaults)
    try:
        return _merge(cfg, loaded, defaults=defaults)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def dump_config(cfg: dict, path: Path) -> None:
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
