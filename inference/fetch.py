"""Download an image from a URL without letting the URL reach private networks.

A scoring server that fetches URLs for its clients is a classic SSRF target: a URL such
as ``http://169.254.169.254/latest/meta-data/`` or a hostname that resolves to
``10.0.0.1`` would make the server probe its own network. The guard lives at the
connection layer, not in a URL pre-check, so it cannot be sidestepped by redirects or
by DNS answers that change between check and use:

* every TCP connection httpx opens goes through :class:`GuardedBackend`, which resolves
  the host itself, refuses the host if ANY resolved address is not public, and then
  connects to an address it checked (the IP is pinned: no second DNS lookup happens);
* redirects are followed here, hop by hop, so each hop is validated and connected to
  through the same guard;
* the body is streamed raw (never decompressed) with a byte limit, a compressed
  ``Content-Encoding`` is refused, and connect, read and total timeouts apply.

Only ``http`` and ``https`` URLs are fetched. TLS certificates are verified against the
URL's hostname as usual (httpcore sends SNI for the hostname while the socket goes to
the pinned IP).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass

import httpcore
import httpx

from .errors import IQAError

logger = logging.getLogger(__name__)

ALLOWED_SCHEMES = ("http", "https")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Content types that may hold an image. S3 and many CDNs serve unknown uploads as
# octet-stream, so it is let through and the decoder has the last word.
GENERIC_BINARY_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})
# image/* types that are not raster images we can score.
NON_RASTER_IMAGE_TYPES = frozenset({"image/svg+xml"})
# RFC 6052 well-known NAT64 prefix: 64:ff9b::a.b.c.d reaches IPv4 a.b.c.d.
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
MiB = 1024 * 1024


# --------------------------------------------------------------------------- errors
class FetchError(IQAError):
    """The media at a URL could not be fetched (base class)."""

    error_type = "media_error"
    http_status = 502


class InvalidURLError(FetchError):
    """Not a well-formed http(s) URL (file://, ftp://, no host, too long)."""

    error_type = "argument_error"
    http_status = 400


class ForbiddenAddressError(FetchError):
    """The URL's host is, or resolves to, a private/loopback/link-local/... address."""

    error_type = "argument_error"
    http_status = 400


class FetchConnectionError(FetchError):
    """DNS failure, refused connection, TLS failure or a broken response."""


class UpstreamStatusError(FetchError):
    """The URL answered with a non-2xx HTTP status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class TooManyRedirectsError(FetchError):
    """More redirects than the policy allows."""


class FetchTimeoutError(FetchError):
    """Connecting, reading or the whole download took too long."""

    http_status = 504


class DownloadTooLargeError(FetchError):
    """The body is larger than the policy's byte limit."""

    error_type = "media_error"
    http_status = 413


class ContentEncodingError(FetchError):
    """The URL answered with a compressed Content-Encoding we did not accept."""


class UnsupportedContentTypeError(FetchError):
    """The URL serves something that is not a raster image (HTML, JSON, SVG...)."""

    error_type = "media_error"
    http_status = 415


# --------------------------------------------------------------------------- policy
@dataclass(frozen=True)
class FetchPolicy:
    """What a URL fetch may do. The defaults are safe for a public-facing server."""

    # Allow every address, private ones included (only for trusted, internal use).
    allow_private: bool = False
    # Networks (CIDR strings) allowed even though they are not public, e.g. an internal
    # image store: ("10.20.0.0/16",). Narrower than allow_private.
    allowed_networks: tuple[str, ...] = ()
    max_bytes: int = 32 * MiB
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    # Wall-clock limit on one fetch, redirects included: a server trickling one byte
    # per read_timeout would otherwise hold a worker forever.
    total_timeout: float = 30.0
    max_redirects: int = 3
    max_url_length: int = 4096
    user_agent: str = "iqa-fetch/1 (+image quality scoring)"

    def __post_init__(self) -> None:
        # Parse once so a typo fails at start-up, not on the first request.
        networks = tuple(ipaddress.ip_network(n, strict=False) for n in self.allowed_networks)
        object.__setattr__(self, "_networks", networks)
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")
        if self.max_redirects < 0:
            raise ValueError(f"max_redirects must be >= 0, got {self.max_redirects}")

    def permits(self, address: str) -> bool:
        """Whether a connection to this IP address is allowed."""
        if self.allow_private:
            return True
        ip = _parse_ip(address)
        if any(ip in network for network in self._networks):  # type: ignore[attr-defined]
            return True
        return is_public_address(ip)


def _parse_ip(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address):
    if isinstance(address, str):
        # getaddrinfo returns scoped link-local IPv6 as "fe80::1%eth0".
        return ipaddress.ip_address(address.split("%", 1)[0])
    return address


def is_public_address(address) -> bool:
    """True for a globally routable unicast address; False for anything internal.

    IPv4 addresses wrapped in IPv6 (IPv4-mapped ``::ffff:a.b.c.d``, 6to4 ``2002::/16``
    and NAT64 ``64:ff9b::/96``) are judged by the IPv4 address they reach.
    """
    ip = _parse_ip(address)
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if ip in NAT64_PREFIX:
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None and not is_public_address(ip.sixtofour):
            return False
        if ip.teredo is not None:
            return False
        if ip.is_site_local:
            return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def _literal_address(host: str) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host.split("%", 1)[0]))]
    except ValueError:
        return []


