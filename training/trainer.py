"""The training loop: optimisation, validation and checkpoints of one run.

One ``Trainer`` runs one run directory. Everything it does is a function of the resolved
config and the checkpoint it resumes from: the epoch's data order comes from
``plan_epoch(seed, epoch)``, the model's randomness (dropout) from RNG states saved in
every checkpoint, so a killed run resumed from ``last.pt`` ends bit-identical to one that
was never interrupted.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from iqa.inference.contract import FACTOR_NAMES

from . import checkpoint as ckpt
from .config import ConfigError
from .data import (
    FeatureSource,
    ImageSource,
    ImageSpec,
    StepDataset,
    batch_to,
    group_by_shape,
    plan_epoch,
    prefetch,
    steps_per_epoch,
    to_device,
)
from .distributed import DistInfo, all_gather_object, barrier, broadcast_object
from .front_cache import FeatureCache, frozen_stride, parameters_digest
from .losses import LossWeights, training_loss
from .plots import plot_curves
from .run_data import prepare_data, preprocessing_for
from .run_log import VAL_KEYS, MetricsLog

# Test hook: stop (as if killed) right after this many global steps.
STOP_AFTER_ENV = "IQA_TRAIN_STOP_AFTER_STEPS"


class StopRequested(Exception):
    """Raised by the STOP_AFTER_ENV test hook: the run stops as if it had been killed."""


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
            s, f = run(*x) if isinstance(x, (tuple, list)) else run(x)
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
        from iqa.models import BackboneError, create_model

        cfg, info = self.cfg, self.info
        seed = int(cfg["seed"])
        ckpt.seed_everything(seed)  # same initial weights on every rank
        if info.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        m = cfg["model"]
        try:
            self.model = create_model(
                backbone=m["backbone"], pretrained=m["pretrained"],
                num_factors=len(FACTOR_NAMES), head_hidden=int(m["head_hidden"]),
                dropout=float(m["dropout"]), freeze_blocks=int(m["freeze_blocks"]),
                pool_stages=tuple(m["pool_stages"] or ()), pool_head=bool(m["pool_head"]),
                detail_grid=m["detail_grid"], detail_patch=int(m["detail_patch"]),
                exposure_stats=bool(m["exposure_stats"]),
            ).to(self.device)
        except BackboneError as exc:
            # A model.* combination no network can be built from is a config error: a
            # clear message and exit 2, not a traceback.
            raise ConfigError(f"model: {exc}") from exc
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
        if self.weights.level_weight:
            self.weights.level_prior = self._level_prior()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]

    def _level_prior(self) -> tuple[float, float]:
        """Page-scale levels -> MOS scale, from this run's training MOS only."""
        from .levels import level_to_mos_prior

        mos = np.asarray([float(r.mos) for r in self.data.train])
        if len(mos) < 10:
            raise ConfigError("loss.level_weight needs rated training images to place the "
                              f"levels on their MOS scale; this run has {len(mos)}")
        prior = level_to_mos_prior(mos)
        self.log(f"levels: page-scale targets -> MOS {prior[0]:.3f} + {prior[1]:.3f} * level "
                 "(quantiles of the training MOS)")
        return prior

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
        return ImageSource(self.prep, self.stride, getattr(self.model, "detail_view", None))

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
        self.ema = None
        if float(o["ema_decay"]):
            from timm.utils import ModelEmaV3

            # Up to update_after_step the average is a plain copy of the weights.
            self.ema = ModelEmaV3(self.model, decay=float(o["ema_decay"]),
                                  update_after_step=int(float(o["ema_start"]) * self.total_steps))
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

    @property
    def shipped_model(self) -> nn.Module:
        """The weights that are validated and written as a checkpoint's "model"."""
        return self.model if self.ema is None else self.ema.module

    def _state(self, epoch: int, step: int, step_in_epoch: int, metrics: dict | None) -> dict:
        """Everything a checkpoint holds. ``metrics`` are the validation results of exactly
        these weights (None for a mid-epoch checkpoint, whose weights were never validated)."""
        rng = all_gather_object(self.info, ckpt.capture_rng_state())
        digests = all_gather_object(self.info, parameters_digest(self.model))
        if len(set(digests)) != 1:
            raise RuntimeError(f"data-parallel replicas diverged at step {step}: {digests}")
        state = {
            "model": self.shipped_model.state_dict(),
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
        if self.ema is not None:
            state["live_model"] = self.model.state_dict()  # what the optimiser resumes from
        return state

    def _save(self, name: str, state: dict) -> None:
        if self.info.is_main:
            ckpt.atomic_save(state, self.run_dir / name)

    def _restore(self, state: dict) -> tuple[int, int, int]:
        self.model.load_state_dict(state.get("live_model", state["model"]))
        if self.ema is not None:
            self.ema.module.load_state_dict(state["model"])
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
            raise ConfigError("the steps per epoch changed since the checkpoint was written "
                              f"({state['steps_per_epoch']} then, {self.steps_per_epoch} now): "
                              "optim.batch_size or the training data differ, so the run cannot "
                              "continue exactly; start a new run instead")
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
                    if self.ema is not None:
                        self.ema.update(self.model, step=step)
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
        net = self.shipped_model
        net.eval()
        source = self.source
        run = net.forward_trainable if source.from_features else net
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
                    x = to_device(x, self.device)
                    s, _ = run(*x) if isinstance(x, tuple) else run(x)
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
