"""IQA agreement metrics: SRCC, KRCC, PLCC and RMSE, with logistic mapping and bootstrap CIs.

Needs numpy and scipy only (the ``iqa[eval]`` extra), never torch: ``iqa eval``, the
trainer's validation loop and the model card all call :func:`evaluate_predictions`.

PLCC and RMSE measure *linear* agreement, which punishes a model for a monotonic but
curved relation to MOS. VQEG practice (and most IQA papers) therefore also reports them
after fitting a monotonic logistic from predictions to MOS; both the raw and the fitted
values are reported here, so neither is mistaken for the other.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

# Order of rows in tables and of keys in the result.
METRIC_NAMES: tuple[str, ...] = ("srcc", "krcc", "plcc", "plcc_logistic", "rmse", "rmse_logistic")

METRIC_LABELS: dict[str, str] = {
    "srcc": "SRCC",
    "krcc": "KRCC",
    "plcc": "PLCC",
    "plcc_logistic": "PLCC (after logistic)",
    "rmse": "RMSE",
    "rmse_logistic": "RMSE (after logistic)",
}

# Higher is better for every correlation, lower for RMSE; tables say so.
LOWER_IS_BETTER = frozenset({"rmse", "rmse_logistic"})

_MIN_SAMPLES = 3
# Bootstrap resamples are processed in chunks so a 10k-image test set does not need
# n_boot x n index and value matrices in memory at once.
_BOOT_CHUNK_ELEMENTS = 2_000_000


def logistic_4pl(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG 4-parameter logistic: (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2.

    b1 and b2 are the asymptotes as x goes to +inf and -inf, b3 the midpoint and |b4|
    the scale. ``expit`` is the same sigmoid without overflow for large arguments.
    """
    scale = max(abs(b4), 1e-12)
    return (b1 - b2) * special.expit((np.asarray(x, dtype=float) - b3) / scale) + b2


def logistic_5pl(
    x: np.ndarray, b1: float, b2: float, b3: float, b4: float, b5: float
) -> np.ndarray:
    """VQEG 5-parameter logistic: b1 * (0.5 - 1 / (1 + exp(b2 * (x - b3)))) + b4 * x + b5."""
    x = np.asarray(x, dtype=float)
    return b1 * (0.5 - special.expit(-b2 * (x - b3))) + b4 * x + b5


def _init_4pl(x: np.ndarray, y: np.ndarray, sign: float) -> list[float]:
    # Asymptotes at the MOS extremes (swapped for a decreasing relation), midpoint at
    # the mean prediction, scale of one prediction standard deviation.
    low, high = float(np.min(y)), float(np.max(y))
    b1, b2 = (high, low) if sign >= 0 else (low, high)
    return [b1, b2, float(np.mean(x)), float(np.std(x)) or 1.0]


def _init_5pl(x: np.ndarray, y: np.ndarray, sign: float) -> list[float]:
    # Amplitude of the MOS range, slope of one over a prediction std, no linear term,
    # offset at the mean MOS (the curve's value at its midpoint).
    spread = float(np.ptp(y)) or 1.0
    return [sign * spread, 1.0 / (float(np.std(x)) or 1.0), float(np.mean(x)), 0.0, float(np.mean(y))]


@dataclass(frozen=True)
class _LogisticKind:
    function: Callable[..., np.ndarray]
    initial: Callable[[np.ndarray, np.ndarray, float], list[float]]
    formula: str


LOGISTICS: dict[str, _LogisticKind] = {
    "4pl": _LogisticKind(
        logistic_4pl, _init_4pl, "(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2"
    ),
    "5pl": _LogisticKind(
        logistic_5pl, _init_5pl, "b1 * (0.5 - 1 / (1 + exp(b2 * (x - b3)))) + b4 * x + b5"
    ),
}


@dataclass(frozen=True)
class LogisticFit:
    """A fitted monotonic mapping from predictions to MOS.

    ``converged`` is False when the logistic fit failed; the mapping is then the least
    squares straight line (``kind == "linear"``) and ``message`` says why.
    """

    kind: str
    params: tuple[float, ...]
    converged: bool
    message: str = ""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        if self.kind == "linear":
            slope, intercept = self.params
            return slope * x + intercept
        return LOGISTICS[self.kind].function(x, *self.params)

    @classmethod
    def from_dict(cls, data: dict) -> LogisticFit:
        """Inverse of :meth:`to_dict`, e.g. to redraw the curve from a metrics.json."""
        return cls(data["kind"], tuple(data["params"]), data["converged"], data.get("message", ""))

    def to_dict(self) -> dict:
        formula = "b1 * x + b2" if self.kind == "linear" else LOGISTICS[self.kind].formula
        return {
            "kind": self.kind,
            "formula": formula,
            "params": [float(p) for p in self.params],
            "converged": self.converged,
            "message": self.message,
        }


