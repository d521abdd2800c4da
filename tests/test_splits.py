"""Seeded group-aware splits and their CSV round trip."""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from iqa.training.datasets import DatasetError, QualityRecord, load_dataset, select_split
from iqa.training.datasets.splits import (
    apply_split,
    kfold_splits,
    load_split_csv,
    random_split,
    save_split_csv,
)


def make_records(n: int, root: Path = Path("/data/set"), groups: int | None = None,
                 folder: str = "images") -> list[QualityRecord]:
    return [
        QualityRecord(
            path=root / folder / f"{i:04d}.jpg", mos=i / max(n - 1, 1), mos_raw=float(i),
            mos_std=None, split=None, dataset="csv",
            group=None if groups is None else f"ref{i % groups}",
        )
        for i in range(n)
    ]


def split_by_name(records) -> dict[str, str]:
    return {r.path.name: r.split for r in records}


def test_random_split_is_deterministic_and_follows_ratios():
    records = make_records(100)
    first = random_split(records, seed=0)
    assert [r.path for r in first] == [r.path for r in records]  # order kept
    assert Counter(r.split for r in first) == {"train": 80, "val": 20}
    assert split_by_name(random_split(records, seed=0)) == split_by_name(first)
    assert split_by_name(random_split(records, seed=1)) != split_by_name(first)
    # The input order does not matter, nor the dataset's location.
    shuffled = records[:]
    random.Random(3).shuffle(shuffled)
    assert split_by_name(random_split(shuffled, seed=0)) == split_by_name(first)
    moved = make_records(100, root=Path("/elsewhere/copy"))
    assert split_by_name(random_split(moved, seed=0)) == split_by_name(first)
    # A new record does not reshuffle the old ones... beyond boundary effects.
    grown = split_by_name(random_split(make_records(101), seed=0))
    changed = sum(grown[name] != split for name, split in split_by_name(first).items())
    assert changed <= 2


def test_random_split_three_ways_and_overwrites_official_split():
    records = [QualityRecord(r.path, r.mos, r.mos_raw, None, "test", "csv")
               for r in make_records(200)]
    result = random_split(records, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=5)
    assert Counter(r.split for r in result) == {"train": 140, "val": 20, "test": 40}


