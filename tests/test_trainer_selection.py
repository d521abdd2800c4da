"""best.pt holds the best validated epoch, also across a resume; training learns at all.

Validation is scripted: each epoch's SRCC is fixed in advance, so the best epoch is known
before the run starts, and the weights the trainer validated are snapshotted at the same
moment. No number here comes from the selection code under test.
"""

from __future__ import annotations

import csv
import json
import linecache
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from test_datasets import write_csv
from test_train_fakes import (  # noqa: F401  (fixtures)
    CONFIGS,
    cli_args,
    fake_root,
    feature_cache_dir,
    one_thread,
    tiny_overrides,
)

from iqa.inference.cli import main
from iqa.training import trainer as trainer_module
from iqa.training.trainer import STOP_AFTER_ENV

# Epoch by epoch (1-based): undefined, 0.5, 0.8 (best), 0.8 again (a tie is no
# improvement: the earlier, cheaper epoch stays), 0.6.
SCRIPTED_SRCC = [math.nan, 0.5, 0.8, 0.8, 0.6]
BEST_EPOCH = 3


@pytest.fixture
def scripted_validation(monkeypatch):
    """Replace validation by the script; record the weights each validation saw."""
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def validate(self):
        # The scheduler steps once per optimisation step, so it counts global steps
        # independently of the trainer's own (restorable) bookkeeping.
        epoch = self.scheduler.last_epoch // self.steps_per_epoch
        seen[epoch] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return {"n": 3, "srcc": SCRIPTED_SRCC[epoch - 1], "plcc": 0.0, "krcc": 0.0,
                "rmse": 0.1}

    monkeypatch.setattr(trainer_module.Trainer, "validate", validate)
    return seen


def _base_args(fake_root, feature_cache_dir, one_thread, *extra):  # noqa: F811
    sets = tiny_overrides(feature_cache_dir, steps=None, batch_size=4) + [
        f"optim.epochs={len(SCRIPTED_SRCC)}", "data.split.val_fraction=0.2",
        "synthetic.enabled=false", *extra,
    ]
    return cli_args(str(CONFIGS / "livec.yaml"), "--data-root", str(fake_root), "--no-progress",
                    "--threads", one_thread, sets=sets)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _check_best(run_dir, seen):
    best = torch.load(run_dir / "best.pt", weights_only=False)
    last = torch.load(run_dir / "last.pt", weights_only=False)
    assert best["best_metric"] == last["best_metric"] == 0.8
    assert best["metadata"]["validation_metrics"]["epoch"] == BEST_EPOCH
    assert best["metadata"]["validation_metrics"]["srcc"] == 0.8
    assert last["best_validation"]["epoch"] == BEST_EPOCH
    assert best["epoch"] == BEST_EPOCH  # the epoch to start from when resuming from it
    assert _same_weights(best["model"], seen[BEST_EPOCH])
    assert not _same_weights(best["model"], seen[BEST_EPOCH + 1])  # the tie is not the best
    assert _same_weights(last["model"], seen[len(SCRIPTED_SRCC)])
    # What export and `iqa train --resume` read back from a checkpoint.
    assert best["model_kwargs"]["backbone"] == "tf_efficientnet_lite0"
    assert best["config"]["optim"]["epochs"] == len(SCRIPTED_SRCC)
    assert best["preprocessing"]["shorter_side"] == 64
    assert best["metadata"]["training_data"].startswith("livec: 12 train / 3 val images")
    assert (last["steps_per_epoch"], last["world_size"], len(last["replica_digests"])) == (3, 1, 1)
    assert re.fullmatch(r"[0-9a-f]{64}", last["replica_digests"][0])  # sha256 of the weights
    history = [h["srcc"] for h in last["history"]]
    assert [h["epoch"] + 1 for h in last["history"]] == [1, 2, 3, 4, 5]
    assert math.isnan(history[0]) and history[1:] == SCRIPTED_SRCC[1:]
    assert [h["step"] for h in last["history"]] == [3, 6, 9, 12, 15]  # 3 steps per epoch
    # What `iqa train` reports at the end (summary.json is the trainer's return value).
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3 * len(SCRIPTED_SRCC)
    assert summary["best_metric"] == 0.8 and summary["best_validation"]["epoch"] == BEST_EPOCH


