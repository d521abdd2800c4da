"""`iqa serve`: run the HTTP API with uvicorn.

Every option has an environment-variable twin (IQA_HOST, IQA_PORT, ...), which is what
container deployments set; a flag on the command line wins over the variable.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import sys

from ..option_ranges import out_of_range

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
STARTUP_FAILURE = 3  # uvicorn's exit status when the server cannot start


def _env(name: str, default=None, cast=str):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return cast(value)
    except ValueError:
        # Exit 2, as argparse does for the same value given as an option.
        print(f"iqa serve: environment variable {name}={value!r} is not valid", file=sys.stderr)
        raise SystemExit(2) from None


def _port(text: str) -> int:
    # uvicorn does not check: port 99999 was logged as such while the kernel bound another.
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1-65535")
    return port


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _port_argument(text: str) -> int:
    if not text.strip().lstrip("+-").isdigit():
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    try:
        return _port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    net = parser.add_argument_group("network")
    net.add_argument("--host", default=_env("IQA_HOST", "127.0.0.1"),
                     help="interface to bind (default 127.0.0.1, loopback only; use 0.0.0.0 "
                          "to serve other machines) [IQA_HOST]")
    net.add_argument("--port", type=_port_argument, default=_env("IQA_PORT", 8000, _port),
                     help="TCP port (default 8000) [IQA_PORT]")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=_env("IQA_MODEL"),
                       help="ONNX model file (default: the model shipped in the package) "
                            "[IQA_MODEL]")
    model.add_argument("--providers", default=_env("IQA_PROVIDERS"),
                       help="comma-separated onnxruntime providers, e.g. "
                            "CUDAExecutionProvider,CPUExecutionProvider (default: CUDA if "
                            "available, else CPU) [IQA_PROVIDERS]")
    model.add_argument("--threads", type=int, default=_env("IQA_THREADS", None, int),
                       help="onnxruntime intra-op threads per worker (default: CPU cores / "
                            "workers) [IQA_THREADS]")
    auth = parser.add_argument_group("authentication")
    auth.add_argument("--keys-file", default=_env("IQA_KEYS_FILE"),
                      help="file of 'api_user:api_secret' lines; with IQA_API_KEYS="
                           "'user1:secret1,user2:secret2' the two sets are merged. With no "
                           "keys the server is open [IQA_KEYS_FILE]")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-upload-mb", type=float, default=_env("IQA_MAX_UPLOAD_MB", 32, float),
                        help="largest upload or URL download, in MiB (default 32) "
                             "[IQA_MAX_UPLOAD_MB]")
    limits.add_argument("--max-pixels", type=int, default=_env("IQA_MAX_PIXELS", None, int),
                        help="largest image, in pixels, checked before decoding (default "
                             "64000000) [IQA_MAX_PIXELS]")
    limits.add_argument("--workers", type=int, default=_env("IQA_WORKERS", 2, int),
                        help="images scored at the same time (default 2) [IQA_WORKERS]")
    limits.add_argument("--max-queue", type=int, default=_env("IQA_MAX_QUEUE", 32, int),
                        help="requests waiting beyond --workers before new ones get 503 "
                             "(default 32) [IQA_MAX_QUEUE]")
    limits.add_argument("--scoring-nice", type=int, default=_env("IQA_SCORING_NICE", 5, int),
                        help="nice increment of the decode/score threads, so that the event "
                             "loop answers refusals and health checks at once on busy cores; "
                             "0 on a machine shared with other work (default 5, Linux) "
                             "[IQA_SCORING_NICE]")
    limits.add_argument("--scoring-processes", action="store_true",
                        default=_env_flag("IQA_SCORING_PROCESSES"),
                        help="decode and score in --workers processes instead of threads, so "
                             "that a crash in a native decoder costs one request (a 500), not "
                             "the server; each process loads its own copy of the model "
                             "[IQA_SCORING_PROCESSES=1]")
    limits.add_argument("--request-timeout", type=float,
                        default=_env("IQA_REQUEST_TIMEOUT", 60.0, float),
                        help="seconds for fetch + decode + score of one request (default 60) "
                             "[IQA_REQUEST_TIMEOUT]")
    limits.add_argument("--fetch-timeout", type=float,
                        default=_env("IQA_FETCH_TIMEOUT", 10.0, float),
                        help="connect and read timeout for URL fetches, in seconds (default "
                             "10) [IQA_FETCH_TIMEOUT]")
    slow = parser.add_argument_group("slow clients and connections")
    slow.add_argument("--header-timeout", type=float,
                      default=_env("IQA_HEADER_TIMEOUT", 10.0, float),
                      help="seconds for a request line and headers to arrive, from the "
                           "connection or the previous response (default 10) "
                           "[IQA_HEADER_TIMEOUT]")
    slow.add_argument("--body-timeout", type=float,
                      default=_env("IQA_BODY_TIMEOUT", 60.0, float),
                      help="seconds for a POST body to arrive (default 60) [IQA_BODY_TIMEOUT]")
    slow.add_argument("--keep-alive-timeout", type=int,
                      default=_env("IQA_KEEP_ALIVE_TIMEOUT", 5, int),
                      help="seconds an idle keep-alive connection stays open (default 5) "
                           "[IQA_KEEP_ALIVE_TIMEOUT]")
    slow.add_argument("--max-connections", type=int,
                      default=_env("IQA_MAX_CONNECTIONS", 256, int),
                      help="open connections (or requests in progress) beyond which requests "
                           "get 503 (default 256) [IQA_MAX_CONNECTIONS]")
    slow.add_argument("--max-header-kb", type=int, default=_env("IQA_MAX_HEADER_KB", 16, int),
                      help="largest request line plus headers, in KiB (default 16) "
                           "[IQA_MAX_HEADER_KB]")
    urls = parser.add_argument_group("URL fetching")
    urls.add_argument("--allow-private-urls", action="store_true",
                      default=_env_flag("IQA_ALLOW_PRIVATE_URLS"),
                      help="let `url` reach private, loopback and link-local addresses. Only "
                           "for trusted clients: it turns the server into a proxy into your "
                           "network [IQA_ALLOW_PRIVATE_URLS=1]")
    urls.add_argument("--allow-url-network", action="append", metavar="CIDR",
                      default=[n for n in _env("IQA_ALLOW_URL_NETWORKS", "").split(",") if n],
                      help="allow URLs into this one network, e.g. 10.20.0.0/16 for an internal "
                           "image store (repeatable) [IQA_ALLOW_URL_NETWORKS, comma-separated]")
    parser.add_argument("--no-ui", action="store_true", default=_env_flag("IQA_NO_UI"),
                        help="do not serve the web page at / (the API is unchanged) "
                             "[IQA_NO_UI=1]")
    parser.add_argument("--log-level", default=_env("IQA_LOG_LEVEL", "info"),
                        choices=["critical", "error", "warning", "info", "debug"],
                        help="log level (default info) [IQA_LOG_LEVEL]")


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_problem(host: str, port: int) -> str | None:
    """Why ``--host`` names no address to listen on, or None. Checked before the model
    loads, so that a typo is a usage error (exit 2) rather than a failed start."""
    import socket

    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        return f"--host {host}: cannot be resolved to an address to listen on ({reason})"
    return None


def build_settings(args: argparse.Namespace):
    """Turn parsed options (and IQA_API_KEYS) into ServerSettings."""
    from ..fetch import FetchPolicy, MiB
    from .auth import ENV_VAR, KeyStore
    from .settings import ServerSettings

    max_bytes = int(args.max_upload_mb * MiB)
    policy = FetchPolicy(
        allow_private=args.allow_private_urls,
        allowed_networks=tuple(args.allow_url_network or ()),
        max_bytes=max_bytes,
        connect_timeout=args.fetch_timeout,
        read_timeout=args.fetch_timeout,
        total_timeout=min(args.request_timeout, 3 * args.fetch_timeout),
    )
    return ServerSettings(
        keys=KeyStore.from_sources(os.environ.get(ENV_VAR), args.keys_file),
        max_upload_bytes=max_bytes,
        workers=args.workers,
        max_queue=args.max_queue,
        scoring_nice=args.scoring_nice,
        scoring_processes=getattr(args, "scoring_processes", False),
        request_timeout=args.request_timeout,
        fetch_policy=policy,
        body_timeout=args.body_timeout,
        header_timeout=args.header_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        max_connections=args.max_connections,
        max_header_bytes=args.max_header_kb * 1024,
        ui=not getattr(args, "no_ui", False),
    )


def out_of_range_option(args: argparse.Namespace) -> str | None:
    """The first numeric option (or its IQA_* twin) outside its range, named, or None.

    Checked here rather than by argparse because environment defaults bypass its types.
    A negative timeout would otherwise start a server that times out every request.
    """
    return out_of_range({
        "--workers": (args.workers, 1, False), "--max-queue": (args.max_queue, 0, False),
        "--scoring-nice": (args.scoring_nice, 0, False),
        "--max-upload-mb": (args.max_upload_mb, 0, True),
        "--request-timeout": (args.request_timeout, 0, True),
        "--fetch-timeout": (args.fetch_timeout, 0, True),
        "--header-timeout": (args.header_timeout, 0, True),
        "--body-timeout": (args.body_timeout, 0, True),
        "--keep-alive-timeout": (args.keep_alive_timeout, 0, True),
        "--max-connections": (args.max_connections, 0, True),
        "--max-header-kb": (args.max_header_kb, 0, True),
        "--max-pixels": (args.max_pixels, 0, True), "--threads": (args.threads, 1, False),
    })


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..errors import ModelLoadError
    from ..model import QualityModel
    from .app import create_app
    from .auth import KeyConfigError
    from .logqueue import deferred_log_writes
    from .protocol import uvicorn_options

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("iqa.server")
    problem = out_of_range_option(args)
    if problem:
        print(f"iqa serve: {problem}", file=sys.stderr)
        return 2
    try:
        settings = build_settings(args)
    except (KeyConfigError, ValueError) as exc:
        print(f"iqa serve: {exc}", file=sys.stderr)
        return 2
    problem = host_problem(args.host, args.port)
    if problem:
        print(f"iqa serve: {problem}", file=sys.stderr)
        return 2
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers \
        else None
    model_options = {} if args.max_pixels is None else {"max_pixels": args.max_pixels}
    try:
        model = QualityModel(args.model, providers=providers, threads=threads, **model_options)
    except ModelLoadError as exc:
        print(f"iqa serve: {exc}", file=sys.stderr)
        return 2
    if not settings.keys.enabled and not _is_loopback(args.host):
        log.warning("binding %s WITHOUT API keys: every machine that can reach this port can "
                    "use the server", args.host)
    if settings.fetch_policy.allow_private:
        log.warning("--allow-private-urls: `url` may reach private and loopback addresses")
    log.info("model %s (providers %s, %d thread(s) x %d worker(s)); starting on http://%s:%d",
             model.path, ",".join(model.providers), threads, args.workers, args.host, args.port)
    app = create_app(model, settings)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            server_header=False, proxy_headers=False,
                            **uvicorn_options(settings))  # configures uvicorn's loggers
    server = uvicorn.Server(config)
    # Every log line is written by one thread, never on the event loop (logqueue.py).
    with deferred_log_writes(("", "uvicorn", "uvicorn.error", "uvicorn.access")):
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
    if not server.started:  # e.g. the port is taken; uvicorn has logged why
        return STARTUP_FAILURE
    return 0
