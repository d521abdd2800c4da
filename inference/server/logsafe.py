"""Make client-chosen text safe to log: no secrets, no forged lines, no terminal escapes.

Clients choose file names, URLs, paths and query strings, and all of them reach the log.
A line feed in a file name would forge a log line and an ANSI escape would rewrite the
operator's terminal, so control characters are escaped. The hosted API's dialect puts
``api_secret`` in the query string and URLs may carry ``user:pass@``, so both are
masked: in our own messages, in uvicorn's access log and in httpx's request log.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from urllib.parse import quote, unquote_plus

MASK = "***"
# Query parameters whose values are credentials. Matched on the lower-cased name, as a
# substring, so `X-Amz-Signature`, `access_token` and `api_secret` are all caught.
SECRET_NAMES = ("secret", "password", "passwd", "token", "signature", "sig", "key", "auth",
                "credential")
# scheme://user[:password]@ in any text, the URL percent-encoded or not.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*(?:://|%3A%2F%2F))[^\s/@?#]*?(@|%40)")
_SECRET_PARAM = re.compile(
    r"(?i)((?:^|[?&;\s])[^=&\s]*(?:" + "|".join(SECRET_NAMES) + r")[^=&\s]*=)[^&\s#]*"
)


def escape_control(text: str) -> str:
    r"""Escape control and format characters (\n, \r, ESC, U+2028, bidi overrides...)."""
    out = []
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def redact(text: str) -> str:
    """Mask URL user-info and secret-looking query parameters anywhere in ``text``."""
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{MASK}{m.group(2)}", text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}{MASK}", text)


def safe(text: object) -> str:
    """What may go into a log line: redacted and escaped, always one line."""
    return escape_control(redact(str(text)))


def redact_query(query: str) -> str:
    """A query string with secret values masked; `url=` values lose their user-info."""
    parts = []
    for pair in query.split("&"):
        name, sep, value = pair.partition("=")
        plain_name = unquote_plus(name).lower()
        if sep and any(s in plain_name for s in SECRET_NAMES):
            value = MASK
        elif sep:
            plain = unquote_plus(value)
            masked = redact(plain)
            if masked != plain:
                value = quote(masked, safe=":/@*")
        parts.append(f"{name}{sep}{value}")
    return "&".join(parts)


class AccessLogFilter(logging.Filter):
    """Masks secrets in uvicorn's access log and escapes the path, keeping the rest.

    uvicorn logs ``'%s - "%s %s HTTP/%s" %d'`` with the path and query string as the
    third argument; the path there is already percent-decoded, so it can hold a line feed.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path, sep, query = args[2].partition("?")
            shown = escape_control(path) + (sep + escape_control(redact_query(query)) if sep
                                            else "")
            record.args = (*args[:2], shown, *args[3:])
        return True


class RedactingFilter(logging.Filter):
    """Masks secrets in every argument of a record (httpx logs each fetched URL at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(safe(a) if isinstance(a, str) or _is_url(a) else a
                                for a in record.args)
        elif isinstance(record.msg, str) and not record.args:
            record.msg = safe(record.msg)
        return True


def _is_url(value: object) -> bool:
    return type(value).__name__ == "URL"  # httpx.URL, without importing httpx here


_FILTERS = (("uvicorn.access", AccessLogFilter), ("httpx", RedactingFilter),
            ("httpcore", RedactingFilter))


def install_log_filters() -> None:
    """Attach the filters once per process (idempotent)."""
    for name, kind in _FILTERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
