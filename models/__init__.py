"""iqa.models: quality networks on timm backbones with offline ImageNet weights."""

from .backbones import BACKBONES, BackboneError, create_backbone
from .quality_net import QualityNet, create_model

__all__ = ["BACKBONES", "BackboneError", "QualityNet", "create_backbone", "create_model"]
