"""The output-file checks every command makes before its work (no torch needed)."""

from __future__ import annotations

import os
import stat

import pytest

from iqa.inference.output_files import output_problem


def test_output_problems_are_found_before_the_work(tmp_path):
    source = tmp_path / "last.pt"
    source.write_bytes(b"x")
    (tmp_path / "afile.txt").write_text("x")
    assert output_problem(tmp_path / "new" / "deeper" / "c.pt") is None
    assert output_problem(tmp_path, "-o") == f"-o {tmp_path} is a folder: give the file to write"
    assert "afile.txt is a file, not a folder" in output_problem(tmp_path / "afile.txt" / "m.onnx")
    assert "is the input" in output_problem(source, inputs=[source])
    os.link(source, tmp_path / "same.pt")  # another name for the same file
    assert "is the input" in output_problem(tmp_path / "same.pt", inputs=[source])
    assert output_problem(tmp_path / "other.pt", inputs=[source]) is None
    assert output_problem(tmp_path / "other.pt", inputs=[tmp_path / "missing.jpg"]) is None
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".check"]  # the probe is gone


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_pipe_is_written_in_place_only_where_the_command_can(tmp_path):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    assert output_problem(pipe, "-o") == f"-o {pipe} is a pipe, not a file: give the file to write"
    assert output_problem(pipe, "-o", devices=True) is None  # `iqa score -o` writes in place
    assert stat.S_ISFIFO(pipe.stat().st_mode)


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_a_device_is_refused_where_it_would_be_replaced():
    assert output_problem("/dev/null", "--json") == (
        "--json /dev/null is a device, not a file: give the file to write")
    assert output_problem("/dev/null", devices=True) is None


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_folder_that_takes_no_files_is_found_even_as_root():
    # os.access(W_OK) is true for root in /proc; creating a file there fails.
    assert output_problem("/proc/x.pt") == ("-o /proc/x.pt: cannot write in /proc (creating a "
                                            "file there fails: No such file or directory)")


def test_a_path_that_cannot_even_be_looked_at_is_named(tmp_path, monkeypatch):
    # stat() fails on a folder the user may not read (EACCES, as non-root) or on a name
    # too long for the file system; pathlib raises for those rather than saying False.
    too_long = tmp_path / ("x" * 300) / "scores.csv"
    assert output_problem(too_long) == f"-o {too_long}: cannot write (File name too long)"
    assert output_problem(tmp_path / "ok.csv", inputs=[tmp_path / ("y" * 300)]) is None

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(tmp_path), "stat", denied)
    locked = tmp_path / "locked" / "scores.csv"
    assert output_problem(locked) == f"-o {locked}: cannot write (Permission denied)"
