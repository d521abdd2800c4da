"""`iqa train` killed with SIGKILL partway, then resumed, ends bit-identical to a run that
was never interrupted: on the cached-feature path, and on the on-the-fly path with two
DataLoader workers (whose item-to-worker assignment shifts when an epoch restarts midway).

tests/test_train_resume.py stops a run through a test hook that raises; here the process
gets no chance to clean up: whatever is on disk at that instant is all a resume has.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_fakes import (  # noqa: F401  (fixtures)
    CONFIGS,
    cli_args,
    fake_root,
    feature_cache_dir,
    one_thread,
    tiny_overrides,
)

import iqa.training
from iqa.inference.cli import main

pytestmark = pytest.mark.slow

TOTAL_STEPS = 8  # 12 train images / batch 3 = 4 steps per epoch, 2 epochs


def _logged_steps(run_dir: Path) -> int:
    try:
        with open(run_dir / "metrics.csv", newline="") as handle:
            steps = [int(r["step"]) for r in csv.DictReader(handle) if r["kind"] == "train"]
    except (FileNotFoundError, ValueError, KeyError):  # not written yet, or a partial line
        return 0
    return max(steps, default=0)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    package = Path(iqa.training.__file__).resolve().parents[1]
    if (package / "__init__.py").is_file():
        # A staged copy of the package (scripts/mutation_test.py): the child must import
        # that copy, not the installed one.
        env["PYTHONPATH"] = os.pathsep.join([str(package.parent), env.get("PYTHONPATH", "")])
    return env


def _train_and_kill(args: list[str], run_dir: Path, after_step: int) -> None:
    """Run `iqa train` in a child process and SIGKILL it once ``after_step`` is logged and
    a checkpoint exists; the kill lands wherever the child happens to be."""
    log = open(run_dir.parent / f"{run_dir.name}.log", "wb")  # noqa: SIM115
    child = subprocess.Popen([sys.executable, "-m", "iqa.inference.cli", "train", *args,
                              "--output", str(run_dir)], env=_child_env(),
                             stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300  # a hung child must fail the test, not hang CI
    try:
        while child.poll() is None and time.monotonic() < deadline:
            if (run_dir / "last.pt").is_file() and _logged_steps(run_dir) >= after_step:
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        code = child.wait(timeout=60) if child.poll() is None else child.returncode
    finally:
        if child.poll() is None:
            child.kill()
        log.close()
    output = (run_dir.parent / f"{run_dir.name}.log").read_text(errors="replace")
    assert code == -signal.SIGKILL, f"the child was not killed (exit {code}):\n{output}"


def _assert_same_run(full: Path, resumed: Path) -> None:
    a = torch.load(full / "last.pt", weights_only=False)
    b = torch.load(resumed / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == TOTAL_STEPS
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(),
                      strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["best_metric"] == b["best_metric"]
    with open(full / "metrics.csv", newline="") as fa, open(resumed / "metrics.csv",
                                                              newline="") as fb:
        drop = ("seconds",)  # wall-clock time per step is the one thing allowed to differ
        rows_a = [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(fa)]
        rows_b = [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(fb)]
    assert rows_a == rows_b


@pytest.mark.parametrize(
    "path_sets",
    [
        pytest.param([], id="cached"),
        pytest.param(["cache_features=false", "loader.num_workers=2"], id="on-the-fly-2-workers"),
    ],
)
def test_sigkilled_training_resumes_bit_identical(path_sets, fake_root,  # noqa: F811
                                                  feature_cache_dir, one_thread,  # noqa: F811
                                                  tmp_path):
    # Checkpoints every 2 steps; the kill comes once step 3 is logged, so the resume
    # replays at least one step, and at least one epoch boundary lies after it.
    sets = tiny_overrides(feature_cache_dir, steps=None, batch_size=3) + [
        "optim.epochs=2", "checkpoint_every_steps=2", "data.split.val_fraction=0.2",
        "model.dropout=0.5",  # make the RNG state matter
        *path_sets,
    ]
    # One thread: with two, CPU kernels reduce some gradients in a scheduling-dependent
    # order, and even two uninterrupted runs differ by ~1e-5.
    args = cli_args(str(CONFIGS / "livec.yaml"), "--data-root", str(fake_root),
                    "--no-progress", "--threads", one_thread, sets=sets)
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(["train", *args, "--output", str(full)]) == 0

    _train_and_kill(args, killed, after_step=3)
    stopped = torch.load(killed / "last.pt", weights_only=False)
    assert 2 <= stopped["step"] < TOTAL_STEPS  # really killed partway

    assert main(["train", "--resume", str(killed), "--no-progress",
                 "--threads", one_thread]) == 0
    _assert_same_run(full, killed)
