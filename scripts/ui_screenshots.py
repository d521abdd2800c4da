"""Screenshots of the web page for docs/: desktop and 360 px phone width.

Runs `iqa serve`'s app with the shipped model on 127.0.0.1, uploads the photos in
docs/examples (plus two degraded copies and a file that is not an image) through the
page, and saves what Debian's chromium renders. No browser is downloaded.

    python scripts/ui_screenshots.py            # writes docs/ui-desktop.png, docs/ui-phone.png
"""

from __future__ import annotations

import argparse
import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--no-proxy-server", "--hide-scrollbars"]


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def uploads() -> list[dict]:
    files = [{"name": p.name, "mimeType": "image/jpeg", "buffer": p.read_bytes()}
             for p in sorted(EXAMPLES.glob("*.jpg"))]
    coffee = np.asarray(Image.open(EXAMPLES / "coffee.jpg").convert("RGB"), dtype=np.float32)
    noise = np.random.default_rng(0).normal(0, 40, coffee.shape)
    files.append({"name": "coffee_dark.jpg", "mimeType": "image/jpeg",
                  "buffer": _jpeg((coffee * 0.18).astype(np.uint8))})
    files.append({"name": "coffee_noisy.jpg", "mimeType": "image/jpeg",
                  "buffer": _jpeg(np.clip(coffee + noise, 0, 255).astype(np.uint8))})
    files.append({"name": "notes.txt.jpg", "mimeType": "image/jpeg",
                  "buffer": b"not a photo\n" * 10})
    return files


def serve(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from iqa.inference.server.app import create_app

    server, base = serve(create_app())
    files = uploads()
    shots = {"ui-desktop.png": {"width": 1200, "height": 900},
             "ui-phone.png": {"width": 360, "height": 1400}}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        for name, viewport in shots.items():
            page = browser.new_page(viewport=viewport, device_scale_factor=1)
            page.goto(base + "/")
            page.set_input_files("#files", files)
            page.wait_for_function(
                "n => document.querySelectorAll('#grid .card').length === n && "
                "!document.querySelector('#grid .card[aria-busy=true]')", arg=len(files))
            page.select_option("#sort", "score-desc")
            page.screenshot(path=str(args.out / name), full_page=name == "ui-desktop.png")
            print("wrote", args.out / name)
            page.close()
        browser.close()
    server.should_exit = True


if __name__ == "__main__":
    main()
