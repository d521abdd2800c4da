"""Prometheus text-format metrics, written by hand (prometheus_client is not a dependency).

Exposes request counts by endpoint, method and status, a latency histogram by
endpoint, failures by error type and code, and the work gate's occupancy.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable

# Seconds. Scoring one photo on a CPU takes tens to hundreds of milliseconds; fetches
# add network time.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED = "unmatched"  # label for paths with no route, so random 404s add no series
# Label values must come from fixed sets: a client that invents methods would otherwise
# add a permanent series per request.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple, int] = defaultdict(int)
        self._errors: dict[tuple, int] = defaultdict(int)
        self._hist_counts: dict[str, list[int]] = {}
        self._hist_sum: dict[str, float] = defaultdict(float)
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(endpoint, method, str(status))] += 1
            counts = self._hist_counts.setdefault(endpoint, [0] * (len(LATENCY_BUCKETS) + 1))
            for i, upper in enumerate(LATENCY_BUCKETS):
                if seconds <= upper:
                    counts[i] += 1
            counts[-1] += 1  # +Inf, which is also the count
            self._hist_sum[endpoint] += seconds

    def count_error(self, error_type: str, code: int) -> None:
        with self._lock:
            self._errors[(error_type, str(code))] += 1

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Register a gauge whose value is read at scrape time."""
        self._gauges[name] = (help_text, read)

    def render(self) -> str:
        with self._lock:
            requests = dict(self._requests)
            errors = dict(self._errors)
            hist = {k: list(v) for k, v in self._hist_counts.items()}
            sums = dict(self._hist_sum)
        out = [
            "# HELP iqa_requests_total HTTP requests handled, by endpoint, method and status.",
            "# TYPE iqa_requests_total counter",
        ]
        for (endpoint, method, status), n in sorted(requests.items()):
            labels = (("endpoint", endpoint), ("method", method), ("status", status))
            out.append(f"iqa_requests_total{_labels(labels)} {n}")
        out += [
            "# HELP iqa_request_duration_seconds Time from request to response, by endpoint.",
            "# TYPE iqa_request_duration_seconds histogram",
        ]
        for endpoint, counts in sorted(hist.items()):
            for upper, n in zip((*LATENCY_BUCKETS, "+Inf"), counts, strict=True):
                le = upper if isinstance(upper, str) else _number(upper)
                labels = (("endpoint", endpoint), ("le", le))
                out.append(f"iqa_request_duration_seconds_bucket{_labels(labels)} {n}")
            one = (("endpoint", endpoint),)
            out.append(f"iqa_request_duration_seconds_sum{_labels(one)} {sums[endpoint]!r}")
            out.append(f"iqa_request_duration_seconds_count{_labels(one)} {counts[-1]}")
        out += [
            "# HELP iqa_errors_total Failure responses, by error type and code.",
            "# TYPE iqa_errors_total counter",
        ]
        for (error_type, code), n in sorted(errors.items()):
            out.append(f"iqa_errors_total{_labels((('type', error_type), ('code', code)))} {n}")
        for name, (help_text, read) in sorted(self._gauges.items()):
            value = _number(read())
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(out) + "\n"


def _endpoint_label(scope) -> str:
    """The route template a request matched, or UNMATCHED."""
    route = scope.get("route")
    if getattr(route, "path", None):
        return route.path
    # Starlette's own routes (/openapi.json) and mounts (/docs-static) set no "route", only
    # the endpoint or app they matched: find its template among the app's routes.
    endpoint, app = scope.get("endpoint"), scope.get("app")
    if endpoint is not None:
        for candidate in getattr(app, "routes", ()):
            if endpoint in (getattr(candidate, "endpoint", None), getattr(candidate, "app", None)):
                return candidate.path
    return UNMATCHED


class MetricsMiddleware:
    """Pure ASGI middleware: times every HTTP request and counts it by status."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app dies before sending a response

        async def send_and_record(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            endpoint = _endpoint_label(scope)
            method = scope.get("method", "")
            self.metrics.observe_request(
                endpoint, method if method in METHODS else OTHER, status,
                time.perf_counter() - start,
            )
