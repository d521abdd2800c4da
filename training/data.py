"""What each training step sees and where its tensors come from.

Three layers, each a pure function of its inputs so a resumed or distributed run sees the
exact same data:

1. ``ImageSpec``: one image the network sees, before cropping: a file, optionally a
   seeded synthetic distortion of it, optionally mirrored. ``render`` turns it into
   pixels at model resolution through the *same* decode and resize as inference.
2. ``plan_epoch(seed, epoch, ...)``: the epoch's steps (which authentic records and which
   synthetic groups, with their flips and crop positions). A function of (seed, epoch)
   only, so a resumed run skips the consumed steps and ranks shard the same list.
3. Sources that load a spec as a tensor: ``ImageSource`` renders and normalises pixels
   (the on-the-fly path), ``FeatureSource`` reads the frozen front's output from the
   ``FeatureCache`` (``iqa.training.front_cache``, the default CPU path).
   ``StepDataset`` crops and collates a step.

Crops are placed on a grid of the frozen front's stride, so a crop of the cached feature
map and a crop of the pixels followed by the frozen front cover the same window.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from iqa.inference.contract import FACTOR_NAMES, DetailView, Preprocessing
from iqa.inference.preprocess import decode_for_model as inference_decode
from iqa.inference.preprocess import normalise, resize_for_model

if TYPE_CHECKING:  # front_cache imports this module
    from .front_cache import FeatureCache

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
COMPOSE = "compose"


# --------------------------------------------------------------------------- image specs


@dataclass(frozen=True)
class ImageSpec:
    """One image as the network sees it (before the crop)."""

    path: str
    flip: bool = False
    distortion: str | None = None  # a DISTORTIONS name, COMPOSE, or None for the file as is
    severity: float = 0.0
    seed: int = 0
    max_ops: int = 3  # for COMPOSE

    def mirrored(self, flip: bool = True) -> ImageSpec:
        return replace(self, flip=flip)


def decode_for_model(path: str | os.PathLike, prep: Preprocessing) -> np.ndarray:
    """HxWx3 uint8 at model resolution, through inference's own decode and resize."""
    return np.asarray(resize_for_model(inference_decode(path, prep), prep))


