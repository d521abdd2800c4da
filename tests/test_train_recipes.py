"""Every recipe in configs/ runs end to end (a couple of steps) on a fake release in its
dataset's real format, through the real `iqa train` entry point."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml
from test_train_fakes import (  # noqa: F401  (fixtures)
    CONFIGS,
    cli_args,
    fake_root,
    feature_cache_dir,
    one_thread,
    tiny_overrides,
)

from iqa.inference.cli import main

# Model v2 recipes (model.architecture: multiview) train another way; tests/test_multiview.py
# runs them on the same fake releases.
RECIPES = sorted(p.stem for p in CONFIGS.glob("*.yaml")
                 if (yaml.safe_load(p.read_text()).get("model") or {}).get("architecture")
                 != "multiview")


def test_every_shipped_recipe_is_covered():
    assert {"livec", "livec_full", "livec_levels", "koniq10k", "spaq", "kadid10k"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_end_to_end(recipe, fake_root, feature_cache_dir, tmp_path, capsys,  # noqa: F811
                                  one_thread):  # noqa: F811
    run_dir = tmp_path / "run"
    argv = cli_args("train", str(CONFIGS / f"{recipe}.yaml"), "--output", str(run_dir),
                    "--data-root", str(fake_root), "--no-progress", "--device", "cpu",
                    "--threads", "1", sets=tiny_overrides(feature_cache_dir))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"iqa export {run_dir / 'best.pt'} -o model.onnx" in out

    for name in ("config.yaml", "run_info.json", "metrics.csv", "curves.png", "best.pt", "last.pt",
                 "summary.json"):
        assert (run_dir / name).is_file(), name
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["data"]["root"].startswith(str(fake_root))  # --data-root was applied
    info = json.loads((run_dir / "run_info.json").read_text())["sessions"][0]
    assert info["seed"] == cfg["seed"] and info["environment"]["torch"] == torch.__version__

    state = torch.load(run_dir / "last.pt", weights_only=False)
    assert state["step"] == 2
    assert {"model", "model_kwargs", "config", "epoch", "step", "best_metric", "metadata",
            "optimizer", "scheduler", "rng", "preprocessing"} <= set(state)
    assert state["preprocessing"]["shorter_side"] == 64
    training_data = state["metadata"]["training_data"]
    assert cfg["data"]["dataset"] in training_data and "synthetic" in training_data
    if cfg["data"]["dataset"] == "livec":
        assert "README-LIVE.txt" in training_data

    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [int(r["step"]) for r in train_rows] == [1, 2]
    assert all(float(r["loss"]) > 0 for r in train_rows)
    val_rows = [r for r in rows if r["kind"] == "val"]
    if cfg["data"]["split"]["method"] == "none":
        assert not val_rows and "no validation split" in out
        assert not (run_dir / "split.csv").read_text().count(",val")
    else:
        assert len(val_rows) == 1 and int(val_rows[0]["val_n"]) >= 3
        validated = state["metadata"]["validation_metrics"]
        assert validated["n"] == int(val_rows[0]["val_n"]) and validated["step"] == 2
        assert validated["dataset"] == cfg["data"]["dataset"] and validated["split"] == "val"
