"""Label tables read with their exact locations, so every error names the file and row.

Loaders turn each row of a release's label file into a ``Row`` (whatever the format:
CSV line, spreadsheet row, .mat entry), parse fields through it, and hand the
(row, record) pairs to ``finalize``, which rejects duplicates and missing images.
Nothing is dropped silently: the only rows skipped are those with no content at all.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from iqa.inference.contract import normalise_mos

from .errors import DatasetError
from .records import QualityRecord

# How many offending rows an error message lists before "and N more".
_MAX_LISTED = 5


@dataclass(frozen=True)
class Row:
    """One labelled entry and where it lives: ``where`` is "line 12", "row 7", "entry 3"."""

    source: Path
    where: str
    values: dict[str, object]

    def error(self, message: str) -> DatasetError:
        return DatasetError(f"{self.source} ({self.where}): {message}", source=self.source,
                            where=self.where)

    def text(self, column: str) -> str:
        value = self.values.get(column)
        # Spreadsheets hand back numbers for names such as 123; they are still names.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        text = "" if value is None else str(value).strip()
        if not text:
            raise self.error(f"empty value in column {column!r}")
        return text

    def number(self, column: str) -> float:
        value = self.values.get(column)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise self.error(f"empty value in column {column!r}")
        if isinstance(value, bool):
            raise self.error(f"column {column!r} is not a number: {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise self.error(f"column {column!r} is not a number: {value!r}") from None
        if not math.isfinite(number):
            raise self.error(f"column {column!r} is not a finite number: {value!r}")
        return number

    def optional_number(self, column: str | None) -> float | None:
        if column is None:
            return None
        value = self.values.get(column)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return self.number(column)

    def score(self, column: str, low: float, high: float) -> float:
        """A MOS that must lie on the release's scale; outside it means a wrong file."""
        number = self.number(column)
        if not low <= number <= high:
            raise self.error(
                f"{column!r} = {number:g} is outside the scale [{low:g}, {high:g}] of this file"
            )
        return number

    def std(self, column: str | None) -> float | None:
        value = self.optional_number(column)
        if value is not None and value < 0:
            raise self.error(f"{column!r} = {value:g} is negative; a standard deviation is not")
        return value


@dataclass(frozen=True)
class Table:
    source: Path
    header: tuple[str, ...]
    rows: list[Row]


def check_columns(source: Path, header: Sequence[str], required: Iterable[str]) -> None:
    missing = [name for name in required if name not in header]
    if missing:
        raise DatasetError(
            f"{source}: missing column(s) {', '.join(map(repr, missing))}; "
            f"the header has: {', '.join(repr(name) for name in header)}",
            source=source, where="header",
        )


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{what} not found: {path}", source=path)
    return path


def read_csv_table(source: Path, required: Iterable[str], what: str = "label file") -> Table:
    """A CSV file with a header line; ``where`` is the 1-based line the row starts on.
    ``what`` names the file in a not-found error."""
    require_file(source, what)
    rows: list[Row] = []
    line = 1
    try:
        # utf-8-sig: files saved by Excel start with a byte-order mark.
        with source.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            first = next(reader, None)
            if first is None:
                raise DatasetError(f"{source}: the file is empty", source=source)
            header = tuple(name.strip() for name in first)
            check_columns(source, header, required)
            previous = reader.line_num
            for fields in reader:
                # line_num counts physical lines, so quoted newlines keep numbers right.
                line, previous = previous + 1, reader.line_num
                if not any(field.strip() for field in fields):
                    continue
                if len(fields) != len(header):
                    raise DatasetError(
                        f"{source} (line {line}): {len(fields)} fields, but the header has "
                        f"{len(header)} (an unquoted comma in a name?)",
                        source=source, where=f"line {line}",
                    )
                rows.append(Row(source, f"line {line}", dict(zip(header, fields, strict=True))))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{source}: not a UTF-8 text file ({exc})", source=source) from exc
    except csv.Error as exc:
        raise DatasetError(f"{source} (line {line}): {exc}", source=source,
                           where=f"line {line}") from exc
    return Table(source, header, rows)


