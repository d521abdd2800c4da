"""Calibrate the severity tables of the distortions and document the result.

    python scripts/calibrate_augment.py --fit        # grid search, print new tables, then check
    python scripts/calibrate_augment.py              # check the tables in the modules only

Method (docs/augment_calibration.md has the numbers):
1. For each calibrated distortion, its parameter is swept on a grid from "untouched" to a
   hand-chosen "destroyed" end point, and the mean full-reference fidelity
   (``iqa.training.augment.fidelity``: SSIM on luma x a CIELAB colour term) over a fixed
   set of pristine photos is recorded.
2. The curve's end value is the floor F. The parameter at severity knot s is read off the
   monotone curve where fidelity = 1 - s (1 - F), so that fidelity falls linearly with
   severity. ``--fit`` prints these knot values; paste them into the modules' constants
   (the one source of truth).
3. The check evaluates the distortions as they are, with their tables, at severities
   0, 0.1, ..., 1 and writes the table of mean SSIM and fidelity into the Markdown file.

Background blur and local motion blur reuse the defocus and motion tables (their blurred
region looks like the whole-frame version at the same severity); they are checked only.
"""

from __future__ import annotations

import argparse
import importlib
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from iqa.training.augment import DISTORTIONS, SeverityTable, distort
from iqa.training.augment.fidelity import colour_fidelity, ssim

PRISTINE = Path("/work/shared/datasets/pristine")
# Photos are resized to the model's input scale (shorter side 384) before distorting.
SHORTER_SIDE = 384
# Denser near 0, where small parameter changes matter most.
GRID = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0)
CHECK_SEVERITIES = tuple(np.round(np.linspace(0, 1, 11), 2))
KNOTS = tuple(np.round(np.linspace(0, 1, 11), 2))


@dataclass(frozen=True)
class Target:
    """A severity table to fit: ``module.attr`` maps severity 0..1 onto ``untouched..destroyed``."""

    module: str
    attr: str
    untouched: float
    destroyed: float
    unit: str


TARGETS: dict[str, Target] = {
    "gaussian_blur": Target("blur", "GAUSSIAN_SIGMA", 0.0, 10.0, "sigma, px @512"),
    "defocus_blur": Target("blur", "DEFOCUS_RADIUS", 0.0, 18.0, "disk radius, px @512"),
    "motion_blur": Target("motion", "MOTION_LENGTH", 0.0, 40.0, "path length, px @512"),
    "underexposure": Target("exposure", "UNDEREXPOSURE_EV", 0.0, 6.0, "stops below"),
    "overexposure": Target("exposure", "OVEREXPOSURE_EV", 0.0, 4.0, "stops above"),
    "low_contrast": Target("exposure", "CONTRAST_LOSS", 0.0, 0.93, "share of contrast lost"),
    "haze": Target("exposure", "HAZE_BETA", 0.0, 3.5, "extinction beta"),
    "flare": Target("light", "FLARE_STRENGTH", 0.0, 1.0, "flare strength"),
    "gaussian_noise": Target("noise", "GAUSSIAN_NOISE_STD", 0.0, 0.45, "std, sRGB 0..1"),
    "sensor_noise": Target("noise", "SENSOR_GAIN", 0.0, 0.1, "shot-noise gain"),
    "jpeg": Target("compression", "JPEG_QUALITY", 100.0, 1.0, "JPEG quality"),
    "webp": Target("compression", "WEBP_LEVEL", 0.0, 2.0, "level: quality 99..0, then shrink"),
}
SHARED_TABLES = {"background_blur": "defocus_blur", "local_motion_blur": "motion_blur"}


def calibration_photos(count: int) -> list[tuple[str, np.ndarray]]:
    """A fixed, varied set: Kodak24, Wikimedia Commons and SUN scenes, every k-th file."""
    picks = []
    for folder, share in (("kodak24", 0.3), ("wikipedia", 0.5), ("sun80", 0.2)):
        files = sorted((PRISTINE / folder).glob("*.*"))
        n = max(1, round(count * share))
        picks += [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]
    photos = []
    for path in picks[:count]:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        h, w = bgr.shape[:2]
        scale = SHORTER_SIDE / min(h, w)
        size = (round(w * scale), round(h * scale))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        rgb = cv2.cvtColor(cv2.resize(bgr, size, interpolation=interpolation), cv2.COLOR_BGR2RGB)
        photos.append((f"{path.parent.name}/{path.name}", rgb))
    return photos


