"""A run's ``metrics.csv`` (one row per step and per validation) and TensorBoard scalars."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

LOSS_PARTS = ("mos", "plcc", "rank", "syn_rank", "factor", "floor", "level")
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
