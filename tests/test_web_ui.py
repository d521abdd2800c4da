"""The web page at `/`, end to end in headless Chromium from Debian's `chromium` package.

Playwright for Python drives the system binary through `executable_path`; no browser is
ever downloaded. The page talks to a real uvicorn server on 127.0.0.1 running the
shipped model, and every score it renders is checked against the JSON the API itself
returned for that request, so the tests hold whatever the shipped model scores.

Outside CI the tests skip, saying why, when chromium or playwright is missing; in CI
(`CI` set, as `.ci/run` does) a missing browser is a failure. IQA_CHROMIUM names another
Chromium binary.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from http_fixtures import encode, uvicorn_server
from PIL import Image

from iqa.inference import QualityModel
from iqa.inference.server import cli
from iqa.inference.server.app import create_app
from iqa.inference.server.auth import KeyStore
from iqa.inference.server.settings import ServerSettings

EXAMPLES = Path(__file__).parent.parent / "docs" / "examples"
CHECK = "/1.0/check.json"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--no-first-run",
    "--disable-sync", "--disable-default-apps", "--disable-extensions",
    "--no-proxy-server", "--metrics-recording-only", "--mute-audio",
]
USER, SECRET = "alice", "s3cret-for-tests"
MAX_UPLOAD = 2 * 1024 * 1024


def chromium_executable() -> str:
    found = os.environ.get("IQA_CHROMIUM") or shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        message = ("Debian's chromium is not installed (`apt-get install -y chromium`); "
                   "the web page's browser tests need /usr/bin/chromium")
        if os.environ.get("CI"):
            pytest.fail(message + ". .ci/run installs it: it must not be missing in CI")
        pytest.skip(message)
    return found


def _sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        message = "playwright is not installed (pip install -e '.[dev]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright


# ------------------------------------------------------------------------------ photos
@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """The examples in docs/, plus real photos degraded in known ways, for a spread of scores."""
    folder = tmp_path_factory.mktemp("photos")
    paths = [EXAMPLES / "astronaut.jpg", EXAMPLES / "astronaut_blurred.jpg",
             EXAMPLES / "coffee.jpg"]
    coffee = np.asarray(Image.open(EXAMPLES / "coffee.jpg").convert("RGB"), dtype=np.float32)
    dark = folder / "coffee_dark.jpg"
    dark.write_bytes(encode((coffee * 0.18).astype(np.uint8), quality=90))
    noisy = folder / "coffee_noisy.jpg"
    rng = np.random.default_rng(0)
    noisy.write_bytes(encode(np.clip(coffee + rng.normal(0, 40, coffee.shape), 0, 255)
                             .astype(np.uint8), quality=90))
    return paths + [dark, noisy]


BROKEN_NAME = "notes.jpg"
BROKEN = b"These are my holiday notes, not a photo.\n" * 20


# ------------------------------------------------------------------------------ servers
@pytest.fixture(scope="module")
def shipped_model():
    return QualityModel()


@pytest.fixture(scope="module")
def open_server(shipped_model):
    # The default fetch policy: URLs into loopback/private networks are refused (error 14).
    settings = ServerSettings(max_upload_bytes=MAX_UPLOAD, workers=2)
    with uvicorn_server(create_app(shipped_model, settings)) as base:
        yield base


@pytest.fixture(scope="module")
def auth_server(shipped_model):
    settings = ServerSettings(keys=KeyStore({USER: SECRET}), workers=1)
    with uvicorn_server(create_app(shipped_model, settings)) as base:
        yield base


# ------------------------------------------------------------------------------ browser
@pytest.fixture(scope="module")
def browser():
    executable = chromium_executable()
    sync_playwright = _sync_playwright()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class PageLog:
    """Every request the page made, and the JSON of every check.json answer it got."""

    def __init__(self, page):
        self.requests: list[str] = []
        self.check_bodies: list[dict] = []
        self.check_urls: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("response", self._on_response)

    def _on_response(self, response):
        if response.url.split("?")[0].endswith(CHECK):
            self.check_urls.append(response.url)
            try:
                self.check_bodies.append(response.json())
            except Exception:  # noqa: BLE001 - the assertion on the body says more
                self.check_bodies.append({"unparsable": response.status})


def open_page_at(browser, url: str, **context_options):
    context = browser.new_context(accept_downloads=True, **context_options)
    page = context.new_page()
    log = PageLog(page)
    page.goto(url)
    return page, log


def open_page(browser, base: str, **context_options):
    page, log = open_page_at(browser, base + "/", **context_options)
    page.wait_for_selector("body[data-ready=true]")
    return page, log


def wait_until_settled(page, count: int) -> None:
    page.wait_for_function(
        """n => document.querySelectorAll('#grid .card').length === n &&
                document.querySelectorAll('#grid .card[aria-busy=true]').length === 0""",
        arg=count, timeout=120_000)


def cards(page) -> list[dict]:
    """What each card shows, in the grid's order (visible cards only)."""
    return page.eval_on_selector_all("#grid .card", """els => els.filter(e => !e.hidden)
        .map(e => ({
          name: e.querySelector('.name').textContent,
          status: e.dataset.status,
          score: e.querySelector('.score').textContent,
          bucket: e.querySelector('.bucket').textContent,
          below: e.classList.contains('below'),
          belowFlagShown: getComputedStyle(e.querySelector('.below-flag')).display !== 'none',
          error: e.querySelector('.error').textContent,
          factors: [...e.querySelectorAll('.factors dt')].map((dt, i) => [dt.textContent,
                     e.querySelectorAll('.factors .value')[i].textContent]),
          alt: (e.querySelector('img') || {}).alt || null,
        }))""")


