"""Seeded, group-aware splits for datasets without an official one, and their CSV form.

Order comes from hashing (seed, group key), not from a random generator: the same seed
gives the same split on every machine and Python/NumPy version, whatever order the
records arrive in, and adding a record never reshuffles the others. Group keys are
the record's ``group``, else its path relative to the records' common folder, so a split
does not depend on where the dataset lives. ``save_split_csv`` writes the result down
so a paper can cite the exact split; ``apply_split`` puts it back.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from .errors import DatasetError
from .records import SPLITS, QualityRecord
from .tables import _MAX_LISTED, read_csv_table


def random_split(
    records: Sequence[QualityRecord],
    ratios: Mapping[str, float] | None = None,
    seed: int = 0,
) -> list[QualityRecord]:
    """The records (same order) with ``split`` set so record counts follow ``ratios``.

    ``ratios``: split name -> fraction, summing to 1 (default train 0.8, val 0.2).
    Records sharing a group always get the same split. Existing splits are overwritten.
    """
    ratios = dict(ratios or {"train": 0.8, "val": 0.2})
    unknown = [name for name in ratios if name not in SPLITS]
    if unknown:
        raise DatasetError(f"unknown split name(s) {unknown}; splits are {', '.join(SPLITS)}")
    if any(not fraction > 0 for fraction in ratios.values()):
        raise DatasetError(f"every ratio must be positive, got {ratios}")
    if abs(sum(ratios.values()) - 1.0) > 1e-6:
        raise DatasetError(f"ratios must sum to 1, got {ratios} (sum {sum(ratios.values()):g})")
    groups = _ordered_groups(records, seed)
    if len(groups) < len(ratios):
        raise DatasetError(f"{len(groups)} group(s) cannot fill {len(ratios)} splits")

    # Walk the groups in hashed order along a line of len(records) slots cut at the
    # cumulative ratios; a group goes to the split its midpoint falls in.
    bounds, total = [], 0.0
    for name, fraction in ratios.items():
        total += fraction * len(records)
        bounds.append((total, name))
    splits: list[str | None] = [None] * len(records)
    filled = 0
    for members in groups:
        middle = filled + len(members) / 2
        name = next((name for bound, name in bounds if middle < bound), bounds[-1][1])
        for index in members:
            splits[index] = name
        filled += len(members)
    empty = [name for name in ratios if name not in splits]
    if empty:
        raise DatasetError(f"split(s) {empty} got no records: too few records or groups "
                           f"({len(records)} records in {len(groups)} groups) for {ratios}")
    return [dataclasses.replace(record, split=split) for record, split in zip(records, splits, strict=True)]


def kfold_splits(records: Sequence[QualityRecord], k: int = 5, seed: int = 0
                 ) -> list[list[QualityRecord]]:
    """``k`` copies of the records (same order); in copy i, fold i is "val", the rest "train".

    Groups never straddle folds; folds are balanced in record count.
    """
    if not isinstance(k, int) or k < 2:
        raise DatasetError(f"k must be an integer >= 2, got {k!r}")
    groups = _ordered_groups(records, seed)
    if len(groups) < k:
        raise DatasetError(f"{len(groups)} group(s) cannot fill {k} folds")
    # Largest groups first (stable, so hashed order breaks ties), each to the emptiest fold.
    fold_of = [0] * len(records)
    sizes = [0] * k
    for members in sorted(groups, key=len, reverse=True):
        fold = sizes.index(min(sizes))
        sizes[fold] += len(members)
        for index in members:
            fold_of[index] = fold
    return [
        [dataclasses.replace(record, split="val" if fold_of[index] == fold else "train")
         for index, record in enumerate(records)]
        for fold in range(k)
    ]


def save_split_csv(records: Sequence[QualityRecord], path: str | os.PathLike,
                   root: str | os.PathLike | None = None) -> Path:
    """Write ``path,split`` for every record; paths relative to ``root`` where possible.

    ``root`` defaults to the records' common folder, so the file reads the same on any
    machine and for any copy of the dataset (e.g. KonIQ 1024x768/ or 512x384/).
    """
    if not records:
        raise DatasetError("no records to save")
    unsplit = [record.path for record in records if record.split is None]
    if unsplit:
        raise DatasetError(f"{len(unsplit)} record(s) have no split, e.g. {unsplit[0]}; "
                           "assign one (random_split, kfold_splits) before saving")
    base = Path(os.path.abspath(root)) if root is not None else _common_folder(records)
    path = Path(path)
    seen: set[str] = set()
    rows = []
    for record in records:
        name = _relative_name(record.path, base)
        if name in seen:
            raise DatasetError(f"{record.path} appears twice in the records")
        seen.add(name)
        rows.append((name, record.split))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("path", "split"))
        writer.writerows(rows)
    return path


def load_split_csv(path: str | os.PathLike) -> dict[str, str]:
    """Read a split file written by ``save_split_csv``: path (as written) -> split."""
    table = read_csv_table(Path(path), required=("path", "split"), what="split file")
    assignment: dict[str, str] = {}
    where: dict[str, str] = {}
    for row in table.rows:
        name, split = row.text("path"), row.text("split")
        if split not in SPLITS:
            raise row.error(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
        if name in assignment:
            raise row.error(f"{name} is listed twice (first at {where[name]})")
        assignment[name], where[name] = split, row.where
    return assignment


def apply_split(records: Sequence[QualityRecord],
                split: str | os.PathLike | Mapping[str, str],
                strict: bool = True) -> list[QualityRecord]:
    """The records (same order) with the split from a split file or ``load_split_csv`` map.

    A relative path in the file matches the record whose path ends with it; an absolute
    one matches exactly. ``strict`` (default): every record must be in the file and every
    row must match a record; otherwise unmatched records keep ``split=None``.
    """
    described = "the split table"
    if not isinstance(split, Mapping):
        described = str(split)
        split = load_split_csv(split)
    by_parts: dict[tuple[str, ...], str] = {}
    for name in split:
        # An absolute name's parts start at "/", so only the full record path matches it.
        by_parts[PurePosixPath(name).parts] = name
    lengths = sorted({len(parts) for parts in by_parts})

    matched: dict[str, Path] = {}
    result, unmatched = [], []
    for record in records:
        parts = PurePosixPath(record.path.as_posix()).parts
        names = {by_parts[parts[-n:]] for n in lengths if n <= len(parts) and parts[-n:] in by_parts}
        if len(names) > 1:
            raise DatasetError(f"{described}: {record.path} matches several rows: {sorted(names)}")
        if not names:
            unmatched.append(record.path)
            result.append(dataclasses.replace(record, split=None))
            continue
        name = names.pop()
        if name in matched:
            raise DatasetError(f"{described}: row {name!r} matches both {matched[name]} and "
                               f"{record.path}; save the split with a deeper root")
        matched[name] = record.path
        result.append(dataclasses.replace(record, split=split[name]))
    if strict:
        unused = [name for name in split if name not in matched]
        if unmatched:
            raise DatasetError(f"{described}: {len(unmatched)} record(s) are not in it, e.g. "
                               f"{'; '.join(map(str, unmatched[:_MAX_LISTED]))}")
        if unused:
            raise DatasetError(f"{described}: {len(unused)} row(s) match no record, e.g. "
                               f"{'; '.join(unused[:_MAX_LISTED])}")
    return result


def _ordered_groups(records: Sequence[QualityRecord], seed: int) -> list[list[int]]:
    """Indices of the records, grouped, groups in an order fixed by (seed, group key)."""
    if not records:
        raise DatasetError("no records to split")
    base = _common_folder(records)
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        if record.group is not None:
            key = f"group:{record.group}"
        else:
            key = f"path:{_relative_name(record.path, base)}"
        groups.setdefault(key, []).append(index)

    def rank(key: str) -> bytes:
        return hashlib.sha256(f"{seed}\0{key}".encode()).digest()

    return [groups[key] for key in sorted(groups, key=rank)]


def _common_folder(records: Sequence[QualityRecord]) -> Path | None:
    try:
        return Path(os.path.commonpath([os.path.dirname(record.path) for record in records]))
    except ValueError:  # no common folder (paths on several drives)
        return None


def _relative_name(path: Path, base: Path | None) -> str:
    try:
        return Path(path).relative_to(base).as_posix() if base is not None else Path(path).as_posix()
    except ValueError:  # not under base: keep it absolute
        return Path(path).as_posix()
