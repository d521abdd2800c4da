"""Model v2: a frozen backbone seen through two views, multi-level pooling, small heads.

- The **global view** is the photo downscaled to the contract's shorter side (exposure,
  light, composition, blur that is visible at a glance).
- The **detail view** is a mosaic of native-resolution patches
  (:class:`iqa.inference.contract.DetailView`): pixel-level blur, noise and compression
  that the downscale hides.

Both views run through the same frozen ImageNet backbone. The mean and standard
deviation of several stages' feature maps are pooled (low stages carry texture and noise
statistics, high stages content) and standardised with statistics fitted on the training
features. A linear head predicts MOS; a monotone piecewise-linear calibration maps it
onto the reference page's scale as ``score``; another linear head predicts the factor
severities. Everything is one torch graph, so it exports to one ONNX file.

Keeping the backbone frozen is what makes this trainable on 2 CPU cores: every photo's
pooled features are computed once and cached, and the heads train in seconds, which pays
for k-fold cross-validation of every recipe (MODEL_CARD.md).
"""

from __future__ import annotations

import torch
from torch import nn

from iqa.inference.contract import FACTOR_NAMES, DetailView, Preprocessing

from .backbones import backbone_preprocessing, create_backbone
from .calibration import MonotoneCalibration
from .pooling import mean_std

# Stages of an EfficientNet(-Lite) whose outputs are pooled: blocks[i] for i in
# DEFAULT_STAGES, plus the 1x1 conv head ("head"). Stage 0 (16 channels at stride 2) only
# adds cost; see MODEL_CARD.md for the ablation.
DEFAULT_STAGES: tuple[int, ...] = (1, 2, 3, 4, 5, 6)


class MultiLevelPooling(nn.Module):
    """Frozen EfficientNet-style backbone -> concatenated mean and std of chosen stages."""

    def __init__(self, backbone: nn.Module, stages: tuple[int, ...] = DEFAULT_STAGES,
                 include_head: bool = True):
        super().__init__()
        self.backbone = backbone
        self.stages = tuple(int(s) for s in stages)
        self.include_head = include_head
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> MultiLevelPooling:
        # BatchNorm keeps its ImageNet statistics: cached features must never drift.
        super().train(mode)
        self.backbone.eval()
        return self

    @property
    def num_features(self) -> int:
        chans = [self.backbone.blocks[s][-1].conv_pwl.out_channels for s in self.stages]
        head = self.backbone.num_features if self.include_head else 0
        return 2 * (sum(chans) + head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.bn1(b.conv_stem(x))
        pooled: list[torch.Tensor] = []
        for i, block in enumerate(b.blocks):
            x = block(x)
            if i in self.stages:
                pooled += mean_std(x)
        if self.include_head:
            pooled += mean_std(b.bn2(b.conv_head(x)))
        return torch.cat(pooled, dim=1)


class QualityHeads(nn.Module):
    """Everything after the pooled features: standardisation, linear MOS and factor heads,
    calibration. Fitted in closed form (ridge) on cached features by
    :mod:`iqa.training.heads`.

    Linear heads, not MLPs: on the 871 rated photos a 256-unit MLP ensemble gained 0.008
    SRCC over ridge in 5-fold CV (within one standard deviation), cost minutes instead of
    seconds per fold on 2 cores and 45 MB of weights (MODEL_CARD.md).
    """

    def __init__(self, in_features: int, *, num_factors: int = len(FACTOR_NAMES)):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(in_features))
        self.register_buffer("feature_std", torch.ones(in_features))
        self.mos_head = nn.Linear(in_features, 1)
        self.factor_head = nn.Linear(in_features, num_factors) if num_factors else None
        self.calibration = MonotoneCalibration()
        self.num_factors = num_factors

    def forward(self, feats: torch.Tensor):
        z = (feats - self.feature_mean) / self.feature_std
        mos = self.mos_head(z).squeeze(-1).clamp(0.0, 1.0)
        score = self.calibration(mos)
        if self.factor_head is None:
            factors = z.new_zeros((z.shape[0], 0))
        else:
            factors = self.factor_head(z).clamp(0.0, 1.0)
        return score, mos, factors


class MultiViewQualityNet(nn.Module):
    """forward(image, detail) -> (score (N,), mos (N,), factors (N, K))."""

    def __init__(self, backbone: nn.Module, *, model_kwargs: dict,
                 stages: tuple[int, ...] = DEFAULT_STAGES, detail_view: DetailView | None = None,
                 preprocessing: Preprocessing | None = None,
                 num_factors: int = len(FACTOR_NAMES)):
        super().__init__()
        self.pooling = MultiLevelPooling(backbone, stages)
        self.preprocessing = preprocessing or backbone_preprocessing(backbone)
        mean, std = self.preprocessing.mean, self.preprocessing.std
        self.detail_view = detail_view or DetailView(mean=mean, std=std)
        self.heads = QualityHeads(2 * self.pooling.num_features, num_factors=num_factors)
        self.model_kwargs = dict(model_kwargs)

    @property
    def num_factors(self) -> int:
        return self.heads.num_factors

    @property
    def factor_names(self) -> tuple[str, ...]:
        if self.num_factors == len(FACTOR_NAMES):
            return FACTOR_NAMES
        return tuple(f"factor_{i}" for i in range(self.num_factors))

    def features(self, image: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        """Pooled features of both views, concatenated: what the feature cache stores."""
        return torch.cat([self.pooling(image), self.pooling(detail)], dim=1)

    def forward(self, image: torch.Tensor, detail: torch.Tensor):
        return self.heads(self.features(image, detail))


def create_multiview_model(backbone: str = "tf_efficientnet_lite0", pretrained=True, *,
                           stages: tuple[int, ...] = DEFAULT_STAGES, detail_grid: int = 7,
                           detail_patch: int = 32, shorter_side: int | None = None,
                           num_factors: int = len(FACTOR_NAMES)) -> MultiViewQualityNet:
    """Build a v2 model; ``pretrained`` as in :func:`iqa.models.create_model`."""
    net = create_backbone(backbone, pretrained=pretrained)
    prep = backbone_preprocessing(net)
    if shorter_side is not None:
        from dataclasses import replace

        prep = replace(prep, shorter_side=int(shorter_side))
    view = DetailView(grid=detail_grid, patch=detail_patch, mean=prep.mean, std=prep.std)
    kwargs = {"backbone": backbone, "stages": list(stages), "detail_grid": detail_grid,
              "detail_patch": detail_patch, "shorter_side": prep.shorter_side,
              "num_factors": num_factors, "architecture": "multiview"}
    return MultiViewQualityNet(net, model_kwargs=kwargs, stages=tuple(stages), detail_view=view,
                               preprocessing=prep, num_factors=num_factors)
