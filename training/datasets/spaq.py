"""SPAQ (Fang et al., 2020): 11,125 smartphone photos with MOS on 0-100. No official split.

Labels: ``MOS and Image attribute scores.xlsx`` (Image name, MOS, Brightness,
Colorfulness, Contrast, Noisiness, Sharpness), at the root or in ``Annotations/`` as in
the download. Images: ``TestImage/`` at full resolution; ``scripts/prepare_spaq.py``
writes a copy with the shorter side at 512 (e.g. ``TestImage_512/``), chosen with
``images=``.
"""

from __future__ import annotations

import os

from .errors import DatasetError
from .records import QualityRecord
from .registry import register_dataset
from .tables import (
    finalize,
    image_path,
    make_record,
    read_xlsx_table,
    resolve_label_file,
    resolve_root,
)

SPAQ_LABEL_FILE = "MOS and Image attribute scores.xlsx"
SPAQ_SCALE = (0.0, 100.0)


@register_dataset("spaq")
def spaq(
    root: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    images: str = "TestImage",
    check_files: bool = True,
) -> list[QualityRecord]:
    """SPAQ records (split None). ``images``: image folder under root."""
    root = resolve_root(root)
    source = resolve_label_file(root, labels, (SPAQ_LABEL_FILE, f"Annotations/{SPAQ_LABEL_FILE}"),
                                "SPAQ")
    folder = root / images
    if check_files and not folder.is_dir():
        raise DatasetError(f"SPAQ image folder not found: {folder}", source=folder)
    table = read_xlsx_table(source, required=("Image name", "MOS"))
    entries = [
        (row, make_record(row, dataset="spaq", path=image_path(folder, row.text("Image name")),
                          mos_raw=row.score("MOS", *SPAQ_SCALE), scale=SPAQ_SCALE))
        for row in table.rows
    ]
    return finalize(entries, check_files=check_files)
