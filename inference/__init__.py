"""iqa.inference: score photos with an ONNX quality model. Needs no torch."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("iqa")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from .contract import BUCKETS, DEFAULT_THRESHOLD, FACTOR_NAMES, Preprocessing, bucket_for
from .decode import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, IMAGE_EXTENSIONS, decode_image
from .errors import (
    ImageDecodeError,
    ImageTooLargeError,
    ImageTooSmallError,
    IQAError,
    ModelLoadError,
    TruncatedImageError,
)
from .model import QualityModel, QualityResult, default_model_path

__all__ = [
    "BUCKETS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "DEFAULT_THRESHOLD",
    "FACTOR_NAMES",
    "IMAGE_EXTENSIONS",
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
    "decode_image",
    "default_model_path",
]