def _linear_fit(x: np.ndarray, y: np.ndarray, message: str) -> LogisticFit:
    slope, intercept = np.polyfit(x, y, 1)
    return LogisticFit("linear", (float(slope), float(intercept)), converged=False, message=message)


def fit_logistic(
    pred: Sequence[float] | np.ndarray,
    mos: Sequence[float] | np.ndarray,
    kind: str = "4pl",
    *,
    maxfev: int = 10_000,
) -> LogisticFit:
    """Least-squares fit of a VQEG logistic from ``pred`` to ``mos``.

    Never raises on a failed fit: it falls back to a straight line and says so, because
    one ill-conditioned validation set must not stop a training run.
    """
    if kind not in LOGISTICS:
        raise ValueError(f"unknown logistic {kind!r}; choose one of {sorted(LOGISTICS)}")
    x, y = _validated(pred, mos)
    spec = LOGISTICS[kind]
    sign = 1.0 if stats.pearsonr(x, y).statistic >= 0 else -1.0
    p0 = spec.initial(x, y, sign)
    try:
        with warnings.catch_warnings():
            # Parameter covariance is irrelevant here; an unestimable one is not a failure.
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            params, _ = optimize.curve_fit(spec.function, x, y, p0=p0, maxfev=maxfev)
    except (RuntimeError, ValueError, TypeError) as exc:
        # TypeError: fewer points than parameters (e.g. 5PL on 4 points).
        return _linear_fit(x, y, f"{kind} fit failed ({exc}); fell back to a linear fit")
    fitted = spec.function(x, *params)
    if not (np.all(np.isfinite(params)) and np.all(np.isfinite(fitted))):
        return _linear_fit(x, y, f"{kind} fit gave non-finite values; fell back to a linear fit")
    return LogisticFit(kind, tuple(float(p) for p in params), converged=True)


def _validated(pred, mos) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(pred, dtype=float)
    y = np.asarray(mos, dtype=float)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"predictions and MOS must be 1-D, got shapes {x.shape} and {y.shape}")
    if x.shape != y.shape:
        raise ValueError(f"{x.size} predictions but {y.size} MOS values; they must pair up")
    if x.size < _MIN_SAMPLES:
        raise ValueError(f"need at least {_MIN_SAMPLES} (prediction, MOS) pairs, got {x.size}")
    for name, values in (("predictions", x), ("MOS", y)):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(
                f"{name} contain {bad.size} NaN or infinite value(s), first at index {bad[0]}"
            )
        if np.ptp(values) == 0:
            raise ValueError(
                f"all {name} are equal ({values[0]:g}); correlations are undefined"
            )
    return x, y


# --- row-wise statistics over a (B, n) matrix of resamples ------------------------------

def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=1) / np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
    # A resample that happens to be constant has no correlation: NaN, dropped later. The
    # test is on the values, not on r: the mean of three copies of 0.1 is not exactly 0.1,
    # so the centred row is tiny but non-zero and r would come out as a spurious +-1.
    r[(np.ptp(x, axis=1) == 0) | (np.ptp(y, axis=1) == 0)] = np.nan
    return r


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # Spearman is Pearson on average ranks, exactly as scipy.stats.spearmanr treats ties.
    return _pearson_rows(stats.rankdata(x, axis=1), stats.rankdata(y, axis=1))


def _kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # kendalltau is O(n log n) but not vectorised; one call per resample is fast enough.
    out = np.empty(x.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant resamples warn and return NaN
        for i in range(x.shape[0]):
            out[i] = stats.kendalltau(x[i], y[i]).statistic
    return out


def _rmse_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean((x - y) ** 2, axis=1))


def _point_estimates(x: np.ndarray, y: np.ndarray, mapped: np.ndarray) -> dict[str, float]:
    return {
        "srcc": float(stats.spearmanr(x, y).statistic),
        "krcc": float(stats.kendalltau(x, y).statistic),
        "plcc": float(stats.pearsonr(x, y).statistic),
        "plcc_logistic": float(stats.pearsonr(mapped, y).statistic)
        if np.ptp(mapped) > 0
        else math.nan,
        "rmse": float(np.sqrt(np.mean((x - y) ** 2))),
        "rmse_logistic": float(np.sqrt(np.mean((mapped - y) ** 2))),
    }


