"""Measure how many 512x384 images per second each distortion and compose() handle.

    python scripts/benchmark_augment.py                # writes the augment block of BENCHMARKS.md
    python scripts/benchmark_augment.py --no-write --seconds 1

OpenCV is limited to one thread, as in a data-loader worker (one worker per core), so the
figures are per core. The photo is scikit-image's astronaut, resized to 512x384.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import time
from pathlib import Path

import cv2
import numpy as np

from iqa.training.augment import DISTORTIONS, compose, distort

BEGIN, END = "<!-- BEGIN augment -->", "<!-- END augment -->"


def test_photo() -> np.ndarray:
    from skimage import data

    return cv2.resize(data.astronaut(), (512, 384), interpolation=cv2.INTER_AREA)


def rate(fn, seconds: float) -> float:
    """Calls per second of ``fn(i)``, after one warm-up call."""
    fn(0)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += 1
        fn(count)
    return count / (time.perf_counter() - start)


def measure(seconds: float) -> list[tuple[str, str, float]]:
    image = test_photo()
    rows = []
    for name, d in DISTORTIONS.items():

        def run(i, name=name):
            rng = np.random.default_rng(i)
            distort(image, name, float(rng.uniform(0.05, 1.0)), rng)

        rows.append((name, d.family, rate(run, seconds)))
        print(f"{name:18s} {rows[-1][2]:7.1f} img/s", flush=True)
    for max_ops in (1, 3):
        rows.append(
            (
                f"compose (1-{max_ops} ops)",
                "-",
                rate(
                    lambda i, m=max_ops: compose(image, np.random.default_rng(i), max_ops=m),
                    seconds * 2,
                ),
            )
        )
        print(f"{rows[-1][0]:18s} {rows[-1][2]:7.1f} img/s", flush=True)
    return rows


def markdown(rows, seconds: float, load: str) -> str:
    lines = [
        BEGIN,
        "## Augmentation throughput (`scripts/benchmark_augment.py`)",
        "",
        f"512x384 RGB photo, random severity in [0.05, 1], OpenCV limited to 1 thread (one "
        f"data-loader worker per core), about {seconds:g} s per row; "
        f"Python {platform.python_version()}, OpenCV {cv2.__version__}, NumPy {np.__version__}. "
        f"Load average during the run: {load}, on {os.cpu_count()} cores (the machine is "
        "shared, so these are lower bounds).",
        "",
        "| distortion | family | images/s (1 core) | ms/image |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {n} | {f} | {r:.0f} | {1000 / r:.1f} |" for n, f, r in rows]
    lines.append(END)
    return "\n".join(lines)


def write_block(path: Path, block: str) -> None:
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} markers")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    path.write_text(pattern.sub(lambda _: block, text, count=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per distortion")
    parser.add_argument("--benchmarks", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    rows = measure(args.seconds)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    block = markdown(rows, args.seconds, load)
    if args.no_write:
        print(block)
    else:
        write_block(args.benchmarks, block)
        print(f"updated {args.benchmarks}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
