"""Reading checkpoints and writing outputs: the one reader every command uses, atomic
writes, and the output checks made before any work."""

from __future__ import annotations

import os
import stat

import pytest

torch = pytest.importorskip("torch")

from iqa.inference.errors import IQAError  # noqa: E402
from iqa.training.checkpoint import (  # noqa: E402
    RESUME_KEYS,
    CheckpointError,
    atomic_path,
    atomic_save,
    load_checkpoint,
)


def test_load_checkpoint_names_what_is_wrong(tmp_path):
    assert issubclass(CheckpointError, IQAError)  # `iqa train` already reports IQAError
    text = tmp_path / "livec.yaml"
    text.write_text("# not a checkpoint\n")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    torn = tmp_path / "torn.pt"
    torch.save({"model": {}, "model_kwargs": {}}, torn)
    torn.write_bytes(torn.read_bytes()[:100])
    for path in (text, empty, torn):
        with pytest.raises(CheckpointError, match="is not a checkpoint written by `iqa train`"):
            load_checkpoint(path)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a dict"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"model": {}}, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match=r"\(no model_kwargs\)"):
        load_checkpoint(tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_run_folder_points_at_its_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="a folder with no best.pt or last.pt"):
        load_checkpoint(tmp_path)
    torch.save({"model": {}, "model_kwargs": {}}, tmp_path / "best.pt")
    torch.save({"model": {}, "model_kwargs": {}}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path)
    assert str(caught.value) == (f"{tmp_path} is a run folder, not a checkpoint: give "
                                 f"{tmp_path / 'best.pt'} or {tmp_path / 'last.pt'}")


def test_resumable_needs_the_trainer_state(tmp_path):
    weights = {"model": {}, "model_kwargs": {}, "config": {}}
    torch.save(weights, tmp_path / "calibrated.pt")
    assert load_checkpoint(tmp_path / "calibrated.pt") == weights
    with pytest.raises(CheckpointError, match="holds weights only .* cannot be resumed"):
        load_checkpoint(tmp_path / "calibrated.pt", resumable=True)
    full = {**weights, **dict.fromkeys(RESUME_KEYS, 0)}
    torch.save(full, tmp_path / "last.pt")
    assert load_checkpoint(tmp_path / "last.pt", resumable=True)["step"] == 0


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"good")
    with pytest.raises(ValueError, match="half way"):
        with atomic_path(path) as part:
            part.write_bytes(b"half")
            raise ValueError("half way")
    assert path.read_bytes() == b"good"
    with atomic_path(path) as part:
        part.write_bytes(b"new")
    assert path.read_bytes() == b"new"
    atomic_save({"step": 1}, tmp_path / "sub" / "last.pt")
    assert torch.load(tmp_path / "sub" / "last.pt")["step"] == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["last.pt", "model.onnx", "sub"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_pipe_or_device_is_never_renamed_over(tmp_path):
    # A rename over /dev/null, as root, would leave a regular file in its place.
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(OSError, match="not a regular file"):
        with atomic_path(pipe) as part:
            part.write_bytes(b"model")
    assert stat.S_ISFIFO(pipe.stat().st_mode) and list(tmp_path.iterdir()) == [pipe]


