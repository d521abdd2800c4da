"""IQA metrics against scipy, hand computations and known logistic curves."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from iqa.training.metrics import (
    METRIC_NAMES,
    LogisticFit,
    evaluate_predictions,
    fit_logistic,
    logistic_4pl,
    logistic_5pl,
    metrics_to_markdown,
    point_estimates,
)


def _noisy_pairs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Predictions with a curved, noisy relation to MOS, as real models have."""
    rng = np.random.default_rng(seed)
    pred = rng.uniform(0, 1, n)
    mos = np.clip(pred**2 + rng.normal(0, 0.08, n), 0, 1)
    return pred, mos


def test_point_estimates_match_scipy():
    pred, mos = _noisy_pairs(80)
    result = evaluate_predictions(pred, mos, n_boot=0)
    assert result["n"] == 80
    assert result["srcc"]["value"] == pytest.approx(stats.spearmanr(pred, mos).statistic)
    assert result["krcc"]["value"] == pytest.approx(stats.kendalltau(pred, mos).statistic)
    assert result["plcc"]["value"] == pytest.approx(stats.pearsonr(pred, mos).statistic)
    assert result["rmse"]["value"] == pytest.approx(np.sqrt(np.mean((pred - mos) ** 2)))
    assert all(result[name]["ci_low"] is None for name in METRIC_NAMES)


def test_ties_are_handled_like_scipy():
    pred = np.array([0.1, 0.2, 0.2, 0.4, 0.4, 0.4, 0.7, 0.9])
    mos = np.array([0.2, 0.1, 0.3, 0.3, 0.5, 0.4, 0.8, 0.8])
    result = evaluate_predictions(pred, mos, n_boot=0)
    assert result["srcc"]["value"] == pytest.approx(stats.spearmanr(pred, mos).statistic)
    assert result["krcc"]["value"] == pytest.approx(stats.kendalltau(pred, mos).statistic)


def test_hand_computed_small_example():
    # x - mean = [-2,-1,0,1,2], y - mean = [-2.2,-1.2,-0.2,0.8,2.8]:
    # sum of products 12, sums of squares 10 and 14.8, so PLCC = 12 / sqrt(148).
    # Only the last pair differs, by 1, so RMSE = sqrt(1 / 5). Ranks agree: SRCC = KRCC = 1.
    result = evaluate_predictions([1, 2, 3, 4, 5], [1, 2, 3, 4, 6], n_boot=0)
    assert result["plcc"]["value"] == pytest.approx(12 / math.sqrt(148))
    assert result["rmse"]["value"] == pytest.approx(math.sqrt(0.2))
    assert result["srcc"]["value"] == pytest.approx(1.0)
    assert result["krcc"]["value"] == pytest.approx(1.0)
    # A monotonic mapping can only bring the points closer to MOS than the identity does.
    assert result["rmse_logistic"]["value"] < result["rmse"]["value"]
    assert result["plcc_logistic"]["value"] > result["plcc"]["value"]


def test_logistic_functions_by_hand():
    b1, b2, b3, b4 = 0.9, 0.1, 0.5, 0.2
    # At the midpoint the sigmoid is 1/2; at b3 + b4*ln(3) it is 1/(1 + 1/3) = 3/4.
    assert logistic_4pl(b3, b1, b2, b3, b4) == pytest.approx((b1 + b2) / 2)
    assert logistic_4pl(b3 + b4 * math.log(3), b1, b2, b3, b4) == pytest.approx(b2 + 0.75 * (b1 - b2))
    assert logistic_4pl(1e6, b1, b2, b3, b4) == pytest.approx(b1)
    assert logistic_4pl(-1e6, b1, b2, b3, b4) == pytest.approx(b2)
    # The scale enters as |b4|.
    assert logistic_4pl(0.7, b1, b2, b3, -b4) == pytest.approx(logistic_4pl(0.7, b1, b2, b3, b4))

    c1, c2, c3, c4, c5 = 2.0, 3.0, 0.4, 0.5, 0.1
    # At x = b3 the logistic term vanishes; far right it is b1 * (0.5 - 0) = b1 / 2.
    assert logistic_5pl(c3, c1, c2, c3, c4, c5) == pytest.approx(c4 * c3 + c5)
    assert logistic_5pl(50.0, c1, c2, c3, c4, c5) == pytest.approx(c1 / 2 + c4 * 50 + c5)


