"""`iqa score`: score image files, folders and URLs from the command line.

A thin layer over :meth:`QualityModel.iter_scores`: it expands folders, fetches URLs in
the decode workers, and writes one row per input in input order. A file that cannot be
scored gets a row with its error and makes the exit status 1; the others carry on.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from .csv_safe import spreadsheet_safe
from .option_ranges import out_of_range
from .output_files import output_problem
from .server.logsafe import escape_control

FORMATS = ("table", "json", "jsonl", "csv")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # RFC 3986's scheme, then //
_FORMAT_BY_SUFFIX = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Score the technical quality of photos: one score in [0, 1] per image, higher is "
        "better (below 0.5 is a reasonable first threshold for 'low quality'). Inputs are "
        "image files, folders (their images are scored) or http(s) URLs."
    )
    parser.add_argument("inputs", nargs="+", metavar="PATH|DIR|URL", help="what to score")
    parser.add_argument(
        "-r", "--recursive", action="store_true", help="also score images in sub-folders"
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="output format (default: from the -o file's suffix .json/.jsonl/.csv, else table)",
    )
    parser.add_argument("-o", "--output", metavar="FILE", help="write the rows here, not stdout")
    parser.add_argument(
        "--factors",
        action="store_true",
        help="add each distortion factor's estimated severity in [0, 1] (if the model has them)",
    )
    parser.add_argument(
        "--min-score", type=float, metavar="X", help="only print images scoring >= X"
    )
    parser.add_argument(
        "--max-score",
        type=float,
        metavar="X",
        help="only print images scoring <= X (e.g. 0.5 to find the bad photos)",
    )
    parser.add_argument("--model", metavar="PATH", help="ONNX model (default: the shipped one)")
    parser.add_argument(
        "--providers",
        metavar="LIST",
        help="comma-separated onnxruntime providers, e.g. CPUExecutionProvider "
        "(default: CUDA if available, else CPU)",
    )
    parser.add_argument("--threads", type=int, metavar="N",
                        help="onnxruntime intra-op threads (default: onnxruntime's own)")
    parser.add_argument(
        "--batch-size", type=int, default=16, metavar="N",
        help="images decoded ahead and scored per step (default 16); on a GPU equal-sized "
        "ones share one model call, on a CPU each runs alone, which is faster there",
    )
    parser.add_argument(
        "--workers", type=int, default=2, metavar="N",
        help="threads that read, decode and resize images while the model runs (default 2)",
    )
    parser.add_argument(
        "--max-pixels",
        type=float,
        default=None,
        metavar="N",
        help="refuse images with more pixels than this (default: 64e6)",
    )
    parser.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="allow URLs that resolve to private, loopback or link-local addresses",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal and there are "
        "several inputs)",
    )


def run(args: argparse.Namespace) -> int:
    from .errors import IQAError
    from .model import QualityModel

    problem = check_options(args)
    if problem:
        print(f"iqa score: {problem}", file=sys.stderr)
        return 2
    sources = collect_sources(args.inputs, recursive=args.recursive)
    if not sources:
        print(f"iqa score: no images found in {' '.join(args.inputs)}", file=sys.stderr)
        return 1
    options = {} if args.max_pixels is None else {"max_pixels": int(args.max_pixels)}
    try:
        model = QualityModel(
            args.model, providers=_split(args.providers), threads=args.threads, **options
        )
    except IQAError as exc:
        print(f"iqa score: {exc}", file=sys.stderr)
        return 2
    loader = _url_loader(args.allow_private_urls) if any(map(has_scheme, sources)) else None
    output_format = args.format or _FORMAT_BY_SUFFIX.get(Path(args.output or "").suffix, "table")
    factor_names = list(model.factor_names) if args.factors else []
    if args.factors and not factor_names:
        print(f"iqa score: {model.path.name} has no factor outputs", file=sys.stderr)

    problem = (output_problem(args.output, inputs=[s for s in sources if not is_url(s)],
                              devices=True) if args.output else None)
    if problem:
        print(f"iqa score: {problem}", file=sys.stderr)
        return 2
    # Rows go to FILE.partial and replace FILE only once every input is done, so that an
    # interrupted or failed run leaves an earlier FILE whole. Devices such as /dev/stdout
    # are written in place: a rename would replace the device node itself.
    staged = args.output is not None and (not os.path.exists(args.output)
                                          or os.path.isfile(args.output))
    # A link to a file is followed, so the file it names gets the rows, as open() would.
    final = os.path.realpath(args.output) if staged else args.output
    path = f"{final}.partial" if staged else args.output
    try:
        out = open(path, "w", encoding="utf-8", newline="") if path else sys.stdout
    except OSError as exc:
        print(f"iqa score: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    writer = make_writer(output_format, out, factor_names)
    failed = 0
    refused_urls = False
    complete = False
    try:
        with _progress(len(sources), args.progress) as bar:
            results = model.iter_scores(
                sources, batch_size=args.batch_size, workers=args.workers, loader=loader
            )
            for index, result in results:
                bar.update(1)
                row = make_row(sources[index], result, factor_names)
                failed += row["status"] == "error"
                refused_urls |= row["error_type"] == "ForbiddenAddressError"
                if row["status"] == "error" or _in_range(row["score"], args):
                    writer.write(row)
        writer.close()
        if out is not sys.stdout:
            out.close()  # a full disk may only show here
        complete = True
    except BrokenPipeError:
        # `iqa score DIR | head`: the reader left; exit quietly, like other Unix tools.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:  # writing failed: a full disk, a quota, an I/O error
        print(f"iqa score: cannot write {path or 'to stdout'}: {exc.strerror or exc}",
              file=sys.stderr)
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        if out is not sys.stdout:
            _close_quietly(out)
        if staged and not complete:
            print(f"iqa score: stopped before the end: {args.output} is unchanged; the rows "
                  f"written so far are in {path}", file=sys.stderr)
    if staged:
        os.replace(path, final)
    if failed:
        print(f"iqa score: {failed} of {len(sources)} inputs could not be scored", file=sys.stderr)
    if refused_urls:
        print(
            "iqa score: pass --allow-private-urls to fetch from private addresses", file=sys.stderr
        )
    return 1 if failed else 0


# ----------------------------------------------------------------------------- inputs


def check_options(args: argparse.Namespace) -> str | None:
    """What is wrong with the numeric options, or None. A filter that can match nothing
    would otherwise print nothing and exit 0, as if every photo had been filtered out."""
    problem = out_of_range({
        "--batch-size": (args.batch_size, 1, False),
        "--workers": (args.workers, 0, False),
        "--threads": (args.threads, 1, False),
        "--max-pixels": (args.max_pixels, 1, False),
    })
    if problem:
        return problem
    for flag, value in (("--min-score", args.min_score), ("--max-score", args.max_score)):
        if value is not None and not 0.0 <= value <= 1.0:  # NaN fails too
            return f"{flag} must be within [0, 1] (scores are), got {value}"
    if args.min_score is not None and args.max_score is not None \
            and args.min_score > args.max_score:
        return f"--min-score {args.min_score} is above --max-score {args.max_score}"
    return None


def _close_quietly(handle) -> None:
    # After a failed write the close's own flush fails again; that error is reported.
    try:
        handle.close()
    except OSError:
        pass


def is_url(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


def has_scheme(source: str) -> bool:
    """``ftp://...``, ``s3://...``: meant as a URL, even where it is not one we fetch."""
    return bool(_SCHEME.match(source)) and not os.path.exists(source)


