"""Regression tests for issue 8 ("Harden `iqa serve`"), one section per numbered defect.

Everything runs in-process or on 127.0.0.1; the `guard` fixture fails a test that
connects anywhere else. No assertion here depends on timing: speed and memory targets
are measured by scripts/benchmark_server.py.
"""

from __future__ import annotations

import gzip
import logging
import socket
import sys
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from http_fixtures import LoopbackHTTPServer, Route, encode, png_bomb_header, uvicorn_server
from script_loader import load_script

from iqa.inference import QualityModel
from iqa.inference.fetch import (
    ContentEncodingError,
    DownloadTooLargeError,
    FetchPolicy,
    ImageFetcher,
    InvalidURLError,
)
from iqa.inference.server import app as app_module
from iqa.inference.server.app import create_app
from iqa.inference.server.logsafe import AccessLogFilter
from iqa.inference.server.protocol import uvicorn_options
from iqa.inference.server.settings import ServerSettings

CHECK = "/1.0/check.json"
REPO = Path(__file__).resolve().parent.parent
INFLATED = 64 * 1024 * 1024  # what the gzip bomb would inflate to
LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return QualityModel(tiny_model_path)


@pytest.fixture(scope="module")
def jpeg(photo) -> bytes:
    return encode(photo[:256, :256], quality=90)


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    return gzip.compress(b"\0" * INFLATED, compresslevel=9)  # about 64 KB on the wire


@pytest.fixture(scope="module")
def upstream(jpeg, gzip_bomb):
    routes = {
        "/photo.jpg": Route(body=jpeg),
        "/bomb.jpg": Route(body=gzip_bomb, headers={"Content-Encoding": "gzip"}),
        "/bomb-stream.jpg": Route(body=gzip_bomb, headers={"Content-Encoding": "gzip"},
                                  send_length=False),
        "/br.jpg": Route(body=jpeg, headers={"Content-Encoding": "br"}),
        "/big.jpg": Route(body=b"\xff\xd8" + b"\0" * (4 * LIMIT)),
        "/missing.jpg": Route(status=404, body=b"no", content_type="text/plain"),
        "/to-data": Route(status=302, headers={"Location": "data:image/png;base64,AAAA"}),
    }
    with LoopbackHTTPServer(routes) as server:
        yield server


def settings(**overrides) -> ServerSettings:
    overrides.setdefault("fetch_policy", FetchPolicy(allow_private=True, max_bytes=LIMIT))
    return ServerSettings(**overrides)


def error_of(response) -> tuple[str, int]:
    body = response.json()
    assert body["status"] == "failure", body
    return body["error"]["type"], body["error"]["code"]


