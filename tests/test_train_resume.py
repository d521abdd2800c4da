"""A run killed mid-epoch and resumed from its last checkpoint ends exactly where an
uninterrupted run ends: same parameters, optimizer state, step count and logged losses."""

from __future__ import annotations

import csv
import json

import torch
from test_train_fakes import (  # noqa: F401  (fixtures)
    CONFIGS,
    cli_args,
    fake_root,
    feature_cache_dir,
    one_thread,
    tiny_overrides,
)

from iqa.inference.cli import main
from iqa.training.trainer import STOP_AFTER_ENV


def rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [(r["kind"], r["epoch"], r["step"], r["lr"], r["loss"], r["mos"], r["syn_rank"],
                 r["factor"], r["val_srcc"]) for r in csv.DictReader(handle)]


def test_killed_run_resumes_exactly(fake_root, feature_cache_dir, tmp_path, monkeypatch,  # noqa: F811
                                    one_thread, capsys):  # noqa: F811
    # One thread: with two, CPU kernels reduce some gradients in a scheduling-dependent
    # order, and even two uninterrupted runs differ by ~1e-5 after a few steps.
    # 12 train images / batch 3 = 4 steps per epoch, 2 epochs. Checkpoints land after steps
    # 3, 4 (end of epoch 1) and 6; the kill after step 7 resumes from step 6, two steps into
    # epoch 2, and step 7 is replayed.
    sets = tiny_overrides(feature_cache_dir, steps=None, batch_size=3) + [
        "optim.epochs=2", "checkpoint_every_steps=3", "data.split.val_fraction=0.2",
        "model.dropout=0.5",  # make the RNG state matter
    ]
    base = cli_args(str(CONFIGS / "livec.yaml"), "--data-root", str(fake_root), "--no-progress",
                    "--threads", one_thread, sets=sets)
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(["train", *base, "--output", str(full)]) == 0

    monkeypatch.setenv(STOP_AFTER_ENV, "7")
    assert main(["train", *base, "--output", str(killed)]) == 3
    stopped = torch.load(killed / "last.pt", weights_only=False)
    assert (stopped["step"], stopped["epoch"], stopped["step_in_epoch"]) == (6, 1, 2)
    assert [r[2] for r in rows(killed) if r[0] == "train"][-1] == "7"  # logged past the checkpoint
    monkeypatch.delenv(STOP_AFTER_ENV)

    capsys.readouterr()
    assert main(["train", "--resume", str(killed), "--no-progress", "--threads", one_thread]) == 0
    # Epochs are counted from 1 in messages: step 6 is two steps into the second epoch.
    assert "resuming at epoch 2, step 6 (2 steps into the epoch)" in capsys.readouterr().err

    a = torch.load(full / "last.pt", weights_only=False)
    b = torch.load(killed / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 8 and a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(),
                      strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 8
    assert a["best_metric"] == b["best_metric"]
    assert rows(full) == rows(killed)  # replayed steps were not logged twice
    assert len([r for r in rows(full) if r[0] == "val"]) == 2


def test_resume_into_another_folder_carries_the_run_over(fake_root, feature_cache_dir,  # noqa: F811
                                                         tmp_path, monkeypatch, one_thread,  # noqa: F811
                                                         capsys):
    sets = tiny_overrides(feature_cache_dir, steps=None, batch_size=3) + [
        "optim.epochs=2", "checkpoint_every_steps=3", "data.split.val_fraction=0.2"]
    base = cli_args(str(CONFIGS / "livec.yaml"), "--data-root", str(fake_root), "--no-progress",
                    "--threads", one_thread, sets=sets)
    source, fork = tmp_path / "source", tmp_path / "fork"
    monkeypatch.setenv(STOP_AFTER_ENV, "5")  # past epoch 1's validation and best.pt
    assert main(["train", *base, "--output", str(source)]) == 3
    monkeypatch.delenv(STOP_AFTER_ENV)
    assert (source / "best.pt").is_file()

    capsys.readouterr()
    assert main(["train", "--resume", str(source), "--output", str(fork), "--no-progress",
                 "--threads", one_thread]) == 0
    assert "its best.pt and logs copied over" in capsys.readouterr().err
    # best.pt is the epoch the summary names, whichever epoch that is, and the fork's log
    # begins at step 1 like an uninterrupted run's.
    summary = json.loads((fork / "summary.json").read_text())
    best = torch.load(fork / "best.pt", weights_only=False)
    assert best["best_validation"] == summary["best_validation"]
    assert [r[2] for r in rows(fork) if r[0] == "train"] == [str(s) for s in range(1, 9)]
    assert len([r for r in rows(fork) if r[0] == "val"]) == 2
    assert torch.load(source / "last.pt", weights_only=False)["step"] == 4  # left as it was

    # A folder that holds something is not mixed into; a complete run has nothing to do.
    assert main(["train", "--resume", str(source), "--output", str(fork), "--no-progress"]) == 2
    assert "is not empty" in capsys.readouterr().err
    before = (fork / "run_info.json").read_text()
    assert main(["train", "--resume", str(fork), "--no-progress"]) == 0
    assert "nothing to train" in capsys.readouterr().err
    assert (fork / "run_info.json").read_text() == before
