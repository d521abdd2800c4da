"""Every command and code block in README.md and docs/ still runs.

Each fenced block is one test, named after its file and line:

- ``bash``/``sh``/``console`` blocks run with ``bash -euo pipefail`` and ``python`` blocks
  with the venv's interpreter, in a scratch folder holding small stand-ins for the files
  the docs name (``photo.jpg``, ``holiday/``, ``my.onnx``, ``model.onnx``; ``docs/`` and
  ``configs/`` link to the repository). An HTTP API server with a tiny model runs on a
  free loopback port, and ``127.0.0.1:8000`` in a block is pointed at it.
- ``json`` and ``yaml`` blocks must parse (a JSON block may be an object's inside).
- Other languages (``text``, ``csv``, none) are output, not code.

A comment on the line before a block (blank lines between are fine) changes that:

- ``<!-- doctest: skip (reason) -->``: not run; pytest reports it as skipped with the
  reason (datasets in ../shared, GPUs, hours of training, the internet, installs);
- ``<!-- doctest: parse (reason) -->``: long-running commands are only parsed: each ``iqa``
  command line goes through its subcommand's argument parser (nothing runs), each
  ``python scripts/X.py`` must answer ``--help``, and a Python block must compile;
- ``<!-- doctest: setup CODE -->`` (Python, may span lines): CODE runs first, for the
  names a fragment assumes (``paths``, ``image``, ...). It is visible in the source.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from http_fixtures import encode, uvicorn_server
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHELL = {"bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+|~~~+)(?P<lang>[\w+-]*)[^\n]*\n"
                   r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$", re.S | re.M)
MARKER = re.compile(r"<!--\s*doctest:\s*(?P<kind>skip|parse|setup)\b(?P<rest>.*?)-->\s*\Z", re.S)
BLOCK_TIMEOUT = 180


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    code: str
    mode: str  # run | skip | parse
    reason: str = ""
    setup: str = ""

    @property
    def id(self) -> str:
        suffix = "" if self.mode == "run" else f"-{self.mode}"  # visible in every report
        return f"{self.path.relative_to(ROOT)}:{self.line}-{self.lang or 'text'}{suffix}"


def markdown_files() -> list[Path]:
    files = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
    return [f for f in files if f.is_file()]


def extract_blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        lang = match["lang"].lower()
        before = text[:match.start()].rstrip()
        mode, reason, setup = "run", "", ""
        comment_start = before.rfind("<!--")
        if comment_start != -1:
            marker = MARKER.search(before[comment_start:])
            if marker:
                kind, rest = marker["kind"], marker["rest"].strip()
                if kind == "setup":
                    setup = rest
                else:
                    mode, reason = kind, rest.strip("()").strip()
        blocks.append(Block(path, text.count("\n", 0, match.start()) + 1, lang,
                            match["body"], mode, reason, setup))
    return blocks


ALL_BLOCKS = [b for f in markdown_files() for b in extract_blocks(f)
              if b.lang in SHELL | {"python", "py", "json", "yaml", "yml"}]


# ------------------------------------------------------------------------- sandbox
@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, tiny_model_path) -> Path:
    folder = tmp_path_factory.mktemp("docs-sandbox")
    examples = ROOT / "docs" / "examples"
    small = []
    for source in sorted(examples.glob("*.jpg")):
        image = Image.open(source).convert("RGB")
        image.thumbnail((160, 160))
        small.append((source.name, np.asarray(image)))
    (folder / "photo.jpg").write_bytes(encode(small[0][1]))
    holiday = folder / "holiday"
    (holiday / "day2").mkdir(parents=True)
    for name, pixels in small:
        (holiday / name).write_bytes(encode(pixels))
    (holiday / "day2" / "beach.jpg").write_bytes(encode(small[-1][1][::-1].copy()))
    for name in ("my.onnx", "model.onnx"):
        (folder / name).write_bytes(tiny_model_path.read_bytes())
    for name in ("docs", "configs", "scripts"):
        (folder / name).symlink_to(ROOT / name)
    return folder


@pytest.fixture(scope="module")
def api_base(tiny_model_path):
    from iqa.inference import QualityModel
    from iqa.inference.server.app import create_app

    with uvicorn_server(create_app(QualityModel(tiny_model_path))) as base:
        yield base


def _environment() -> dict:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = ""
    # Blocks run on a shared, busy machine: one onnxruntime thread is plenty for tiny inputs.
    env.setdefault("OMP_NUM_THREADS", "1")
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env.pop(proxy, None)
    return env


def _run(argv, cwd: Path, block: Block, stdin: str | None = None):
    result = subprocess.run(argv, cwd=cwd, env=_environment(), input=stdin, text=True,
                            capture_output=True, timeout=BLOCK_TIMEOUT)
    if result.returncode != 0:
        pytest.fail(f"{block.id} failed (exit {result.returncode}).\n--- block ---\n"
                    f"{block.code}\n--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n"
                    f"{result.stderr[-3000:]}", pytrace=False)
    return result


# ------------------------------------------------------------------------- parse mode
def _commands(code: str) -> list[list[str]]:
    """Simple commands of a shell block: continuations joined, comments dropped, split
    on && || | ; (enough for documentation, not a shell parser)."""
    joined = re.sub(r"\\\n", " ", code)
    commands = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for token in lexer:
            if token in ("&&", "||", "|", ";", "&"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
        if current:
            commands.append(current)
    return commands


def _parse_iqa(argv: list[str], block: Block) -> None:
    from iqa.inference import cli

    if not argv or argv[0].startswith("-"):
        return
    name = argv[0]
    assert name in cli.COMMANDS, f"{block.id}: `iqa {name}` is not a command"
    module = cli._load(name)
    parser = argparse.ArgumentParser(prog=f"iqa {name}", exit_on_error=False)
    module.add_arguments(parser)
    try:
        parser.parse_args(argv[1:])
    except (argparse.ArgumentError, SystemExit) as exc:
        pytest.fail(f"{block.id}: `iqa {shlex.join(argv)}` does not parse: {exc}", pytrace=False)


def _check_parses(block: Block, sandbox: Path) -> None:
    if block.lang in ("python", "py"):
        compile(block.code, block.id, "exec")
        return
    checked = 0
    for argv in _commands(block.code):
        while argv and re.match(r"^\w+=", argv[0]):  # VAR=value prefixes
            argv = argv[1:]
        if not argv:
            continue
        if argv[0] == "iqa":
            _parse_iqa(argv[1:], block)
        elif argv[0] == "torchrun" and "-m" in argv:
            module = argv[argv.index("-m") + 1]
            if module == "iqa.inference.cli":
                _parse_iqa(argv[argv.index("-m") + 2:], block)
        elif argv[0] in ("python", "python3") and len(argv) > 1 and argv[1].endswith(".py"):
            _run([sys.executable, argv[1], "--help"], sandbox, block)
        else:
            continue
        checked += 1
    assert checked, f"{block.id} is marked `parse` but has no iqa/python command to parse"


# Commands that install software or start infrastructure must never run from a test;
# a block using one has to say so with a marker instead.
NEVER_RUN = {"pip", "pip3", "apt-get", "apt", "sudo", "docker", "kubectl", "helm", "ray",
             "torchrun"}


def _refuse_side_effects(block: Block) -> None:
    for argv in _commands(block.code):
        word = next((w for w in argv if not re.match(r"^\w+=", w)), "")
        if word in NEVER_RUN or argv[1:3] == ["-m", "pip"]:
            pytest.fail(f"{block.id}: `{shlex.join(argv)}` installs software or starts "
                        f"infrastructure; put <!-- doctest: skip (reason) --> or "
                        f"<!-- doctest: parse (reason) --> before the block", pytrace=False)


# ------------------------------------------------------------------------- the test
@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.id for b in ALL_BLOCKS])
def test_block(block: Block, sandbox: Path, request):
    if block.mode == "skip":
        pytest.skip(f"{block.id}: marked doctest: skip ({block.reason or 'no reason given'})")
    if block.lang in ("json",):
        try:
            json.loads(block.code)
        except json.JSONDecodeError:
            json.loads("{" + block.code + "}")  # the inside of an object, e.g. "quality": {...}
        return
    if block.lang in ("yaml", "yml"):
        import yaml

        yaml.safe_load(block.code)
        return
    if block.mode == "parse":
        _check_parses(block, sandbox)
        return
    api_base = request.getfixturevalue("api_base")
    port = api_base.rsplit(":", 1)[1]
    code = block.code.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    if block.lang in SHELL:
        _refuse_side_effects(block)
        _run(["bash", "-euo", "pipefail", "-c", code], sandbox, block)
    else:
        _run([sys.executable, "-"], sandbox, block, stdin=block.setup + "\n" + code)


def test_markers_are_well_formed():
    """A typo in a marker would silently run (or hide) a block: catch it."""
    for path in markdown_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "doctest:" in line and "<!--" in line:
                kind = re.search(r"doctest:\s*(\w+)", line)
                assert kind and kind[1] in ("skip", "parse", "setup"), \
                    f"{path.relative_to(ROOT)}:{number}: unknown doctest marker {line.strip()!r}"
                if kind[1] in ("skip", "parse"):
                    assert re.search(r"\(.+\)", line), \
                        f"{path.relative_to(ROOT)}:{number}: give the reason in parentheses"
