"""The record every loader returns, and the helpers that only look at records."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import DatasetError

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class QualityRecord:
    """One rated image."""

    path: Path  # absolute image path
    mos: float  # normalised to [0, 1], higher = better (contract.normalise_mos)
    mos_raw: float  # MOS as released
    mos_std: float | None  # std of MOS on the raw scale, None if unknown
    split: str | None  # "train" | "val" | "test" | None (official split where there is one)
    dataset: str  # "koniq10k" | "livec" | "spaq" | "kadid10k" | "csv"
    group: str | None = None  # records sharing a group never straddle splits

    def __post_init__(self) -> None:
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {self.split!r}")


def select_split(records: Sequence[QualityRecord], split: str) -> list[QualityRecord]:
    """The records whose ``split`` is ``split``; an error if there are none."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    chosen = [record for record in records if record.split == split]
    if not chosen:
        present = _split_counts(records)
        described = ", ".join(f"{name}: {count}" for name, count in present.items()) or "none"
        raise DatasetError(
            f"no record is in split {split!r} (records per split: {described}). "
            "Datasets without an official split need random_split, kfold_splits or "
            "apply_split from iqa.training.datasets.splits first."
        )
    return chosen


def dataset_summary(records: Iterable[QualityRecord]) -> dict:
    """Counts per dataset and split and the MOS range, for CLIs to print."""
    records = list(records)
    summary: dict = {
        "count": len(records),
        "datasets": dict(Counter(record.dataset for record in records)),
        "splits": _split_counts(records),
        "mos": None,
        "mos_raw": None,
    }
    if records:
        mos = [record.mos for record in records]
        raw = [record.mos_raw for record in records]
        summary["mos"] = {"min": min(mos), "max": max(mos), "mean": sum(mos) / len(mos)}
        summary["mos_raw"] = {"min": min(raw), "max": max(raw)}
    return summary


def _split_counts(records: Iterable[QualityRecord]) -> dict[str, int]:
    counts = Counter(record.split or "unsplit" for record in records)
    order = [*SPLITS, "unsplit"]
    return {name: counts[name] for name in order if counts[name]}
