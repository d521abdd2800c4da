"""The HTTP API: the hosted image-quality API's ``/1.0/check.json``, plus health and metrics.

Every response of ``/1.0/check.json``, and every error anywhere (404, 405, validation),
is the hosted API's JSON: ``{"status": "success" | "failure", "request": {...}, ...}``.
Blocking work (URL fetches, decoding, onnxruntime) runs in thread pools behind a
bounded admission gate (see gate.py), so the event loop stays responsive and overload
is answered at once with 503.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import string
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..errors import IQAError
from ..fetch import FetchError, MiB
from .docs_ui import add_docs
from .errors import (
    UNKNOWN,
    APIError,
    ConflictingMediaError,
    InvalidParameterError,
    MalformedBodyError,
    MethodNotAllowedError,
    MissingMediaError,
    ProcessingTimeoutError,
    RouteNotFoundError,
    ScoringError,
    ServerBusyError,
    UploadTooLargeError,
    spec_for,
)
from .forms import parse_body, read_body
from .logsafe import install_log_filters, safe
from .metrics import Metrics, MetricsMiddleware
from .refusal import RefuseOnHeaders
from .schemas import CheckFailure, CheckSuccess
from .service import CheckService, Upload
from .settings import ServerSettings

logger = logging.getLogger("iqa.server")

CHECK_PATH = "/1.0/check.json"
# Room for the multipart framing and the text fields around the file itself.
FORM_OVERHEAD = 64 * 1024
OPEN_SERVER_WARNING = (
    "no API keys configured: the server is OPEN, anyone who can reach it can use it. "
    "Set IQA_API_KEYS='user:secret,...' or pass --keys-file to require api_user/api_secret."
)
_ID_ALPHABET = string.ascii_letters + string.digits
_ID_LENGTH = 21
_ID_SPACE = len(_ID_ALPHABET) ** _ID_LENGTH
_FAILURES = {
    status: {"model": CheckFailure} for status in (400, 401, 404, 405, 408, 413, 415, 422,
                                                     500, 502, 503, 504)
}
_FIELD_DOCS = {
    "models": "Comma-separated model names; only `quality` exists.",
    "url": "Public http(s) URL of the image.",
    "api_user": "API user (required when the server has keys).",
    "api_secret": "API secret (required when the server has keys).",
    "quality_details": "1 to add score_exact, bucket, factors and model_version.",
}


def new_id(prefix: str) -> str:
    """An id shaped like the hosted API's: prefix + 21 base62 characters.

    One draw from the OS for all 21 characters: drawing each one (secrets.choice) took
    about a tenth of the event loop's time while it answered an overload with 503s."""
    number = secrets.randbelow(_ID_SPACE)
    chars = []
    for _ in range(_ID_LENGTH):
        number, digit = divmod(number, len(_ID_ALPHABET))
        chars.append(_ID_ALPHABET[digit])
    return prefix + "".join(chars)


class BusyLog:
    """503s of a full queue, logged at most once per ``interval`` seconds with a count.

    An overloaded server refuses hundreds of requests a second; a line for each floods the
    log and costs the event loop (about 7 % of it under the benchmark's overload). The
    metrics still count every refusal (``iqa_errors_total``)."""

    def __init__(self, log: logging.Logger, interval: float = 1.0, clock=time.monotonic):
        self.log = log
        self.interval = interval
        self.clock = clock
        self._last = float("-inf")
        self._unlogged = 0

    def refused(self, request_id: str, spec, message: str) -> None:
        now = self.clock()
        if now - self._last < self.interval:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more refused since the last such line)" \
            if self._unlogged else ""
        self.log.warning("request %s: %s %d: %s%s", request_id, spec.type, spec.code,
                         safe(message), more)
        self._last, self._unlogged = now, 0


def _request_info(request: Request) -> dict:
    info = getattr(request.state, "iqa_request", None)
    if info is None:
        info = {"id": new_id("req_"), "timestamp": time.time()}
        request.state.iqa_request = info
    return info


def _human_bytes(n: int) -> str:
    """32 MiB, 2.9 MiB, 812 bytes: one decimal at most, never 2.89742."""
    return f"{n / MiB:.1f}".removesuffix(".0") + " MiB" if n >= MiB else f"{n} bytes"


