"""The training loop: data preparation, optimisation, validation, logging, checkpoints.

One ``Trainer`` runs one run directory. Everything it does is a function of the resolved
config and the checkpoint it resumes from: the epoch's data order comes from
``plan_epoch(seed, epoch)``, the model's randomness (dropout) from RNG states saved in
every checkpoint, so a killed run resumed from ``last.pt`` ends bit-identical to one that
was never interrupted.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from iqa.inference.contract import FACTOR_NAMES, Preprocessing

from . import checkpoint as ckpt
from .config import ConfigError
from .data import (
    FeatureCache,
    FeatureSource,
    ImageSource,
    ImageSpec,
    StepDataset,
    SyntheticGroup,
    batch_to,
    build_synthetic_pool,
    frozen_stride,
    group_by_shape,
    list_photos,
    parameters_digest,
    plan_epoch,
    prefetch,
    steps_per_epoch,
)
from .distributed import DistInfo, all_gather_object, barrier, broadcast_object
from .losses import LossWeights, training_loss

# Test hook: stop (as if killed) right after this many global steps.
STOP_AFTER_ENV = "IQA_TRAIN_STOP_AFTER_STEPS"

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


class StopRequested(Exception):
    """Raised by the STOP_AFTER_ENV test hook: the run stops as if it had been killed."""


# --------------------------------------------------------------------------- data


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
            f"{syn['composed_per_photo']} composed copies per photo), supervising only "
            f"rankings against their originals and the factor head, never an absolute score"
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
    return dataclasses.replace(model.preprocessing, **overrides)


# --------------------------------------------------------------------------- logging

LOSS_PARTS = ("mos", "plcc", "rank", "syn_rank", "factor", "floor")
VAL_KEYS = ("srcc", "plcc", "krcc", "rmse")
COLUMNS = ("kind", "epoch", "step", "lr", "loss", *LOSS_PARTS, "images", "seconds",
           "val_n", *(f"val_{k}" for k in VAL_KEYS))


class MetricsLog:
    """metrics.csv (one row per step and per validation) and TensorBoard scalars.

    On resume, rows past the checkpoint are dropped first, so the file reads as if the
    run had never been interrupted.
    """

    def __init__(self, run_dir: Path, *, resume_step: int | None, resume_epoch: int | None,
                 tensorboard: bool = True):
        self.path = run_dir / "metrics.csv"
        if resume_step is None:
            # A new run starts its own file: rows of an earlier run killed before its first
            # checkpoint would otherwise read as this run's.
            self.path.unlink(missing_ok=True)
        elif self.path.is_file():
            self._truncate(resume_step, resume_epoch)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        self.handle = open(self.path, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.handle, COLUMNS, lineterminator="\n")
        if new:
            self.writer.writeheader()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"),
                                        purge_step=(resume_step + 1) if resume_step else None)
            except ImportError as exc:  # tensorboard not installed: CSV and PNG still work
                warnings.warn(f"TensorBoard logging disabled: {exc}", stacklevel=2)

    def _truncate(self, step: int, epoch: int) -> None:
        with open(self.path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        keep = [r for r in rows if (r["kind"] == "train" and int(r["step"]) <= step)
                or (r["kind"] == "val" and int(r["epoch"]) < epoch)]
        with open(self.path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(keep)

    def train(self, epoch: int, step: int, lr: float, loss: float, parts: dict,
              images: int, seconds: float) -> None:
        row = {"kind": "train", "epoch": epoch, "step": step, "lr": f"{lr:.6g}",
               "loss": f"{loss:.6f}", "images": images, "seconds": f"{seconds:.4f}"}
        row.update({k: f"{v:.6f}" for k, v in parts.items()})
        self.writer.writerow(row)
        self.handle.flush()
        if self.tb:
            self.tb.add_scalar("train/loss", loss, step)
            self.tb.add_scalar("train/lr", lr, step)
            for k, v in parts.items():
                self.tb.add_scalar(f"train/{k}", v, step)

    def val(self, epoch: int, step: int, metrics: dict) -> None:
        row = {"kind": "val", "epoch": epoch, "step": step, "val_n": metrics.get("n", "")}
        row.update({f"val_{k}": f"{metrics[k]:.6f}" for k in VAL_KEYS if k in metrics})
        self.writer.writerow(row)
        self.handle.flush()
        if self.tb:
            for k in VAL_KEYS:
                if k in metrics:
                    self.tb.add_scalar(f"val/{k}", metrics[k], step)
            self.tb.flush()

    def close(self) -> None:
        self.handle.close()
        if self.tb:
            self.tb.close()


def plot_curves(csv_path: Path, png_path: Path) -> None:
    """Training loss per step (with a running mean) and validation SRCC/PLCC per epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "val" and r["val_srcc"]]
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_val = fig.subplots(1, 2)
    if train:
        steps, losses = map(np.asarray, zip(*train, strict=True))
        ax_loss.plot(steps, losses, lw=0.6, alpha=0.4, color="tab:blue", label="loss")
        width = max(1, min(50, len(losses) // 10))
        running = np.convolve(losses, np.ones(width) / width, mode="valid")
        ax_loss.plot(steps[width - 1:], running, lw=1.5, color="tab:blue",
                     label=f"running mean ({width} steps)")
        ax_loss.legend(fontsize=8)
    ax_loss.set(title="training loss", xlabel="step")
    ax_loss.grid(True, alpha=0.3)
    if val:
        epochs = [int(r["epoch"]) + 1 for r in val]
        for key, color in (("srcc", "tab:red"), ("plcc", "tab:green")):
            ax_val.plot(epochs, [float(r[f"val_{key}"]) for r in val], marker="o", color=color,
                        label=key.upper())
        ax_val.legend(fontsize=8)
    ax_val.set(title="validation", xlabel="epoch")
    ax_val.grid(True, alpha=0.3)
    tmp = png_path.with_name(f".{png_path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, png_path)


# --------------------------------------------------------------------------- model step


class StepModel(nn.Module):
    """One forward per step over every shape group, so DistributedDataParallel sees one
    forward per backward; outputs come back in the batch's item order."""

    def __init__(self, model: nn.Module, from_features: bool):
        super().__init__()
        self.model = model
        self.from_features = from_features

    def forward(self, inputs: list[tuple[torch.Tensor, torch.Tensor]]):
        run = self.model.forward_trainable if self.from_features else self.model
        positions, scores, factors = [], [], []
        for pos, x in inputs:
            s, f = run(x)
            positions.append(pos)
            scores.append(s)
            factors.append(f)
        order = torch.argsort(torch.cat(positions))
        return torch.cat(scores)[order], torch.cat(factors)[order]


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total`` steps."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- trainer


class Trainer:
    def __init__(self, cfg: dict, run_dir: Path, info: DistInfo, *,
                 resume: dict | None = None, progress: bool = True):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.info = info
        self.resume = resume
        self.progress = progress and bool(cfg["logging"]["progress"]) and info.is_main
        self.device = info.device
        self.timings: dict = {}

    def log(self, message: str) -> None:
        if self.info.is_main:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)  # above an active progress bar, not through it

    # ----------------------------------------------------------------- setup

    def _build(self) -> None:
        from iqa.models import create_model

        cfg, info = self.cfg, self.info
        seed = int(cfg["seed"])
        ckpt.seed_everything(seed)  # same initial weights on every rank
        if info.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        m = cfg["model"]
        self.model = create_model(
            backbone=m["backbone"], pretrained=m["pretrained"], num_factors=len(FACTOR_NAMES),
            head_hidden=int(m["head_hidden"]), dropout=float(m["dropout"]),
            freeze_blocks=int(m["freeze_blocks"]), pool_stages=tuple(m["pool_stages"] or ()),
        ).to(self.device)
        self.prep = preprocessing_for(self.model, cfg)
        self.data = prepare_data(cfg, self.run_dir, info, resuming=self.resume is not None)
        self.log(f"data: {self.data.description}")
        d = cfg["data"]
        self.validation_source = {"dataset": d["dataset"], "split": d["split"]["val"],
                                  "split_method": d["split"]["method"]}
        self.stride = frozen_stride(self.model, self.prep)
        crop = cfg["augment"]["crop"]
        self.crop_px = (int(crop) // self.stride) * self.stride if crop else None
        self.source = self._build_source()
        self._build_optimisation()
        self.weights = LossWeights.from_config(cfg["loss"])
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]

    def _build_source(self):
        """The feature cache (built now, each rank its share) or the on-the-fly renderer."""
        cfg, info = self.cfg, self.info
        if cfg["cache_features"]:
            if not self.model.freeze_blocks:
                raise ConfigError("cache_features needs model.freeze_blocks > 0 "
                                  "(set cache_features: false to fine-tune everything)")
            self.cache = FeatureCache(cfg["cache_dir"], self.model, self.prep,
                                      batch_size=int(cfg["eval"]["batch_size"]))
            specs = self._specs_to_cache()
            stats = self.cache.build(specs, rank=info.rank, world_size=info.world_size,
                                     progress=self.progress)
            barrier(info)
            self.timings["cache"] = {
                "entries": stats.total, "built_by_rank0": stats.built,
                "seconds": round(stats.seconds, 2),
                "seconds_per_image": round(stats.seconds_per_image, 4),
                "render_seconds": round(stats.render_seconds, 2),
                "forward_seconds": round(stats.forward_seconds, 2),
            }
            if stats.built:
                self.log(f"feature cache: built {stats.built} of {stats.total} entries in "
                         f"{stats.seconds:.1f} s ({stats.seconds_per_image:.3f} s/img) "
                         f"under {self.cache.dir}")
            return FeatureSource(self.cache)
        return ImageSource(self.prep, self.stride)

    def _build_optimisation(self) -> None:
        """Step counts, AdamW with layer-wise groups, warm-up + cosine, AMP, DDP wrapper."""
        cfg, info = self.cfg, self.info
        o = cfg["optim"]
        self.batch_size = int(o["batch_size"])
        syn = cfg["synthetic"]
        self.groups_per_epoch = int(syn["groups_per_epoch"]) if self.data.pool else 0
        if self.batch_size < info.world_size and self.data.train:
            raise ConfigError(f"optim.batch_size ({self.batch_size}) is smaller than the number "
                              f"of processes ({info.world_size})")
        if self.data.train and len(self.data.train) < self.batch_size:
            raise ConfigError(f"{len(self.data.train)} training images cannot fill one batch of "
                              f"optim.batch_size={self.batch_size}")
        self.steps_per_epoch = steps_per_epoch(len(self.data.train), self.batch_size,
                                               self.groups_per_epoch, len(self.data.pool))
        self.total_steps = int(o["epochs"]) * self.steps_per_epoch
        if o["max_steps"]:
            self.total_steps = min(self.total_steps, int(o["max_steps"]))
        self.optimizer = torch.optim.AdamW(
            self.model.param_groups(float(o["lr"]), float(o["backbone_lr_mult"]),
                                    float(o["weight_decay"]))
        )
        warmup, total, floor = int(o["warmup_steps"]), self.total_steps, float(o["min_lr_ratio"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup, total, floor)
        )
        self.amp_dtype = None
        if self.device.type == "cuda" and o["amp"]:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step_model = StepModel(self.model, self.source.from_features)
        self.runner: nn.Module = self.step_model
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.runner = DistributedDataParallel(self.step_model, device_ids=ids)

    def _specs_to_cache(self) -> list[ImageSpec]:
        flip_auth = bool(self.cfg["augment"]["flip"])
        flip_syn = bool(self.cfg["synthetic"]["flip"])
        specs = []
        for record in self.data.train:
            spec = ImageSpec(str(record.path))
            specs += [spec, spec.mirrored()] if flip_auth else [spec]
        specs += [ImageSpec(str(record.path)) for record in self.data.val]
        for group in self.data.pool:
            for member in group.members:
                specs += [member, member.mirrored()] if flip_syn else [member]
        return specs

    # ----------------------------------------------------------------- state

    def _state(self, epoch: int, step: int, step_in_epoch: int, metrics: dict | None) -> dict:
        """Everything a checkpoint holds. ``metrics`` are the validation results of exactly
        these weights (None for a mid-epoch checkpoint, whose weights were never validated)."""
        rng = all_gather_object(self.info, ckpt.capture_rng_state())
        digests = all_gather_object(self.info, parameters_digest(self.model))
        if len(set(digests)) != 1:
            raise RuntimeError(f"data-parallel replicas diverged at step {step}: {digests}")
        return {
            "model": self.model.state_dict(),
            "model_kwargs": dict(self.model.model_kwargs),
            "config": self.cfg,
            "preprocessing": dataclasses.asdict(self.prep),
            "epoch": epoch,
            "step": step,
            "step_in_epoch": step_in_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "best_metric": self.best_metric,
            "metadata": {
                "training_data": self.data.description,
                "validation_metrics": metrics or {},
            },
            "best_validation": self.best_val,
            "history": self.history,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "world_size": self.info.world_size,
            "replica_digests": digests,
        }

    def _save(self, name: str, state: dict) -> None:
        if self.info.is_main:
            ckpt.atomic_save(state, self.run_dir / name)

    def _restore(self, state: dict) -> tuple[int, int, int]:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.best_metric = state["best_metric"]
        self.history = list(state.get("history", []))
        self.best_val = dict(state.get("best_validation") or {})
        rng = state.get("rng") or []
        if len(rng) == self.info.world_size:
            ckpt.restore_rng_state(rng[self.info.rank])
        else:
            warnings.warn(f"checkpoint was written by {len(rng)} process(es), this run has "
                          f"{self.info.world_size}: random state is reseeded, so the "
                          "continuation is not bit-identical", stacklevel=2)
            ckpt.seed_everything(int(self.cfg["seed"]) + 7919 * state["step"] + self.info.rank)
        if state.get("steps_per_epoch") not in (None, self.steps_per_epoch):
            raise ConfigError("the data changed since the checkpoint was written: "
                              f"{state['steps_per_epoch']} steps per epoch then, "
                              f"{self.steps_per_epoch} now")
        return int(state["epoch"]), int(state["step"]), int(state["step_in_epoch"])

    # ----------------------------------------------------------------- loop

    def fit(self) -> dict:
        self._build()
        cfg, info = self.cfg, self.info
        self.best_metric: float | None = None
        self.best_val: dict = {}
        self.history: list[dict] = []
        self.best_written = False
        if self.resume is not None:
            epoch, step, in_epoch = self._restore(self.resume)
            self.log(f"resuming at epoch {epoch + 1}, step {step} ({in_epoch} steps into the epoch)")
        else:
            epoch, step, in_epoch = 0, 0, 0
            # Dropout differs per rank, like any data-parallel run; weights were seeded equal.
            ckpt.seed_everything(int(cfg["seed"]) + info.rank)
        log = MetricsLog(self.run_dir, resume_step=step if self.resume else None,
                         resume_epoch=epoch if self.resume else None,
                         tensorboard=bool(cfg["logging"]["tensorboard"]) and info.is_main) \
            if info.is_main else None
        stop_after = int(os.environ.get(STOP_AFTER_ENV) or 0)
        every = int(cfg["checkpoint_every_steps"])
        syn = cfg["synthetic"]
        from tqdm import tqdm

        bar = tqdm(total=self.total_steps, initial=step, desc="training", unit="step",
                   disable=not self.progress, file=sys.stderr, dynamic_ncols=True)
        train_seconds, train_images = 0.0, 0
        try:
            while epoch < int(cfg["optim"]["epochs"]) and step < self.total_steps:
                plan = plan_epoch(int(cfg["seed"]), epoch, num_authentic=len(self.data.train),
                                  num_groups=len(self.data.pool), batch_size=self.batch_size,
                                  groups_per_epoch=self.groups_per_epoch,
                                  flip_authentic=bool(cfg["augment"]["flip"]),
                                  flip_synthetic=bool(syn["flip"]))
                dataset = StepDataset(plan, self.data.train, self.data.pool, self.source,
                                      self.crop_px, info.rank, info.world_size)
                loader = torch.utils.data.DataLoader(
                    dataset, batch_size=None, sampler=list(range(in_epoch, len(plan))),
                    num_workers=int(cfg["loader"]["num_workers"]),
                    pin_memory=self.device.type == "cuda",
                    # Its own generator: a DataLoader iterator otherwise draws its base seed
                    # from the global RNG, which a resumed run would draw at another point.
                    generator=torch.Generator().manual_seed(int(cfg["seed"]) * 1000 + epoch),
                )
                self.model.train()
                for batch in loader:
                    if step >= self.total_steps:
                        break
                    t0 = time.perf_counter()
                    loss, parts, lr = self._train_step(batch)
                    seconds = time.perf_counter() - t0
                    step += 1
                    in_epoch += 1
                    images = int(batch["n"]) * info.world_size
                    train_seconds += seconds
                    train_images += images
                    if log:
                        log.train(epoch, step, lr, loss, parts, images, seconds)
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}")
                    if step % every == 0:
                        self._save(ckpt.LAST, self._state(epoch, step, in_epoch, None))
                    if stop_after and step >= stop_after:
                        raise StopRequested(f"stopped after step {step} ({STOP_AFTER_ENV})")
                metrics = self._validate_and_share()
                if metrics is not None:
                    self.history.append({"epoch": epoch, "step": step, **metrics})
                    if log:
                        log.val(epoch, step, metrics)
                    self.log(f"epoch {epoch + 1}: val SRCC {metrics['srcc']:.4f} "
                             f"PLCC {metrics['plcc']:.4f} (n={metrics['n']})")
                finished = in_epoch >= len(plan)
                next_epoch, next_in_epoch = (epoch + 1, 0) if finished else (epoch, in_epoch)
                improved = metrics is not None and math.isfinite(metrics["srcc"]) and (
                    self.best_metric is None or metrics["srcc"] > self.best_metric)
                described = None
                if metrics is not None:
                    described = {**self.validation_source, **metrics, "epoch": epoch + 1,
                                 "step": step}
                if improved:
                    self.best_metric = metrics["srcc"]
                    self.best_val = described
                state = self._state(next_epoch, step, next_in_epoch, described)
                # Without a validation split the latest model is the one to ship.
                if improved or not self.data.val:
                    self._save(ckpt.BEST, state)
                    self.best_written = True
                self._save(ckpt.LAST, state)
                if info.is_main:
                    plot_curves(log.path, self.run_dir / "curves.png")
                epoch, in_epoch = next_epoch, next_in_epoch
        finally:
            bar.close()
            if log:
                log.close()
        if train_images:
            self.timings["train"] = {"steps": step, "images": train_images,
                                     "seconds": round(train_seconds, 2),
                                     "seconds_per_image": round(train_seconds / train_images, 4)}
        missing = not self.best_written and not (self.run_dir / ckpt.BEST).is_file()
        if broadcast_object(info, missing):  # rank 0's file system decides, for every rank
            # No finite validation score yet (or a resumed run that was already complete).
            self._save(ckpt.BEST, self._state(epoch, step, in_epoch, None))
        return {
            "run_dir": str(self.run_dir),
            "steps": step,
            "best_metric": self.best_metric,
            "best_validation": self.best_val,
            "validations": len(self.history),
            "preprocessing": dataclasses.asdict(self.prep),
            "timings": self.timings,
        }

    def _train_step(self, batch: dict) -> tuple[float, dict, float]:
        batch = batch_to(batch, self.device)
        lr = float(self.optimizer.param_groups[0]["lr"])
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            scores, factors = self.runner(batch["inputs"])
        loss, parts = training_loss(scores, factors, batch, self.weights)
        # Keeps every head parameter in the graph even when a batch has no synthetic item,
        # which DistributedDataParallel requires.
        loss = loss + 0.0 * factors.float().sum()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        clip = self.cfg["optim"]["grad_clip"]
        if clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, float(clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(loss.detach()), parts, lr

    # ----------------------------------------------------------------- validation

    def _validate_and_share(self) -> dict | None:
        metrics = self.validate() if self.info.is_main else None
        metrics = broadcast_object(self.info, metrics)
        barrier(self.info)
        return metrics

    @torch.no_grad()
    def predict(self, records) -> np.ndarray:
        """Scores of whole images (no crop, no flip): the test-time view of the network."""
        self.model.eval()
        source = self.source
        run = self.model.forward_trainable if source.from_features else self.model
        size = max(1, int(self.cfg["eval"]["batch_size"]))
        scores = np.zeros(len(records), dtype=np.float64)
        specs = [ImageSpec(str(r.path)) for r in records]
        workers = 1 if source.from_features else 2
        loaded = prefetch(source.load, specs, ahead=2 * size, workers=workers)
        chunk: list[tuple[int, torch.Tensor]] = []

        def flush():
            for positions, x in group_by_shape([t for _, t in chunk]):
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    s, _ = run(x.to(self.device))
                for j, p in enumerate(positions.tolist()):
                    scores[chunk[p][0]] = float(s[j])
            chunk.clear()

        for i, (x, _) in enumerate(loaded):
            chunk.append((i, x))
            if len(chunk) >= size:
                flush()
        if chunk:
            flush()
        self.model.train()
        return scores

    def validate(self) -> dict | None:
        if not self.data.val:
            return None
        from .metrics import evaluate_predictions

        t0 = time.perf_counter()
        pred = self.predict(self.data.val)
        mos = np.asarray([r.mos for r in self.data.val], dtype=np.float64)
        self.timings["validation_seconds"] = round(time.perf_counter() - t0, 2)
        try:
            result = evaluate_predictions(pred, mos, n_boot=0)
        except ValueError as exc:  # e.g. constant predictions early in training
            warnings.warn(f"validation metrics undefined: {exc}", stacklevel=2)
            return {"n": len(pred), "srcc": float("nan"), "plcc": float("nan"),
                    "krcc": float("nan"), "rmse": float(np.sqrt(np.mean((pred - mos) ** 2)))}
        out = {"n": int(result["n"])}
        for key in VAL_KEYS:
            out[key] = float(result[key]["value"])
        return out
