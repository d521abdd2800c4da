"""The two Ray stages of `iqa batch`: a task that reads, decodes and preprocesses a block
of inputs, and an actor that holds one model and scores what the tasks prepared."""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import IQAError
from ..model import ImagePreparer
from .parts import factor_column, output_schema
from .sources import ReadOptions, read_source

# A decode task may hold a 64 MP photo decoded (~200 MB) plus its resized copy.
DECODE_TASK_MEMORY = 512 * 1024 * 1024


@dataclass(frozen=True)
class ModelSpec:
    """The driver's model, shipped to every worker through the object store.

    Workers on other nodes may not have the driver's ``--model`` file, or may have
    another iqa version with another shipped model; shipping the bytes guarantees that
    every row comes from the model whose version the driver records.
    """

    sha256: str
    data: Any  # ray.ObjectRef to the .onnx bytes; nested, so Ray does not inline it
    max_pixels: int | None
    min_side: int


_model_cache: dict[tuple, Any] = {}


def _load_model(spec: ModelSpec, providers: tuple[str, ...] | None, threads: int | None):
    """A QualityModel for ``spec``, loaded once per worker process and configuration."""
    key = (spec.sha256, providers, threads)
    if key not in _model_cache:
        import ray

        from ..model import QualityModel

        folder = Path(tempfile.gettempdir()) / "iqa-batch-models"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{spec.sha256}.onnx"
        if not path.is_file():
            # Several workers on one node may race: each writes its own file, then renames.
            tmp = folder / f".{spec.sha256}.{os.getpid()}.tmp"
            tmp.write_bytes(ray.get(spec.data))
            os.replace(tmp, path)
        _model_cache[key] = QualityModel(
            path,
            providers=list(providers) if providers else None,
            threads=threads,
            max_pixels=spec.max_pixels,
            min_side=spec.min_side,
        )
    return _model_cache[key]


def prepare_block(batch, preparer: ImagePreparer, options: ReadOptions):
    """Ray task: read, decode and preprocess one block of paths.

    Each row gets either ``prepared`` (the pickled output of
    :meth:`ImagePreparer.prepare_pixels`: the model inputs by name as uint8 pixels,
    normalised by the actor, which moves a quarter of the bytes of float32 inputs
    through the object store) or an error type and message. No model is loaded here:
    the preparer carries the model's preprocessing, so these tasks need no onnxruntime.
    """
    import pyarrow as pa

    prepared, error_types, errors = [], [], []
    for uri in batch.column("path").to_pylist():
        try:
            item = preparer.prepare_pixels(read_source(uri, options), uri)
            prepared.append(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
            error_types.append(None)
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - one bad input must not stop the job
            if not isinstance(exc, IQAError):
                exc = IQAError(f"{uri}: unexpected error: {exc!r}")
            prepared.append(None)
            error_types.append(type(exc).__name__)
            errors.append(str(exc))
    return pa.table(
        {
            "path": batch.column("path"),
            "prepared": pa.array(prepared, type=pa.large_binary()),
            "error_type": pa.array(error_types, type=pa.string()),
            "error": pa.array(errors, type=pa.string()),
        }
    )


class ScoreActor:
    """Ray actor: holds one QualityModel and scores batches of prepared images."""

    def __init__(self, spec: ModelSpec, providers: tuple[str, ...] | None, threads: int | None):
        self.model = _load_model(spec, providers, threads)
        self.version = self.model.info()["version"]
        self.schema = output_schema(list(self.model.factor_names))

    def __call__(self, batch):
        import pyarrow as pa

        rows = batch.to_pylist()
        ok = [i for i, r in enumerate(rows) if r["prepared"] is not None]
        try:
            results = self.model.score_tensors(
                [self.model.inputs_from_pixels(pickle.loads(rows[i]["prepared"])) for i in ok]
            )
            failure = None
        except Exception as exc:  # noqa: BLE001 - onnxruntime errors are untyped
            results, failure = [], IQAError(f"the model failed on a batch: {exc}")
        scored = dict(zip(ok, results, strict=False))
        out = []
        for i, row in enumerate(rows):
            record = {"path": row["path"], "model_version": self.version}
            result = scored.get(i)
            if result is not None:
                record.update(score=result.score, bucket=result.bucket, status="ok")
                for name, value in (result.factors or {}).items():
                    record[factor_column(name)] = value
            else:
                error = failure if row["prepared"] is not None else None
                record.update(
                    status="error",
                    error_type=type(error).__name__ if error else row["error_type"],
                    error=str(error) if error else row["error"],
                )
            out.append(record)
        return pa.Table.from_pylist(out, schema=self.schema)
