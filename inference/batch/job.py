"""`score_batch`: check the arguments, list what is left to do, start or join Ray, and
run the pipeline into the Parquet output."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..decode import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from ..option_ranges import out_of_range
from .parts import PartWriter, output_schema, read_done
from .sources import BatchInputError, list_inputs, read_options
from .stages import DECODE_TASK_MEMORY, ModelSpec, ScoreActor, prepare_block

# Caps the number of input blocks: each is a Ray object the driver creates up front, and
# more blocks than this buys no extra parallelism on any cluster we know of.
MAX_INPUT_BLOCKS = 20_000
# Half a CPU reserved per actor, so one actor per CPU by default (one per two reserved
# CPUs, the other CPU of each pair left to the decode tasks), each with one onnxruntime
# thread: on 2 cores, two one-thread actors scored 1,000 JPEGs in 12 % less time than one
# two-thread actor, whose threads wait for each other whenever a decode task takes a core
# (BENCHMARKS.md, "Batch scoring").
DEFAULT_CPUS_PER_ACTOR = 0.5


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
            "actors, or MIN-MAX with a small MIN on an autoscaling cluster, or give the "
            "cluster more CPUs (a local one needs --num-cpus 2 at least: one for an actor, "
            "one for decoding; Ray's CPUs are logical and may exceed the machine's cores)"
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

    from ..model import QualityModel

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
    options = read_options(s3_options, allow_private_urls)
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
    if "://" not in output and os.path.isfile(output):
        raise BatchInputError(f"{output} is a file; OUTPUT is the folder (or s3:// prefix) "
                              "that holds the Parquet parts")
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
            spec=ModelSpec(
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
            # The memory reservation also keeps Ray Data from fusing this stage into the
            # actors (it fuses only ops with equal resource requests): fused, an actor
            # would decode and score in turn; apart, tasks decode while the actors score.
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
