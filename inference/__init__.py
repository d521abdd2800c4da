"""iqa.inference: score photos with an ONNX quality model. Needs no torch."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("iqa")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from .contract import BUCKETS, DEFAULT_THRESHOLD, FACTOR_NAMES, Preprocessing, bucket_for
from .errors import (
    IQAError,
    ImageDecodeError,
    ImageTooLargeError,
    ImageTooSmallError,
    ModelLoadError,
    TruncatedImageError,
)
from .model import QualityModel, QualityResult, default_model_path

__all__ = [
    "BUCKETS",
    "DEFAULT_THRESHOLD",
    "FACTOR_NAMES",
    "IQAError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "ImageTooSmallError",
    "ModelLoadError",
    "Preprocessing",
    "QualityModel",
    "QualityResult",
    "TruncatedImageError",
    "__version__",
    "bucket_for",
    "default_model_path",
]
