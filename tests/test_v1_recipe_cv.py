"""scripts/v1_recipe_cv.py: fold splits from the committed fold file, and a CV summary that
reads the last epoch, never the best one (which was chosen on the held-out fold)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from script_loader import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cv():
    return load_script("v1_recipe_cv")


def test_each_fold_holds_out_exactly_its_images(cv, tmp_path):
    folds = {"a.jpg": 0, "b.jpg": 1, "c.jpg": 0, "d.jpg": 2}
    paths = cv.write_splits(folds, tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "fold0/split.csv", "fold1/split.csv", "fold2/split.csv"]
    with paths[0].open() as f:
        rows = {r["path"]: r["split"] for r in csv.DictReader(f)}
    assert rows == {"a.jpg": "val", "b.jpg": "train", "c.jpg": "val", "d.jpg": "train"}


def test_the_committed_folds_cover_livec_once(cv):
    folds = cv.read_folds(REPO / cv.FOLDS)
    assert len(folds) == 871 and set(folds.values()) == {0, 1, 2, 3, 4}


def _metrics(run: Path, val_srcc: list[float], complete: bool = True) -> None:
    run.mkdir(parents=True)
    if complete:
        (run / "summary.json").write_text("{}")  # what the trainer writes when it ends
    with (run / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["kind", "epoch", "step", "val_n", "val_srcc", "val_plcc"])
        writer.writeheader()
        for epoch, srcc in enumerate(val_srcc):
            writer.writerow({"kind": "train", "epoch": epoch, "step": epoch * 10 + 5})
            writer.writerow({"kind": "val", "epoch": epoch, "step": epoch * 10 + 10,
                             "val_n": 170, "val_srcc": srcc, "val_plcc": srcc + 0.02})


def test_summary_reads_the_last_epoch_not_the_best(cv, tmp_path):
    _metrics(tmp_path / "fold0" / "run", [0.70, 0.85, 0.80])  # best 0.85 at epoch 1
    _metrics(tmp_path / "fold1" / "run", [0.60, 0.74])
    _metrics(tmp_path / "fold3" / "run", [0.5], complete=False)  # still training
    summary = cv.summarise(tmp_path, [0, 1, 2, 3])  # fold 2 has not run: left out
    assert summary["folds"][0] == {"epoch": 2, "srcc": 0.80, "plcc": pytest.approx(0.82),
                                   "n": 170}
    assert sorted(summary["folds"]) == [0, 1] and summary["running"] == [3]
    assert summary["srcc"]["mean"] == pytest.approx(0.77)
    assert summary["srcc"]["std"] == pytest.approx(0.0424264, abs=1e-6)  # stdev(0.80, 0.74)


def test_compare_pairs_the_folds_both_recipes_finished(cv, tmp_path, capsys):
    for k, (base, ours) in enumerate([(0.80, 0.82), (0.70, 0.73), (0.75, 0.74), (0.6, 0.9)]):
        _metrics(tmp_path / "base" / f"fold{k}" / "run", [0.1, base])
        _metrics(tmp_path / "ours" / f"fold{k}" / "run", [0.1, ours], complete=k != 3)
    report = cv.compare(tmp_path / "ours", tmp_path / "base", [0, 1, 2, 3])
    srcc = report["srcc"]
    assert report["folds"] == [0, 1, 2]  # fold 3 is still running for `ours`
    assert [srcc["per_fold"][k]["difference"] for k in (0, 1, 2)] == pytest.approx(
        [0.02, 0.03, -0.01])
    assert srcc["mean"] == pytest.approx(0.04 / 3) and srcc["better_on"] == 2
    from scipy import stats

    half = stats.t.ppf(0.975, 2) * srcc["std"] / 3 ** 0.5
    assert srcc["ci95"] == pytest.approx([0.04 / 3 - half, 0.04 / 3 + half])
    assert cv.main(["compare", "--out", str(tmp_path / "ours"),
                    "--baseline", str(tmp_path / "base")]) == 0
    assert '"better_on": 2' in capsys.readouterr().out


def test_train_runs_the_chosen_recipe_on_each_fold_and_resumes(cv, tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(cv.subprocess, "run", lambda command, check: commands.append(command))
    folds = tmp_path / "folds.csv"
    folds.write_text("image,fold\na.jpg,0\nb.jpg,1\n")
    (tmp_path / "out" / "fold1" / "run").mkdir(parents=True)
    (tmp_path / "out" / "fold1" / "run" / "last.pt").write_bytes(b"")  # a killed run
    assert cv.main(["train", "--fold-file", str(folds), "--out", str(tmp_path / "out"),
                    "--config", "configs/livec_levels.yaml", "--", "--set", "seed=3"]) == 0
    fresh, resumed = commands
    assert fresh[:3] == ["iqa", "train", "configs/livec_levels.yaml"]
    assert f"data.split_csv={(tmp_path / 'out' / 'fold0' / 'split.csv').resolve()}" in fresh
    assert fresh[-2:] == ["--set", "seed=3"]
    assert resumed == ["iqa", "train", "--resume", str(tmp_path / "out" / "fold1" / "run")]


def test_committed_summaries_stand_in_for_runs_of_another_machine(cv, tmp_path, capsys):
    # Folds 0 and 1 ran on an earlier machine; only their committed summary is left.
    _metrics(tmp_path / "base" / "fold0" / "run", [0.1, 0.80])
    _metrics(tmp_path / "base" / "fold1" / "run", [0.1, 0.70])
    _metrics(tmp_path / "base" / "fold2" / "run", [0.1, 0.75])
    assert cv.main(["summary", "--out", str(tmp_path / "base")]) == 0
    baseline = tmp_path / "baseline.json"
    (tmp_path / "base" / "summary.json").rename(baseline)
    recorded = tmp_path / "recorded.json"
    recorded.write_text('{"folds": {"0": {"epoch": 1, "srcc": 0.82, "plcc": 0.84, "n": 170},'
                        ' "1": {"epoch": 1, "srcc": 0.73, "plcc": 0.75, "n": 170},'
                        ' "2": {"epoch": 1, "srcc": 0.10, "plcc": 0.10, "n": 170}}}')
    _metrics(tmp_path / "ours" / "fold2" / "run", [0.1, 0.74])  # finished here: it wins
    _metrics(tmp_path / "ours" / "fold1" / "run", [0.2], complete=False)  # a killed copy

    summary = cv.summarise(tmp_path / "ours", [0, 1, 2, 3], recorded)
    assert {k: v["srcc"] for k, v in summary["folds"].items()} == {0: 0.82, 1: 0.73, 2: 0.74}
    assert "running" not in summary  # fold 1's partial run is covered by the record
    report = cv.compare(tmp_path / "ours", baseline, [0, 1, 2, 3], recorded)
    assert report["folds"] == [0, 1, 2]
    assert [report["srcc"]["per_fold"][k]["difference"] for k in (0, 1, 2)] == pytest.approx(
        [0.02, 0.03, -0.01])
    assert cv.main(["compare", "--out", str(tmp_path / "ours"), "--recorded", str(recorded),
                    "--baseline", str(baseline)]) == 0
    assert '"better_on": 2' in capsys.readouterr().out


def test_a_file_that_is_not_a_summary_is_refused_by_name(cv, tmp_path):
    bad = tmp_path / "notes.json"
    bad.write_text('{"recipe": "x"}')
    with pytest.raises(SystemExit, match="notes.json: not a CV summary"):
        cv.summarise(tmp_path, [0], bad)
