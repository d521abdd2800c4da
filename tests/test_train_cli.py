"""`iqa train` as a command: help and the missing-torch message on a base install, errors."""

from __future__ import annotations

import subprocess
import sys

from test_train_fakes import CONFIGS, REPO

from iqa.inference.cli import main

# Runs the dispatcher in a fresh interpreter in which `import torch` fails, as on a base
# install (`pip install iqa` never pulls torch).
WITHOUT_TORCH = (
    "import sys; sys.modules['torch'] = None; "
    "from iqa.inference.cli import main; sys.exit(main(sys.argv[1:]))"
)


def run_without_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_help_works_without_torch():
    proc = run_without_torch("train", "--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--output", "--resume", "--set", "--data-root", "--device", "--threads"):
        assert option in proc.stdout


def test_missing_torch_names_the_train_extra():
    proc = run_without_torch("train", str(CONFIGS / "livec.yaml"))
    assert proc.returncode == 2
    assert "torch" in proc.stderr and 'pip install "iqa[train]"' in proc.stderr


def test_config_errors_are_clear(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["train", str(CONFIGS / "livec.yaml"), "--set", "optim.learning_rate=1"]) == 2
    assert "unknown config key 'optim.learning_rate'" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "nothing to resume from" in capsys.readouterr().err
