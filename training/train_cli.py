"""``iqa train CONFIG``: train a quality model from a YAML recipe.

    iqa train configs/livec.yaml
    iqa train configs/livec.yaml --set optim.epochs=5 --set optim.lr=5e-4 --output runs/try
    iqa train --resume runs/livec-20260101-120000          # continue a killed run exactly
    torchrun --nproc_per_node 4 -m iqa.inference.cli train configs/koniq10k.yaml

Heavy imports (torch, timm) happen inside ``run`` so ``iqa train --help`` works on the
base install; a missing torch surfaces as the dispatcher's "install iqa[train]" message.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train a quality model from a YAML recipe (see configs/). Writes a run directory "
        "with the resolved config, split, metrics.csv, TensorBoard logs, curves.png, "
        "best.pt and last.pt."
    )
    parser.add_argument("config", nargs="?",
                        help="YAML recipe, e.g. configs/livec.yaml (optional with --resume)")
    parser.add_argument("--output", "-o", metavar="DIR",
                        help="run directory (default: <output_dir>/<name>-<timestamp>); with "
                             "--resume, a new empty folder to continue the run in (its "
                             "best.pt and logs are copied over)")
    parser.add_argument("--resume", metavar="PATH",
                        help="continue from a run directory (its last.pt) or a checkpoint file, "
                             "with the config saved in it")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=3e-4 (repeatable; "
                             "values are YAML)")
    parser.add_argument("--data-root", metavar="DIR",
                        help="base for relative data paths in the config (default: "
                             "$IQA_DATA_ROOT, else the config's data_root, else the current "
                             "directory)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to train (default: cuda if available)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def git_commit(path: Path) -> dict | None:
    """The commit of the source tree this package runs from, if it is a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "dirty": bool(dirty)}


def environment(info) -> dict:
    import numpy
    import timm
    import torch

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "device": str(info.device),
        "world_size": info.world_size,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def _new_run_dir(cfg: dict, output: str | None) -> Path:
    if output:
        return Path(output).resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg["output_dir"]) / f"{cfg['name']}-{stamp}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _record_session(run_dir: Path, cfg: dict, info, resumed_from: str | None) -> None:
    path = run_dir / "run_info.json"
    data = json.loads(path.read_text()) if path.is_file() else {"sessions": []}
    package_root = Path(__file__).resolve().parent.parent
    data["sessions"].append({
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "resumed_from": resumed_from,
        "seed": cfg["seed"],
        "git": git_commit(package_root),
        "environment": environment(info),
    })
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    import torch  # noqa: F401  (a missing torch must surface here, as the [train] extra)

    from iqa.inference.errors import IQAError
    from iqa.inference.option_ranges import out_of_range

    from .distributed import init_distributed

    problem = out_of_range({"--threads": (args.threads, 1, False)})
    if problem:
        print(f"iqa train: error: {problem}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(int(args.threads))
    if args.config and not args.resume and Path(args.config).is_file():
        from . import train_multiview

        # A config that does not parse falls through to build_config's clear errors.
        if train_multiview.is_multiview_config(train_multiview.peek_config(args.config)):
            # Model v2: frozen backbone, cached features, heads (training/train_multiview.py).
            try:
                if args.device == "cuda":
                    raise IQAError("--device cuda: a model.architecture multiview recipe "
                                   "extracts frozen features on the CPU; leave --device out")
                return train_multiview.run(args.config, args.overrides, args.output,
                                           args.data_root, args.threads,
                                           progress=not args.no_progress)
            except (IQAError, FileNotFoundError) as exc:
                print(f"iqa train: error: {exc}", file=sys.stderr)
                return 2
    try:
        info = init_distributed(None if args.device == "auto" else args.device)
    except IQAError as exc:
        print(f"iqa train: error: {exc}", file=sys.stderr)
        return 2
    return _train(args, info)


def _train(args: argparse.Namespace, info) -> int:
    from iqa.inference.errors import IQAError

    from . import checkpoint as ckpt
    from .config import ConfigError, apply_override, build_config, dump_config, validate
    from .distributed import broadcast_object, cleanup
    from .trainer import StopRequested, Trainer

    created = None  # a run folder this command made, removed if it fails before a checkpoint
    try:
        state = None
        if args.resume:
            path = ckpt.find_checkpoint(args.resume)
            state = ckpt.load_checkpoint(path, resumable=True)
            cfg = state["config"]
            for text in args.overrides:  # e.g. more epochs; anything else breaks exactness
                apply_override(cfg, text)
            cfg = validate(cfg)
            if _complete(state, cfg):
                if info.is_main:
                    print(f"{path} is the end of a complete run ({state['step']} steps, "
                          f"{cfg['optim']['epochs']} epochs): nothing to train; to train "
                          "longer, add --set optim.epochs=N", file=sys.stderr)
                return 0
            run_dir = path.parent.resolve()
            if args.output and Path(args.output).resolve() != run_dir:
                run_dir = _fork_run(path.parent, Path(args.output).resolve()) \
                    if info.is_main else Path(args.output).resolve()
            if args.config and info.is_main:
                print(f"resuming: using the config saved in {path}; {args.config} is ignored",
                      file=sys.stderr)
        else:
            if not args.config:
                raise ConfigError("give a CONFIG file (e.g. configs/livec.yaml) or --resume RUN")
            cfg = build_config(args.config, args.overrides, args.data_root)
            _check_data_paths(cfg)
            run_dir = broadcast_object(info, _new_run_dir(cfg, args.output) if info.is_main else None)
            if (run_dir / ckpt.LAST).exists():
                raise ConfigError(f"{run_dir} already holds a run (last.pt); continue it with "
                                  f"--resume {run_dir} or choose another --output")
            if run_dir.exists() and not run_dir.is_dir():
                raise ConfigError(f"--output {run_dir} is a file, not a folder")
            if not run_dir.exists():
                created = run_dir
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, run_dir / "config.yaml")
            _record_session(run_dir, cfg, info, str(args.resume) if args.resume else None)
            print(f"run directory: {run_dir}", file=sys.stderr)
        trainer = Trainer(cfg, run_dir, info, resume=state, progress=not args.no_progress)
        summary = trainer.fit()
        if info.is_main:
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
            _print_summary(summary, run_dir)
        return 0
    except StopRequested as exc:
        if info.is_main:
            print(f"iqa train: {exc}", file=sys.stderr)
        return 3
    except (IQAError, FileNotFoundError) as exc:
        print(f"iqa train: error: {exc}", file=sys.stderr)
        if created is not None and info.is_main and not (created / ckpt.LAST).exists():
            # Nothing in it can be resumed; left behind, it would read as a run.
            shutil.rmtree(created, ignore_errors=True)
        return 2
    finally:
        cleanup(info)


