"""scripts/stage_ablation.py: ridge on the frozen Lite0's pooled stages, by fold."""

from __future__ import annotations

import numpy as np
import pytest
from script_loader import load_script

pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("sklearn")

from test_train_fakes import fake_livec  # noqa: E402


@pytest.fixture(scope="module")
def stage_ablation():
    return load_script("stage_ablation")


def test_every_stage_is_pooled_by_mean_and_std(stage_ablation, tmp_path):
    root = fake_livec(tmp_path / "livec", count=3)
    x, mos, names, widths = stage_ablation.stage_features(root, shorter_side=64)
    # Lite0: blocks 0-6 end in 16, 24, 40, 80, 112, 192, 320 channels, the head conv in 1280.
    assert widths == [2 * c for c in (16, 24, 40, 80, 112, 192, 320, 1280)]
    assert x.shape == (3, sum(widths)) and np.isfinite(x).all()
    assert names == ["0.png", "1.png", "2.png"] and ((0 <= mos) & (mos <= 1)).all()
    # Each stage's std half is a real spread, not a copy of its mean half.
    assert not np.allclose(x[:, :16], x[:, 16:32])


def test_ridge_ranks_held_out_folds_from_informative_columns_only(stage_ablation):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 6))
    y = x[:, 0] + 0.1 * rng.standard_normal(200)
    folds = np.arange(200) % 4
    assert stage_ablation.fold_srcc(x, y, folds).min() > 0.9
    assert abs(stage_ablation.fold_srcc(x[:, 1:], y, folds).mean()) < 0.3
