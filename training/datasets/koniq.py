"""KonIQ-10k (Hosu et al., 2020): 10,073 in-the-wild photos with crowd MOS.

Two official label files exist, with the MOS on different scales:

- ``koniq10k_distributions_sets.csv``: image_name, c1..c5, c_total, MOS (0-100), SD,
  set (training / validation / test: the official 7,058 / 1,000 / 2,015 split).
- ``koniq10k_scores_and_distributions.csv``: image_name, c1..c5, c_total, MOS (1-5), SD,
  MOS_zscore; no split.

In both files SD is on the 1-5 rating scale.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DatasetError
from .records import QualityRecord
from .registry import register_dataset
from .tables import (
    finalize,
    image_path,
    make_record,
    read_csv_table,
    resolve_label_file,
    resolve_root,
)

KONIQ_LABEL_FILES = ("koniq10k_distributions_sets.csv", "koniq10k_scores_and_distributions.csv")
# Image folders of the release, preferred first.
KONIQ_RESOLUTIONS = ("1024x768", "512x384")
_OFFICIAL_SETS = {"training": "train", "validation": "val", "test": "test"}
# The 0-100 MOS is the 1-5 MOS stretched onto 100 points; SD stays on 1-5 in that file, so
# it is brought onto the MOS's scale with the nominal factor 100 / 4. (The release's
# rescaling used the observed MOS range, so the exact factor is ~10% larger.)
_SD_TO_100_SCALE = 25.0


@register_dataset("koniq10k")
def koniq10k(
    root: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    resolution: str | None = None,
    check_files: bool = True,
) -> list[QualityRecord]:
    """KonIQ-10k records; official split from the ``set`` column when the file has one.

    ``resolution``: image folder under root (``"1024x768"`` or ``"512x384"``); default:
    whichever exists, 1024x768 first. ``labels``: the label file (default: found in root).
    """
    root = resolve_root(root)
    source = resolve_label_file(root, labels, KONIQ_LABEL_FILES, "KonIQ-10k")
    table = read_csv_table(source, required=("image_name", "MOS", "SD"))
    if "set" in table.header:
        scale, std_factor = (0.0, 100.0), _SD_TO_100_SCALE
    elif "MOS_zscore" in table.header:
        scale, std_factor = (1.0, 5.0), 1.0
    else:
        raise DatasetError(
            f"{source}: not a KonIQ-10k label file: expected a 'set' column "
            f"({KONIQ_LABEL_FILES[0]}, MOS 0-100) or a 'MOS_zscore' column "
            f"({KONIQ_LABEL_FILES[1]}, MOS 1-5)",
            source=source, where="header",
        )
    images = _image_folder(root, resolution, check_files)

    entries = []
    for row in table.rows:
        split = None
        if "set" in table.header:
            official = row.text("set")
            split = _OFFICIAL_SETS.get(official)
            if split is None:
                raise row.error(f"unknown set {official!r}; expected {', '.join(_OFFICIAL_SETS)}")
        std = row.std("SD")
        record = make_record(
            row,
            dataset="koniq10k",
            path=image_path(images, row.text("image_name")),
            mos_raw=row.score("MOS", *scale),
            scale=scale,
            mos_std=None if std is None else std * std_factor,
            split=split,
        )
        entries.append((row, record))
    return finalize(entries, check_files=check_files)


def _image_folder(root: Path, resolution: str | None, check_files: bool) -> Path:
    if resolution is not None:
        folder = root / resolution
        if check_files and not folder.is_dir():
            raise DatasetError(f"KonIQ-10k image folder not found: {folder}", source=folder)
        return folder
    for name in KONIQ_RESOLUTIONS:
        if (root / name).is_dir():
            return root / name
    if check_files:
        raise DatasetError(
            f"no KonIQ-10k image folder in {root}: expected {' or '.join(KONIQ_RESOLUTIONS)}/ "
            "(pass resolution=FOLDER, or check_files=False to load the labels only)",
            source=root,
        )
    return root / KONIQ_RESOLUTIONS[0]