def test_random_split_keeps_groups_together():
    records = make_records(90, groups=9)  # 9 references with 10 images each
    result = random_split(records, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    per_group: dict[str, set] = {}
    for record in result:
        per_group.setdefault(record.group, set()).add(record.split)
    assert all(len(splits) == 1 for splits in per_group.values())
    assert Counter(r.split for r in result) == {"train": 50, "val": 20, "test": 20}


def test_random_split_rejects_bad_ratios_and_too_few_groups():
    records = make_records(10)
    for ratios, message in [({"train": 0.8, "val": 0.3}, "sum to 1"),
                            ({"train": 0.8, "dev": 0.2}, "unknown split"),
                            ({"train": 1.0, "val": 0.0}, "positive")]:
        with pytest.raises(DatasetError, match=message):
            random_split(records, ratios)
    with pytest.raises(DatasetError, match="cannot fill"):
        random_split(make_records(10, groups=1))
    with pytest.raises(DatasetError, match="got no records"):
        random_split(make_records(3), {"train": 0.9, "val": 0.05, "test": 0.05})
    with pytest.raises(DatasetError, match="no records"):
        random_split([])


def test_kfold_each_record_validated_once_groups_whole_folds_balanced():
    records = make_records(53, groups=17)
    folds = kfold_splits(records, k=5, seed=0)
    assert len(folds) == 5
    val_count = Counter()
    for fold in folds:
        assert [r.path for r in fold] == [r.path for r in records]
        assert {r.split for r in fold} == {"train", "val"}
        val = select_split(fold, "val")
        val_count.update(r.path for r in val)
        assert not {r.group for r in val} & {r.group for r in select_split(fold, "train")}
    assert set(val_count.values()) == {1} and len(val_count) == 53
    sizes = [len(select_split(fold, "val")) for fold in folds]
    assert max(sizes) - min(sizes) <= 4  # groups hold 3 or 4 records
    again = kfold_splits(records, k=5, seed=0)
    assert [split_by_name(f) for f in again] == [split_by_name(f) for f in folds]
    other = kfold_splits(records, k=5, seed=1)
    assert [split_by_name(f) for f in other] != [split_by_name(f) for f in folds]


def test_kfold_rejects_bad_k():
    with pytest.raises(DatasetError, match="k must be"):
        kfold_splits(make_records(10), k=1)
    with pytest.raises(DatasetError, match="cannot fill 5 folds"):
        kfold_splits(make_records(12, groups=3), k=5)


def test_split_csv_round_trip_with_relative_paths(tmp_path):
    records = random_split(make_records(30, groups=6), seed=2)
    path = save_split_csv(records, tmp_path / "splits" / "seed2.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "path,split"
    assert lines[1] == f"0000.jpg,{records[0].split}"  # relative to the common folder
    table = load_split_csv(path)
    assert table == {r.path.name: r.split for r in records}
    fresh = make_records(30, root=Path("/another/machine"), groups=6)  # same dataset, moved
    restored = apply_split(fresh, path)
    assert [r.split for r in restored] == [r.split for r in records]
    assert apply_split(fresh, table) == restored


def test_split_csv_with_root_keeps_subfolders_and_absolute_outside(tmp_path):
    same_name = [QualityRecord(Path(f"/data/set/{folder}/x.jpg"), 0.1, 0.1, None, None, "csv")
                 for folder in ("a", "b")]
    records = random_split(make_records(4, folder="a") + same_name, seed=0)
    path = save_split_csv(records, tmp_path / "s.csv")  # common folder /data/set
    names = list(load_split_csv(path))
    assert "a/0000.jpg" in names and "b/x.jpg" in names and "a/x.jpg" in names
    assert apply_split(records, path) == records
    outside = save_split_csv(records, tmp_path / "abs.csv", root="/somewhere/else")
    assert all(name.startswith("/data/set/") for name in load_split_csv(outside))
    assert apply_split(records, outside) == records


def test_apply_split_strictness_and_ambiguity(tmp_path):
    records = random_split(make_records(10), seed=0)
    path = save_split_csv(records[:8], tmp_path / "s.csv")
    with pytest.raises(DatasetError, match="2 record.s. are not in it"):
        apply_split(records, path)
    loose = apply_split(records, path, strict=False)
    assert [r.split for r in loose[:8]] == [r.split for r in records[:8]]
    assert [r.split for r in loose[8:]] == [None, None]
    with pytest.raises(DatasetError, match="2 row.s. match no record"):
        apply_split(records[:6], path)
    same_name = [QualityRecord(Path(f"/d/{folder}/x.jpg"), 0.5, 0.5, None, None, "csv")
                 for folder in ("a", "b")]
    with pytest.raises(DatasetError, match="matches both"):
        apply_split(same_name, {"x.jpg": "train"})
    with pytest.raises(DatasetError, match="matches several rows"):
        apply_split(same_name[:1], {"x.jpg": "train", "a/x.jpg": "val"})


def test_save_split_csv_needs_splits(tmp_path):
    with pytest.raises(DatasetError, match="have no split"):
        save_split_csv(make_records(3), tmp_path / "s.csv")
    with pytest.raises(DatasetError, match="no records"):
        save_split_csv([], tmp_path / "s.csv")


def test_load_split_csv_bad_rows_name_line(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("path,split\na.jpg,train\nb.jpg,holdout\n")
    with pytest.raises(DatasetError, match=r"s\.csv \(line 3\): unknown split 'holdout'"):
        load_split_csv(path)
    path.write_text("path,split\na.jpg,train\nb.jpg,val\na.jpg,test\n")
    with pytest.raises(DatasetError, match=r"line 4\): a\.jpg is listed twice \(first at line 2\)"):
        load_split_csv(path)
    path.write_text("image,split\na.jpg,train\n")
    with pytest.raises(DatasetError, match="missing column.s. 'path'"):
        load_split_csv(path)


def test_kadid_split_never_shares_a_reference_between_train_and_test(tmp_path):
    root = tmp_path / "kadid10k"
    (root / "images").mkdir(parents=True)
    lines = ["dist_img,ref_img,dmos,var"]
    for ref in range(1, 11):
        for dist in range(1, 4):
            name = f"I{ref:02d}_{dist:02d}_03.png"
            Image.new("RGB", (8, 8), (ref * 20, dist * 40, 0)).save(root / "images" / name)
            lines.append(f"{name},I{ref:02d}.png,{1 + dist},0.1")
    (root / "dmos.csv").write_text("\n".join(lines) + "\n")
    records = random_split(load_dataset("kadid10k", root), {"train": 0.8, "test": 0.2}, seed=0)
    train_refs = {r.group for r in select_split(records, "train")}
    test_refs = {r.group for r in select_split(records, "test")}
    assert not train_refs & test_refs and len(test_refs) == 2
    # Written down and re-applied to a copy of the dataset elsewhere: the same split.
    split_file = save_split_csv(records, tmp_path / "kadid_split.csv")
    copy = shutil.copytree(root, tmp_path / "copy")
    again = apply_split(load_dataset("kadid10k", copy), split_file)
    assert [r.split for r in again] == [r.split for r in records]