def collect_sources(inputs: list[str], recursive: bool = False) -> list[str]:
    """Expand folders into their image files (sorted); files and URLs pass as given.

    A named file is scored whatever its extension; a folder contributes only files with
    an image extension. Hidden files and folders are skipped (``._x.jpg`` from macOS
    are not images).
    """
    from .decode import IMAGE_EXTENSIONS

    def is_image(name: str) -> bool:
        return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS

    sources: list[str] = []
    for item in inputs:
        if is_url(item) or not os.path.isdir(item):
            sources.append(item)  # a missing file is reported as that file's error
            continue
        found: list[str] = []
        if not recursive:
            names = sorted(e.name for e in os.scandir(item) if e.is_file() and is_image(e.name))
            found.extend(os.path.join(item, n) for n in names)
        else:
            for root, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                # isfile, as is_file above: a dangling link is skipped in both modes
                found.extend(path for path in (os.path.join(root, n) for n in sorted(files))
                             if is_image(os.path.basename(path)) and os.path.isfile(path))
        if not found and len(inputs) > 1:
            hint = "" if recursive else " (-r also looks in sub-folders)"
            print(f"iqa score: {item}: no images{hint}", file=sys.stderr)
        sources.extend(found)
    return sources


def _url_loader(allow_private: bool):
    from .fetch import FetchPolicy, InvalidURLError, fetch_url

    policy = FetchPolicy(allow_private=allow_private)

    def load(source: str):
        if is_url(source):
            return fetch_url(source, policy)
        if has_scheme(source):
            scheme = source.partition("://")[0]
            raise InvalidURLError(f"{source}: unsupported URL scheme {scheme!r}; iqa fetches "
                                  "http:// and https:// URLs and reads local files")
        return source

    return load


