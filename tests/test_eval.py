"""`iqa eval` end to end on tiny generated datasets, and its Python building blocks."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from iqa.inference import QualityModel
from iqa.inference.cli import main
from iqa.training.datasets import load_dataset
from iqa.training.evaluate import REPORT_FILES, evaluate_model
from iqa.training.metrics import METRIC_NAMES, evaluate_predictions

N_IMAGES = 12


def _blurred_series(photo: np.ndarray) -> list[tuple[Image.Image, float]]:
    """Crops of a real photo blurred ever more strongly, with a MOS that falls as blur grows."""
    base = Image.fromarray(photo).resize((96, 96), Image.Resampling.LANCZOS)
    series = []
    for i in range(N_IMAGES):
        image = base.rotate(90 * (i % 4)).filter(ImageFilter.GaussianBlur(radius=0.4 * i))
        series.append((image, 1.0 - i / (N_IMAGES - 1)))
    return series


@pytest.fixture(scope="module")
def generic_csv_dataset(tmp_path_factory, photo) -> Path:
    """A generic CSV on a 1-5 scale with custom column names and a train/test column."""
    root = tmp_path_factory.mktemp("generic")
    (root / "img").mkdir()
    with (root / "ratings.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "score", "subset"])
        for i, (image, quality) in enumerate(_blurred_series(photo)):
            image.save(root / "img" / f"{i:02d}.png")
            writer.writerow([f"img/{i:02d}.png", f"{1 + 4 * quality:.3f}", "test" if i % 2 else "train"])
    return root


@pytest.fixture(scope="module")
def livec_dataset(tmp_path_factory, photo) -> Path:
    """The re-encoded LIVE Challenge layout: labels.csv (image, mos, mos_std, original_name),
    MOS on 0-100, plus one listed image whose bytes are not an image."""
    root = tmp_path_factory.mktemp("livec")
    (root / "Images").mkdir()
    rows = []
    for i, (image, quality) in enumerate(_blurred_series(photo)):
        name = f"Images/{i + 10}.jpg"
        image.save(root / name, quality=90)
        rows.append([name, f"{100 * quality:.2f}", "15.0", f"{i + 10}.bmp"])
    (root / "Images" / "broken.jpg").write_bytes(b"this is not a JPEG, it is text")
    rows.append(["Images/broken.jpg", "50.0", "10.0", "broken.bmp"])
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mos", "mos_std", "original_name"])
        writer.writerows(rows)
    return root


def _read_predictions(out: Path) -> list[dict]:
    with (out / REPORT_FILES["predictions"]).open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_eval_generic_csv_end_to_end(generic_csv_dataset, tiny_model_path, tmp_path, capsys):
    out = tmp_path / "report"
    code = main([
        "eval", "--model", str(tiny_model_path), "--dataset", "csv",
        "--root", str(generic_csv_dataset), "--csv-file", "ratings.csv",
        "--csv-path-col", "file", "--csv-mos-col", "score", "--csv-range", "1", "5",
        "--split", "all", "--output-dir", str(out), "--n-boot", "200", "--batch-size", "5",
    ])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for name in REPORT_FILES.values():
        assert (out / name).is_file(), name

    rows = _read_predictions(out)
    assert len(rows) == N_IMAGES
    assert list(rows[0]) == ["path", "mos", "mos_raw", "prediction", "error"]
    for i, row in enumerate(rows):
        assert Path(row["path"]) == generic_csv_dataset / "img" / f"{i:02d}.png"
        # 1-5 scale mapped onto [0, 1].
        assert float(row["mos"]) == pytest.approx((float(row["mos_raw"]) - 1) / 4)
        assert 0.0 <= float(row["prediction"]) <= 1.0
        assert row["error"] == ""

    # The predictions are the model's own scores for those files, in record order.
    model = QualityModel(tiny_model_path)
    direct = [model.score(Path(row["path"])).score for row in rows]
    np.testing.assert_allclose([float(row["prediction"]) for row in rows], direct, atol=1e-6)

    document = json.loads((out / REPORT_FILES["metrics"]).read_text())
    assert document["dataset"] == {
        "name": "csv", "root": str(generic_csv_dataset.resolve()), "split": "all",
        "split_file": None, "count": N_IMAGES, "scored": N_IMAGES, "failed": 0,
    }
    assert document["model"]["path"] == str(tiny_model_path)
    assert document["model"]["version"] == "tiny-test"
    assert document["model"]["factor_names"]  # the tiny model has a factors output
    metrics = document["metrics"]
    assert metrics["n"] == N_IMAGES and metrics["n_failed"] == 0
    assert metrics["bootstrap"]["n_boot"] == 200
    # The stored metrics are exactly what the metrics module computes from the CSV.
    recomputed = evaluate_predictions(
        [float(r["prediction"]) for r in rows], [float(r["mos"]) for r in rows], n_boot=200
    )
    for name in METRIC_NAMES:
        assert metrics[name]["value"] == pytest.approx(recomputed[name]["value"], abs=1e-5)
        assert metrics[name]["ci_low"] <= metrics[name]["value"] <= metrics[name]["ci_high"]

    table = (out / REPORT_FILES["table"]).read_text()
    assert table in captured.out  # the same table goes to stdout
    assert "| SRCC ↑ |" in table and "| RMSE (after logistic) ↓ |" in table

    with Image.open(out / REPORT_FILES["scatter"]) as png:
        assert png.format == "PNG"
        assert png.width > 400 and png.height > 400


def test_eval_livec_layout_reports_a_bad_image(livec_dataset, tiny_model_path, tmp_path, capsys):
    out = tmp_path / "livec-report"
    code = main([
        "eval", "--model", str(tiny_model_path), "--dataset", "livec",
        "--root", str(livec_dataset), "--output-dir", str(out), "--n-boot", "100", "--quiet",
    ])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # LIVE Challenge has no official split: every record is evaluated, and the user is told.
    assert "no test split" in captured.err
    assert f"1 of {N_IMAGES + 1} image(s) could not be scored" in captured.err

    rows = _read_predictions(out)
    assert len(rows) == N_IMAGES + 1
    broken = [row for row in rows if row["error"]]
    assert len(broken) == 1
    assert broken[0]["path"].endswith("broken.jpg")
    assert broken[0]["prediction"] == ""
    assert "ImageDecodeError" in broken[0]["error"]
    assert float(rows[0]["mos_raw"]) == pytest.approx(100.0)
    assert float(rows[0]["mos"]) == pytest.approx(1.0)

    document = json.loads((out / REPORT_FILES["metrics"]).read_text())
    assert document["dataset"]["failed"] == 1 and document["dataset"]["scored"] == N_IMAGES
    assert document["metrics"]["n"] == N_IMAGES
    assert f"1 of {N_IMAGES + 1} images failed" in (out / REPORT_FILES["table"]).read_text()


def test_eval_uses_the_split_column_and_split_files(generic_csv_dataset, tiny_model_path,
                                                    tmp_path, capsys):
    from iqa.training.datasets.splits import save_split_csv

    common = [
        "eval", "--model", str(tiny_model_path), "--dataset", "csv",
        "--root", str(generic_csv_dataset), "--csv-file", "ratings.csv",
        "--csv-path-col", "file", "--csv-mos-col", "score", "--csv-range", "1", "5",
        "--n-boot", "0", "--quiet",
    ]
    out = tmp_path / "by-column"
    assert main([*common, "--csv-split-col", "subset", "--output-dir", str(out)]) == 0
    rows = _read_predictions(out)
    assert [Path(r["path"]).name for r in rows] == [f"{i:02d}.png" for i in range(1, N_IMAGES, 2)]
    document = json.loads((out / REPORT_FILES["metrics"]).read_text())
    assert document["dataset"]["split"] == "test"
    assert document["metrics"]["srcc"]["ci_low"] is None  # --n-boot 0

    # A saved split (as a training run writes it) chooses the held-out images instead.
    records = load_dataset("csv", generic_csv_dataset, labels="ratings.csv", path_column="file",
                           mos_column="score", score_range=(1, 5))
    chosen = {records[i].path for i in (0, 3, 4, 7)}
    labelled = [replace(r, split="test" if r.path in chosen else "train") for r in records]
    split_file = save_split_csv(labelled, tmp_path / "split.csv")
    out = tmp_path / "by-file"
    assert main([*common, "--split-file", str(split_file), "--split", "test",
                 "--output-dir", str(out)]) == 0
    assert {Path(r["path"]) for r in _read_predictions(out)} == chosen
    # A trainer's split file names its held-out rows val: the default takes them, and a
    # split the file lacks is named with the ones it has.
    as_val = [replace(r, split="val" if r.split == "test" else r.split) for r in labelled]
    val_file = save_split_csv(as_val, tmp_path / "val_split.csv")
    out = tmp_path / "by-val-file"
    assert main([*common, "--split-file", str(val_file), "--output-dir", str(out)]) == 0
    assert {Path(r["path"]) for r in _read_predictions(out)} == chosen
    capsys.readouterr()
    assert main([*common, "--split-file", str(val_file), "--split", "test",
                 "--output-dir", str(out)]) == 2
    assert "has no such rows (its splits: train, val)" in capsys.readouterr().err
    capsys.readouterr()
    assert main([*common, "--split-file", str(tmp_path / "typo.csv"),
                 "--output-dir", str(out)]) == 2
    assert "split file not found" in capsys.readouterr().err
    reversed_range = [*common[:-6], "--csv-range", "5", "1", "--output-dir", str(out)]
    assert main(reversed_range) == 2
    assert "--csv-range LOW HIGH" in capsys.readouterr().err


def test_evaluate_model_from_python(generic_csv_dataset, tiny_model_path, tmp_path):
    records = load_dataset("csv", generic_csv_dataset, labels="ratings.csv", path_column="file",
                           mos_column="score", score_range=(1, 5))
    model = QualityModel(tiny_model_path)
    predictions, metrics = evaluate_model(model, records, n_boot=0, progress=False, batch_size=4)
    assert [p.path for p in predictions] == [str(r.path) for r in records]
    assert [p.mos for p in predictions] == [r.mos for r in records]
    expected = evaluate_predictions([p.prediction for p in predictions],
                                    [r.mos for r in records], n_boot=0)
    assert {k: metrics[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset", "csv"], "needs --csv-range"),
        (["--dataset", "livec", "--csv-range", "0", "100"], "only apply to --dataset csv"),
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--dataset", "livec", "--model", "/nonexistent/model.onnx"], "model file not found"),
        (["--dataset", "livec", "--split", "test"], "no record is in split 'test'"),
        (["--dataset", "livec", "--dataset-option", "colour=red"], "has no option(s) colour"),
        (["--dataset", "livec", "--dataset-option", "layout"], "takes KEY=VALUE"),
        (["--dataset", "livec", "--dataset-option", "layout=release"],
         "label file not found"),  # the option reached the loader
        (["--dataset", "livec", "--n-boot", "-5"], "--n-boot must be >= 0, got -5"),
        (["--dataset", "livec", "--seed", "-1"], "--seed must be >= 0"),
        (["--dataset", "livec", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["--dataset", "livec", "--threads", "0"], "--threads must be >= 1"),
        (["--dataset", "livec", "--limit", "0"], "--limit must be >= 1"),
    ],
)
def test_eval_bad_options_fail_cleanly(livec_dataset, tiny_model_path, tmp_path, capsys,
                                       extra, message):
    argv = ["eval", "--root", str(livec_dataset), "--output-dir", str(tmp_path / "x"), *extra]
    if "--model" not in extra:
        argv += ["--model", str(tiny_model_path)]
    assert main(argv) == 2  # a usage error, as in every iqa command
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_eval_refuses_an_unwritable_report_folder_before_scoring(livec_dataset, tiny_model_path,
                                                                  tmp_path, capsys):
    blocker = tmp_path / "labels.csv"
    blocker.write_text("a file where the folder should go\n")
    for out in (blocker, blocker / "inside"):
        code = main(["eval", "--model", str(tiny_model_path), "--dataset", "livec", "--root",
                     str(livec_dataset), "--output-dir", str(out)])
        captured = capsys.readouterr()
        assert code == 2 and "cannot write the report to" in captured.err
        assert "Traceback" not in captured.err and captured.out == ""  # nothing was scored
    assert blocker.read_text() == "a file where the folder should go\n"


def test_eval_with_too_few_scored_images_keeps_the_predictions(tmp_path, tiny_model_path, capsys):
    root = tmp_path / "bad"
    root.mkdir()
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mos"])
        for i in range(4):
            (root / f"{i}.jpg").write_bytes(b"not an image %d" % i)
            writer.writerow([f"{i}.jpg", i])
    out = tmp_path / "out"
    out.mkdir()
    for kind in ("metrics", "table", "scatter"):  # an earlier, successful run's report
        (out / REPORT_FILES[kind]).write_text("stale")
    (out / "notes.txt").write_text("mine")
    code = main(["eval", "--model", str(tiny_model_path), "--dataset", "csv", "--root", str(root),
                 "--csv-range", "0", "10", "--output-dir", str(out), "--quiet"])
    assert code == 1
    assert not (out / REPORT_FILES["table"]).exists() and not (out / REPORT_FILES["scatter"]).exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert "only 0 of 4 images could be scored" in capsys.readouterr().err
    assert len(_read_predictions(out)) == 4
    assert not (out / REPORT_FILES["metrics"]).exists()


def test_eval_runs_without_torch(generic_csv_dataset, tiny_model_path, tmp_path):
    """`iqa eval` needs the eval extra only: it must work where importing torch fails."""
    out = tmp_path / "no-torch"
    script = (
        "import sys\n"
        "class NoTorch:  # any 'import torch' now raises ImportError\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from iqa.inference.cli import main\n"
        f"code = main(['eval', '--model', {str(tiny_model_path)!r}, '--dataset', 'csv',\n"
        f"             '--root', {str(generic_csv_dataset)!r}, '--csv-file', 'ratings.csv',\n"
        "             '--csv-path-col', 'file', '--csv-mos-col', 'score', '--csv-range', '1', '5',\n"
        f"             '--n-boot', '50', '--quiet', '--output-dir', {str(out)!r}])\n"
        "assert 'torch' not in sys.modules\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert (out / REPORT_FILES["scatter"]).is_file()


def test_eval_can_score_the_raw_mos_output(generic_csv_dataset, tiny_model_path, tmp_path,
                                           capsys):
    """--output mos compares v2's raw MOS-scale prediction, the figure MODEL_CARD.md reports;
    a model without that output is refused by name."""
    from iqa.inference import default_model_path

    common = ["eval", "--dataset", "csv", "--root", str(generic_csv_dataset),
              "--csv-file", "ratings.csv", "--csv-path-col", "file", "--csv-mos-col", "score",
              "--csv-range", "1", "5", "--n-boot", "0", "--quiet", "--split", "all"]
    by_output = {}
    for output in ("score", "mos"):
        out = tmp_path / output
        assert main([*common, "--output", output, "--output-dir", str(out)]) == 0
        by_output[output] = [float(r["prediction"]) for r in _read_predictions(out)]
        assert json.loads((out / REPORT_FILES["metrics"]).read_text())["output"] == output
    model = QualityModel(default_model_path())
    images = sorted((generic_csv_dataset / "img").glob("*.png"))
    expected = [model.score(path) for path in images]
    assert by_output["mos"] == pytest.approx([r.mos for r in expected], abs=1e-5)
    assert by_output["score"] == pytest.approx([r.score for r in expected], abs=1e-5)
    assert by_output["mos"] != pytest.approx(by_output["score"], abs=1e-3)  # really two outputs

    capsys.readouterr()
    assert main([*common, "--model", str(tiny_model_path), "--output", "mos",
                 "--output-dir", str(tmp_path / "v1")]) == 2
    assert "has no 'mos' output" in capsys.readouterr().err
