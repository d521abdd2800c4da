"""LIVE In the Wild Image Quality Challenge (Ghadiyaram & Bovik, 2016): 1,162 mobile photos
with authentic distortions and crowd MOS on 0-100. No official split.

Two layouts are understood, detected from what the root holds:

- ``release``: the original download: ``Images/`` and ``Data/AllImages_release.mat``,
  ``Data/AllMOS_release.mat``, ``Data/AllStdDev_release.mat``. Entries 0-6 of those
  arrays are the seven practice images t1-t7 (``Images/trainingImages/``), shown to
  raters to calibrate them and not part of the database: they are skipped.
- ``csv``: a re-encoded copy with ``labels.csv`` (image, mos, mos_std, original_name;
  image relative to the root).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .records import QualityRecord
from .registry import register_dataset
from .tables import (
    Row,
    finalize,
    image_path,
    make_record,
    read_csv_table,
    require_file,
    resolve_root,
)

LIVEC_SCALE = (0.0, 100.0)
LIVEC_PRACTICE_IMAGES = 7
LIVEC_LAYOUTS = ("auto", "release", "csv")
_RELEASE_VARIABLES = {
    "names": ("AllImages_release.mat", "AllImages_release"),
    "mos": ("AllMOS_release.mat", "AllMOS_release"),
    "std": ("AllStdDev_release.mat", "AllStdDev_release"),
}


@register_dataset("livec")
def livec(
    root: str | os.PathLike,
    *,
    layout: str = "auto",
    check_files: bool = True,
) -> list[QualityRecord]:
    """LIVE Challenge records (split None). ``layout``: "auto", "release" or "csv"."""
    root = resolve_root(root)
    if layout not in LIVEC_LAYOUTS:
        raise DatasetError(f"unknown LIVE Challenge layout {layout!r}; use one of {LIVEC_LAYOUTS}")
    if layout == "auto":
        if (root / "Data" / _RELEASE_VARIABLES["mos"][0]).is_file():
            layout = "release"
        elif (root / "labels.csv").is_file():
            layout = "csv"
        else:
            raise DatasetError(
                f"no LIVE Challenge labels in {root}: expected Data/AllMOS_release.mat "
                "(original release) or labels.csv (re-encoded copy)",
                source=root,
            )
    entries = _release_entries(root) if layout == "release" else _csv_entries(root)
    return finalize(entries, check_files=check_files)


def _csv_entries(root: Path) -> list[tuple[Row, QualityRecord]]:
    table = read_csv_table(root / "labels.csv", required=("image", "mos"))
    std_column = "mos_std" if "mos_std" in table.header else None
    return [
        (row, make_record(row, dataset="livec", path=image_path(root, row.text("image")),
                          mos_raw=row.score("mos", *LIVEC_SCALE), scale=LIVEC_SCALE,
                          mos_std=row.std(std_column)))
        for row in table.rows
    ]


def _release_entries(root: Path) -> list[tuple[Row, QualityRecord]]:
    data = root / "Data"
    arrays = {key: _load_mat_variable(data / file, variable)
              for key, (file, variable) in _RELEASE_VARIABLES.items()}
    lengths = {key: array.size for key, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        described = ", ".join(f"{_RELEASE_VARIABLES[key][1]}: {n}" for key, n in lengths.items())
        raise DatasetError(f"{data}: the release's arrays differ in length ({described})",
                           source=data)
    if lengths["names"] <= LIVEC_PRACTICE_IMAGES:
        raise DatasetError(
            f"{data / _RELEASE_VARIABLES['names'][0]}: only {lengths['names']} entries; the "
            f"release has {LIVEC_PRACTICE_IMAGES} practice images followed by the database",
            source=data,
        )
    images = root / "Images"
    entries = []
    for index in range(LIVEC_PRACTICE_IMAGES, lengths["names"]):
        where = f"entry {index} (0-based)"
        name_row = Row(data / _RELEASE_VARIABLES["names"][0], where,
                       {"AllImages_release": _cell_text(arrays["names"][index])})
        mos_row = Row(data / _RELEASE_VARIABLES["mos"][0], where,
                      {"AllMOS_release": arrays["mos"][index]})
        std_row = Row(data / _RELEASE_VARIABLES["std"][0], where,
                      {"AllStdDev_release": arrays["std"][index]})
        record = make_record(
            name_row,
            dataset="livec",
            path=image_path(images, name_row.text("AllImages_release")),
            mos_raw=mos_row.score("AllMOS_release", *LIVEC_SCALE),
            scale=LIVEC_SCALE,
            mos_std=std_row.std("AllStdDev_release"),
        )
        entries.append((name_row, record))
    return entries


def _load_mat_variable(path: Path, variable: str) -> np.ndarray:
    import scipy.io

    require_file(path, "LIVE Challenge label file")
    try:
        contents = scipy.io.loadmat(path)
    except NotImplementedError as exc:  # MATLAB v7.3 files are HDF5
        raise DatasetError(f"{path}: MATLAB v7.3 (HDF5) files are not supported ({exc}); "
                           "re-save it with save(..., '-v7')", source=path) from exc
    except Exception as exc:  # scipy raises ValueError, TypeError, ... on a non-.mat file
        raise DatasetError(f"{path}: cannot read the .mat file ({exc})", source=path) from exc
    if variable not in contents:
        found = ", ".join(key for key in contents if not key.startswith("__")) or "none"
        raise DatasetError(f"{path}: no variable {variable!r} (variables: {found})", source=path)
    # Names are an N x 1 cell array, MOS and std 1 x N: flatten both to N.
    return np.asarray(contents[variable]).ravel()


def _cell_text(cell: object) -> str:
    """A MATLAB cell holding a char array comes back as a 1-element string array."""
    values = np.asarray(cell).ravel()
    if values.size == 0:
        return ""
    return str(values[0]).strip()
