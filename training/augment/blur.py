"""Lens blur: Gaussian, defocus (disk), and shallow depth of field (background only).

Defocus happens before the sensor's tone curve, so it is applied in linear light: bright
points spread into bright discs (bokeh) instead of grey smudges. Gaussian blur is the
generic blur of IQA databases (TID2013, KADID-10k) and, like them, works on sRGB values,
which is also several times faster.
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

# Parameters in pixels at the reference resolution (shorter side 512), fitted by
# scripts/calibrate_augment.py. Severity 1 hides the content.
GAUSSIAN_SIGMA = SeverityTable((0.0, 0.817, 1.09, 1.39, 1.74, 2.17, 2.71, 3.4, 4.42, 6.17, 10.0))
DEFOCUS_RADIUS = SeverityTable((0.0, 1.13, 1.65, 2.21, 2.77, 3.44, 4.35, 5.34, 7.05, 10.2, 18.0))

# Background blur: the sharp subject covers this share of the frame.
SUBJECT_AREA = (0.15, 0.4)


def disk_kernel(radius: float) -> np.ndarray:
    """An anti-aliased disk (the defocus point-spread function of a round aperture)."""
    half = int(np.ceil(radius)) + 1
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    kernel = np.clip(radius + 0.5 - np.hypot(x, y), 0.0, 1.0).astype(np.float32)
    return kernel / kernel.sum()


def defocus_linear(linear: np.ndarray, radius: float) -> np.ndarray:
    if radius < 0.05:
        return linear

    def convolve(array, factor):
        kernel = disk_kernel(radius / factor)
        return cv2.filter2D(array, -1, kernel, borderType=cv2.BORDER_REFLECT)

    # A disk of radius r has a standard deviation of r / 2.
    return filter_shrunk(linear, radius / 2, convolve)


@register("gaussian_blur", "blur")
def gaussian_blur(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    sigma = GAUSSIAN_SIGMA(severity) * pixel_scale(image)
    if sigma < 0.05:
        return image.copy()

    def blur(array, factor):
        return cv2.GaussianBlur(array, (0, 0), sigmaX=sigma / factor, borderType=cv2.BORDER_REFLECT)

    return filter_shrunk(image, sigma, blur)


@register("defocus_blur", "blur")
def defocus_blur(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    radius = DEFOCUS_RADIUS(severity) * pixel_scale(image)
    return linear_to_srgb(defocus_linear(srgb_to_linear(image), radius))


@register("background_blur", "blur", local=True)
def background_blur(
    image: np.ndarray, severity: float, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Shallow depth of field: a sharp elliptical subject, the rest defocused.

    The blur strength follows ``DEFOCUS_RADIUS``, so the background at severity s looks like
    defocus_blur at s. The label is severity x blurred share of the frame: a viewer judges
    the whole picture, and a sharp subject keeps much of its value.
    """
    subject = soft_ellipse_mask(image.shape[:2], rng, SUBJECT_AREA, feather=0.25)
    radius = DEFOCUS_RADIUS(severity) * pixel_scale(image)
    linear = srgb_to_linear(image)
    blurred = defocus_linear(linear, radius)
    weight = subject[..., None]
    out = weight * linear + (1 - weight) * blurred
    return linear_to_srgb(out), severity * float(1 - subject.mean())