@pytest.fixture(scope="module")
def scored(browser, open_server, photos):
    """One page with the photos and the broken file uploaded through the keyboard-opened picker."""
    page, log = open_page(browser, open_server)
    # Playwright turns file-chooser interception on without waiting for the browser's
    # answer; a listener added early plus a round trip makes sure it is on before the key.
    page.on("filechooser", lambda _chooser: None)
    page.evaluate("() => 0")
    page.focus("#pick")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    # Playwright takes paths or buffers, not both: the photos go as buffers too.
    chooser.value.set_files([{"name": p.name, "mimeType": "image/jpeg", "buffer": p.read_bytes()}
                             for p in photos] + [
        {"name": BROKEN_NAME, "mimeType": "image/jpeg", "buffer": BROKEN}])
    wait_until_settled(page, len(photos) + 1)
    # The cards settle when the page has the answers; Playwright's response handler reads
    # each body in another round trip to the browser, so it can lag: wait for every body.
    for _ in range(600):
        if len(log.check_bodies) >= len(photos) + 1:
            break
        page.wait_for_timeout(50)
    by_uri = {b["media"]["uri"]: b for b in log.check_bodies if b.get("status") == "success"}
    failures = [b for b in log.check_bodies if b.get("status") == "failure"]
    yield page, log, by_uri, failures
    page.context.close()


# ------------------------------------------------------------------------------ tests
def test_page_is_self_contained_and_accessible(browser, open_server):
    response = httpx.get(open_server + "/")
    assert response.status_code == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page, log = open_page(browser, open_server)
    try:
        assert page.title().startswith("iqa")
        # Offline: nothing but this origin (the page, its two assets, /health).
        assert log.requests and all(u.startswith(open_server) for u in log.requests), log.requests
        assert page.locator("#threshold").input_value() == "0.5"
        assert page.locator("#threshold-value").text_content() == "0.50"
        # Every control has a label a screen reader can announce.
        unlabelled = page.eval_on_selector_all(
            "input:not([type=hidden]):not([hidden]), select",
            "els => els.filter(e => !e.labels || e.labels.length === 0).map(e => e.id)")
        assert unlabelled == []
        assert not page.locator("#auth").is_visible()  # an open server asks for no key
    finally:
        page.context.close()