def test_4pl_fit_recovers_a_known_curve():
    params = (0.95, 0.05, 0.55, 0.08)
    pred = np.linspace(0.1, 0.95, 40)
    mos = logistic_4pl(pred, *params)
    fit = fit_logistic(pred, mos, "4pl")
    assert fit.converged and fit.kind == "4pl"
    np.testing.assert_allclose(fit(pred), mos, atol=1e-6)
    b1, b2, b3, b4 = fit.params
    assert (b1, b2, b3, abs(b4)) == pytest.approx(params, abs=1e-4)

    result = evaluate_predictions(pred, mos, n_boot=0)
    assert result["plcc_logistic"]["value"] == pytest.approx(1.0, abs=1e-9)
    assert result["rmse_logistic"]["value"] == pytest.approx(0.0, abs=1e-6)
    # The raw values see the curvature: the model is right in rank, wrong in shape.
    assert result["plcc"]["value"] < 0.99
    assert result["srcc"]["value"] == pytest.approx(1.0)


def test_4pl_fit_handles_a_decreasing_relation():
    # A model that outputs distortion (higher = worse) against a higher-is-better MOS.
    pred = np.linspace(0, 1, 30)
    mos = logistic_4pl(pred, 0.1, 0.9, 0.4, 0.1)
    result = evaluate_predictions(pred, mos, n_boot=0)
    assert result["logistic"]["converged"]
    assert result["srcc"]["value"] == pytest.approx(-1.0)
    assert result["plcc_logistic"]["value"] == pytest.approx(1.0, abs=1e-9)
    assert result["rmse_logistic"]["value"] == pytest.approx(0.0, abs=1e-6)


def test_5pl_fit_recovers_a_known_curve():
    params = (0.8, 12.0, 0.5, 0.1, 0.45)
    pred = np.linspace(0.0, 1.0, 50)
    mos = logistic_5pl(pred, *params)
    result = evaluate_predictions(pred, mos, logistic="5pl", n_boot=0)
    assert result["logistic"]["kind"] == "5pl" and result["logistic"]["converged"]
    fit = LogisticFit.from_dict(result["logistic"])
    np.testing.assert_allclose(fit(pred), mos, atol=1e-6)
    assert result["rmse_logistic"]["value"] == pytest.approx(0.0, abs=1e-6)


def test_failed_fit_falls_back_to_a_flagged_linear_fit():
    pred, mos = _noisy_pairs(30)
    fit = fit_logistic(pred, mos, "4pl", maxfev=1)
    assert not fit.converged
    assert fit.kind == "linear"
    assert "4pl fit failed" in fit.message
    np.testing.assert_allclose(fit.params, np.polyfit(pred, mos, 1))

    # Five parameters cannot be fitted to four points: flagged, not raised.
    result = evaluate_predictions([0.1, 0.4, 0.5, 0.9], [0.2, 0.3, 0.7, 0.8], logistic="5pl")
    assert result["logistic"]["converged"] is False
    assert result["logistic"]["kind"] == "linear"
    linear = np.polyval(np.polyfit([0.1, 0.4, 0.5, 0.9], [0.2, 0.3, 0.7, 0.8], 1),
                        [0.1, 0.4, 0.5, 0.9])
    assert result["rmse_logistic"]["value"] == pytest.approx(
        np.sqrt(np.mean((linear - [0.2, 0.3, 0.7, 0.8]) ** 2)))
    assert "FAILED" in metrics_to_markdown(result)


