"""uvicorn's h11 protocol with the slow-client limit uvicorn lacks, answering in our JSON.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``), header size
(``h11_max_incomplete_event_size``) and concurrency (``limit_concurrency``), but it has
no deadline for the request head: its keep-alive timer restarts on every byte, so a
client that trickles a header line every few seconds holds a connection for ever
(slowloris). This subclass adds that deadline, and makes the answers uvicorn writes
itself (a garbage request line, oversized headers, the concurrency limit) the API's
failure JSON instead of plain text. Everything else is uvicorn's own code.

The body's deadline is the app's (``--body-timeout``, see forms.py), where a 408 can
still be answered as JSON.
"""

from __future__ import annotations

import asyncio
import json
import time

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import BadHTTPRequestError, BodyTimeoutError, ServerBusyError, spec_for


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
    """An HTTP/1.1 response as bytes, for moments when h11's state machine cannot send one
    (before any request has been read)."""
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Error"))]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 503: b"Service Unavailable"}


class _ConcurrencyLimit:
    """uvicorn's ``limit_concurrency`` check, answered with error 50 as JSON."""

    def __init__(self, app, protocol: IQAH11Protocol, limit: int, retry_after: int):
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


class IQAH11Protocol(H11Protocol):
    """Use :func:`protocol_class` to get one with other settings."""

    header_timeout: float = 10.0
    retry_after: int = 1

    def __init__(self, config: Config, server_state, app_state, _loop=None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if self.limit_concurrency is not None:
            self.app = _ConcurrencyLimit(self.app, self, self.limit_concurrency,
                                         self.retry_after)
            self.limit_concurrency = None  # checked by the wrapper instead
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_scope = None
        self._head_bytes = 0

    # -- the request-head deadline
    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_scope = self.scope
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes and self.conn.their_state is h11.IDLE:
            # Part of a request head came in: say why the connection ends.
            error = BodyTimeoutError(
                f"the request line and headers did not arrive within {self.header_timeout:g} s")
            self.transport.write(_raw_response(*failure_response(error)))
        self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # not the rest of a refused request's body
            self._head_bytes += len(data)
        super().data_received(data)
        if self.scope is not self._head_scope:  # a whole request head has been parsed
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        # The next request on this keep-alive connection gets a fresh deadline; idle
        # connections are still closed earlier by uvicorn's timeout_keep_alive.
        if not self.transport.is_closing():
            self._arm_head_timer()
        super().on_response_complete()
        if self.scope is not self._head_scope:  # a pipelined request was already parsed
            self._cancel_head_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    # -- uvicorn's own 400, as JSON
    def send_400_response(self, msg: str) -> None:
        self._cancel_head_timer()
        status, headers, body = failure_response(BadHTTPRequestError(
            f"{msg.rstrip('.')}: the request line or headers are malformed or larger than "
            "the limit"))
        try:
            output = self.conn.send(h11.Response(status_code=status, headers=headers,
                                                 reason=b"Bad Request"))
            output += self.conn.send(h11.Data(data=body))
            output += self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:  # h11 is in an error state: write it by hand
            output = _raw_response(status, headers, body)
        self.transport.write(output)
        self.transport.close()


def protocol_class(header_timeout: float, retry_after: int = 1) -> type[IQAH11Protocol]:
    """The protocol class to pass as uvicorn's ``http=``, with these settings."""
    return type("IQAH11Protocol", (IQAH11Protocol,),
                {"header_timeout": header_timeout, "retry_after": retry_after})


def uvicorn_options(settings) -> dict:
    """uvicorn.Config keyword arguments for a ServerSettings' slow-client limits."""
    return {
        "http": protocol_class(settings.header_timeout, settings.retry_after),
        "timeout_keep_alive": settings.keep_alive_timeout,
        "limit_concurrency": settings.max_connections,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }
