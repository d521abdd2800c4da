"""Pooled backbone features of every sample, computed once and kept on disk.

The v2 backbone is frozen, so a sample's features never change: the heads of every
cross-validation fold and of the final model train from this cache in seconds. The cache
is a folder of chunk files (``.npz``); an interrupted extraction resumes from the last
complete chunk, and samples already present are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from iqa.inference.contract import DETAIL_INPUT, INPUT_NAME
from iqa.inference.preprocess import to_model_inputs

CHUNK = 128


@dataclass
class FeatureTable:
    keys: list[str]
    kinds: np.ndarray  # str
    groups: np.ndarray  # str
    targets: np.ndarray  # float32 (N,)
    factors: np.ndarray  # float32 (N, K), NaN where unknown
    features: np.ndarray  # float32 (N, F)

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, mask: np.ndarray) -> FeatureTable:
        idx = np.flatnonzero(mask)
        return FeatureTable([self.keys[i] for i in idx], self.kinds[idx], self.groups[idx],
                            self.targets[idx], self.factors[idx], self.features[idx])

    @staticmethod
    def concat(tables: list[FeatureTable]) -> FeatureTable:
        return FeatureTable(
            [k for t in tables for k in t.keys],
            np.concatenate([t.kinds for t in tables]),
            np.concatenate([t.groups for t in tables]),
            np.concatenate([t.targets for t in tables]),
            np.concatenate([t.factors for t in tables]),
            np.concatenate([t.features for t in tables]),
        )


def signature(model) -> dict:
    """What the cached features depend on; a different signature means a different cache."""
    kwargs = model.model_kwargs
    return {"backbone": kwargs["backbone"], "stages": list(kwargs["stages"]),
            "prep": model.preprocessing.to_json(), "detail": model.detail_view.to_json()}


def _chunks(folder: Path) -> list[Path]:
    return sorted(folder.glob("chunk-*.npz"))


def load(folder: str | Path) -> FeatureTable:
    folder = Path(folder)
    parts = []
    for path in _chunks(folder):
        with np.load(path, allow_pickle=False) as z:
            parts.append(FeatureTable(list(z["keys"]), z["kinds"], z["groups"], z["targets"],
                                      z["factors"], z["features"]))
    if not parts:
        raise FileNotFoundError(f"no cached features in {folder}")
    return FeatureTable.concat(parts)


def extract(make_samples: Callable[[frozenset[str]], Iterable], model, folder: str | Path, *,
            total: int | None = None, desc: str = "features",
            progress: bool = True) -> FeatureTable:
    """Compute (or reuse) pooled features into ``folder``.

    ``make_samples(done)`` yields the samples whose keys are not in ``done`` (the keys
    already cached), so a resumed extraction decodes nothing twice.
    """
    import torch
    from tqdm import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sig_path = folder / "signature.json"
    sig = json.dumps(signature(model), sort_keys=True)
    if sig_path.exists() and sig_path.read_text() != sig:
        raise ValueError(f"{folder} holds features of another model or preprocessing; "
                         "use another cache folder or delete it")
    sig_path.write_text(sig)
    done = set()
    for path in _chunks(folder):
        with np.load(path, allow_pickle=False) as z:
            done.update(z["keys"].tolist())
    model.eval()
    rows: list = []
    index = len(_chunks(folder))

    def flush():
        nonlocal rows, index
        if not rows:
            return
        np.savez(folder / f".tmp-{index:05d}.npz",
                 keys=np.array([r[0] for r in rows]), kinds=np.array([r[1] for r in rows]),
                 groups=np.array([r[2] for r in rows]),
                 targets=np.array([r[3] for r in rows], dtype=np.float32),
                 factors=np.stack([r[4] for r in rows]).astype(np.float32),
                 features=np.stack([r[5] for r in rows]).astype(np.float32))
        # Renamed only when complete, so a kill never leaves a half-written chunk.
        (folder / f".tmp-{index:05d}.npz").rename(folder / f"chunk-{index:05d}.npz")
        index += 1
        rows = []

    remaining = None if total is None else max(0, total - len(done))
    with torch.inference_mode():
        for sample in tqdm(make_samples(frozenset(done)), total=remaining, desc=desc,
                           unit="img", mininterval=5, disable=not progress):
            inputs = to_model_inputs(Image.fromarray(sample.image), model.preprocessing,
                                     model.detail_view, sample.detail_source)
            feats = model.features(torch.from_numpy(inputs[INPUT_NAME])[None],
                                   torch.from_numpy(inputs[DETAIL_INPUT])[None])[0].numpy()
            rows.append((sample.key, sample.kind, sample.group, sample.target, sample.factors,
                         feats))
            done.add(sample.key)
            if len(rows) >= CHUNK:
                flush()
        flush()
    return load(folder)
