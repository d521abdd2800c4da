"""Benchmark inference end to end: Python API, `iqa score`, and `iqa serve` under load.

Measures, on synthetic-but-photo-like 1024x768 JPEGs (crops of scikit-image's photos,
upscaled, with sensor-like noise so they compress like real photos):

1. images/s through ``QualityModel.score_many`` (decode + preprocess + model), with a
   per-stage breakdown;
2. images/s through ``iqa score DIR --format jsonl`` in a subprocess, start-up included;
3. latency p50/p99 and throughput of ``iqa serve`` on loopback under N concurrent
   clients POSTing the JPEGs (skipped with a note if `iqa serve` is not built).

The figures go between the ``<!-- BEGIN inference -->`` / ``<!-- END inference -->``
markers of BENCHMARKS.md. ``--random-lite0`` exports a random-init timm
``tf_efficientnet_lite0`` with the contract's metadata (needs the [train] extra) for
when no trained model exists: its speed is the shipped model's speed.

    python scripts/benchmark_inference.py --random-lite0 --images 32 --server-requests 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- BEGIN inference -->", "<!-- END inference -->"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="ONNX model (default: the shipped one)")
    parser.add_argument(
        "--random-lite0",
        action="store_true",
        help="benchmark a random-init tf_efficientnet_lite0 exported here (needs torch, timm)",
    )
    parser.add_argument("--images", type=int, default=64, help="number of JPEGs")
    parser.add_argument("--size", default="1024x768", help="JPEG size WxH")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="decode threads")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    parser.add_argument("--repeats", type=int, default=2, help="timed API passes (best kept)")
    parser.add_argument("--server-requests", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument(
        "--output", default=str(REPO / "BENCHMARKS.md"), help="Markdown file with the markers"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- inputs


def make_jpegs(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """Photo-like JPEGs: random 4:3 crops of real photos, resized, with mild noise."""
    from skimage import data

    photos = [
        data.astronaut(),
        data.coffee(),
        data.chelsea(),
        data.rocket(),
        data.immunohistochemistry(),
        data.hubble_deep_field(),
        data.retina(),
    ]
    rng = np.random.default_rng(seed)
    width, height = size
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        crop_w = int(min(w, h * width / height) * rng.uniform(0.6, 1.0))
        crop_h = int(crop_w * height / width)
        x, y = rng.integers(0, w - crop_w + 1), rng.integers(0, h - crop_h + 1)
        crop = Image.fromarray(photo[y : y + crop_h, x : x + crop_w])
        pixels = np.asarray(crop.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
        # Upscaled photos are smoother than camera output; noise restores a realistic
        # JPEG size and decode cost.
        pixels += rng.normal(0, 3.0, pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        path = folder / f"photo_{i:03d}.jpg"
        image.save(path, quality=int(rng.integers(85, 96)))
        paths.append(path)
    return paths


def export_random_lite0(path: Path) -> tuple[Path, str]:
    """A random-init tf_efficientnet_lite0 with score + factors outputs, per the contract.

    Built and exported by the project's own training code (the same architecture and
    exporter as the shipped model), so it needs the [train] extra.
    """
    from iqa.models import create_model
    from iqa.training.export import export_onnx

    model = create_model(backbone="tf_efficientnet_lite0", pretrained=False)
    export_onnx(
        model,
        path,
        metadata={
            "iqa.model_version": "random-lite0-benchmark",
            "iqa.training_data": "none (random weights, speed benchmark only)",
        },
    )
    return path, "random-init `create_model('tf_efficientnet_lite0')` exported by `export_onnx`"


# ----------------------------------------------------------------------------- benchmarks


def fastest(fn, repeats: int = 3) -> float:
    """Shortest wall time of ``repeats`` calls of ``fn``, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_api(model_path: Path, paths: list[Path], args) -> dict:
    from iqa.inference import QualityModel

    model = QualityModel(model_path, threads=args.threads)
    model.score_many(paths[: args.batch_size], batch_size=args.batch_size)  # warm-up
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        results = model.score_many(paths, batch_size=args.batch_size, workers=args.workers)
        best = min(best, time.perf_counter() - start)
    failures = [r for r in results if not hasattr(r, "score")]
    if failures:
        raise SystemExit(f"API benchmark: {len(failures)} images failed: {failures[0]}")

    # Stage breakdown on a sample: the fastest of several timings, the closest to the
    # cost on an idle machine.
    sample = paths[: min(8, len(paths))]
    tensors = [model.prepare(p) for p in sample]
    prepare_ms = min(fastest(lambda p=p: model.prepare(p)) for p in sample) * 1e3
    single = {k: v[None] for k, v in tensors[0].items()}
    model_single_ms = fastest(lambda: model.run(single), repeats=8) * 1e3
    same = [t for t in tensors if t["image"].shape == tensors[0]["image"].shape]
    batch = {k: np.stack([t[k] for t in same]) for k in tensors[0]}
    model_batched_ms = fastest(lambda: model.run(batch), repeats=3) / len(same) * 1e3
    return {
        "images_per_s": len(paths) / best,
        "ms_per_image": best / len(paths) * 1e3,
        "prepare_ms": prepare_ms,
        "model_ms_batched": model_batched_ms,
        "batch_for_stage": len(same),
        "model_ms_single": model_single_ms,
        "input_shape": {k: list(v.shape) for k, v in tensors[0].items()},
        "providers": model.providers,
    }


