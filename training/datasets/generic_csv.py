"""Any CSV of (image, MOS): the columns, the score scale and its direction are options."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from .errors import DatasetError
from .records import SPLITS, QualityRecord
from .registry import register_dataset
from .tables import (
    Row,
    finalize,
    image_path,
    make_record,
    read_csv_table,
    resolve_label_file,
    resolve_root,
)

# Split names as people write them -> the names records use.
SPLIT_ALIASES = {
    **{name: name for name in SPLITS},
    "training": "train",
    "validation": "val",
    "valid": "val",
    "testing": "test",
}


@register_dataset("csv")
def csv_dataset(
    root: str | os.PathLike,
    *,
    score_range: Sequence[float] | str,
    labels: str | os.PathLike = "labels.csv",
    path_column: str = "image",
    mos_column: str = "mos",
    std_column: str | None = None,
    higher_is_better: bool = True,
    split_column: str | None = None,
    group_column: str | None = None,
    image_root: str | os.PathLike | None = None,
    check_files: bool = True,
) -> list[QualityRecord]:
    """Records from a CSV with a header line.

    ``root`` is the dataset folder, or the CSV file itself. ``score_range`` = (low, high)
    of the MOS scale (also "low,high"); it is required because guessing it would silently
    mis-normalise. Image paths are relative to ``image_root`` (default: the CSV's folder
    when ``root`` is a file, else ``root``) unless absolute. Split values may be
    train/val/test or training/validation/testing; an empty split or group cell means None.
    ``labels`` is looked for under ``root``, then as given.
    """
    root = resolve_root(root)
    if root.is_file():
        source, default_images = root, root.parent
    else:
        source, default_images = resolve_label_file(root, labels, (), "CSV"), root
    low, high = _parse_range(score_range)
    if not isinstance(higher_is_better, bool):
        raise DatasetError(f"higher_is_better must be True or False, got {higher_is_better!r}")
    images = default_images if image_root is None else Path(os.path.abspath(image_root))
    if check_files and not images.is_dir():
        raise DatasetError(f"image root not found: {images}", source=images)

    optional = [column for column in (std_column, split_column, group_column) if column]
    table = read_csv_table(source, required=(path_column, mos_column, *optional))
    entries = []
    for row in table.rows:
        split = None
        value = _optional_text(row, split_column)
        if value is not None:
            split = SPLIT_ALIASES.get(value.lower())
            if split is None:
                raise row.error(f"unknown split {value!r} in column {split_column!r}; "
                                f"expected one of {', '.join(SPLIT_ALIASES)} or empty")
        record = make_record(
            row,
            dataset="csv",
            path=image_path(images, row.text(path_column)),
            mos_raw=row.score(mos_column, low, high),
            scale=(low, high),
            higher_is_better=higher_is_better,
            mos_std=row.std(std_column),
            split=split,
            group=_optional_text(row, group_column),
        )
        entries.append((row, record))
    return finalize(entries, check_files=check_files)


def _optional_text(row: Row, column: str | None) -> str | None:
    if not column or not str(row.values[column]).strip():
        return None
    return row.text(column)


def _parse_range(score_range: Sequence[float] | str) -> tuple[float, float]:
    values = score_range.split(",") if isinstance(score_range, str) else score_range
    try:
        low, high = (float(value) for value in values)
    except (TypeError, ValueError):
        raise DatasetError(f"score_range must be (low, high), got {score_range!r}") from None
    if not high > low:
        raise DatasetError(f"the score range (--csv-range LOW HIGH, or score_range) must "
                           f"have HIGH > LOW, got {score_range!r}")
    if not (math.isfinite(low) and math.isfinite(high)):
        # An infinite end would map every MOS to 0 or 1: "all MOS are equal" later on.
        raise DatasetError(f"the score range (--csv-range LOW HIGH, or score_range) must "
                           f"be finite, got {score_range!r}")
    return low, high
