"""Apply one distortion by name, or a random chain of them from distinct families."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from iqa.inference.contract import FACTOR_NAMES

from .base import DISTORTIONS, check_image

# The order in which a chain is applied follows the imaging pipeline: the scene's light and
# exposure first, then the optics and the camera's motion, then sensor noise, and lossy
# encoding last (a JPEG of a noisy image, not noise sprinkled over JPEG blocks).
FAMILY_ORDER: tuple[str, ...] = (
    "low_contrast",
    "light_distortion",
    "underexposure",
    "overexposure",
    "blur",
    "motion_blur",
    "noise",
    "compression",
)
assert sorted(FAMILY_ORDER) == sorted(FACTOR_NAMES), "every factor family needs a stage"

# Families that contradict each other are never combined in one chain.
EXCLUSIVE_FAMILIES: tuple[frozenset[str], ...] = (frozenset({"underexposure", "overexposure"}),)

Plan = list[tuple[str, float]]


def distortions_of(family: str) -> list[str]:
    return [name for name, d in DISTORTIONS.items() if d.family == family]


def distort(image: np.ndarray, name: str, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Apply the distortion ``name`` at ``severity`` in [0, 1] (0 returns an exact copy)."""
    return distort_labelled(image, name, severity, rng)[0]


def distort_labelled(
    image: np.ndarray, name: str, severity: float, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Like ``distort``, and also the family label: severity, scaled down for local ones."""
    if name not in DISTORTIONS:
        raise KeyError(f"unknown distortion {name!r}; known: {', '.join(sorted(DISTORTIONS))}")
    return DISTORTIONS[name].apply(image, severity, rng)


def sample_plan(
    rng: np.random.Generator,
    min_ops: int = 1,
    max_ops: int = 3,
    families: Iterable[str] | None = None,
    severity_range: tuple[float, float] = (0.05, 1.0),
) -> Plan:
    """Draw a chain: 1-3 distortions from distinct families with uniform severities.

    Returns ``[(name, severity), ...]`` in application order (``FAMILY_ORDER``).
    """
    allowed = list(FACTOR_NAMES) if families is None else list(dict.fromkeys(families))
    unknown = [f for f in allowed if f not in FACTOR_NAMES]
    if unknown:
        raise ValueError(f"unknown families {unknown}; known: {', '.join(FACTOR_NAMES)}")
    allowed = [f for f in allowed if distortions_of(f)]
    if not 0 <= min_ops <= max_ops:
        raise ValueError(f"need 0 <= min_ops <= max_ops, got {min_ops} and {max_ops}")
    low, high = severity_range
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"severity_range must lie within [0, 1], got {severity_range}")

    count = int(rng.integers(min_ops, max_ops + 1))
    chosen: list[str] = []
    for family in rng.permutation(allowed):
        if len(chosen) == count:
            break
        clash = any(
            family in pair and (pair - {family}) & set(chosen) for pair in EXCLUSIVE_FAMILIES
        )
        if not clash:
            chosen.append(str(family))
    chosen.sort(key=FAMILY_ORDER.index)

    plan: Plan = []
    for family in chosen:
        names = distortions_of(family)
        name = names[int(rng.integers(len(names)))]
        plan.append((name, float(rng.uniform(low, high))))
    return plan


def apply_plan(
    image: np.ndarray, plan: Sequence[tuple[str, float]], rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, float]]:
    """Apply a chain in order; return the image and the label of each family applied."""
    check_image(image)
    labels: dict[str, float] = {}
    for name, severity in plan:
        image, label = distort_labelled(image, name, severity, rng)
        family = DISTORTIONS[name].family
        if family in labels:
            raise ValueError(f"plan applies family {family!r} twice: {list(plan)}")
        labels[family] = label
    return image, labels


def compose(
    image: np.ndarray,
    rng: np.random.Generator,
    min_ops: int = 1,
    max_ops: int = 3,
    families: Iterable[str] | None = None,
    severity_range: tuple[float, float] = (0.05, 1.0),
) -> tuple[np.ndarray, dict[str, float]]:
    """Distort ``image`` with a random chain; return it and ``{family: severity label}``.

    The generator is the only source of randomness: the same generator state gives the same
    chain and the same pixels.
    """
    plan = sample_plan(rng, min_ops, max_ops, families, severity_range)
    return apply_plan(image, plan, rng)


def labels_to_vector(labels: dict[str, float]) -> np.ndarray:
    """Family labels as a float32 vector in ``FACTOR_NAMES`` order, 0 where absent."""
    unknown = set(labels) - set(FACTOR_NAMES)
    if unknown:
        raise ValueError(f"unknown families {sorted(unknown)}; known: {', '.join(FACTOR_NAMES)}")
    return np.array([labels.get(name, 0.0) for name in FACTOR_NAMES], dtype=np.float32)
