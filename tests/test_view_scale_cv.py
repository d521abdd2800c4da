"""scripts/view_scale_cv.py: held-out ranking under other view sizes and a pixel budget."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image
from script_loader import load_script

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from test_train_fakes import (  # noqa: E402, F401  (fixtures)
    fake_root,
    feature_cache_dir,
    levels_checkpoint,
)


@pytest.fixture(scope="module")
def view_scale_cv():
    return load_script("view_scale_cv")


def test_centre_crop_keeps_the_largest_centred_landscape(view_scale_cv):
    square = Image.new("RGB", (500, 500))
    assert view_scale_cv.centre_crop(square, (4, 3)).size == (500, 375)
    assert view_scale_cv.centre_crop(square, (16, 9)).size == (500, 281)
    wide = Image.new("RGB", (900, 300))  # wider than 3:2 already: narrowed, full height
    assert view_scale_cv.centre_crop(wide, (3, 2)).size == (450, 300)


def test_report_scores_the_held_out_photos_under_each_view(view_scale_cv, levels_checkpoint,  # noqa: F811
                                                           fake_root, tmp_path, capsys):  # noqa: F811
    from scipy import stats

    from iqa.training.checkpoint import load_checkpoint
    from iqa.training.export import model_from_checkpoint

    run = levels_checkpoint.parent
    out = tmp_path / "report.json"
    # A budget of one 32 x 32 cell binds for every crop, so the budgeted views must differ.
    assert view_scale_cv.main(["score", str(run), "--root", str(fake_root / "livec"),
                               "--pixel-budget", "1024", "--scales", "32", "64",
                               "--aspects", "4:3", "--resamples", "50",
                               "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "| 4:3 crop, budget |" in capsys.readouterr().out
    fold = report["folds"][0]
    views = fold["views"]
    assert list(views) == ["shorter 64", "shorter 32", "4:3 crop", "4:3 crop, budget"]
    held_out = view_scale_cv.held_out(run, fake_root / "livec", "livec")
    assert fold["policy"]["checkpoint_pixel_budget"] is None
    assert fold["photos"] == len(held_out) and fold["policy"]["shorter_side"] == 64

    # The fake photos are 80 x 64: 4:3 crops of 80 x 60, seen by the run's own policy and
    # under the budget.
    model = model_from_checkpoint(load_checkpoint(run / "last.pt"))
    prep = model.preprocessing
    assert views["4:3 crop"]["view"] == "{}x{}".format(*prep.target_size(80, 60))
    assert views["4:3 crop, budget"]["view"] == "32x32"

    # The figures are the network's own ranking of those photos.
    images = []
    for record in held_out:
        with Image.open(record.path) as image:
            images.append(image.convert("RGB"))
    mos = np.asarray([r.mos for r in held_out])
    pred, _ = view_scale_cv.predict(model, images, prep)
    assert views["shorter 64"]["srcc"] == pytest.approx(stats.spearmanr(pred, mos)[0], abs=1e-4)
    small, _ = view_scale_cv.predict(model, images, dataclasses.replace(prep, shorter_side=32))
    delta = stats.spearmanr(small, mos)[0] - stats.spearmanr(pred, mos)[0]
    assert views["shorter 32"]["vs_shorter 64"]["delta"] == pytest.approx(delta, abs=1e-4)
    assert report["mean"]["shorter 32"]["srcc"] == views["shorter 32"]["srcc"]
    assert views["shorter 32"]["predictions"] == pytest.approx(small, abs=1e-6)

    # compare: one report against itself is a difference of zero; two views of it are the
    # difference already computed inside the report.
    cmp_out = tmp_path / "compare.json"
    assert view_scale_cv.main(["compare", str(out), str(out), "--pair", "4:3 crop=4:3 crop",
                               "--pair", "shorter 32=shorter 64", "--resamples", "0",
                               "--out", str(cmp_out), "--plot", str(tmp_path / "v.png")]) == 0
    with Image.open(tmp_path / "v.png") as plot:
        assert plot.size[0] > 1000
    result = json.loads(cmp_out.read_text())
    fold_name = fold["fold"]
    assert result["4:3 crop = 4:3 crop"]["folds"][fold_name]["delta"] == 0
    assert result["shorter 32 = shorter 64"]["mean_delta"] == pytest.approx(delta, abs=1e-4)


def test_srcc_difference_interval_is_paired_and_seeded(view_scale_cv):
    rng = np.random.default_rng(0)
    mos = rng.uniform(0, 1, 60)
    better, worse = mos + rng.normal(0, 0.1, 60), mos + rng.normal(0, 0.4, 60)
    first = view_scale_cv.srcc_difference(better, worse, mos, 200, seed=3)
    assert first == view_scale_cv.srcc_difference(better, worse, mos, 200, seed=3)
    low, high = first["ci"]
    assert 0 < low <= first["delta"] <= high  # the far less noisy prediction ranks better
    assert view_scale_cv.srcc_difference(better, worse, mos, 0, seed=3)["ci"] is None


def test_compare_refuses_reports_of_other_photos(view_scale_cv, tmp_path, capsys):
    def report(names):
        view = {"view": "448x448", "predictions": [0.1, 0.2, 0.3, 0.4]}
        return {"folds": [{"fold": "fold2", "names": names, "mos": [0.1, 0.3, 0.2, 0.4],
                           "views": {"shorter 448": view}}]}

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(report(["1.jpg", "2.jpg", "3.jpg", "4.jpg"])))
    b.write_text(json.dumps(report(["1.jpg", "2.jpg", "3.jpg", "5.jpg"])))
    assert view_scale_cv.main(["compare", str(a), str(b), "--pair",
                               "shorter 448=shorter 448"]) == 1
    assert "scored different photos" in capsys.readouterr().err
    assert view_scale_cv.main(["compare", str(a), str(a), "--pair", "shorter 448=4:3 crop"]) == 1
    assert "no view '4:3 crop'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        view_scale_cv.main(["compare", str(a), str(a), "--pair", "no separator"])
    assert exc.value.code == 2 and "NEW_VIEW=OLD_VIEW" in capsys.readouterr().err


def test_bad_arguments_exit_2(view_scale_cv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        view_scale_cv.main(["score", str(tmp_path), "--root", str(tmp_path)])
    assert exc.value.code == 2 and "has no last.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        view_scale_cv.main(["score", str(tmp_path), "--root", str(tmp_path),
                            "--pixel-budget", "10"])
    assert exc.value.code == 2 and "pixel_budget must be at least" in capsys.readouterr().err
