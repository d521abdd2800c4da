"""The HTTP API: exact response shapes, auth, health/metrics, concurrency and overload.

Everything runs in-process or on 127.0.0.1; NetworkGuard fails a test that tries to
connect anywhere else and answers DNS from a fixed table.
"""

from __future__ import annotations

import argparse
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from http_fixtures import LoopbackHTTPServer, Route, encode, uvicorn_server

from iqa.inference import QualityModel
from iqa.inference.contract import bucket_for
from iqa.inference.fetch import FetchPolicy
from iqa.inference.server import cli
from iqa.inference.server.app import OPEN_SERVER_WARNING, create_app
from iqa.inference.server.auth import KeyConfigError, KeyStore, load_keys_file
from iqa.inference.server.settings import ServerSettings

CHECK = "/1.0/check.json"
REQUEST_ID = re.compile(r"^req_[A-Za-z0-9]{21}$")
MEDIA_ID = re.compile(r"^med_[A-Za-z0-9]{21}$")


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return QualityModel(tiny_model_path)


@pytest.fixture(scope="module")
def jpeg(photo) -> bytes:
    return encode(photo)


@pytest.fixture(scope="module")
def other_jpeg(photo) -> bytes:
    return encode(photo[::-1, :, :].copy(), quality=40)


@pytest.fixture(scope="module")
def image_server(jpeg, other_jpeg):
    routes = {"/photo.jpg": Route(body=jpeg), "/other.jpg": Route(body=other_jpeg)}
    with LoopbackHTTPServer(routes) as server:
        yield server


def open_settings(**overrides) -> ServerSettings:
    """Settings whose URL fetches may reach loopback (the test image server)."""
    return ServerSettings(fetch_policy=FetchPolicy(allow_private=True), **overrides)


def assert_success_shape(body: dict, score: float, uri: str) -> None:
    assert list(body) == ["status", "request", "quality", "media"]
    assert body["status"] == "success"
    assert set(body["request"]) == {"id", "timestamp", "operations"}
    assert REQUEST_ID.match(body["request"]["id"])
    assert isinstance(body["request"]["timestamp"], float)
    assert abs(body["request"]["timestamp"] - time.time()) < 60
    assert body["request"]["operations"] == 1
    assert body["quality"] == {"score": round(score, 2)}  # nothing extra unless asked
    assert set(body["media"]) == {"id", "uri"}
    assert MEDIA_ID.match(body["media"]["id"])
    assert body["media"]["uri"] == uri


def assert_failure(response, status: int, error_type: str, code: int) -> dict:
    body = response.json()
    assert response.status_code == status, body
    assert list(body) == ["status", "request", "error"]
    assert body["status"] == "failure"
    assert REQUEST_ID.match(body["request"]["id"])
    assert body["request"]["operations"] == 0
    assert set(body["error"]) == {"type", "code", "message"}
    assert (body["error"]["type"], body["error"]["code"]) == (error_type, code), body
    assert body["error"]["message"]
    return body


