"""Loss terms: MOS regression and correlation on authentic images, ranking on synthetic ones.

Authentic images carry a human MOS, so they supervise the absolute score. Synthetic images
say "this copy is worse than that one" (a distorted image below its pristine original, a
stronger distortion below a weaker one) and which distortion families were applied (the
factor head). With ``level_weight`` they also carry an absolute level from the reference
page's table, mapped onto the MOS scale by a prior fitted on the training MOS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def mos_regression_loss(
    pred: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1", beta: float = 0.05,
    reduction: str = "mean",
) -> torch.Tensor:
    if kind == "l1":
        return F.l1_loss(pred, target, reduction=reduction)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=beta, reduction=reduction)
    if kind == "mse":
        return F.mse_loss(pred, target, reduction=reduction)
    raise ValueError(f"unknown MOS loss '{kind}'")


def level_item_weights(ids: torch.Tensor, by_name: dict[str, float]) -> torch.Tensor:
    """Each synthetic item's multiplier of the level loss, from its distortion id (a
    position in levels.LEVEL_DISTORTIONS; -1 for originals and composed chains: weight 1)."""
    from .levels import LEVEL_DISTORTIONS

    table = torch.tensor([float(by_name.get(n, 1.0)) for n in LEVEL_DISTORTIONS] + [1.0])
    return table[ids.long().clamp(min=-1)]  # index -1 is the trailing 1.0


def plcc_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(1 - Pearson correlation) / 2 over the batch: 0 when perfectly linear, 1 when inverted.

    Differentiable, and blind to the scale and offset of the scores, so it complements the
    absolute regression term. Fewer than 3 items carry no correlation signal: zero loss.
    """
    if pred.numel() < 3:
        return pred.sum() * 0.0
    p = pred - pred.mean()
    t = target - target.mean()
    corr = (p * t).sum() / (p.norm() * t.norm() + eps)
    return (1.0 - corr) / 2.0