def mean_scores(name: str, photos, severities) -> tuple[np.ndarray, np.ndarray]:
    """Mean SSIM and mean fidelity of ``name`` at each severity over the photos."""
    ssims = np.zeros((len(severities), len(photos)))
    fids = np.zeros_like(ssims)
    for j, (_, photo) in enumerate(photos):
        for i, severity in enumerate(severities):
            # One seed per photo: every severity sees the same random layout.
            out = distort(photo, name, float(severity), np.random.default_rng(1000 + j))
            ssims[i, j] = ssim(photo, out)
            fids[i, j] = ssims[i, j] * colour_fidelity(photo, out)
    return ssims.mean(axis=1), fids.mean(axis=1)


def fit_table(name: str, target: Target, photos) -> tuple[SeverityTable, np.ndarray]:
    module = importlib.import_module(f"iqa.training.augment.{target.module}")
    fitted = getattr(module, target.attr)
    # Sweep the parameter linearly: severity u now means untouched + u (destroyed - untouched).
    setattr(module, target.attr, SeverityTable((target.untouched, target.destroyed), (0.0, 1.0)))
    try:
        _, curve = mean_scores(name, photos, GRID)
    finally:
        setattr(module, target.attr, fitted)
    grid = np.array((0.0, *GRID))
    curve = np.minimum.accumulate(np.concatenate([[1.0], curve]))  # monotone, from 1 at u=0
    floor = curve[-1]
    values = []
    for s in KNOTS:
        goal = 1.0 - s * (1.0 - floor)
        # np.interp needs increasing x: walk the decreasing curve backwards.
        u = float(np.interp(goal, curve[::-1], grid[::-1]))
        values.append(target.untouched + u * (target.destroyed - target.untouched))
    return SeverityTable(tuple(float(f"{v:.3g}") for v in values)), np.stack([grid, curve])


