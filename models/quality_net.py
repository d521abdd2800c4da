"""QualityNet: a timm backbone, its global pooling and two MLP heads.

The score head predicts the quality score and the factor head the severity of each
distortion family in ``FACTOR_NAMES``, both through a sigmoid into [0, 1].

With ``pool_stages`` the heads also see the mean and standard deviation of chosen
intermediate stages (model v2's multi-level pooling, trained end to end): low stages carry
the texture and noise statistics that a global average of the last stage washes out.

With ``detail_view`` the network also sees a mosaic of native-resolution patches of the
photo (``iqa.inference.contract.DetailView``, model v2's detail view): the same backbone
runs on both views and the heads see both pooled vectors, so pixel-level blur, noise and
compression that the downscaled global view hides still reach them. ``forward`` then
takes ``(image, detail)``.

With ``detail_penalty`` the detail view does not reach the heads: its pooled features
feed a :class:`.penalty.DetailPenalty` instead, fitted after training on synthetic copies
(``iqa penalty``), and the MOS is the global view's minus that penalty. The rated photos'
loss never trains on the detail view, so it cannot pull their ranking.

With ``exposure_stats`` the heads also see statistics of the input pixels themselves
(:mod:`.exposure`: a luminance histogram, clipping, colour): ImageNet features are nearly
blind to exposure. They are computed inside ``forward`` from the normalised input, so the
inputs stay the same; the feature cache stores them beside the front's output, and
``forward_trainable`` then takes them as its last argument.

With ``calibrated`` the model also holds a monotone calibration from its MOS-scale score
onto the reference page's scale (fitted after training by ``iqa calibrate``);
``forward_calibrated`` returns ``(score, mos, factors)`` and is what the ONNX graph runs.
Training never sees it: ``forward`` returns the MOS-scale score.

The backbone splits into a frozen front (stem and the first ``freeze_blocks`` stages),
run by ``forward_frozen``, and a trainable rest, run by ``forward_trainable``. The trainer
caches the frozen front's output so each epoch only runs the rest.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from iqa.inference.contract import FACTOR_NAMES, DetailView, Preprocessing

from .backbones import BackboneError, backbone_preprocessing, create_backbone
from .calibration import MonotoneCalibration
from .exposure import EMBED_WIDTH, ExposureFeatures
from .heads import MLPHead
from .penalty import DetailPenalty
from .pooling import mean_std

# Attributes of timm's EfficientNet-style models (EfficientNet, -Lite, MixNet, ...) whose
# forward_features is conv_stem -> bn1 -> blocks -> conv_head -> bn2. Only these can be
# split into a frozen front and a trainable rest.
_SPLITTABLE = ("conv_stem", "bn1", "blocks", "conv_head", "bn2")


def _out_channels(block: nn.Module) -> int:
    """Channels a backbone stage puts out: its last convolution's (the block types differ
    between stages, e.g. DepthwiseSeparableConv ends in conv_pw, InvertedResidual in conv_pwl)."""
    return [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


class QualityNet(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        *,
        model_kwargs: dict,
        num_factors: int = len(FACTOR_NAMES),
        head_hidden: int = 256,
        dropout: float = 0.1,
        freeze_blocks: int = 0,
        pool_stages: tuple[int, ...] = (),
        pool_head: bool = True,
        calibrated: bool = False,
        detail_view: DetailView | None = None,
        preprocessing: Preprocessing | None = None,
        exposure_stats: bool = False,
        detail_penalty: bool = False,
        penalty_global: bool = False,
        penalty_gate: tuple[float, float] | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.splittable = all(hasattr(backbone, a) for a in _SPLITTABLE)
        num_stages = len(backbone.blocks) if self.splittable else 0
        if freeze_blocks and not self.splittable:
            raise BackboneError(
                f"freeze_blocks needs an EfficientNet-style backbone "
                f"({', '.join(_SPLITTABLE)}); {type(backbone).__name__} is not one"
            )
        if not 0 <= freeze_blocks <= num_stages:
            raise BackboneError(f"freeze_blocks must be in [0, {num_stages}], got {freeze_blocks}")
        self.freeze_blocks = freeze_blocks
        self.num_factors = num_factors
        self.pool_stages = tuple(sorted({int(s) for s in pool_stages}))
        # The cached front's output (blocks[freeze_blocks - 1]) is the lowest stage whose
        # map the trainable part sees; anything below it would need a second cache.
        lowest = max(freeze_blocks - 1, 0)
        if self.pool_stages and not self.splittable:
            raise BackboneError(f"pool_stages needs an EfficientNet-style backbone; "
                                f"{type(backbone).__name__} is not one")
        bad = [s for s in self.pool_stages if not lowest <= s < num_stages]
        if bad:
            raise BackboneError(f"pool_stages must be in [{lowest}, {num_stages - 1}] with "
                                f"freeze_blocks={freeze_blocks}, got {bad}")
        if not pool_head and not self.pool_stages:
            raise BackboneError("pool_head=False leaves the heads nothing to see: "
                                "it needs pool_stages")
        self.pool_head = bool(pool_head)
        # Blocks run after the front: all of them, or up to the highest pooled stage.
        self.blocks_run = num_stages if self.pool_head else max(self.pool_stages) + 1
        # Width of forward_head(pre_logits=True); differs from num_features in e.g. MobileNetV3.
        features = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        if not self.pool_head:
            features = 0
        # Stages differ in scale by orders of magnitude; each pooled level is normalised on
        # its own so that no stage drowns the others in the first linear layer.
        self.level_norms = nn.ModuleList(
            nn.LayerNorm(2 * _out_channels(backbone.blocks[s])) for s in self.pool_stages
        )
        features += sum(norm.normalized_shape[0] for norm in self.level_norms)
        self.detail_view = detail_view
        self.penalty = None
        self.penalty_global = bool(penalty_global)
        if detail_penalty and detail_view is None:
            raise BackboneError("detail_penalty needs a detail view (detail_grid)")
        if penalty_global and not detail_penalty:
            raise BackboneError("penalty_global needs detail_penalty")
        if detail_penalty:
            # Fixed norms: the penalty is a closed-form fit, so nothing here may train.
            self.detail_norms = nn.ModuleList(
                nn.LayerNorm(norm.normalized_shape[0], elementwise_affine=False)
                for norm in self.level_norms)
            # With penalty_global it also reads the global view's vector, so that it can
            # learn what the detail view shows *beyond* the global view.
            self.penalty = DetailPenalty(features * (2 if penalty_global else 1),
                                         gate=penalty_gate)
            if penalty_gate is not None and not detail_view.native_scale:
                raise BackboneError("a gated penalty needs a detail view with native_scale")
        elif detail_view is not None:
            # Its own norms: the mosaic's statistics are not the thumbnail's.
            self.detail_norms = nn.ModuleList(
                nn.LayerNorm(norm.normalized_shape[0]) for norm in self.level_norms)
            features *= 2
        self.preprocessing = preprocessing or backbone_preprocessing(backbone)
        self.exposure = None
        if exposure_stats:
            self.exposure = ExposureFeatures(self.preprocessing.mean, self.preprocessing.std)
            features += EMBED_WIDTH
        self.score_head = MLPHead(features, head_hidden, 1, dropout)
        self.factor_head = MLPHead(features, head_hidden, num_factors, dropout) if num_factors else None
        # Identity until fitted; a buffer, so it never trains and travels in the state_dict.
        self.calibration = MonotoneCalibration() if calibrated else None
        self.model_kwargs = dict(model_kwargs)
        for param in self.frozen_modules().parameters():
            param.requires_grad_(False)
        for param in self.unused_modules().parameters():
            # Never run, so never trained: frozen, they stay out of the optimiser and of
            # the "trainable" count, and DDP finds no parameter without a gradient.
            param.requires_grad_(False)
        self.train(True)

    @property
    def factor_names(self) -> tuple[str, ...]:
        if self.num_factors == len(FACTOR_NAMES):
            return FACTOR_NAMES
        return tuple(f"factor_{i}" for i in range(self.num_factors))

    def frozen_modules(self) -> nn.Sequential:
        """The frozen front of the backbone, in forward order (empty if none)."""
        if not self.freeze_blocks:
            return nn.Sequential()
        b = self.backbone
        return nn.Sequential(b.conv_stem, b.bn1, *b.blocks[: self.freeze_blocks])

    def unused_modules(self) -> nn.Sequential:
        """Backbone parts a ``pool_head=False`` model never runs: the blocks above its
        highest pooled stage, the 1x1 head convolution and its norm (empty otherwise).
        They stay in the state_dict, so checkpoints keep the backbone's layout."""
        if self.pool_head:
            return nn.Sequential()
        b = self.backbone
        return nn.Sequential(*b.blocks[self.blocks_run :], b.conv_head, b.bn2)

    def trainable_modules(self) -> nn.Sequential:
        """The backbone after the frozen front, up to the final feature map."""
        b = self.backbone
        if not self.splittable:
            return nn.Sequential()
        front = [b.conv_stem, b.bn1] if not self.freeze_blocks else []
        return nn.Sequential(*front, *b.blocks[self.freeze_blocks :], b.conv_head, b.bn2)

    def train(self, mode: bool = True) -> QualityNet:
        super().train(mode)
        # Frozen BatchNorm layers keep their ImageNet statistics: cached features must
        # not drift with the batches the model happens to see.
        self.frozen_modules().eval()
        return self

    def _frozen(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.frozen_modules():
            x = module(x)
        return x

    def forward_frozen(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the frozen front, without autograd (the input itself if nothing is frozen)."""
        with torch.no_grad():
            return self._frozen(x)

    def _pooled(self, feats: torch.Tensor, norms: nn.ModuleList) -> torch.Tensor:
        """One view's ``forward_frozen`` output -> the vector the heads see."""
        levels: list[torch.Tensor] = []
        if self.pool_stages:
            x = self._blocks_pooling(feats, levels, norms)
        elif self.splittable:
            x = self.trainable_modules()(feats)
        else:
            x = self.backbone.forward_features(feats)
        # timm's own pooling: global average for CNNs at any input size, token pooling
        # for transformers.
        if not self.pool_head:
            return torch.cat(levels, dim=1)
        pooled = self.backbone.forward_head(x, pre_logits=True)
        return torch.cat([*levels, pooled], dim=1) if levels else pooled

    def forward_trainable(self, feats: torch.Tensor, *extra: torch.Tensor,
                          scale: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """The rest of the network on ``forward_frozen`` output: (score (N,), factors (N, K)).

        ``extra`` is what the model has besides the global view, in this order: the detail
        view's ``forward_frozen`` output, then the input's ``exposure.stats`` (the order the
        feature cache stores them in). ``scale`` is the ``detail_scale`` input of a model
        whose penalty is gated by it.
        """
        wanted = (self.detail_view is not None) + (self.exposure is not None)
        if len(extra) != wanted:
            raise ValueError(f"this model takes {wanted} input(s) besides the global view's "
                             f"features (detail view: {self.detail_view is not None}, "
                             f"exposure statistics: {self.exposure is not None}), got {len(extra)}")
        pooled = global_pooled = self._pooled(feats, self.level_norms)
        if self.detail_view is not None and self.penalty is None:
            pooled = torch.cat([pooled, self._pooled(extra[0], self.detail_norms)], dim=1)
        if self.exposure is not None:
            pooled = torch.cat([pooled, self.exposure(extra[-1])], dim=1)
        score = self.score_head(pooled).squeeze(-1)
        if self.penalty is not None:
            # Clamped so that `mos` stays in [0, 1], as the contract promises.
            penalty = self.penalty(self.penalty_features(extra[0], global_pooled), scale)
            score = (score - penalty).clamp(min=0.0)
        if self.factor_head is None:
            factors = pooled.new_zeros((pooled.shape[0], 0))
        else:
            factors = self.factor_head(pooled)
        return score, factors

    def penalty_features(self, detail_feats: torch.Tensor,
                         global_pooled: torch.Tensor | None = None) -> torch.Tensor:
        """The vector a ``detail_penalty`` reads: the detail view's pooled features (from
        its ``forward_frozen`` output), then the global view's pooled vector if the
        penalty reads it too (``penalty_global``)."""
        detail = self.detail_features(detail_feats)
        if not self.penalty_global:
            return detail
        if global_pooled is None:
            raise ValueError("this penalty also reads the global view's pooled vector")
        return torch.cat([detail, global_pooled], dim=1)

    def detail_features(self, detail_feats: torch.Tensor) -> torch.Tensor:
        """The detail view's pooled vector, from its ``forward_frozen`` output."""
        return self._pooled(detail_feats, self.detail_norms)

    def global_features(self, feats: torch.Tensor) -> torch.Tensor:
        """The global view's pooled vector, from its ``forward_frozen`` output."""
        return self._pooled(feats, self.level_norms)

    def _blocks_pooling(self, feats: torch.Tensor, levels: list[torch.Tensor],
                        level_norms: nn.ModuleList) -> torch.Tensor | None:
        """trainable_modules() stage by stage, appending each pooled stage to ``levels``;
        the head convolution's map, or None for a ``pool_head=False`` model, which stops
        at its highest pooled stage."""
        b = self.backbone
        x = feats if self.freeze_blocks else b.bn1(b.conv_stem(feats))
        norms = dict(zip(self.pool_stages, level_norms, strict=True))
        first = self.freeze_blocks
        if first - 1 in norms:
            levels.append(norms[first - 1](torch.cat(mean_std(x), dim=1)))
        for i in range(first, self.blocks_run):
            x = b.blocks[i](x)
            if i in norms:
                levels.append(norms[i](torch.cat(mean_std(x), dim=1)))
        return b.bn2(b.conv_head(x)) if self.pool_head else None

    def forward(self, x: torch.Tensor, detail: torch.Tensor | None = None,
                scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # No no_grad here: frozen weights need no gradient anyway, and keeping the graph
        # plain lets the ONNX exporters trace straight through.
        extra = [] if detail is None else [self._frozen(detail)]
        if self.exposure is not None:
            extra.append(self.exposure.stats(x))
        return self.forward_trainable(self._frozen(x), *extra, scale=scale)

    def forward_calibrated(self, x: torch.Tensor, detail: torch.Tensor | None = None,
                           scale: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(score on the page's scale, MOS-scale score, factors): the exported outputs."""
        if self.calibration is None:
            raise ValueError("this model has no calibration (create it with calibrated=True)")
        mos, factors = self(x, detail, scale)
        return self.calibration(mos), mos, factors

    def param_groups(
        self, lr: float, backbone_lr_mult: float = 0.1, weight_decay: float = 0.01
    ) -> list[dict]:
        """Optimizer groups: heads at ``lr``, trainable backbone at ``lr * backbone_lr_mult``.

        Norm weights and biases (every tensor with fewer than 2 dims) get no weight decay.
        """
        heads = [self.score_head, *self.level_norms, *getattr(self, "detail_norms", [])]
        heads += [self.exposure] if self.exposure is not None else []
        heads += [self.factor_head] if self.factor_head is not None else []
        sections = {
            "head": (lr, [p for h in heads for p in h.parameters()]),
            "backbone": (lr * backbone_lr_mult, list(self.backbone.parameters())),
        }
        groups = []
        for name, (group_lr, params) in sections.items():
            trainable = [p for p in params if p.requires_grad]
            decay = [p for p in trainable if p.ndim >= 2]
            no_decay = [p for p in trainable if p.ndim < 2]
            for suffix, ps, wd in (("", decay, weight_decay), ("_no_decay", no_decay, 0.0)):
                if ps:
                    groups.append({"name": name + suffix, "params": ps, "lr": group_lr,
                                   "weight_decay": wd})
        return groups


def create_model(
    backbone: str = "tf_efficientnet_lite0",
    pretrained: bool | str | os.PathLike = True,
    num_factors: int = len(FACTOR_NAMES),
    head_hidden: int = 256,
    dropout: float = 0.1,
    freeze_blocks: int = 0,
    pool_stages: tuple[int, ...] | list[int] = (),
    pool_head: bool = True,
    calibrated: bool = False,
    detail_grid: int | None = None,
    detail_patch: int = 32,
    detail_kind: str = "grid_fragments",
    detail_candidates: int = 1,
    exposure_stats: bool = False,
    detail_penalty: bool = False,
    penalty_global: bool = False,
    penalty_gate: tuple[float, float] | list[float] | None = None,
) -> QualityNet:
    """Build a QualityNet. ``pretrained``: True = bundled offline ImageNet weights
    (see ``BACKBONES``), False = random init, or a path to a .pth/.safetensors state_dict.
    ``pool_stages``: blocks whose mean/std the heads see besides the last stage (empty =
    v1's single global average). ``pool_head``: the heads also see the 1x1 head
    convolution's global average (False: the pooled stages only). ``calibrated``: hold a
    MOS -> page-scale calibration.
    ``detail_grid``: also see a ``detail_grid`` x ``detail_grid`` mosaic of native
    ``detail_patch``-px patches (None = the global view only, as v1), placed as
    ``detail_kind`` says (:class:`~iqa.inference.contract.DetailView`; ``detail_candidates``
    per axis for ``textured_fragments``). ``exposure_stats``:
    the heads also see statistics of the input pixels (:mod:`.exposure`).
    ``detail_penalty``: the detail view feeds a post-hoc penalty instead of the heads
    (:mod:`.penalty`; needs ``detail_grid``); with ``penalty_global`` the penalty also
    reads the global view's pooled features; with ``penalty_gate`` (low, high) it is
    weighed by the photo's native scale (:class:`.penalty.DetailPenalty`), which the model
    then takes as a third input, ``detail_scale``.
    """
    model_kwargs = {
        "backbone": backbone,
        "num_factors": num_factors,
        "head_hidden": head_hidden,
        "dropout": dropout,
        "freeze_blocks": freeze_blocks,
    }
    if pool_stages:
        # Only when set, so v1's checkpoints and ONNX metadata keep their exact kwargs.
        model_kwargs["pool_stages"] = [int(s) for s in pool_stages]
    if not pool_head:
        model_kwargs["pool_head"] = False
    if calibrated:
        model_kwargs["calibrated"] = True
    if exposure_stats:
        model_kwargs["exposure_stats"] = True
    if detail_penalty:
        model_kwargs["detail_penalty"] = True
    if penalty_global:
        model_kwargs["penalty_global"] = True
    if penalty_gate is not None:
        model_kwargs["penalty_gate"] = [float(g) for g in penalty_gate]
    net = create_backbone(backbone, pretrained=pretrained)
    detail_view = None
    if detail_grid:
        model_kwargs.update(detail_grid=int(detail_grid), detail_patch=int(detail_patch))
        if detail_kind != "grid_fragments":
            # Only when set, so grid models' checkpoints keep the kwargs they had.
            model_kwargs.update(detail_kind=detail_kind,
                                detail_candidates=int(detail_candidates))
        prep = backbone_preprocessing(net)
        detail_view = DetailView(grid=int(detail_grid), patch=int(detail_patch),
                                 mean=prep.mean, std=prep.std,
                                 native_scale=penalty_gate is not None, kind=detail_kind,
                                 candidates=int(detail_candidates))
    return QualityNet(
        net,
        model_kwargs=model_kwargs,
        num_factors=num_factors,
        head_hidden=head_hidden,
        dropout=dropout,
        freeze_blocks=freeze_blocks,
        pool_stages=tuple(pool_stages),
        pool_head=pool_head,
        calibrated=calibrated,
        detail_view=detail_view,
        exposure_stats=exposure_stats,
        detail_penalty=detail_penalty,
        penalty_global=penalty_global,
        penalty_gate=tuple(penalty_gate) if penalty_gate is not None else None,
    )