def read_xlsx_table(source: Path, required: Iterable[str]) -> Table:
    """The first sheet of an .xlsx workbook, header in row 1; ``where`` is the sheet row."""
    from openpyxl import load_workbook

    require_file(source, "label spreadsheet")
    try:
        workbook = load_workbook(source, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many types for a non-workbook
        raise DatasetError(f"{source}: cannot read the spreadsheet ({exc})", source=source) from exc
    try:
        sheet = workbook.worksheets[0]
        # min_row=1 makes openpyxl yield empty tuples for missing rows, so numbers match.
        cells = sheet.iter_rows(min_row=1, values_only=True)
        first = next(cells, None)
        if first is None:
            raise DatasetError(f"{source}: the first sheet is empty", source=source)
        header = tuple("" if name is None else str(name).strip() for name in first)
        check_columns(source, header, required)
        rows = []
        for number, values in enumerate(cells, start=2):
            if all(value is None or str(value).strip() == "" for value in values):
                continue
            # Rows may be ragged; cells right of the header are unlabelled notes, not data.
            cells_row = tuple(values)[: len(header)]
            cells_row += (None,) * (len(header) - len(cells_row))
            rows.append(Row(source, f"row {number}", dict(zip(header, cells_row, strict=True))))
    finally:
        workbook.close()
    return Table(source, header, rows)


def image_path(folder: Path, name: str) -> Path:
    """The absolute, normalised path of ``name`` (relative to ``folder`` unless absolute)."""
    return Path(os.path.normpath(folder / name))


def make_record(
    row: Row,
    *,
    dataset: str,
    path: Path,
    mos_raw: float,
    scale: tuple[float, float],
    higher_is_better: bool = True,
    mos_std: float | None = None,
    split: str | None = None,
    group: str | None = None,
) -> QualityRecord:
    low, high = scale
    return QualityRecord(
        path=path,
        mos=normalise_mos(mos_raw, low, high, higher_is_better),
        mos_raw=mos_raw,
        mos_std=mos_std,
        split=split,
        dataset=dataset,
        group=group,
    )


def finalize(entries: Sequence[tuple[Row, QualityRecord]], *, check_files: bool) -> list[QualityRecord]:
    """Reject an image listed twice and (with ``check_files``) any missing image."""
    first_seen: dict[Path, Row] = {}
    for row, record in entries:
        earlier = first_seen.setdefault(record.path, row)
        if earlier is not row:
            raise row.error(f"image {record.path} is listed twice (first at {earlier.where})")
    if check_files:
        missing = [(row, record) for row, record in entries if not record.path.is_file()]
        if missing:
            source = missing[0][0].source
            listed = "; ".join(f"{row.where}: {record.path}" for row, record in missing[:_MAX_LISTED])
            more = f"; and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
            raise DatasetError(
                f"{source}: {len(missing)} of {len(entries)} listed image(s) are missing: "
                f"{listed}{more}. Put them under the dataset's root (from Python, "
                f"check_files=False loads the labels without images).",
                source=source, where=missing[0][0].where,
            )
    return [record for _, record in entries]


def resolve_root(root: str | os.PathLike) -> Path:
    path = Path(os.path.abspath(Path(root).expanduser()))
    if not path.exists():
        raise DatasetError(f"dataset root not found: {path}", source=path)
    return path


def resolve_label_file(root: Path, labels: str | os.PathLike | None, defaults: Sequence[str],
                       dataset: str) -> Path:
    """``labels`` under ``root``, else as given (absolute or from the working directory);
    without ``labels``, the first of ``defaults`` (paths under ``root``) that exists."""
    if labels is not None:
        given = Path(labels).expanduser()
        for candidate in (root / given, given):
            if candidate.is_file():
                return Path(os.path.abspath(candidate))
        raise DatasetError(f"{dataset} label file not found: {labels} (also looked in {root})",
                           source=given)
    for name in defaults:
        if (root / name).is_file():
            return root / name
    raise DatasetError(
        f"no {dataset} label file in {root}: expected {' or '.join(defaults)} "
        "(or pass labels=PATH)",
        source=root,
    )
