"""Refusals decided on a request's headers, answered before routing and before the body.

An overloaded server spends most of its requests on saying no. This pure ASGI layer sits
in front of FastAPI's router, so a request that can be refused on its line and headers
alone (a full queue, wrong credentials in the query string, a declared body over the
size limit) costs no route matching, no dependency resolution, and not a byte of body:
``receive`` is never called. The answer carries ``Connection: close``, so the server
need not read (or parse) the rest of a body it has already refused, and the client
learns it can stop sending.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

CLOSE = (b"connection", b"close")


class RefuseOnHeaders:
    """ASGI middleware: ``decide(scope)`` returns an exception to refuse the request with
    (or None to pass it on); ``answer(scope, exc)`` turns it into a Starlette Response."""

    def __init__(self, app, decide: Callable[[dict], Exception | None],
                 answer: Callable[[dict, Exception], Callable[..., Awaitable[None]]]):
        self.app = app
        self.decide = decide
        self.answer = answer

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            error = self.decide(scope)
            if error is not None:
                response = self.answer(scope, error)

                async def send_closing(message):
                    if message["type"] == "http.response.start":
                        headers = [h for h in message.get("headers", ())
                                   if h[0].lower() != b"connection"]
                        message = {**message, "headers": [*headers, CLOSE]}
                    await send(message)

                await response(scope, _no_body, send_closing)
                return
        await self.app(scope, receive, send)


async def _no_body() -> dict:
    """The ``receive`` a refused request's response gets: its body is never read."""
    return {"type": "http.disconnect"}
