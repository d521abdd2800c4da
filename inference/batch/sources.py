"""What an `iqa batch` INPUT names (folders, globs, manifests, single images; local or
object storage), and how a worker reads one input's bytes."""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..decode import IMAGE_EXTENSIONS
from ..errors import ImageDecodeError, IQAError

MANIFEST_SUFFIXES = (".txt", ".lst", ".csv", ".parquet", ".pq")
GLOB_CHARS = frozenset("*?[")
# Besides http(s), which the fetcher reads: the object stores pyarrow opens ("file" too).
READABLE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "http", "https")


class BatchInputError(IQAError):
    """INPUT or OUTPUT cannot be used: no such folder, an unreadable manifest, no column."""

    error_type = "input_error"
    http_status = 400


@dataclass(frozen=True)
class ReadOptions:
    s3: tuple[tuple[str, Any], ...] = ()  # S3FileSystem keyword arguments, hashable
    allow_private_urls: bool = False


def is_uri(text: str) -> bool:
    """True for ``scheme://...`` (s3, gs, http...), False for local paths."""
    head, sep, _ = text.partition("://")
    return bool(sep) and head.isalnum() and len(head) > 1


def is_http(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


@lru_cache(maxsize=64)
def _filesystem_for(scheme: str, bucket: str, s3: tuple):
    """One pyarrow file system per bucket per process (from_uri looks up the region)."""
    from pyarrow import fs as pafs

    if scheme == "s3" and s3:
        return pafs.S3FileSystem(**dict(s3))
    return pafs.FileSystem.from_uri(f"{scheme}://{bucket}")[0]


def resolve(uri: str, options: ReadOptions = ReadOptions()):
    """``(pyarrow FileSystem, path within it)`` for a local path or an object-store URI."""
    from pyarrow import fs as pafs

    if not is_uri(uri):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    scheme, _, rest = uri.partition("://")
    scheme = scheme.lower()
    if scheme == "file":
        return pafs.LocalFileSystem(), rest
    bucket = rest.split("/", 1)[0]
    return _filesystem_for(scheme, bucket, options.s3), rest.rstrip("/") or rest


def _to_uri(fs, path: str, like: str) -> str:
    """Turn a path inside ``fs`` back into the form the user wrote (local or URI)."""
    if not is_uri(like):
        return path
    return f"{like.partition('://')[0]}://{path}"


def list_inputs(
    source: str,
    *,
    column: str | None = None,
    recursive: bool = False,
    s3_options: dict | None = None,
) -> list[str]:
    """Every image INPUT names, as absolute local paths or URIs, without duplicates.

    INPUT is a folder (its images, sorted; with ``recursive``, those of sub-folders
    too), a glob (``photos/*.jpg``, ``s3://bucket/2024/**/*.jpg``), a manifest
    (``.txt``/``.lst``: one entry a line; ``.csv``/``.parquet``: the ``column`` column,
    default ``path`` or the only column) or a single image. Relative manifest entries
    are relative to the manifest's folder. Hidden files are skipped in folders and globs.
    """
    options = read_options(s3_options)
    fs, path = resolve(source, options)
    from pyarrow import fs as pafs

    info = fs.get_file_info(path)
    # A folder or file that exists under its own name is that, brackets and all
    # ("shoot[2024]/"); only a name that does not exist is read as a glob.
    if info.type == pafs.FileType.NotFound and any(c in GLOB_CHARS for c in source):
        entries = _glob(fs, path, recursive)
    else:
        if info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(path, recursive=recursive)
            entries = sorted(
                i.path for i in fs.get_file_info(selector) if i.is_file and _is_image(i.path)
            )
        elif info.type == pafs.FileType.File and path.lower().endswith(MANIFEST_SUFFIXES):
            return _dedupe(_read_manifest(fs, path, source, column))
        elif info.type == pafs.FileType.File:
            entries = [path]
        else:
            raise BatchInputError(f"{source}: no such folder, manifest or image")
    return _dedupe(_to_uri(fs, p, source) for p in entries)


def _is_image(path: str) -> bool:
    name = posixpath.basename(path.replace(os.sep, "/"))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _glob(fs, pattern: str, recursive: bool) -> list[str]:
    from pyarrow import fs as pafs

    first = min(i for i, c in enumerate(pattern) if c in GLOB_CHARS)
    base = pattern[:first].rsplit("/", 1)[0] if "/" in pattern[:first] else ""
    remainder = pattern[len(base) :].lstrip("/")
    # `*` also matches "/", so only list sub-folders when the pattern asks for them.
    deep = recursive or "/" in remainder or "**" in remainder
    infos = fs.get_file_info(pafs.FileSelector(base or ".", recursive=deep, allow_not_found=True))
    matches = glob_regex(pattern).fullmatch
    return sorted(
        i.path
        for i in infos
        if i.is_file and matches(i.path) and not posixpath.basename(i.path).startswith(".")
    )


def glob_regex(pattern: str) -> re.Pattern:
    """A glob as a regex: ``**/`` is zero or more folders (``a/**/*.jpg`` matches
    ``a/x.jpg`` too, as in shells), ``*`` and ``**`` any text, ``/`` included, ``?`` one
    character, ``[...]`` a class (``[!...]`` negated). Case-sensitive, like the names."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern[i] == "*":
            out.append(".*")
            i += 2 if pattern.startswith("**", i) else 1
        elif pattern[i] == "?":
            out.append(".")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def _read_manifest(fs, path: str, source: str, column: str | None) -> list[str]:
    lower = path.lower()
    try:
        if lower.endswith((".txt", ".lst")):
            with fs.open_input_stream(path) as stream:
                lines = stream.read().decode("utf-8-sig").splitlines()
            entries = [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
        else:
            entries = _manifest_column(fs, path, source, column)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, BatchInputError):
            raise
        raise BatchInputError(f"{source}: cannot read the manifest: {exc}") from exc
    folder = posixpath.dirname(path) if is_uri(source) else os.path.dirname(path)

    def absolute(entry: str) -> str:
        if is_uri(entry) or (not is_uri(source) and os.path.isabs(entry)):
            return entry
        if is_uri(source):
            return _to_uri(fs, posixpath.normpath(posixpath.join(folder, entry)), source)
        return os.path.normpath(os.path.join(folder, os.path.expanduser(entry)))

    return [absolute(e) for e in entries]


def _manifest_column(fs, path: str, source: str, column: str | None) -> list[str]:
    import pyarrow as pa

    if path.lower().endswith(".csv"):
        from pyarrow import csv as pacsv

        with fs.open_input_stream(path) as stream:
            table = pacsv.read_csv(stream)
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path, filesystem=fs)
    names = table.column_names
    if column is None:
        column = "path" if "path" in names else (names[0] if len(names) == 1 else None)
        if column is None:
            raise BatchInputError(
                f"{source}: name the column that holds the images with --column "
                f"(columns: {', '.join(names)})"
            )
    if column not in names:
        raise BatchInputError(f"{source}: no column {column!r} (columns: {', '.join(names)})")
    values = table.column(column).cast(pa.string()).to_pylist()
    return [v.strip() for v in values if v is not None and v.strip()]


def _dedupe(items) -> list[str]:
    return list(dict.fromkeys(items))


def s3_options_from_endpoint(endpoint: str | None, region: str | None = None) -> dict | None:
    """``S3FileSystem`` keyword arguments for an S3-compatible endpoint URL (MinIO, moto...)."""
    from urllib.parse import urlsplit

    options: dict[str, Any] = {}
    if endpoint:
        parsed = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    if region:
        options["region"] = region
    return options or None


def read_options(s3_options: dict | None, allow_private_urls: bool = False) -> ReadOptions:
    return ReadOptions(tuple(sorted((s3_options or {}).items())), allow_private_urls)


def read_source(uri: str, options: ReadOptions):
    """What :meth:`QualityModel.prepare` takes: a local path, or bytes from storage/HTTP."""
    if not is_uri(uri) or uri.lower().startswith("file://"):
        return uri.removeprefix("file://")  # the decoder reports a missing file itself
    if is_http(uri):
        from ..fetch import FetchPolicy, fetch_url

        return fetch_url(uri, FetchPolicy(allow_private=options.allow_private_urls))
    scheme = uri.partition("://")[0].lower()
    if scheme not in READABLE_SCHEMES:
        raise ImageDecodeError(f"{uri}: cannot read {scheme}:// URIs; iqa batch reads local "
                               f"paths and {', '.join(s + '://' for s in READABLE_SCHEMES)}")
    try:
        fs, path = resolve(uri, options)
        with fs.open_input_file(path) as handle:
            return handle.read()
    except (OSError, ValueError) as exc:  # pyarrow: missing object, no permission, network
        raise ImageDecodeError(f"{uri}: cannot read: {exc}") from exc