def test_unknown_logistic_is_rejected():
    with pytest.raises(ValueError, match="unknown logistic"):
        evaluate_predictions([0.1, 0.5, 0.9], [0.2, 0.4, 0.9], logistic="3pl")


def test_confidence_intervals_contain_the_estimate_and_narrow_with_n():
    small = evaluate_predictions(*_noisy_pairs(40, seed=1), n_boot=500, seed=3)
    large = evaluate_predictions(*_noisy_pairs(1000, seed=1), n_boot=500, seed=3)
    for result in (small, large):
        for name in METRIC_NAMES:
            entry = result[name]
            assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], name
    for name in METRIC_NAMES:
        width_small = small[name]["ci_high"] - small[name]["ci_low"]
        width_large = large[name]["ci_high"] - large[name]["ci_low"]
        # Widths shrink like 1/sqrt(n): 25x the data, about 1/5 the width.
        assert width_large < 0.5 * width_small, name


def test_bootstrap_agrees_with_scipy_and_is_seeded():
    pred, mos = _noisy_pairs(200, seed=5)
    ours = evaluate_predictions(pred, mos, n_boot=2000, seed=0)
    reference = stats.bootstrap(
        (pred, mos),
        lambda x, y, axis: stats.pearsonr(x, y, axis=axis).statistic,
        paired=True, vectorized=True, n_resamples=2000, method="percentile",
        rng=np.random.default_rng(1),
    ).confidence_interval
    # Different random streams, same procedure: bounds agree to Monte Carlo error.
    assert ours["plcc"]["ci_low"] == pytest.approx(reference.low, abs=0.01)
    assert ours["plcc"]["ci_high"] == pytest.approx(reference.high, abs=0.01)

    again = evaluate_predictions(pred, mos, n_boot=2000, seed=0)
    other = evaluate_predictions(pred, mos, n_boot=2000, seed=1)
    assert again == ours
    assert other["srcc"]["ci_low"] != ours["srcc"]["ci_low"]
    assert ours["bootstrap"] == {
        "n_boot": 2000, "seed": 0, "confidence": 0.95, "method": "paired percentile",
        "degenerate_resamples": 0,
    }


def test_result_is_json_serialisable_and_renders_as_markdown():
    result = evaluate_predictions(*_noisy_pairs(60), n_boot=200)
    decoded = json.loads(json.dumps(result, allow_nan=False))
    assert decoded == result
    assert point_estimates(result) == {name: result[name]["value"] for name in METRIC_NAMES}

    table = metrics_to_markdown(result, title="tiny")
    lines = table.splitlines()
    assert lines[0] == "### tiny"
    assert lines[2] == "| metric | value | 95% CI |"
    rows = [line for line in lines if line.startswith("| ") and "metric" not in line]
    assert len(rows) == len(METRIC_NAMES)
    srcc_row = next(row for row in rows if row.startswith("| SRCC"))
    assert f"{result['srcc']['value']:.4f}" in srcc_row
    assert f"[{result['srcc']['ci_low']:.4f}, {result['srcc']['ci_high']:.4f}]" in srcc_row
    assert "n = 60" in table and "4pl fit" in table


@pytest.mark.parametrize(
    ("pred", "mos", "message"),
    [
        ([0.5, 0.5, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4], "all predictions are equal"),
        ([0.1, 0.2, 0.3, 0.4], [0.7, 0.7, 0.7, 0.7], "all MOS are equal"),
        ([0.1, 0.9], [0.2, 0.8], "at least 3"),
        ([], [], "at least 3"),
        ([0.1, float("nan"), 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], "predictions contain 1 NaN"),
        ([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, float("inf"), 0.4], "MOS contain 1 NaN or infinite"),
        ([0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4], "must pair up"),
        ([[0.1, 0.2], [0.3, 0.4]], [[0.1, 0.2], [0.3, 0.4]], "must be 1-D"),
    ],
)
def test_degenerate_input_raises_a_clear_error(pred, mos, message):
    with pytest.raises(ValueError, match=message):
        evaluate_predictions(pred, mos)
