"""Absolute page-scale levels for v1-style synthetic groups (``loss.level_weight``): the
targets, the loss term and a real training run that uses them."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from test_train_fakes import (  # noqa: E402, F401  (fixtures)
    CONFIGS,
    fake_pristine,
    fake_root,
    feature_cache_dir,
    tiny_overrides,
    train_tiny,
)

from iqa.training.data import COMPOSE, build_synthetic_pool, list_photos  # noqa: E402
from iqa.training.levels import (  # noqa: E402
    CLEAN_TARGET,
    LEVELS,
    level_to_mos_prior,
    severity_for,
    target_for_severity,
)
from iqa.training.losses import LossWeights, training_loss  # noqa: E402


@pytest.mark.parametrize("name", sorted(LEVELS))
def test_a_severity_maps_back_to_the_strength_it_came_from(name):
    # severity_for turns a native strength into the library's severity for a photo;
    # target_for_severity must undo it, so both paths give the table's target.
    level = LEVELS[name]
    photo = np.zeros((512, 768, 3), np.uint8)
    checked = 0
    for strength in level.strengths:
        try:
            severity = severity_for(level, strength, photo)
        except ValueError:
            continue  # beyond the library's range at this size
        assert target_for_severity(name, severity, 512) == pytest.approx(level.target(strength))
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("name", sorted(LEVELS))
def test_targets_fall_with_severity_and_scaled_ones_with_photo_size(name):
    level = LEVELS[name]
    severities = np.linspace(0.0, 1.0, 21)
    small = [target_for_severity(name, s, 512) for s in severities]
    assert all(a >= b for a, b in zip(small, small[1:], strict=False))
    assert small[-1] < small[0] <= CLEAN_TARGET
    # A blur applied to the 384 px thumbnail of a 3000 px photo spans 6x more of its own
    # pixels than on a 512 px photo; exposure and JPEG do not depend on size.
    large = target_for_severity(name, 0.3, 3000)
    if level.scaled:
        assert large < target_for_severity(name, 0.3, 512)
    else:
        assert large == target_for_severity(name, 0.3, 512)


def test_originals_are_clean_and_unanchored_distortions_have_no_level():
    assert target_for_severity(None, 0.0, 512) == CLEAN_TARGET
    assert target_for_severity("haze", 0.5, 512) is None
    assert target_for_severity("background_blur", 1.0, 512) < target_for_severity(
        "background_blur", 0.5, 512) < CLEAN_TARGET


def test_level_prior_places_clean_at_the_high_quantile_of_training_mos():
    mos = np.linspace(0.1, 0.9, 101)
    a, b = level_to_mos_prior(mos)
    assert a == pytest.approx(np.quantile(mos, 0.02))
    assert a + b * CLEAN_TARGET == pytest.approx(np.quantile(mos, 0.95))


def test_pool_groups_carry_a_target_per_member(tmp_path):
    root = fake_pristine(tmp_path / "pristine", count=3)
    syn = {"distortions": ["gaussian_blur", "underexposure"], "severity_weak": [0.15, 0.45],
           "severity_gap": [0.2, 0.5], "groups_per_photo": 3, "composed_per_photo": 1,
           "compose_max_ops": 3, "seed": 7}
    pool = build_synthetic_pool(list_photos(root, subsets=["kodak24", "wikipedia"]), root, syn)
    for group in pool:
        assert len(group.targets) == len(group.members) and group.targets[0] == CLEAN_TARGET
        if group.members[1].distortion == COMPOSE:
            assert group.targets[1] is None
        else:
            # The fake photos are 72 px high: their own pixels set the blur's strength.
            weak, strong = group.members[1:]
            assert group.targets[1] == target_for_severity(weak.distortion, weak.severity, 72)
            assert CLEAN_TARGET > group.targets[1] >= group.targets[2]


def _batch(level_target):
    n = len(level_target)
    return {"auth_index": torch.zeros(0, dtype=torch.long), "mos": torch.zeros(0),
            "syn_index": torch.arange(n), "factor_target": torch.zeros(n, 8),
            "pair_better": torch.zeros(0, dtype=torch.long),
            "pair_worse": torch.zeros(0, dtype=torch.long), "pair_gap": torch.zeros(0),
            "original_index": torch.zeros(0, dtype=torch.long),
            "level_target": torch.tensor(level_target, dtype=torch.float32)}


def test_level_loss_regresses_known_levels_through_the_prior():
    scores = torch.tensor([0.70, 0.30, 0.55])
    batch = _batch([0.92, 0.40, math.nan])  # the third copy has no level
    w = LossWeights(factor_weight=0.0, level_weight=2.0, level_prior=(0.1, 0.8), mos="mse")
    _, parts = training_loss(scores, torch.zeros(3, 8), batch, w)
    expected = ((0.70 - (0.1 + 0.8 * 0.92)) ** 2 + (0.30 - (0.1 + 0.8 * 0.40)) ** 2) / 2
    assert parts["level"] == pytest.approx(2.0 * expected, rel=1e-5)
    _, parts = training_loss(scores, torch.zeros(3, 8), batch,
                             LossWeights(factor_weight=0.0))  # v1: no level term
    assert "level" not in parts
    with pytest.raises(ValueError, match="level_prior"):
        training_loss(scores, torch.zeros(3, 8), batch, LossWeights(level_weight=1.0))


def test_level_weights_multiply_the_named_distortions_only():
    from iqa.training.levels import LEVEL_DISTORTIONS

    scores = torch.tensor([0.70, 0.30, 0.55])
    batch = _batch([0.92, 0.40, 0.50])
    # An original (-1), an underexposed copy and a blurred one.
    batch["level_distortion"] = torch.tensor(
        [-1, LEVEL_DISTORTIONS.index("underexposure"), LEVEL_DISTORTIONS.index("gaussian_blur")])
    base = dict(factor_weight=0.0, level_weight=2.0, level_prior=(0.1, 0.8), mos="mse")
    errors = [(0.70 - (0.1 + 0.8 * 0.92)) ** 2, (0.30 - (0.1 + 0.8 * 0.40)) ** 2,
              (0.55 - (0.1 + 0.8 * 0.50)) ** 2]
    _, plain = training_loss(scores, torch.zeros(3, 8), batch, LossWeights(**base))
    assert plain["level"] == pytest.approx(2.0 * sum(errors) / 3, rel=1e-5)
    _, weighted = training_loss(scores, torch.zeros(3, 8), batch,
                                LossWeights(**base, level_weights={"underexposure": 4.0}))
    assert weighted["level"] == pytest.approx(
        2.0 * (errors[0] + 4.0 * errors[1] + errors[2]) / 3, rel=1e-5)


def test_level_weights_name_known_distortions():
    from iqa.training.config import ConfigError, build_config

    cfg = build_config(str(CONFIGS / "livec_levels.yaml"),
                       overrides=["loss.level_weights={underexposure: 3}"])
    assert cfg["loss"]["level_weights"] == {"underexposure": 3}
    with pytest.raises(ConfigError, match="unknown distortion"):
        build_config(str(CONFIGS / "livec_levels.yaml"),
                     overrides=["loss.level_weights={underexposed: 3}"])


def test_training_with_levels_logs_the_level_term(fake_root, feature_cache_dir, tmp_path,  # noqa: F811
                                                  capsys):
    run_dir = tmp_path / "run"
    sets = [*tiny_overrides(feature_cache_dir, steps=3), "loss.level_weight=1.0",
            "synthetic.distortions=[gaussian_blur]", "loss.level_weights={gaussian_blur: 2}"]
    assert train_tiny("livec_levels", run_dir, fake_root, sets) == 0
    captured = capsys.readouterr()
    assert "levels: page-scale targets -> MOS" in captured.out + captured.err
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["kind"] == "train"]
    # Two synthetic groups over three steps: the steps that hold one log its level term.
    assert len(rows) == 3
    assert [r["level"] != "" for r in rows] == [r["syn_rank"] != "" for r in rows]
    assert any(r["level"] for r in rows) and all(float(r["level"]) > 0 for r in rows if r["level"])

    # scripts/level_residuals.py reads the same run back: every blurred copy of the pool
    # gets a residual against its target on the run's MOS prior.
    import json

    from script_loader import load_script

    script = load_script("level_residuals")
    out = tmp_path / "residuals.json"
    assert script.main([str(run_dir / "last.pt"), "--every", "1", "--json", str(out),
                        "--threads", "1"]) == 0
    table = json.loads(out.read_text())["by_distortion"]
    assert set(table) == {"gaussian_blur"} and table["gaussian_blur"]["n"] >= 2
    assert table["gaussian_blur"]["mean_abs_residual"] >= abs(table["gaussian_blur"]["mean_residual"])
