"""Score millions of images on a Ray cluster into a Parquet dataset (`iqa batch`).

The job is a Ray Data pipeline with two stages:

1. **prepare** (Ray tasks, many in parallel): read each input from local disk, object
   storage (pyarrow file systems) or http(s) (the SSRF-safe fetcher the server uses),
   then decode and preprocess it with :meth:`QualityModel.prepare`;
2. **score** (an actor pool): each actor loads one :class:`QualityModel` once and scores
   batches with :meth:`QualityModel.score_tensors`.

The driver consumes the results and writes them as Parquet part files under OUTPUT.
Results are tiny (a path and a few numbers per image), so funnelling them through the
driver costs nothing next to decoding, and it lets every part file appear atomically:
a rerun reads the ``path`` column of the parts already there and skips those inputs.

Ray and pyarrow are imported inside functions: ``import iqa.inference`` must not pull
them, and nothing imports this module implicitly.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import posixpath
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .decode import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, IMAGE_EXTENSIONS
from .errors import ImageDecodeError, IQAError
from .model import ImagePreparer
from .option_ranges import out_of_range

MANIFEST_SUFFIXES = (".txt", ".lst", ".csv", ".parquet", ".pq")
GLOB_CHARS = frozenset("*?[")
# Besides http(s), which the fetcher reads: the object stores pyarrow opens ("file" too).
READABLE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "http", "https")
# Output columns before and after the per-factor columns (which are named after the
# model's factors, as in `iqa score --format csv`).
LEAD_COLUMNS = ("path", "score", "bucket")
TAIL_COLUMNS = ("status", "error_type", "error", "model_version")
# Caps the number of input blocks: each is a Ray object the driver creates up front, and
# more blocks than this buys no extra parallelism on any cluster we know of.
MAX_INPUT_BLOCKS = 20_000
DECODE_TASK_MEMORY = 512 * 1024 * 1024
# Half a CPU reserved per actor, so one actor per CPU by default (one per two reserved
# CPUs, the other CPU of each pair left to the decode tasks), each with one onnxruntime
# thread: on 2 cores, two one-thread actors scored 1,000 JPEGs in 12 % less time than one
# two-thread actor, whose threads wait for each other whenever a decode task takes a core
# (BENCHMARKS.md, "Batch scoring").
DEFAULT_CPUS_PER_ACTOR = 0.5


class BatchInputError(IQAError):
    """INPUT or OUTPUT cannot be used: no such folder, an unreadable manifest, no column."""

    error_type = "input_error"
    http_status = 400


@dataclass
class BatchSummary:
    """What one `iqa batch` run did. ``images`` counts rows written by this run."""

    output: str
    images: int = 0
    failures: int = 0
    skipped: int = 0
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"{self.images} images scored ({self.failures} failed), {self.skipped} skipped "
            f"(already in the output), {self.seconds:.1f} s, "
            f"{self.images_per_second:.1f} images/s -> {self.output}"
        )


@dataclass(frozen=True)
class _ModelSpec:
    """The driver's model, shipped to every worker through the object store.

    Workers on other nodes may not have the driver's ``--model`` file, or may have
    another iqa version with another shipped model; shipping the bytes guarantees that
    every row comes from the model whose version the driver records.
    """

    sha256: str
    data: Any  # ray.ObjectRef to the .onnx bytes; nested, so Ray does not inline it
    max_pixels: int | None
    min_side: int


@dataclass(frozen=True)
class _ReadOptions:
    s3: tuple[tuple[str, Any], ...] = ()  # S3FileSystem keyword arguments, hashable
    allow_private_urls: bool = False


# ----------------------------------------------------------------------- file systems


def is_uri(text: str) -> bool:
    """True for ``scheme://...`` (s3, gs, http...), False for local paths."""
    head, sep, _ = text.partition("://")
    return bool(sep) and head.isalnum() and len(head) > 1


