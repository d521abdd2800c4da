"""Training throughput on this machine: feature-cache building, training from the cache, the
on-the-fly path and full fine-tuning, each through the real Trainer on the shipped recipe
(configs/livec.yaml: Lite0, ImageNet weights, 320 px shorter side, 288 px crops).

    python scripts/benchmark_training.py                      # writes BENCHMARKS.md
    python scripts/benchmark_training.py --data-root /data --no-write

Each measurement is a few steps of a real run on a slice of the data (--set limits), so
it takes about two minutes on 2 CPU cores. The first step of every run is left out of the
step timings: it pays one-off kernel set-up. The projection at the end sizes a full run
of the recipe from these figures.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- BEGIN training -->", "<!-- END training -->"


def run_recipe(config: Path, data_root: str | None, run_dir: Path, cache_dir: Path,
               sets: list[str]) -> dict:
    from iqa.training.config import build_config
    from iqa.training.distributed import DistInfo
    from iqa.training.trainer import Trainer

    cfg = build_config(config, [f"cache_dir={cache_dir}", "logging.tensorboard=false", *sets],
                       data_root)
    start = time.perf_counter()
    summary = Trainer(cfg, run_dir, DistInfo(), progress=False).fit()
    summary["wall_seconds"] = time.perf_counter() - start
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["kind"] == "train"][1:]  # skip warm-up
    seconds = sum(float(r["seconds"]) for r in rows)
    images = sum(int(r["images"]) for r in rows)
    summary["step_seconds_per_image"] = seconds / images if images else float("nan")
    summary["images_per_step"] = images / len(rows) if rows else float("nan")
    summary["config"] = cfg
    return summary


def project(cfg: dict, cache_s: float, step_s: float, val_s: float) -> dict:
    """Minutes for a full run of ``cfg`` on the whole LIVE Challenge copy (871 images)."""
    from iqa.training.data import list_photos

    train, val = 697, 174
    syn = cfg["synthetic"]
    photos = len(list_photos(syn["root"], None, int(syn["seed"]), syn.get("subsets")))
    per_photo = 1 + 2 * int(syn["groups_per_photo"]) + int(syn["composed_per_photo"])
    group_size = (3 * int(syn["groups_per_photo"]) + 2 * int(syn["composed_per_photo"])) / (
        int(syn["groups_per_photo"]) + int(syn["composed_per_photo"]))
    entries = train * 2 + val + photos * per_photo
    steps = train // int(cfg["optim"]["batch_size"])
    epoch_images = steps * int(cfg["optim"]["batch_size"]) + int(syn["groups_per_epoch"]) * group_size
    epochs = int(cfg["optim"]["epochs"])
    return {
        "photos": photos,
        "cache_entries": entries,
        "cache_minutes": entries * cache_s / 60,
        "epoch_images": epoch_images,
        "epoch_minutes": (epoch_images * step_s + val * val_s) / 60,
        "epochs": epochs,
        "total_minutes": (entries * cache_s + epochs * (epoch_images * step_s + val * val_s)) / 60,
    }


def threads_comparison(batch: int = 24, repeats: int = 4) -> dict[int, float]:
    """s/img of one cached-path step (forward + backward of blocks[4:] and heads on 18x18
    feature crops) with 1 and 2 torch threads, as the machine is loaded right now."""
    import torch

    from iqa.models import create_model

    before = torch.get_num_threads()
    model = create_model(pretrained=False, freeze_blocks=4).train()
    x = torch.randn(batch, 80, 18, 18)
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            score, factors = model.forward_trainable(x)
            (score.sum() + factors.sum()).backward()
            times.append(time.perf_counter() - start)
        out[threads] = min(times[1:]) / batch
    torch.set_num_threads(before)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "livec.yaml")
    parser.add_argument("--data-root", help="as for iqa train (default: the config's)")
    parser.add_argument("--images", type=int, default=32, help="authentic training images")
    parser.add_argument("--photos", type=int, default=4, help="pristine photos")
    parser.add_argument("--steps", type=int, default=4, help="steps per measured run")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-write", action="store_true", help="print, do not edit BENCHMARKS.md")
    args = parser.parse_args(argv)

    import torch

    from iqa.training.config import build_config

    if args.threads:
        torch.set_num_threads(args.threads)
    # Two steps per epoch with 4-5 synthetic groups each, as in the recipe (16 authentic
    # images and ~12 synthetic ones per step); max_steps ends each run.
    limits = [f"data.max_train_images={args.images}", "data.max_val_images=8",
              f"synthetic.max_photos={args.photos}", "synthetic.groups_per_epoch=9",
              "optim.epochs=100", "checkpoint_every_steps=1000"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="iqa-bench-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        plans = {
            "cached": [f"optim.max_steps={args.steps}"],
            "on_the_fly": ["cache_features=false", f"optim.max_steps={args.steps - 1}"],
            "full_finetune": ["cache_features=false", "model.freeze_blocks=0",
                              "optim.max_steps=2"],
        }
        for name, sets in plans.items():
            print(f"[benchmark] {name} ...", file=sys.stderr, flush=True)
            results[name] = run_recipe(args.config, args.data_root, tmp / name, cache,
                                       limits + sets)
    cached = results["cached"]
    cache_timing = cached["timings"]["cache"]
    val_n = cached["best_validation"].get("n") or 8
    val_s = cached["timings"].get("validation_seconds", 0.0) / val_n
    cfg = build_config(args.config, [], args.data_root)  # the recipe as shipped, for the projection
    est = project(cfg, cache_timing["seconds_per_image"], cached["step_seconds_per_image"], val_s)

    rows = [
        ("feature cache: decode + resize (+ distortion) + frozen stem/blocks[:4], fp16 to disk",
         cache_timing["seconds_per_image"]),
        ("training step from the cache (blocks[4:] + heads, 288 px crops)",
         cached["step_seconds_per_image"]),
        ("validation from the cache (whole 320 px images)", val_s),
        ("training step on the fly (decode + frozen front + rest)",
         results["on_the_fly"]["step_seconds_per_image"]),
        ("training step, full fine-tuning (nothing frozen, on the fly)",
         results["full_finetune"]["step_seconds_per_image"]),
    ]
    threads = torch.get_num_threads()
    compare = threads_comparison()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "### Training throughput",
        "",
        f"`python scripts/benchmark_training.py` on {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"{threads} threads, load average {load:.1f} at the end; "
        f"{Path(args.config).name}: {cfg['model']['backbone']}, shorter side "
        f"{cached['preprocessing']['shorter_side']} px, crop {cfg['augment']['crop']} px, "
        f"batch {cfg['optim']['batch_size']} authentic images plus synthetic groups "
        f"(~{cached['images_per_step']:.0f} images per step).",
        "",
        "| stage | s / image | images / s |",
        "|---|---:|---:|",
        *[f"| {label} | {s:.3f} | {1 / s if s else float('nan'):.1f} |" for label, s in rows],
        "",
        f"Projected full run of `{Path(args.config).name}` on the 871-image LIVE Challenge copy "
        f"and {est['photos']} pristine photos: feature cache {est['cache_entries']} entries, "
        f"{est['cache_minutes']:.0f} min (built once, reused by later runs); "
        f"{est['epoch_images']:.0f} images per epoch, {est['epoch_minutes']:.1f} min per epoch "
        f"with validation; {est['epochs']} epochs: **{est['total_minutes']:.0f} min in all**.",
        "",
        f"Threads: one cached-path step costs {compare[1]:.3f} s/img with 1 torch thread and "
        f"{compare[2]:.3f} s/img with 2, under the same load. When other jobs share the "
        "cores, two threads wait on each other; pass `iqa train --threads 1` whenever the "
        "second figure is the larger.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        path = REPO / "BENCHMARKS.md"
        content = path.read_text(encoding="utf-8")
        if BEGIN not in content or END not in content:
            content += f"\n{BEGIN}\n{END}\n"
        content = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END),
                         lambda _: f"{BEGIN}\n{text}\n{END}", content, flags=re.S)
        path.write_text(content, encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