def pairwise_rank_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hinge on every ordered pair in the batch: the predicted gap must match the MOS gap.

    For a pair with target_i > target_j the loss is relu((t_i - t_j) - (p_i - p_j)): it is
    zero once the prediction separates them at least as much as the humans did.
    """
    if pred.numel() < 2:
        return pred.sum() * 0.0
    dp = pred[:, None] - pred[None, :]
    dt = target[:, None] - target[None, :]
    mask = dt > 0
    if not bool(mask.any()):
        return pred.sum() * 0.0
    return F.relu(dt - dp)[mask].mean()


def margin_rank_loss(
    better: torch.Tensor, worse: torch.Tensor, margin: torch.Tensor | float
) -> torch.Tensor:
    """Mean of relu(margin - (better - worse)): ``better`` must outscore ``worse`` by margin."""
    if better.numel() == 0:
        return better.sum() * 0.0
    return F.relu(margin - (better - worse)).mean()


def factor_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """Per-family severity supervision; pred is already a sigmoid output in [0, 1]."""
    if pred.numel() == 0:
        return pred.sum() * 0.0
    if kind == "bce":
        # binary_cross_entropy on probabilities is not autocast-safe; compute in fp32.
        return F.binary_cross_entropy(pred.float().clamp(1e-6, 1 - 1e-6), target.float())
    if kind == "mse":
        return F.mse_loss(pred.float(), target.float())
    raise ValueError(f"unknown factor loss '{kind}'")


def floor_loss(scores: torch.Tensor, floor: float) -> torch.Tensor:
    """Hinge pushing scores up to at least ``floor`` (a prior on pristine photos, not a label)."""
    if scores.numel() == 0:
        return scores.sum() * 0.0
    return F.relu(floor - scores).mean()


@dataclass
class LossWeights:
    mos: str = "smooth_l1"
    mos_weight: float = 1.0
    smooth_l1_beta: float = 0.05
    plcc_weight: float = 0.5
    rank_weight: float = 0.5
    synthetic_rank_weight: float = 1.0
    synthetic_margin: float = 0.02
    margin_per_severity: float = 0.1
    factor: str = "bce"
    factor_weight: float = 0.5
    pristine_floor: float | None = None
    pristine_floor_weight: float = 1.0
    # Absolute levels of synthetic copies (their page-scale targets mapped onto the MOS
    # scale by ``level_prior``, which the trainer fits on the training MOS). 0 = v1.
    level_weight: float = 0.0
    level_prior: tuple[float, float] | None = None
    # Per-distortion multipliers of level_weight (unlisted: 1), read through the batch's
    # ``level_distortion`` ids (positions in levels.LEVEL_DISTORTIONS).
    level_weights: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_config(cls, section: dict) -> LossWeights:
        return cls(**section)


def training_loss(
    scores: torch.Tensor,
    factors: torch.Tensor,
    batch: dict,
    w: LossWeights,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss of one step and its parts (as floats, for logging).

    ``batch`` holds index tensors into the step's outputs:
    - ``auth_index`` (A,), ``mos`` (A,): authentic items and their normalised MOS;
    - ``syn_index`` (S,), ``factor_target`` (S, K): synthetic items and their labels;
    - ``pair_better``/``pair_worse`` (P,) positions into the outputs, ``pair_gap`` (P,)
      severity gaps, for the ranking constraints;
    - ``original_index`` (O,): pristine originals (for the optional floor prior);
    - ``level_target`` (S,): page-scale levels of the synthetic items, NaN if unknown.
    """
    scores = scores.float()
    parts: dict[str, torch.Tensor] = {}
    auth = batch["auth_index"]
    if auth.numel():
        s, m = scores[auth], batch["mos"].float()
        parts["mos"] = w.mos_weight * mos_regression_loss(s, m, w.mos, w.smooth_l1_beta)
        if w.plcc_weight:
            parts["plcc"] = w.plcc_weight * plcc_loss(s, m)
        if w.rank_weight:
            parts["rank"] = w.rank_weight * pairwise_rank_loss(s, m)
    if batch["pair_better"].numel() and w.synthetic_rank_weight:
        margin = w.synthetic_margin + w.margin_per_severity * batch["pair_gap"].float()
        parts["syn_rank"] = w.synthetic_rank_weight * margin_rank_loss(
            scores[batch["pair_better"]], scores[batch["pair_worse"]], margin
        )
    if batch["syn_index"].numel() and w.factor_weight:
        parts["factor"] = w.factor_weight * factor_loss(
            factors[batch["syn_index"]], batch["factor_target"], w.factor
        )
    if w.pristine_floor is not None and batch["original_index"].numel():
        parts["floor"] = w.pristine_floor_weight * floor_loss(
            scores[batch["original_index"]], float(w.pristine_floor)
        )
    if w.level_weight and batch.get("level_target") is not None and batch["syn_index"].numel():
        if w.level_prior is None:
            raise ValueError("loss.level_weight needs level_prior (fitted on the training MOS)")
        targets = batch["level_target"].float()
        known = ~torch.isnan(targets)
        if bool(known.any()):
            a, b = w.level_prior
            pred, goal = scores[batch["syn_index"]][known], a + b * targets[known]
            if w.level_weights:
                per_item = mos_regression_loss(pred, goal, w.mos, w.smooth_l1_beta,
                                               reduction="none")
                weight = level_item_weights(batch["level_distortion"][known], w.level_weights)
                parts["level"] = w.level_weight * (weight.to(per_item) * per_item).mean()
            else:
                parts["level"] = w.level_weight * mos_regression_loss(
                    pred, goal, w.mos, w.smooth_l1_beta)
    if not parts:
        total = scores.sum() * 0.0
    else:
        total = torch.stack(list(parts.values())).sum()
    return total, {k: float(v.detach()) for k, v in parts.items()}
