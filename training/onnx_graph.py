"""The graph ``iqa export`` traces: which inputs and outputs a model has, in which order.

One source for the exporter and its parity check, which must agree on both. Every export
failure is an :class:`ExportError`.
"""

from __future__ import annotations

from iqa.inference.contract import (
    DETAIL_INPUT,
    DETAIL_SCALE_INPUT,
    FACTORS_OUTPUT,
    INPUT_NAME,
    MOS_OUTPUT,
    SCORE_OUTPUT,
)


class ExportError(RuntimeError):
    """The model could not be exported, or the export does not match torch."""


def graph_module(model):
    """What the exporter traces, returning the tensors of :func:`output_names` in order."""
    import torch

    class Outputs(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, detail=None, scale=None):
            if is_calibrated(self.inner):
                score, mos, factors = self.inner.forward_calibrated(x, detail, scale)
                return (score, mos, factors) if has_factors(self.inner) else (score, mos)
            score, factors = self.inner(x, detail, scale)
            return (score, factors) if has_factors(self.inner) else score

    return Outputs(model)


def detail_view_of(model):
    """The model's DetailView, or None for a single-view model."""
    return getattr(model, "detail_view", None)


def input_names(model) -> list[str]:
    """``image``, ``detail`` for a model with a detail view, ``detail_scale`` if that view
    has ``native_scale``."""
    view = detail_view_of(model)
    return ([INPUT_NAME] + ([DETAIL_INPUT] if view is not None else [])
            + ([DETAIL_SCALE_INPUT] if view is not None and view.native_scale else []))


def is_calibrated(model) -> bool:
    return getattr(model, "calibration", None) is not None


def output_names(model) -> list[str]:
    """``score`` (+ ``mos`` for a calibrated model, whose ``score`` is on the page's scale)
    (+ ``factors``)."""
    return ([SCORE_OUTPUT] + ([MOS_OUTPUT] if is_calibrated(model) else [])
            + ([FACTORS_OUTPUT] if has_factors(model) else []))


def device_of(model):
    return next(model.parameters()).device


def has_factors(model) -> bool:
    return getattr(model, "num_factors", 0) > 0
