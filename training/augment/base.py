"""The pieces every distortion shares: the registry, severity tables, colour and scale helpers.

A distortion maps ``(image, severity, rng)`` to an image: uint8 H x W x 3 RGB in and out,
severity in [0, 1] (0 leaves the image untouched, 1 destroys it), and a NumPy Generator that
is the only source of randomness, so the same generator state gives the same output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from iqa.inference.contract import FACTOR_NAMES

# Spatial parameters (kernel sizes, blur radii, noise grain) are calibrated on images whose
# shorter side is this long and scaled with the actual shorter side, so that a severity
# means the same on a 500 px photo and on a 2000 px one.
REFERENCE_SHORTER_SIDE = 512

# apply(image, severity, rng) -> (image, label): the label is the severity the family's
# factor head should learn for this output. It equals the severity except for local
# distortions (background or local motion blur), which only hurt part of the frame.
ApplyFn = Callable[[np.ndarray, float, np.random.Generator], tuple[np.ndarray, float]]


@dataclass(frozen=True)
class Distortion:
    """One synthetic distortion: a name, the factor family it degrades, and its function."""

    name: str
    family: str
    apply: ApplyFn

    def fn(self, image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
        """The distorted image alone (see ``apply`` for the family label as well)."""
        return self.apply(image, severity, rng)[0]


DISTORTIONS: dict[str, Distortion] = {}


def register(name: str, family: str, *, local: bool = False):
    """Decorator that adds a distortion to ``DISTORTIONS``.

    The decorated function is ``fn(image, severity, rng) -> image`` for whole-frame
    distortions (label = severity), or ``-> (image, label)`` when ``local`` is true.
    """
    if family not in FACTOR_NAMES:
        raise ValueError(f"family {family!r} of {name!r} is not one of {FACTOR_NAMES}")
    if name in DISTORTIONS:
        raise ValueError(f"distortion {name!r} is registered twice")

    def decorator(fn):
        def apply(image, severity, rng):
            check_image(image)
            severity = check_severity(severity)
            if severity == 0.0:
                return image.copy(), 0.0
            result = fn(image, severity, rng)
            return result if local else (result, severity)

        apply.__name__ = apply.__qualname__ = fn.__name__
        apply.__doc__ = fn.__doc__
        DISTORTIONS[name] = Distortion(name=name, family=family, apply=apply)
        return fn

    return decorator


@dataclass(frozen=True)
class SeverityTable:
    """A monotone piecewise-linear map from severity to a distortion's parameter.

    The knot values are fitted by ``scripts/calibrate_augment.py`` so that a full-reference
    quality measure falls roughly linearly with severity (see docs/augment_calibration.md).
    """

    values: tuple[float, ...]
    # Severities of the values; None spaces them evenly over [0, 1].
    knots: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.knots is None:
            even = tuple(float(k) for k in np.linspace(0.0, 1.0, len(self.values)))
            object.__setattr__(self, "knots", even)
        if len(self.values) != len(self.knots) or len(self.values) < 2:
            raise ValueError("a severity table needs one value per knot")
        steps = np.diff(self.values)
        if not (np.all(steps >= 0) or np.all(steps <= 0)):
            raise ValueError(f"severity table values must be monotone, got {self.values}")

    def __call__(self, severity: float) -> float:
        return float(np.interp(severity, self.knots, self.values))


def check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must be uint8 H x W x 3 RGB, got {image.dtype} with shape {image.shape}"
        )
    if min(image.shape[:2]) < 8:
        raise ValueError(f"image is too small to distort: {image.shape[1]}x{image.shape[0]}")


def check_severity(severity: float) -> float:
    severity = float(severity)
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    return severity


# Blurs wider than this (standard deviation, pixels) run on a shrunken copy: the result is
# smooth at that scale anyway, and the cost of a kernel grows with its area. Up to the
# reference resolution every severity stays below it, so calibrated outputs are exact.
MAX_DIRECT_BLUR_SIGMA = 12.0


def filter_shrunk(array: np.ndarray, blur_sigma: float, fn) -> np.ndarray:
    """``fn(array, factor)``, on a copy shrunk ``factor`` times if the blur is very wide.

    ``fn`` must divide its spatial parameters by ``factor``; the result is enlarged back.
    """
    factor = blur_sigma / MAX_DIRECT_BLUR_SIGMA
    if factor <= 1.0:
        return fn(array, 1.0)
    h, w = array.shape[:2]
    size = (max(2, round(w / factor)), max(2, round(h / factor)))
    small = fn(cv2.resize(array, size, interpolation=cv2.INTER_AREA), factor)
    out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return out.reshape(array.shape)


def pixel_scale(image: np.ndarray) -> float:
    """How many pixels of this image one pixel of the reference resolution spans."""
    return min(image.shape[:2]) / REFERENCE_SHORTER_SIDE


# sRGB transfer function (IEC 61966-2-1). Decoding uses a 256-entry table; encoding a
# 65536-entry one, fine enough that decode -> encode returns every uint8 value exactly.
def _srgb_decode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _srgb_encode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.power(v, 1 / 2.4) - 0.055)


_DECODE_LUT = _srgb_decode(np.arange(256) / 255.0).astype(np.float32)
_ENCODE_STEPS = 65535
_ENCODE_LUT = np.round(_srgb_encode(np.arange(_ENCODE_STEPS + 1) / _ENCODE_STEPS) * 255).astype(
    np.uint8
)


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """uint8 sRGB -> float32 linear light in [0, 1]."""
    return cv2.LUT(image, _DECODE_LUT)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """Float linear light (clipped to [0, 1]) -> uint8 sRGB."""
    scaled = linear * np.float32(_ENCODE_STEPS)
    np.add(scaled, np.float32(0.5), out=scaled)
    np.clip(scaled, 0, _ENCODE_STEPS, out=scaled)
    return _ENCODE_LUT[scaled.astype(np.uint16)]


def standard_normal(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Float32 N(0, 1) noise, seeded from ``rng``.

    OpenCV's generator is about three times faster than NumPy's for image-sized draws;
    seeding it from ``rng`` right before the draw keeps the result a function of the
    generator's state alone (OpenCV's generator is per thread).
    """
    out = np.empty(shape, np.float32)
    channels = shape[2] if len(shape) == 3 else 1
    cv2.setRNGSeed(int(rng.integers(1, 2**31 - 1)))
    cv2.randn(out, (0.0,) * channels, (1.0,) * channels)
    return out


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float sRGB in [0, 1] -> uint8, rounded and clipped."""
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)


def luminance(linear: np.ndarray) -> np.ndarray:
    """Rec. 709 relative luminance of linear RGB."""
    return linear @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def soft_ellipse_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    area: tuple[float, float],
    feather: float,
    centre_spread: float = 0.25,
) -> np.ndarray:
    """A random ellipse of weight 1 with a feathered edge, float32 H x W in [0, 1].

    ``area`` is the range of the ellipse's share of the frame, ``feather`` the width of the
    soft edge relative to the ellipse's size, and ``centre_spread`` how far (as a fraction of
    the frame) the centre may wander from the middle, where subjects usually are.
    """
    h, w = shape
    share = rng.uniform(*area)
    aspect = rng.uniform(0.6, 1.6)
    angle = rng.uniform(0, np.pi)
    cx = 0.5 + rng.uniform(-centre_spread, centre_spread)
    cy = 0.5 + rng.uniform(-centre_spread, centre_spread)
    # The mask is smooth, so it is drawn on a small grid and resized: cheap at any size.
    step = max(1.0, min(h, w) / 128)
    gh, gw = max(2, round(h / step)), max(2, round(w / step))
    # Area of an ellipse with semi-axes a, b is pi*a*b; solve for the share of h*w.
    b = np.sqrt(share * gh * gw / (np.pi * aspect))
    a = aspect * b
    y, x = np.mgrid[0:gh, 0:gw].astype(np.float32)
    dx, dy = x + 0.5 - cx * gw, y + 0.5 - cy * gh
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / a
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / b
    r = np.sqrt(u * u + v * v)
    # Weight 1 inside r < 1 - feather, 0 beyond 1 + feather, a smoothstep between.
    t = np.clip((1 + feather - r) / (2 * feather), 0, 1)
    mask = (t * t * (3 - 2 * t)).astype(np.float32)
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
