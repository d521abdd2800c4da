"""The web page at ``/``: static HTML, CSS and JavaScript shipped inside the package.

The page is only a client of ``/1.0/check.json``: it adds no endpoint that scores, so
auth, limits and errors stay those of the API. Its files are read once at start-up
and served from memory with a strict Content-Security-Policy (same-origin scripts and
requests only), so the page works offline and cannot be made to talk elsewhere.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import Response

UI_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
# img-src allows http(s): a pasted URL's thumbnail is loaded by the browser from where
# the user pointed it; scripts, styles and API calls stay on this origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' blob: data: http: https:; connect-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # A new release must not be mixed with a cached old script.
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return (resources.files("iqa.inference.server") / "static" / name).read_bytes()


def add_page(app: FastAPI) -> None:
    """Serve the page at ``/`` and its assets under ``/ui/``."""
    index = _read("index.html")
    assets = {name: (_read(name), media_type) for name, media_type in UI_FILES.items()}

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page(_request: Request):
        return Response(index, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    def asset_route(body: bytes, media_type: str):
        async def asset(_request: Request):
            return Response(body, media_type=media_type, headers=SECURITY_HEADERS)

        return asset

    for name, (body, media_type) in assets.items():
        app.add_api_route(f"/ui/{name}", asset_route(body, media_type), methods=["GET"],
                          include_in_schema=False)