# ------------------------------------------------- 1. compressed URL responses
@pytest.mark.parametrize("path", ["/bomb.jpg", "/bomb-stream.jpg", "/br.jpg"])
def test_compressed_response_is_refused_without_inflating(guard, upstream, path, monkeypatch):
    import httpx._decoders as decoders

    inflated = []
    for name in ("GZipDecoder", "DeflateDecoder", "BrotliDecoder", "ZStandardDecoder"):
        cls = getattr(decoders, name, None)
        if cls is not None:
            real = cls.decode
            monkeypatch.setattr(cls, "decode",
                                lambda self, data, _real=real: inflated.append(len(data))
                                or _real(self, data))
    fetcher = ImageFetcher(FetchPolicy(allow_private=True, max_bytes=LIMIT))
    tracemalloc.start()
    try:
        with pytest.raises(ContentEncodingError, match="Content-Encoding"):
            fetcher.fetch(upstream.url(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        fetcher.close()
    assert inflated == []  # no decoder ever saw a byte
    assert peak < 4 * 1024 * 1024, peak  # far below the 64 MiB the body inflates to


def test_compressed_response_maps_to_code_34(guard, model, upstream):
    with TestClient(create_app(model, settings())) as client:
        response = client.get(CHECK, params={"models": "quality",
                                             "url": upstream.url("/bomb.jpg")})
    assert response.status_code == 502
    assert error_of(response) == ("media_error", 34)
    assert "gzip" in response.json()["error"]["message"]


def test_failed_download_frees_its_buffer(guard, upstream):
    fetcher = ImageFetcher(FetchPolicy(allow_private=True, max_bytes=LIMIT))
    with pytest.raises(DownloadTooLargeError) as caught:
        fetcher.fetch(upstream.url("/big.jpg"))
    fetcher.close()
    held = 0
    tb = caught.value.__traceback__
    while tb is not None:  # what the traceback keeps alive, frame by frame
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, (bytes, bytearray)):
                held += len(value)
        tb = tb.tb_next
    assert held < LIMIT // 4, held


# ---------------------------------------------------------- 2. secrets in logs
class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_access_log_masks_api_secret_and_url_userinfo(model, jpeg):
    access = logging.getLogger("uvicorn.access")
    with uvicorn_server(create_app(model, settings())) as base:
        handler = ListHandler()
        access.addHandler(handler)
        old_level = access.level
        access.setLevel(logging.INFO)
        try:
            httpx.get(f"{base}{CHECK}", params={
                "models": "quality", "api_user": "alice", "api_secret": "hunter2",
                "url": "http://bob:pa55word@127.0.0.1:9/a.jpg"}, trust_env=False)
        finally:
            access.removeHandler(handler)
            access.setLevel(old_level)
    assert handler.lines, "uvicorn wrote no access log line"
    text = "\n".join(handler.lines)
    assert "hunter2" not in text and "pa55word" not in text
    assert "api_secret=***" in text and "api_user=alice" in text  # still useful
    assert "GET /1.0/check.json?" in text


def test_access_log_filter_escapes_decoded_paths():
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                               '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:1", "GET", "/a\nFORGED\x1b[2J?x=1", "1.1", 404), None)
    AccessLogFilter().filter(record)
    line = record.getMessage()
    assert "\n" not in line and "\x1b" not in line and "\\x0a" in line


def test_fetched_urls_in_httpx_log_lose_their_userinfo(guard, model, upstream, caplog):
    url = upstream.url("/photo.jpg").replace("://", "://bob:pa55word@")
    with caplog.at_level(logging.DEBUG):
        with TestClient(create_app(model, settings())) as client:
            response = client.get(CHECK, params={"models": "quality", "url": url})
            missing = client.get(CHECK, params={"models": "quality", "url": url.replace(
                "/photo.jpg", "/missing.jpg?X-Amz-Signature=s3cr3t")})
    assert response.status_code == 200
    assert error_of(missing) == ("media_error", 30)
    # The server's records only: the test client (httpx2) logs its own request line.
    server_side = "\n".join(r.getMessage() for r in caplog.records
                            if not r.name.startswith("httpx2"))
    assert any(r.name == "httpx" for r in caplog.records)
    assert "pa55word" not in server_side and "s3cr3t" not in server_side


# -------------------------------------------------------------- 3. metrics labels
def test_invented_methods_add_no_metric_series(model):
    with TestClient(create_app(model, settings())) as client:
        before = client.get("/metrics").text.count("iqa_requests_total{")
        for i in range(200):
            client.request(f"INVENTED{i}", CHECK)
        text = client.get("/metrics").text
    series = [line for line in text.splitlines() if line.startswith("iqa_requests_total{")]
    assert len(series) <= before + 2, series  # one `other` series (+ the /metrics GET)
    assert 'method="other",status="405"} 200' in text
    assert "INVENTED" not in text


# ----------------------------------------------------- 4. crafted redirect -> table
def test_redirect_to_data_url_is_an_argument_error(guard, model, upstream, caplog):
    with TestClient(create_app(model, settings())) as client:
        response = client.get(CHECK, params={"models": "quality",
                                             "url": upstream.url("/to-data")})
    assert response.status_code == 400
    assert error_of(response) == ("argument_error", 13)
    fetcher = ImageFetcher(FetchPolicy(allow_private=True))
    with pytest.raises(InvalidURLError, match="redirected"):
        fetcher.fetch(upstream.url("/to-data"))
    fetcher.close()
    assert "Traceback" not in caplog.text


# ----------------------------------------------- 5. client-caused faults: one line
def test_fetch_failures_log_one_warning_line(guard, model, upstream, caplog):
    with caplog.at_level(logging.INFO, logger="iqa.server"):
        with TestClient(create_app(model, settings())) as client:
            response = client.get(CHECK, params={"models": "quality",
                                                 "url": upstream.url("/missing.jpg")})
    assert error_of(response) == ("media_error", 30)
    records = [r for r in caplog.records if r.name == "iqa.server" and "request" in r.msg]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert records[0].exc_info is None and "\n" not in records[0].getMessage()


class BrokenModel:
    metadata: dict = {}

    def score(self, source, name=None):
        raise RuntimeError("onnxruntime exploded")


def test_real_faults_keep_their_traceback(jpeg, caplog):
    with caplog.at_level(logging.INFO, logger="iqa.server"):
        with TestClient(create_app(BrokenModel(), settings())) as client:
            response = client.post(CHECK, data={"models": "quality"},
                                   files={"media": ("a.jpg", jpeg)})
    assert response.status_code == 500 and error_of(response) == ("api_error", 60)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None


# --------------------------------------------------------------- 6. log injection
def test_uploaded_filename_cannot_forge_log_lines(model, jpeg, caplog):
    evil = "x.jpg\n2030-01-01 00:00:00 ERROR iqa.server: FORGED\x1b[31m\u2028"
    with caplog.at_level(logging.INFO, logger="iqa.server"):
        with TestClient(create_app(model, settings())) as client:
            response = client.post(CHECK, data={"models": "quality"},
                                   files={"media": (evil, jpeg[: len(jpeg) // 2])})
    assert error_of(response) == ("media_error", 21)
    lines = [r.getMessage() for r in caplog.records if r.name == "iqa.server"]
    assert any("FORGED" in line for line in lines)
    for line in lines:
        assert "\n" not in line and "\x1b" not in line and "\u2028" not in line


# ------------------------------------------- 6b. log writes off the event loop
class GatedHandler(logging.Handler):
    """Writes nothing until ``gate`` is set: a log destination that has stalled."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.written: list[tuple[str, str, tuple]] = []
        self.setFormatter(logging.Formatter("%(name)s %(message)s"))

    def emit(self, record):
        assert self.gate.wait(30)
        self.written.append((threading.current_thread().name, self.format(record),
                             record.args))


@pytest.fixture
def gated_logger():
    log = logging.getLogger("iqa.test.logqueue")
    handler = GatedHandler()
    saved = log.handlers, log.level, log.propagate
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield log, handler
    finally:
        handler.gate.set()
        log.handlers, log.level, log.propagate = saved


def test_log_calls_do_not_wait_for_a_stalled_destination(gated_logger):
    """`iqa serve` logs on its event loop; with deferred_log_writes a stalled log
    destination no longer stalls the caller: records wait in a queue, one thread writes
    them in order with the original handler (args intact, for uvicorn's formatters)."""
    from iqa.inference.server.logqueue import deferred_log_writes

    log, handler = gated_logger
    log.handlers = [handler]  # pytest adds its capture handlers to loggers that do not propagate
    with deferred_log_writes([log.name]):
        assert log.handlers != [handler]
        for i in range(100):
            log.info("line %d of %s", i, "x")  # would block here if written synchronously
        assert handler.written == []
        handler.gate.set()
    # Leaving the block writes what was queued and puts the handler back.
    assert log.handlers == [handler]
    assert [line for _, line, _ in handler.written] == [
        f"iqa.test.logqueue line {i} of x" for i in range(100)]
    assert handler.written[7][2] == (7, "x")
    assert {thread for thread, _, _ in handler.written} != {threading.current_thread().name}


def test_log_queue_is_bounded_and_counts_what_it_drops(gated_logger):
    from iqa.inference.server.logqueue import deferred_log_writes

    log, handler = gated_logger
    log.handlers = [handler]  # pytest adds its capture handlers to loggers that do not propagate
    with deferred_log_writes([log.name], max_queued=5):
        for i in range(50):
            log.warning("refused %d", i)
        handler.gate.set()
    lines = [line for _, line, _ in handler.written]
    kept = [line for line in lines if "refused" in line]
    notices = [line for line in lines if "dropped" in line]
    assert 5 <= len(kept) <= 6  # the queue, plus the one the writer was blocked on
    assert notices
    dropped = sum(int(line.split("iqa.server ")[1].split()[0]) for line in notices)
    assert len(kept) + dropped == 50

# ------------------------------------------------------ 7. rejections on headers
class BlockingModel:
    def __init__(self, model):
        self.model = model
        self.metadata = model.metadata
        self.entered = threading.Event()
        self.release = threading.Event()

    def score(self, source, name=None):
        self.entered.set()
        assert self.release.wait(30)
        return self.model.score(source, name=name)


def raw_request(base: str, head: bytes, body: bytes = b"", read_until_close=True) -> bytes:
    """Send ``head`` (and ``body``) on a fresh socket; return what the server answers."""
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        answer = b""
        while True:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            answer += data
            if not read_until_close and b"\r\n\r\n" in answer and answer.endswith(b"}"):
                break
    return answer


def post_head(query: str, length: int, extra: bytes = b"") -> bytes:
    return (f"POST {CHECK}?{query} HTTP/1.1\r\nHost: t\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {length}\r\n").encode() + extra + b"\r\n"


def test_rejections_need_no_body(model, jpeg, monkeypatch):
    """Full queue, wrong key and declared size are answered on the headers alone: the
    client never sends a byte of its (declared) body and still gets its answer."""
    monkeypatch.setenv("IQA_API_KEYS", "alice:right")
    from iqa.inference.server.auth import KeyStore

    blocking = BlockingModel(model)
    app = create_app(blocking, settings(workers=1, max_queue=0, max_upload_bytes=LIMIT,
                                        keys=KeyStore({"alice": "right"})))
    with uvicorn_server(app) as base:
        too_big = raw_request(base, post_head("models=quality", 50 * LIMIT), read_until_close=False)
        assert too_big.startswith(b"HTTP/1.1 413") and b'"code":24' in too_big
        wrong_key = raw_request(base, post_head("models=quality&api_user=alice&api_secret=no",
                                                100_000), read_until_close=False)
        assert wrong_key.startswith(b"HTTP/1.1 401") and b'"code":1' in wrong_key
        with httpx.Client(timeout=30, trust_env=False) as client, ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.post, f"{base}{CHECK}",
                                data={"models": "quality", "api_user": "alice",
                                      "api_secret": "right"},
                                files={"media": ("a.jpg", jpeg)})
            assert blocking.entered.wait(10)
            busy = raw_request(base, post_head("models=quality", 100_000),
                               read_until_close=False)
            assert busy.startswith(b"HTTP/1.1 503") and b'"code":50' in busy
            blocking.release.set()
            assert first.result().status_code == 200


def call_asgi(app, method: str, path: str, query: bytes, headers: list
              ) -> tuple[dict, list, dict]:
    """Run one HTTP request through ``app`` in-process; the body must never be read.
    Returns (the response start message, the body chunks, the scope)."""
    import asyncio

    async def receive():
        raise AssertionError("the app read the body of a request it refused on its headers")

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": query, "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}
    asyncio.run(app(scope, receive, send))
    return sent[0], [m.get("body", b"") for m in sent[1:]], scope


def test_header_refusals_happen_before_routing_and_never_read_the_body(model):
    """413, 401 and 503 decided on the headers come from the ASGI layer in front of the
    router: `receive` is never called, FastAPI's route never runs, and the answer closes
    the connection. Metrics still count them under the API's endpoint."""
    from iqa.inference.server.auth import KeyStore

    app = create_app(model, settings(workers=1, max_queue=0, max_upload_bytes=LIMIT,
                                     keys=KeyStore({"alice": "right"})))
    multipart = [(b"content-type", b"multipart/form-data; boundary=b")]
    service = app.state.service

    scopes = []
    start, body, scope = call_asgi(app, "POST", CHECK, b"models=quality",
                                   [*multipart, (b"content-length", str(50 * LIMIT).encode())])
    scopes.append(scope)
    assert start["status"] == 413 and b'"code":24' in b"".join(body)
    assert (b"connection", b"close") in start["headers"]

    start, body, scope = call_asgi(app, "POST", CHECK,
                                   b"models=quality&api_user=alice&api_secret=no",
                                   [*multipart, (b"content-length", b"100000")])
    scopes.append(scope)
    assert start["status"] == 401 and b'"code":1' in b"".join(body)

    ticket = service.gate.admit()  # the only slot
    try:
        start, body, scope = call_asgi(app, "POST", CHECK, b"models=quality",
                                       [*multipart, (b"content-length", b"100000")])
        scopes.append(scope)
    finally:
        ticket.close()
    headers = dict(start["headers"])
    assert start["status"] == 503 and b'"code":50' in b"".join(body)
    assert headers[b"connection"] == b"close" and headers[b"retry-after"] == b"1"
    assert b'"status":"failure"' in b"".join(body)
    # The router sets "endpoint" in the scope of every request it matches.
    assert all("endpoint" not in scope for scope in scopes)
    # The control: an accepted request is routed (and its body read).
    _, _, scope = call_asgi(app, "GET", "/health", b"", [])
    assert "endpoint" in scope

    metrics = app.state.metrics.render()
    for status in (413, 401, 503):
        assert (f'iqa_requests_total{{endpoint="{CHECK}",method="POST",status="{status}"}} 1'
                in metrics)
    assert 'iqa_errors_total{type="api_error",code="50"} 1' in metrics


def test_refused_uploads_are_answered_and_the_connection_lingers(model, jpeg):
    """With `iqa serve`'s protocol, a refused upload's connection is not reset under the
    client: the answer arrives, then a FIN, and the rest of the body is still accepted
    (read and discarded) instead of the reset that can destroy an unread answer."""
    blocking = BlockingModel(model)
    limits = settings(workers=1, max_queue=0, max_upload_bytes=64 * LIMIT)
    app = create_app(blocking, limits)
    big = b"\xff" * (8 * LIMIT)  # far more than the socket buffers hold
    with uvicorn_server(app, **uvicorn_options(limits)) as base, \
            httpx.Client(timeout=30, trust_env=False) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, f"{base}{CHECK}", data={"models": "quality"},
                            files={"media": ("a.jpg", jpeg)})
        assert blocking.entered.wait(10)
        try:
            port = int(base.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(post_head("models=quality", len(big)) + big[:65536])
                answer = b""
                while not answer.endswith(b"}"):
                    chunk = sock.recv(65536)
                    assert chunk, answer
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 503") and b"connection: close" in answer
                assert sock.recv(1) == b""  # FIN after the answer
                sock.sendall(big[65536:])  # still read (and dropped): no reset
            with httpx.Client(timeout=30, trust_env=False) as other:
                for _ in range(5):  # httpx sends whole bodies before it reads
                    busy = other.post(f"{base}{CHECK}", data={"models": "quality"},
                                      files={"media": ("big.jpg", big)})
                    assert busy.status_code == 503 and error_of(busy) == ("api_error", 50)
                    assert busy.headers["connection"] == "close"
        finally:
            blocking.release.set()
        assert first.result().status_code == 200


def test_multipart_is_parsed_off_the_event_loop(model, jpeg, monkeypatch):
    import asyncio

    seen = []
    real = app_module.parse_body

    def recording(*args, **kwargs):
        try:
            asyncio.get_running_loop()
            seen.append("event loop")
        except RuntimeError:
            seen.append("worker thread")
        return real(*args, **kwargs)

    monkeypatch.setattr(app_module, "parse_body", recording)
    with TestClient(create_app(model, settings())) as client:
        response = client.post(CHECK, data={"models": "quality"}, files={"media": ("a", jpeg)})
    assert response.status_code == 200
    assert seen == ["worker thread"]


def test_busy_refusals_log_one_line_per_second_with_a_count(caplog):
    from iqa.inference.server.app import BusyLog
    from iqa.inference.server.errors import ServerBusyError, spec_for

    now = [100.0]
    busy = BusyLog(logging.getLogger("iqa.server"), interval=1.0, clock=lambda: now[0])
    spec = spec_for(ServerBusyError("busy"))
    with caplog.at_level(logging.WARNING, logger="iqa.server"):
        for i in range(5):
            busy.refused(f"req_{i}", spec, "the server is busy")
        now[0] += 1.5
        busy.refused("req_5", spec, "the server is busy")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["request req_0: api_error 50: the server is busy",
                     "request req_5: api_error 50: the server is busy "
                     "(4 more refused since the last such line)"]


def test_every_busy_refusal_is_still_counted_in_the_metrics(model, jpeg):
    app = create_app(model, settings(workers=1, max_queue=0))
    with TestClient(app) as client:
        gate = app.state.service.gate
        ticket = gate.admit()
        codes = [client.post(CHECK, data={"models": "quality"},
                             files={"media": ("a", jpeg)}).status_code for _ in range(3)]
        ticket.close()
        metrics = client.get("/metrics").text
    assert codes == [503, 503, 503]
    assert 'iqa_errors_total{type="api_error",code="50"} 3' in metrics


def test_start_up_objects_are_frozen_out_of_the_garbage_collector(model):
    import gc

    gc.unfreeze()
    with TestClient(create_app(model, settings())) as client:
        assert client.get("/health").status_code == 200
        assert gc.get_freeze_count() > 1000
    gc.unfreeze()


def test_request_ids_are_distinct_and_use_the_whole_alphabet():
    import re

    from iqa.inference.server.app import new_id

    ids = [new_id("req_") for _ in range(3000)]
    assert all(re.fullmatch(r"req_[A-Za-z0-9]{21}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    for position in (4, 14, 24):  # first, middle and last character
        assert len({i[position] for i in ids}) == 62


def test_a_queue_that_filled_during_the_upload_refuses_before_parsing(model, jpeg, monkeypatch):
    parsed, tickets = [], []
    real_read, real_parse = app_module.read_body, app_module.parse_body

    async def read_then_fill(*args, **kwargs):
        body = await real_read(*args, **kwargs)
        gate = app.state.service.gate
        tickets.extend(gate.admit() for _ in range(gate.capacity))  # others took every slot
        return body

    monkeypatch.setattr(app_module, "read_body", read_then_fill)
    monkeypatch.setattr(app_module, "parse_body",
                        lambda *a, **k: parsed.append(1) or real_parse(*a, **k))
    app = create_app(model, settings(workers=1, max_queue=0))
    with TestClient(app) as client:
        response = client.post(CHECK, data={"models": "quality"}, files={"media": ("a", jpeg)})
        for ticket in tickets:
            ticket.close()
    assert response.status_code == 503 and error_of(response) == ("api_error", 50)
    assert parsed == []


# ---------------------------------------------------------- 8. slow-client limits
def slow_app_server(model, **overrides):
    limits = settings(header_timeout=0.5, body_timeout=0.5, **overrides)
    return uvicorn_server(create_app(model, limits), **uvicorn_options(limits))


def trickle(base: str, data: bytes, pause: float) -> tuple[int, bytes]:
    """Send ``data`` one byte per ``pause`` on a new connection; see :func:`trickle_on`."""
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return trickle_on(sock, data, pause)


def _readable(sock, timeout: float) -> bool:
    import select

    return bool(select.select([sock], [], [], timeout)[0])


def test_slow_headers_are_cut_off_and_others_still_served(model, jpeg):
    head = post_head("models=quality", 10) + b"0123456789"
    head = head.replace(b"Host: t\r\n", b"Host: t\r\n" + b"X-Pad: " + b"a" * 200 + b"\r\n")
    with slow_app_server(model) as base:
        results = []
        threads = [threading.Thread(target=lambda: results.append(trickle(base, head, 0.05)))
                   for _ in range(8)]
        for t in threads:
            t.start()
        # Served while eight slowloris connections are open.
        ok = httpx.post(f"{base}{CHECK}", data={"models": "quality"},
                        files={"media": ("a.jpg", jpeg)}, trust_env=False, timeout=30)
        for t in threads:
            t.join(30)
    assert ok.status_code == 200
    assert len(results) == 8
    for sent, answer in results:
        assert sent < len(head)  # closed long before the head was complete
        assert answer.startswith(b"HTTP/1.1 408") and b'"code":17' in answer


def test_a_kept_alive_connection_gets_a_new_head_deadline(model):
    """After an answer, the next head on the same connection has its own deadline."""
    with slow_app_server(model, keep_alive_timeout=30) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            first = b""
            while not first.endswith(b"}"):
                first += sock.recv(65536)
            sent, answer = trickle_on(sock, b"GET /health HTTP/1.1\r\nHost: t\r\n" * 20, 0.05)
    assert first.startswith(b"HTTP/1.1 200")
    assert 0 < sent < 20 * 35
    assert answer.startswith(b"HTTP/1.1 408") and b'"code":17' in answer


def test_pipelined_requests_are_answered_in_order(model):
    """Two requests in one packet (httptools queues the second): both answered, in order,
    on the one connection."""
    with slow_app_server(model) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
                         b"GET /nowhere HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 404" in answer


def test_an_unknown_http_method_is_a_json_400(model):
    with slow_app_server(model) as base:
        answer = raw_request(base, b"INVENTED /health HTTP/1.1\r\nHost: t\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b'"code":18' in answer


def test_slow_body_gets_408(model, jpeg):
    body = (b'--b\r\nContent-Disposition: form-data; name="media"; filename="a.jpg"\r\n\r\n'
            + jpeg[:400] + b"\r\n--b--\r\n")
    with slow_app_server(model) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(post_head("models=quality", len(body)))
            sent, answer = trickle_on(sock, body, 0.05)
    assert sent < len(body)
    assert answer.startswith(b"HTTP/1.1 408") and b'"code":17' in answer


def trickle_on(sock, data: bytes, pause: float) -> tuple[int, bytes]:
    """Send one byte per ``pause`` until the server answers; return (sent, answer)."""
    sent = 0
    for byte in data:
        if _readable(sock, pause):
            break
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        sent += 1
    answer = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        answer += chunk
    return sent, answer


def test_uvicorn_level_errors_are_failure_json(model):
    with slow_app_server(model, max_header_bytes=4096) as base:
        garbage = raw_request(base, b"\x16\x03\x01 not http at all\r\n\r\n")
        # h11 bounds what it buffers of a head that is still incomplete.
        huge = raw_request(base, b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 8192)
    for answer in (garbage, huge):
        assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
        assert b"application/json" in answer and b'"code":18' in answer


def test_a_whole_oversized_head_in_one_read_is_refused(model):
    # Complete heads are parsed inside one data_received call, before it can count them.
    head = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 6000 + b"\r\n\r\n"
    within = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n"
    with slow_app_server(model, max_header_bytes=4096) as base:
        big = raw_request(base, head)
        small = raw_request(base, within)
        many = raw_request(base, b"GET /health HTTP/1.1\r\nHost: t\r\n"
                           + b"".join(b"X-%d: %s\r\n" % (i, b"b" * 100) for i in range(50))
                           + b"\r\n")
    for answer in (big, many):
        assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
        assert b'"code":18' in answer and b"exceeds 4096 bytes" in answer
    assert small.startswith(b"HTTP/1.1 200"), small[:100]


def test_connection_limit_answers_503_json(model):
    limits = settings(max_connections=3, header_timeout=30)
    with uvicorn_server(create_app(model, limits), **uvicorn_options(limits)) as base:
        port = int(base.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        try:
            answer = raw_request(base, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        finally:
            for sock in idle:
                sock.close()
        with httpx.Client(trust_env=False) as client:
            assert client.get(f"{base}/health").status_code == 200  # free again
    assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
    assert b'"code":50' in answer and b"retry-after: 1" in answer.lower()


# --------------------------------------------------------- 9. small protocol faults
def test_405_allow_lists_every_method(model):
    with TestClient(create_app(model, settings())) as client:
        response = client.delete(CHECK)
    assert error_of(response) == ("request_error", 41)
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allowed


def test_multipart_without_closing_boundary_is_malformed(model, jpeg):
    body = (b'--b\r\nContent-Disposition: form-data; name="models"\r\n\r\nquality\r\n'
            b'--b\r\nContent-Disposition: form-data; name="media"; filename="a.jpg"\r\n\r\n'
            + jpeg)
    with TestClient(create_app(model, settings())) as client:
        response = client.post(CHECK, content=body,
                               headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 400 and error_of(response) == ("request_error", 16)
    assert "closing boundary" in response.json()["error"]["message"]


def test_bomb_message_cites_max_pixels(tiny_model_path):
    model = QualityModel(tiny_model_path, max_pixels=5_000_000)
    with TestClient(create_app(model, settings())) as client:
        # 30000 x 30000 is beyond Pillow's own limit too, which used to be quoted.
        for w, h in ((30_000, 30_000), (3_000, 3_000)):
            response = client.post(CHECK, data={"models": "quality"},
                                   files={"media": ("bomb.png", png_bomb_header(w, h))})
            assert error_of(response) == ("media_error", 23)
            message = response.json()["error"]["message"]
            assert "limit of 5.0 MP" in message, message
            assert "178956970" not in message


def test_docs_are_served_without_a_cdn(model):
    with TestClient(create_app(model, settings())) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert "cdn" not in page.text.lower()
        assert "/docs-static/swagger-ui-bundle.js" in page.text
        script = client.get("/docs-static/swagger-ui-bundle.js")
        css = client.get("/docs-static/swagger-ui.css")
    assert script.status_code == 200 and len(script.content) > 100_000
    assert css.status_code == 200


# -- scripts/benchmark_server.py: the server's log must not fill an unread pipe
def load_benchmark():
    return load_script("benchmark_server")


@pytest.mark.slow
def test_benchmark_server_keeps_answering_after_a_long_log(guard, tiny_model_path, tmp_path):
    """The benchmark's lost answers: `iqa serve` logged into a pipe nobody read, and once
    64 KiB of WARNING lines (one per 503 or refused fetch) filled it, the next log write
    blocked the event loop for good. Here each refused fetch logs a ~4 KB line, so 64 of
    them write four times what a pipe holds; every request must still be answered."""
    bench = load_benchmark()
    port = bench.free_port()
    with socket.socket() as closed, open(tmp_path / "server.log", "w+b") as log:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/{'a' * 3900}.jpg"
        server = bench.start_server(port, log, ("--model", str(tiny_model_path)))
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            with httpx.Client(timeout=30, trust_env=False) as client:
                while True:
                    assert server.poll() is None, log.seek(0) or log.read().decode()
                    assert time.monotonic() < deadline, "iqa serve did not start"
                    try:
                        if client.get(f"{base}/health").status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.2)
                for _ in range(64):
                    response = client.get(f"{base}{CHECK}",
                                          params={"models": "quality", "url": url})
                    assert error_of(response) == ("media_error", 31)
        finally:
            server.terminate()
            try:
                server.wait(10)
            except Exception:  # noqa: BLE001 - TimeoutExpired: make sure it goes
                server.kill()
                server.wait(10)
        assert (tmp_path / "server.log").stat().st_size > 3 * 64 * 1024


# ------------------------------------------------------- scoring below the event loop


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_scoring_threads_run_at_a_lower_priority_than_the_event_loop():
    import os

    from iqa.inference.server.gate import WorkGate

    def own_nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = own_nice()
    gate = WorkGate(workers=2, max_queue=0, scoring_nice=5)
    try:
        # Both workers: block the first so that the second job needs the second thread.
        started, release = threading.Event(), threading.Event()

        def hold() -> int:
            started.set()
            release.wait(5)
            return own_nice()

        first = gate.scoring.submit(hold)
        assert started.wait(5)
        second = gate.scoring.submit(own_nice)
        assert second.result(5) == min(base + 5, 19)
        release.set()
        assert first.result(5) == min(base + 5, 19)
    finally:
        gate.shutdown()
    assert own_nice() == base  # the caller (the event loop's thread) is left alone
    plain = WorkGate(workers=1, max_queue=0, scoring_nice=0)
    try:
        assert plain.scoring.submit(own_nice).result(5) == base
    finally:
        plain.shutdown()


@pytest.mark.parametrize(("options", "message"), [
    (["--scoring-nice", "-1"], "--scoring-nice must be >= 0, got -1"),
    (["--workers", "0"], "--workers must be >= 1, got 0"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be > 0"),
    # A negative timeout started a server that answered every request with 503 or 504.
    (["--request-timeout", "-1"], "--request-timeout must be > 0, got -1"),
    (["--fetch-timeout", "-1"], "--fetch-timeout must be > 0, got -1"),
    (["--header-timeout", "nan"], "--header-timeout must be > 0, got nan"),
    (["--max-pixels", "0"], "--max-pixels must be > 0"),
    (["--threads", "0"], "--threads must be >= 1"),
])
def test_serve_names_the_option_out_of_range(capsys, options, message):
    from iqa.inference.cli import main

    assert main(["serve", *options, "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("--") == 1  # only the faulty option is named


def test_serve_checks_environment_values_as_options(capsys, monkeypatch):
    from iqa.inference.cli import main

    monkeypatch.setenv("IQA_REQUEST_TIMEOUT", "-5")
    assert main(["serve", "--port", "1"]) == 2
    assert "--request-timeout must be > 0, got -5.0" in capsys.readouterr().err


@pytest.mark.parametrize(("port", "message"), [("99999", "port 99999 is outside 1-65535"),
                                               ("0", "outside"), ("http", "not a port number")])
def test_serve_rejects_ports_that_cannot_be_bound_as_given(capsys, monkeypatch, port, message):
    # uvicorn took 99999 without a word and the kernel bound some other port.
    from iqa.inference.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--port", port])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    monkeypatch.setenv("IQA_PORT", port)
    with pytest.raises(SystemExit) as exit_info:
        main(["serve"])
    assert exit_info.value.code == 2 and "IQA_PORT" in capsys.readouterr().err