def test_best_checkpoint_holds_the_best_epoch(fake_root, feature_cache_dir, one_thread,  # noqa: F811
                                              scripted_validation, tmp_path):
    run_dir = tmp_path / "run"
    args = _base_args(fake_root, feature_cache_dir, one_thread)
    assert main(["train", *args, "--output", str(run_dir)]) == 0
    _check_best(run_dir, scripted_validation)


def test_best_checkpoint_survives_a_resume(fake_root, feature_cache_dir, one_thread,  # noqa: F811
                                          scripted_validation, tmp_path, monkeypatch):
    # 12 train images / batch 4 = 3 steps per epoch; stopping after step 10 is one step
    # into epoch 4, after the best epoch was saved. The resumed run must remember that
    # 0.8 was already reached, or it would take epoch 4's tie as the new best.
    run_dir = tmp_path / "run"
    args = _base_args(fake_root, feature_cache_dir, one_thread)
    monkeypatch.setenv(STOP_AFTER_ENV, "10")
    assert main(["train", *args, "--output", str(run_dir)]) == 3
    monkeypatch.delenv(STOP_AFTER_ENV)
    assert main(["train", "--resume", str(run_dir), "--no-progress",
                 "--threads", one_thread]) == 0
    _check_best(run_dir, scripted_validation)


def test_a_run_whose_every_validation_is_undefined_still_ends_with_best_pt(
        fake_root, feature_cache_dir, one_thread, tmp_path, monkeypatch, capsys):  # noqa: F811
    # No epoch improves (NaN is never an improvement), so the loop writes no best.pt; the
    # run must still leave one to export: the final weights, with no validation claimed.
    def validate(self):
        return {"n": 3, "srcc": math.nan, "plcc": math.nan, "krcc": math.nan, "rmse": 0.1}

    monkeypatch.setattr(trainer_module.Trainer, "validate", validate)
    run_dir = tmp_path / "run"
    args = _base_args(fake_root, feature_cache_dir, one_thread, "optim.epochs=2")
    assert main(["train", *args, "--output", str(run_dir)]) == 0
    best = torch.load(run_dir / "best.pt", weights_only=False)
    last = torch.load(run_dir / "last.pt", weights_only=False)
    assert _same_weights(best["model"], last["model"])
    # 12 train images / batch 4 = 3 steps per epoch; after 2 epochs the run stands at
    # step 6, at the start of epoch index 2, as last.pt does.
    for state in (best, last):
        assert (state["epoch"], state["step"], state["step_in_epoch"]) == (2, 6, 0)
        assert state["best_metric"] is None and state["best_validation"] == {}
    assert best["metadata"]["validation_metrics"] == {}
    assert [h["step"] for h in last["history"]] == [3, 6]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_metric"] is None and summary["best_validation"] == {}
    assert summary["validations"] == 2
    # There was a validation split: the closing words must not deny it.
    out = capsys.readouterr().out
    assert "validation SRCC was undefined at all 2 validations" in out
    assert "no validation split" not in out


def test_a_new_run_does_not_append_to_a_killed_runs_metrics(
        fake_root, feature_cache_dir, one_thread, tmp_path):  # noqa: F811
    # An earlier run in the same folder was killed before its first checkpoint: it left
    # metrics.csv rows but no last.pt. A new run must not read those rows as its own.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text("kind,epoch,step\ntrain,0,1\ntrain,0,2\n")
    args = _base_args(fake_root, feature_cache_dir, one_thread, "optim.epochs=1")
    assert main(["train", *args, "--output", str(run_dir)]) == 0
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    # 12 train images / batch 4 = steps 1, 2, 3, each once, then one validation.
    assert [(r["kind"], r["step"]) for r in rows] == [
        ("train", "1"), ("train", "2"), ("train", "3"), ("val", "3")]