def _is_http(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


@lru_cache(maxsize=64)
def _filesystem_for(scheme: str, bucket: str, s3: tuple):
    """One pyarrow file system per bucket per process (from_uri looks up the region)."""
    from pyarrow import fs as pafs

    if scheme == "s3" and s3:
        return pafs.S3FileSystem(**dict(s3))
    return pafs.FileSystem.from_uri(f"{scheme}://{bucket}")[0]


def resolve(uri: str, options: _ReadOptions = _ReadOptions()):
    """``(pyarrow FileSystem, path within it)`` for a local path or an object-store URI."""
    from pyarrow import fs as pafs

    if not is_uri(uri):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    scheme, _, rest = uri.partition("://")
    scheme = scheme.lower()
    if scheme == "file":
        return pafs.LocalFileSystem(), rest
    bucket = rest.split("/", 1)[0]
    return _filesystem_for(scheme, bucket, options.s3), rest.rstrip("/") or rest


def _to_uri(fs, path: str, like: str) -> str:
    """Turn a path inside ``fs`` back into the form the user wrote (local or URI)."""
    if not is_uri(like):
        return path
    return f"{like.partition('://')[0]}://{path}"


# ----------------------------------------------------------------------------- inputs


def list_inputs(
    source: str,
    *,
    column: str | None = None,
    recursive: bool = False,
    s3_options: dict | None = None,
) -> list[str]:
    """Every image INPUT names, as absolute local paths or URIs, without duplicates.

    INPUT is a folder (its images, sorted; with ``recursive``, those of sub-folders
    too), a glob (``photos/*.jpg``, ``s3://bucket/2024/**/*.jpg``), a manifest
    (``.txt``/``.lst``: one entry a line; ``.csv``/``.parquet``: the ``column`` column,
    default ``path`` or the only column) or a single image. Relative manifest entries
    are relative to the manifest's folder. Hidden files are skipped in folders and globs.
    """
    options = _read_options(s3_options)
    fs, path = resolve(source, options)
    from pyarrow import fs as pafs

    info = fs.get_file_info(path)
    # A folder or file that exists under its own name is that, brackets and all
    # ("shoot[2024]/"); only a name that does not exist is read as a glob.
    if info.type == pafs.FileType.NotFound and any(c in GLOB_CHARS for c in source):
        entries = _glob(fs, path, recursive)
    else:
        if info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(path, recursive=recursive)
            entries = sorted(
                i.path for i in fs.get_file_info(selector) if i.is_file and _is_image(i.path)
            )
        elif info.type == pafs.FileType.File and path.lower().endswith(MANIFEST_SUFFIXES):
            return _dedupe(_read_manifest(fs, path, source, column))
        elif info.type == pafs.FileType.File:
            entries = [path]
        else:
            raise BatchInputError(f"{source}: no such folder, manifest or image")
    return _dedupe(_to_uri(fs, p, source) for p in entries)


def _is_image(path: str) -> bool:
    name = posixpath.basename(path.replace(os.sep, "/"))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _glob(fs, pattern: str, recursive: bool) -> list[str]:
    from pyarrow import fs as pafs

    first = min(i for i, c in enumerate(pattern) if c in GLOB_CHARS)
    base = pattern[:first].rsplit("/", 1)[0] if "/" in pattern[:first] else ""
    remainder = pattern[len(base) :].lstrip("/")
    # `*` also matches "/", so only list sub-folders when the pattern asks for them.
    deep = recursive or "/" in remainder or "**" in remainder
    infos = fs.get_file_info(pafs.FileSelector(base or ".", recursive=deep, allow_not_found=True))
    matches = glob_regex(pattern).fullmatch
    return sorted(
        i.path
        for i in infos
        if i.is_file and matches(i.path) and not posixpath.basename(i.path).startswith(".")
    )


def glob_regex(pattern: str) -> re.Pattern:
    """A glob as a regex: ``**/`` is zero or more folders (``a/**/*.jpg`` matches
    ``a/x.jpg`` too, as in shells), ``*`` and ``**`` any text, ``/`` included, ``?`` one
    character, ``[...]`` a class (``[!...]`` negated). Case-sensitive, like the names."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern[i] == "*":
            out.append(".*")
            i += 2 if pattern.startswith("**", i) else 1
        elif pattern[i] == "?":
            out.append(".")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def _read_manifest(fs, path: str, source: str, column: str | None) -> list[str]:
    lower = path.lower()
    try:
        if lower.endswith((".txt", ".lst")):
            with fs.open_input_stream(path) as stream:
                lines = stream.read().decode("utf-8-sig").splitlines()
            entries = [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
        else:
            entries = _manifest_column(fs, path, source, column)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, BatchInputError):
            raise
        raise BatchInputError(f"{source}: cannot read the manifest: {exc}") from exc
    folder = posixpath.dirname(path) if is_uri(source) else os.path.dirname(path)

    def absolute(entry: str) -> str:
        if is_uri(entry) or (not is_uri(source) and os.path.isabs(entry)):
            return entry
        if is_uri(source):
            return _to_uri(fs, posixpath.normpath(posixpath.join(folder, entry)), source)
        return os.path.normpath(os.path.join(folder, os.path.expanduser(entry)))

    return [absolute(e) for e in entries]


def _manifest_column(fs, path: str, source: str, column: str | None) -> list[str]:
    import pyarrow as pa

    if path.lower().endswith(".csv"):
        from pyarrow import csv as pacsv

        with fs.open_input_stream(path) as stream:
            table = pacsv.read_csv(stream)
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path, filesystem=fs)
    names = table.column_names
    if column is None:
        column = "path" if "path" in names else (names[0] if len(names) == 1 else None)
        if column is None:
            raise BatchInputError(
                f"{source}: name the column that holds the images with --column "
                f"(columns: {', '.join(names)})"
            )
    if column not in names:
        raise BatchInputError(f"{source}: no column {column!r} (columns: {', '.join(names)})")
    values = table.column(column).cast(pa.string()).to_pylist()
    return [v.strip() for v in values if v is not None and v.strip()]


def _dedupe(items) -> list[str]:
    return list(dict.fromkeys(items))


def s3_options_from_endpoint(endpoint: str | None, region: str | None = None) -> dict | None:
    """``S3FileSystem`` keyword arguments for an S3-compatible endpoint URL (MinIO, moto...)."""
    from urllib.parse import urlsplit

    options: dict[str, Any] = {}
    if endpoint:
        parsed = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    if region:
        options["region"] = region
    return options or None


def _read_options(s3_options: dict | None, allow_private_urls: bool = False) -> _ReadOptions:
    return _ReadOptions(tuple(sorted((s3_options or {}).items())), allow_private_urls)


# ----------------------------------------------------------------------------- output


def output_schema(factor_names: list[str]):
    import pyarrow as pa

    fields = [
        pa.field("path", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("bucket", pa.string()),
    ]
    fields += [pa.field(_factor_column(n), pa.float64()) for n in factor_names]
    fields += [pa.field(n, pa.string()) for n in TAIL_COLUMNS]
    return pa.schema(fields)


def _factor_column(name: str) -> str:
    return f"factor_{name}" if name in LEAD_COLUMNS + TAIL_COLUMNS else name


def _output_parts(fs, root: str) -> list[str]:
    from pyarrow import fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(
        i.path
        for i in infos
        if i.is_file
        and i.path.endswith(".parquet")
        and not posixpath.basename(i.path).startswith((".", "_"))
    )


def read_done(output: str, s3_options: dict | None = None) -> tuple[set[str], set[str]]:
    """The paths that already have a row under OUTPUT, and the model versions that wrote them."""
    import pyarrow.dataset as pads

    fs, root = resolve(output, _read_options(s3_options))
    parts = _output_parts(fs, root)
    if not parts:
        return set(), set()
    try:
        table = pads.dataset(parts, filesystem=fs, format="parquet").to_table(
            columns=["path", "model_version"]
        )
    except (ValueError, KeyError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise BatchInputError(
            f"{output}: holds Parquet files that are not `iqa batch` output (no readable "
            f"path and model_version columns: {str(exc).splitlines()[0]}); choose an empty "
            "folder or prefix, or one a previous `iqa batch` wrote"
        ) from exc
    versions = {v for v in table.column("model_version").unique().to_pylist() if v is not None}
    return set(table.column("path").to_pylist()), versions


class PartWriter:
    """Buffers result rows and writes them as Parquet part files that appear atomically.

    A part is written when ``rows_per_file`` rows are buffered or ``flush_seconds`` have
    passed since the last one, so a killed job loses at most that much work plus the
    batches in flight. Locally a part is written under a hidden name and renamed; on
    object storage an object only becomes visible when its upload completes.
    """

    def __init__(self, output: str, schema, *, rows_per_file: int, flush_seconds: float,
                 s3_options: dict | None = None):
        from pyarrow import fs as pafs

        self.fs, self.root = resolve(output, _read_options(s3_options))
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        if self.fs.get_file_info(self.root).type == pafs.FileType.File:
            # Object stores have no folders: parts would land under "<object>/" beside it.
            raise FileExistsError(f"{output} is a file; OUTPUT must be a folder or prefix")
        self.fs.create_dir(self.root, recursive=True)
        self.schema = schema
        self.rows_per_file = rows_per_file
        self.flush_seconds = flush_seconds
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]
        self.files: list[str] = []
        self._pending: list = []
        self._rows = 0
        self._last_flush = time.monotonic()

    def add(self, table) -> None:
        if table.num_rows:
            self._pending.append(table.select(self.schema.names).cast(self.schema))
            self._rows += table.num_rows
        if self._rows >= self.rows_per_file or (
            self._rows and time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._last_flush = time.monotonic()
        if not self._rows:
            return
        table = pa.concat_tables(self._pending)
        name = f"part-{self.run_id}-{len(self.files):05d}.parquet"
        final = posixpath.join(self.root, name) if not self.local else os.path.join(self.root, name)
        target = os.path.join(self.root, f".{name}.tmp") if self.local else final
        with self.fs.open_output_stream(target) as stream:
            pq.write_table(table, stream, compression="zstd")
        if self.local:
            self.fs.move(target, final)
        self.files.append(final)
        self._pending, self._rows = [], 0


# ------------------------------------------------------------------------ Ray stages


_model_cache: dict[tuple, Any] = {}


def _load_model(spec: _ModelSpec, providers: tuple[str, ...] | None, threads: int | None):
    """A QualityModel for ``spec``, loaded once per worker process and configuration."""
    key = (spec.sha256, providers, threads)
    if key not in _model_cache:
        import ray

        from .model import QualityModel

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


def _read_source(uri: str, options: _ReadOptions):
    """What :meth:`QualityModel.prepare` takes: a local path, or bytes from storage/HTTP."""
    if not is_uri(uri) or uri.lower().startswith("file://"):
        return uri.removeprefix("file://")  # the decoder reports a missing file itself
    if _is_http(uri):
        from .fetch import FetchPolicy, fetch_url

        return fetch_url(uri, FetchPolicy(allow_private=options.allow_private_urls))
    scheme = uri.partition("://")[0].lower()
    if scheme not in READABLE_SCHEMES:
        raise ImageDecodeError(f"{uri}: cannot read {scheme}:// URIs; iqa batch reads local "
                               f"paths and {', '.join(s + '://' for s in READABLE_SCHEMES)}")
    try:
        fs, path = resolve(uri, options)
        with fs.open_input_file(path) as handle:
            return handle.read()
    except (OSError, ValueError) as exc:  # pyarrow: missing object, no permission, network
        raise ImageDecodeError(f"{uri}: cannot read: {exc}") from exc


def prepare_block(batch, preparer: ImagePreparer, options: _ReadOptions):
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
            item = preparer.prepare_pixels(_read_source(uri, options), uri)
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

    def __init__(self, spec: _ModelSpec, providers: tuple[str, ...] | None, threads: int | None):
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
                    record[_factor_column(name)] = value
            else:
                error = failure if row["prepared"] is not None else None
                record.update(
                    status="error",
                    error_type=type(error).__name__ if error else row["error_type"],
                    error=str(error) if error else row["error"],
                )
            out.append(record)
        return pa.Table.from_pylist(out, schema=self.schema)


# ------------------------------------------------------------------------- the job


# score_batch's numeric arguments: (lowest value, whether it is excluded).
VALUE_RANGES = {
    "batch_size": (1, False), "rows_per_file": (1, False), "cpus_per_actor": (0, True),
    "gpus_per_actor": (0, False), "threads": (1, False), "num_cpus": (1, False),
    "flush_seconds": (0, True), "max_pixels": (1, False),
}


def value_problem(values: dict, as_flags: bool = False) -> str | None:
    """What is wrong with score_batch's numeric ``values`` (by argument name), or None;
    ``as_flags`` names them as `iqa batch` options (``--cpus-per-actor``)."""
    def name(key: str) -> str:
        return "--" + key.replace("_", "-") if as_flags else key

    return out_of_range({name(key): (values.get(key), low, strict)
                         for key, (low, strict) in VALUE_RANGES.items()})


def parse_actors(text: str | int | None) -> tuple[int, int] | None:
    """``"4"`` -> (4, 4); ``"2-16"`` or ``"2:16"`` -> an autoscaling pool of 2 to 16."""
    if text is None:
        return None
    low, _, high = str(text).replace(":", "-").partition("-")
    try:
        low_n, high_n = int(low), int(high or low)
    except ValueError:
        raise ValueError(f"--actors must be N or MIN-MAX (whole numbers), got {text!r}") from None
    if not 1 <= low_n <= high_n:
        raise ValueError(f"--actors must be N or MIN-MAX with 1 <= MIN <= MAX, got {text!r}")
    return low_n, high_n


def _default_actors(gpus_per_actor: float, cpus_per_actor: float) -> tuple[int, int]:
    import ray

    resources = ray.cluster_resources()
    if gpus_per_actor > 0:
        n = int(resources.get("GPU", 0) // gpus_per_actor)
    else:
        # Half the CPUs reserved for scoring and half for decoding (one one-thread actor
        # per CPU by default): decoding a 1024x768 JPEG costs about a tenth of scoring it,
        # and the actors' threads use whatever CPU time the decode tasks leave idle.
        n = int(resources.get("CPU", 1) // (2 * cpus_per_actor))
    n = max(1, n)
    return n, n


def _check_pool(pool: tuple[int, int], cpus_per_actor: float) -> None:
    """Refuse a pool whose fixed minimum would hold every CPU: decoding would never run."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    if pool[0] * cpus_per_actor > cpus - 1:
        raise ValueError(
            f"{pool[0]} actors x {cpus_per_actor:g} CPUs leave no CPU of the cluster's "
            f"{cpus:g} for the decode tasks, and the job would wait forever; use fewer "
            "actors, or MIN-MAX with a small MIN on an autoscaling cluster"
        )


def score_batch(
    input: str,
    output: str,
    *,
    column: str | None = None,
    recursive: bool = False,
    model: str | os.PathLike | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    actors: str | int | tuple[int, int] | None = None,
    batch_size: int = 8,
    cpus_per_actor: float = DEFAULT_CPUS_PER_ACTOR,
    gpus_per_actor: float = 0.0,
    threads: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    allow_private_urls: bool = False,
    s3_options: dict | None = None,
    rows_per_file: int = 10_000,
    flush_seconds: float = 60.0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> BatchSummary:
    """Score every image INPUT names into the Parquet dataset OUTPUT; see `iqa batch --help`.

    Returns a :class:`BatchSummary`. Inputs that already have a row in OUTPUT are
    skipped. Bad inputs become error rows. Connects to the Ray cluster at ``address``
    (or ``RAY_ADDRESS``), else starts Ray locally with ``num_cpus`` CPUs, unless Ray is
    already initialised in this process. ``s3_options`` are keyword arguments of
    ``pyarrow.fs.S3FileSystem`` (``endpoint_override``, ``scheme``, ``region``...) used
    for every ``s3://`` INPUT, OUTPUT and image; without them pyarrow's defaults apply.
    """
    import ray

    from .model import QualityModel

    log = log or (lambda message: print(f"iqa batch: {message}", file=sys.stderr))
    problem = value_problem({"batch_size": batch_size, "rows_per_file": rows_per_file,
                             "cpus_per_actor": cpus_per_actor, "gpus_per_actor": gpus_per_actor,
                             "threads": threads, "num_cpus": num_cpus,
                             "flush_seconds": flush_seconds, "max_pixels": max_pixels})
    if problem:
        # Before Ray starts: a bad value otherwise surfaced as a ZeroDivisionError or as
        # hundreds of lines of actor tracebacks.
        raise ValueError(problem)
    pool = actors if isinstance(actors, tuple) else parse_actors(actors)
    options = _read_options(s3_options, allow_private_urls)
    # Load the model here first: a bad --model fails before any cluster work starts,
    # and the driver needs the factor names for the schema.
    local_model = QualityModel(model, providers=["CPUExecutionProvider"], threads=1,
                               max_pixels=max_pixels, min_side=min_side)
    factor_names = list(local_model.factor_names)
    version = local_model.info()["version"]
    model_bytes = local_model.path.read_bytes()

    try:
        paths = list_inputs(input, column=column, recursive=recursive, s3_options=s3_options)
    except OSError as exc:  # pyarrow: access denied, no such bucket, network down
        raise BatchInputError(f"{input}: cannot list: {exc}") from exc
    try:
        done, versions = read_done(output, s3_options)
    except OSError as exc:
        raise BatchInputError(f"{output}: cannot read the existing output: {exc}") from exc
    if not paths:
        raise BatchInputError(
            f"{input}: no image to score (folders are read by image extension, sub-folders "
            "only with -r; globs are case-sensitive and must be quoted)"
        )
    if versions - {version}:
        log(
            f"OUTPUT already holds rows from model version(s) {', '.join(sorted(versions))}; "
            f"new rows come from {version}. Inputs that already have a row are not scored "
            "again: to re-score them with this model, write to a new OUTPUT"
        )
    todo = [p for p in paths if p not in done]
    summary = BatchSummary(output=output, skipped=len(paths) - len(todo))
    if not todo:
        return summary
    try:
        writer = PartWriter(output, output_schema(factor_names), rows_per_file=rows_per_file,
                            flush_seconds=flush_seconds, s3_options=s3_options)
    except OSError as exc:
        raise BatchInputError(f"{output}: cannot write: {exc}") from exc

    started_ray = False
    if not ray.is_initialized():
        init: dict[str, Any] = {"address": address, "log_to_driver": True}
        if address is None and not os.environ.get("RAY_ADDRESS"):
            # Ray's dashboard needs `ray[default]`; the local instance does not need it.
            init.update(num_cpus=num_cpus, include_dashboard=False)
        ray.init(**init)
        started_ray = True
    try:
        pool = pool or _default_actors(gpus_per_actor, cpus_per_actor)
        _check_pool(pool, cpus_per_actor)
        return _run(
            todo, writer, summary,
            spec=_ModelSpec(
                hashlib.sha256(model_bytes).hexdigest(),
                ray.put(model_bytes),
                max_pixels,
                min_side,
            ),
            preparer=local_model.preparer(),
            options=options,
            pool=pool,
            batch_size=batch_size,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor,
            threads=threads,
            progress=progress,
        )
    finally:
        if started_ray:
            ray.shutdown()


def _run(todo, writer, summary, *, spec, preparer, options, pool, batch_size, cpus_per_actor,
         gpus_per_actor, threads, progress):
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    providers = (
        ("CUDAExecutionProvider", "CPUExecutionProvider") if gpus_per_actor > 0
        else ("CPUExecutionProvider",)
    )
    # Two onnxruntime threads per reserved CPU (one for the default half CPU): the decode
    # tasks leave part of their CPUs idle (decoding costs a fraction of scoring), and idle
    # onnxruntime threads do not spin (QualityModel turns spinning off).
    threads = threads or max(1, round(2 * cpus_per_actor))
    # One input block per decode task; a batch's worth of images each keeps the blocks
    # that flow to the actors small, MAX_INPUT_BLOCKS keeps huge jobs cheap to set up.
    rows_per_block = max(batch_size, -(-len(todo) // MAX_INPUT_BLOCKS))
    paths = pa.table({"path": pa.array(todo, type=pa.string())})
    blocks = [paths.slice(i, rows_per_block) for i in range(0, len(todo), rows_per_block)]
    # A job of fewer blocks than actors cannot keep them busy: start no more actors
    # than blocks (Ray Data warns about the idle ones, and each costs a process).
    low, high = (min(size, len(blocks)) for size in pool)
    # from_blocks takes the blocks' metadata here; from_arrow runs a Ray task per block
    # for it, which cost 1.2-1.4 s before the first decode on a loaded 2-core machine.
    from_blocks = getattr(ray.data, "from_blocks", None) or ray.data.from_arrow
    dataset = (
        from_blocks(blocks)
        .map_batches(
            prepare_block,
            batch_size=None,
            batch_format="pyarrow",
            fn_kwargs={"preparer": preparer, "options": options},
            num_cpus=1,
            # A task may hold a 64 MP photo decoded (~200 MB) plus its resized copy. The
            # reservation also keeps Ray Data from fusing this stage into the actors
            # (it fuses only ops with equal resource requests): fused, an actor would
            # decode and score in turn; apart, tasks decode while the actors score.
            memory=DECODE_TASK_MEMORY,
        )
        .map_batches(
            ScoreActor,
            batch_size=batch_size,
            batch_format="pyarrow",
            fn_constructor_kwargs={"spec": spec, "providers": providers, "threads": threads},
            compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor or None,
        )
    )
    start = time.perf_counter()
    try:
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.add(table)
            summary.images += table.num_rows
            failed = pc.sum(pc.equal(table.column("status"), "error")).as_py()
            summary.failures += int(failed or 0)
    finally:
        # Also on Ctrl-C or a cluster failure: the rows received so far are good, and a
        # rerun then skips them.
        writer.flush()
        summary.seconds = time.perf_counter() - start
        summary.files = list(writer.files)
    return summary
