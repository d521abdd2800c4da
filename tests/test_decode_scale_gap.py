"""scripts/decode_scale_gap.py: a JPEG's score as a file against the fully decoded photo."""

from __future__ import annotations

import json

from PIL import Image
from script_loader import load_script


def test_the_gap_is_measured_against_the_full_decode(tmp_path, photo, capsys):
    script = load_script("decode_scale_gap")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(photo).resize((1200, 900)).save(photos / "a.png")
    Image.fromarray(photo[:, ::-1]).resize((900, 1200)).save(photos / "b.png")  # portrait
    (photos / "notes.txt").write_text("not a photo")
    out = tmp_path / "gap.json"
    assert script.main([str(photos), "--per-setting", "2", "--gaps", "1", "4", "--settings",
                        "1024x768 crop", "long 2048", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["settings"]) == ["1024x768 crop", "long 2048"]
    crops = report["settings"]["1024x768 crop"]
    assert crops["photos"] == 2 and crops["sizes"] == ["1024x768"]  # the portrait turned
    for row in report["settings"].values():
        # A gap of 4 decodes these sizes in full for the shipped model's view: the
        # reference's own pixels, so exactly its score.
        assert row["by_gap"]["4"] == {"n": 2, "mean": 0.0, "min": 0.0, "max": 0.0}
    # A gap of 1 decodes the 1024x768 crops at 1/2, down to the view (iqa <= 0.3.1), and
    # its pixels, filtered unlike training's resize, score lower.
    assert crops["by_gap"]["1"]["max"] < 0
    detail = crops["view_detail_change_by_gap"]
    assert detail["4"]["max"] == 0 and detail["1"]["mean"] != 0
    assert crops["score_as_file_minus_full_decode"]["n"] == 2
    assert report["shipped_gap"] == 3 and "as a file" in capsys.readouterr().out


def test_a_missing_or_empty_folder_is_named(tmp_path, capsys):
    script = load_script("decode_scale_gap")
    assert script.main([str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert script.main([str(tmp_path)]) == 2
    assert "no photos in" in capsys.readouterr().err