def _complete(state: dict, cfg: dict) -> bool:
    """Whether ``state`` is already at the end of the training ``cfg`` asks for."""
    per_epoch = state.get("steps_per_epoch")
    if not per_epoch:
        return False
    total = int(cfg["optim"]["epochs"]) * int(per_epoch)
    if cfg["optim"]["max_steps"] is not None:
        total = min(total, int(cfg["optim"]["max_steps"]))
    return int(state["step"]) >= total


# What a run folder holds besides its checkpoints and config, carried into a fork so that
# best.pt, metrics.csv and run_info.json go on describing the same run.
_RUN_FILES = ("best.pt", "metrics.csv", "run_info.json", "split.csv", "curves.png")


def _fork_run(source: Path, target: Path) -> Path:
    """``--resume A --output B``: B continues A's run, with A's record so far."""
    from . import checkpoint as ckpt
    from .config import ConfigError

    if target.exists() and not target.is_dir():
        raise ConfigError(f"--output {target} is a file, not a folder")
    if target.is_dir() and any(target.iterdir()):
        raise ConfigError(f"--output {target} is not empty; resuming into it would mix two "
                          f"runs: give a new folder, or resume {source} in place")
    target.mkdir(parents=True, exist_ok=True)
    for name in _RUN_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    if (source / "tensorboard").is_dir():
        shutil.copytree(source / "tensorboard", target / "tensorboard")
    print(f"resuming {source / ckpt.LAST} into {target} (its best.pt and logs copied over)",
          file=sys.stderr)
    return target


def _check_data_paths(cfg: dict) -> None:
    """Missing data, named with where its path came from, before a run folder is made."""
    from .config import DATA_ROOT_ENV, ConfigError

    hint = (f"relative data paths are taken from the data root {cfg['data_root']} (from "
            f"--data-root, else ${DATA_ROOT_ENV}, else the recipe's data_root, resolved "
            "against the current folder); point --data-root at the folder that holds them")
    if cfg["data"]["dataset"] and cfg["data"]["root"] and not Path(cfg["data"]["root"]).exists():
        raise ConfigError(f"dataset root not found: {cfg['data']['root']}; {hint}")
    syn = cfg["synthetic"]
    if syn["enabled"] and syn["root"] and not Path(syn["root"]).exists():
        raise ConfigError(f"synthetic photos not found: {syn['root']}; {hint}")


def _print_summary(summary: dict, run_dir: Path) -> None:
    best = summary.get("best_validation") or {}
    print(f"finished after {summary['steps']} steps; run directory: {run_dir}")
    if best:
        print(f"best validation (epoch {best.get('epoch')}): SRCC {best['srcc']:.4f}  "
              f"PLCC {best['plcc']:.4f}  KRCC {best['krcc']:.4f}  RMSE {best['rmse']:.4f}  "
              f"(n={best['n']})")
    elif summary.get("validations"):
        print(f"validation SRCC was undefined at all {summary['validations']} validations "
              "(constant predictions?): best.pt is the final model")
    else:
        print("no validation split: best.pt is the final model")
    for name, timing in (summary.get("timings") or {}).items():
        if isinstance(timing, dict) and timing.get("seconds_per_image"):
            print(f"{name}: {timing['seconds_per_image']:.4f} s/img ({timing})")
    print(f"export it with:  iqa export {run_dir / 'best.pt'} -o model.onnx")
