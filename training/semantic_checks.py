"""The score-semantics checks a model must pass before it ships, as figures.

tests/test_shipped_model.py and tests/test_shipped_model_fullres.py assert on these
figures; ``scripts/shipped_checks.py MODEL`` prints them for any ONNX file, so every figure
quoted in MODEL_CARD.md has one command behind it.

Two photo sets, neither ever trained, calibrated or selected on:

- scikit-image's bundled, permissively licensed photos (none is in LIVE Challenge or the
  pristine set used for training), distorted by our own library at fixed seeds;
- five textured 2560x1600 photos from Debian's plasma-workspace-wallpapers (LGPL-3.0;
  ``python scripts/fetch_eval_photos.py`` puts them in .cache/eval-photos/plasma/), blurred
  and noised at their own resolution with OpenCV and numpy, independently of the training
  library.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left")
FULLRES_PHOTOS = ("EveningGlow", "ColorfulCups", "Grey", "OneStandsOut", "Path")
DEFAULT_FULLRES_DIR = Path(__file__).resolve().parents[1] / ".cache/eval-photos/plasma"

# One distortion per family of the factor table; severities in the library's [0, 1].
MONOTONE_FAMILIES = ("gaussian_blur", "motion_blur", "gaussian_noise", "jpeg", "underexposure",
                     "overexposure", "low_contrast", "flare")
SEVERITIES = (0.0, 0.25, 0.5, 0.75, 1.0)
# A rise this small between two severities is not a reversal: scores are not exact to the
# third decimal across nearly identical inputs (JPEG at neighbouring qualities, say).
MONOTONE_TOLERANCE = 0.01


def fullres_dir() -> Path:
    return Path(os.environ.get("IQA_EVAL_PHOTOS", DEFAULT_FULLRES_DIR))


def skimage_photos() -> dict[str, np.ndarray]:
    from skimage import data

    out = {}
    for name in SKIMAGE_PHOTOS:
        image = getattr(data, name)() if name != "motorcycle_left" else data.stereo_motorcycle()[0]
        out[name] = np.ascontiguousarray(image[..., :3])
    return out


def fullres_photos(folder: Path | None = None) -> list[np.ndarray]:
    from iqa.inference.decode import decode_image

    folder = folder or fullres_dir()
    return [np.asarray(decode_image(folder / f"{n}.jpg")) for n in FULLRES_PHOTOS]


def fullres_available(folder: Path | None = None) -> bool:
    folder = folder or fullres_dir()
    return all((folder / f"{n}.jpg").is_file() for n in FULLRES_PHOTOS)


def scores_of(model, images) -> np.ndarray:
    return np.array([r.score for r in model.score_many(list(images))])


def distorted(photos: dict[str, np.ndarray], name: str, severity: float,
              seed: int = 0) -> list[np.ndarray]:
    from iqa.training.augment import distort

    return [distort(img, name, severity, np.random.default_rng(seed + i))
            for i, img in enumerate(photos.values())]


def night_flare(photos: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A night scene: the photo 1.3 stops down (severity 0.3), then flare around its highlights."""
    from iqa.training.augment import distort

    night = distorted(photos, "underexposure", 0.3)
    return [distort(img, "flare", 0.7, np.random.default_rng(i)) for i, img in enumerate(night)]


def reversals(model, photos: dict[str, np.ndarray]) -> list[tuple]:
    """(family, photo, severity, next severity, score, next score) for every rise above
    MONOTONE_TOLERANCE along a family's severities; the same seed along each row."""
    from iqa.training.augment import distort

    found = []
    for name in MONOTONE_FAMILIES:
        for i, (photo_name, image) in enumerate(photos.items()):
            versions = [image if s == 0 else distort(image, name, s, np.random.default_rng(i))
                        for s in SEVERITIES]
            scores = scores_of(model, versions)
            rises = np.flatnonzero(np.diff(scores) > MONOTONE_TOLERANCE)
            found += [(name, photo_name, SEVERITIES[j], SEVERITIES[j + 1],
                       round(float(scores[j]), 3), round(float(scores[j + 1]), 3))
                      for j in rises]
    return found


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)


def gaussian_noise(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = image.astype(np.float32) + rng.normal(0.0, sigma, image.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def fullres_scores(model, photos: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "clean": scores_of(model, photos),
        "blur 1.5": scores_of(model, [gaussian_blur(p, 1.5) for p in photos]),
        "blur 3": scores_of(model, [gaussian_blur(p, 3.0) for p in photos]),
        "noise 12": scores_of(model, [gaussian_noise(p, 12.0, i) for i, p in enumerate(photos)]),
    }


def figures(model, fullres_folder: Path | None = None) -> dict:
    """Every figure the shipped-model tests assert on, with the per-photo scores behind it."""
    photos = skimage_photos()

    def per_photo(scores):
        return dict(zip(photos, np.round(scores, 3).tolist(), strict=True))

    clean = scores_of(model, photos.values())
    out: dict = {"clean": {"mean": round(float(clean.mean()), 3), "scores": per_photo(clean)}}
    for name in ("gaussian_blur", "defocus_blur"):
        s = scores_of(model, distorted(photos, name, 0.8))
        out[f"{name} 0.8"] = {"median": round(float(np.median(s)), 3),
                              "max": round(float(s.max()), 3), "scores": per_photo(s)}
    for name in ("underexposure", "overexposure"):
        s = scores_of(model, distorted(photos, name, 0.5))
        out[f"{name} 0.5"] = {"median": round(float(np.median(s)), 3), "scores": per_photo(s)}
    s = scores_of(model, night_flare(photos))
    out["night flare"] = {"median": round(float(np.median(s)), 3), "scores": per_photo(s)}
    rows = reversals(model, photos)
    out["monotonicity"] = {"rows": len(MONOTONE_FAMILIES) * len(photos),
                           "rising rows": len({r[:2] for r in rows}), "rises": rows}
    if fullres_available(fullres_folder):
        full = fullres_scores(model, fullres_photos(fullres_folder))
        out["fullres"] = {
            "blur 3 median": round(float(np.median(full["blur 3"])), 3),
            "blur 1.5 median cost": round(float(np.median(full["clean"] - full["blur 1.5"])), 3),
            "noise 12 median cost": round(float(np.median(full["clean"] - full["noise 12"])), 3),
            "scores": {k: dict(zip(FULLRES_PHOTOS, np.round(v, 3).tolist(), strict=True))
                       for k, v in full.items()},
        }
    else:
        out["fullres"] = f"skipped: no evaluation photos in {fullres_folder or fullres_dir()}"
    return out
