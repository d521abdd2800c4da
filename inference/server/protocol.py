"""uvicorn's httptools protocol with the slow-client limits uvicorn lacks, answering in our
JSON.

httptools (uvicorn's C parser) rather than h11 (pure Python): under overload every 503
costs the event loop a request head to parse, and with httptools a new client's refusal
took a median of 4-7 ms instead of 26-47 ms (BENCHMARKS.md, "The 503 tail").

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and concurrency
(``limit_concurrency``), but with httptools it bounds neither the size of a request head
nor the time it may take: its keep-alive timer stops at the first byte, so a client that
trickles a header line every few seconds holds a connection for ever (slowloris). This
subclass adds both limits, and makes the answers uvicorn writes itself (a garbage request
line, an oversized head, the concurrency limit) the API's failure JSON instead of plain
text. Everything else is uvicorn's own code.

The body's deadline is the app's (``--body-timeout``, see forms.py), where a 408 can
still be answered as JSON.

It also closes connections gently. A request refused on its headers (refusal.py) is
answered with ``Connection: close`` while its client may still be sending the body;
closing the socket with that body unread makes the kernel send a reset, which can
destroy the answer in the client's receive buffer before the client reads it. So such a
connection lingers: the answer and then a FIN go out, and whatever else the client sends
is discarded unparsed until it closes its side, for at most LINGER_SECONDS and
LINGER_BYTES.
"""

from __future__ import annotations

import asyncio
import json
import time

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import BadHTTPRequestError, BodyTimeoutError, ServerBusyError, spec_for
from .settings import ServerSettings


def failure_response(exc: Exception, headers: tuple[tuple[bytes, bytes], ...] = ()) -> tuple:
    """(status, headers, body) of the failure JSON for ``exc``, for use outside the app."""
    from .app import new_id  # late: app imports the heavy parts of the package

    spec = spec_for(exc)
    body = json.dumps({
        "status": "failure",
        "request": {"id": new_id("req_"), "timestamp": time.time(), "operations": 0},
        "error": {"type": spec.type, "code": spec.code, "message": str(exc) or spec.meaning},
    }, separators=(",", ":")).encode()
    return spec.status, [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()),
                         (b"connection", b"close"), *headers], body


def _raw_response(status: int, headers: list, body: bytes) -> bytes:
    """An HTTP/1.1 response as bytes, written straight to the transport (httptools only
    parses requests)."""
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Error"))]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 503: b"Service Unavailable"}
# How long, and how much, a connection closed in the middle of a request body (after a
# refusal) keeps reading and discarding before it is closed outright.
LINGER_SECONDS = 5.0
LINGER_BYTES = 32 << 20


class _LingeringTransport:
    """The transport as uvicorn sees it: ``close()`` lingers when a body is unfinished."""

    def __init__(self, transport, protocol: IQAHttpToolsProtocol):
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._protocol._lingering or self._transport.is_closing()

    def close(self) -> None:
        self._protocol._close_gently()


class _ConcurrencyLimit:
    """uvicorn's ``limit_concurrency`` check, answered with error 50 as JSON."""

    def __init__(self, app, protocol: IQAHttpToolsProtocol, limit: int, retry_after: int):
        self.app = app
        self.protocol = protocol
        self.limit = limit
        self.retry_after = retry_after

    async def __call__(self, scope, receive, send):
        proto = self.protocol
        # The running task is already in `tasks`, this connection in `connections`.
        if scope["type"] == "http" and (len(proto.connections) > self.limit
                                        or len(proto.tasks) > self.limit):
            status, headers, body = failure_response(
                ServerBusyError(f"the server has more than {self.limit} connections; retry "
                                f"in {self.retry_after} s"),
                ((b"retry-after", str(self.retry_after).encode()),))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


class _HeadTooLarge(Exception):
    """Raised inside httptools' callback to stop parsing an oversized request head."""


