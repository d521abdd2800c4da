"""The HTTP API's stable error table: every failure maps to one (type, code, status).

Types are the hosted API's vocabulary (argument_error, credentials_error, media_error,
request_error, api_error, unknown_error). Codes are integers that never change meaning
once released; docs/http-api.md lists the same table, and a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import (
    ImageDecodeError,
    ImageTooLargeError,
    ImageTooSmallError,
    IQAError,
    ModelLoadError,
    TruncatedImageError,
)
from ..fetch import (
    DownloadTooLargeError,
    FetchConnectionError,
    FetchError,
    FetchTimeoutError,
    ForbiddenAddressError,
    InvalidURLError,
    TooManyRedirectsError,
    UnsupportedContentTypeError,
    UpstreamStatusError,
)


class APIError(IQAError):
    """An error the server itself detects (arguments, auth, limits, load)."""

    error_type = "request_error"
    http_status = 400


class InvalidCredentialsError(APIError):
    error_type = "credentials_error"
    http_status = 401


class MissingMediaError(APIError):
    error_type = "argument_error"


class ConflictingMediaError(APIError):
    error_type = "argument_error"


class UnknownModelError(APIError):
    error_type = "argument_error"


class InvalidParameterError(APIError):
    error_type = "argument_error"
    http_status = 422


class MalformedBodyError(APIError):
    error_type = "request_error"


class BodyTimeoutError(APIError):
    """The client sent its headers or body too slowly (slow-client limits)."""

    error_type = "request_error"
    http_status = 408


class BadHTTPRequestError(APIError):
    """The HTTP parser refused the request line or headers (garbage, or too large)."""

    error_type = "request_error"


class EmptyMediaError(APIError):
    error_type = "media_error"


class UploadTooLargeError(APIError):
    error_type = "media_error"
    http_status = 413


class RouteNotFoundError(APIError):
    error_type = "request_error"
    http_status = 404


class MethodNotAllowedError(APIError):
    error_type = "request_error"
    http_status = 405


class ServerBusyError(APIError):
    """Every worker is busy and the queue is full: come back later (Retry-After)."""

    error_type = "api_error"
    http_status = 503


class ProcessingTimeoutError(APIError):
    error_type = "api_error"
    http_status = 503


class ScoringError(APIError):
    """The model failed on an image it accepted (a bug or a broken model)."""

    error_type = "api_error"
    http_status = 500


@dataclass(frozen=True)
class ErrorSpec:
    exception: type[BaseException]
    type: str
    code: int
    status: int
    meaning: str


# Order matters only for subclasses: the first entry matching the exception's class
# hierarchy (most derived first, via the MRO) wins.
ERROR_TABLE: tuple[ErrorSpec, ...] = (
    ErrorSpec(InvalidCredentialsError, "credentials_error", 1, 401,
              "api_user/api_secret missing or wrong (only when keys are configured)"),
    ErrorSpec(MissingMediaError, "argument_error", 10, 400,
              "neither a `media` file nor a `url` was given"),
    ErrorSpec(ConflictingMediaError, "argument_error", 11, 400,
              "both a `media` file and a `url` were given"),
    ErrorSpec(UnknownModelError, "argument_error", 12, 400,
              "`models` is missing or names a model other than `quality`"),
    ErrorSpec(InvalidURLError, "argument_error", 13, 400,
              "`url` is malformed, too long, or not http/https (file://, ftp://, ...)"),
    ErrorSpec(ForbiddenAddressError, "argument_error", 14, 400,
              "`url` (or a redirect) points at a private, loopback, link-local, "
              "multicast or reserved address"),
    ErrorSpec(InvalidParameterError, "argument_error", 15, 422,
              "a parameter has an invalid value"),
    ErrorSpec(MalformedBodyError, "request_error", 16, 400,
              "the request body is not valid multipart or form data"),
    ErrorSpec(BodyTimeoutError, "request_error", 17, 408,
              "the request headers or body arrived too slowly (--header-timeout, "
              "--body-timeout)"),
    ErrorSpec(BadHTTPRequestError, "request_error", 18, 400,
              "the request line or headers are not valid HTTP, or are too large"),
    ErrorSpec(ImageDecodeError, "media_error", 20, 415,
              "not an image in a format we decode (text, HTML, SVG, PDF, ...)"),
    ErrorSpec(TruncatedImageError, "media_error", 21, 400,
              "the image is truncated"),
    ErrorSpec(ImageTooSmallError, "media_error", 22, 400,
              "the image is too small to judge (e.g. 1x1)"),
    ErrorSpec(ImageTooLargeError, "media_error", 23, 413,
              "the image has more pixels than --max-pixels (decompression-bomb guard)"),
    ErrorSpec(UploadTooLargeError, "media_error", 24, 413,
              "the upload is larger than --max-upload-mb"),
    ErrorSpec(DownloadTooLargeError, "media_error", 25, 413,
              "the file at `url` is larger than --max-upload-mb"),
    ErrorSpec(UnsupportedContentTypeError, "media_error", 26, 415,
              "the file at `url` is served with a non-image content type"),
    ErrorSpec(EmptyMediaError, "media_error", 27, 400,
              "the uploaded or downloaded file is empty"),
    ErrorSpec(UpstreamStatusError, "media_error", 30, 502,
              "the server at `url` answered with a non-2xx status (e.g. 404)"),
    ErrorSpec(FetchConnectionError, "media_error", 31, 502,
              "`url` could not be fetched: DNS, connection, TLS or protocol failure"),
    ErrorSpec(TooManyRedirectsError, "media_error", 32, 502,
              "`url` redirected too many times (more than 3)"),
    ErrorSpec(FetchTimeoutError, "media_error", 33, 504,
              "fetching `url` timed out"),
    ErrorSpec(FetchError, "media_error", 34, 502,
              "`url` could not be fetched (other reasons)"),
    ErrorSpec(RouteNotFoundError, "request_error", 40, 404,
              "no such endpoint"),
    ErrorSpec(MethodNotAllowedError, "request_error", 41, 405,
              "the endpoint does not accept this HTTP method"),
    ErrorSpec(APIError, "request_error", 49, 400,
              "any other problem with the request (the HTTP status says which)"),
    ErrorSpec(ServerBusyError, "api_error", 50, 503,
              "all workers busy and the queue full; retry after `Retry-After` seconds"),
    ErrorSpec(ProcessingTimeoutError, "api_error", 51, 503,
              "the request took longer than --request-timeout"),
    ErrorSpec(ScoringError, "api_error", 60, 500,
              "the model failed on the image"),
    ErrorSpec(ModelLoadError, "api_error", 61, 500,
              "the model is not usable"),
    ErrorSpec(IQAError, "unknown_error", 99, 500,
              "any other error (a bug: please report it)"),
)

_BY_CLASS = {spec.exception: spec for spec in ERROR_TABLE}
UNKNOWN = _BY_CLASS[IQAError]


def spec_for(exc: BaseException) -> ErrorSpec:
    """The table entry for an exception (its most derived listed class), else `unknown`."""
    for cls in type(exc).__mro__:
        if cls in _BY_CLASS:
            return _BY_CLASS[cls]
    return UNKNOWN
