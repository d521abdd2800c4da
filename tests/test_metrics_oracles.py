"""Metrics against oracles that do not share code with training/metrics.py.

tests/test_metrics.py compares point estimates with scipy, which the module calls itself.
Here the expected values come from facts that hold for every resample (a strictly
monotonic relation has Spearman 1 in every resample, whatever its shape), from hand
computation, or from a per-resample loop over scipy that re-implements the documented
procedure independently of the vectorised code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from iqa.training.metrics import (
    LOGISTICS,
    METRIC_NAMES,
    LogisticFit,
    evaluate_predictions,
    fit_logistic,
    metrics_to_markdown,
)


def _convex_pairs(n: int = 25) -> tuple[np.ndarray, np.ndarray]:
    # Strictly increasing but far from linear: ranks agree, raw values do not.
    x = np.linspace(0.0, 1.0, n)
    return x, np.exp(8 * x)


def test_srcc_and_krcc_intervals_of_a_monotonic_curve_are_exactly_one():
    # Every resample of a strictly increasing relation is either constant (dropped) or
    # has Spearman and Kendall exactly 1, ties included (they fall on the same pairs).
    # Pearson between ranks of x and the *raw* curved y is well below 1, so any resample
    # statistic that forgets to rank y moves the interval off 1.
    x, y = _convex_pairs()
    result = evaluate_predictions(x, y, n_boot=300, seed=4)
    for name in ("srcc", "krcc"):
        assert result[name]["value"] == pytest.approx(1.0)
        assert result[name]["ci_low"] == pytest.approx(1.0, abs=1e-12), name
        assert result[name]["ci_high"] == pytest.approx(1.0, abs=1e-12), name
    # The same data decreasing: -1 everywhere.
    down = evaluate_predictions(x, -y, n_boot=300, seed=4)
    assert down["srcc"]["ci_low"] == pytest.approx(-1.0) == down["srcc"]["ci_high"]
    # Raw PLCC does see the curvature, so its interval lies below 1.
    assert result["plcc"]["ci_high"] < 0.95


def test_linear_and_offset_relations_give_degenerate_intervals():
    x = np.linspace(0.1, 0.9, 20)
    linear = evaluate_predictions(x, 2 * x + 1, n_boot=200, seed=0)
    assert linear["plcc"]["ci_low"] == pytest.approx(1.0)
    assert linear["plcc"]["ci_high"] == pytest.approx(1.0)
    # y = x + 0.1: every pair is off by exactly 0.1, so every resample's RMSE is 0.1.
    offset = evaluate_predictions(x, x + 0.1, n_boot=200, seed=0)
    for end in ("value", "ci_low", "ci_high"):
        assert offset["rmse"][end] == pytest.approx(0.1)
    # The logistic maps x onto x + 0.1 exactly (within the 4PL's reach), so the fitted
    # RMSE is ~0 and the fitted PLCC ~1 in every resample.
    assert offset["rmse_logistic"]["ci_high"] < 0.01
    assert offset["plcc_logistic"]["ci_low"] > 0.999


def _oracle_bootstrap(x, y, n_boot, seed, confidence, statistic):
    """The documented procedure, one resample at a time: paired indices drawn as a
    (n_boot, n) matrix from default_rng(seed), percentile interval of the finite values."""
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    values = []
    for row in idx:
        xs, ys = x[row], y[row]
        if np.ptp(xs) == 0 or np.ptp(ys) == 0:
            continue
        values.append(statistic(xs, ys))
    tail = 100 * (1 - confidence) / 2
    return np.percentile(values, [tail, 100 - tail])


@pytest.mark.parametrize("confidence", [0.9, 0.5])
def test_bootstrap_intervals_match_a_per_resample_oracle(confidence):
    rng = np.random.default_rng(11)
    x = rng.uniform(0, 1, 30)
    y = np.exp(3 * x) + rng.normal(0, 0.6, 30)  # noisy, curved, with outliers in y
    y[rng.integers(0, 30, 3)] += 8
    result = evaluate_predictions(x, y, n_boot=400, seed=7, confidence=confidence)
    fit = LogisticFit.from_dict(result["logistic"])
    statistics = {
        "srcc": lambda a, b: stats.spearmanr(a, b).statistic,
        "krcc": lambda a, b: stats.kendalltau(a, b).statistic,
        "plcc": lambda a, b: np.corrcoef(a, b)[0, 1],
        "rmse": lambda a, b: math.sqrt(np.mean((a - b) ** 2)),
    }
    for name, statistic in statistics.items():
        low, high = _oracle_bootstrap(x, y, 400, 7, confidence, statistic)
        assert result[name]["ci_low"] == pytest.approx(low, abs=1e-9), name
        assert result[name]["ci_high"] == pytest.approx(high, abs=1e-9), name
    mapped = fit(x)
    idx = np.random.default_rng(7).integers(0, 30, size=(400, 30))
    rmse_fit = [math.sqrt(np.mean((mapped[r] - y[r]) ** 2)) for r in idx]
    tail = 100 * (1 - confidence) / 2
    assert result["rmse_logistic"]["ci_low"] == pytest.approx(np.percentile(rmse_fit, tail))
    assert result["rmse_logistic"]["ci_high"] == pytest.approx(
        np.percentile(rmse_fit, 100 - tail))
    plcc_fit = [np.corrcoef(mapped[r], y[r])[0, 1] for r in idx]
    assert result["plcc_logistic"]["ci_low"] == pytest.approx(np.percentile(plcc_fit, tail))


def test_degenerate_resamples_are_counted_and_dropped():
    # With 3 pairs, a resample that draws one index three times is constant. The count
    # of such rows follows from the documented index matrix. 0.1 and 0.9 matter: their
    # triple means are off by one ulp, which once turned constant rows into PLCC +-1.
    x, y = np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.3, 0.8])
    idx = np.random.default_rng(5).integers(0, 3, size=(500, 3))
    constant = int(sum(np.ptp(row) == 0 for row in idx))
    assert constant > 0
    result = evaluate_predictions(x, y, n_boot=500, seed=5)
    assert result["bootstrap"]["degenerate_resamples"] == constant
    # Ranks agree in every non-constant resample: SRCC's interval stays at 1.
    assert result["srcc"]["ci_low"] == pytest.approx(1.0)


@pytest.mark.parametrize("tied", ["predictions", "mos"])
def test_resamples_constant_on_one_side_are_degenerate(tied):
    # Two equal predictions (or MOS): a resample drawing only those two is constant on
    # that side but not on the other, and must be dropped like a fully constant one.
    a, b = [0.1, 0.1, 0.9], [0.2, 0.3, 0.8]
    x, y = (np.array(a), np.array(b)) if tied == "predictions" else (np.array(b), np.array(a))
    idx = np.random.default_rng(9).integers(0, 3, size=(600, 3))
    degenerate = sum(np.ptp(x[r]) == 0 or np.ptp(y[r]) == 0 for r in idx)
    assert degenerate > sum(np.ptp(r) == 0 for r in idx)  # more than the all-equal rows
    result = evaluate_predictions(x, y, n_boot=600, seed=9)
    assert result["bootstrap"]["degenerate_resamples"] == degenerate


def test_degenerate_resamples_raise_no_numpy_warning():
    # Constant resamples are expected with small sets; `iqa eval` must not print
    # "invalid value encountered" for them.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_predictions([0.1, 0.5, 0.9], [0.2, 0.3, 0.8], n_boot=200, seed=5)


def test_large_sets_are_resampled_in_chunks_with_the_same_numbers():
    # 2,000,000 // 25,000 = 80 resamples per chunk, so 200 resamples take three chunks
    # drawn from one generator; the first 80 rows equal one unchunked (80, n) draw.
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, 25_000)
    y = x + rng.normal(0, 0.3, x.size)
    result = evaluate_predictions(x, y, n_boot=200, seed=1, logistic="4pl")
    draws = np.random.default_rng(1)
    rmse = []
    for size in (80, 80, 40):
        idx = draws.integers(0, x.size, size=(size, x.size))
        rmse += [math.sqrt(np.mean((x[r] - y[r]) ** 2)) for r in idx]
    assert len(rmse) == 200
    assert result["rmse"]["ci_low"] == pytest.approx(np.percentile(rmse, 2.5), rel=1e-9)
    assert result["rmse"]["ci_high"] == pytest.approx(np.percentile(rmse, 97.5), rel=1e-9)


def test_hand_computed_rank_statistics_with_disagreeing_ranks():
    # x ranks 1..5, y ranks 2,1,4,3,5: d = [-1, 1, -1, 1, 0], sum d^2 = 4, so
    # Spearman = 1 - 6 * 4 / (5 * 24) = 0.8. Of 10 pairs, 2 are discordant:
    # Kendall = (8 - 2) / 10 = 0.6.
    result = evaluate_predictions([1, 2, 3, 4, 5], [20, 10, 400, 300, 5000], n_boot=0)
    assert result["srcc"]["value"] == pytest.approx(0.8)
    assert result["krcc"]["value"] == pytest.approx(0.6)


def test_invalid_confidence_and_n_boot_are_rejected():
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="confidence must be in"):
            evaluate_predictions([0.1, 0.5, 0.9], [0.2, 0.4, 0.9], confidence=bad)
    with pytest.raises(ValueError, match="n_boot must be >= 0"):
        evaluate_predictions([0.1, 0.5, 0.9], [0.2, 0.4, 0.9], n_boot=-1)
    # The smallest valid input: exactly three pairs.
    assert evaluate_predictions([0.1, 0.5, 0.9], [0.2, 0.4, 0.9], n_boot=0)["n"] == 3


def test_logistic_starting_points_by_hand():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    y = np.array([1.0, 2.0, 4.0, 9.0])
    # mean x 1.5, std x sqrt(1.25); MOS range [1, 9], mean 4.
    assert LOGISTICS["4pl"].initial(x, y, 1.0) == pytest.approx([9.0, 1.0, 1.5, math.sqrt(1.25)])
    assert LOGISTICS["4pl"].initial(x, y, -1.0) == pytest.approx([1.0, 9.0, 1.5, math.sqrt(1.25)])
    assert LOGISTICS["5pl"].initial(x, y, 1.0) == pytest.approx(
        [8.0, 1 / math.sqrt(1.25), 1.5, 0.0, 4.0])
    assert LOGISTICS["5pl"].initial(x, y, -1.0)[0] == pytest.approx(-8.0)
    # Constant predictions would divide by zero: the scale falls back to 1.
    flat = np.zeros(4)
    assert LOGISTICS["4pl"].initial(flat, y, 1.0)[3] == 1.0
    assert LOGISTICS["5pl"].initial(flat, y, 1.0)[1] == 1.0
    assert LOGISTICS["5pl"].initial(x, np.ones(4), 1.0)[0] == 1.0


def test_fit_dictionary_round_trip_and_linear_fallback_call():
    line = LogisticFit("linear", (2.0, -1.0), converged=False, message="why")
    assert line(np.array([0.0, 1.0, 3.0])).tolist() == [-1.0, 1.0, 5.0]
    d = line.to_dict()
    assert d == {"kind": "linear", "formula": "b1 * x + b2", "params": [2.0, -1.0],
                 "converged": False, "message": "why"}
    assert LogisticFit.from_dict(d) == line
    assert LogisticFit.from_dict({k: v for k, v in d.items() if k != "message"}).message == ""
    four = LogisticFit("4pl", (1.0, 0.0, 0.5, 0.1), converged=True)
    assert four.to_dict()["formula"] == "(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2"
    assert four(0.5) == pytest.approx(0.5)


def test_decreasing_relations_start_the_fit_from_swapped_asymptotes():
    # maxfev=1 stops curve_fit before it moves, so the fallback message shows that the
    # fit was attempted; with enough evaluations a falling curve is recovered exactly.
    x = np.linspace(0, 1, 25)
    y = 0.9 - 0.8 / (1 + np.exp(-(x - 0.5) / 0.1))
    fit = fit_logistic(x, y, "4pl")
    assert fit.converged
    np.testing.assert_allclose(fit(x), y, atol=1e-6)
    fit5 = fit_logistic(x, -3 * x + 2, "5pl")
    assert fit5.converged
    np.testing.assert_allclose(fit5(x), -3 * x + 2, atol=1e-5)


def test_markdown_table_by_hand():
    metrics = {
        "n": 12,
        "bootstrap": {"confidence": 0.9, "n_boot": 0, "method": "paired percentile", "seed": 0},
        "logistic": {"converged": True, "kind": "4pl", "formula": "F"},
    }
    for name in METRIC_NAMES:
        metrics[name] = {"value": 0.5, "ci_low": None, "ci_high": None}
    metrics["rmse"] = {"value": float("nan"), "ci_low": 0.125, "ci_high": 0.25}
    text = metrics_to_markdown(metrics, digits=2)
    assert text.splitlines() == [
        "| metric | value | 90% CI |",
        "|---|---:|:---:|",
        "| SRCC ↑ | 0.50 | n/a |",
        "| KRCC ↑ | 0.50 | n/a |",
        "| PLCC ↑ | 0.50 | n/a |",
        "| PLCC (after logistic) ↑ | 0.50 | n/a |",
        "| RMSE ↓ | n/a | [0.12, 0.25] |",
        "| RMSE (after logistic) ↓ | 0.50 | n/a |",
        "",
        "n = 12; logistic: 4pl fit, f(x) = F",
    ]
    titled = metrics_to_markdown(metrics, digits=2, title="Run 7").splitlines()
    assert titled[:3] == ["### Run 7", "", "| metric | value | 90% CI |"]
    metrics["logistic"] = {"converged": False, "message": "4pl fit failed (x)"}
    assert metrics_to_markdown(metrics).splitlines()[-1] == (
        "n = 12; logistic fit FAILED, linear fallback used: 4pl fit failed (x)")
    metrics["logistic"] = {"converged": True, "kind": "4pl", "formula": "F"}
    metrics.update(n_failed=2, n_images=14)
    metrics["bootstrap"].update(n_boot=100, seed=3)
    assert text.endswith("\n")
    last = metrics_to_markdown(metrics).splitlines()[-1]
    assert last == ("n = 12 (2 of 14 images failed to score); logistic: 4pl fit, f(x) = F; "
                    "CIs: paired percentile bootstrap, 100 resamples, seed 3")


# --------------------------------------------------------------------------- edge cases


def test_object_columns_are_read_as_numbers():
    # A pandas column read with mixed types arrives as an object array.
    pred = np.array([0.1, 0.5, 0.9, 0.3], dtype=object)
    mos = np.array(["0.2", "0.4", "0.95", "0.1"], dtype=object)
    result = evaluate_predictions(pred, mos, n_boot=0)
    # Ranks of pred 1, 3, 4, 2 and of MOS 2, 3, 4, 1: sum d^2 = 2, 1 - 6 * 2 / (4 * 15).
    assert result["srcc"]["value"] == pytest.approx(0.8)


def test_a_two_dimensional_side_is_named_even_when_the_other_is_flat():
    with pytest.raises(ValueError, match="must be 1-D"):
        evaluate_predictions([[0.1, 0.2], [0.3, 0.4]], [0.1, 0.2, 0.3, 0.4])


def test_documented_defaults():
    from iqa.training.metrics import logistic_4pl

    x = np.linspace(0.1, 0.95, 20)
    y = logistic_4pl(x, 0.95, 0.05, 0.55, 0.08)
    assert fit_logistic(x, y).kind == "4pl"
    result = evaluate_predictions(x, y)
    assert (result["bootstrap"]["n_boot"], result["bootstrap"]["seed"]) == (1000, 0)
    assert result["bootstrap"]["confidence"] == 0.95
    bare = evaluate_predictions(x, y, n_boot=0)
    assert bare["bootstrap"]["degenerate_resamples"] == 0
    for name in METRIC_NAMES:
        assert bare[name] == {"value": result[name]["value"], "ci_low": None, "ci_high": None}


def test_all_resamples_degenerate_gives_no_interval():
    # Seed 62 draws rows (1, 1, 1) and (2, 2, 2): two constant resamples, nothing to
    # take a percentile of. The correlations have no interval; RMSE still has one.
    result = evaluate_predictions([0.1, 0.5, 0.9], [0.2, 0.3, 0.8], n_boot=2, seed=62)
    assert result["bootstrap"]["degenerate_resamples"] == 2
    for name in ("srcc", "krcc", "plcc", "plcc_logistic"):
        assert result[name]["ci_low"] is None and result[name]["ci_high"] is None, name
    assert result["rmse"]["ci_low"] is not None


@pytest.fixture
def curve_fit_spy(monkeypatch):
    """Record each curve_fit call's starting point; optionally replace its answer."""
    from scipy import optimize

    calls, answer = [], {}
    real = optimize.curve_fit

    def spy(f, x, y, p0=None, **kwargs):
        calls.append(None if p0 is None else list(p0))
        if "params" in answer:
            return np.asarray(answer["params"], dtype=float), None
        return real(f, x, y, p0=p0, **kwargs)

    monkeypatch.setattr(optimize, "curve_fit", spy)
    return calls, answer