def test_swagger_ui_renders_offline(browser, open_server):
    page, log = open_page_at(browser, open_server + "/docs")
    try:
        page.wait_for_selector(".swagger-ui .opblock-summary-path", timeout=60_000)
        assert CHECK in page.locator(".swagger-ui").text_content()
        assert all(u.startswith(open_server) or u.startswith("data:") for u in log.requests), \
            [u for u in log.requests if not u.startswith(open_server)]
    finally:
        page.context.close()


def test_rendered_scores_equal_the_api_json(scored, photos, open_server):
    page, log, by_uri, failures = scored
    shown = {c["name"]: c for c in cards(page)}
    assert set(by_uri) == {p.name for p in photos}, "every photo got a success from the API"
    for name, body in by_uri.items():
        quality = body["quality"]
        card = shown[name]
        assert card["status"] == "done"
        assert card["score"] == f"{quality['score']:.2f}"
        assert card["bucket"] == quality["bucket"].replace("_", " ")
        assert card["factors"] == [[k.replace("_", " "), f"{v:.2f}"]
                                   for k, v in quality.get("factors", {}).items()]
        assert card["alt"].startswith(f"Photo {name}, score {quality['score']:.2f}")
    # The same file sent by another client gets the same score: the page adds nothing.
    astronaut = photos[0]
    direct = httpx.post(open_server + CHECK, data={"models": "quality"},
                        files={"media": (astronaut.name, astronaut.read_bytes())}).json()
    assert shown[astronaut.name]["score"] == f"{direct['quality']['score']:.2f}"
    # The page asked over POST, never with parameters in the URL.
    assert all("?" not in u for u in log.check_urls)


def test_broken_file_gets_its_own_message(scored):
    page, _log, _by_uri, failures = scored
    assert [f["error"]["code"] for f in failures] == [20]
    card = {c["name"]: c for c in cards(page)}[BROKEN_NAME]
    assert card["status"] == "failed"
    assert card["score"] == "—"
    assert card["error"].startswith("Unsupported file: ")
    assert failures[0]["error"]["message"] in card["error"] and "(error 20)" in card["error"]
    assert not card["below"]


def test_sorting_and_filtering_by_score(scored):
    page, _log, by_uri, _failures = scored
    exact = {uri: b["quality"]["score_exact"] for uri, b in by_uri.items()}
    try:
        page.select_option("#sort", "score-desc")
        order = [c["name"] for c in cards(page)]
        assert order[:-1] == sorted(exact, key=lambda n: -exact[n])
        assert order[-1] == BROKEN_NAME, "failures sort after every score"
        page.select_option("#sort", "score-asc")
        order = [c["name"] for c in cards(page)]
        assert order[:-1] == sorted(exact, key=lambda n: exact[n])
        page.select_option("#filter", "failed")
        assert [c["name"] for c in cards(page)] == [BROKEN_NAME]
    finally:
        page.select_option("#sort", "added")
        page.select_option("#filter", "all")


def test_threshold_marks_photos_below_it(scored):
    page, _log, by_uri, _failures = scored
    scores = {uri: b["quality"]["score"] for uri, b in by_uri.items()}

    def marked():
        shown = cards(page)
        assert all(c["below"] == c["belowFlagShown"] for c in shown)
        return {c["name"] for c in shown if c["below"]}

    try:
        assert marked() == {n for n, s in scores.items() if s < 0.5}
        # A threshold between the best and the worst photo splits them, whatever the model.
        middle = round((max(scores.values()) + min(scores.values())) / 2, 2)
        page.fill("#threshold", str(middle))
        assert page.locator("#threshold-value").text_content() == f"{middle:.2f}"
        expected = {n for n, s in scores.items() if s < middle}
        assert marked() == expected
        if max(scores.values()) > min(scores.values()):
            assert expected and expected != set(scores)
        page.select_option("#filter", "below")
        assert {c["name"] for c in cards(page)} == expected
        # The slider works from the keyboard too.
        page.fill("#threshold", "0.5")
        page.focus("#threshold")
        page.keyboard.press("ArrowRight")
        assert page.locator("#threshold").input_value() == "0.51"
    finally:
        page.select_option("#filter", "all")
        page.fill("#threshold", "0.5")


