"""`iqa train` as a command: help and the missing-torch message on a base install, errors."""

from __future__ import annotations

import subprocess
import sys

from test_train_fakes import CONFIGS, REPO, fake_data_root

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


def test_a_config_that_is_an_image_or_a_folder_exits_2_naming_it(tmp_path, capsys):
    from PIL import Image

    photo = tmp_path / "good.jpg"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(photo)
    folder = tmp_path / "adir.jpg"
    folder.mkdir()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base: {photo.name}\n")
    for config, message in ((photo, f"{photo} is not a text YAML file"),
                            (folder, f"{folder} is a folder, not a config file"),
                            (recipe, f"{photo.resolve()} is not a text YAML file")):
        assert main(["train", str(config), "--output", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert f"iqa train: error: {message}" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.jpg", "good.jpg", "r.yaml"]


def test_missing_data_is_named_with_its_data_root_and_leaves_no_run_folder(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", str(CONFIGS / "livec.yaml"), "--data-root", str(tmp_path / "nowhere"),
                 "--output", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"dataset root not found: {tmp_path / 'nowhere' / 'livec'}" in err
    assert "--data-root" in err and "IQA_DATA_ROOT" in err
    assert not run_dir.exists()


def test_bad_command_line_values_exit_2_without_a_traceback(tmp_path, capsys):
    assert main(["train", str(CONFIGS / "livec.yaml"), "--threads", "-1"]) == 2
    assert "--threads must be >= 1, got -1" in capsys.readouterr().err
    assert main(["train", str(CONFIGS / "livec.yaml"), "--set", "optim.lr=abc"]) == 2
    assert "optim.lr must be a number, got 'abc'" in capsys.readouterr().err
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    fake = tmp_path / "fake"
    fake_data_root(fake)
    assert main(["train", str(CONFIGS / "livec.yaml"), "--data-root", str(fake),
                 "--output", str(not_a_folder)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_multiview_recipes_check_their_config_too(tmp_path, capsys):
    recipe = str(CONFIGS / "livec_v2.yaml")
    assert main(["train", recipe, "--set", "cv.fnial=false", "--output", str(tmp_path / "a")]) == 2
    assert "unknown config key 'cv.fnial'" in capsys.readouterr().err
    assert main(["train", recipe, "--set", "cv.folds=abc", "--output", str(tmp_path / "b")]) == 2
    assert "cv.folds must be a whole number, got 'abc'" in capsys.readouterr().err
    assert main(["train", recipe, "--set", "heads.typo=1", "--output", str(tmp_path / "c")]) == 2
    assert "unknown config key 'heads.typo'" in capsys.readouterr().err
    assert main(["train", recipe, "--device", "cuda", "--output", str(tmp_path / "d")]) == 2
    assert "on the CPU" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_a_model_that_cannot_be_built_exits_2_and_leaves_no_run_folder(tmp_path, capsys):
    fake = tmp_path / "fake"
    fake_data_root(fake)
    cases = {"model.pool_stages=[2]": "pool_stages must be in [3, 6] with freeze_blocks=4",
             "model.pool_head=false": "pool_head=False leaves the heads nothing to see"}
    for n, (override, message) in enumerate(cases.items()):
        run_dir = tmp_path / f"run{n}"
        assert main(["train", str(CONFIGS / "livec.yaml"), "--data-root", str(fake),
                     "--set", "model.pretrained=false", "--set", override,
                     "--output", str(run_dir), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"iqa train: error: model: {message}" in err and "Traceback" not in err
        assert not run_dir.exists()