class IQAHttpToolsProtocol(HttpToolsProtocol):
    """Use :func:`protocol_class` to get one with other settings."""

    header_timeout: float = ServerSettings.header_timeout
    max_header_bytes: int = ServerSettings.max_header_bytes
    retry_after: int = ServerSettings.retry_after

    def __init__(self, config: Config, server_state, app_state, _loop=None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if self.limit_concurrency is not None:
            self.app = _ConcurrencyLimit(self.app, self, self.limit_concurrency,
                                         self.retry_after)
            self.limit_concurrency = None  # checked by the wrapper instead
        self._head_timer: asyncio.TimerHandle | None = None
        # Bytes of the request head being received; None once it is complete, while its
        # body comes in (and until the next request begins).
        self._head_bytes: int | None = 0
        # Bytes of the URL and header fields parsed for the current request: a head that
        # arrives whole in one read is complete before data_received can count it.
        self._head_fields = 0
        self._refusal: str | None = None
        self._lingering = False
        self._linger_timer: asyncio.TimerHandle | None = None
        self._lingered_bytes = 0

    # -- the request-head deadline
    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes:
            # Part of a request head came in: say why the connection ends.
            error = BodyTimeoutError(
                f"the request line and headers did not arrive within {self.header_timeout:g} s")
            self.transport.write(_raw_response(*failure_response(error)))
        self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.transport = _LingeringTransport(transport, self)
        self._arm_head_timer()

    # -- lingering close
    def _close_gently(self) -> None:
        transport = self.transport._transport
        if self._lingering or transport.is_closing():
            transport.close()
            return
        if not self._receiving_body() or not transport.can_write_eof():
            transport.close()
            return
        # The client is still sending a body nobody will read: answer, FIN, then drain.
        self._cancel_head_timer()
        self._lingering = True
        transport.write_eof()
        transport.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, transport.close)

    def _receiving_body(self) -> bool:
        return self._head_bytes is None and self.cycle is not None and self.cycle.more_body

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._lingered_bytes += len(data)
            if self._lingered_bytes > LINGER_BYTES:
                self.transport._transport.close()
            return
        if self._head_bytes is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        # httptools keeps an unfinished head's fields until they end; bound them here.
        if (self._head_bytes or 0) > self.max_header_bytes and not self.transport.is_closing():
            self.send_400_response(f"the request head exceeds {self.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        if self._head_bytes is None:  # a pipelined head began in the same packet
            self._head_bytes = 0
        self._head_fields = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._head_fields += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_fields += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._head_bytes = None
        if self._head_fields > self.max_header_bytes:
            self._refusal = f"the request head exceeds {self.max_header_bytes} bytes"
            # Raising from a parser callback aborts the parse; uvicorn's data_received
            # then answers through send_400_response before any app code runs.
            raise _HeadTooLarge(self._refusal)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        # The next request on this keep-alive connection gets a fresh deadline; idle
        # connections are still closed earlier by uvicorn's timeout_keep_alive.
        super().on_response_complete()
        # Not while a pipelined request, already parsed, is being answered: its own
        # response completes later and arms the timer then.
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._arm_head_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    # -- uvicorn's own 400, as JSON
    def send_400_response(self, msg: str) -> None:
        self._cancel_head_timer()
        msg, self._refusal = self._refusal or msg, None
        status, headers, body = failure_response(BadHTTPRequestError(
            f"{msg.rstrip('.')}: the request line or headers are malformed or larger than "
            "the limit"))
        self.transport.write(_raw_response(status, headers, body))
        self.transport.close()


def protocol_class(header_timeout: float, retry_after: int = ServerSettings.retry_after,
                   max_header_bytes: int = ServerSettings.max_header_bytes
                   ) -> type[IQAHttpToolsProtocol]:
    """The protocol class to pass as uvicorn's ``http=``, with these settings."""
    return type("IQAHttpToolsProtocol", (IQAHttpToolsProtocol,),
                {"header_timeout": header_timeout, "retry_after": retry_after,
                 "max_header_bytes": max_header_bytes})


def uvicorn_options(settings) -> dict:
    """uvicorn.Config keyword arguments for a ServerSettings' slow-client limits."""
    return {
        "http": protocol_class(settings.header_timeout, settings.retry_after,
                               settings.max_header_bytes),
        "timeout_keep_alive": settings.keep_alive_timeout,
        "limit_concurrency": settings.max_connections,
    }