def test_csv_and_json_downloads(scored):
    page, _log, by_uri, failures = scored
    with page.expect_download() as download:
        page.click("#download-csv")
    assert download.value.suggested_filename == "iqa-results.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text("utf-8"))))
    assert {r["name"] for r in rows} == set(by_uri) | {BROKEN_NAME}
    for row in rows:
        if row["name"] == BROKEN_NAME:
            assert (row["status"], row["score"], row["error_code"]) == ("failed", "", "20")
            continue
        quality = by_uri[row["name"]]["quality"]
        assert row["status"] == "done"
        assert float(row["score"]) == quality["score"]
        assert float(row["score_exact"]) == pytest.approx(quality["score_exact"], abs=1e-9)
        assert row["bucket"] == quality["bucket"]
        assert row["below_threshold"] == str(quality["score"] < 0.5).lower()
        for factor, value in quality.get("factors", {}).items():
            assert float(row[factor]) == value

    with page.expect_download() as download:
        page.click("#download-json")
    data = json.loads(Path(download.value.path()).read_text("utf-8"))
    assert data["threshold"] == 0.5
    assert {r["name"]: r["score"] for r in data["results"] if r["status"] == "done"} == {
        uri: b["quality"]["score"] for uri, b in by_uri.items()}


def test_refused_url_and_drag_and_drop(browser, open_server, photos):
    page, log = open_page(browser, open_server)
    try:
        # The server's default policy refuses URLs into loopback (SSRF guard): error 14.
        page.fill("#url", "http://127.0.0.1:9/private.jpg")
        page.keyboard.press("Enter")
        # A drop of a file onto the page goes through the same path as the picker.
        page.evaluate("""([name, bytes]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/jpeg'}));
            document.getElementById('drop').dispatchEvent(
                new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""", [photos[2].name, list(photos[2].read_bytes())])
        wait_until_settled(page, 2)
        shown = {c["name"]: c for c in cards(page)}
        refused = shown["http://127.0.0.1:9/private.jpg"]
        assert refused["status"] == "failed"
        assert refused["error"].startswith("Refused URL: ") and "(error 14)" in refused["error"]
        dropped = shown[photos[2].name]
        body = next(b for b in log.check_bodies if b.get("status") == "success")
        assert dropped["score"] == f"{body['quality']['score']:.2f}"
    finally:
        page.context.close()


def test_too_large_upload_shows_the_limit(browser, open_server):
    page, log = open_page(browser, open_server)
    try:
        # A name that a spreadsheet would run as a formula, to check the CSV defuses it.
        name = "=HYPERLINK(huge).jpg"
        page.set_input_files("#files", [{"name": name, "mimeType": "image/jpeg",
                                         "buffer": b"\xff\xd8" + b"\0" * (MAX_UPLOAD + 10)}])
        wait_until_settled(page, 1)
        card = cards(page)[0]
        assert card["status"] == "failed"
        assert card["error"].startswith("Too large: ") and "(error 24)" in card["error"]
        with page.expect_download() as download:
            page.click("#download-csv")
        rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text("utf-8"))))
        assert [(r["name"], r["error_code"]) for r in rows] == [("'" + name, "24")]
    finally:
        page.context.close()


def test_busy_server_answers_are_retried(browser, shipped_model, photos):
    # One worker and no queue: the page's second parallel upload is refused with 503 and
    # Retry-After; the page waits and retries instead of reporting a failure.
    settings = ServerSettings(workers=1, max_queue=0)
    with uvicorn_server(create_app(shipped_model, settings)) as base:
        page, log = open_page(browser, base)
        try:
            page.set_input_files("#files", [str(p) for p in photos[:4]])
            wait_until_settled(page, 4)
            assert [c["status"] for c in cards(page)] == ["done"] * 4
            busy = [b for b in log.check_bodies if b.get("status") == "failure"]
            assert all(b["error"]["code"] == 50 for b in busy), busy
        finally:
            page.context.close()


