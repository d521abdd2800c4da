"""Motion blur: camera shake over the whole frame, and a single moving object.

Camera shake is not a straight line: the hand drifts and turns during the exposure. The
kernel is a random-walk trajectory (random heading changes, uneven dwell time along the
path) rasterised with sub-pixel splatting, in the spirit of Boracchi & Foi (2012).
"""

from __future__ import annotations

import cv2
import numpy as np

from .base import (
    SeverityTable,
    filter_shrunk,
    linear_to_srgb,
    pixel_scale,
    register,
    soft_ellipse_mask,
    srgb_to_linear,
)

# Trajectory length in pixels at the reference resolution (shorter side 512), fitted by
# scripts/calibrate_augment.py.
MOTION_LENGTH = SeverityTable((0.0, 2.76, 4.38, 5.9, 7.55, 9.6, 11.8, 15.0, 19.4, 26.6, 40.0))

# A moving object covers this share of the frame.
MOVING_AREA = (0.15, 0.4)

_TRAJECTORY_STEPS = 48


def random_trajectory(rng: np.random.Generator, turn_std: float) -> tuple[np.ndarray, np.ndarray]:
    """A path of unit length centred on its weighted centroid, and the dwell time per point.

    ``turn_std`` is the standard deviation of the heading change per step (radians): near 0
    gives a straight stroke, 0.3 and more a curled shake.
    """
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, turn_std, _TRAJECTORY_STEPS))
    steps = np.stack([np.cos(heading), np.sin(heading)], axis=1)
    points = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)]) / _TRAJECTORY_STEPS
    # The camera slows down and speeds up: smooth random dwell weights along the path.
    dwell = np.exp(np.convolve(rng.normal(0, 0.5, len(points)), np.ones(5) / 5, mode="same"))
    dwell /= dwell.sum()
    # Centre on the centroid so the blurred image stays aligned with the original.
    points -= (points * dwell[:, None]).sum(axis=0)
    return points, dwell


def trajectory_kernel(points: np.ndarray, dwell: np.ndarray, length: float) -> np.ndarray:
    """Rasterise a unit-length trajectory scaled to ``length`` pixels into a PSF."""
    # Densify to at least 3 samples per pixel so the stroke has no gaps.
    n = max(len(points), int(np.ceil(3 * length)))
    t_old = np.linspace(0, 1, len(points))
    t_new = np.linspace(0, 1, n)
    xy = np.stack([np.interp(t_new, t_old, points[:, i]) for i in range(2)], axis=1) * length
    weight = np.interp(t_new, t_old, dwell)
    half = int(np.ceil(np.abs(xy).max())) + 2
    kernel = np.zeros((2 * half + 1, 2 * half + 1), np.float64)
    x, y = xy[:, 0] + half, xy[:, 1] + half
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    for dx, dy, w in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        np.add.at(kernel, (y0 + dy, x0 + dx), w * weight)
    return (kernel / kernel.sum()).astype(np.float32)


def _smear(array: np.ndarray, points: np.ndarray, dwell: np.ndarray, length: float) -> np.ndarray:
    """Convolve with the trajectory scaled to ``length`` pixels."""

    def convolve(array, factor):
        kernel = trajectory_kernel(points, dwell, length / factor)
        return cv2.filter2D(array, -1, kernel, borderType=cv2.BORDER_REFLECT)

    # A straight stroke of length L has a standard deviation of L / sqrt(12).
    return filter_shrunk(array, length / np.sqrt(12), convolve)


@register("motion_blur", "motion_blur")
def motion_blur(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Camera shake: the whole frame smeared along a random curved path."""
    points, dwell = random_trajectory(rng, turn_std=rng.uniform(0.05, 0.45))
    length = MOTION_LENGTH(severity) * pixel_scale(image)
    if length < 0.1:
        return image.copy()
    return linear_to_srgb(_smear(srgb_to_linear(image), points, dwell, length))


@register("local_motion_blur", "motion_blur", local=True)
def local_motion_blur(
    image: np.ndarray, severity: float, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """One object moving during the exposure, the camera and the rest of the scene still.

    The object (a soft ellipse) is smeared along a nearly straight path and its smear is
    composited over the static scene, so its edges trail off as in a real photo:
    ``out = K * (object) + (1 - K * mask) * scene``. The label is severity x the object's
    share of the frame.
    """
    mask = soft_ellipse_mask(image.shape[:2], rng, MOVING_AREA, feather=0.3, centre_spread=0.3)
    points, dwell = random_trajectory(rng, turn_std=rng.uniform(0.0, 0.08))
    length = MOTION_LENGTH(severity) * pixel_scale(image)
    label = severity * float(mask.mean())
    if length < 0.1:
        return image.copy(), label
    linear = srgb_to_linear(image)
    smeared_object = _smear(linear * mask[..., None], points, dwell, length)
    smeared_mask = _smear(mask, points, dwell, length)[..., None]
    out = smeared_object + (1 - smeared_mask) * linear
    return linear_to_srgb(out), label