def _split(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


def _in_range(score: float, args: argparse.Namespace) -> bool:
    return (args.min_score is None or score >= args.min_score) and (
        args.max_score is None or score <= args.max_score
    )


def _progress(total: int, wanted: bool | None):
    from tqdm import tqdm

    show = wanted if wanted is not None else total > 1 and sys.stderr.isatty()
    return tqdm(total=total, disable=not show, file=sys.stderr, unit="img", leave=False)


# ----------------------------------------------------------------------------- output


def make_row(source: str, result, factor_names: list[str]) -> dict:
    """One output row: path, score, bucket, status and error, plus factor columns."""
    from .errors import IQAError

    if isinstance(result, IQAError):
        return {
            "path": source,
            "score": None,
            "bucket": None,
            "status": "error",
            "error_type": type(result).__name__,
            "error": str(result),
        }
    row = {
        "path": source,
        "score": round(result.score, 6),
        "bucket": result.bucket,
        "status": "ok",
        "error_type": None,
        "error": None,
    }
    if factor_names and result.factors:
        row["factors"] = {n: round(result.factors[n], 6) for n in factor_names}
    return row


def make_writer(output_format: str, out, factor_names: list[str]):
    writers = {"table": TableWriter, "json": JsonWriter, "jsonl": JsonLinesWriter, "csv": CsvWriter}
    return writers[output_format](out, factor_names)


class JsonLinesWriter:
    """One JSON object per line, flushed as each image is scored."""

    def __init__(self, out, factor_names: list[str]):
        self.out = out

    def write(self, row: dict) -> None:
        import json

        self.out.write(json.dumps(_json_row(row)) + "\n")
        self.out.flush()

    def close(self) -> None:
        pass


class JsonWriter:
    """A JSON list of row objects, written at the end."""

    def __init__(self, out, factor_names: list[str]):
        self.out, self.rows = out, []

    def write(self, row: dict) -> None:
        self.rows.append(_json_row(row))

    def close(self) -> None:
        import json

        json.dump(self.rows, self.out, indent=2)
        self.out.write("\n")


def _json_row(row: dict) -> dict:
    if row["status"] == "ok":
        return {k: v for k, v in row.items() if k not in ("error", "error_type")}
    return {
        "path": row["path"],
        "status": "error",
        "error": {"type": row["error_type"], "message": row["error"]},
    }


class CsvWriter:
    """CSV with a header; factors become one column each. Text cells that a spreadsheet
    would run as a formula get a leading ``'`` (see :mod:`iqa.inference.csv_safe`)."""

    def __init__(self, out, factor_names: list[str]):
        import csv

        self.factor_names = factor_names
        self.columns = ["path", "score", "bucket", *factor_names, "status", "error_type", "error"]
        self.writer = csv.DictWriter(out, fieldnames=self.columns)
        # The factor columns are named by the --model file's metadata, so the header is
        # guarded too.
        self.writer.writerow({c: spreadsheet_safe(c) for c in self.columns})

    def write(self, row: dict) -> None:
        flat = {k: v for k, v in row.items() if k != "factors"}
        flat.update(row.get("factors") or {})
        # Scores and factors are floats here, so only text (path, error...) is touched.
        self.writer.writerow(
            {k: spreadsheet_safe(v) if isinstance(v, str) else v for k, v in flat.items()}
        )

    def close(self) -> None:
        pass


class TableWriter:
    """An aligned, human-readable table, printed once every image is scored."""

    def __init__(self, out, factor_names: list[str]):
        self.out, self.factor_names, self.rows = out, factor_names, []

    def write(self, row: dict) -> None:
        self.rows.append(row)

    def close(self) -> None:
        header = ["path", "score", "bucket", *self.factor_names, "status"]
        body = [self._cells(row) for row in self.rows]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
        numeric = {1, *range(3, 3 + len(self.factor_names))}

        def render(cells: list[str]) -> str:
            padded = [
                c.rjust(w) if i in numeric else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ]
            return "  ".join(padded).rstrip()

        lines = [render(header)] + [render(cells) for cells in body]
        self.out.write("\n".join(lines) + "\n")

    def _cells(self, row: dict) -> list[str]:
        # A file name must not break the table into lines or send escape sequences to the
        # terminal; the machine formats keep names exact.
        path = escape_control(row["path"])
        if row["status"] == "error":
            blank = [""] * (2 + len(self.factor_names))
            # The message names the file already, and so does the first column.
            message = row["error"].removeprefix(f"{row['path']}: ")
            return [path, *blank, f"error: {escape_control(message)}"]
        factors = row.get("factors") or {}
        return [
            path,
            f"{row['score']:.3f}",
            row["bucket"],
            *(f"{factors[n]:.3f}" if n in factors else "" for n in self.factor_names),
            "ok",
        ]
