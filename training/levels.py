"""Absolute quality levels for synthetic distortions, from the reference page's semantics.

Ranking margins only say that a distortion costs *something*; v1 learnt that, and its
exposure, JPEG and noise costs stayed small. Model v2 is taught levels instead: each
distortion at a known strength gets a target on the page's scale (DESIGN.md "Score
semantics"), interpolated between the anchors below.

Strengths are in the photo's **own pixels** (blur sigma, motion length), in sRGB units
(noise), in JPEG quality or in stops, never in the augmentation library's
resolution-relative severities: a Gaussian blur of sigma 3 px is plainly soft at 100 %
whether the photo is 500 or 5,000 px wide, which is what a photographer judging a photo
at full size sees. The distortions themselves are the augmentation library's
(:mod:`iqa.training.augment`); :func:`severity_for` converts a native strength into the
library's severity for one photo.

Anchors, from the page's table: very poor < 0.25 (heavy blur), poor to decent 0.25-0.45
(strong light distortions, underexposure, strong blur), decent to good 0.45-0.6 (slight
blur, overexposure, minor noise), good to very good 0.6-0.85 (minor defects), very good
> 0.85 (clean). Its examples: blurry 0.14 and 0.25, overexposed 0.51, underexposed 0.39,
night light distortions 0.44.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .augment import DISTORTIONS
from .augment.base import REFERENCE_SHORTER_SIDE, pixel_scale
from .augment.blur import DEFOCUS_RADIUS, GAUSSIAN_SIGMA
from .augment.compression import JPEG_QUALITY
from .augment.exposure import CONTRAST_LOSS, OVEREXPOSURE_EV, UNDEREXPOSURE_EV
from .augment.light import FLARE_STRENGTH
from .augment.motion import MOTION_LENGTH
from .augment.noise import GAUSSIAN_NOISE_STD

# A clean, well-exposed photo: "very good to perfect".
CLEAN_TARGET = 0.92

# Every distortion a synthetic copy can carry, in a fixed order: batches name a copy's
# distortion by its position here (loss.level_weights).
LEVEL_DISTORTIONS: tuple[str, ...] = tuple(sorted(DISTORTIONS))


@dataclass(frozen=True)
class Level:
    """One distortion's strength -> target curve."""

    distortion: str  # name in iqa.training.augment.DISTORTIONS
    unit: str  # what `strengths` measure
    strengths: tuple[float, ...]  # increasing
    targets: tuple[float, ...]  # page-scale score at each strength, decreasing
    # The library scales this parameter with the photo's size (pixel_scale): blur and
    # motion lengths, and noise std too (the library keeps noise equally visible after a
    # downscale). Native strengths are divided by that scale to find the severity.
    scaled: bool
    table: object  # the library's severity -> parameter table
    # Strengths whose damage a 12-megapixel photo's downscaled global view hides: these
    # are also trained with a clean global view and a distorted detail view.
    hidden: tuple[float, ...] = ()

    def target(self, strength: float) -> float:
        return float(np.interp(strength, (0.0, *self.strengths), (CLEAN_TARGET, *self.targets)))


LEVELS: dict[str, Level] = {
    lv.distortion: lv
    for lv in (
        Level("gaussian_blur", "sigma, px", (0.8, 1.5, 2.2, 3.0, 4.4, 6.5, 10.0),
              (0.84, 0.68, 0.54, 0.40, 0.22, 0.14, 0.08), True, GAUSSIAN_SIGMA,
              hidden=(1.5, 3.0, 4.4)),
        Level("defocus_blur", "disk radius, px", (1.5, 3.0, 5.0, 8.0, 12.0, 18.0),
              (0.78, 0.58, 0.40, 0.22, 0.14, 0.08), True, DEFOCUS_RADIUS, hidden=(3.0, 5.0)),
        Level("motion_blur", "path length, px", (3.0, 6.0, 10.0, 16.0, 25.0, 40.0),
              (0.80, 0.62, 0.45, 0.30, 0.20, 0.12), True, MOTION_LENGTH, hidden=(6.0, 10.0)),
        Level("gaussian_noise", "std, sRGB 0..1", (0.012, 0.024, 0.047, 0.08, 0.13, 0.2),
              (0.86, 0.76, 0.58, 0.46, 0.34, 0.22), True, GAUSSIAN_NOISE_STD,
              hidden=(0.047, 0.08)),
        # JPEG quality falls as damage rises: strengths are 100 - quality.
        Level("jpeg", "100 - quality", (25.0, 50.0, 70.0, 80.0, 88.0, 92.0, 95.0, 97.0),
              (0.88, 0.80, 0.70, 0.58, 0.45, 0.36, 0.26, 0.18), False, JPEG_QUALITY,
              hidden=(80.0, 88.0, 92.0)),
        Level("underexposure", "stops", (0.5, 1.0, 1.5, 2.0, 3.0, 4.4),
              (0.80, 0.65, 0.52, 0.44, 0.33, 0.20), False, UNDEREXPOSURE_EV),
        Level("overexposure", "stops", (0.5, 1.0, 1.5, 2.2, 3.2),
              (0.76, 0.60, 0.50, 0.40, 0.28), False, OVEREXPOSURE_EV),
        Level("flare", "strength", (0.05, 0.15, 0.3, 0.6, 1.0),
              (0.80, 0.68, 0.56, 0.46, 0.38), False, FLARE_STRENGTH),
        Level("low_contrast", "share lost", (0.35, 0.6, 0.8, 0.93),
              (0.74, 0.58, 0.46, 0.36), False, CONTRAST_LOSS),
    )
}

