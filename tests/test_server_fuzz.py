"""Property-based fuzzing (Hypothesis) of the decoder and of the HTTP API's bodies.

Properties: every outcome is a score or a documented error (a code of the stable
table), never a 5xx, a hang or unbounded memory. Examples are capped for CI by the
`IQA_FUZZ_EXAMPLES` environment variable (default 40 per property); run with e.g.
`IQA_FUZZ_EXAMPLES=2000` for a deeper search. No timing is asserted (deadline=None):
a hang would show up as pytest-timeout's failure instead.
"""

from __future__ import annotations

import io
import os
import resource

import numpy as np
import pytest
from fastapi.testclient import TestClient
from http_fixtures import encode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from iqa.inference import QualityModel
from iqa.inference.decode import decode_image
from iqa.inference.errors import IQAError
from iqa.inference.fetch import FetchPolicy
from iqa.inference.server.app import create_app
from iqa.inference.server.errors import ERROR_TABLE
from iqa.inference.server.settings import ServerSettings

EXAMPLES = int(os.environ.get("IQA_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])
CHECK = "/1.0/check.json"
MAX_PIXELS = 2_000_000  # so one decode holds at most ~6 MB of pixels
# The decoder and the server together may not grow the process's peak RSS by more than
# this over a whole fuzz run (decoded images are capped by MAX_PIXELS).
RSS_BOUND_MB = 300
DOCUMENTED = {spec.code for spec in ERROR_TABLE} - {99}


def _photo() -> np.ndarray:
    from skimage import data

    return data.astronaut()[::4, ::4].copy()  # 128 x 128, a real photo


def _seeds() -> dict[str, bytes]:
    photo = _photo()
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "GIF")
    return {
        "jpeg": encode(photo, quality=85),
        "progressive": encode(photo, quality=80, progressive=True),
        "png": encode(photo, "PNG"),
        "webp": encode(photo, "WEBP", quality=80),
        "gif": buffer.getvalue(),
        "bmp": encode(photo, "BMP"),
        "tiff": encode(photo, "TIFF"),
    }


SEEDS = _seeds()
seed_names = st.sampled_from(sorted(SEEDS))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(SEEDS[draw(seed_names)])
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "splice", "overwrite"]))
        if not data:
            break
        if kind == "truncate":
            del data[draw(st.integers(0, len(data) - 1)):]
        elif kind == "flip":
            for _ in range(draw(st.integers(1, 16))):
                i = draw(st.integers(0, len(data) - 1))
                data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "splice":
            # Another format's header on this file's body, or the reverse.
            other = SEEDS[draw(seed_names)]
            cut = draw(st.integers(0, min(len(other), 256)))
            data[:cut] = other[:cut]
        else:
            # Header fields (sizes, lengths) live near the start: hit them harder.
            i = draw(st.integers(0, min(len(data) - 1, 64)))
            data[i:i + 4] = draw(st.binary(min_size=4, max_size=4))
    return bytes(data)


@pytest.fixture(scope="module")
def rss_budget():
    start = _peak_rss_mb()
    yield
    assert _peak_rss_mb() - start < RSS_BOUND_MB


@FUZZ
@given(data=mutated_images())
def test_decoder_on_mutated_real_images(rss_budget, data):
    try:
        image = decode_image(data, max_pixels=MAX_PIXELS, name="fuzz")
    except IQAError as exc:
        from iqa.inference.server.errors import spec_for

        assert spec_for(exc).code in DOCUMENTED, repr(exc)
    else:
        assert image.mode == "RGB"
        assert image.width * image.height <= MAX_PIXELS


def test_png_with_empty_ihdr_is_a_decode_error():
    """Found by the property above: Pillow raised ValueError, which reached the client
    as error 99."""
    data = bytearray(SEEDS["png"])
    data[8:12] = b"\0\0\0\0"  # the IHDR chunk's length
    with pytest.raises(IQAError) as caught:
        decode_image(bytes(data), name="fuzz")
    from iqa.inference.server.errors import spec_for

    assert spec_for(caught.value).code == 20


@pytest.fixture(scope="module")
def client(tiny_model_path):
    model = QualityModel(tiny_model_path, max_pixels=MAX_PIXELS)
    settings_ = ServerSettings(max_upload_bytes=256 * 1024,
                               fetch_policy=FetchPolicy(max_bytes=256 * 1024))
    with TestClient(create_app(model, settings_), raise_server_exceptions=False) as c:
        yield c


def assert_documented(response) -> None:
    assert response.status_code < 500, response.text
    body = response.json()
    if response.status_code == 200:
        assert body["status"] == "success" and 0 <= body["quality"]["score"] <= 1
    else:
        assert body["status"] == "failure"
        assert body["error"]["code"] in DOCUMENTED, body


@FUZZ
@given(data=mutated_images(), name=st.text(max_size=40))
def test_server_on_mutated_uploads(client, rss_budget, data, name):
    response = client.post(CHECK, data={"models": "quality"},
                           files={"media": (name or "x", data, "application/octet-stream")})
    assert_documented(response)


BOUNDARY_CHARS = st.characters(codec="ascii", categories=["L", "N"], include_characters="'()+_,-./:=?")
header_text = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=40)


@st.composite
def multipart_bodies(draw) -> tuple[bytes, str]:
    boundary = draw(st.text(BOUNDARY_CHARS, min_size=1, max_size=70))
    declared = draw(st.one_of(st.just(boundary), st.text(BOUNDARY_CHARS, min_size=1,
                                                         max_size=10)))
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(["media", "models", "url", "api_user", "api_secret",
                                     "quality_details", "", "MEDIA", "x" * 300]) | header_text)
        disposition = f'form-data; name="{name}"'
        if draw(st.booleans()):
            disposition += f'; filename="{draw(header_text)}"'
        headers = [f"Content-Disposition: {draw(st.just(disposition) | header_text)}"]
        for _ in range(draw(st.integers(0, 3))):
            headers.append(f"{draw(header_text)}: {draw(header_text)}")
        content = draw(st.one_of(
            st.just(b"quality"),
            mutated_images(),
            st.binary(max_size=512),
            st.integers(0, 300 * 1024).map(lambda n: b"\0" * n),  # around the size limit
        ))
        head = "\r\n".join(headers).encode("latin-1")
        parts.append(b"--" + boundary.encode() + b"\r\n" + head + b"\r\n\r\n" + content)
    body = b"\r\n".join(parts)
    ending = draw(st.sampled_from(["closed", "open", "junk"]))
    if ending == "closed":
        body += b"\r\n--" + boundary.encode() + b"--\r\n"
    elif ending == "junk":
        body += draw(st.binary(max_size=64))
    content_type = draw(st.sampled_from([
        f"multipart/form-data; boundary={declared}",
        f'multipart/form-data; boundary="{declared}"',
        "multipart/form-data",
        "application/x-www-form-urlencoded",
        "text/plain",
        "",
    ]))
    return body, content_type


@FUZZ
@given(case=multipart_bodies())
def test_server_on_fuzzed_multipart_bodies(client, rss_budget, case):
    body, content_type = case
    headers = {"content-type": content_type} if content_type else {}
    response = client.post(f"{CHECK}?models=quality", content=body, headers=headers)
    assert_documented(response)


def test_server_still_serves_after_fuzzing(client):
    ok = client.post(CHECK, data={"models": "quality"},
                     files={"media": ("a.jpg", SEEDS["jpeg"], "image/jpeg")})
    assert ok.status_code == 200