def render(spec: ImageSpec, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """(HxWx3 uint8 pixels, factor label vector) of a spec, at model resolution.

    Distortions are applied after the resize, at the resolution the model judges, so a
    severity means the same thing whatever the size of the source photo.
    """
    return _distorted(decode_for_model(spec.path, prep), spec)


def render_views(spec: ImageSpec, prep: Preprocessing, view: DetailView
                 ) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """((global view, detail mosaic) as HxWx3 uint8, factor labels) of a spec, for a
    model with a detail view.

    Here the distortion is applied to the photo at its **own** resolution, before any
    resize, and both views are cut from the result through inference's
    ``to_model_pixels``: the mosaic must show a 3 px blur as 3 px, whatever the photo's
    size. The library scales its strengths with the image, so a severity still means the
    same visible damage on the global view.
    """
    from PIL import Image

    from iqa.inference.contract import DETAIL_INPUT, INPUT_NAME
    from iqa.inference.decode import decode_image
    from iqa.inference.preprocess import to_model_pixels

    native = np.asarray(decode_image(spec.path, max_pixels=None))  # our own training files
    rgb, labels = _distorted(native, spec)
    pixels = to_model_pixels(Image.fromarray(rgb), prep, view)
    return (pixels[INPUT_NAME], pixels[DETAIL_INPUT]), labels


def _distorted(rgb: np.ndarray, spec: ImageSpec) -> tuple[np.ndarray, np.ndarray]:
    """The spec's distortion and mirror applied to ``rgb``, and its factor labels."""
    labels = np.zeros(len(FACTOR_NAMES), dtype=np.float32)
    if spec.distortion is not None:
        from iqa.training.augment import DISTORTIONS, compose, distort_labelled, labels_to_vector

        rng = np.random.default_rng(spec.seed)
        if spec.distortion == COMPOSE:
            rgb, applied = compose(rgb, rng, min_ops=1, max_ops=spec.max_ops)
        else:
            # The label is the severity, scaled down for local distortions (background blur).
            rgb, label = distort_labelled(rgb, spec.distortion, spec.severity, rng)
            applied = {DISTORTIONS[spec.distortion].family: label}
        labels = np.asarray(labels_to_vector(applied), dtype=np.float32)
    if spec.flip:
        rgb = rgb[:, ::-1]
    return np.ascontiguousarray(rgb), labels


# ------------------------------------------------------------------------ synthetic pool


@dataclass(frozen=True)
class SyntheticGroup:
    """Copies of one pristine photo whose quality order is known.

    ``members[0]`` is the original. ``pairs`` are (better, worse) member indices: the
    worse one must score below the better one by a margin. No member has an absolute MOS;
    ``targets`` are their levels on the reference page's scale (None where the page's table
    has no anchor), which ``loss.level_weight`` can teach (:mod:`iqa.training.levels`).
    """

    members: tuple[ImageSpec, ...]
    pairs: tuple[tuple[int, int], ...]
    targets: tuple[float | None, ...] = ()


def list_photos(
    root: str | os.PathLike,
    max_photos: int | None = None,
    seed: int = 0,
    subsets: Sequence[str] | None = None,
) -> list[Path]:
    """Image files under ``root`` (recursive). ``subsets`` keeps only these sub-folders of
    ``root`` (e.g. the collections whose licence allows shipping derived weights). With
    ``max_photos``, a seeded, spread-out subset (hash order, so it draws from every
    sub-collection rather than the first folder)."""
    from iqa.training.config import ConfigError

    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"synthetic.root is not a folder: {root}")
    folders = [root / name for name in subsets] if subsets else [root]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise ConfigError(f"synthetic.subsets: no such folder(s): {', '.join(missing)}")
    photos = sorted(
        p
        for folder in folders
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not photos:
        raise ConfigError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    if max_photos is not None and len(photos) > max_photos:
        photos = sorted(photos, key=lambda p: _stable_hash(seed, p.relative_to(root).as_posix()))
        photos = sorted(photos[: int(max_photos)])
    return photos


def build_synthetic_pool(photos: Sequence[Path], root: str | os.PathLike, syn: dict) -> list[SyntheticGroup]:
    """The fixed, seeded pool of synthetic groups: per photo, ``groups_per_photo`` groups of
    (original, weak, strong) copies of one distortion, and ``composed_per_photo`` pairs of
    (original, compose()d copy). Seeded per photo by its path under ``root``, so adding a
    photo never changes the others' variants.
    """
    from iqa.training.augment import DISTORTIONS

    names = sorted(syn["distortions"] or DISTORTIONS)
    unknown = [n for n in names if n not in DISTORTIONS]
    if unknown:
        from iqa.training.config import ConfigError

        raise ConfigError(
            f"synthetic.distortions: unknown {unknown}; known: {', '.join(sorted(DISTORTIONS))}"
        )
    weak_lo, weak_hi = (float(v) for v in syn["severity_weak"])
    gap_lo, gap_hi = (float(v) for v in syn["severity_gap"])
    pool = []
    for photo in photos:
        rel = Path(photo).relative_to(root).as_posix() if Path(photo).is_relative_to(root) else str(photo)
        rng = np.random.default_rng([int(syn["seed"]), _stable_hash(0, rel) % (2**32)])
        original = ImageSpec(str(photo))
        shorter = _shorter_side(photo)
        for _ in range(int(syn["groups_per_photo"])):
            name = names[int(rng.integers(len(names)))]
            weak = float(rng.uniform(weak_lo, weak_hi))
            strong = min(1.0, weak + float(rng.uniform(gap_lo, gap_hi)))
            # One seed for both copies: the same noise pattern or flare position at two
            # strengths, so the pair differs in severity only.
            seed = int(rng.integers(2**31))
            members = (original,
                       replace(original, distortion=name, severity=weak, seed=seed),
                       replace(original, distortion=name, severity=strong, seed=seed))
            pool.append(SyntheticGroup(members=members, pairs=((0, 1), (0, 2), (1, 2)),
                                       targets=_level_targets(members, shorter)))
        for _ in range(int(syn["composed_per_photo"])):
            seed = int(rng.integers(2**31))
            composed = replace(original, distortion=COMPOSE, seed=seed,
                               max_ops=int(syn["compose_max_ops"]))
            members = (original, composed)
            pool.append(SyntheticGroup(members=members, pairs=((0, 1),),
                                       targets=_level_targets(members, shorter)))
    return pool


def _shorter_side(path: str | os.PathLike) -> int:
    """The photo's shorter side from its header (level targets are in its own pixels)."""
    from PIL import Image

    with Image.open(path) as image:
        return min(image.size)


def _level_targets(members: Sequence[ImageSpec], shorter_side: int) -> tuple[float | None, ...]:
    from .levels import target_for_severity

    return tuple(target_for_severity(m.distortion, m.severity, shorter_side)
                 if m.distortion != COMPOSE else None for m in members)


def _stable_hash(seed: int, text: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{text}".encode()).digest()[:8], "little")


# --------------------------------------------------------------------------- epoch plans


@dataclass(frozen=True)
class PlannedItem:
    """An authentic record (``index`` into the train records) or a synthetic group (``index``
    into the pool), with its mirror flag and crop position (fractions in [0, 1))."""

    index: int
    flip: bool
    u: float
    v: float


@dataclass(frozen=True)
class StepPlan:
    authentic: tuple[PlannedItem, ...] = ()
    synthetic: tuple[PlannedItem, ...] = ()

    def shard(self, rank: int, world_size: int) -> StepPlan:
        """This rank's share of the step (every world_size-th item)."""
        return StepPlan(self.authentic[rank::world_size], self.synthetic[rank::world_size])

    @property
    def size(self) -> int:
        return len(self.authentic) + len(self.synthetic)


def steps_per_epoch(num_authentic: int, batch_size: int, groups_per_epoch: int,
                    num_groups: int) -> int:
    if num_authentic:
        # Drop the last partial batch: correlation and rank losses need a real batch, and
        # every epoch then has the same number of steps.
        return max(1, num_authentic // batch_size)
    if not num_groups:
        return 0
    return max(1, math.ceil(groups_per_epoch / max(1, batch_size // 3)))


def plan_epoch(
    seed: int,
    epoch: int,
    *,
    num_authentic: int,
    num_groups: int,
    batch_size: int,
    groups_per_epoch: int,
    flip_authentic: bool = True,
    flip_synthetic: bool = False,
) -> list[StepPlan]:
    """The steps of one epoch; a function of (seed, epoch) and the sizes only."""
    rng = np.random.default_rng([int(seed), int(epoch), 0x1A2B])
    steps = steps_per_epoch(num_authentic, batch_size, groups_per_epoch, num_groups)
    order = rng.permutation(num_authentic)[: steps * batch_size] if num_authentic else []
    authentic = [
        PlannedItem(int(i), bool(flip_authentic and rng.random() < 0.5),
                    float(rng.random()), float(rng.random()))
        for i in order
    ]
    synthetic: list[PlannedItem] = []
    if num_groups and groups_per_epoch:
        # Without replacement while the pool lasts: every group once before any repeats.
        picks = np.concatenate([rng.permutation(num_groups)
                                for _ in range(math.ceil(groups_per_epoch / num_groups))])
        synthetic = [
            PlannedItem(int(i), bool(flip_synthetic and rng.random() < 0.5),
                        float(rng.random()), float(rng.random()))
            for i in picks[:groups_per_epoch]
        ]
    auth_chunks = [authentic[i * batch_size:(i + 1) * batch_size] for i in range(steps)]
    syn_chunks = np.array_split(np.arange(len(synthetic)), steps) if steps else []
    return [
        StepPlan(tuple(auth_chunks[i]), tuple(synthetic[j] for j in syn_chunks[i]))
        for i in range(steps)
    ]


# --------------------------------------------------------------------------- sources


def window(length: int, size: int, position: float, align: int) -> tuple[int, int]:
    """(offset, size) of a crop window of ``size`` along an axis of ``length``, its offset on
    a grid of ``align``, chosen by ``position`` in [0, 1)."""
    size = min(size, length)
    slots = (length - size) // align + 1
    return min(int(position * slots), slots - 1) * align, size


# A spec's tensor: the global view alone, or a tuple of it and what the model takes
# besides, in forward_trainable's order: (global, detail mosaic), (global, exposure
# statistics) or (global, detail, exposure statistics). Crops apply to the global view
# only: the mosaic already samples the frame.
Views = torch.Tensor | tuple[torch.Tensor, ...]


class ImageSource:
    """Specs rendered to normalised pixels on the fly (GPUs, full fine-tuning)."""

    from_features = False

    def __init__(self, prep: Preprocessing, stride: int, view: DetailView | None = None):
        self.prep = prep
        self.view = view
        self.stride = stride  # crops are aligned to the frozen front's stride
        self.unit = 1  # crop sizes are in pixels

    def load(self, spec: ImageSpec) -> tuple[Views, np.ndarray]:
        if self.view is not None:
            (image, detail), labels = render_views(spec, self.prep, self.view)
            return (torch.from_numpy(normalise(image, self.prep)),
                    torch.from_numpy(normalise(detail, self.view))), labels
        rgb, labels = render(spec, self.prep)
        return torch.from_numpy(normalise(rgb, self.prep)), labels

    def crop(self, x: Views, crop_px: int | None, u: float, v: float) -> Views:
        if isinstance(x, tuple):  # only the global view is cropped
            return (self.crop(x[0], crop_px, u, v), *x[1:])
        if not crop_px:
            return x
        oy, h = window(x.shape[-2], crop_px, u, self.stride)
        ox, w = window(x.shape[-1], crop_px, v, self.stride)
        return x[..., oy:oy + h, ox:ox + w]


class FeatureSource:
    """Specs read from the frozen-feature cache (the default CPU path)."""

    from_features = True

    def __init__(self, cache: FeatureCache):
        self.cache = cache
        self.stride = cache.stride

    def load(self, spec: ImageSpec) -> tuple[Views, np.ndarray]:
        feats, labels = self.cache.load(spec)
        if isinstance(feats, tuple):
            return tuple(torch.from_numpy(f.astype(np.float32)) for f in feats), labels
        return torch.from_numpy(feats.astype(np.float32)), labels

    def crop(self, x: Views, crop_px: int | None, u: float, v: float) -> Views:
        # Only the global view is cropped; the exposure statistics stay the whole photo's,
        # which is what inference computes them on.
        if isinstance(x, tuple):
            return (self.crop(x[0], crop_px, u, v), *x[1:])
        if not crop_px:
            return x
        cells = max(1, crop_px // self.stride)
        oy, h = window(x.shape[-2], cells, u, 1)
        ox, w = window(x.shape[-1], cells, v, 1)
        return x[..., oy:oy + h, ox:ox + w]


def group_by_shape(tensors: Sequence[Views]) -> list[tuple[torch.Tensor, Views]]:
    """[(positions, stacked tensors)] for each distinct shape, so odd-sized images still batch.

    Tuples of views are grouped by the global view's shape (every mosaic and statistics
    vector has the same) and stacked view by view.
    """
    by_shape: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        shape = tuple(t[0].shape) if isinstance(t, tuple) else tuple(t.shape)
        by_shape.setdefault(shape, []).append(i)

    def stack(idx: list[int]) -> Views:
        if isinstance(tensors[idx[0]], tuple):
            return tuple(torch.stack([tensors[i][k] for i in idx])
                         for k in range(len(tensors[idx[0]])))
        return torch.stack([tensors[i] for i in idx])

    return [(torch.tensor(idx, dtype=torch.long), stack(idx)) for idx in by_shape.values()]


def to_device(x: Views, device: torch.device) -> Views:
    if isinstance(x, (tuple, list)):  # a DataLoader hands pairs back as lists
        return tuple(t.to(device, non_blocking=True) for t in x)
    return x.to(device, non_blocking=True)


class StepDataset(Dataset):
    """Item i = the collated batch of step i of an epoch plan (for this rank's shard).

    A batch holds ``inputs`` (a list of (positions, tensor) shape groups), ``n`` items in
    all, and the index tensors ``training_loss`` reads (see iqa.training.losses).
    """

    def __init__(self, steps: Sequence[StepPlan], records: Sequence, pool: Sequence[SyntheticGroup],
                 source, crop_px: int | None, rank: int = 0, world_size: int = 1):
        self.steps = list(steps)
        self.records = records
        self.pool = pool
        self.source = source
        self.crop_px = crop_px
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> dict:
        step = self.steps[i].shard(self.rank, self.world_size)
        tensors, mos, labels = [], [], []
        for item in step.authentic:
            spec = ImageSpec(str(self.records[item.index].path), flip=item.flip)
            x, _ = self.source.load(spec)
            tensors.append(self.source.crop(x, self.crop_px, item.u, item.v))
            mos.append(float(self.records[item.index].mos))
        num_auth = len(tensors)
        better, worse, gap, originals, levels, kinds = [], [], [], [], [], []
        for item in step.synthetic:
            group = self.pool[item.index]
            base = len(tensors)
            levels.extend(float("nan") if t is None else t
                          for t in (group.targets or [None] * len(group.members)))
            kinds.extend(_distortion_ids().get(m.distortion, -1) for m in group.members)
            group_labels = []
            for member in group.members:
                x, lab = self.source.load(member.mirrored(item.flip))
                # One window for the whole group: the ranking compares the same content.
                tensors.append(self.source.crop(x, self.crop_px, item.u, item.v))
                group_labels.append(lab)
            labels.extend(group_labels)
            originals.append(base)
            for b, w in group.pairs:
                better.append(base + b)
                worse.append(base + w)
                gap.append(max(0.0, float(group_labels[w].max() - group_labels[b].max())))
        n = len(tensors)
        k = len(FACTOR_NAMES)
        return {
            "inputs": group_by_shape(tensors),
            "n": n,
            "auth_index": torch.arange(num_auth, dtype=torch.long),
            "mos": torch.tensor(mos, dtype=torch.float32),
            "syn_index": torch.arange(num_auth, n, dtype=torch.long),
            "factor_target": torch.from_numpy(np.stack(labels)) if labels else torch.zeros(0, k),
            "pair_better": torch.tensor(better, dtype=torch.long),
            "pair_worse": torch.tensor(worse, dtype=torch.long),
            "pair_gap": torch.tensor(gap, dtype=torch.float32),
            "original_index": torch.tensor(originals, dtype=torch.long),
            "level_target": torch.tensor(levels, dtype=torch.float32),
            "level_distortion": torch.tensor(kinds, dtype=torch.long),
        }


@functools.cache
def _distortion_ids() -> dict[str, int]:
    from .levels import LEVEL_DISTORTIONS

    return {name: i for i, name in enumerate(LEVEL_DISTORTIONS)}


def batch_to(batch: dict, device: torch.device) -> dict:
    out = dict(batch)
    out["inputs"] = [(pos.to(device), to_device(x, device)) for pos, x in batch["inputs"]]
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=True)
    return out


# --------------------------------------------------------------------------- loading


def prefetch(fn: Callable, items: Sequence, ahead: int = 8, workers: int = 2) -> Iterator:
    """``map(fn, items)`` in order, computed by a thread pool at most ``ahead`` items ahead.

    Decoding, resizing and distorting release the GIL (Pillow, OpenCV, NumPy), so they
    overlap with the network's forward pass without holding every image in memory.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        it = iter(items)
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
