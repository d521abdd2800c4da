"""Synthetic distortions with calibrated severities in [0, 1], and a random composer.

    from iqa.training.augment import DISTORTIONS, distort, compose, labels_to_vector
    out = distort(image, "motion_blur", 0.5, np.random.default_rng(0))
    out, labels = compose(image, np.random.default_rng(0))  # e.g. {"blur": 0.42, "noise": 0.1}
    vector = labels_to_vector(labels)  # float32, FACTOR_NAMES order, 0 where absent

Importing the package registers every distortion (one module per family group).
"""

from . import blur, compression, exposure, light, motion, noise  # noqa: F401  (registration)
from .base import DISTORTIONS, REFERENCE_SHORTER_SIDE, Distortion, SeverityTable
from .compose import (
    FAMILY_ORDER,
    apply_plan,
    compose,
    distort,
    distort_labelled,
    distortions_of,
    labels_to_vector,
    sample_plan,
)

__all__ = [
    "DISTORTIONS",
    "FAMILY_ORDER",
    "REFERENCE_SHORTER_SIDE",
    "Distortion",
    "SeverityTable",
    "apply_plan",
    "compose",
    "distort",
    "distort_labelled",
    "distortions_of",
    "labels_to_vector",
    "sample_plan",
]