async def read_post(request: Request, max_upload: int, body_timeout: float,
                    check_room: Callable[[], None] | None = None
                    ) -> tuple[dict, Upload | None]:
    """Parse a POST body (multipart or urlencoded) into fields and the `media` upload.

    The size limit is enforced while reading, so an oversize upload is refused after
    ``max_upload`` bytes, not after the client has sent gigabytes; the body must arrive
    within ``body_timeout`` seconds; parsing runs in a worker thread. ``check_room`` runs
    between the two: under overload a quarter of the refusals came after the body (the
    queue had room when the headers came and none once the body was in), and each of them
    parsed a multipart body only to be refused.
    """
    too_large = UploadTooLargeError(f"the upload is larger than the limit of "
                                    f"{_human_bytes(max_upload)}")
    try:
        body = await read_body(request.stream(), max_upload + FORM_OVERHEAD, body_timeout,
                               too_large)
    except ClientDisconnect as exc:  # nobody is left to read the answer; log it as a 4xx
        raise MalformedBodyError("the client disconnected before sending the whole body") from exc
    if check_room is not None:
        try:
            check_room()
        except BaseException:
            del body  # the traceback would keep it alive otherwise
            raise
    form = await run_in_threadpool(parse_body, request.headers.get("content-type", ""), body,
                                   max_upload)
    del body
    fields: dict = dict(request.query_params)
    fields.update(form.fields)
    refuse_repeated_url(request.query_params.getlist("url")
                        + [value for name, value in form.fields if name == "url"])
    files = [f for f in form.files if f.field_name == "media"]
    if len(files) > 1:
        raise ConflictingMediaError("send one file in `media` per request")
    if "media" in fields:
        raise MissingMediaError(
            "`media` must be a file part (curl -F 'media=@photo.jpg'); "
            "send URLs in the `url` field"
        )
    if not files:
        return fields, None
    if len(files[0].data) > max_upload:
        raise too_large
    # media.uri echoes the file name as sent, so an upload without one gets "" (as the
    # hosted API's own example does); error messages name it `media` instead.
    return fields, Upload(data=files[0].data, filename=files[0].filename or "")


def refuse_repeated_url(values: list[str]) -> None:
    """Two `url`s would leave it to the parser which photo is scored; say so instead."""
    if len(values) > 1:
        raise ConflictingMediaError(f"send one `url` per request, not {len(values)}")


def declared_too_large(request: Request, max_upload: int) -> UploadTooLargeError | None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_upload + FORM_OVERHEAD:
        return UploadTooLargeError(f"the upload ({_human_bytes(int(declared))}) is larger than "
                                   f"the limit of {_human_bytes(max_upload)}")
    return None


