"""QualityModel: load an ONNX quality model and score preprocessed images."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .contract import (
    FACTORS_OUTPUT,
    INPUT_NAME,
    META_FACTOR_NAMES,
    META_PREPROCESSING,
    SCORE_OUTPUT,
    Preprocessing,
    bucket_for,
)
from .errors import ModelLoadError

DEFAULT_MODEL_NAME = "iqa-lite0.onnx"


def default_model_path() -> Path:
    """Path of the model that ships inside the package."""
    return Path(str(resources.files("iqa.inference.weights") / DEFAULT_MODEL_NAME))


@dataclass
class QualityResult:
    score: float
    bucket: str
    factors: dict[str, float] | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"score": self.score, "bucket": self.bucket}
        if self.factors is not None:
            out["factors"] = self.factors
        return out


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def choose_providers(requested: list[str] | None = None) -> list[str]:
    """CUDA when present, else CPU; or exactly what was asked for, if available."""
    available = available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ModelLoadError(
                f"onnxruntime providers not available: {', '.join(missing)}; "
                f"available: {', '.join(available)}"
            )
        return list(requested)
    preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in available] or available


class QualityModel:
    """An ONNX quality model plus the preprocessing stored in its metadata."""

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        providers: list[str] | None = None,
        threads: int | None = None,
    ):
        import onnxruntime as ort

        self.path = Path(path) if path is not None else default_model_path()
        if not self.path.is_file():
            raise ModelLoadError(f"model file not found: {self.path}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=choose_providers(providers)
            )
        except ModelLoadError:
            raise
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"cannot load ONNX model {self.path}: {exc}") from exc
        self.metadata: dict[str, str] = dict(
            self.session.get_modelmeta().custom_metadata_map or {}
        )
        if META_PREPROCESSING not in self.metadata:
            raise ModelLoadError(
                f"{self.path} has no '{META_PREPROCESSING}' metadata; export it with `iqa export`"
            )
        self.preprocessing = Preprocessing.from_json(self.metadata[META_PREPROCESSING])
        outputs = [o.name for o in self.session.get_outputs()]
        if SCORE_OUTPUT not in outputs:
            raise ModelLoadError(f"{self.path} has no '{SCORE_OUTPUT}' output (has {outputs})")
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != [INPUT_NAME]:
            raise ModelLoadError(f"{self.path} must have one input '{INPUT_NAME}', has {inputs}")
        self.has_factors = FACTORS_OUTPUT in outputs
        self.factor_names: list[str] = (
            json.loads(self.metadata[META_FACTOR_NAMES])
            if self.has_factors and META_FACTOR_NAMES in self.metadata
            else []
        )
        self._outputs = [SCORE_OUTPUT] + ([FACTORS_OUTPUT] if self.has_factors else [])

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Run an Nx3xHxW float32 batch; return scores (N,) and factors (N, K) or None."""
        result = self.session.run(self._outputs, {INPUT_NAME: batch.astype(np.float32, copy=False)})
        scores = np.asarray(result[0], dtype=np.float32).reshape(-1)
        factors = np.asarray(result[1], dtype=np.float32) if self.has_factors else None
        return scores, factors

    def result_from_outputs(self, score: float, factors: np.ndarray | None) -> QualityResult:
        score = float(np.clip(score, 0.0, 1.0))
        named = None
        if factors is not None and self.factor_names:
            named = {n: float(np.clip(v, 0.0, 1.0)) for n, v in zip(self.factor_names, factors)}
        return QualityResult(score=score, bucket=bucket_for(score), factors=named)

    def score_tensors(self, tensors: list[np.ndarray]) -> list[QualityResult]:
        """Score preprocessed 3xHxW tensors; equal shapes are batched together."""
        results: list[QualityResult | None] = [None] * len(tensors)
        by_shape: dict[tuple, list[int]] = {}
        for i, t in enumerate(tensors):
            by_shape.setdefault(t.shape, []).append(i)
        for indices in by_shape.values():
            scores, factors = self.run(np.stack([tensors[i] for i in indices]))
            for j, i in enumerate(indices):
                results[i] = self.result_from_outputs(
                    scores[j], None if factors is None else factors[j]
                )
        return results  # type: ignore[return-value]
