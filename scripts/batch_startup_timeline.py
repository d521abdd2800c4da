"""Where `iqa batch`'s fixed cost goes on one machine: a timeline of one local job.

Runs :func:`iqa.inference.batch.score_batch` in this process on N generated JPEGs
(the generator of benchmark_inference.py) and prints, in seconds from the start:

* ``ray.init`` (the local instance: GCS, raylet, agents, monitors, pre-started workers);
* from Ray's own ``ray.timeline()``: when each actor's constructor and the first decode
  task ran, and in which worker process, which shows Ray Data's helper actors beside
  the scoring actors;
* the job's end and ``ray.shutdown``.

It complements scripts/benchmark_batch.py, which measures the total (wall minus the
job's own time) against `iqa score`; this one says what the total is made of.

    python scripts/batch_startup_timeline.py                # 200 images
    python scripts/batch_startup_timeline.py --images 1000 --json timeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_inference import make_jpegs  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="number of JPEGs")
    parser.add_argument("--size", default="1024x768", help="JPEG size WxH")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(),
                        help="CPUs of the local Ray instance")
    parser.add_argument("--json", help="also write the phases as JSON to this file")
    return parser.parse_args(argv)


def first_events(trace: list[dict], since: float) -> list[dict]:
    """The first run of each actor constructor and task name in a ``ray.timeline()``
    trace, in seconds from ``since`` (a ``time.time()``), in order of start. Events
    from before ``since`` (an earlier job on the same Ray) are left out."""
    seen: dict[str, dict] = {}
    for event in trace:
        # Chrome trace "complete" events named task::<what>; the task:<phase> events
        # (deserialize, execute, store) are parts of those.
        name = str(event.get("cat", ""))
        if event.get("ph") != "X" or not name.startswith("task::"):
            continue
        name = name.removeprefix("task::")
        start = event["ts"] / 1e6 - since
        if start < 0:
            continue
        if name not in seen or start < seen[name]["start_s"]:
            seen[name] = {"what": name, "start_s": round(start, 2),
                          "seconds": round(event["dur"] / 1e6, 2),
                          "worker": str(event.get("tid", ""))[:20]}
    return sorted(seen.values(), key=lambda e: e["start_s"])


def job_events(since: float, folder: Path, timeout: float = 10.0) -> list[dict]:
    """:func:`first_events` of the current Ray timeline, once it holds the job's first
    decode task: workers report task events about once a second, so a short job can
    end before its own events reach the timeline."""
    import ray

    deadline = time.monotonic() + timeout
    while True:
        trace_file = folder / "timeline.json"
        ray.timeline(filename=str(trace_file))
        events = first_events(json.loads(trace_file.read_text()), since)
        if any("prepare_block" in e["what"] for e in events) or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def main(argv=None) -> int:
    args = parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.pop("RAY_ADDRESS", None)  # always a fresh local Ray, never someone's cluster
    workdir = Path(tempfile.mkdtemp(prefix="iqa-batch-timeline-"))
    try:
        folder = workdir / "images"
        folder.mkdir()
        make_jpegs(folder, args.images, size)
        t0 = time.time()
        import ray

        from iqa.inference.batch import score_batch

        imported = time.time() - t0
        ray.init(num_cpus=args.num_cpus, include_dashboard=False)
        initialised = time.time() - t0
        summary = score_batch(str(folder), str(workdir / "out"), progress=False,
                              log=lambda message: None)
        job_end = time.time() - t0
        events = job_events(t0, workdir)
        shutdown_start = time.time()
        ray.shutdown()
        shutdown = time.time() - shutdown_start
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    phases = {
        "import ray and iqa.inference.batch": round(imported, 2),
        "ray.init done": round(initialised, 2),
        "job done": round(job_end, 2),
        "ray.shutdown seconds": round(shutdown, 2),
        "job images/s": round(summary.images_per_second, 1),
        "first run of each actor constructor and task": events,
    }
    print(f"{'s from start':>12}  event")
    print(f"{imported:12.2f}  imported ray and iqa.inference.batch")
    print(f"{initialised:12.2f}  ray.init done ({initialised - imported:.2f} s)")
    for event in events:
        print(f"{event['start_s']:12.2f}  {event['what']} ran {event['seconds']:.2f} s "
              f"in worker {event['worker']}")
    print(f"{job_end:12.2f}  job done: {summary}")
    print(f"{'':12}  ray.shutdown took {shutdown:.2f} s")
    workers = {e["worker"] for e in events if e["worker"] and "driver" not in e["worker"]}
    print(f"worker processes that ran an actor or the first task: {len(workers)}")
    if args.json:
        Path(args.json).write_text(json.dumps(phases, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
