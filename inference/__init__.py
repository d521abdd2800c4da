"""iqa.inference: score photos with an ONNX quality model. Needs no torch."""

import os

# onnxruntime's own usage telemetry looks up mobile.events.data.microsoft.com about 15 s
# after a session starts (seen with 1.32 on Linux: `iqa serve` did, short `iqa score`
# runs end first). Photos are scored where they are, and nothing about them or us should
# leave the machine. Its native code reads the variable when onnxruntime is imported, so it
# is set here, before any module of ours imports it; ORT_DISABLE_TELEMETRY=0 opts back in.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

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