# A version whose damage only the detail view shows (``Level.hidden``) stands for a large
# photo whose global view hides it: its ``detail_scale`` is that of a 4000 x 3000 photo
# (global view 512 x 384), whatever the size of the clean photo it was made from.
HIDDEN_VERSION_SCALE = 4000 / 512

# Shallow depth of field is a style, not a defect: whole-frame blur must cost more.
BACKGROUND_BLUR_TARGETS = {0.5: 0.86, 1.0: 0.80}
# Night scenes: 1.3 stops down, then flare around the lights (the page's example: 0.44).
NIGHT_UNDEREXPOSURE_SEVERITY = 0.3
NIGHT_FLARE_TARGETS = {0.5: 0.46, 0.7: 0.42, 0.9: 0.38}


def severity_for(level: Level, strength: float, image: np.ndarray) -> float:
    """The library severity that applies ``strength`` (in ``level.unit``) to ``image``."""
    if level.distortion == "jpeg":
        parameter = 100.0 - strength
    else:
        parameter = strength / pixel_scale(image) if level.scaled else strength
    values = np.asarray(level.table.values, dtype=np.float64)
    knots = np.asarray(level.table.knots, dtype=np.float64)
    if values[-1] < values[0]:  # decreasing table (JPEG quality)
        values, knots = values[::-1], knots[::-1]
    if parameter > values[-1]:
        raise ValueError(
            f"{level.distortion} strength {strength} {level.unit} is beyond the library's "
            f"severity-1 end point for a {image.shape[1]}x{image.shape[0]} photo"
        )
    return float(np.interp(parameter, values, knots))


def family_of(distortion: str) -> str:
    return DISTORTIONS[distortion].family


def target_for_severity(distortion: str | None, severity: float,
                        native_shorter_side: int) -> float | None:
    """Page-scale target of a photo distorted by the library's ``severity`` *after* the
    resize to model resolution (v1's synthetic groups), or None without a level.

    A scaled parameter applied at model resolution spans ``native / model`` times more of
    the photo's own pixels, and the library scales it by the model image's size, so the
    native strength is ``table(severity) * native_shorter_side / REFERENCE_SHORTER_SIDE``
    whatever the model resolution. ``None`` (the original) is a clean photo.
    """
    if distortion is None:
        return CLEAN_TARGET
    if distortion == "background_blur":
        grid = sorted(BACKGROUND_BLUR_TARGETS.items())
        return float(np.interp(severity, (0.0, *(k for k, _ in grid)),
                               (CLEAN_TARGET, *(v for _, v in grid))))
    level = LEVELS.get(distortion)
    if level is None:
        return None  # no anchor in the page's table: ranking only
    parameter = level.table(severity)
    if level.distortion == "jpeg":
        strength = 100.0 - parameter
    elif level.scaled:
        strength = parameter * native_shorter_side / REFERENCE_SHORTER_SIDE
    else:
        strength = parameter
    return level.target(strength)


def level_to_mos_prior(train_mos: np.ndarray, high_quantile: float = 0.95,
                       low_quantile: float = 0.02) -> tuple[float, float]:
    """(a, b) with MOS ~= a + b * level: page 0 -> a low MOS quantile, clean -> a high one.

    Raters of LIVE Challenge rarely give the top of the scale (its best image has MOS 92),
    so a clean photo is placed where the best rated photos are, and the worst level where
    the worst are. Fitted on training MOS only.
    """
    low = float(np.quantile(train_mos, low_quantile))
    high = float(np.quantile(train_mos, high_quantile))
    return low, (high - low) / CLEAN_TARGET


def rated_training_mos(checkpoint: dict, split_file: Path, data_root: Path | None = None
                       ) -> np.ndarray:
    """The MOS of the run's rated training photos: the rows of its split file in the run's
    training split, matched to the dataset on their path relative to it (two photos of one
    name in different folders stay apart). Without the split file there is no telling
    training from validation photos, so it is refused rather than guessed."""
    from .calibrate import run_data_path
    from .datasets import load_dataset
    from .datasets.splits import apply_split, load_split_csv

    data = (checkpoint.get("config") or {}).get("data") or {}
    if not data.get("dataset"):
        raise ValueError("the run trained on synthetic photos only (data.dataset is null): "
                         "the penalty's level prior needs the MOS of its rated training photos")
    if not split_file.is_file():
        raise ValueError(f"no split file at {split_file}: the level prior is fitted on the "
                         "run's training photos only, which its split.csv names; pass "
                         "--split-file (the split.csv `iqa train` wrote in the run folder)")
    root = run_data_path(checkpoint, "data.root", data_root)
    if root is None or not root.is_dir():
        where = " under --data-root" if data_root else ""
        hint = "" if data_root else "; pass --data-root if the data moved"
        raise ValueError(f"the run's data.root{where} is not a folder: {root}{hint}")
    records = load_dataset(data["dataset"], root, **(data.get("options") or {}))
    assignment = load_split_csv(split_file)
    train_split = (data.get("split") or {}).get("train", "train")
    listed = sum(split == train_split for split in assignment.values())
    train = [r for r in apply_split(records, assignment, strict=False) if r.split == train_split]
    if not listed:
        raise ValueError(f"{split_file} has no '{train_split}' row: not the split of this run")
    if len(train) < listed:
        raise ValueError(f"{listed - len(train)} of the {listed} '{train_split}' rows of "
                         f"{split_file} match no {data['dataset']} image under {root}: not "
                         "this run's split, or the dataset changed")
    return np.asarray([r.mos for r in train], dtype=np.float64)