def iqa_command() -> list[str]:
    script = Path(sys.executable).with_name("iqa")
    return [str(script)] if script.exists() else [sys.executable, "-m", "iqa.inference.cli"]


def bench_cli(model_path: Path, folder: Path, count: int, args) -> dict:
    base = [*iqa_command(), "score"]
    options = [
        "--model",
        str(model_path),
        "--format",
        "jsonl",
        "--batch-size",
        str(args.batch_size),
        "--workers",
        str(args.workers),
        "--no-progress",
    ]
    if args.threads:
        options += ["--threads", str(args.threads)]
    first = sorted(folder.glob("*.jpg"))[0]
    start = time.perf_counter()
    subprocess.run([*base, str(first), *options], check=True, capture_output=True)
    one_image_s = time.perf_counter() - start
    start = time.perf_counter()
    done = subprocess.run([*base, str(folder), *options], check=True, capture_output=True)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in done.stdout.decode().splitlines()]
    if len(rows) != count or any(r["status"] != "ok" for r in rows):
        raise SystemExit(f"CLI benchmark: expected {count} ok rows, got {rows[:3]}...")
    return {
        "wall_s": wall,
        "images_per_s": count / wall,
        "ms_per_image": wall / count * 1e3,
        "one_image_s": one_image_s,
        # What each image adds once the process is up: start-up (and model load) cancel out.
        "marginal_ms_per_image": (wall - one_image_s) / max(count - 1, 1) * 1e3,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_server(model_path: Path, paths: list[Path], args) -> dict | str:
    import importlib.util

    if importlib.util.find_spec("iqa.inference.server.cli") is None:
        return "skipped: `iqa serve` is not built yet"
    import httpx

    port = free_port()
    command = [
        *iqa_command(),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        str(model_path),
        "--log-level",
        "warning",
    ]
    if args.threads:
        command += ["--threads", str(args.threads)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        start = time.perf_counter()
        while True:
            if server.poll() is not None:
                err = server.stderr.read().decode()[-2000:]
                return f"skipped: `iqa serve` exited with {server.returncode}: {err}"
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - start > 60:
                return "skipped: `iqa serve` did not answer /health within 60 s"
            time.sleep(0.2)
        startup_s = time.perf_counter() - start
        payloads = [(p.name, p.read_bytes()) for p in paths]
        latencies: list[float] = []
        failures: list[str] = []
        counter = iter(range(args.server_requests))
        lock = threading.Lock()

        def client() -> None:
            with httpx.Client(base_url=base, timeout=120) as http:
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    name, body = payloads[i % len(payloads)]
                    t0 = time.perf_counter()
                    response = http.post(
                        "/1.0/check.json",
                        data={"models": "quality"},
                        files={"media": (name, body, "image/jpeg")},
                    )
                    elapsed = time.perf_counter() - t0
                    with lock:
                        if response.status_code == 200 and response.json()["status"] == "success":
                            latencies.append(elapsed)
                        else:
                            failures.append(f"{response.status_code} {response.text[:200]}")

        with httpx.Client(base_url=base, timeout=120) as http:  # warm-up
            http.post("/1.0/check.json", data={"models": "quality"}, files={"media": payloads[0]})
        threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    if not latencies:
        return f"failed: no successful request; first failure: {failures[:1]}"
    ms = np.asarray(latencies) * 1e3
    return {
        "requests": len(latencies),
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "concurrency": args.concurrency,
        "throughput_rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(statistics.fmean(ms)),
        "startup_s": startup_s,
    }


# ----------------------------------------------------------------------------- report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import onnxruntime

    return (
        f"{cpu}, {cores} CPU cores available, Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}"
    )


def load_average() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def input_shapes(shapes: dict) -> str:
    """'image 3x320x416, detail 3x224x224' from {name: [C, H, W]}."""
    return ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in shapes.items())


def render(results: dict, args, model_label: str) -> str:
    api, cli, server = results["api"], results.get("cli"), results.get("server")
    lines = [
        "## Inference speed (`scripts/benchmark_inference.py`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; load average "
        f"{results['load_before']} before, {results['load_after']} after (other jobs running "
        "on the same cores slow every figure down).",
        f"Model: {model_label}. Input: {args.images} JPEGs of {args.size} "
        f"(model inputs {input_shapes(api['input_shape'])}), "
        f"batch size {args.batch_size}, {args.workers} decode workers, "
        f"onnxruntime threads: {args.threads or 'default'}; "
        f"providers {', '.join(api['providers'])}.",
        "",
        "| path | images/s | ms per image | notes |",
        "|---|---:|---:|---|",
        f"| Python API `score_many` | {api['images_per_s']:.1f} | {api['ms_per_image']:.1f} | "
        f"best of {args.repeats} passes. Stages, fastest timing: decode+preprocess "
        f"{api['prepare_ms']:.1f} ms/img (1 thread); model {api['model_ms_single']:.1f} ms/img "
        f"one at a time (the CPU default), {api['model_ms_batched']:.1f} ms/img in a batch of "
        f"{api['batch_for_stage']} |",
    ]
    if isinstance(cli, dict):
        lines.append(
            f"| CLI `iqa score DIR --format jsonl` | {cli['images_per_s']:.1f} | "
            f"{cli['ms_per_image']:.1f} | end to end incl. start-up; {cli['wall_s']:.2f} s "
            f"for {args.images} images; one image alone {cli['one_image_s']:.2f} s; "
            f"{cli['marginal_ms_per_image']:.1f} ms per extra image |"
        )
    elif cli:
        lines.append(f"| CLI | - | - | {cli} |")
    lines.append("")
    if isinstance(server, dict):
        lines += [
            f"HTTP server (`iqa serve`, loopback, multipart POST `/1.0/check.json`, "
            f"{server['concurrency']} concurrent clients, {server['requests']} requests, "
            f"{server['failures']} failed):",
            "",
            "| throughput (req/s) | p50 latency (ms) | p99 latency (ms) | mean (ms) |",
            "|---:|---:|---:|---:|",
            f"| {server['throughput_rps']:.1f} | {server['p50_ms']:.0f} | {server['p99_ms']:.0f} "
            f"| {server['mean_ms']:.0f} |",
        ]
    elif server:
        lines.append(f"HTTP server: {server}")
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    content = path.read_text()
    if BEGIN not in content or END not in content:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} markers")
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", content, count=1))


def main(argv=None) -> int:
    args = parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    workdir = Path(tempfile.mkdtemp(prefix="iqa-bench-"))
    try:
        if args.random_lite0:
            model_path, model_label = export_random_lite0(workdir / "random-lite0.onnx")
        else:
            from iqa.inference import default_model_path

            model_path = Path(args.model) if args.model else default_model_path()
            model_label = f"`{model_path.name}`"
        folder = workdir / "images"
        folder.mkdir()
        paths = make_jpegs(folder, args.images, size)
        results = {"load_before": load_average()}
        results["api"] = bench_api(model_path, paths, args)
        print(json.dumps({"api": results["api"]}, indent=2), flush=True)
        if not args.skip_cli:
            results["cli"] = bench_cli(model_path, folder, len(paths), args)
            print(json.dumps({"cli": results["cli"]}, indent=2), flush=True)
        if not args.skip_server:
            results["server"] = bench_server(model_path, paths, args)
            print(json.dumps({"server": results["server"]}, indent=2), flush=True)
        results["load_after"] = load_average()
        text = render(results, args, model_label)
        print(text)
        if not args.no_write:
            write_section(Path(args.output), text)
            print(f"wrote {args.output}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
