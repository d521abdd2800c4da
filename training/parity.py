"""Does the ONNX file compute what the torch model does? ``iqa export`` asks before it writes.

Real photos go through the inference preprocessing at several sizes and batch sizes, and
every output of onnxruntime is compared with torch's within :data:`PARITY_ATOL`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

from iqa.inference.contract import (
    FACTORS_OUTPUT,
    INPUT_NAME,
    MOS_OUTPUT,
    SCORE_OUTPUT,
    Preprocessing,
)

from .onnx_graph import (
    ExportError,
    detail_view_of,
    device_of,
    graph_module,
    input_names,
    output_names,
)

PARITY_ATOL = 1e-4


class ParityError(ExportError):
    """onnxruntime's outputs differ from torch's by more than the tolerance."""


@dataclass(frozen=True)
class ParityReport:
    max_abs_score: float
    max_abs_factors: float
    shapes: tuple[tuple[int, ...], ...]

    def __str__(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.shapes)
        return (f"max |torch - onnxruntime|: score {self.max_abs_score:.2e}, "
                f"factors {self.max_abs_factors:.2e} on {shapes}")


def parity_images() -> list[np.ndarray]:
    """Real photos for the parity check: scikit-image's public-domain samples.

    Without scikit-image (a dev dependency) smooth synthetic images stand in; they still
    exercise every layer, just with less natural statistics.
    """
    try:
        from skimage import data

        return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    except ImportError:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:480, 0:640] / 480.0
        base = np.stack([np.sin(3 * xx), np.cos(2 * yy), xx * yy], axis=-1)
        noisy = base + rng.normal(0, 0.05, base.shape)
        return [np.clip((noisy * 0.5 + 0.5) * 255, 0, 255).astype(np.uint8)]


def parity_sizes(preprocessing: Preprocessing) -> list[tuple[int, int]]:
    """(height, width) of the parity inputs, around the policy's own resolution.

    For the default 320 px policy: 320x320, 320x448 (landscape), 448x320 (portrait) and
    384x512 (larger than inference ever sends).
    """
    m = preprocessing.size_multiple
    side = max(m, preprocessing.shorter_side // m * m)
    long = side + 4 * m
    return [(side, side), (side, long), (long, side), (side + 2 * m, long + 2 * m)]


def parity_inputs(preprocessing: Preprocessing,
                  images: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Batches (N x 3 x H x W) of real photos, built with the inference preprocessing code.

    Each photo is cropped to a size's aspect ratio and resized by the policy itself, so
    the resize and normalisation are exactly what inference runs. The last size is also
    run as a batch of two, and one photo goes through the unmodified policy.
    """
    from PIL import Image

    from iqa.inference.preprocess import to_model_input

    photos = [Image.fromarray(a).convert("RGB") for a in (images or parity_images())]

    def at(photo: Image.Image, height: int, width: int) -> np.ndarray:
        w, h = photo.size
        scale = min(w / width, h / height)
        cw, ch = int(width * scale), int(height * scale)
        left, top = (w - cw) // 2, (h - ch) // 2
        cropped = photo.crop((left, top, left + cw, top + ch))
        policy = replace(preprocessing, shorter_side=min(height, width),
                         max_longer_side=max(height, width), pixel_budget=None)
        return to_model_input(cropped, policy)

    sizes = parity_sizes(preprocessing)
    batches = [at(photos[i % len(photos)], h, w)[None] for i, (h, w) in enumerate(sizes)]
    batches.append(np.stack([at(photos[i % len(photos)], *sizes[-1]) for i in (1, 2)]))
    batches.append(to_model_input(photos[0], preprocessing)[None])
    return batches


def check_parity(
    model,
    onnx_path: str | os.PathLike,
    inputs: list[np.ndarray] | None = None,
    atol: float = PARITY_ATOL,
    label: str | None = None,
) -> ParityReport:
    """Compare torch and onnxruntime outputs; raise ParityError beyond ``atol``, or where
    either gives NaN. ``label`` names the model in messages (default ``onnx_path``)."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if names != output_names(model):
        raise ParityError(f"{label or onnx_path}: outputs {names}, torch model has "
                          f"{output_names(model)}")
    view = detail_view_of(model)
    if inputs is None:
        if view is not None:
            from .export_multiview import parity_inputs as two_view_inputs

            inputs = two_view_inputs(model.preprocessing, view)
        else:
            inputs = parity_inputs(model.preprocessing)
    device = device_of(model)
    was_training = model.training
    model.eval()
    graph = graph_module(model)
    worst = {name: 0.0 for name in names}
    try:
        for batch in inputs:
            feed = batch if isinstance(batch, dict) else {INPUT_NAME: batch}
            with torch.no_grad():
                expected = graph(*(torch.from_numpy(feed[n]).to(device)
                                   for n in input_names(model)))
            expected = expected if isinstance(expected, tuple) else (expected,)
            got = session.run(names, feed)
            for name, e, g in zip(names, expected, got, strict=True):
                worst[name] = max(worst[name], max_abs_difference(e.cpu().numpy(), g))
    finally:
        model.train(was_training)
    worst_score = max(worst[SCORE_OUTPUT], worst.get(MOS_OUTPUT, 0.0))
    worst_factors = worst.get(FACTORS_OUTPUT, 0.0)
    shapes = tuple((b[INPUT_NAME] if isinstance(b, dict) else b).shape for b in inputs)
    report = ParityReport(worst_score, worst_factors, shapes)
    if worst_score > atol or worst_factors > atol:
        raise ParityError(f"{label or onnx_path}: torch and onnxruntime disagree beyond {atol}: "
                          f"{report}")
    return report


def max_abs_difference(expected: np.ndarray, got: np.ndarray) -> float:
    """max |expected - got|, infinite where either holds NaN: a NaN compares False with
    any tolerance, so it would otherwise pass as a perfect match."""
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(expected, np.float64))
    return float("inf") if np.isnan(diff).any() else float(diff.max())
