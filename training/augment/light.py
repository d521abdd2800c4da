"""Light distortions: bloom, halos, star glare, lens-flare ghosts and veiling glare.

What a cheap lens does to bright lights, strongest at night: every light source spreads
into a glow (scattering in the glass and on dirt), aperture blades diffract it into a star,
reflections between lens elements throw coloured ghosts of the aperture along the line
through the image centre, and stray light lifts the blacks (veiling glare).

Everything is computed in linear light, where light adds, on a small working copy (the
glows are smooth) and added back at full resolution. Light sources are the frame's own
small bright spots (lamps, the moon, specular highlights); large bright areas such as the
sky are not point sources. A frame without any gets a plausible source in its upper part:
the sun in a bright scene, a few street lamps in a dark one.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .base import (
    REFERENCE_SHORTER_SIDE,
    SeverityTable,
    linear_to_srgb,
    luminance,
    register,
    srgb_to_linear,
)

# Overall strength of the flare (1 = the frame drowns in glare). Fitted by
# scripts/calibrate_augment.py.
FLARE_STRENGTH = SeverityTable(
    (0.0, 0.0176, 0.049, 0.094, 0.152, 0.229, 0.323, 0.443, 0.59, 0.775, 1.0)
)

# The working copy's shorter side: glows are smooth, so they are computed small.
_WORK_SIDE = 160

# Linear-light brightness of a light source relative to the sensor's white: a lamp is far
# brighter than anything the sensor can record, which is why it blooms.
_SOURCE_GAIN = 60.0
_BLOOM_SIGMAS = (3.0, 10.0, 30.0)  # reference pixels
_BLOOM_WEIGHTS = (0.5, 0.3, 0.2)
_VEIL_SIGMA = 0.35  # share of the shorter side
_STAR_GAIN = 0.6
_GHOST_GAIN = 0.4
_VEIL_GAIN = 0.6

# Colours of street lights (linear RGB): sodium, warm LED, neutral, cool LED.
_LAMP_COLOURS = np.array(
    [[1.0, 0.45, 0.12], [1.0, 0.75, 0.45], [1.0, 0.92, 0.8], [0.8, 0.9, 1.0]], np.float32
)
# Tints of lens-flare ghosts: anti-reflection coatings reflect green, magenta, amber, cyan.
_GHOST_TINTS = np.array(
    [[0.3, 1.0, 0.4], [1.0, 0.3, 0.9], [1.0, 0.6, 0.15], [0.3, 0.8, 1.0], [0.7, 0.5, 1.0]],
    np.float32,
)


@dataclass(frozen=True)
class _FlarePlan:
    """Every random choice of one flare, drawn before the severity is looked at, so one
    seed gives the same flare at every severity, only stronger."""

    spikes: int
    spike_angle: float
    spike_length: float
    ghost_t: np.ndarray
    ghost_radius: np.ndarray
    ghost_alpha: np.ndarray
    ghost_tint: np.ndarray
    ghost_sides: int
    ghost_rotation: float
    lamp_xy: np.ndarray
    lamp_radius: np.ndarray
    lamp_colour: np.ndarray
    sun_xy: np.ndarray
    sun_radius: float


def _plan(rng: np.random.Generator) -> _FlarePlan:
    n_ghosts = int(rng.integers(4, 9))
    n_lamps = int(rng.integers(2, 6))
    return _FlarePlan(
        spikes=int(rng.choice([0, 4, 6, 8, 12], p=[0.25, 0.2, 0.2, 0.2, 0.15])),
        spike_angle=float(rng.uniform(0, np.pi)),
        spike_length=float(rng.uniform(0.1, 0.3)),
        ghost_t=rng.uniform(-1.4, 0.8, n_ghosts),
        ghost_radius=rng.uniform(0.01, 0.08, n_ghosts),
        ghost_alpha=rng.uniform(0.15, 1.0, n_ghosts),
        ghost_tint=_GHOST_TINTS[rng.integers(0, len(_GHOST_TINTS), n_ghosts)],
        ghost_sides=int(rng.choice([0, 5, 6, 7, 8])),
        ghost_rotation=float(rng.uniform(0, np.pi)),
        lamp_xy=np.stack([rng.uniform(0.05, 0.95, n_lamps), rng.uniform(0.08, 0.5, n_lamps)], 1),
        lamp_radius=rng.uniform(1.5, 4.0, n_lamps),
        lamp_colour=_LAMP_COLOURS[rng.integers(0, len(_LAMP_COLOURS), n_lamps)],
        sun_xy=np.array([rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.35)]),
        sun_radius=float(rng.uniform(7.0, 13.0)),
    )


def _smoothstep(x: np.ndarray, low: float, high: float) -> np.ndarray:
    t = np.clip((x - low) / (high - low), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# Weight of a pixel as a light source, by its 8-bit luma: from 0 below 70 % of white to
# 1 above 95 % (in linear light), looked up rather than computed per pixel.
_BRIGHT_LUT = _smoothstep(srgb_to_linear(np.arange(256, dtype=np.uint8)), 0.7, 0.95).astype(
    np.float32
)


def _draw_discs(shape, centres, radii, colours) -> np.ndarray:
    """Anti-aliased filled discs of the given linear colours on black, float32 H x W x 3."""
    canvas = np.zeros((*shape, 3), np.float32)
    shift = 4  # sub-pixel precision for cv2 drawing
    for (x, y), r, colour in zip(centres, radii, colours, strict=True):
        centre = (int(round(x * 2**shift)), int(round(y * 2**shift)))
        radius = max(1, int(round(r * 2**shift)))
        cv2.circle(canvas, centre, radius, tuple(float(c) for c in colour), -1, cv2.LINE_AA, shift)
    return canvas


def _find_sources(work: np.ndarray, max_sources: int = 2) -> list[tuple[float, float, float]]:
    """The brightest blobs of the source map: (x, y, relative flux), brightest first."""
    lum = luminance(work)
    if lum.max() <= 0:
        return []
    mask = (lum > 0.2 * lum.max()).astype(np.uint8)
    count, labels = cv2.connectedComponents(mask, connectivity=8)
    if count <= 1:
        return []
    flux = np.bincount(labels.ravel(), weights=lum.ravel(), minlength=count)[1:]
    ys, xs = np.mgrid[0 : lum.shape[0], 0 : lum.shape[1]]
    wx = np.bincount(labels.ravel(), weights=(lum * xs).ravel(), minlength=count)[1:]
    wy = np.bincount(labels.ravel(), weights=(lum * ys).ravel(), minlength=count)[1:]
    order = np.argsort(flux)[::-1][:max_sources]
    top = flux[order[0]]
    return [(wx[i] / flux[i], wy[i] / flux[i], flux[i] / top) for i in order]


def _star_kernel(plan: _FlarePlan, short_side: int) -> np.ndarray | None:
    """Diffraction spikes: thin lines through the centre, fading as 1 / r^1.5."""
    if plan.spikes == 0:
        return None
    half = max(3, int(plan.spike_length * short_side))
    size = 2 * half + 1
    kernel = np.zeros((size, size), np.float32)
    for i in range(plan.spikes // 2):
        angle = plan.spike_angle + i * np.pi / (plan.spikes // 2)
        dx, dy = half * np.cos(angle), half * np.sin(angle)
        p0 = (int(round(half - dx)), int(round(half - dy)))
        p1 = (int(round(half + dx)), int(round(half + dy)))
        cv2.line(kernel, p0, p1, 1.0, 1, cv2.LINE_AA)
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    kernel *= (1.0 + np.hypot(x, y) / 1.5) ** -1.5
    return kernel / kernel.sum()


def _ghosts(plan: _FlarePlan, sources, shape: tuple[int, int]) -> np.ndarray:
    """Reflections of the aperture on the line from each source through the image centre.

    A ghost is a soft polygon (or disk) with a brighter rim, faint in proportion to its size
    (the reflected light spreads over its area), and drawn slightly larger in red than in
    blue, which gives the coloured fringe of real ghosts.
    """
    h, w = shape
    canvas = np.zeros((h, w, 3), np.float32)
    centre = np.array([w / 2, h / 2])
    short = min(h, w)
    sides = max(plan.ghost_sides, 1)
    corners = plan.ghost_rotation + np.arange(sides) * (2 * np.pi / sides)
    for sx, sy, flux in sources:
        axis = np.array([sx, sy]) - centre
        for t, radius, alpha, tint in zip(
            plan.ghost_t, plan.ghost_radius, plan.ghost_alpha, plan.ghost_tint, strict=True
        ):
            gx, gy = centre - t * axis
            r = radius * short
            half = int(np.ceil(r * 1.2 + 4))
            x0, y0 = int(round(gx)) - half, int(round(gy)) - half
            if x0 + 2 * half < 0 or y0 + 2 * half < 0 or x0 >= w or y0 >= h:
                continue
            # Drawn in a small patch around the ghost, then pasted onto the canvas.
            patch = np.zeros((2 * half + 1, 2 * half + 1, 3), np.float32)
            local = np.array([gx - x0, gy - y0])
            for channel, stretch in enumerate((1.04, 1.0, 0.96)):
                fill = _aperture(patch.shape[:2], local, r * stretch, plan.ghost_sides, corners)
                rim = fill - _aperture(
                    patch.shape[:2], local, r * stretch * 0.8, plan.ghost_sides, corners
                )
                patch[..., channel] = tint[channel] * (0.6 * fill + 0.8 * rim)
            patch = cv2.GaussianBlur(patch, (0, 0), max(0.6, 0.12 * r))
            strength = float(alpha * flux * min(1.0, (0.02 * short / r) ** 0.7))
            ys, xs = (
                slice(max(y0, 0), min(y0 + patch.shape[0], h)),
                slice(max(x0, 0), min(x0 + patch.shape[1], w)),
            )
            canvas[ys, xs] += (
                strength * patch[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
            )
    return canvas


def _aperture(shape, centre, radius, sides, corners) -> np.ndarray:
    """A filled, anti-aliased regular polygon (or disk when ``sides`` is 0), float32."""
    layer = np.zeros(shape, np.float32)
    shift = 4  # sub-pixel precision for cv2 drawing
    if sides:
        pts = centre + radius * np.stack([np.cos(corners), np.sin(corners)], 1)
        cv2.fillPoly(layer, [np.round(pts * 2**shift).astype(np.int32)], 1.0, cv2.LINE_AA, shift)
    else:
        c = (int(round(centre[0] * 2**shift)), int(round(centre[1] * 2**shift)))
        cv2.circle(layer, c, max(1, int(round(radius * 2**shift))), 1.0, -1, cv2.LINE_AA, shift)
    return layer


@register("flare", "light_distortion")
def flare(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    plan = _plan(rng)
    strength = FLARE_STRENGTH(severity)
    h, w = image.shape[:2]
    short = min(h, w)
    ref_px = short / REFERENCE_SHORTER_SIDE
    step = max(1.0, short / _WORK_SIDE)
    small = (max(2, round(w / step)), max(2, round(h / step)))  # cv2 (width, height)
    small_short = min(small)

    linear = srgb_to_linear(image)
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    # Bright pixels are light sources unless they belong to a large bright area.
    bright = cv2.LUT(luma, _BRIGHT_LUT)
    sources = cv2.resize(linear * bright[..., None], small, interpolation=cv2.INTER_AREA)
    bright_small = cv2.resize(bright, small, interpolation=cv2.INTER_AREA)
    cover_size = max(3, small_short // 6)
    cover = cv2.blur(bright_small, (cover_size, cover_size))
    sources *= np.clip(1.0 - (cover - 0.15) / 0.3, 0.0, 1.0)[..., None]
    # Flux of the detected sources, in working pixels at full white.
    flux = float(luminance(sources).sum()) * (_WORK_SIDE / small_short) ** 2
    if flux < 4.0:
        # No light sources of its own: add some, fading in over the first severities so
        # that severity 0+ stays next to the original.
        fade = min(1.0, severity / 0.15)
        if float(srgb_to_linear(luma).mean()) > 0.12:
            centres = [plan.sun_xy * (w, h)]
            radii = [plan.sun_radius * ref_px]
            colours = [np.array([1.0, 0.93, 0.8], np.float32)]
        else:
            centres = plan.lamp_xy * (w, h)
            radii = plan.lamp_radius * ref_px
            colours = plan.lamp_colour
        cores = _draw_discs((h, w), centres, radii, colours)
        linear = np.maximum(linear, fade * np.minimum(cores * 2.0, 1.0))
        sources = sources + fade * cv2.resize(cores, small, interpolation=cv2.INTER_AREA)
        flux = float(luminance(sources).sum()) * (_WORK_SIDE / small_short) ** 2
    # Scenes full of lights share the glare between them: partial flux normalisation keeps
    # one severity comparable between a single lamp and a lit-up city.
    gain = _SOURCE_GAIN * float(np.clip((40.0 / max(flux, 1e-6)) ** 0.5, 0.3, 3.0))
    sources *= gain

    work_px = small_short / REFERENCE_SHORTER_SIDE  # working pixels per reference pixel
    glow = np.zeros_like(sources)
    for sigma, weight in zip(_BLOOM_SIGMAS, _BLOOM_WEIGHTS, strict=True):
        glow += weight * cv2.GaussianBlur(sources, (0, 0), max(0.5, sigma * work_px))
    star = _star_kernel(plan, small_short)
    if star is not None:
        glow += _STAR_GAIN * cv2.filter2D(sources, -1, star, borderType=cv2.BORDER_CONSTANT)
    found = _find_sources(sources)
    if found:
        peak = float(luminance(sources).max())
        glow += _GHOST_GAIN * min(peak, 5.0) * _ghosts(plan, found, (small[1], small[0]))
    # The veil is very wide and smooth: blur a tiny copy (shorter side 16) and enlarge it.
    tiny = (max(2, round(small[0] * 16 / small_short)), max(2, round(small[1] * 16 / small_short)))
    veil = cv2.GaussianBlur(
        cv2.resize(sources, tiny, interpolation=cv2.INTER_AREA), (0, 0), _VEIL_SIGMA * 16
    )
    veil = cv2.resize(veil, small, interpolation=cv2.INTER_LINEAR)
    glow += _VEIL_GAIN * (veil + sources.mean(axis=(0, 1)))

    glow = cv2.resize(glow * np.float32(strength), (w, h), interpolation=cv2.INTER_LINEAR)
    return linear_to_srgb(np.minimum(linear + glow, 1.0))
