"""torchrun with two CPU processes on the gloo backend (127.0.0.1 only): the ranks shard
each step, DDP keeps their parameters identical, and only rank 0 writes the run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
from test_train_fakes import CONFIGS, REPO, cli_args, fake_root, tiny_overrides  # noqa: F401

from iqa.training.front_cache import parameters_digest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_gloo_training_keeps_replicas_identical(fake_root, tmp_path):  # noqa: F811
    run_dir = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "iqa.inference.cli",
        *cli_args("train", str(CONFIGS / "livec.yaml"), "--output", str(run_dir),
                  "--data-root", str(fake_root), "--device", "cpu", "--no-progress",
                  # 4 items per step, 2 per rank; checkpoint after every step
                  # a fresh cache: both ranks build their half of it concurrently
                  sets=tiny_overrides(tmp_path / "cache", steps=3) + ["checkpoint_every_steps=1"]),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-10000:]

    state = torch.load(run_dir / "last.pt", weights_only=False)
    assert state["world_size"] == 2 and state["step"] == 3
    # Every checkpoint gathers a digest of each rank's parameters: both ranks agree, and
    # they describe the weights rank 0 saved.
    assert len(state["replica_digests"]) == 2
    assert len(set(state["replica_digests"])) == 1
    from iqa.models import create_model

    model = create_model(**state["model_kwargs"], pretrained=False)
    model.load_state_dict(state["model"])
    assert parameters_digest(model) == state["replica_digests"][0]
    assert len(state["rng"]) == 2  # each rank's RNG state, for an exact resume
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])

    # Rank 0 alone logs and writes: one header, one row per step, one run summary line.
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("kind,") and sum(line.startswith("train,") for line in lines) == 3
    assert proc.stdout.count("finished after 3 steps") == 1
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["best.pt", "last.pt"]
    assert not list(run_dir.glob(".*.tmp"))
