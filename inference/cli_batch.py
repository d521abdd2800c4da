"""`iqa batch`: score millions of images on a Ray cluster into a Parquet dataset.

A thin layer over :func:`iqa.inference.batch.score_batch`; Ray and pyarrow are imported
in ``run`` only, so ``iqa batch --help`` works on the base install.
"""

from __future__ import annotations

import argparse
import sys

from .batch import DEFAULT_CPUS_PER_ACTOR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = """\
Score every image INPUT names with Ray Data and write one row per image to the
Parquet dataset OUTPUT: path, score, bucket, one column per factor, status,
error_type, error and model_version. Ray tasks read, decode and preprocess; a pool
of actors, each holding the model once, scores. A missing, broken or refused image
becomes an error row and the job carries on. Rerunning into the same OUTPUT skips
the inputs that already have a row, so an interrupted job resumes where it stopped.
At the end it prints images scored, failures and images/s; the exit status is 0
when the job ran to the end, failed images included (they are rows in OUTPUT).

INPUT is a folder, a glob (quote it), a manifest (.txt/.lst: one path or URI a line;
.csv/.parquet: see --column; relative entries are relative to the manifest) or one
image. Paths may be local, s3://, gs:// or http(s):// (fetched like `iqa serve`
does: private addresses are refused). OUTPUT is a local folder or s3:// / gs:// prefix.

Needs:  pip install "iqa[distributed]"   (GPU actors: also "iqa[gpu]")"""
    parser.epilog = """\
examples:
  iqa batch photos/ scores/
  iqa batch "s3://bucket/shoots/**/*.jpg" s3://bucket/iqa-scores/ --address auto
  iqa batch manifest.csv scores/ --column url --actors 4 --gpus-per-actor 0.5
  python -c "import pandas as pd; print(pd.read_parquet('scores/').describe())\""""
    parser.add_argument("input", metavar="INPUT", help="folder, glob, manifest or image")
    parser.add_argument("output", metavar="OUTPUT", help="Parquet dataset folder or URI prefix")
    parser.add_argument(
        "--column", metavar="NAME",
        help="manifest column holding the paths/URIs (default: 'path', or the only column)",
    )
    parser.add_argument(
        "-r", "--recursive", action="store_true", help="also take images in sub-folders"
    )
    parser.add_argument("--model", metavar="PATH", help="ONNX model (default: the shipped one)")
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument(
        "--address", metavar="ADDR",
        help="Ray cluster to join: 'auto' (this node belongs to one, e.g. after `ray start`), "
        "ray://HOST:10001, or HOST:6379. Default: $RAY_ADDRESS, else start Ray locally",
    )
    cluster.add_argument(
        "--num-cpus", type=int, metavar="N", help="CPUs for a local Ray (default: all)"
    )
    cluster.add_argument(
        "--actors", metavar="N|MIN-MAX",
        help="scoring actors: a fixed count, or an autoscaling range (default: GPUs / "
        "--gpus-per-actor with GPUs, else CPUs / (2 x --cpus-per-actor), so that half the "
        "CPUs score and half decode)",
    )
    cluster.add_argument(
        "--batch-size", type=int, default=8, metavar="N",
        help="images per actor call (default 8: on CPUs larger batches only delay the first "
        "and last results; on GPUs use 64 or more)",
    )
    cluster.add_argument(
        "--cpus-per-actor", type=float, default=DEFAULT_CPUS_PER_ACTOR, metavar="X",
        help=f"CPUs Ray reserves for each actor (default {DEFAULT_CPUS_PER_ACTOR:g}: with the "
        "default --actors and --threads, one one-thread actor per CPU)",
    )
    cluster.add_argument(
        "--gpus-per-actor", type=float, default=0.0, metavar="X",
        help="GPUs per actor, e.g. 1 or 0.25 to share one GPU among 4 actors; actors then "
        "run onnxruntime's CUDAExecutionProvider (needs onnxruntime-gpu on the workers)",
    )
    cluster.add_argument(
        "--threads", type=int, metavar="N",
        help="onnxruntime threads per actor (default: twice --cpus-per-actor, which fills "
        "the CPU time the decode tasks leave idle)",
    )
    storage = parser.add_argument_group("reading and writing")
    storage.add_argument(
        "--s3-endpoint", metavar="URL",
        help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 for MinIO (default: AWS; "
        "credentials come from the usual AWS environment variables and files)",
    )
    storage.add_argument("--s3-region", metavar="NAME", help="S3 region (with --s3-endpoint)")
    storage.add_argument(
        "--allow-private-urls", action="store_true",
        help="fetch http(s) URLs that resolve to private, loopback or link-local addresses",
    )
    storage.add_argument(
        "--max-pixels", type=float, default=None, metavar="N",
        help="refuse images with more pixels than this (default: 64e6)",
    )
    storage.add_argument(
        "--rows-per-file", type=int, default=10_000, metavar="N",
        help="rows per Parquet part file (default 10000)",
    )
    storage.add_argument(
        "--flush-seconds", type=float, default=60.0, metavar="S",
        help="write a part file at least this often, which bounds the work a killed job "
        "loses (default 60)",
    )
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="Ray Data's progress bars on stderr (default: when stderr is a terminal)",
    )


def run(args: argparse.Namespace) -> int:
    from .batch import parse_actors, s3_options_from_endpoint, score_batch, value_problem
    from .errors import IQAError

    try:
        actors = parse_actors(args.actors)
    except ValueError as exc:
        print(f"iqa batch: {exc}", file=sys.stderr)
        return 2
    problem = value_problem(vars(args), as_flags=True)
    if problem:
        print(f"iqa batch: {problem}", file=sys.stderr)
        return 2
    options = {} if args.max_pixels is None else {"max_pixels": int(args.max_pixels)}
    try:
        summary = score_batch(
            args.input,
            args.output,
            column=args.column,
            recursive=args.recursive,
            model=args.model,
            address=args.address,
            num_cpus=args.num_cpus,
            actors=actors,
            batch_size=args.batch_size,
            cpus_per_actor=args.cpus_per_actor,
            gpus_per_actor=args.gpus_per_actor,
            threads=args.threads,
            allow_private_urls=args.allow_private_urls,
            s3_options=s3_options_from_endpoint(args.s3_endpoint, args.s3_region),
            rows_per_file=args.rows_per_file,
            flush_seconds=args.flush_seconds,
            progress=sys.stderr.isatty() if args.progress is None else args.progress,
            **options,
        )
    except (IQAError, ValueError) as exc:  # bad INPUT/OUTPUT, model or pool size
        print(f"iqa batch: {exc}", file=sys.stderr)
        return 2
    print(f"iqa batch: {summary}", file=sys.stderr)
    return 0
