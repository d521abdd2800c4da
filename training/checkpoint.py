"""Checkpoints: atomic writes, RNG state capture, and finding the one to resume from.

A checkpoint is a ``torch.save`` dict with the keys /tmp/api.md agreed on ("model",
"model_kwargs", "config", "epoch", "step", "best_metric", "metadata") plus the trainer's
state ("optimizer", "scheduler", "scaler", "rng", "step_in_epoch", "preprocessing",
"history"), enough to continue a killed run exactly where it stopped.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

LAST = "last.pt"
BEST = "best.pt"


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """torch.save to a temp file in the same folder, fsync, then os.replace.

    A kill at any moment leaves either the old checkpoint or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # Our own checkpoints hold NumPy RNG state and plain containers, which the
    # weights_only unpickler rejects; only load checkpoints you trust (as with any pickle).
    return torch.load(path, map_location=map_location, weights_only=False)


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the ``last.pt`` of a run directory."""
    path = Path(path)
    if path.is_dir():
        candidate = path / LAST
        if not candidate.is_file():
            raise FileNotFoundError(f"{path} has no {LAST}: nothing to resume from")
        return candidate
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint or run directory at {path}")
    return path


def capture_rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
