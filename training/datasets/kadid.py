"""KADID-10k (Lin et al., 2019): 81 pristine references x 25 synthetic distortions x 5
levels. ``dmos.csv`` (dist_img, ref_img, dmos, var) rates each distorted image on 1-5,
higher is better despite the name; images in ``images/``.

Every record's group is its reference image, so group-aware splits never put the same
scene in train and test.
"""

from __future__ import annotations

import math
import os

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

KADID_LABEL_FILE = "dmos.csv"
KADID_SCALE = (1.0, 5.0)


@register_dataset("kadid10k")
def kadid10k(
    root: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    images: str = "images",
    check_files: bool = True,
) -> list[QualityRecord]:
    """KADID-10k records (split None, group = reference image)."""
    root = resolve_root(root)
    source = resolve_label_file(root, labels, (KADID_LABEL_FILE,), "KADID-10k")
    folder = root / images
    if check_files and not folder.is_dir():
        raise DatasetError(f"KADID-10k image folder not found: {folder}", source=folder)
    table = read_csv_table(source, required=("dist_img", "ref_img", "dmos", "var"))
    entries = []
    for row in table.rows:
        variance = row.std("var")  # same checks as a std: a number, not negative
        record = make_record(
            row,
            dataset="kadid10k",
            path=image_path(folder, row.text("dist_img")),
            mos_raw=row.score("dmos", *KADID_SCALE),
            scale=KADID_SCALE,
            mos_std=None if variance is None else math.sqrt(variance),
            group=row.text("ref_img"),
        )
        entries.append((row, record))
    return finalize(entries, check_files=check_files)
