"""Samples for model v2: rated photos (MOS) and synthetic distortions with level targets.

A sample is one photo version plus what the heads learn from it. Distortions are applied
to the source photo at its own resolution, before any resize; the global view is then
downscaled from the distorted photo and the detail view cut from it unscaled, through the
same :func:`iqa.inference.preprocess.to_model_inputs` that inference uses.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iqa.inference.contract import FACTOR_NAMES
from iqa.inference.decode import decode_image

from .augment import distort, distort_labelled
from .levels import (
    BACKGROUND_BLUR_TARGETS,
    CLEAN_TARGET,
    LEVELS,
    NIGHT_FLARE_TARGETS,
    NIGHT_UNDEREXPOSURE_SEVERITY,
    family_of,
    severity_for,
)

# Sample kinds. "mos": a rated photo, target on the MOS scale; "level": a synthetic
# version of a clean photo, target on the page's scale.
MOS, LEVEL = "mos", "level"


@dataclass
class Sample:
    key: str  # unique and stable: the feature cache is keyed by it
    kind: str  # MOS or LEVEL
    target: float
    group: str  # versions of one source photo share a group (never straddle CV folds)
    factors: np.ndarray  # FACTOR_NAMES severities; NaN where unknown (rated photos)
    image: np.ndarray  # HxWx3 uint8, the photo the global view is made from
    detail_source: np.ndarray | None = None  # another version for the detail view


def _factor_vector(labels: dict[str, float] | None) -> np.ndarray:
    if labels is None:
        return np.full(len(FACTOR_NAMES), np.nan, dtype=np.float32)
    vector = np.zeros(len(FACTOR_NAMES), dtype=np.float32)
    for family, severity in labels.items():
        vector[FACTOR_NAMES.index(family)] = max(vector[FACTOR_NAMES.index(family)], severity)
    return vector


def _decode(path: Path) -> np.ndarray:
    # No size limit surprises: these are our own training files.
    return np.asarray(decode_image(path, max_pixels=None))


def rated_samples(records: Sequence, skip: frozenset[str] = frozenset()) -> Iterator[Sample]:
    """Rated photos (QualityRecord) as MOS samples, decoded at their own resolution.

    Keys in ``skip`` (already in the feature cache) are not decoded at all.
    """
    for record in records:
        key = f"{record.dataset}:{Path(record.path).name}"
        if key not in skip:
            yield Sample(key, MOS, float(record.mos), key, _factor_vector(None),
                         _decode(Path(record.path)))


def level_plan(photo_key: str, seed: int, per_distortion: int) -> list[tuple]:
    """The synthetic versions of one clean photo: (distortion, strength, hidden?) tuples.

    Each distortion gets ``per_distortion`` of its strengths, drawn per photo from a seed
    that depends only on the photo's name, so a rerun makes the same versions.
    """
    rng = np.random.default_rng([seed, zlib.crc32(photo_key.encode())])
    plan: list[tuple] = []
    for name, level in LEVELS.items():
        picks = rng.choice(len(level.strengths), size=min(per_distortion, len(level.strengths)),
                           replace=False)
        plan += [(name, level.strengths[i], False) for i in sorted(picks)]
        if level.hidden:
            plan.append((name, level.hidden[int(rng.integers(len(level.hidden)))], True))
    plan += [("background_blur", s, False) for s in BACKGROUND_BLUR_TARGETS]
    plan += [("night_flare", s, False) for s in NIGHT_FLARE_TARGETS]
    return plan


def level_samples(photos: Sequence[Path], *, seed: int = 0, per_distortion: int = 3,
                  skip: frozenset[str] = frozenset()) -> Iterator[Sample]:
    """Clean photos and their distorted versions, each with a page-scale target.

    Keys in ``skip`` (already in the feature cache) are neither decoded nor distorted.
    """
    for path in photos:
        photo_key = f"pristine:{Path(path).parent.name}/{Path(path).name}"
        plan = level_plan(photo_key, seed, per_distortion)
        keys = [f"{photo_key}|{n}@{s:g}{'|hidden' if h else ''}" for n, s, h in plan]
        if photo_key in skip and all(k in skip for k in keys):
            continue
        clean = _decode(Path(path))
        if photo_key not in skip:
            yield Sample(photo_key, LEVEL, CLEAN_TARGET, photo_key, _factor_vector({}), clean)
        for (name, strength, hidden), key in zip(plan, keys, strict=True):
            if key in skip:
                continue
            rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
            try:
                image, target, labels = _apply(clean, name, strength, rng)
            except ValueError:
                continue  # beyond the library's range for this photo's size
            if hidden:
                # A large photo: the downscaled global view hides the damage that the
                # native-resolution detail view shows.
                yield Sample(key, LEVEL, target, photo_key, _factor_vector(labels), clean,
                             detail_source=image)
            else:
                yield Sample(key, LEVEL, target, photo_key, _factor_vector(labels), image)


def _apply(clean: np.ndarray, name: str, strength: float, rng: np.random.Generator):
    if name == "background_blur":
        image, label = distort_labelled(clean, "background_blur", strength, rng)
        return image, BACKGROUND_BLUR_TARGETS[strength], {"blur": label}
    if name == "night_flare":
        dark = distort(clean, "underexposure", NIGHT_UNDEREXPOSURE_SEVERITY, rng)
        image = distort(dark, "flare", strength, rng)
        labels = {"underexposure": NIGHT_UNDEREXPOSURE_SEVERITY, "light_distortion": strength}
        return image, NIGHT_FLARE_TARGETS[strength], labels
    level = LEVELS[name]
    severity = severity_for(level, strength, clean)
    return distort(clean, name, severity, rng), level.target(strength), {family_of(name): severity}