def markdown(photos, checks, fits, seconds) -> str:
    lines = [
        "# Augmentation severity calibration",
        "",
        "Written by `scripts/calibrate_augment.py`; rerun it after changing a distortion.",
        "",
        "## Method",
        "",
        f"- {len(photos)} pristine photos (Kodak24, Wikimedia Commons, SUN scenes from "
        "`datasets/pristine`), resized to a shorter side of "
        f"{SHORTER_SIDE} px, the model's input scale. Each photo keeps one seed for all "
        "severities.",
        "- Measure: mean **fidelity** = SSIM on luma (Gaussian window, sigma 1.5) x "
        "max(0, 1 - mean CIELAB delta E / 100). SSIM alone hardly notices exposure and "
        "colour shifts (one stop over keeps SSIM near 0.9), so the colour term carries "
        "exposure, contrast, haze and flare; for blur, noise and compression the measure is "
        "essentially SSIM.",
        "- Fit: each distortion's parameter is swept from untouched to a hand-picked "
        "*destroyed* end point (severity 1, the content is hidden or unusable). The mean "
        "fidelity there is the floor F. The parameter at severity knot s = 0.1, 0.2, ..., "
        "0.9 is where the monotone mean curve reaches 1 - s (1 - F), so fidelity falls "
        "linearly from 1 to F; between knots the parameter is interpolated linearly.",
        "- Background blur and local motion blur reuse the defocus and motion tables (the "
        "blurred part looks like the whole-frame version at the same severity). Their family "
        "label is severity x blurred share of the frame, so they are not fitted.",
        "",
        "## Reading the tables",
        "",
        "- The floors differ between distortions (fidelity 0.06 for underexposure, 0.5 for "
        "blur at severity 1): fidelity values are not comparable across distortion types "
        "(SSIM punishes noise far more than blur of equal visibility), so each *destroyed* "
        "end point was chosen by eye on the contact sheet, and the fit only makes the "
        "steps between 0 and 1 even.",
        "- The labels of the local blurs agree with the measure: background blur at "
        "severity 1 (label about 0.7, the blurred share) keeps the fidelity of whole-frame "
        "defocus at about 0.75, local motion blur at severity 1 (label about 0.25) that of "
        "camera shake at about 0.2.",
        "- JPEG quality is an integer, so the top knots are coarse (quality 3 -> 1 is one "
        "step of the table).",
        "",
        "## Parameter tables (severity -> parameter)",
        "",
        "Constants in `training/augment/*.py`, the one source of truth.",
        "",
        "| distortion | parameter | " + " | ".join(f"s={k:g}" for k in KNOTS) + " |",
        "|---|---|" + "---|" * len(KNOTS),
    ]
    for name, target in TARGETS.items():
        table = getattr(
            importlib.import_module(f"iqa.training.augment.{target.module}"), target.attr
        )
        cells = " | ".join(f"{table(k):.4g}" for k in KNOTS)
        lines.append(f"| {name} | `{target.attr}` ({target.unit}) | {cells} |")
    for name, shared in SHARED_TABLES.items():
        lines.append(f"| {name} | same as {shared} | " + " | ".join("" for _ in KNOTS) + " |")

    for title, index in (("mean fidelity", 1), ("mean SSIM (luma)", 0)):
        lines += [
            "",
            f"## Check: severity vs {title}",
            "",
            "| distortion | family | " + " | ".join(f"{s:g}" for s in CHECK_SEVERITIES) + " |",
            "|---|---|" + "---|" * len(CHECK_SEVERITIES),
        ]
        for name, scores in checks.items():
            cells = " | ".join(f"{v:.3f}" for v in scores[index])
            lines.append(f"| {name} | {DISTORTIONS[name].family} | {cells} |")
    if fits:
        lines += ["", "## Fit: parameter sweep (u = share of the way to destroyed)", ""]
        lines += [
            "| distortion | " + " | ".join(f"{u:g}" for u in fits[next(iter(fits))][0]) + " |"
        ]
        lines += ["|---|" + "---|" * len(fits[next(iter(fits))][0])]
        for name, (_, curve) in fits.items():
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in curve) + " |")
    lines += ["", f"Photos: {', '.join(p for p, _ in photos)}.", "", f"Run time: {seconds:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fit", action="store_true", help="grid-search new tables first")
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--only", nargs="*", help="distortion names (default: all)")
    parser.add_argument("-o", "--out", type=Path, default=Path("docs/augment_calibration.md"))
    args = parser.parse_args(argv)
    if not PRISTINE.is_dir():
        raise SystemExit(f"pristine photos not found at {PRISTINE}")
    start = time.time()
    photos = calibration_photos(args.photos)
    names = args.only or list(DISTORTIONS)

    fits, changed = {}, []
    if args.fit:
        for name in names:
            if name in TARGETS:
                table, curve = fit_table(name, TARGETS[name], photos)
                fits[name] = curve
                target = TARGETS[name]
                module = importlib.import_module(f"iqa.training.augment.{target.module}")
                same = getattr(module, target.attr).values == table.values
                note = "  # same as in the module" if same else "  # NEW: paste into the module"
                if not same:
                    changed.append(f"{target.module}.{target.attr}")
                print(f"{target.module}.{target.attr} = SeverityTable({table.values}){note}")
                print(f"    sweep: {np.round(curve[1], 3).tolist()}", flush=True)
                setattr(module, target.attr, table)  # check the new table below

    checks = {}
    for name in names:
        checks[name] = mean_scores(name, photos, CHECK_SEVERITIES)
        print(f"{name:18s} fidelity {np.round(checks[name][1], 3).tolist()}", flush=True)
    if args.only:
        print("--only given: not writing", args.out)
        return 0
    if changed:
        print(f"New tables for {', '.join(changed)} were used in this run only: paste them in.")
    args.out.write_text(markdown(photos, checks, fits, time.time() - start))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