def test_diverged_replicas_stop_the_run_before_a_checkpoint(
        fake_root, feature_cache_dir, one_thread, tmp_path, monkeypatch):  # noqa: F811
    # One process stands in for two: the gather of the weights' sha256 returns this rank's
    # and a second replica's that differs (as after a missed gradient all-reduce).
    real_gather = trainer_module.all_gather_object
    other = "0" * 64

    def gather(info, obj):
        gathered = real_gather(info, obj)
        return gathered + [other] if isinstance(obj, str) else gathered

    monkeypatch.setattr(trainer_module, "all_gather_object", gather)
    run_dir = tmp_path / "run"
    args = _base_args(fake_root, feature_cache_dir, one_thread, "optim.epochs=1")
    # The first checkpoint is due at the end of epoch 1: 12 images / batch 4 = step 3.
    with pytest.raises(RuntimeError, match=r"^data-parallel replicas diverged at step 3: "
                       rf"\['[0-9a-f]{{64}}', '{other}'\]$"):
        main(["train", *args, "--output", str(run_dir)])
    assert not (run_dir / "last.pt").exists() and not (run_dir / "best.pt").exists()


# --------------------------------------------------------------------------- it learns


def _learnable_livec(root, count: int = 40):
    """MOS follows brightness, which even random convolution features carry."""
    from PIL import Image

    rng = np.random.default_rng(7)
    levels = rng.permutation(count) / (count - 1)
    rows = []
    for i, level in enumerate(levels):
        texture = rng.normal(0, 20, (64, 64, 3))
        pixels = np.clip(40 + 170 * level + texture, 0, 255).astype(np.uint8)
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
        rows.append([f"images/{i}.png", round(10 + 80 * float(level), 3), 5.0, f"{i}.bmp"])
    write_csv(root / "labels.csv", ["image", "mos", "mos_std", "original_name"], rows)
    return root


def test_a_few_steps_on_a_learnable_problem_raise_srcc(tmp_path, one_thread):  # noqa: F811
    data_root = tmp_path / "data"
    _learnable_livec(data_root / "livec")
    run_dir = tmp_path / "run"
    sets = tiny_overrides(tmp_path / "cache", steps=None, batch_size=8) + [
        "optim.epochs=6", "data.split.val_fraction=0.25", "synthetic.enabled=false",
        "optim.lr=3e-3", "model.dropout=0", "augment.flip=false",
    ]
    args = cli_args(str(CONFIGS / "livec.yaml"), "--data-root", str(data_root),
                    "--no-progress", "--threads", one_thread, sets=sets)
    assert main(["train", *args, "--output", str(run_dir)]) == 0

    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(r["loss"]) for r in rows if r["kind"] == "train"]
    assert len(losses) == 6 * (30 // 8)
    # Loss falls: the last epoch's mean against the first epoch's.
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])

    # Rank agreement on the held-out images, computed here with scipy from the trained
    # weights, not read from the trainer's own validation numbers.
    from PIL import Image

    from iqa.inference.preprocess import to_model_input
    from iqa.training.datasets import load_dataset
    from iqa.training.datasets.splits import apply_split
    from iqa.training.export import model_from_checkpoint

    records = apply_split(load_dataset("livec", data_root / "livec"), run_dir / "split.csv")
    val = [r for r in records if r.split == "val"]
    assert len(val) == 10
    best = model_from_checkpoint(torch.load(run_dir / "best.pt", weights_only=False))
    with torch.no_grad():
        pred = [float(best(torch.from_numpy(to_model_input(
            Image.open(r.path).convert("RGB"), best.preprocessing))[None])[0][0]) for r in val]
    srcc = stats.spearmanr(pred, [r.mos for r in val]).statistic
    assert srcc > 0.8, srcc


