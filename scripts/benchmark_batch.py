"""Benchmark `iqa batch` (Ray Data on a local Ray) against `iqa score` on the same JPEGs.

Generates N photo-like 1024x768 JPEGs (the generator of benchmark_inference.py), then
runs, in subprocesses and alternating so that background load hits both alike:

* ``iqa score DIR --format csv`` (decode threads + onnxruntime in one process);
* ``iqa batch DIR OUT`` on a local Ray with every CPU (Ray tasks decode, actors score).

For each it records the wall time from launch to exit (start-up included) and, for
``iqa batch``, the job's own images/s from its summary line (Ray start-up, input listing
and model shipping excluded). It also checks that both wrote the same scores. The
figures go between the ``<!-- BEGIN batch -->`` / ``<!-- END batch -->`` markers of
BENCHMARKS.md.

    python scripts/benchmark_batch.py                    # 1,000 images, 5 rounds
    python scripts/benchmark_batch.py --images 200 --rounds 1 --no-write
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_inference import iqa_command, load_average, machine, make_jpegs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- BEGIN batch -->", "<!-- END batch -->"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="number of JPEGs")
    parser.add_argument("--size", default="1024x768", help="JPEG size WxH")
    parser.add_argument(
        "--rounds", type=int, default=5,
        help="runs of each command; the gap moves by about 10 points between rounds, "
        "so one or two rounds cannot tell +20 %% from +30 %%",
    )
    parser.add_argument(
        "--batch-args", default="", help="extra `iqa batch` options, e.g. '--actors 2'"
    )
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args(argv)


def _env() -> dict:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # always a fresh local Ray, never someone's cluster
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def run_score(folder: Path, out_csv: Path) -> dict:
    command = [*iqa_command(), "score", str(folder), "--format", "csv", "-o", str(out_csv),
               "--no-progress"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=_env())
    wall = time.perf_counter() - start
    return {"wall_s": wall}


def run_batch(folder: Path, out_dir: Path, extra: list[str]) -> dict:
    shutil.rmtree(out_dir, ignore_errors=True)
    command = [*iqa_command(), "batch", str(folder), str(out_dir), "--no-progress", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - start
    line = [x for x in done.stderr.splitlines() if x.startswith("iqa batch: ")][-1]
    match = re.search(r"(\d+) images scored \((\d+) failed\).*?([\d.]+) s, ([\d.]+) images/s",
                      line)
    if not match:
        raise SystemExit(f"no summary in the output of iqa batch: {line}")
    images, failed, job_s, _ = match.groups()
    return {"wall_s": wall, "job_s": float(job_s), "images": int(images),
            "failed": int(failed), "summary": line}


def max_difference(out_csv: Path, out_dir: Path) -> tuple[int, float]:
    import pyarrow.parquet as pq

    with out_csv.open() as handle:
        scored = {row["path"]: float(row["score"]) for row in csv.DictReader(handle)}
    batch = {r["path"]: r["score"] for r in pq.read_table(out_dir).to_pylist()}
    common = scored.keys() & batch.keys()
    return len(common), max(abs(scored[p] - batch[p]) for p in common)


def render(results: dict, args) -> str:
    n = args.images
    score_wall = statistics.median(r["wall_s"] for r in results["score"])
    batch_wall = statistics.median(r["wall_s"] for r in results["batch"])
    batch_job = statistics.median(r["job_s"] for r in results["batch"])
    startup = batch_wall - batch_job
    extra = f" `{args.batch_args}`" if args.batch_args else ""

    gap = batch_job - score_wall
    if gap >= 0:
        inside = (f"The job itself took {gap:.1f} s longer than `iqa score`'s whole run: "
                  "worker start-up, the model loaded by each actor, and the first and last "
                  "batches, when only one stage can run; in between, the pipeline scores at "
                  "about the rate of `iqa score`, both bound by onnxruntime on the same cores.")
    else:
        inside = (f"The job itself took {-gap:.1f} s less than `iqa score`'s whole run: its "
                  "steady state (one one-thread actor per core) is faster than `iqa score`'s "
                  "one two-thread model, which outweighs its worker start-up.")

    def rate(seconds: float) -> str:
        return f"{n / seconds:.1f}"

    # Each round runs both commands back to back, so a round's ratio shares its load.
    paired = sorted(b["wall_s"] / s["wall_s"] - 1
                    for s, b in zip(results["score"], results["batch"], strict=True))
    within = sum(gap <= 0.25 for gap in paired)

    lines = [
        "## Batch scoring: `iqa batch` (local Ray) vs `iqa score` (`scripts/benchmark_batch.py`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, Ray {results['ray']}; "
        f"load average {results['load_before']} before, {results['load_after']} after "
        "(the machine is shared with other jobs, so figures move by 10-20 % between runs). "
        f"Input: {n} JPEGs of {args.size}, the shipped model, defaults of both commands"
        f"{extra}; median of {args.rounds} alternating runs each.",
        "",
        "| command | wall s (start to exit) | images/s (wall) | images/s (job only) |",
        "|---|---:|---:|---:|",
        f"| `iqa score DIR --format csv -o FILE` | {score_wall:.1f} | {rate(score_wall)} | - |",
        f"| `iqa batch DIR OUT` (local Ray, 2 CPUs) | {batch_wall:.1f} | {rate(batch_wall)} "
        f"| {rate(batch_job)} |",
        "",
        f"Wall time of `iqa batch` relative to `iqa score`: "
        f"**{(batch_wall / score_wall - 1) * 100:+.0f} %** (the target is within 25 %); "
        f"round by round {paired[0] * 100:+.0f} % to {paired[-1] * 100:+.0f} %, "
        f"{within} of {len(paired)} rounds within 25 %. "
        f"Ray's overhead, honestly: about {startup:.0f} s per job to import Ray, start the "
        f"local instance and tear it down (wall minus the job's own time; a running "
        f"cluster saves all but the import and connection). {inside} "
        f"Same scores: {results['compared']} images compared, largest difference "
        f"{results['max_diff']:.1e} (`iqa score` rounds to 6 decimals).",
    ]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    content = path.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in content and END in content:
        pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
        content = pattern.sub(lambda _: block, content, count=1)
    else:
        content = content.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(content)


def main(argv=None) -> int:
    import ray

    args = parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    workdir = Path(tempfile.mkdtemp(prefix="iqa-bench-batch-"))
    try:
        folder = workdir / "images"
        folder.mkdir()
        make_jpegs(folder, args.images, size)
        results: dict = {"load_before": load_average(), "ray": ray.__version__,
                         "score": [], "batch": []}
        for i in range(args.rounds):
            results["score"].append(run_score(folder, workdir / "score.csv"))
            print(json.dumps({"round": i, "score": results["score"][-1]}), flush=True)
            results["batch"].append(run_batch(folder, workdir / "out", args.batch_args.split()))
            print(json.dumps({"round": i, "batch": results["batch"][-1]}), flush=True)
        results["load_after"] = load_average()
        results["compared"], results["max_diff"] = max_difference(
            workdir / "score.csv", workdir / "out"
        )
        text = render(results, args)
        print(text)
        if not args.no_write:
            write_section(Path(args.output), text)
            print(f"wrote {args.output}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
