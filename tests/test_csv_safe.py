"""CSV outputs keep file names and messages from running as spreadsheet formulas (CWE-1236)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from iqa.inference import FACTOR_NAMES
from iqa.inference.cli import main
from iqa.inference.cli_score import CsvWriter
from iqa.inference.csv_safe import FORMULA_TRIGGERS, spreadsheet_safe
from iqa.training.evaluate import Prediction, write_predictions_csv

APP_JS = Path(__file__).parents[1] / "inference" / "server" / "static" / "app.js"

# Names that Excel or LibreOffice would evaluate, one per printable trigger (no "/" in them:
# a file name cannot hold one). Tab and carriage return are only unit-tested.
FORMULA_NAMES = ['=HYPERLINK("x")+1.jpg', "@SUM(1+1).jpg", "+1+2.jpg", "-3+4.jpg"]


def test_the_trigger_set_is_owasps():
    assert FORMULA_TRIGGERS == frozenset({"=", "+", "-", "@", "\t", "\r"})


@pytest.mark.parametrize("trigger", sorted(FORMULA_TRIGGERS))
def test_each_trigger_gets_a_leading_quote(trigger):
    text = f"{trigger}cmd|' /C calc'!A0"
    assert spreadsheet_safe(text) == "'" + text


@pytest.mark.parametrize("text", [
    "", "photo.jpg", "holiday/=a.jpg", "/data/-1.jpg", "https://example.com/@me.jpg",
    "'=already quoted", " =leading space", "a=b+c-d@e", "0.5",
])
def test_other_text_is_left_exact(text):
    assert spreadsheet_safe(text) == text


def test_the_web_page_csv_uses_the_same_triggers():
    """app.js cannot import the Python constant; this keeps the two writers in step."""
    source = APP_JS.read_text(encoding="utf-8")
    match = re.search(r"function csvCell.*?/\^\[([^\]]+)\]/", source, re.DOTALL)
    assert match, "csvCell's leading-character check not found in app.js"
    escapes = {"t": "\t", "r": "\r", "n": "\n"}
    chars, body, i = set(), match.group(1), 0
    while i < len(body):
        if body[i] == "\\":
            chars.add(escapes.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            chars.add(body[i])
            i += 1
    assert chars == set(FORMULA_TRIGGERS)


@pytest.fixture()
def formula_photos(tmp_path, photo, monkeypatch):
    """Real JPEGs with formula-like names plus a broken one, in the working directory, so
    the path cell starts with the name as a user typed it."""
    small = Image.fromarray(photo).resize((256, 256))
    for name in [*FORMULA_NAMES, "plain.jpg"]:
        small.save(tmp_path / name, quality=90)
    (tmp_path / "=broken.jpg").write_text("not a photo")
    monkeypatch.chdir(tmp_path)
    return [*FORMULA_NAMES, "plain.jpg", "=broken.jpg"]


def _score_csv(capsys, *argv) -> tuple[int, list[dict]]:
    code = main(["score", *map(str, argv)])
    out, _ = capsys.readouterr()
    return code, list(csv.DictReader(io.StringIO(out)))


def test_score_csv_quotes_formula_paths_and_keeps_numbers(capsys, formula_photos,
                                                          tiny_model_path):
    # "--": "-3+4.jpg" is a file, not an option.
    code, rows = _score_csv(capsys, "--model", tiny_model_path, "--format", "csv", "--factors",
                            "--", *formula_photos)
    assert code == 1  # the broken file
    assert [r["path"] for r in rows] == [
        *("'" + name for name in FORMULA_NAMES), "plain.jpg", "'=broken.jpg"]
    for row in rows[:-1]:
        assert row["status"] == "ok" and row["bucket"] and row["error"] == ""
        assert 0.0 <= float(row["score"]) <= 1.0
        for name in FACTOR_NAMES:
            assert 0.0 <= float(row[name]) <= 1.0
    broken = rows[-1]
    assert broken["status"] == "error" and broken["error_type"] == "ImageDecodeError"
    assert broken["score"] == "" and broken["error"].startswith("'=broken.jpg: ")


def test_score_csv_file_output_is_guarded_and_json_stays_exact(capsys, formula_photos, tmp_path):
    """The shipped model, a .csv file chosen by its suffix, as a user would run it."""
    target = tmp_path / "scores.csv"
    assert main(["score", "-o", str(target), "--", FORMULA_NAMES[0]]) == 0
    with target.open(newline="", encoding="utf-8") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["path"] == "'" + FORMULA_NAMES[0] and 0.0 <= float(row["score"]) <= 1.0

    assert main(["score", "--format", "json", "--", FORMULA_NAMES[0]]) == 0
    (item,) = json.loads(capsys.readouterr().out)
    assert item["path"] == FORMULA_NAMES[0]
    assert item["score"] == pytest.approx(float(row["score"]), abs=1e-6)


def test_score_csv_negative_numbers_stay_numbers():
    """Only text is quoted: a number below zero starts with "-" but is no formula."""
    out = io.StringIO()
    writer = CsvWriter(out, ["=factor"])
    writer.write({"path": "-x.jpg", "score": -0.25, "bucket": "very_poor", "status": "ok",
                  "error_type": None, "error": None, "factors": {"=factor": -1.5}})
    header, row = list(csv.reader(io.StringIO(out.getvalue())))
    assert header[3] == "'=factor"  # named by the model file's metadata
    assert row[:4] == ["'-x.jpg", "-0.25", "very_poor", "-1.5"]


def test_eval_predictions_csv_quotes_text_cells_only(tmp_path):
    target = tmp_path / "predictions.csv"
    write_predictions_csv(target, [
        Prediction(path="=1+1.jpg", mos=0.5, mos_raw=-2.0, prediction=0.25),
        Prediction(path="@x.png", mos=0.1, mos_raw=-3.5, prediction=None,
                   error="-bad: not an image"),
        Prediction(path="/data/ok.jpg", mos=0.9, mos_raw=4.0, prediction=0.75),
    ])
    with target.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["path"] for r in rows] == ["'=1+1.jpg", "'@x.png", "/data/ok.jpg"]
    assert [r["error"] for r in rows] == ["", "'-bad: not an image", ""]
    assert [float(r["mos_raw"]) for r in rows] == [-2.0, -3.5, 4.0]
    assert rows[0]["prediction"] == "0.250000" and rows[1]["prediction"] == ""