def _lookup(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
        raise FetchConnectionError(f"cannot resolve host {host!r}: {exc}") from exc
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise FetchConnectionError(f"host {host!r} has no addresses")
    return addresses


def resolve_checked(host: str, port: int, policy: FetchPolicy) -> list[str]:
    """Resolve ``host`` and return its addresses, or raise if any one is refused.

    Every address is checked, not just the first: a name that resolves to a public and
    a private address must not let a retry or a happy-eyeballs race reach the private
    one.
    """
    host = host.strip("[]")
    addresses = _literal_address(host) or _lookup(host, port)
    refused = [a for a in addresses if not policy.permits(a)]
    if refused:
        # The address stays in the server log only: telling a caller what an internal
        # name resolves to would leak the network's layout.
        logger.info("refused URL host %r: non-public address(es) %s", host, refused)
        raise ForbiddenAddressError(
            f"refused to fetch from host {host!r}: it is or resolves to a private, "
            "loopback, link-local or otherwise non-public address"
        )
    return addresses


# ----------------------------------------------------------------------- transport
class GuardedBackend(httpcore.NetworkBackend):
    """An httpcore network backend that only ever connects to checked addresses."""

    def __init__(self, policy: FetchPolicy, inner: httpcore.NetworkBackend | None = None):
        self.policy = policy
        self.inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable | None = None,
    ) -> httpcore.NetworkStream:
        last_error: Exception | None = None
        for address in resolve_checked(host, port, self.policy):
            try:
                # Connect to the literal IP we checked, never to the name again.
                return self.inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise ForbiddenAddressError("unix sockets are never fetched from")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport with its connection pool rebuilt on a :class:`GuardedBackend`.

    ``httpx.HTTPTransport`` has no ``network_backend`` argument, so the pool it builds
    is replaced by an equivalent one that has ours; everything else (request/response
    mapping, exception mapping) is httpx's own code.
    """

    def __init__(
        self,
        policy: FetchPolicy,
        inner: httpcore.NetworkBackend | None = None,
        verify: ssl.SSLContext | str | bool = True,
    ):
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=10)
        super().__init__(trust_env=False, limits=limits)
        if not isinstance(self._pool, httpcore.ConnectionPool):  # pragma: no cover
            raise RuntimeError("unexpected httpx transport internals; cannot guard fetches")
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy, inner),
        )


# ------------------------------------------------------------------------- fetcher
@dataclass(frozen=True)
class FetchedMedia:
    data: bytes
    url: str  # final URL, after redirects
    content_type: str | None


def validate_url(url: str, policy: FetchPolicy) -> httpx.URL:
    """Parse a URL and check it is an absolute http(s) URL of acceptable length."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidURLError("the URL is empty")
    url = url.strip()
    if len(url) > policy.max_url_length:
        raise InvalidURLError(f"the URL is longer than {policy.max_url_length} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise InvalidURLError(f"malformed URL {url!r}: {exc}") from exc
    if parsed.scheme not in ALLOWED_SCHEMES:
        if not parsed.scheme:
            raise InvalidURLError(f"{url!r} is not an absolute URL: it needs http:// or "
                                  "https:// and a host")
        raise InvalidURLError(
            f"only http and https URLs can be fetched, not scheme {parsed.scheme!r}")
    if not parsed.host:
        raise InvalidURLError(f"the URL {url!r} has no host")
    host = parsed.raw_host.decode("ascii", "replace")  # IDNA names arrive as xn-- labels
    if ":" not in host and not _HOST_NAME.fullmatch(host):  # IPv6 literals httpx checked
        # httpx percent-encodes a space in the host; DNS would only fail on it later,
        # which reads as an unreachable server rather than a mistyped URL.
        raise InvalidURLError(f"malformed URL {url!r}: {parsed.host!r} is not a host name")
    return parsed


_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")


def check_content_type(content_type: str | None, url: str = "the URL") -> None:
    """Refuse bodies whose declared type cannot be a raster image."""
    if not content_type:
        return  # undeclared: let the decoder decide
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime in NON_RASTER_IMAGE_TYPES:
        raise UnsupportedContentTypeError(
            f"{url} serves {mime!r}; vector images are not supported"
        )
    if mime.startswith("image/") or mime in GENERIC_BINARY_TYPES:
        return
    raise UnsupportedContentTypeError(f"{url} serves {mime!r}, not an image")


class ImageFetcher:
    """Fetches image bytes under a :class:`FetchPolicy`. Thread-safe; reuse one per process.

    ``verify`` is httpx's: True (system CAs), a CA bundle path or an SSLContext.
    ``backend`` replaces the network backend that finally opens sockets (for tests).
    """

    def __init__(
        self,
        policy: FetchPolicy | None = None,
        backend: httpcore.NetworkBackend | None = None,
        verify: ssl.SSLContext | str | bool = True,
    ):
        self.policy = policy or FetchPolicy()
        p = self.policy
        self._client = httpx.Client(
            transport=GuardedTransport(p, backend, verify),
            follow_redirects=False,  # followed by hand so every hop is re-checked
            trust_env=False,  # never route through an environment proxy
            timeout=httpx.Timeout(connect=p.connect_timeout, read=p.read_timeout,
                                  write=p.read_timeout, pool=p.connect_timeout),
            headers={
                "User-Agent": p.user_agent,
                "Accept": "image/*, */*;q=0.1",
                # Compressed transfer would let a small body inflate past max_bytes
                # within one chunk; images are compressed already.
                "Accept-Encoding": "identity",
            },
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ImageFetcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def fetch(self, url: str) -> FetchedMedia:
        """Download ``url`` (following at most ``max_redirects`` redirects)."""
        deadline = time.monotonic() + self.policy.total_timeout
        current = validate_url(url, self.policy)
        for _ in range(self.policy.max_redirects + 1):
            if time.monotonic() > deadline:
                raise FetchTimeoutError(
                    f"{url} took longer than {self.policy.total_timeout:g} s to download"
                )
            try:
                with self._client.stream("GET", current) as response:
                    location = response.headers.get("location")
                    if response.status_code in REDIRECT_STATUSES and location:
                        current = self._redirect_target(current, location)
                        continue
                    return self._read_body(response, deadline)
            except httpx.ConnectTimeout as exc:
                raise FetchTimeoutError(
                    f"{current}: no connection within {self.policy.connect_timeout:g} s") from exc
            except httpx.TimeoutException as exc:
                raise FetchTimeoutError(
                    f"{current} stopped answering for more than "
                    f"{self.policy.read_timeout:g} s") from exc
            except httpx.HTTPError as exc:
                raise FetchConnectionError(f"could not fetch {current}: {exc!r}") from exc
            except httpx.InvalidURL as exc:
                # `current` was validated, so this comes from the answer: httpx builds the
                # next request from a Location header (e.g. `data:...`) even when it does
                # not follow it, and InvalidURL is not an HTTPError.
                raise InvalidURLError(f"{current} redirected to an invalid URL: {exc}") from exc
            except httpx.StreamError as exc:
                raise FetchError(f"could not read {current}: {exc!r}") from exc
        raise TooManyRedirectsError(
            f"{url} redirected more than {self.policy.max_redirects} times"
        )

    def _redirect_target(self, current: httpx.URL, location: str) -> httpx.URL:
        try:
            target = current.join(location)
        except (httpx.InvalidURL, ValueError) as exc:
            raise FetchConnectionError(f"{current} redirected to a malformed URL") from exc
        try:
            return validate_url(str(target), self.policy)
        except InvalidURLError as exc:
            raise InvalidURLError(f"{current} redirected to a refused URL: {exc}") from exc

    def _read_body(self, response: httpx.Response, deadline: float) -> FetchedMedia:
        url = str(response.url)
        if not 200 <= response.status_code < 300:
            raise UpstreamStatusError(
                f"{url} answered HTTP {response.status_code}", status=response.status_code
            )
        content_type = response.headers.get("content-type")
        check_content_type(content_type, url)
        limit = self.policy.max_bytes
        declared = response.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise DownloadTooLargeError(
                f"{url} is {int(declared)} bytes, more than the limit of {limit} bytes"
            )
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            # We sent `Accept-Encoding: identity`; inflating anyway would let a 0.5 MB
            # body grow to gigabytes before any byte count saw it.
            raise ContentEncodingError(
                f"{url} answered with Content-Encoding {encoding!r} although only "
                "'identity' was accepted"
            )
        body = bytearray()
        try:
            # iter_raw: the bytes as they came off the wire, never decoded, so the
            # limit counts exactly what is held in memory.
            # No chunk size: each network read comes back at once, so the deadline is checked
            # as often as bytes arrive. With a 64 KiB chunker, a server dripping a byte
            # every second held the fetch for ages before the first check.
            for chunk in response.iter_raw():
                if len(body) + len(chunk) > limit:
                    raise DownloadTooLargeError(
                        f"{url} is larger than the limit of {limit} bytes"
                    )
                if time.monotonic() > deadline:
                    raise FetchTimeoutError(
                        f"{url} took longer than {self.policy.total_timeout:g} s to download"
                    )
                body += chunk
            return FetchedMedia(data=bytes(body), url=url, content_type=content_type)
        finally:
            # The traceback of a failed fetch keeps this frame alive until the garbage
            # collector runs; emptying the buffer gives the memory back now.
            body.clear()


@functools.lru_cache(maxsize=8)
def _shared_fetcher(policy: FetchPolicy) -> ImageFetcher:
    # One client (and connection pool) per policy for the life of the process.
    return ImageFetcher(policy)


def fetch_url(url: str, policy: FetchPolicy | None = None) -> bytes:
    """Download ``url`` under ``policy`` (default: the safe defaults) and return its bytes.

    Thread-safe; clients are reused across calls with the same policy.
    """
    return _shared_fetcher(policy or FetchPolicy()).fetch(url).data