def test_auth_prompt_and_no_scores_without_a_key(browser, auth_server, photos):
    page, log = open_page(browser, auth_server)
    try:
        # /health says keys are required, so the prompt is there before any upload.
        page.wait_for_selector("#auth:not([hidden])")
        assert page.locator("#api-user").is_visible()
        page.set_input_files("#files", [str(photos[0])])
        wait_until_settled(page, 1)
        card = cards(page)[0]
        assert card["status"] == "auth" and card["score"] == "—"
        assert card["error"].startswith("API key needed: ") and "(error 1)" in card["error"]
        assert log.check_bodies and all("quality" not in b for b in log.check_bodies)

        # A wrong key is refused and the prompt comes back.
        page.fill("#api-user", USER)
        page.fill("#api-secret", "wrong")
        page.click("#auth-form button[type=submit]")
        page.wait_for_selector("#auth-form:not([hidden])")
        wait_until_settled(page, 1)
        assert "incorrect" in page.locator("#auth-message").text_content()
        assert all("quality" not in b for b in log.check_bodies)

        page.fill("#api-secret", SECRET)
        page.keyboard.press("Enter")
        page.wait_for_selector("#grid .card[data-status=done]")
        body = log.check_bodies[-1]
        assert cards(page)[0]["score"] == f"{body['quality']['score']:.2f}"

        # The key lives in the page's memory only.
        assert page.context.cookies() == []
        storage = page.evaluate("() => [document.cookie, localStorage.length, "
                                "sessionStorage.length, location.href]")
        assert storage[:3] == ["", 0, 0] and SECRET not in storage[3]
        assert page.locator("#api-secret").input_value() == ""
        assert all(SECRET not in u for u in log.requests)
    finally:
        page.context.close()


def test_readable_at_phone_width(browser, open_server, photos):
    page, _log = open_page(browser, open_server, viewport={"width": 360, "height": 740})
    try:
        page.set_input_files("#files", [str(photos[0])])
        wait_until_settled(page, 1)
        overflow = page.evaluate("() => document.documentElement.scrollWidth")
        assert overflow <= 360, f"the page scrolls sideways at 360 px ({overflow} px wide)"
        bars = page.eval_on_selector_all(".factors .bar", "els => els.map(e => e.clientWidth)")
        assert bars and min(bars) >= 40, f"factor bars squeezed at 360 px: {bars}"
        score_size = page.eval_on_selector(".score", "e => parseFloat(getComputedStyle(e).fontSize)")
        assert score_size >= 16
    finally:
        page.context.close()


def test_no_ui_turns_the_page_off(shipped_model):
    args = _parse(["--no-ui"])
    assert cli.build_settings(args).ui is False
    assert cli.build_settings(_parse([])).ui is True
    with TestClient(create_app(shipped_model, ServerSettings(ui=False))) as client:
        response = client.get("/")
        assert response.status_code == 404 and response.json()["error"]["code"] == 40
        assert client.get("/ui/app.js").status_code == 404
        assert client.get("/health").status_code == 200


def test_page_adds_no_way_around_auth(shipped_model):
    settings = ServerSettings(keys=KeyStore({USER: SECRET}))
    with TestClient(create_app(shipped_model, settings)) as client:
        page = client.get("/")
        assert page.status_code == 200 and "score" not in page.headers.get("set-cookie", "")
        with (EXAMPLES / "coffee.jpg").open("rb") as f:
            refused = client.post(CHECK, data={"models": "quality"}, files={"media": f},
                                  headers={"Referer": str(client.base_url) + "/"})
        assert refused.status_code == 401 and "quality" not in refused.json()


def _parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)
