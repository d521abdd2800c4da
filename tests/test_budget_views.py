"""scripts/budget_views.py: which photos a serving pixel budget shows differently."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from script_loader import load_script


@pytest.fixture(scope="module")
def budget_views():
    return load_script("budget_views")


def test_only_photos_over_the_budget_change(budget_views, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name, (w, h) in {"square.jpg": (500, 500), "kodak.png": (768, 512)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.jpg").write_text("not a photo")
    assert budget_views.main([str(tmp_path), "--shorter-side", "448",
                              "--pixel-budget", "196608", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["photos"] == 2 and report["unreadable"] == ["notes.jpg"]
    # 500 x 500 keeps its 448 x 448 view; 768 x 512 drops from 672 x 448 to 544 x 352.
    assert report["changed_photos"] == [
        {"name": "kodak.png", "size": [768, 512], "plain": [672, 448], "budget": [544, 352]}]


def test_bad_arguments_exit_2(budget_views, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        budget_views.main([str(tmp_path / "missing"), "--shorter-side", "448",
                           "--pixel-budget", "196608"])
    assert exc.value.code == 2 and "not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        budget_views.main([str(tmp_path), "--shorter-side", "448", "--pixel-budget", "10"])
    assert exc.value.code == 2 and "pixel_budget must be at least" in capsys.readouterr().err