def test_fits_start_from_the_documented_point(curve_fit_spy):
    calls, _ = curve_fit_spy
    x = np.array([0.0, 1.0, 2.0, 3.0])
    y = np.array([1.0, 2.0, 4.0, 9.0])
    std = math.sqrt(1.25)
    fit_logistic(x, y, "4pl")
    fit_logistic(x, -y, "4pl")  # decreasing: asymptotes swapped
    fit_logistic(x, y, "5pl")
    fit_logistic(x, -y, "5pl")  # decreasing: negative amplitude
    assert calls[0] == pytest.approx([9.0, 1.0, 1.5, std])
    assert calls[1] == pytest.approx([-9.0, -1.0, 1.5, std])
    assert calls[2] == pytest.approx([8.0, 1 / std, 1.5, 0.0, 4.0])
    assert calls[3] == pytest.approx([-8.0, 1 / std, 1.5, 0.0, -4.0])
    # No linear trend at all (PLCC exactly 0): the increasing start, as documented (>= 0).
    fit_logistic([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 1.0, 0.0], "4pl")
    assert calls[4][:2] == [1.0, 0.0]


def test_curves_accept_object_arrays():
    # Values read through pandas object columns (or JSON) must come out as floats.
    from iqa.training.metrics import logistic_4pl, logistic_5pl

    x = np.array([0.2, 0.5, 0.9], dtype=object)
    ref = x.astype(float)
    np.testing.assert_allclose(logistic_4pl(x, 0.9, 0.1, 0.5, 0.2),
                               logistic_4pl(ref, 0.9, 0.1, 0.5, 0.2))
    np.testing.assert_allclose(logistic_5pl(x, 2.0, 3.0, 0.4, 0.5, 0.1),
                               logistic_5pl(ref, 2.0, 3.0, 0.4, 0.5, 0.1))
    line = LogisticFit("linear", (2.0, -1.0), converged=False)(x)
    assert line.dtype == np.float64 and line.tolist() == pytest.approx([-0.6, 0.0, 0.8])


