"""The frozen front's output per ``ImageSpec``, cached on disk as fp16 ``.npz`` files.

The trainer's default CPU path: the stem and the first ``freeze_blocks`` stages run once
per image (``FeatureCache.build``), and each epoch reads their output back through
``iqa.training.data.FeatureSource`` instead of decoding and running them again. Model
v2's multi-view study caches pooled vectors instead (``iqa.training.feature_cache``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from iqa.inference.contract import Preprocessing
from iqa.inference.preprocess import normalise

from .data import ImageSpec, group_by_shape, prefetch, render, render_views


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, shapes, bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if name.endswith("num_batches_tracked"):
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def parameters_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's parameters only: equal on every data-parallel replica (buffers
    such as BatchNorm statistics are per-rank until DDP broadcasts them)."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        t = p.detach().float().cpu().contiguous()
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=65536)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, hashed once per process while its size and mtime hold.

    Cache keys hash content, not modification times: a dataset copied or re-mounted (as
    ../shared is at each session) keeps its cache, while an edited file still gets a new key.
    """
    path = os.fspath(path)
    stat = os.stat(path)
    return _digest(path, stat.st_size, stat.st_mtime_ns)


def frozen_stride(model, prep: Preprocessing) -> int:
    """Pixels per cell of the frozen front's output (1 when nothing is frozen)."""
    side = 2 * prep.size_multiple
    feats = model.forward_frozen(torch.zeros(1, 3, side, side, device=_device_of(model)))
    return max(1, side // feats.shape[-1])


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


@dataclass
class CacheStats:
    total: int = 0
    built: int = 0
    seconds: float = 0.0
    render_seconds: float = 0.0
    forward_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.built if self.built else 0.0


class FeatureCache:
    """The frozen front's output per ImageSpec, as fp16 .npz files on disk.

    Entries live under ``root/<fingerprint>/``; the fingerprint hashes the backbone, the
    number of frozen blocks, the frozen weights and the preprocessing, and each entry's
    key hashes the spec and the file's bytes. Any change to what the
    features depend on therefore lands in a fresh location instead of being read stale.
    Writes are atomic (temp file + os.replace), so concurrent ranks and killed runs never
    leave a half-written entry.
    """

    def __init__(self, root: str | os.PathLike, model, prep: Preprocessing, batch_size: int = 8):
        self.model = model
        self.prep = prep
        self.batch_size = batch_size
        self.stride = frozen_stride(model, prep)
        # pool_stages and pool_head change only what runs after the front, so runs that
        # differ in them share one cache (and v1's fingerprints, which never had the keys,
        # stay put).
        kwargs = {k: v for k, v in model.model_kwargs.items()
                  if k not in ("pool_stages", "pool_head")}
        identity = {
            "model_kwargs": kwargs,
            "frozen_weights": weights_digest(model.frozen_modules()),
            "preprocessing": json.loads(prep.to_json()),
            "format": 1,
        }
        self.fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        self.dir = Path(root) / self.fingerprint[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        info = self.dir / "cache_info.json"
        if not info.exists():
            _atomic_write_bytes(info, json.dumps(identity, indent=2, sort_keys=True).encode())

    def key(self, spec: ImageSpec) -> str:
        payload = json.dumps({**asdict(spec), "content": file_digest(spec.path)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def path(self, spec: ImageSpec) -> Path:
        key = self.key(spec)
        return self.dir / key[:2] / f"{key}.npz"

    def load(self, spec: ImageSpec):
        """(features, labels); features are the global view's map, or a tuple of it and what
        the model takes besides (``forward_trainable``'s order: detail map, exposure stats)."""
        path = self.path(spec)
        try:
            with np.load(path) as data:
                views = [data[k] for k in ("feats", "detail", "exposure") if k in data]
                return (tuple(views) if len(views) > 1 else views[0]), data["labels"]
        except FileNotFoundError as exc:
            raise RuntimeError(f"feature cache has no entry for {spec} ({path}); "
                               "build it first (FeatureCache.build)") from exc

    def missing(self, specs: Iterable[ImageSpec]) -> list[ImageSpec]:
        unique = list(dict.fromkeys(specs))
        return [s for s in unique if not self.path(s).exists()]

    def build(self, specs: Iterable[ImageSpec], *, rank: int = 0, world_size: int = 1,
              progress: bool = True, desc: str = "caching features") -> CacheStats:
        """Compute and store every missing entry; each rank builds every world_size-th."""
        specs = list(dict.fromkeys(specs))
        # Shard the full list, then skip what exists: filtering first would make the shards
        # depend on how far the other ranks have already got.
        todo = sorted(self.missing(specs[rank::world_size]), key=self._size_key)
        stats = CacheStats(total=len(specs))
        if not todo:
            return stats
        from tqdm import tqdm

        device = _device_of(self.model)
        was_training = self.model.training
        self.model.eval()
        start = time.perf_counter()
        bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress, leave=False)
        buffer: list[tuple[ImageSpec, np.ndarray, np.ndarray]] = []

        view = getattr(self.model, "detail_view", None)

        def tensors_of(pixels):
            if view is None:
                return torch.from_numpy(normalise(pixels, self.prep))
            return (torch.from_numpy(normalise(pixels[0], self.prep)),
                    torch.from_numpy(normalise(pixels[1], view)))

        def front(x):
            return self.model.forward_frozen(x.to(device)).float().cpu().numpy()

        exposure = getattr(self.model, "exposure", None)

        def flush():
            t0 = time.perf_counter()
            tensors = [tensors_of(pixels) for _, pixels, _ in buffer]
            for positions, x in group_by_shape(tensors):
                image = x[0] if view is not None else x
                feats = front(image)
                detail = front(x[1]) if view is not None else None
                exposure_stats = None
                if exposure is not None:
                    with torch.no_grad():
                        exposure_stats = exposure.stats(image.to(device)).cpu().numpy()
                for j, i in enumerate(positions.tolist()):
                    spec, _, labels = buffer[i]
                    self._write(spec, feats[j].astype(np.float16), labels,
                                None if detail is None else detail[j].astype(np.float16),
                                None if exposure_stats is None else exposure_stats[j])
            stats.forward_seconds += time.perf_counter() - t0
            stats.built += len(buffer)
            bar.update(len(buffer))
            buffer.clear()

        def timed_render(spec):
            t0 = time.perf_counter()
            if view is None:
                pixels, labels = render(spec, self.prep)
            else:
                pixels, labels = render_views(spec, self.prep, view)
            return spec, pixels, labels, time.perf_counter() - t0

        try:
            for spec, rgb, labels, seconds in prefetch(timed_render, todo, ahead=2 * self.batch_size):
                stats.render_seconds += seconds
                buffer.append((spec, rgb, labels))
                if len(buffer) >= self.batch_size:
                    flush()
            if buffer:
                flush()
        finally:
            bar.close()
            self.model.train(was_training)
        stats.seconds = time.perf_counter() - start
        return stats

    def _size_key(self, spec: ImageSpec) -> tuple[int, int]:
        """The model-resolution size, from the file header: sorting by it fills batches with
        equal shapes, and each new shape costs the CPU kernels a one-off set-up."""
        from PIL import Image

        try:
            with Image.open(spec.path) as image:
                return self.prep.target_size(*image.size)
        except (OSError, ValueError):
            return (0, 0)  # unreadable: render() reports it with the file's name

    def _write(self, spec: ImageSpec, feats: np.ndarray, labels: np.ndarray,
               detail: np.ndarray | None = None, exposure: np.ndarray | None = None) -> None:
        path = self.path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        arrays = {"feats": feats, "labels": labels.astype(np.float32)}
        if detail is not None:
            arrays["detail"] = detail
        if exposure is not None:
            arrays["exposure"] = exposure.astype(np.float32)
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
