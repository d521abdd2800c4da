"""The production install has no torch: inference, the CLI and scoring must not need it.

A child interpreter blocks torch, timm and torchvision with a meta-path finder (so they
fail to import exactly as when not installed), then imports iqa.inference, runs the CLI
and scores an image with the tiny model.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
from PIL import Image

CHILD = r"""
import contextlib, io, json, sys

BLOCKED = {"torch", "timm", "torchvision"}

class BlockHeavyDeps:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, BlockHeavyDeps())
model_path, image_path = sys.argv[1:3]

def cli(*argv):
    from iqa.inference.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}

report = {}
try:
    import torch  # noqa: F401
    report["torch_blocked"] = False
except ImportError:
    report["torch_blocked"] = True

import iqa.inference
from iqa.inference import QualityModel

report["help"] = cli("--help")
report["score_help"] = cli("score", "--help")
report["info_help"] = cli("info", "--help")
report["serve_help"] = cli("serve", "--help")
report["api_score"] = QualityModel(model_path).score(image_path).score
report["cli_score"] = cli("score", image_path, "--model", model_path, "--format", "json")
report["cli_info"] = cli("info", "--model", model_path, "--json")
report["train"] = cli("train", "config.yaml")
report["export"] = cli("export", "checkpoint.pt", "-o", "model.onnx")
report["heavy_modules"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps(report))
"""


def test_inference_and_cli_work_without_torch(tiny_model_path, photo, tmp_path):
    image_path = tmp_path / "photo.jpg"
    Image.fromarray(photo).save(image_path, quality=92)
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(tiny_model_path), str(image_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])

    assert report["torch_blocked"] is True
    assert report["heavy_modules"] == []
    for key in ("help", "score_help", "info_help", "serve_help"):
        assert report[key]["code"] == 0, (key, report[key])
    assert "score" in report["help"]["stdout"]
    assert "--min-score" in report["score_help"]["stdout"]

    score = report["api_score"]
    assert 0.0 <= score <= 1.0
    cli_rows = json.loads(report["cli_score"]["stdout"])
    assert report["cli_score"]["code"] == 0
    assert cli_rows[0]["status"] == "ok"
    assert np.isclose(cli_rows[0]["score"], score, atol=1e-5)
    assert json.loads(report["cli_info"]["stdout"])["version"] == "tiny-test"

    # `iqa train` and `iqa export` must say what to install (before their modules
    # existed, the dispatcher said they were not built yet).
    for command, module in (("train", "train_cli"), ("export", "export")):
        outcome = report[command]
        assert outcome["code"] != 0
        if importlib.util.find_spec(f"iqa.training.{module}") is not None:
            assert 'pip install "iqa[train]"' in outcome["stderr"], outcome
        else:
            assert "not built yet" in outcome["stderr"], outcome
