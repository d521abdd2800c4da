"""scripts/paired_eval.py: two `iqa eval` prediction files compared photo by photo."""

from __future__ import annotations

import csv

import numpy as np
from script_loader import load_script

paired_eval = load_script("paired_eval")


def write_predictions(path, mos, prediction, errors=()):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "mos", "mos_raw", "prediction", "error"])
        for i, (m, p) in enumerate(zip(mos, prediction, strict=True)):
            failed = i in errors
            writer.writerow([f"/photos/{i}.jpg", m, 100 * m, "" if failed else p,
                             "unreadable" if failed else ""])
    return path


def test_a_better_ranking_gets_an_interval_above_zero(tmp_path, capsys):
    rng = np.random.default_rng(1)
    mos = rng.uniform(0.1, 0.9, 120)
    noisy = mos + rng.normal(0, 0.15, 120)
    exact = 0.5 * mos + 0.1  # the same order as the MOS
    a = write_predictions(tmp_path / "a.csv", mos, noisy, errors={3})
    b = write_predictions(tmp_path / "b.csv", mos, exact, errors={3})
    out = tmp_path / "report.json"
    assert paired_eval.main([str(a), str(b), "--out", str(out)]) == 0
    report = paired_eval.compare(paired_eval.read_predictions(a), paired_eval.read_predictions(b))
    assert report["photos"] == 119  # the failed photo is left out of both
    assert report["b"]["srcc"] == 1.0 and report["a"]["srcc"] < 0.9
    low, high = report["srcc_b_minus_a"]["ci95"]
    assert 0 < low <= report["b"]["srcc"] - report["a"]["srcc"] <= high
    assert out.is_file() and "B - A: SRCC +" in capsys.readouterr().out


def test_files_of_different_photos_are_refused(tmp_path, capsys):
    mos = np.linspace(0.1, 0.9, 10)
    a = write_predictions(tmp_path / "a.csv", mos, mos)
    b = write_predictions(tmp_path / "b.csv", mos[:9], mos[:9])
    assert paired_eval.main([str(a), str(b)]) == 2
    assert "different photos (1 in one only)" in capsys.readouterr().err
    assert paired_eval.main([str(a), str(tmp_path / "missing.csv")]) == 2
