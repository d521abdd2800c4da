"""Checks of an output file before the work that fills it: one wording for every command
(`iqa score -o`, `iqa export`, `iqa calibrate`, `iqa penalty`). Here rather than in
iqa.training so that the inference CLI can use it without torch."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path


def output_problem(path: str | os.PathLike, option: str = "-o", *,
                   inputs: Iterable[str | os.PathLike] = (),
                   devices: bool = False) -> str | None:
    """Why ``path`` cannot be written as an output file, or None. Named after ``option``;
    checked before the work, which used to fail only once it was done.

    ``inputs``: files the command reads, which ``path`` must not replace (a photo replaced
    by its own score table, a run's last.pt by a weights-only copy that cannot be resumed).
    ``devices``: whether an existing device or pipe (``/dev/stdout``) is written in place.
    Where it is not, it is refused: the commands that write a file in full and rename it
    over ``path`` would replace the device node itself, and as root they can.
    """
    path = Path(path)
    try:
        return _problem(path, option, inputs, devices)
    except OSError as exc:  # a folder on the way that cannot be read: stat itself fails
        return f"{option} {path}: cannot write ({exc.strerror or type(exc).__name__})"


def _problem(path: Path, option: str, inputs: Iterable[str | os.PathLike],
             devices: bool) -> str | None:
    if path.is_dir():
        return f"{option} {path} is a folder: give the file to write"
    if path.exists() and not path.is_file():
        if devices:
            return None
        kind = "a pipe" if stat.S_ISFIFO(path.stat().st_mode) else "a device"
        return f"{option} {path} is {kind}, not a file: give the file to write"
    for source in map(Path, inputs):
        if _same_file(path, source):
            return (f"{option} {path} is the input {source} itself: write to another file, "
                    "so that the input stays as it is")
    for folder in [path.parent, *path.parent.parents]:
        if folder.exists():
            if not folder.is_dir():
                return f"{option} {path}: {folder} is a file, not a folder"
            # os.access() says yes to root even where no file can be made (/proc, a
            # read-only mount): only creating one proves the write at the end will work.
            try:
                with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.",
                                                 suffix=".check"):
                    pass
            except OSError as exc:
                reason = ("permission denied" if isinstance(exc, PermissionError)
                          else "creating a file there fails: "
                          f"{exc.strerror or type(exc).__name__}")
                return f"{option} {path}: cannot write in {folder} ({reason})"
            break
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is missing or cannot be read: not one file
        return False