def _bootstrap(
    x: np.ndarray, y: np.ndarray, mapped: np.ndarray, n_boot: int, seed: int
) -> dict[str, np.ndarray]:
    """Paired bootstrap: every metric sees the same resampled (prediction, MOS) pairs."""
    rng = np.random.default_rng(seed)
    n = x.size
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // n)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in METRIC_NAMES}
    done = 0
    while done < n_boot:
        size = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(size, n))
        xs, ys, ms = x[idx], y[idx], mapped[idx]
        parts["srcc"].append(_spearman_rows(xs, ys))
        parts["krcc"].append(_kendall_rows(xs, ys))
        parts["plcc"].append(_pearson_rows(xs, ys))
        parts["plcc_logistic"].append(_pearson_rows(ms, ys))
        parts["rmse"].append(_rmse_rows(xs, ys))
        parts["rmse_logistic"].append(_rmse_rows(ms, ys))
        done += size
    return {name: np.concatenate(values) for name, values in parts.items()}


def evaluate_predictions(
    pred: Sequence[float] | np.ndarray,
    mos: Sequence[float] | np.ndarray,
    *,
    logistic: str = "4pl",
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """All agreement metrics between predictions and MOS, as a JSON-serialisable dict.

    ``{"n", "srcc", "krcc", "plcc", "plcc_logistic", "rmse", "rmse_logistic",
    "logistic", "bootstrap"}``; each metric is ``{"value", "ci_low", "ci_high"}``.
    ``n_boot=0`` skips the bootstrap (the CI bounds are then None), which is what a
    training loop wants on every epoch.

    The CIs are paired percentile-bootstrap intervals. The logistic mapping is fitted
    once on all pairs and held fixed across resamples, so the intervals of the fitted
    PLCC and RMSE do not include the uncertainty of the fit itself.

    Raises ValueError for fewer than 3 pairs, NaN or infinite values, or constant
    predictions or MOS (where correlations are undefined).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    x, y = _validated(pred, mos)
    fit = fit_logistic(x, y, logistic)
    mapped = fit(x)
    values = _point_estimates(x, y, mapped)

    result: dict = {"n": int(x.size)}
    if n_boot:
        samples = _bootstrap(x, y, mapped, n_boot, seed)
        tail = 100 * (1 - confidence) / 2
        degenerate = int(np.isnan(samples["plcc"]).sum())
        for name in METRIC_NAMES:
            finite = samples[name][np.isfinite(samples[name])]
            low, high = np.percentile(finite, [tail, 100 - tail]) if finite.size else (None, None)
            result[name] = {
                "value": values[name],
                "ci_low": None if low is None else float(low),
                "ci_high": None if high is None else float(high),
            }
    else:
        degenerate = 0
        for name in METRIC_NAMES:
            result[name] = {"value": values[name], "ci_low": None, "ci_high": None}
    result["logistic"] = fit.to_dict()
    result["bootstrap"] = {
        "n_boot": int(n_boot),
        "seed": int(seed),
        "confidence": float(confidence),
        "method": "paired percentile",
        "degenerate_resamples": degenerate,
    }
    return result


def point_estimates(metrics: dict) -> dict[str, float]:
    """``{"srcc": 0.91, ...}``: the values without CIs, e.g. for logging or checkpoints."""
    return {name: metrics[name]["value"] for name in METRIC_NAMES}


def _format(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def metrics_to_markdown(metrics: dict, *, digits: int = 4, title: str | None = None) -> str:
    """Render :func:`evaluate_predictions` output as a Markdown table (plus a fit note)."""
    confidence = metrics["bootstrap"]["confidence"]
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines += [
        f"| metric | value | {confidence:.0%} CI |",
        "|---|---:|:---:|",
    ]
    for name in METRIC_NAMES:
        entry = metrics[name]
        label = METRIC_LABELS[name] + (" ↓" if name in LOWER_IS_BETTER else " ↑")
        if entry["ci_low"] is None:
            ci = "n/a"
        else:
            ci = f"[{_format(entry['ci_low'], digits)}, {_format(entry['ci_high'], digits)}]"
        lines.append(f"| {label} | {_format(entry['value'], digits)} | {ci} |")
    fit = metrics["logistic"]
    boot = metrics["bootstrap"]
    note = f"n = {metrics['n']}"
    if metrics.get("n_failed"):
        note += f" ({metrics['n_failed']} of {metrics['n_images']} images failed to score)"
    note += "; "
    if fit["converged"]:
        note += f"logistic: {fit['kind']} fit, f(x) = {fit['formula']}"
    else:
        note += f"logistic fit FAILED, linear fallback used: {fit['message']}"
    if boot["n_boot"]:
        note += f"; CIs: {boot['method']} bootstrap, {boot['n_boot']} resamples, seed {boot['seed']}"
    lines += ["", note]
    return "\n".join(lines) + "\n"
