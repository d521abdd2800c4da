"""Checkpoints: atomic writes, RNG state capture, and finding the one to resume from.

A checkpoint is a ``torch.save`` dict with the keys /tmp/api.md agreed on ("model",
"model_kwargs", "config", "epoch", "step", "best_metric", "metadata") plus the trainer's
state ("optimizer", "scheduler", "scaler", "rng", "step_in_epoch", "preprocessing",
"history"), enough to continue a killed run exactly where it stopped. The commands that
fit something after training (`iqa calibrate`, `iqa penalty`) and `iqa export` read one
with :func:`load_checkpoint` and write their outputs with :func:`atomic_path`, after
:func:`iqa.inference.output_files.output_problem` has checked the path before any work
is done.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from iqa.inference.errors import IQAError

LAST = "last.pt"
BEST = "best.pt"
# Every checkpoint `iqa train` writes (single-view and v2 alike) rebuilds from these two.
MODEL_KEYS = ("model", "model_kwargs")
# What the trainer reads back to continue a run; the files `iqa calibrate` and `iqa penalty`
# write keep only the weights, on purpose.
RESUME_KEYS = ("config", "optimizer", "scheduler", "scaler", "epoch", "step", "step_in_epoch",
               "best_metric")


class CheckpointError(IQAError):
    """A path that is not a readable checkpoint written by `iqa train` (missing, a folder,
    not a torch file, or lacking what the caller needs)."""

    error_type = "checkpoint_error"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in ``path``'s folder; on a clean exit it is fsynced and renamed over
    ``path``, on an exception it is removed.

    A kill or a failure at any moment leaves either the old file or the new one, never a
    torn or half-checked file.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        # A rename over a device or pipe would replace the node itself (/dev/null, as root).
        raise OSError(f"{path} is not a regular file: refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
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


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """torch.save through :func:`atomic_path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def _folder_hint(folder: Path) -> str:
    found = [str(folder / name) for name in (BEST, LAST) if (folder / name).is_file()]
    if found:
        return f"{folder} is a run folder, not a checkpoint: give {' or '.join(found)}"
    return f"{folder} is a folder with no {BEST} or {LAST}, not a checkpoint"


def load_checkpoint(path: str | os.PathLike, map_location="cpu", *,
                    resumable: bool = False) -> dict:
    """The dict a checkpoint file holds; :class:`CheckpointError` with a one-line reason
    when ``path`` is not a checkpoint written by `iqa train`.

    ``resumable``: also require the trainer's state (:data:`RESUME_KEYS`), which the
    weights-only files of `iqa calibrate` and `iqa penalty` do not carry.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(_folder_hint(path))
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    not_ours = f"{path} is not a checkpoint written by `iqa train`"
    try:
        # Our own checkpoints hold NumPy RNG state and plain containers, which the
        # weights_only unpickler rejects; only load checkpoints you trust (as with any pickle).
        state = torch.load(path, map_location=map_location, weights_only=False)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:
        # A text file, an image or a torn write fails anywhere in the unpickler, with
        # whatever exception its bytes happen to trigger: none of them is a checkpoint.
        raise CheckpointError(f"{not_ours} (torch cannot load it: "
                              f"{type(exc).__name__})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{not_ours} (it holds a {type(state).__name__}, not a dict)")
    missing = [key for key in MODEL_KEYS + (RESUME_KEYS if resumable else ()) if key not in state]
    if missing and resumable and not any(key in missing for key in MODEL_KEYS):
        raise CheckpointError(f"{path} holds weights only (no {', '.join(missing)}), as "
                              "`iqa calibrate` and `iqa penalty` write them: it cannot be "
                              "resumed; resume the run's last.pt")
    if missing:
        raise CheckpointError(f"{not_ours} (no {', '.join(missing)})")
    return state


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
