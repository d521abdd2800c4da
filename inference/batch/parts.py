"""The Parquet output of `iqa batch`: its schema, the part files that appear atomically,
and which inputs a previous run already wrote."""

from __future__ import annotations

import os
import posixpath
import time
import uuid

from .sources import BatchInputError, read_options, resolve

# Output columns before and after the per-factor columns (which are named after the
# model's factors, as in `iqa score --format csv`).
LEAD_COLUMNS = ("path", "score", "bucket")
TAIL_COLUMNS = ("status", "error_type", "error", "model_version")


def output_schema(factor_names: list[str]):
    import pyarrow as pa

    fields = [
        pa.field("path", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("bucket", pa.string()),
    ]
    fields += [pa.field(factor_column(n), pa.float64()) for n in factor_names]
    fields += [pa.field(n, pa.string()) for n in TAIL_COLUMNS]
    return pa.schema(fields)


def factor_column(name: str) -> str:
    return f"factor_{name}" if name in LEAD_COLUMNS + TAIL_COLUMNS else name


def _output_parts(fs, root: str) -> list[str]:
    from pyarrow import fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(
        i.path
        for i in infos
        if i.is_file
        and i.path.endswith(".parquet")
        and not posixpath.basename(i.path).startswith((".", "_"))
    )


def read_done(output: str, s3_options: dict | None = None) -> tuple[set[str], set[str]]:
    """The paths that already have a row under OUTPUT, and the model versions that wrote them."""
    import pyarrow.dataset as pads

    fs, root = resolve(output, read_options(s3_options))
    parts = _output_parts(fs, root)
    if not parts:
        return set(), set()
    try:
        table = pads.dataset(parts, filesystem=fs, format="parquet").to_table(
            columns=["path", "model_version"]
        )
    except (ValueError, KeyError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise BatchInputError(
            f"{output}: holds Parquet files that are not `iqa batch` output (no readable "
            f"path and model_version columns: {str(exc).splitlines()[0]}); choose an empty "
            "folder or prefix, or one a previous `iqa batch` wrote"
        ) from exc
    versions = {v for v in table.column("model_version").unique().to_pylist() if v is not None}
    return set(table.column("path").to_pylist()), versions


class PartWriter:
    """Buffers result rows and writes them as Parquet part files that appear atomically.

    A part is written when ``rows_per_file`` rows are buffered or ``flush_seconds`` have
    passed since the last one, so a killed job loses at most that much work plus the
    batches in flight. Locally a part is written under a hidden name and renamed; on
    object storage an object only becomes visible when its upload completes.
    """

    def __init__(self, output: str, schema, *, rows_per_file: int, flush_seconds: float,
                 s3_options: dict | None = None):
        from pyarrow import fs as pafs

        self.fs, self.root = resolve(output, read_options(s3_options))
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        if self.fs.get_file_info(self.root).type == pafs.FileType.File:
            # Object stores have no folders: parts would land under "<object>/" beside it.
            raise FileExistsError(f"{output} is a file; OUTPUT must be a folder or prefix")
        self.fs.create_dir(self.root, recursive=True)
        self.schema = schema
        self.rows_per_file = rows_per_file
        self.flush_seconds = flush_seconds
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]
        self.files: list[str] = []
        self._pending: list = []
        self._rows = 0
        self._last_flush = time.monotonic()

    def add(self, table) -> None:
        if table.num_rows:
            self._pending.append(table.select(self.schema.names).cast(self.schema))
            self._rows += table.num_rows
        if self._rows >= self.rows_per_file or (
            self._rows and time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._last_flush = time.monotonic()
        if not self._rows:
            return
        table = pa.concat_tables(self._pending)
        name = f"part-{self.run_id}-{len(self.files):05d}.parquet"
        final = posixpath.join(self.root, name) if not self.local else os.path.join(self.root, name)
        target = os.path.join(self.root, f".{name}.tmp") if self.local else final
        with self.fs.open_output_stream(target) as stream:
            pq.write_table(table, stream, compression="zstd")
        if self.local:
            self.fs.move(target, final)
        self.files.append(final)
        self._pending, self._rows = [], 0