# ------------------------------------------------------------------------ exact JSON
def test_get_by_url_exact_json(guard, model, image_server, jpeg):
    url = image_server.url("/photo.jpg")
    with TestClient(create_app(model, open_settings())) as client:
        response = client.get(CHECK, params={"models": "quality", "url": url,
                                             "api_user": "ignored", "api_secret": "ignored"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert_success_shape(response.json(), model.score(jpeg).score, url)
    assert all(address[0] == "127.0.0.1" for address in guard.connects)


def test_post_upload_exact_json(guard, model, jpeg, other_jpeg):
    with TestClient(create_app(model, open_settings())) as client:
        for data, name in ((jpeg, "astronaut.jpg"), (other_jpeg, "flipped.jpg")):
            response = client.post(CHECK, data={"models": "quality"},
                                   files={"media": (name, data, "image/jpeg")})
            assert response.status_code == 200
            assert_success_shape(response.json(), model.score(data).score, name)
        # The URL can be POSTed as a form field too; models may be a list.
    assert guard.connects == []


def test_an_upload_without_a_file_name_echoes_an_empty_uri(guard, model, jpeg):
    """media.uri is the file name as sent: none is "", as in the hosted API's example."""
    body = (b"--b\r\nContent-Disposition: form-data; name=\"media\"; filename=\"\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\n" + jpeg + b"\r\n--b--\r\n")
    with TestClient(create_app(model, open_settings())) as client:
        response = client.post(CHECK, params={"models": "quality"}, content=body,
                               headers={"content-type": "multipart/form-data; boundary=b"})
        empty = client.post(CHECK, params={"models": "quality"},
                            content=body.replace(jpeg, b""),
                            headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 200
    assert_success_shape(response.json(), model.score(jpeg).score, "")
    # Messages still name the part, not an empty string.
    assert_failure(empty, 400, "media_error", 27)
    assert empty.json()["error"]["message"].startswith("media: ")


def test_post_url_field(guard, model, image_server, other_jpeg):
    url = image_server.url("/other.jpg")
    with TestClient(create_app(model, open_settings())) as client:
        response = client.post(CHECK, data={"models": "quality, quality", "url": url})
    assert response.status_code == 200
    assert_success_shape(response.json(), model.score(other_jpeg).score, url)


def test_two_urls_are_refused_without_fetching_either(guard, model, image_server):
    first, second = image_server.url("/photo.jpg"), image_server.url("/other.jpg")
    with TestClient(create_app(model, open_settings())) as client:
        by_get = client.get(CHECK, params=[("models", "quality"), ("url", first),
                                           ("url", second)])
        by_form = client.post(CHECK, data={"models": "quality", "url": [first, second]})
        split = client.post(f"{CHECK}?url={first}", data={"models": "quality", "url": second})
        malformed = client.get(CHECK, params={"models": "quality",
                                              "url": "http://exa mple.com/a.jpg"})
    for response in (by_get, by_form, split):
        body = assert_failure(response, 400, "argument_error", 11)
        assert "one `url`" in body["error"]["message"]
    assert_failure(malformed, 400, "argument_error", 13)
    assert guard.connects == []


def test_ids_are_unique(model, jpeg):
    with TestClient(create_app(model, open_settings())) as client:
        bodies = [client.post(CHECK, data={"models": "quality"},
                              files={"media": ("a.jpg", jpeg)}).json() for _ in range(5)]
    ids = {b["request"]["id"] for b in bodies} | {b["media"]["id"] for b in bodies}
    assert len(ids) == 10


def test_bucket_follows_the_score_as_shown():
    """An exact score just under a bound is shown rounded up to it: the bucket must match
    the number the reader sees, not the hidden digits."""
    from iqa.inference.model import QualityResult
    from iqa.inference.server.service import quality_body

    for exact, shown, bucket in [(0.8496, 0.85, "very_good"), (0.8449, 0.84, "good"),
                                 (0.2496, 0.25, "poor"), (0.5996, 0.6, "good")]:
        result = QualityResult(score=exact, bucket=bucket_for(exact), factors=None)
        body = quality_body(result, True, None)
        assert body == {"score": shown, "score_exact": exact, "bucket": bucket}
    assert quality_body(QualityResult(score=0.8496, bucket="good", factors=None),
                        False, "v") == {"score": 0.85}


def test_details_only_when_asked(model, jpeg):
    expected = model.score(jpeg)
    with TestClient(create_app(model, open_settings())) as client:
        quality = client.post(CHECK, data={"models": "quality", "quality_details": "1"},
                              files={"media": ("a.jpg", jpeg)}).json()["quality"]
        plain = client.post(CHECK, data={"models": "quality", "quality_details": "0"},
                            files={"media": ("a.jpg", jpeg)}).json()["quality"]
    assert plain == {"score": round(expected.score, 2)}
    assert quality["score"] == round(expected.score, 2)
    assert quality["score_exact"] == pytest.approx(expected.score, abs=1e-6)
    assert quality["bucket"] == bucket_for(round(expected.score, 2))
    assert quality["model_version"] == "tiny-test"
    assert set(quality["factors"]) == set(model.factor_names)
    assert quality["factors"] == {k: round(v, 2) for k, v in expected.factors.items()}


# ------------------------------------------------------------------------------ auth
def build_settings(argv: list[str]) -> ServerSettings:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.build_settings(parser.parse_args(argv))


def test_auth_from_env_and_keys_file(model, jpeg, tmp_path, monkeypatch):
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# users\nfile_user:file-secret\n\n  second : s3cr3t  \n")
    monkeypatch.setenv("IQA_API_KEYS", "env_user:env-secret,other:xyz")
    settings = build_settings(["--keys-file", str(keys_file)])
    assert len(settings.keys) == 4
    good = [("env_user", "env-secret"), ("other", "xyz"), ("file_user", "file-secret"),
            ("second", "s3cr3t")]
    bad = [(None, None), ("env_user", None), ("env_user", "wrong"), ("nobody", "env-secret"),
           ("file_user", "env-secret"), ("", "")]
    with TestClient(create_app(model, settings)) as client:
        for user, secret in good:
            fields = {"models": "quality", "api_user": user, "api_secret": secret}
            response = client.post(CHECK, data=fields, files={"media": ("a.jpg", jpeg)})
            assert response.status_code == 200, (user, response.json())
        for user, secret in bad:
            fields = {"models": "quality"}
            fields.update({k: v for k, v in (("api_user", user), ("api_secret", secret)) if v})
            response = client.post(CHECK, data=fields, files={"media": ("a.jpg", jpeg)})
            assert_failure(response, 401, "credentials_error", 1)
        # GET carries the keys in the query string; auth is checked before the URL.
        response = client.get(CHECK, params={"models": "quality", "url": "http://10.0.0.1/"})
        assert_failure(response, 401, "credentials_error", 1)
        assert client.get("/health").json()["auth"] is True


def test_auth_off_warns_at_startup(model, jpeg, monkeypatch, caplog):
    monkeypatch.delenv("IQA_API_KEYS", raising=False)
    settings = build_settings([])
    assert not settings.keys.enabled
    with caplog.at_level(logging.WARNING, logger="iqa.server"):
        with TestClient(create_app(model, settings)) as client:
            response = client.post(CHECK, data={"models": "quality"},
                                   files={"media": ("a.jpg", jpeg)})
    assert response.status_code == 200
    assert OPEN_SERVER_WARNING in caplog.text


def test_bad_keys_are_refused_at_startup(tmp_path):
    broken = tmp_path / "keys.txt"
    broken.write_text("alice:secret\nbob-without-secret\n")
    with pytest.raises(KeyConfigError, match=r"keys.txt:2"):
        load_keys_file(broken)
    with pytest.raises(KeyConfigError, match="IQA_API_KEYS entry 2"):
        KeyStore.from_sources("alice:1,:nouser")
    with pytest.raises(KeyConfigError, match="cannot read"):
        load_keys_file(tmp_path / "missing.txt")
    binary = tmp_path / "photo.jpg"
    binary.write_bytes(b"\xff\xd8\xff\xe0 not text")
    with pytest.raises(KeyConfigError, match=r"keys file .*photo.jpg is not UTF-8 text"):
        load_keys_file(binary)


def test_a_host_that_does_not_resolve_is_a_usage_error(capsys, monkeypatch):
    # The resolver is replaced, so no name server is asked; the CLI must turn its failure
    # into exit 2 before loading the model or starting uvicorn.
    import socket

    from iqa.inference.cli import main

    asked = []

    def no_such_host(host, *args, **kwargs):
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    assert main(["serve", "--host", "no-such-host.invalid", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert asked == ["no-such-host.invalid"]
    assert "--host no-such-host.invalid: cannot be resolved" in err and "Traceback" not in err


def test_cli_defaults_bind_loopback(monkeypatch):
    for name in ("IQA_HOST", "IQA_PORT", "IQA_ALLOW_PRIVATE_URLS", "IQA_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([])
    assert args.host == "127.0.0.1"
    settings = cli.build_settings(args)
    assert settings.fetch_policy.allow_private is False
    monkeypatch.setenv("IQA_ALLOW_PRIVATE_URLS", "1")
    monkeypatch.setenv("IQA_MAX_UPLOAD_MB", "2")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    settings = cli.build_settings(parser.parse_args(["--allow-url-network", "10.20.0.0/16"]))
    assert settings.fetch_policy.allow_private is True
    assert settings.max_upload_bytes == settings.fetch_policy.max_bytes == 2 * 1024 * 1024
    assert settings.fetch_policy.permits("10.20.1.1")


# ---------------------------------------------------------------- health, metrics, docs
def test_health_metrics_and_openapi(model, jpeg):
    with TestClient(create_app(model, open_settings())) as client:
        client.post(CHECK, data={"models": "quality"}, files={"media": ("a.jpg", jpeg)})
        client.post(CHECK, data={"models": "nudity"}, files={"media": ("a.jpg", jpeg)})
        client.get("/no/such/path")
        health = client.get("/health").json()
        metrics = client.get("/metrics")
        schema = client.get("/openapi.json").json()
        docs = client.get("/docs")
    assert health["status"] == "ok" and health["model"]["version"] == "tiny-test"
    assert health["in_flight"] == 0 and health["capacity"] == 2 + 32
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'iqa_requests_total{endpoint="/1.0/check.json",method="POST",status="200"} 1' in text
    assert 'iqa_requests_total{endpoint="/1.0/check.json",method="POST",status="400"} 1' in text
    assert 'iqa_requests_total{endpoint="unmatched",method="GET",status="404"} 1' in text
    assert 'iqa_errors_total{type="argument_error",code="12"} 1' in text
    assert 'iqa_request_duration_seconds_bucket{endpoint="/1.0/check.json",le="+Inf"} 2' in text
    assert 'iqa_request_duration_seconds_count{endpoint="/1.0/check.json"} 2' in text
    assert "# TYPE iqa_request_duration_seconds histogram" in text
    assert "iqa_in_flight_requests 0" in text
    assert set(schema["paths"][CHECK]) == {"get", "post"}
    post = schema["paths"][CHECK]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "media" in post["schema"]["properties"]
    assert schema["paths"][CHECK]["post"]["requestBody"]["required"] is False  # query works
    for method in ("get", "post"):  # the slow-body 408 is documented beside the others
        assert {"400", "408", "413", "503"} <= set(schema["paths"][CHECK][method]["responses"])
    assert docs.status_code == 200


# ----------------------------------------------------------------------- concurrency
def test_many_parallel_requests(guard, model, image_server, jpeg, other_jpeg):
    """64 concurrent requests against real uvicorn: all succeed or get the documented 503."""
    expected = {
        "photo": round(model.score(jpeg).score, 2),
        "other": round(model.score(other_jpeg).score, 2),
    }
    settings = open_settings(workers=2, max_queue=16)

    def one(i: int, client: httpx.Client, base: str):
        if i % 3 == 0:
            name = "photo"
            response = client.get(f"{base}{CHECK}", params={
                "models": "quality", "url": image_server.url("/photo.jpg")})
        else:
            name = "other" if i % 2 else "photo"
            data = other_jpeg if name == "other" else jpeg
            response = client.post(f"{base}{CHECK}", data={"models": "quality"},
                                   files={"media": (f"{i}.jpg", data, "image/jpeg")})
        return name, response

    with uvicorn_server(create_app(model, settings)) as base:
        limits = httpx.Limits(max_connections=64)
        with httpx.Client(timeout=60, limits=limits, trust_env=False) as client:
            with ThreadPoolExecutor(64) as pool:
                results = list(pool.map(lambda i: one(i, client, base), range(64)))
            # The server is still healthy afterwards.
            assert client.get(f"{base}/health").json()["in_flight"] == 0
    statuses = [r.status_code for _, r in results]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 18  # at least workers + max_queue got through
    for name, response in results:
        body = response.json()
        if response.status_code == 200:
            assert body["quality"]["score"] == expected[name]  # same score under load
        else:
            assert (body["error"]["type"], body["error"]["code"]) == ("api_error", 50)
            assert response.headers["retry-after"] == "1"


class BlockingModel:
    """The real model, except that score() waits until the test lets it go."""

    def __init__(self, model: QualityModel):
        self.model = model
        self.metadata = model.metadata
        self.entered = threading.Event()
        self.release = threading.Event()

    def score(self, source, name=None):
        self.entered.set()
        assert self.release.wait(30), "the test never released the model"
        return self.model.score(source, name=name)


def _post(client: httpx.Client, base: str, data: bytes):
    return client.post(f"{base}{CHECK}", data={"models": "quality"},
                       files={"media": ("a.jpg", data, "image/jpeg")})


def test_overload_answers_503_at_once(model, jpeg):
    blocking = BlockingModel(model)
    app = create_app(blocking, open_settings(workers=1, max_queue=0))
    with uvicorn_server(app) as base, httpx.Client(timeout=30, trust_env=False) as client:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(_post, client, base, jpeg)
            assert blocking.entered.wait(10)
            # The only slot is taken and the model still blocked: refused, not queued.
            busy = _post(client, base, jpeg)
            assert not first.done()
            assert_failure(busy, 503, "api_error", 50)
            assert busy.headers["retry-after"] == "1"
            blocking.release.set()
            assert first.result().status_code == 200
        assert _post(client, base, jpeg).status_code == 200  # the slot came back
        metrics = client.get(f"{base}/metrics").text
    assert 'iqa_errors_total{type="api_error",code="50"} 1' in metrics


def test_timed_out_work_still_holds_its_slot(model, jpeg):
    blocking = BlockingModel(model)
    app = create_app(blocking, open_settings(workers=1, max_queue=0, request_timeout=0.3))
    with uvicorn_server(app) as base, httpx.Client(timeout=30, trust_env=False) as client:
        timed_out = _post(client, base, jpeg)
        assert_failure(timed_out, 503, "api_error", 51)
        # The abandoned inference is still running, so there is no capacity yet.
        assert_failure(_post(client, base, jpeg), 503, "api_error", 50)
        blocking.release.set()
        deadline = time.monotonic() + 10
        while client.get(f"{base}/health").json()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _post(client, base, jpeg).status_code == 200


def test_oversize_upload_is_refused_while_reading(guard, model):
    """A chunked upload with no Content-Length is cut off soon after the limit."""
    import select
    import socket

    limit = 100_000
    total = 64 * 1024 * 1024
    chunk = b"\0" * 65536
    app = create_app(model, open_settings(max_upload_bytes=limit))
    with uvicorn_server(app) as base:
        port = int(base.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        head = (b"POST /1.0/check.json?models=quality HTTP/1.1\r\nHost: test\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        part = b'--b\r\nContent-Disposition: form-data; name="media"; filename="x.jpg"\r\n\r\n'
        sock.sendall(head + b"%x\r\n%s\r\n" % (len(part), part))
        sent = 0
        try:
            while sent < total:
                if select.select([sock], [], [], 0)[0]:
                    break  # the server has answered
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except OSError:  # the server closed the connection under us
            pass
        response = b""
        try:
            while b"}" not in response:
                data = sock.recv(65536)
                if not data:
                    break
                response += data
        finally:
            sock.close()
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b'"code":24' in response
    assert sent < total // 4  # it stopped reading long before the end


def test_framework_errors_become_failure_json(model):
    app = create_app(model, open_settings())

    @app.get("/test-only/typed")
    async def typed(n: int):  # FastAPI validates `n` before our code runs
        return {"n": n}

    @app.get("/test-only/boom")
    async def boom():
        raise RuntimeError("secret internal detail")

    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/test-only/typed", params={"n": "7"}).json() == {"n": 7}
        body = assert_failure(client.get("/test-only/typed", params={"n": "x"}),
                              422, "argument_error", 15)
        assert "n" in body["error"]["message"]
        body = assert_failure(client.get("/test-only/boom"), 500, "unknown_error", 99)
        assert "secret" not in body["error"]["message"]  # internals stay in the log
        assert body["request"]["id"] in body["error"]["message"]
        ok = client.post(CHECK, data={"models": "quality"},
                         files={"media": ("a.jpg", encode(np.zeros((64, 64, 3), np.uint8)))})
        assert ok.status_code == 200


def test_serve_refuses_bad_configuration(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("IQA_API_KEYS", raising=False)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--model", str(tmp_path / "missing.onnx")])
    assert cli.run(args) == 2
    assert "missing.onnx" in capsys.readouterr().err
    (tmp_path / "keys.txt").write_text("no-colon-here\n")
    args = parser.parse_args(["--keys-file", str(tmp_path / "keys.txt")])
    assert cli.run(args) == 2
    assert "keys.txt:1" in capsys.readouterr().err


def test_head_probes_and_every_served_path_has_its_own_metrics_label(model):
    """Uptime monitors probe with HEAD; /openapi.json and the docs' bundled files are
    served routes, so they are not counted as 'unmatched' like a random 404."""
    with TestClient(create_app(model, open_settings())) as client:
        head = client.head("/health")
        page = client.head("/")
        client.get("/openapi.json")
        docs = client.get("/docs")
        asset = next(part.split('"')[0] for part in docs.text.split('src="')[1:])
        assert client.get(asset).status_code == 200
        text = client.get("/metrics").text
    assert head.status_code == 200 and page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'iqa_requests_total{endpoint="/health",method="HEAD",status="200"} 1' in text
    assert 'iqa_requests_total{endpoint="/openapi.json",method="GET",status="200"} 1' in text
    assert 'iqa_requests_total{endpoint="/docs-static",method="GET",status="200"} 1' in text
    assert 'endpoint="unmatched"' not in text