def test_non_finite_fits_fall_back_to_a_line(curve_fit_spy):
    _, answer = curve_fit_spy
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    y = np.array([0.1, 0.3, 0.2, 0.8, 0.9])
    line = np.polyfit(x, y, 1)
    answer["params"] = [math.nan, 0.0, 1.0, 1.0]
    fit = fit_logistic(x, y, "4pl")
    assert (fit.kind, fit.converged) == ("linear", False)
    assert fit.message == "4pl fit gave non-finite values; fell back to a linear fit"
    np.testing.assert_allclose(fit.params, line)
    # Finite parameters whose curve overflows: b4 * x = 1e308 * 4 is infinite.
    answer["params"] = [1.0, 1.0, 0.0, 1e308, 0.0]
    with np.errstate(over="ignore"):
        fit = fit_logistic(x, y, "5pl")
    assert (fit.kind, fit.converged) == ("linear", False)
    assert fit.message.startswith("5pl fit gave non-finite values")


def test_a_flat_logistic_gives_nan_without_a_warning(curve_fit_spy):
    import warnings

    _, answer = curve_fit_spy
    answer["params"] = [0.5, 0.5, 0.0, 1.0]  # b1 == b2: the curve is the constant 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = evaluate_predictions([0.1, 0.4, 0.5, 0.9], [0.2, 0.3, 0.7, 0.8], n_boot=0)
    assert math.isnan(result["plcc_logistic"]["value"])
    assert result["rmse_logistic"]["value"] == pytest.approx(
        math.sqrt(np.mean((0.5 - np.array([0.2, 0.3, 0.7, 0.8])) ** 2)))