def _route_path(scope) -> str:
    """The path the router matches: ``path`` without the ``root_path`` prefix."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    methods: set[str] = set()
    for route in app.router.routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path) and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


def create_app(model=None, settings: ServerSettings | None = None, *, fetcher=None) -> FastAPI:
    """Build the ASGI app. ``model`` is a QualityModel (default: the shipped model).

    ``fetcher`` replaces the URL fetcher built from ``settings.fetch_policy`` (tests).
    """
    settings = settings or ServerSettings()
    if model is None:
        from ..model import QualityModel

        model = QualityModel()
    service = CheckService(model, settings, fetcher)
    metrics = Metrics()
    metrics.gauge("iqa_in_flight_requests", "Requests admitted and not finished.",
                  lambda: service.gate.in_flight)
    metrics.gauge("iqa_capacity_requests", "Requests admitted at most (workers + max_queue).",
                  lambda: service.gate.capacity)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        install_log_filters()
        if settings.keys.enabled:
            logger.info("API keys: %d api_user(s) configured", len(settings.keys))
        else:
            logger.warning(OPEN_SERVER_WARNING)
        if service.processes is not None:
            # Load the model in every worker before the first request, not during it.
            pids = await asyncio.to_thread(service.processes.warm_up)
            logger.info("scoring in %d worker process(es): pid %s", settings.workers,
                        ", ".join(map(str, pids)))
        # What start-up allocated (FastAPI, pydantic, the model's wrappers) lives as long as
        # the server: frozen, it is never scanned again, and a full collection on the event
        # loop drops from about 16 ms to nothing (measured on 2 cores).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="iqa",
        version=__version__,
        summary="Technical image quality, in the hosted image-quality API's dialect.",
        lifespan=lifespan,
        # The CDN-hosted Swagger UI is blank offline; docs_ui serves a bundled copy.
        docs_url=None,
        redoc_url=None,
        # The hosted API has one spelling of each path; Starlette's 307 to the slashless
        # path would make clients re-send an upload, and its Location can name the wrong
        # scheme behind a proxy. A trailing slash gets the 404 failure JSON instead.
        redirect_slashes=False,
    )
    add_docs(app)
    app.state.service = service
    app.state.metrics = metrics
    check_post_route = None  # set once the routes exist; metrics label refusals with it

    def refuse_on_headers(scope) -> Exception | None:
        """What a POST to the API can be refused for before a byte of its body is read:
        a declared oversize body, wrong credentials in the query string, a full queue."""
        if scope["method"] != "POST" or _route_path(scope) != CHECK_PATH:
            return None
        request = Request(scope)
        error: Exception | None = declared_too_large(request, settings.max_upload_bytes)
        if error is None:
            try:
                service.precheck(request.query_params)
            except APIError as exc:
                error = exc
        if error is not None:
            scope["route"] = check_post_route
        return error

    # Inside MetricsMiddleware (added last, so outermost), which times and counts these
    # refusals like any other answer; ahead of FastAPI's routing and dependencies.
    app.add_middleware(RefuseOnHeaders, decide=refuse_on_headers,
                       answer=lambda scope, exc: failure(Request(scope), exc))
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    busy_log = BusyLog(logger)

    def failure(request: Request, exc: BaseException, status: int | None = None) -> JSONResponse:
        info = _request_info(request)
        spec = spec_for(exc)
        if spec is UNKNOWN:
            message = f"internal error; the server log has the details of request {info['id']}"
        else:
            message = str(exc) or spec.meaning
        if spec is UNKNOWN or isinstance(exc, ScoringError) or (
                spec.status >= 500 and not isinstance(exc, (APIError, FetchError))):
            # A real server fault: keep the traceback.
            logger.error("request %s failed: %s", info["id"], safe(message), exc_info=exc)
        elif isinstance(exc, ServerBusyError):
            busy_log.refused(info["id"], spec, message)
        else:
            # Anyone can trigger these: one line each, so a client cannot flood the log.
            level = logging.WARNING if spec.status >= 500 else logging.INFO
            logger.log(level, "request %s: %s %d: %s", info["id"], spec.type, spec.code,
                       safe(message))
        metrics.count_error(spec.type, spec.code)
        headers = {}
        if isinstance(exc, (ServerBusyError, ProcessingTimeoutError)):
            headers["Retry-After"] = str(settings.retry_after)
        if isinstance(exc, MethodNotAllowedError) and getattr(exc, "allow", None):
            headers["Allow"] = exc.allow
        body = {
            "status": "failure",
            "request": {**info, "operations": 0},
            "error": {"type": spec.type, "code": spec.code, "message": message},
        }
        return JSONResponse(body, status_code=status or spec.status, headers=headers)

    async def respond(request: Request, work) -> JSONResponse:
        info = _request_info(request)
        try:
            result = await work()
        except Exception as exc:  # noqa: BLE001 - every failure becomes failure JSON
            return failure(request, exc)
        return JSONResponse({
            "status": "success",
            "request": {**info, "operations": 1},
            "quality": result["quality"],
            "media": {"id": new_id("med_"), "uri": result["uri"]},
        })

    @app.get(CHECK_PATH, response_model=CheckSuccess, responses=_FAILURES,
             summary="Score an image by URL")
    async def check_get(
        request: Request,
        models: str | None = Query(None, description=_FIELD_DOCS["models"]),
        url: str | None = Query(None, description=_FIELD_DOCS["url"]),
        api_user: str | None = Query(None, description=_FIELD_DOCS["api_user"]),
        api_secret: str | None = Query(None, description=_FIELD_DOCS["api_secret"]),
        quality_details: str | None = Query(None, description=_FIELD_DOCS["quality_details"]),
    ):
        fields = {"models": models, "url": url, "api_user": api_user, "api_secret": api_secret,
                  "quality_details": quality_details}

        async def work():
            refuse_repeated_url(request.query_params.getlist("url"))
            return await service.check(fields, None)

        return await respond(request, work)

    post_body = {
        "requestBody": {
            "required": False,  # every field may come in the query string instead
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "media": {"type": "string", "format": "binary",
                                      "description": "The image file."},
                            **{k: {"type": "string", "description": v}
                               for k, v in _FIELD_DOCS.items()},
                        },
                        "required": ["models"],
                    }
                }
            },
        }
    }

    @app.post(CHECK_PATH, response_model=CheckSuccess, responses=_FAILURES,
              openapi_extra=post_body, summary="Score an uploaded image (or a URL)")
    async def check_post(request: Request):
        async def work():
            # What can be refused on the headers alone was refused before routing
            # (refuse_on_headers above); here the body is read.
            fields, upload = await read_post(request, settings.max_upload_bytes,
                                             settings.body_timeout, service.gate.check_room)
            return await service.check(fields, upload)

        return await respond(request, work)

    check_post_route = next(r for r in app.router.routes if getattr(r, "path", None) ==
                            CHECK_PATH and "POST" in getattr(r, "methods", ()))

    if settings.ui:
        from .ui import add_page

        add_page(app)

    @app.get("/health", summary="Liveness and model information")
    async def health():
        return {
            "status": "ok",
            "version": __version__,
            "model": {
                "version": service.model_version,
                "providers": list(getattr(model, "providers", []) or []),
                "factors": list(getattr(model, "factor_names", []) or []),
            },
            "auth": settings.keys.enabled,
            "in_flight": service.gate.in_flight,
            "capacity": service.gate.capacity,
        }

    # HEAD too, for uptime monitors and load balancers (uvicorn sends no body); kept out of
    # the schema, where a second method on one function would duplicate its operation id.
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def prometheus_metrics():
        return PlainTextResponse(metrics.render(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            error: IQAError = RouteNotFoundError(
                f"no endpoint at {request.url.path}; the API is {CHECK_PATH}"
            )
        elif exc.status_code == 405:
            error = MethodNotAllowedError(f"{request.method} is not allowed on {request.url.path}")
            # Starlette's Allow names only the first route that matched the path.
            error.allow = ", ".join(_allowed_methods(app, request.url.path)) or \
                (exc.headers or {}).get("Allow")
        elif exc.status_code == 400:
            error = MalformedBodyError(str(exc.detail))
        else:
            return failure(request, APIError(str(exc.detail)), status=exc.status_code)
        return failure(request, error)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return failure(request, InvalidParameterError(problems or "invalid request"))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception):
        return failure(request, exc)

    return app
