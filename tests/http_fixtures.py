"""Loopback-only test plumbing for the HTTP API and URL fetch tests.

* :class:`NetworkGuard` replaces DNS with a fixed table (no real query is ever sent) and
  wraps ``socket.connect`` so that only loopback connections go out. Any other connect
  is refused AND recorded; the tests assert the record is empty, so a broken SSRF guard
  fails a test instead of sending a packet anywhere.
* :class:`LoopbackHTTPServer` serves canned responses from 127.0.0.1 in a thread.
* :func:`uvicorn_server` runs an ASGI app under a real uvicorn on 127.0.0.1 in a thread.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

# Names the tests may look up; everything else fails like NXDOMAIN.
FAKE_DNS: dict[str, list[str]] = {
    "localhost": ["127.0.0.1", "::1"],
    "images.example.com": ["93.184.216.34"],
    "internal.example.com": ["10.0.0.1"],
    "metadata.example.com": ["169.254.169.254"],
    "mixed.example.com": ["93.184.216.34", "10.1.2.3"],
    "loopback.example.com": ["127.0.0.1"],
}


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class NetworkGuard:
    """Fake DNS plus a connect() that lets only loopback through. Install per test."""

    def __init__(self, dns: dict[str, list[str]] | None = None):
        self.dns = dict(FAKE_DNS if dns is None else dns)
        self.lookups: list[str] = []
        self.connects: list[tuple] = []  # every attempted connect, loopback included
        self.blocked: list[tuple] = []  # attempted connects to anything but loopback

    def install(self, monkeypatch) -> NetworkGuard:
        real_getaddrinfo = socket.getaddrinfo
        real_connect = socket.socket.connect
        real_connect_ex = socket.socket.connect_ex
        guard = self

        def fake_getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
            name = host.decode() if isinstance(host, bytes) else host
            if name is None or _is_ip(name):
                # Literal addresses (and passive binds) resolve without any DNS query.
                return real_getaddrinfo(host, port, family, type, proto,
                                        flags | socket.AI_NUMERICHOST)
            guard.lookups.append(name)
            if name not in guard.dns:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (test DNS)")
            port_number = int(port or 0)
            infos = []
            for ip in guard.dns[name]:
                if ":" in ip:
                    infos.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "",
                                  (ip, port_number, 0, 0)))
                else:
                    infos.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port_number)))
            return infos

        def check(address) -> bool:
            guard.connects.append(address)
            if isinstance(address, tuple) and _is_loopback(str(address[0])):
                return True
            guard.blocked.append(address)
            return False

        def guarded_connect(sock, address):
            if not check(address):
                raise ConnectionRefusedError(f"test network guard: no connect to {address!r}")
            return real_connect(sock, address)

        def guarded_connect_ex(sock, address):
            if not check(address):
                raise ConnectionRefusedError(f"test network guard: no connect to {address!r}")
            return real_connect_ex(sock, address)

        monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
        monkeypatch.setattr(socket.socket, "connect", guarded_connect)
        monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
        return self


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]").split("%", 1)[0])
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------- HTTP server
@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    content_type: str | None = "image/jpeg"
    headers: dict = field(default_factory=dict)
    send_length: bool = True  # False: no Content-Length, the body ends when the socket closes
    delay: float = 0.0  # seconds to wait before answering
    drip: float = 0.0  # seconds between 256-byte pieces of the body (a slow server)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn, a reverse DNS lookup: skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class LoopbackHTTPServer:
    """Serves ``routes`` (path -> Route) on 127.0.0.1:<free port>, in a daemon thread."""

    def __init__(self, routes: dict[str, Route], tls=None):
        self.routes = routes
        self.hits: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                server.hits.append(self.path)
                route = server.routes.get(self.path.split("?", 1)[0])
                if route is None:
                    route = Route(status=404, body=b"not found", content_type="text/plain")
                if route.delay:
                    time.sleep(route.delay)
                with contextlib.suppress(OSError):  # the client may hang up mid-body
                    self.send_response(route.status)
                    if route.content_type:
                        self.send_header("Content-Type", route.content_type)
                    if route.send_length:
                        self.send_header("Content-Length", str(len(route.body)))
                    for key, value in route.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    piece = 256 if route.drip else 64 * 1024
                    for start in range(0, len(route.body), piece):
                        self.wfile.write(route.body[start:start + piece])
                        if route.drip:
                            self.wfile.flush()
                            time.sleep(route.drip)

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        if tls is not None:  # an ssl.SSLContext for the server side
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def __enter__(self) -> LoopbackHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


# ------------------------------------------------------------------------- uvicorn
@contextlib.contextmanager
def uvicorn_server(app, **options) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 in a thread; yield its base URL.

    ``options`` go to uvicorn.Config (e.g. protocol.uvicorn_options(settings), as
    `iqa serve` passes them).
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", backlog=256, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


# -------------------------------------------------------------------------- images
def encode(image: Image.Image | np.ndarray, fmt: str = "JPEG", **options) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_bomb_header(width: int = 30_000, height: int = 30_000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (no real pixel data).

    Decoding it for real would need gigabytes; a safe decoder refuses it on the header.
    """
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\0" * 1024)  # a sliver of the first row
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
