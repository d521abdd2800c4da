"""Server settings: one object that `iqa serve` fills from flags and the environment."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..fetch import FetchPolicy, MiB
from .auth import KeyStore


@dataclass
class ServerSettings:
    keys: KeyStore = field(default_factory=KeyStore)
    # Uploads and URL downloads alike (the fetch policy gets the same byte limit from
    # `iqa serve`). The pixel limit lives on the QualityModel (max_pixels).
    max_upload_bytes: int = 32 * MiB
    workers: int = 2
    max_queue: int = 32
    # Nice increment of the threads that decode and score (Linux; 0: none). Above the event
    # loop's, so that on saturated cores refusals, health checks and reading uploads still
    # get a core at once instead of queueing behind scoring (BENCHMARKS.md).
    scoring_nice: int = 5
    # Decode and score in `workers` processes instead of threads (processes.py).
    scoring_processes: bool = False
    # Whole pipeline (fetch + decode + score) per request, in seconds.
    request_timeout: float = 60.0
    retry_after: int = 1
    # Slow-client limits. The body of a POST must arrive within body_timeout seconds
    # (enforced by the app); the others are uvicorn's, set by `iqa serve` (see protocol.py).
    body_timeout: float = 60.0
    header_timeout: float = 10.0
    keep_alive_timeout: int = 5
    max_connections: int = 256
    max_header_bytes: int = 16 * 1024
    fetch_policy: FetchPolicy = field(default_factory=FetchPolicy)
    # The web page at `/` (a client of /1.0/check.json only); `iqa serve --no-ui` drops it.
    ui: bool = True
