"""A corpus of bad (and awkward but valid) inputs: each gets its documented answer, and
the server keeps serving afterwards.

Two apps share one model: `strict` has the default fetch policy (no private address at
all); `loopback` allows exactly 127.0.0.1/32, so the loopback image server is reachable
as a first hop while every redirect target is still checked.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pytest
from fastapi.testclient import TestClient
from http_fixtures import LoopbackHTTPServer, Route, encode, png_bomb_header
from PIL import Image

from iqa.inference import QualityModel
from iqa.inference.fetch import FetchPolicy
from iqa.inference.server.app import create_app
from iqa.inference.server.errors import ERROR_TABLE
from iqa.inference.server.settings import ServerSettings

CHECK = "/1.0/check.json"
MAX_UPLOAD = 200_000


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return QualityModel(tiny_model_path)


@pytest.fixture(scope="module")
def images(photo) -> dict[str, bytes]:
    small = photo[:256, :320]
    jpeg = encode(small, quality=90)
    frames = [Image.fromarray(np.roll(small, 40 * i, axis=1)) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    first_frame_gif = io.BytesIO()
    frames[0].save(first_frame_gif, "GIF")
    grey16 = (small.mean(axis=2) * 257).astype(np.uint16)
    # Upright image stored rotated, with EXIF orientation 6 ("rotate 90 cw to view").
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = encode(np.rot90(small, k=1).copy(), quality=95, exif=exif.tobytes())
    return {
        "jpeg": jpeg,
        "upright_q95": encode(small, quality=95),
        "rotated_exif": rotated,
        "truncated": jpeg[: len(jpeg) // 2],
        "gif": gif.getvalue(),
        "gif_first_frame": first_frame_gif.getvalue(),
        "png16": encode(Image.fromarray(grey16), "PNG"),
        "cmyk": encode(Image.fromarray(small).convert("CMYK"), "JPEG"),
        "one_pixel": encode(np.zeros((1, 1, 3), np.uint8), "PNG"),
        "bomb": png_bomb_header(30_000, 30_000),
        "svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" '
               b'height="64"><rect width="64" height="64" fill="red"/></svg>',
        "text": b"this is not a photo, just text in a file named .jpg\n" * 20,
        "html": b"<!doctype html><html><body>hello</body></html>",
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "big": b"\xff\xd8" + b"\0" * (MAX_UPLOAD + 1000),
    }


@pytest.fixture(scope="module")
def image_server(images):
    routes = {
        "/photo.jpg": Route(body=images["jpeg"]),
        "/big.jpg": Route(body=images["big"]),
        "/big-stream.jpg": Route(body=images["big"], send_length=False),
        "/page.html": Route(body=images["html"], content_type="text/html"),
        "/empty.jpg": Route(body=b""),
        "/untyped-text": Route(body=images["text"], content_type=None),
        "/slow.jpg": Route(body=images["jpeg"], delay=1.5),
        "/to-private": Route(status=302, headers={"Location": "http://10.0.0.1/photo.jpg"}),
        "/to-metadata": Route(status=302,
                              headers={"Location": "http://169.254.169.254/latest/meta-data/"}),
        "/to-file": Route(status=302, headers={"Location": "file:///etc/passwd"}),
        "/loop": Route(status=302, headers={"Location": "/loop"}),
    }
    with LoopbackHTTPServer(routes) as server:
        yield server


def _settings(policy: FetchPolicy) -> ServerSettings:
    return ServerSettings(max_upload_bytes=MAX_UPLOAD, fetch_policy=policy, workers=2)


@pytest.fixture(scope="module")
def clients(model):
    strict = _settings(FetchPolicy(max_bytes=MAX_UPLOAD))
    loopback = _settings(FetchPolicy(allowed_networks=("127.0.0.1/32",), max_bytes=MAX_UPLOAD,
                                     read_timeout=0.5))
    with TestClient(create_app(model, strict)) as a, TestClient(create_app(model, loopback)) as b:
        yield {"strict": a, "loopback": b}


@dataclass
class Case:
    """One bad request. `build(images, server)` returns kwargs for client.request()."""

    name: str
    build: object
    status: int
    error: tuple[str, int] | None  # (type, code); None means the request must succeed
    app: str = "strict"
    method: str = "POST"
    no_connect: bool = False  # the request must not open any connection at all
    extra: dict = field(default_factory=dict)


def upload(key, filename="photo.jpg", **fields):
    def build(images, server):
        return {"data": {"models": "quality", **fields},
                "files": {"media": (filename, images[key], "application/octet-stream")}}
    return build


def by_url(url_or_path, host="127.0.0.1"):
    def build(images, server):
        url = url_or_path if "://" in url_or_path or not url_or_path.startswith("/") \
            else server.url(url_or_path, host=host)
        return {"params": {"models": "quality", "url": url}}
    return build


def raw(**kwargs):
    return lambda images, server: kwargs


CASES = [
    # --- uploads: broken or hostile files
    Case("truncated_jpeg", upload("truncated"), 400, ("media_error", 21)),
    Case("zero_bytes", raw(data={"models": "quality"}, files={"media": ("a.jpg", b"")}),
         400, ("media_error", 27)),
    Case("text_named_jpg", upload("text"), 415, ("media_error", 20)),
    Case("svg", upload("svg", "drawing.svg"), 415, ("media_error", 20)),
    Case("html_upload", upload("html", "page.jpg"), 415, ("media_error", 20)),
    Case("random_bytes", upload("random", "noise.jpg"), 415, ("media_error", 20)),
    Case("one_by_one", upload("one_pixel", "dot.png"), 400, ("media_error", 22)),
    Case("png_bomb_30000x30000", upload("bomb", "bomb.png"), 413, ("media_error", 23)),
    Case("oversize_upload", upload("big", "big.jpg"), 413, ("media_error", 24)),
    Case("oversize_chunked_upload",
         lambda images, server: {
             "content": iter([b"--b\r\nContent-Disposition: form-data; name=\"media\"; "
                              b"filename=\"x.jpg\"\r\n\r\n", images["big"], b"\r\n--b--\r\n"]),
             "headers": {"content-type": "multipart/form-data; boundary=b"}},
         413, ("media_error", 24)),
    # --- awkward but valid images: must succeed
    Case("png_16_bit", upload("png16", "deep.png"), 200, None),
    Case("cmyk_jpeg", upload("cmyk", "print.jpg"), 200, None),
    Case("animated_gif", upload("gif", "anim.gif"), 200, None),
    Case("exif_rotated", upload("rotated_exif", "rotated.jpg"), 200, None),
    # --- arguments
    Case("missing_media", raw(data={"models": "quality"}), 400, ("argument_error", 10)),
    Case("media_as_text_field", raw(data={"models": "quality", "media": "photo.jpg"}),
         400, ("argument_error", 10)),
    Case("unknown_model", upload("jpeg", models="quality,nudity"), 400, ("argument_error", 12)),
    Case("missing_models", raw(files={"media": ("a.jpg", b"x")}), 400, ("argument_error", 12)),
    Case("media_and_url", upload("jpeg", url="http://images.example.com/a.jpg"),
         400, ("argument_error", 11)),
    Case("bad_details_flag", upload("jpeg", quality_details="maybe"), 422, ("argument_error", 15)),
    Case("multipart_without_boundary",
         raw(content=b"xx", headers={"content-type": "multipart/form-data"}),
         400, ("request_error", 16)),
    # --- URLs refused before any connection
    Case("url_private_10", by_url("http://10.0.0.1/photo.jpg"), 400, ("argument_error", 14),
         method="GET", no_connect=True),
    Case("url_metadata_169_254", by_url("http://169.254.169.254/latest/meta-data/"),
         400, ("argument_error", 14), method="GET", no_connect=True),
    Case("url_localhost", by_url("/photo.jpg", host="localhost"), 400, ("argument_error", 14),
         method="GET", no_connect=True),
    Case("url_ipv4_mapped_ipv6", by_url("http://[::ffff:10.0.0.1]/a.jpg"),
         400, ("argument_error", 14), method="GET", no_connect=True),
    Case("url_name_to_private", by_url("http://internal.example.com/a.jpg"),
         400, ("argument_error", 14), method="GET", no_connect=True),
    Case("url_loopback_without_allow", by_url("/photo.jpg"), 400, ("argument_error", 14),
         method="GET", no_connect=True),
    Case("url_file_scheme", by_url("file:///etc/passwd"), 400, ("argument_error", 13),
         method="GET", no_connect=True),
    Case("url_ftp_scheme", by_url("ftp://images.example.com/a.jpg"), 400,
         ("argument_error", 13), method="GET", no_connect=True),
    Case("url_unresolvable", by_url("http://no-such-host.invalid/a.jpg"), 502,
         ("media_error", 31), method="GET", no_connect=True),
    # --- URLs via the loopback-allowlisted app: the first hop is allowed, the rest checked
    Case("redirect_to_private", by_url("/to-private"), 400, ("argument_error", 14),
         app="loopback", method="GET"),
    Case("redirect_to_metadata", by_url("/to-metadata"), 400, ("argument_error", 14),
         app="loopback", method="GET"),
    Case("redirect_to_file", by_url("/to-file"), 400, ("argument_error", 13),
         app="loopback", method="GET"),
    Case("redirect_loop", by_url("/loop"), 502, ("media_error", 32), app="loopback",
         method="GET"),
    Case("url_404", by_url("/missing.jpg"), 502, ("media_error", 30), app="loopback",
         method="GET"),
    Case("url_oversize_download", by_url("/big.jpg"), 413, ("media_error", 25),
         app="loopback", method="GET"),
    Case("url_oversize_stream", by_url("/big-stream.jpg"), 413, ("media_error", 25),
         app="loopback", method="GET"),
    Case("url_html_page", by_url("/page.html"), 415, ("media_error", 26), app="loopback",
         method="GET"),
    Case("url_empty_body", by_url("/empty.jpg"), 400, ("media_error", 27), app="loopback",
         method="GET"),
    Case("url_untyped_text", by_url("/untyped-text"), 415, ("media_error", 20),
         app="loopback", method="GET"),
    Case("url_read_timeout", by_url("/slow.jpg"), 504, ("media_error", 33), app="loopback",
         method="GET"),
    # --- HTTP-level mistakes
    Case("unknown_path", raw(), 404, ("request_error", 40), method="GET",
         extra={"path": "/2.0/check.json"}),
    # A 307 to the slashless path would have the client re-send the upload.
    Case("trailing_slash", raw(), 404, ("request_error", 40), method="POST",
         extra={"path": "/1.0/check.json/"}),
    Case("wrong_method", raw(), 405, ("request_error", 41), method="DELETE"),
]


def test_corpus_is_big_enough():
    assert len(CASES) >= 20
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, clients, images, image_server, guard):
    client = clients[case.app]
    kwargs = case.build(images, image_server)
    response = client.request(case.method, case.extra.get("path", CHECK), **kwargs)
    body = response.json()
    assert response.status_code == case.status, body
    if case.error is None:
        assert body["status"] == "success"
        assert 0.0 <= body["quality"]["score"] <= 1.0
    else:
        assert body["status"] == "failure"
        assert (body["error"]["type"], body["error"]["code"]) == case.error, body
        assert body["request"]["operations"] == 0
    if case.no_connect:
        assert guard.connects == []  # refused at the resolver, before any socket
    else:
        assert all(address[0] == "127.0.0.1" for address in guard.connects), guard.connects

    # ...and the server is still serving.
    ok = client.post(CHECK, data={"models": "quality"},
                     files={"media": ("ok.jpg", images["jpeg"], "image/jpeg")})
    assert ok.status_code == 200 and ok.json()["status"] == "success"


def _exact(client, data: bytes) -> float:
    response = client.post(CHECK, data={"models": "quality", "quality_details": "1"},
                           files={"media": ("x", data)})
    assert response.status_code == 200, response.json()
    return response.json()["quality"]["score_exact"]


def test_exif_rotation_and_gif_first_frame_are_applied(clients, images, model):
    client = clients["strict"]
    # The rotated file scores like the upright one, and not like its raw (sideways) pixels.
    upright = _exact(client, images["upright_q95"])
    rotated = _exact(client, images["rotated_exif"])
    sideways = model.score(np.asarray(Image.open(io.BytesIO(images["rotated_exif"])))).score
    assert rotated == pytest.approx(upright, abs=0.01)
    assert abs(rotated - sideways) > abs(rotated - upright)
    assert _exact(client, images["gif"]) == pytest.approx(
        _exact(client, images["gif_first_frame"]), abs=1e-6)


def test_every_error_code_in_table_is_unique_and_documented():
    from pathlib import Path

    codes = [spec.code for spec in ERROR_TABLE]
    assert len(codes) == len(set(codes))
    root = Path(__file__).parent.parent
    # The HTTP API's reference page (moved out of README.md by issue 9).
    docs = [p for p in (root / "docs" / "http-api.md", root / "README.md") if p.is_file()]
    text = "\n".join(p.read_text(encoding="utf-8") for p in docs)
    for spec in ERROR_TABLE:
        row = f"| {spec.code} | `{spec.type}` | {spec.status} |"
        assert row in text, f"the README's HTTP error table lacks the row {row!r}"
