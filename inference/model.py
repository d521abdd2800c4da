"""QualityModel: load an ONNX quality model and score images with it.

The model file carries its own preprocessing in its metadata (the ONNX contract in
:mod:`iqa.inference.contract`), so this module never guesses a size or a mean.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from itertools import islice
from pathlib import Path

import numpy as np

from .contract import (
    DETAIL_INPUT,
    DETAIL_SCALE_INPUT,
    FACTORS_OUTPUT,
    INPUT_NAME,
    META_BACKBONE,
    META_CREATED,
    META_FACTOR_NAMES,
    META_INPUTS,
    META_LICENSE,
    META_METRICS,
    META_MODEL_VERSION,
    META_PREPROCESSING,
    META_TRAINING_DATA,
    MOS_OUTPUT,
    SCORE_OUTPUT,
    DetailView,
    Preprocessing,
    bucket_for,
)
from .decode import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, ImageSource
from .errors import IQAError, ModelLoadError
from .preprocess import decode_for_model, normalise_pixels, to_model_inputs, to_model_pixels

DEFAULT_MODEL_NAME = "iqa-lite0-v2.1.onnx"

# One prepared image: every model input by ONNX input name (see ``QualityModel.prepare``).
Prepared = dict[str, np.ndarray]


@dataclass(frozen=True)
class ImagePreparer:
    """Decoding and preprocessing of one model, without the model: small and picklable.

    What :meth:`QualityModel.preparer` returns, for processes that only prepare images
    (they then need neither onnxruntime nor the model file). ``prepare`` equals
    :meth:`QualityModel.prepare`; ``prepare_pixels`` stops before normalisation, and
    :meth:`QualityModel.inputs_from_pixels` finishes the job where the model runs.
    """

    preprocessing: Preprocessing
    detail_view: DetailView | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE

    def decode(self, source: ImageSource, name: str | None = None):
        return decode_for_model(
            source,
            self.preprocessing,
            max_pixels=self.max_pixels,
            min_side=self.min_side,
            name=name,
            native=self.detail_view is not None,
        )

    def prepare(self, source: ImageSource, name: str | None = None) -> Prepared:
        return to_model_inputs(self.decode(source, name), self.preprocessing, self.detail_view)

    def prepare_pixels(self, source: ImageSource, name: str | None = None) -> Prepared:
        """Like :meth:`prepare`, but HxWx3 uint8 arrays: a quarter of the bytes."""
        return to_model_pixels(self.decode(source, name), self.preprocessing, self.detail_view)


def default_model_path() -> Path:
    """Path of the model that ships inside the package."""
    return Path(str(resources.files("iqa.inference.weights") / DEFAULT_MODEL_NAME))


@dataclass
class QualityResult:
    score: float
    bucket: str
    factors: dict[str, float] | None = None
    extra: dict = field(default_factory=dict)
    # The raw prediction on the training data's MOS scale (model v2 and later), before the
    # calibration onto the reference page's scale; None for models without a `mos` output.
    mos: float | None = None

    def to_dict(self) -> dict:
        out = {"score": self.score, "bucket": self.bucket}
        if self.factors is not None:
            out["factors"] = self.factors
        if self.mos is not None:
            out["mos"] = self.mos
        return out


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def choose_providers(requested: list[str] | None = None) -> list[str]:
    """CUDA when present, else CPU; or exactly what was asked for, if available."""
    available = available_providers()
    if requested:
        missing = [_provider_name(p) for p in requested if _provider_name(p) not in available]
        if missing:
            raise ModelLoadError(
                f"onnxruntime providers not available: {', '.join(missing)}; "
                f"available: {', '.join(available)}"
            )
        return list(requested)
    preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in available] or available


def _check_providers_active(session, requested: list[str] | None, path: Path) -> None:
    """A provider that is installed can still fail to start (CUDA libraries missing, no
    device): onnxruntime then logs a warning and runs on the CPU. A user who asked for it
    by name gets an error instead of a silent, slower fallback."""
    if not requested:
        return
    active = session.get_providers()
    inactive = [_provider_name(p) for p in requested if _provider_name(p) not in active]
    if inactive:
        raise ModelLoadError(
            f"{path}: onnxruntime could not start {', '.join(inactive)} (running on: "
            f"{', '.join(active)}); check the GPU driver and CUDA/cuDNN libraries, or leave "
            "out --providers to use what works"
        )


def _is_whole(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and math.isfinite(value) and float(value).is_integer()


def _provider_name(provider) -> str:
    """onnxruntime takes a name or a (name, options) pair."""
    return provider if isinstance(provider, str) else str(provider[0])


def _is_stateful(source) -> bool:
    """Whether reading ``source`` changes it: a file object (its position) or a PIL image
    (its lazy load), as opposed to a path, bytes or an array."""
    return not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray))


class QualityModel:
    """An ONNX quality model plus the preprocessing stored in its metadata.

    ``path`` None loads the shipped model. ``providers`` are onnxruntime execution
    providers (default: CUDA if available, else CPU); ``threads`` its intra-op threads.
    ``max_pixels`` and ``min_side`` are the decoder's limits (see :func:`decode_image`);
    ``run_batch_size`` caps images per onnxruntime call (default: see
    :attr:`run_batch_size`). Thread-safe: one instance can serve many threads.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        providers: list[str] | None = None,
        threads: int | None = None,
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        min_side: int = DEFAULT_MIN_SIDE,
        run_batch_size: int | None = None,
    ):
        import onnxruntime as ort

        # Caught here, not at the first photo: a limit of 0 would refuse every image.
        for name, value, low in (("max_pixels", max_pixels, 1), ("min_side", min_side, 1),
                                 ("run_batch_size", run_batch_size, 1), ("threads", threads, 0)):
            if value is None and name != "min_side":
                continue  # automatic, or (max_pixels) only Pillow's own limit
            if not _is_whole(value) or value < low:
                raise ValueError(f"QualityModel: {name} must be a whole number >= {low}, "
                                 f"got {value!r}")
        if isinstance(providers, str):  # "CUDAExecutionProvider,CPUExecutionProvider"
            providers = [p.strip() for p in providers.split(",") if p.strip()]
        if path is not None and not os.fspath(path):
            # Path("") is the current folder, which would be named as the model.
            raise ModelLoadError("the model path is empty: give an .onnx file, or no path "
                                 "for the shipped model")
        self.path = Path(path) if path is not None else default_model_path()
        if self.path.is_dir():
            raise ModelLoadError(f"{self.path} is a folder, not a model file: give the .onnx "
                                 "file")
        if not self.path.is_file():
            what = "model file" if path is not None else "the shipped model is missing:"
            raise ModelLoadError(f"{what} not found: {self.path}")
        self.max_pixels = max_pixels
        self.min_side = min_side
        self._run_batch_size = run_batch_size
        self.threads = threads
        options = ort.SessionOptions()
        if threads:
            try:
                options.intra_op_num_threads = int(threads)
            except (TypeError, OverflowError):  # beyond what onnxruntime can hold
                raise ValueError(f"QualityModel: threads={threads} is more than onnxruntime "
                                 "takes") from None
        # Idle onnxruntime threads spin by default, stealing the CPU that the decode
        # workers need: 15 images/s end to end with spinning, 26 without (Lite0, 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=choose_providers(providers)
            )
        except ModelLoadError:
            raise
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"cannot load ONNX model {self.path}: {exc}") from exc
        _check_providers_active(self.session, providers, self.path)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map or {})
        if META_PREPROCESSING not in self.metadata:
            raise ModelLoadError(
                f"{self.path} has no '{META_PREPROCESSING}' metadata; export it with `iqa export`"
            )
        try:
            self.preprocessing = Preprocessing.from_model_metadata(
                self.metadata[META_PREPROCESSING])
        except ValueError as exc:
            raise ModelLoadError(f"{self.path}: unusable '{META_PREPROCESSING}' metadata: "
                                 f"{exc}") from None
        outputs = [o.name for o in self.session.get_outputs()]
        if SCORE_OUTPUT not in outputs:
            raise ModelLoadError(f"{self.path} has no '{SCORE_OUTPUT}' output (has {outputs})")
        inputs = [i.name for i in self.session.get_inputs()]
        # v1 models take `image` only; v2 adds `detail`, whose recipe is in the metadata, and
        # a detail view with `native_scale` adds `detail_scale` too.
        self.detail_view: DetailView | None = None
        two_views = {INPUT_NAME, DETAIL_INPUT}
        if set(inputs) in (two_views, two_views | {DETAIL_SCALE_INPUT}):
            try:
                recipes = json.loads(self.metadata[META_INPUTS])
                self.detail_view = DetailView.from_json(recipes[DETAIL_INPUT])
            except (KeyError, ValueError, TypeError) as exc:
                raise ModelLoadError(
                    f"{self.path} has a '{DETAIL_INPUT}' input but no usable recipe for it in "
                    f"the '{META_INPUTS}' metadata: {exc!r}"
                ) from exc
            if self.detail_view.native_scale != (DETAIL_SCALE_INPUT in inputs):
                raise ModelLoadError(
                    f"{self.path}: its '{DETAIL_INPUT}' recipe and its inputs {inputs} disagree "
                    f"on the '{DETAIL_SCALE_INPUT}' input"
                )
        elif inputs != [INPUT_NAME]:
            raise ModelLoadError(
                f"{self.path} must take '{INPUT_NAME}' (and optionally '{DETAIL_INPUT}' and "
                f"'{DETAIL_SCALE_INPUT}'), has {inputs}"
            )
        self.input_names = inputs
        self.has_factors = FACTORS_OUTPUT in outputs
        self.has_mos = MOS_OUTPUT in outputs
        self.factor_names: list[str] = (
            json.loads(self.metadata[META_FACTOR_NAMES])
            if self.has_factors and META_FACTOR_NAMES in self.metadata
            else []
        )
        if self.has_factors:
            width = self.session.get_outputs()[outputs.index(FACTORS_OUTPUT)].shape[-1]
            if isinstance(width, int) and self.factor_names and width != len(self.factor_names):
                raise ModelLoadError(
                    f"{self.path}: output '{FACTORS_OUTPUT}' has {width} columns but the "
                    f"metadata names {len(self.factor_names)} factors"
                )
        self._outputs = ([SCORE_OUTPUT] + ([FACTORS_OUTPUT] if self.has_factors else [])
                         + ([MOS_OUTPUT] if self.has_mos else []))

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    @property
    def run_batch_size(self) -> int | None:
        """Most images per onnxruntime call: None (no limit) on a GPU, 1 on the CPU.

        On the CPU a convnet gains nothing from batching (each image's feature maps
        already fill the cores) and loses cache locality. Lite0 at 320x416 on 2 cores:
        17 ms/image alone, 17 in batches of 4, 19 in batches of 16 on an idle machine;
        70 against 90 while other jobs loaded it.
        """
        if self._run_batch_size is not None:
            return self._run_batch_size
        return 1 if self.providers[0] == "CPUExecutionProvider" else None

    def run(self, batch: np.ndarray | Prepared) -> tuple[np.ndarray, np.ndarray | None]:
        """Run a batch; return scores (N,) and factors (N, K) or None.

        ``batch`` is an Nx3xHxW float32 array (the `image` input of a one-input model) or
        a dict of batched inputs by name. :meth:`run_outputs` also returns `mos`.
        """
        outputs = self.run_outputs(batch)
        return outputs[SCORE_OUTPUT], outputs.get(FACTORS_OUTPUT)

    def run_outputs(self, batch: np.ndarray | Prepared) -> dict[str, np.ndarray]:
        """Every output of the model on a batch, by output name."""
        feed = batch if isinstance(batch, dict) else {INPUT_NAME: batch}
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise ValueError(f"missing model input(s) {missing}; prepare images with "
                             "QualityModel.prepare")
        feed = {n: np.asarray(feed[n], dtype=np.float32) for n in self.input_names}
        result = dict(zip(self._outputs, self.session.run(self._outputs, feed), strict=True))
        out = {SCORE_OUTPUT: np.asarray(result[SCORE_OUTPUT], dtype=np.float32).reshape(-1)}
        for name in (FACTORS_OUTPUT, MOS_OUTPUT):
            if name in result:
                out[name] = np.asarray(result[name], dtype=np.float32)
        return out

    def result_from_outputs(self, score: float, factors: np.ndarray | None,
                            mos: float | None = None) -> QualityResult:
        if not np.isfinite(score):
            # Clipping would turn NaN into a "very_good" photo.
            raise IQAError(f"{self.path.name} returned a score of {float(score)}: the model "
                           "file is broken, or the input was not prepared by this model")
        score = float(np.clip(score, 0.0, 1.0))
        named = None
        if factors is not None and self.factor_names:
            named = {
                n: float(np.clip(v, 0.0, 1.0))
                for n, v in zip(self.factor_names, factors, strict=True)
            }
        return QualityResult(score=score, bucket=bucket_for(score), factors=named,
                             mos=None if mos is None else float(mos))

    def score_tensors(self, prepared: list[Prepared | np.ndarray]) -> list[QualityResult]:
        """Score prepared images (:meth:`prepare`); equal shapes run together, up to
        :attr:`run_batch_size` at a time. A bare 3xHxW array is a one-input model's `image`."""
        items = [p if isinstance(p, dict) else {INPUT_NAME: p} for p in prepared]
        results: list[QualityResult | None] = [None] * len(items)
        by_shape: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            key = tuple((n, item[n].shape) for n in sorted(item))
            by_shape.setdefault(key, []).append(i)
        step = self.run_batch_size or len(items) or 1
        for same_shape in by_shape.values():
            for start in range(0, len(same_shape), step):
                indices = same_shape[start : start + step]
                batch = {n: np.stack([items[i][n] for i in indices]) for n in items[indices[0]]}
                out = self.run_outputs(batch)
                for j, i in enumerate(indices):
                    results[i] = self.result_from_outputs(
                        out[SCORE_OUTPUT][j],
                        out[FACTORS_OUTPUT][j] if FACTORS_OUTPUT in out else None,
                        out[MOS_OUTPUT].reshape(-1)[j] if MOS_OUTPUT in out else None,
                    )
        return results  # type: ignore[return-value]

    # ----------------------------------------------------------------- images in, scores out

    def decode(self, source: ImageSource, name: str | None = None):
        """Decode ``source`` to RGB. One-input models let JPEGs decode at a reduced DCT
        scale; a model with a detail view needs the photo's own pixels. A colour profile
        is left in ``info["icc_profile"]``, applied by :meth:`prepare` at the model's view
        (``iqa.inference.decode_image`` returns the photo already in sRGB)."""
        return self.preparer().decode(source, name)

    def prepare(self, source: ImageSource, name: str | None = None) -> Prepared:
        """Decode and preprocess one image into its model inputs, by input name.

        The result is a dict of float32 arrays (picklable, so it can cross processes);
        :meth:`score_tensors` scores a list of them.
        """
        return self.preparer().prepare(source, name)

    def preparer(self) -> ImagePreparer:
        """This model's decoding and preprocessing, to run where the model is not loaded."""
        return ImagePreparer(self.preprocessing, self.detail_view, self.max_pixels,
                             self.min_side)

    def inputs_from_pixels(self, pixels: Prepared) -> Prepared:
        """:meth:`ImagePreparer.prepare_pixels` output -> what :meth:`prepare` returns
        (the same arrays, bit for bit), ready for :meth:`score_tensors`."""
        return normalise_pixels(pixels, self.preprocessing, self.detail_view)

    def score(self, source: ImageSource, name: str | None = None) -> QualityResult:
        """Score one image; raises an IQAError subclass if it cannot be scored."""
        return self.score_tensors([self.prepare(source, name)])[0]

    def iter_scores(
        self,
        sources: Iterable,
        batch_size: int = 16,
        workers: int = 2,
        *,
        loader: Callable[[object], ImageSource] | None = None,
    ) -> Iterator[tuple[int, QualityResult | IQAError]]:
        """Yield ``(index, result)`` for every source, in input order.

        ``workers`` threads decode and preprocess (0: in this thread) while the model
        scores the previous batch; equal-shaped tensors of a batch run together. A source
        that fails yields its IQAError instead of a result and the others carry on.
        ``loader``, when given, turns each source into something :func:`decode_image`
        takes, in a worker thread (the CLI fetches URLs with it).
        """
        if isinstance(sources, (str, bytes, os.PathLike)):
            # Iterating one path would score each of its characters as a file.
            raise TypeError(f"sources must be a list or other iterable of images, not one "
                            f"{type(sources).__name__}; score one image with score()")
        if not _is_whole(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        if not _is_whole(workers) or workers < 0:
            raise ValueError(f"workers must be a whole number >= 0, got {workers!r}")
        numbered = enumerate(sources)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="iqa-decode") if workers > 0 else None
        # A file object or PIL image listed twice must not be read by two workers at once:
        # they would share its position or its lazy load and decode garbage, or damage
        # the caller's object. Each such object of the two batches in flight gets a lock;
        # paths, bytes and arrays are read without one.
        locks: dict[int, threading.Lock] = {}

        def submit_next_batch() -> list[tuple[int, Future | Prepared | IQAError]]:
            batch = list(islice(numbered, batch_size))
            if pool is None:
                return [(i, self._prepare_safely(src, loader)) for i, src in batch]
            in_flight = {id(src) for _, src in batch if _is_stateful(src)}
            for key in [k for k in locks if k not in in_flight and k not in previous]:
                del locks[key]  # the batch that used it is done: keep the dict small
            previous.clear()
            previous.update(in_flight)
            return [(i, pool.submit(self._prepare_safely, src, loader,
                                    locks.setdefault(id(src), threading.Lock())
                                    if id(src) in in_flight else None)) for i, src in batch]

        previous: set[int] = set()  # the stateful sources of the batch submitted last
        try:
            pending = submit_next_batch()
            while pending:
                # Queue the next batch first so the workers decode it while the model runs.
                upcoming = submit_next_batch()
                prepared = [(i, p.result() if isinstance(p, Future) else p) for i, p in pending]
                yield from self._score_prepared(prepared)
                pending = upcoming
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def score_many(
        self,
        sources: Iterable,
        batch_size: int = 16,
        workers: int = 2,
        *,
        loader: Callable[[object], ImageSource] | None = None,
    ) -> list[QualityResult | IQAError]:
        """Score all ``sources``; failed items hold their IQAError, in input order."""
        return [r for _, r in self.iter_scores(sources, batch_size, workers, loader=loader)]

    def _prepare_safely(self, source, loader, lock=None) -> Prepared | IQAError:
        name = str(source) if isinstance(source, (str, os.PathLike)) else None
        try:
            with lock or contextlib.nullcontext():
                return self.prepare(loader(source) if loader else source, name)
        except IQAError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - one bad item must not stop a batch
            error = IQAError(f"{name or 'image'}: unexpected error: {exc!r}")
            error.__cause__ = exc
            return error

    def _score_prepared(self, prepared: list[tuple[int, Prepared | IQAError]]):
        ok = [(i, t) for i, t in prepared if not isinstance(t, IQAError)]
        try:
            scored = dict(
                zip([i for i, _ in ok], self.score_tensors([t for _, t in ok]), strict=True)
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime errors are untyped
            error = IQAError(f"the model failed on a batch: {exc}")
            scored = {i: error for i, _ in ok}
        for i, item in prepared:
            yield i, item if isinstance(item, IQAError) else scored[i]

    # ------------------------------------------------------------------------ description

    def info(self) -> dict:
        """Everything known about the model, for `iqa info` and the HTTP API."""
        meta = self.metadata

        def parsed(key: str):
            try:
                return json.loads(meta[key]) if key in meta else None
            except json.JSONDecodeError:
                return meta[key]

        def describe(node) -> dict:
            return {"name": node.name, "type": node.type, "shape": list(node.shape)}

        known = {
            META_MODEL_VERSION,
            META_BACKBONE,
            META_TRAINING_DATA,
            META_METRICS,
            META_PREPROCESSING,
            META_FACTOR_NAMES,
            META_LICENSE,
            META_CREATED,
            META_INPUTS,
        }
        return {
            "path": str(self.path),
            "version": meta.get(META_MODEL_VERSION),
            "backbone": meta.get(META_BACKBONE),
            "training_data": meta.get(META_TRAINING_DATA),
            "validation_metrics": parsed(META_METRICS),
            "license": meta.get(META_LICENSE),
            "created": meta.get(META_CREATED),
            "preprocessing": asdict(self.preprocessing),
            "detail_view": asdict(self.detail_view) if self.detail_view else None,
            "factor_names": list(self.factor_names),
            "inputs": [describe(n) for n in self.session.get_inputs()],
            "outputs": [describe(n) for n in self.session.get_outputs()],
            "providers": self.providers,
            "other_metadata": {k: v for k, v in meta.items() if k not in known},
        }
