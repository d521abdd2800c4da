"""Typed errors for everything that can go wrong between bytes and a score.

The HTTP server maps each class to a stable (type, code, status) triple, and the CLI
prints its message; callers catch ``IQAError`` to handle them all.
"""

from __future__ import annotations


class IQAError(Exception):
    """Base class of every error this package raises on purpose."""

    error_type = "internal_error"
    http_status = 500


class ImageDecodeError(IQAError):
    """The bytes are not an image we can decode (text, SVG, unknown format)."""

    error_type = "media_error"
    http_status = 415


class TruncatedImageError(ImageDecodeError):
    """The image stream ends early or is corrupt."""

    http_status = 400


class ImageTooLargeError(IQAError):
    """More pixels (or bytes) than the configured limit: a possible decompression bomb."""

    error_type = "media_error"
    http_status = 413


class ImageTooSmallError(IQAError):
    """Too few pixels to judge quality (for example 1x1)."""

    error_type = "media_error"
    http_status = 400


class ModelLoadError(IQAError):
    """The ONNX file is missing, unreadable, or does not follow the contract."""

    error_type = "model_error"
    http_status = 500
