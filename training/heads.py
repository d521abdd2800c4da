"""Train v2's heads on cached features, cross-validate them, and fit the calibration.

Targets live on two scales. Rated photos carry MOS (LIVE Challenge MOS/100). Synthetic
versions carry levels on the reference page's scale (:mod:`iqa.training.levels`). The
heads predict MOS, so levels are first mapped onto the MOS scale by a linear prior fitted
on the training MOS alone (:func:`level_to_mos_prior`). After training, the calibration
that turns MOS into ``score`` is fitted on the training samples' levels: an isotonic
regression of level on out-of-fold predicted MOS, smoothed to a few knots
(:func:`fit_calibration`). Both fits see training data only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .feature_cache import FeatureTable
from .multiview_data import LEVEL, MOS


@dataclass
class HeadRecipe:
    """Everything that decides the heads; one per config, compared by cross-validation."""

    # Ridge penalties tried; the one with the lowest leave-one-out error on the training
    # samples is kept (scikit-learn's RidgeCV), so no held-out photo chooses it.
    alphas: tuple[float, ...] = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
    level_weight: float = 1.0  # loss weight of a synthetic sample relative to a rated one
    # The level prior maps page-scale CLEAN_TARGET to this quantile of the training MOS,
    # and 0 to the MOS quantile below; see level_to_mos_prior.
    prior_high_quantile: float = 0.95
    prior_low_quantile: float = 0.02
    calibration_knots: int = 10
    # "isotonic": fitted on out-of-fold predictions of the synthetic versions
    # (fit_calibration). "prior": the inverse of the linear level prior, fitted on the
    # training MOS alone (prior_calibration); it puts clean photos where the best rated
    # photos are instead of where their distorted siblings with the same MOS are
    # (MODEL_CARD.md, "A MOS head and a level head").
    calibration: str = "isotonic"
    feature_slice: tuple[int, int] | None = None  # ablations: use only these columns


def level_to_mos_prior(train_mos: np.ndarray, recipe: HeadRecipe) -> tuple[float, float]:
    """:func:`iqa.training.levels.level_to_mos_prior` at the recipe's quantiles."""
    from .levels import level_to_mos_prior as prior

    return prior(train_mos, recipe.prior_high_quantile, recipe.prior_low_quantile)


def _mos_targets(table: FeatureTable, prior: tuple[float, float]) -> np.ndarray:
    a, b = prior
    is_level = table.kinds == LEVEL
    return np.where(is_level, a + b * table.targets, table.targets).astype(np.float32)


def _columns(features: np.ndarray, recipe: HeadRecipe) -> np.ndarray:
    if recipe.feature_slice is None:
        return features
    lo, hi = recipe.feature_slice
    return features[:, lo:hi]


def train_heads(table: FeatureTable, recipe: HeadRecipe, *, progress: bool = False):
    """Fit QualityHeads on ``table``; return (heads, prior). Calibration stays identity."""
    import torch
    from sklearn.linear_model import RidgeCV

    from iqa.models.multiview import QualityHeads

    feats = np.ascontiguousarray(_columns(table.features, recipe), dtype=np.float64)
    mean = feats.mean(0)
    std = np.maximum(feats.std(0), 1e-4)
    z = (feats - mean) / std
    prior = level_to_mos_prior(table.targets[table.kinds == MOS], recipe)
    y = _mos_targets(table, prior)
    weights = np.where(table.kinds == LEVEL, recipe.level_weight, 1.0)
    mos_fit = RidgeCV(alphas=recipe.alphas).fit(z, y, sample_weight=weights)
    known = ~np.isnan(table.factors).any(1)
    heads = QualityHeads(feats.shape[1], num_factors=table.factors.shape[1])
    with torch.no_grad():
        heads.feature_mean.copy_(torch.from_numpy(mean))
        heads.feature_std.copy_(torch.from_numpy(std))
        heads.mos_head.weight.copy_(torch.from_numpy(mos_fit.coef_[None]))
        heads.mos_head.bias.fill_(float(mos_fit.intercept_))
        if heads.factor_head is not None and known.sum() >= 10:
            factor_fit = RidgeCV(alphas=recipe.alphas).fit(z[known], table.factors[known])
            heads.factor_head.weight.copy_(torch.from_numpy(factor_fit.coef_))
            heads.factor_head.bias.copy_(torch.from_numpy(np.asarray(factor_fit.intercept_)))
    if progress:
        print(f"  ridge alpha: MOS {mos_fit.alpha_:g}", flush=True)
    heads.eval()
    return heads, prior


def predict(heads, table: FeatureTable, recipe: HeadRecipe) -> dict[str, np.ndarray]:
    import torch

    with torch.inference_mode():
        score, mos, factors = heads(torch.from_numpy(_columns(table.features, recipe)))
    return {"score": score.numpy(), "mos": mos.numpy(), "factors": factors.numpy()}


STRICT_STEP = 1e-3


def fit_calibration(pred_mos: np.ndarray, levels: np.ndarray, knots: int = 10
                    ) -> tuple[list[float], list[float]]:
    """Monotone MOS -> page-scale knots from (predicted MOS, level target) pairs.

    Isotonic regression (scikit-learn) gives the best non-decreasing step function; it is
    read at ``knots`` quantiles of the predictions (and at MOS 0 and 1) so the baked-in
    curve is smooth and covers the whole MOS range.
    """
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=0.98, out_of_bounds="clip")
    iso.fit(pred_mos, levels)
    xs = np.unique(np.quantile(pred_mos, np.linspace(0.0, 1.0, knots)))
    xs = np.concatenate([[min(0.0, xs[0] - 1e-3)], xs, [max(1.0, xs[-1] + 1e-3)]])
    ys = iso.predict(xs)
    # Strictly increasing, so that two different MOS never tie in score: the calibration
    # must not change any ranking (isotonic fits have flat steps).
    for i in range(1, len(ys)):
        ys[i] = max(ys[i], ys[i - 1] + STRICT_STEP)
    return [float(x) for x in xs], [float(min(y, 1.0)) for y in ys]


def prior_calibration(prior: tuple[float, float]) -> tuple[list[float], list[float]]:
    """Knots of page = (MOS - a) / b, the inverse of :func:`level_to_mos_prior`.

    Between MOS ``a`` (page 0) and the MOS of page 0.98 the map is the prior's line, pinched
    to [0.02, 0.98]; outside, it keeps a small slope down to MOS 0 and up to MOS 1, so that
    no two MOS values tie in score.
    """
    a, b = prior
    top = a + 0.98 * b
    if not 0.0 < a < top < 1.0:
        raise ValueError(f"the level prior {prior} does not fit inside MOS (0, 1)")
    return [0.0, float(a), float(top), 1.0], [0.0, 0.02, 0.98, 0.99]


def group_folds(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index per sample; all samples of one group share a fold."""
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))
    fold_of = {g: i % k for i, g in zip(range(len(unique)), unique[order], strict=True)}
    return np.array([fold_of[g] for g in groups])
