"""Dataset loaders against tiny fake releases written in each dataset's real file format."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from script_loader import load_script

from iqa.inference.errors import IQAError
from iqa.training.datasets import (
    DATASETS,
    DatasetError,
    QualityRecord,
    dataset_summary,
    load_dataset,
    select_split,
)

SHARED = Path("/work/shared/datasets")
REPO = Path(__file__).resolve().parents[1]


def write_image(path: Path, size=(8, 8), color=(120, 30, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def assert_error(excinfo, *fragments: str) -> None:
    message = str(excinfo.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# --------------------------------------------------------------------------- KonIQ-10k

KONIQ_SETS_HEADER = ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "set"]
KONIQ_SCORES_HEADER = ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD",
                       "MOS_zscore"]


def koniq_sets_rows(names_sets_mos):
    return [[name, 0.0, 0.1, 0.4, 0.4, 0.1, 100, mos, 0.5, split]
            for name, split, mos in names_sets_mos]


@pytest.fixture
def koniq_root(tmp_path):
    root = tmp_path / "koniq"
    rows = [("a.jpg", "training", 77.38), ("b.jpg", "validation", 40.0), ("c.jpg", "test", 3.9),
            ("d.jpg", "training", 100.0)]
    for name, _, _ in rows:
        write_image(root / "1024x768" / name)
    write_csv(root / "koniq10k_distributions_sets.csv", KONIQ_SETS_HEADER, koniq_sets_rows(rows))
    return root


def test_koniq_sets_file_official_split_and_0_100_scale(koniq_root):
    records = load_dataset("koniq10k", koniq_root)
    assert [r.split for r in records] == ["train", "val", "test", "train"]
    assert [r.path for r in records] == [koniq_root / "1024x768" / n
                                         for n in ("a.jpg", "b.jpg", "c.jpg", "d.jpg")]
    assert all(r.path.is_absolute() and r.path.is_file() for r in records)
    assert records[0].mos == pytest.approx(0.7738)
    assert records[0].mos_raw == pytest.approx(77.38)
    assert records[3].mos == pytest.approx(1.0)
    # SD is on the 1-5 rating scale in this file; mos_std is on the MOS's 0-100 scale.
    assert records[0].mos_std == pytest.approx(0.5 * 25)
    assert {r.dataset for r in records} == {"koniq10k"}
    assert all(r.group is None for r in records)


def test_koniq_scores_file_1_5_scale_without_split(tmp_path):
    root = tmp_path / "koniq"
    write_image(root / "512x384" / "x.jpg")
    write_image(root / "512x384" / "y.jpg")
    write_csv(root / "koniq10k_scores_and_distributions.csv", KONIQ_SCORES_HEADER,
              [["x.jpg", 0, 0, 0.5, 0.5, 0, 100, 3.5, 0.6, 0.3],
               ["y.jpg", 1, 0, 0, 0, 0, 100, 1.0, 0.0, -2.1]])
    records = load_dataset("koniq10k", root)
    assert [r.mos for r in records] == pytest.approx([(3.5 - 1) / 4, 0.0])
    assert [r.split for r in records] == [None, None]
    assert records[0].mos_std == pytest.approx(0.6)
    assert records[0].path == root / "512x384" / "x.jpg"


def test_koniq_prefers_1024_folder_and_resolution_option_picks_another(koniq_root):
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        write_image(koniq_root / "512x384" / name)
    assert load_dataset("koniq10k", koniq_root)[0].path.parent.name == "1024x768"
    small = load_dataset("koniq10k", koniq_root, resolution="512x384")
    assert {r.path.parent.name for r in small} == {"512x384"}


def test_koniq_labels_option_and_labels_only_loading(koniq_root, tmp_path):
    labels = (koniq_root / "koniq10k_distributions_sets.csv").rename(tmp_path / "elsewhere.csv")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("koniq10k", koniq_root)
    assert_error(excinfo, "no KonIQ-10k label file", "labels=PATH")
    assert len(load_dataset("koniq10k", koniq_root, labels=labels)) == 4
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("koniq10k", bare, labels=labels)
    assert_error(excinfo, "no KonIQ-10k image folder", "check_files=False")
    records = load_dataset("koniq10k", bare, labels=labels, check_files=False)
    assert records[0].path == bare / "1024x768" / "a.jpg"


def test_koniq_missing_image_names_file_and_line(koniq_root):
    (koniq_root / "1024x768" / "c.jpg").unlink()
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("koniq10k", koniq_root)
    assert_error(excinfo, "koniq10k_distributions_sets.csv", "line 4", "c.jpg", "1 of 4")
    assert excinfo.value.where == "line 4"


@pytest.mark.parametrize(
    "bad_row, fragments",
    [
        (["e.jpg", 0, 0, 0, 0, 0, 100, "n/a", 0.5, "test"], ["line 6", "'MOS'", "not a number"]),
        (["", 0, 0, 0, 0, 0, 100, 50, 0.5, "test"], ["line 6", "empty value", "image_name"]),
        (["e.jpg", 0, 0, 0, 0, 0, 100, 50, 0.5, "holdout"], ["line 6", "unknown set 'holdout'"]),
        (["e.jpg", 0, 0, 0, 0, 0, 100, 4.2e2, 0.5, "test"], ["line 6", "outside the scale [0, 100]"]),
        (["e.jpg", 0, 0, 0, 0, 0, 100, "nan", 0.5, "test"], ["line 6", "not a finite number"]),
        (["e.jpg", 0, 0, 0, 0, 0, 100, 50, -1, "test"], ["line 6", "negative"]),
        (["a.jpg", 0, 0, 0, 0, 0, 100, 50, 0.5, "test"], ["line 6", "listed twice", "line 2"]),
        (["e.jpg", 0, 0, 0, 0, 100, 50, 0.5, "test"], ["line 6", "9 fields", "header has 10"]),
    ],
)
def test_koniq_bad_rows_name_file_and_line(koniq_root, bad_row, fragments):
    labels = koniq_root / "koniq10k_distributions_sets.csv"
    with labels.open("a", newline="") as handle:
        csv.writer(handle).writerow(bad_row)
    write_image(koniq_root / "1024x768" / "e.jpg")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("koniq10k", koniq_root)
    assert_error(excinfo, str(labels), *fragments)


def test_koniq_line_numbers_count_blank_and_multiline_lines(koniq_root):
    labels = koniq_root / "koniq10k_distributions_sets.csv"
    text = labels.read_text()
    # A blank line and a quoted field spanning two lines still leave line numbers exact.
    labels.write_text(text + "\n" + '"e\nf.jpg",0,0,0,0,0,100,50,0.5,test\n' + "g.jpg,0,0,0,0,0,100,x,0.5,test\n")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("koniq10k", koniq_root, check_files=False)
    assert_error(excinfo, "line 9", "not a number")


def test_koniq_missing_or_unrecognised_columns(tmp_path):
    root = tmp_path / "k"
    write_csv(root / "koniq10k_distributions_sets.csv", ["image_name", "MOS", "set"],
              [["a.jpg", 50, "test"]])
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("koniq10k", root, check_files=False)
    assert_error(excinfo, "missing column(s) 'SD'", "'image_name', 'MOS', 'set'")
    write_csv(root / "koniq10k_distributions_sets.csv", ["image_name", "MOS", "SD"],
              [["a.jpg", 50, 0.5]])
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("koniq10k", root, check_files=False)
    assert_error(excinfo, "not a KonIQ-10k label file", "'set'", "'MOS_zscore'")


def test_koniq_real_label_file_official_split():
    labels = SHARED / "koniq10k-labels" / "koniq10k_distributions_sets.csv"
    if not labels.is_file():
        pytest.skip("the real KonIQ-10k label file is not available")
    records = load_dataset("koniq10k", labels.parent, labels=labels, check_files=False)
    counts = dataset_summary(records)["splits"]
    assert counts == {"train": 7058, "val": 1000, "test": 2015}
    assert len(records) == 10073
    assert all(0.0 <= r.mos <= 1.0 for r in records)
    assert all(r.mos == pytest.approx(r.mos_raw / 100) for r in records)
    assert len({r.path for r in records}) == len(records)


# --------------------------------------------------------------------------- LIVE Challenge

def write_livec_release(root: Path, names, mos, std, *, shape_names=None) -> Path:
    import scipy.io

    data = root / "Data"
    data.mkdir(parents=True, exist_ok=True)
    cells = np.empty((len(names), 1), dtype=object)
    for index, name in enumerate(names):
        cells[index, 0] = name
    scipy.io.savemat(data / "AllImages_release.mat", {"AllImages_release": cells})
    scipy.io.savemat(data / "AllMOS_release.mat", {"AllMOS_release": np.array([mos], float)})
    scipy.io.savemat(data / "AllStdDev_release.mat", {"AllStdDev_release": np.array([std], float)})
    return data


@pytest.fixture
def livec_release(tmp_path):
    root = tmp_path / "ChallengeDB_release"
    practice = [f"t{i}.bmp" for i in range(1, 8)]
    names = [*practice, "1000.JPG", "1001.bmp", "1002.JPG"]
    mos = [50.0] * 7 + [63.5, 12.25, 100.0]
    std = [10.0] * 7 + [18.0, 9.5, 1.0]
    for name in practice:
        write_image(root / "Images" / "trainingImages" / name)
    for name in names[7:]:
        write_image(root / "Images" / name)
    write_livec_release(root, names, mos, std)
    return root, names, mos, std


def test_livec_release_skips_practice_images(livec_release):
    root, names, mos, std = livec_release
    records = load_dataset("livec", root)
    assert [r.path for r in records] == [root / "Images" / n for n in names[7:]]
    assert [r.mos for r in records] == pytest.approx([0.635, 0.1225, 1.0])
    assert [r.mos_raw for r in records] == pytest.approx(mos[7:])
    assert [r.mos_std for r in records] == pytest.approx(std[7:])
    assert all(r.split is None and r.dataset == "livec" for r in records)


def test_livec_release_bad_entries_name_file_and_index(livec_release):
    root, names, mos, std = livec_release
    write_livec_release(root, names, mos[:8] + [float("nan")] + mos[9:], std)
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("livec", root)
    assert_error(excinfo, "AllMOS_release.mat", "entry 8", "not a finite number")

    write_livec_release(root, names[:8] + [""] + names[9:], mos, std)
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("livec", root)
    assert_error(excinfo, "AllImages_release.mat", "entry 8", "empty value")

    write_livec_release(root, names, mos, std[:-1])
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("livec", root)
    assert_error(excinfo, "differ in length", "AllStdDev_release: 9", "AllMOS_release: 10")

    write_livec_release(root, names, mos, std)
    (root / "Images" / "1001.bmp").unlink()
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("livec", root)
    assert_error(excinfo, "AllImages_release.mat", "entry 8", "1001.bmp", "missing")


def test_livec_release_wrong_variable_and_unreadable_mat(livec_release):
    import scipy.io

    root, *_ = livec_release
    scipy.io.savemat(root / "Data" / "AllMOS_release.mat", {"mos": np.zeros((1, 10))})
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("livec", root)
    assert_error(excinfo, "AllMOS_release.mat", "no variable 'AllMOS_release'", "variables: mos")
    (root / "Data" / "AllMOS_release.mat").write_text("not a mat file")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("livec", root)
    assert_error(excinfo, "AllMOS_release.mat", "cannot read")


def test_livec_csv_layout_and_detection(tmp_path):
    root = tmp_path / "livec"
    write_image(root / "images" / "1.png")
    write_image(root / "images" / "2.webp")
    write_csv(root / "labels.csv", ["image", "mos", "mos_std", "original_name"],
              [["images/1.png", 25.0, 5.0, "1.bmp"], ["images/2.webp", 75.5, "", "2.bmp"]])
    records = load_dataset("livec", root)
    assert [r.path for r in records] == [root / "images" / "1.png", root / "images" / "2.webp"]
    assert [r.mos for r in records] == pytest.approx([0.25, 0.755])
    assert [r.mos_std for r in records] == [5.0, None]
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("livec", root, layout="release")
    assert_error(excinfo, "AllImages_release.mat", "not found")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("livec", root, layout="zip")
    assert_error(excinfo, "unknown LIVE Challenge layout 'zip'")
    (root / "labels.csv").unlink()
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("livec", root)
    assert_error(excinfo, "no LIVE Challenge labels", "labels.csv", "AllMOS_release.mat")


def test_livec_real_shared_copy():
    root = SHARED / "livec"
    if not (root / "labels.csv").is_file():
        pytest.skip("the shared LIVE Challenge copy is not available")
    records = load_dataset("livec", root)
    assert len(records) == 871
    assert all(r.path.is_file() for r in records)
    assert all(0.0 <= r.mos <= 1.0 and r.mos_std is not None for r in records)


# --------------------------------------------------------------------------- SPAQ

SPAQ_COLUMNS = ["Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness",
                "Sharpness"]


def write_spaq_xlsx(path: Path, rows: list[list]) -> Path:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=SPAQ_COLUMNS[: len(rows[0])]).to_excel(path, index=False)
    return path


@pytest.fixture
def spaq_root(tmp_path):
    root = tmp_path / "SPAQ"
    write_image(root / "TestImage" / "00001.jpg", size=(40, 24))
    write_image(root / "TestImage" / "00002.jpg", size=(24, 40))
    write_spaq_xlsx(root / "Annotations" / "MOS and Image attribute scores.xlsx",
                    [["00001.jpg", 42.0, 50, 60, 55, 20, 70], ["00002.jpg", 87.5, 40, 30, 35, 10, 80]])
    return root


def test_spaq_reads_xlsx_from_annotations_folder(spaq_root):
    records = load_dataset("spaq", spaq_root)
    assert [r.path for r in records] == [spaq_root / "TestImage" / "00001.jpg",
                                         spaq_root / "TestImage" / "00002.jpg"]
    assert [r.mos for r in records] == pytest.approx([0.42, 0.875])
    assert all(r.split is None and r.mos_std is None and r.dataset == "spaq" for r in records)


@pytest.mark.parametrize(
    "bad_row, fragments",
    [
        (["00003.jpg", "good", 1, 1, 1, 1, 1], ["row 4", "'MOS'", "not a number"]),
        ([None, 50.0, 1, 1, 1, 1, 1], ["row 4", "empty value", "'Image name'"]),
        (["00003.jpg", 120.0, 1, 1, 1, 1, 1], ["row 4", "outside the scale"]),
        (["00004.jpg", 50.0, 1, 1, 1, 1, 1], ["row 4", "missing", "00004.jpg"]),
    ],
)
def test_spaq_bad_rows_name_file_and_row(spaq_root, bad_row, fragments):
    write_image(spaq_root / "TestImage" / "00003.jpg")
    labels = spaq_root / "Annotations" / "MOS and Image attribute scores.xlsx"
    write_spaq_xlsx(labels, [["00001.jpg", 42.0, 1, 1, 1, 1, 1], ["00002.jpg", 87.5, 1, 1, 1, 1, 1],
                             bad_row])
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("spaq", spaq_root)
    assert_error(excinfo, str(labels), *fragments)


def test_spaq_missing_column_folder_and_unreadable_workbook(spaq_root):
    labels = spaq_root / "Annotations" / "MOS and Image attribute scores.xlsx"
    import pandas as pd

    pd.DataFrame({"Image name": ["00001.jpg"], "Score": [3.0]}).to_excel(labels, index=False)
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("spaq", spaq_root)
    assert_error(excinfo, "missing column(s) 'MOS'", "'Image name', 'Score'")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("spaq", spaq_root, images="TestImage_512")
    assert_error(excinfo, "SPAQ image folder not found", "TestImage_512")
    labels.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("spaq", spaq_root)
    assert_error(excinfo, str(labels), "cannot read the spreadsheet")


def load_prepare_spaq():
    return load_script("prepare_spaq")


def test_prepare_spaq_resizes_upright_and_loader_uses_it(spaq_root):
    prepare = load_prepare_spaq()
    # A photo stored landscape with EXIF "rotate 90" (orientation 6) is portrait upright.
    rotated = Image.new("RGB", (60, 30), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(spaq_root / "TestImage" / "00003.jpg", exif=exif)
    write_image(spaq_root / "TestImage" / "00004.png", size=(8, 6))  # smaller than the target
    outcomes = prepare.prepare_spaq(spaq_root, shorter_side=12, progress=False)
    assert len(outcomes["written"]) == 4 and not outcomes["failed"]
    out = spaq_root / "TestImage_12"
    sizes = {p.name: Image.open(p).size for p in out.iterdir()}
    assert sizes == {"00001.jpg": (20, 12), "00002.jpg": (12, 20), "00003.jpg": (12, 24),
                     "00004.png": (8, 6)}
    assert Image.open(out / "00003.jpg").getexif().get(0x0112) is None
    assert Image.open(out / "00003.jpg").format == "JPEG"
    # A second run resumes: nothing left to do.
    assert len(prepare.prepare_spaq(spaq_root, shorter_side=12, progress=False)["skipped"]) == 4
    records = load_dataset("spaq", spaq_root, images="TestImage_12")
    assert records[0].path == out / "00001.jpg"


def test_prepare_spaq_in_parallel_and_cli(spaq_root, tmp_path):
    prepare = load_prepare_spaq()
    (spaq_root / "TestImage" / "broken.jpg").write_bytes(b"not an image")
    outcomes = prepare.prepare_spaq(spaq_root, dst="small", shorter_side=10, workers=2,
                                    progress=False)
    assert sorted(p.name for p in outcomes["written"]) == ["00001.jpg", "00002.jpg"]
    assert [p.name for p in outcomes["failed"]] == ["broken.jpg"]
    assert Image.open(spaq_root / "small" / "00001.jpg").size == (17, 10)
    assert prepare.main([str(spaq_root), "--dst", "small"]) == 1  # the broken file fails again
    assert prepare.main([str(tmp_path / "nowhere")]) == 2


# --------------------------------------------------------------------------- KADID-10k

@pytest.fixture
def kadid_root(tmp_path):
    root = tmp_path / "kadid10k"
    rows = []
    for ref in ("I01", "I02"):
        write_image(root / "images" / f"{ref}.png")
        for dist, dmos in (("01_01", 4.5), ("01_05", 1.5)):
            name = f"{ref}_{dist}.png"
            write_image(root / "images" / name)
            rows.append([name, f"{ref}.png", dmos, 0.25])
    write_csv(root / "dmos.csv", ["dist_img", "ref_img", "dmos", "var"], rows)
    return root


def test_kadid_groups_by_reference_and_normalises_1_5(kadid_root):
    records = load_dataset("kadid10k", kadid_root)
    assert [r.path.name for r in records] == ["I01_01_01.png", "I01_01_05.png",
                                              "I02_01_01.png", "I02_01_05.png"]
    assert [r.group for r in records] == ["I01.png", "I01.png", "I02.png", "I02.png"]
    assert [r.mos for r in records] == pytest.approx([0.875, 0.125, 0.875, 0.125])
    assert all(r.mos_std == pytest.approx(0.5) for r in records)  # sqrt(var)
    assert all(r.split is None for r in records)


@pytest.mark.parametrize(
    "bad_row, fragments",
    [
        (["I02_01_01.png", "I02.png", 4.0, -0.1], ["line 6", "'var'", "negative"]),
        (["I02_01_01.png", "I02.png", 0.5, 0.1], ["line 6", "outside the scale [1, 5]"]),
        (["I02_01_01.png", "", 4.0, 0.1], ["line 6", "empty value in column 'ref_img'"]),
    ],
)
def test_kadid_bad_rows(kadid_root, bad_row, fragments):
    with (kadid_root / "dmos.csv").open("a", newline="") as handle:
        csv.writer(handle).writerow(bad_row)
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("kadid10k", kadid_root, check_files=False)
    assert_error(excinfo, "dmos.csv", *fragments)


# --------------------------------------------------------------------------- generic CSV

@pytest.fixture
def csv_root(tmp_path):
    root = tmp_path / "mine"
    for name in ("a.png", "sub/b.png", "c.png"):
        write_image(root / "photos" / name)
    write_csv(root / "scores.csv", ["file", "quality", "sd", "fold", "scene"],
              [["a.png", 1.0, 0.5, "training", "s1"], ["sub/b.png", 10.0, "", "Validation", "s1"],
               ["c.png", 4.0, 2.0, "", ""]])
    return root


def test_csv_loader_all_options(csv_root):
    records = load_dataset(
        "csv", csv_root, labels="scores.csv", path_column="file", mos_column="quality",
        std_column="sd", score_range=(1, 10), higher_is_better=False, split_column="fold",
        group_column="scene", image_root=csv_root / "photos",
    )
    assert [r.path for r in records] == [csv_root / "photos" / n for n in ("a.png", "sub/b.png", "c.png")]
    # Lower raw score is better here: 1 -> 1.0, 10 -> 0.0.
    assert [r.mos for r in records] == pytest.approx([1.0, 0.0, 6 / 9])
    assert [r.mos_std for r in records] == [0.5, None, 2.0]
    assert [r.split for r in records] == ["train", "val", None]
    assert [r.group for r in records] == ["s1", "s1", None]
    assert {r.dataset for r in records} == {"csv"}


def test_csv_loader_root_may_be_the_file_itself(tmp_path):
    write_image(tmp_path / "x.jpg")
    labels = write_csv(tmp_path / "any.csv", ["image", "mos"], [["x.jpg", 0.3]])
    records = load_dataset("csv", labels, score_range="0,1")
    assert records[0].path == tmp_path / "x.jpg" and records[0].mos == pytest.approx(0.3)


def test_csv_loader_errors(csv_root):
    common = dict(labels="scores.csv", path_column="file", mos_column="quality",
                  image_root=csv_root / "photos")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("csv", csv_root, **common)
    assert_error(excinfo, "needs the option(s): score_range")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("csv", csv_root, score_range=(5, 1), **common)
    assert_error(excinfo, "HIGH > LOW")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("csv", csv_root, score_range=(1, float("inf")), **common)
    assert_error(excinfo, "must be finite")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("csv", csv_root, score_range=(0, 10), higher_is_better="no", **common)
    assert_error(excinfo, "higher_is_better")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("csv", csv_root, score_range=(0, 10), std_column="stdev", **common)
    assert_error(excinfo, "missing column(s) 'stdev'")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("csv", csv_root, score_range=(0, 10), labels="nope.csv",
                     path_column="file", mos_column="quality")
    assert_error(excinfo, "label file not found: nope.csv")
    write_csv(csv_root / "scores.csv", ["file", "quality", "fold"],
              [["a.png", 1.0, "train"], ["c.png", 4.0, "dev"]])
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("csv", csv_root, score_range=(0, 10), split_column="fold", **common)
    assert_error(excinfo, "scores.csv (line 3)", "unknown split 'dev'")


def test_csv_loader_non_utf8_file(tmp_path):
    (tmp_path / "labels.csv").write_bytes("image,mos\nd\xe9j\xe0.jpg,3\n".encode("latin-1"))
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("csv", tmp_path, score_range=(0, 5), check_files=False)
    assert_error(excinfo, "labels.csv", "not a UTF-8 text file")


# --------------------------------------------------------------------------- registry, records

def test_registry_names_and_unknown_dataset_or_option(tmp_path):
    assert set(DATASETS) == {"koniq10k", "livec", "spaq", "kadid10k", "csv"}
    assert all(callable(loader) for loader in DATASETS.values())
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("tid2013", tmp_path)
    assert_error(excinfo, "unknown dataset 'tid2013'", "koniq10k", "livec")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("koniq10k", tmp_path, resoltion="512x384")
    assert_error(excinfo, "no option(s) resoltion", "resolution")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("kadid10k", tmp_path / "absent")
    assert_error(excinfo, "dataset root not found")
    assert issubclass(DatasetError, IQAError)


def test_select_split_and_summary(koniq_root):
    records = load_dataset("koniq10k", koniq_root)
    assert [r.path.name for r in select_split(records, "train")] == ["a.jpg", "d.jpg"]
    unsplit = [QualityRecord(r.path, r.mos, r.mos_raw, None, None, "koniq10k") for r in records]
    with pytest.raises(DatasetError) as excinfo:
        select_split(unsplit, "test")
    assert_error(excinfo, "no record is in split 'test'", "unsplit: 4", "random_split")
    with pytest.raises(DatasetError) as excinfo:
        select_split(records, "validation")
    assert_error(excinfo, "unknown split 'validation'")

    summary = dataset_summary(records)
    assert summary["count"] == 4
    assert summary["datasets"] == {"koniq10k": 4}
    assert summary["splits"] == {"train": 2, "val": 1, "test": 1}
    assert summary["mos"]["min"] == pytest.approx(0.039)
    assert summary["mos"]["max"] == pytest.approx(1.0)
    assert summary["mos"]["mean"] == pytest.approx((0.7738 + 0.4 + 0.039 + 1.0) / 4)
    assert summary["mos_raw"] == {"min": pytest.approx(3.9), "max": pytest.approx(100.0)}
    assert dataset_summary([])["count"] == 0


def test_record_rejects_unknown_split_name():
    with pytest.raises(ValueError, match="split"):
        QualityRecord(Path("/x.jpg"), 0.5, 50.0, None, "training", "csv")
    assert math.isclose(QualityRecord(Path("/x.jpg"), 0.5, 50.0, None, "val", "csv").mos, 0.5)


def test_package_imports_without_torch_pandas_or_scipy():
    code = ("import sys, iqa.training.datasets, iqa.training.datasets.splits; "
            "heavy = [m for m in ('torch', 'pandas', 'scipy') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
