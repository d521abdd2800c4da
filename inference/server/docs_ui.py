"""`/docs`: Swagger UI served from files bundled in a package, so it works offline.

FastAPI's default page loads Swagger UI's script and CSS from a CDN and is blank on a
machine without internet access. `fastapi-offline` ships Swagger UI 5 (which reads the
OpenAPI 3.1 schema FastAPI writes); its files are served here and FastAPI's own
`get_swagger_ui_html` writes the page.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
STATIC_PATH = "/docs-static"
BUNDLE_FILES = Path(fastapi_offline.__file__).parent / "static"


def add_docs(app: FastAPI) -> None:
    app.mount(STATIC_PATH, StaticFiles(directory=BUNDLE_FILES), name="docs-static")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{STATIC_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_PATH}/favicon.png",
        )