def test_resume_checks_the_data_and_reseeds_another_world_size(
        fake_root, feature_cache_dir, one_thread, scripted_validation, tmp_path,  # noqa: F811
        monkeypatch, capsys):
    run_dir = tmp_path / "run"
    monkeypatch.setenv(STOP_AFTER_ENV, "4")  # last.pt holds the end of epoch 1
    args = _base_args(fake_root, feature_cache_dir, one_thread, "optim.max_steps=5")
    assert main(["train", *args, "--output", str(run_dir)]) == 3
    monkeypatch.delenv(STOP_AFTER_ENV)
    state = torch.load(run_dir / "last.pt", weights_only=False)
    resume = ["train", "--resume", str(run_dir), "--no-progress", "--threads", one_thread]

    torch.save({**state, "steps_per_epoch": 99}, run_dir / "last.pt")
    capsys.readouterr()
    assert main(resume) == 2
    assert ("the steps per epoch changed since the checkpoint was written (99 then, 3 now): "
            "optim.batch_size or the training data differ") in capsys.readouterr().err

    # A checkpoint of a 2-process run resumed by one process: warned, reseeded, finished.
    # It also predates the history and best_validation keys, as early checkpoints do.
    older = {k: v for k, v in state.items() if k not in ("history", "best_validation")}
    twin = tmp_path / "twin"
    shutil.copytree(run_dir, twin)
    torch.save({**older, "rng": state["rng"] * 2}, run_dir / "last.pt")
    with pytest.warns(UserWarning, match="written by 2 process.*: random state is reseeded, "
                      "so the continuation is not bit-identical") as caught:
        assert main(resume) == 0
    # The warning points at the code that called _restore (fit), not into _restore. Under
    # mutation testing _restore is wrapped (functools.wraps: __wrapped__) and its caller is
    # the wrapper, in the wrapper's file.
    restore = trainer_module.Trainer._restore
    if hasattr(restore, "__wrapped__"):
        assert caught[0].filename == restore.__code__.co_filename
    else:
        assert Path(caught[0].filename).name == "trainer.py"
        assert "self._restore(" in linecache.getline(caught[0].filename, caught[0].lineno)

    # The documented reseed, seed + 7919 * step + rank, applied by hand through the
    # ordinary restore path, must give the same weights (dropout makes them depend on it).
    from iqa.training import checkpoint as ckpt

    ckpt.seed_everything(0 + 7919 * state["step"] + 0)
    torch.save({**older, "rng": [ckpt.capture_rng_state()]}, twin / "last.pt")
    assert main(["train", "--resume", str(twin), "--no-progress", "--threads", one_thread]) == 0
    ended = torch.load(run_dir / "last.pt", weights_only=False)
    by_hand = torch.load(twin / "last.pt", weights_only=False)["model"]
    assert _same_weights(ended["model"], by_hand)
    # max_steps=5 ends the run inside epoch 2 (3 steps per epoch): last.pt says where a
    # longer run would go on, 2 steps into that epoch, not at the start of the next.
    assert (ended["epoch"], ended["step"], ended["step_in_epoch"]) == (1, 5, 2)


def test_metrics_log_resume_drops_a_validation_the_checkpoint_never_saw(tmp_path):
    # Killed after epoch 1's validation row was written but before last.pt was: the
    # resume starts inside epoch 1 again, so that row goes, and epoch 0's stays.
    from iqa.training.run_log import MetricsLog

    log = MetricsLog(tmp_path, resume_step=None, resume_epoch=None, tensorboard=False)
    for step in range(1, 9):
        log.train(step // 4, step, 1e-3, 1.0 / step, {"mos": 0.1}, 8, 0.5)
        if step in (4, 8):
            log.val(step // 4 - 1, step, {"n": 5, "srcc": 0.5, "plcc": 0.4, "krcc": 0.3,
                                          "rmse": 0.2})
    log.close()
    MetricsLog(tmp_path, resume_step=6, resume_epoch=1, tensorboard=False).close()
    data = (tmp_path / "metrics.csv").read_bytes()
    assert b"\r" not in data  # one line ending, as the rows appended after the resume use
    rows = [line.split(",")[:3] for line in data.decode().splitlines()[1:]]
    assert rows == [["train", "0", "1"], ["train", "0", "2"], ["train", "0", "3"],
                    ["train", "1", "4"], ["val", "0", "4"], ["train", "1", "5"],
                    ["train", "1", "6"]]
