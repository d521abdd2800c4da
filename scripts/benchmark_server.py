"""Load and abuse benchmark of `iqa serve`, on loopback only, bounded in count and time.

Starts `iqa serve` (the shipped model, default limits) as a subprocess on 127.0.0.1 and
drives it from this process:

1. load: 1024x768 JPEG uploads at concurrency 1, 8 and 64 (throughput, p50/p99 of the
   200s; at 64 the queue overflows, so the 503s and their latency are counted too).
   Those 64 client threads retry at once after each 503 and share one interpreter, so
   their round trips include their own wait for the GIL and the cores. A separate probe
   process therefore also sends the same upload every 20 ms during the concurrency-64
   phase, on a fresh connection each, reading while it sends (as curl does): the time
   from connect to the answer's status line and headers is the server's 503 latency as
   a newly arriving client sees it;
2. resident memory (RSS, from /proc) before and after those requests (2,000 by default);
3. the gzip attack: 64 concurrent URL requests to a loopback upstream that answers
   0.5 MB of gzip inflating to 500 MB with `Content-Encoding: gzip`; RSS after;
4. slow clients: 50 connections trickling their headers, while a normal upload is timed;
5. 200 requests with invented HTTP methods; the number of metric series after.

Peak RSS over the whole run is the kernel's VmHWM. Every address is 127.0.0.1; every
loop has a fixed count and a timeout. Results go to stdout as JSON (and --out).

    python scripts/benchmark_server.py --out bench-server.json
    python scripts/benchmark_server.py --phases c64      # the overload phase alone
    python scripts/benchmark_server.py --phases c64 --stand-in   # the client's floor
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import platform
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CHECK = "/1.0/check.json"
HOST = "127.0.0.1"
# Load at concurrency 1, 8 and 64, then the abuse phases; --phases picks some.
PHASES = ("c1", "c8", "c64", "gzip", "slowloris", "methods")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(port: int, log, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """`iqa serve` on 127.0.0.1:``port`` (default limits), its log written to ``log``.

    ``log`` must be a file, never ``subprocess.PIPE``: nothing reads a pipe while the
    benchmark runs, and the server logs a WARNING line for every 503 and every refused
    fetch. Once those fill the pipe's 64 KiB (a few hundred lines, late in a full run),
    the server's next log write blocks its event loop, and no request is answered again.
    """
    command = [sys.executable, "-m", "iqa.inference.cli", "serve", "--host", HOST, "--port",
               str(port), "--log-level", "warning", "--allow-url-network", f"{HOST}/32",
               *extra]
    env = {k: v for k, v in os.environ.items() if k != "IQA_API_KEYS"}
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=log)


# `--stand-in`: the floor of this measurement. A server that does nothing but answer 503 on
# the headers and then, as `iqa serve` does, send a FIN and discard the rest of the upload
# (up to 5 s). Whatever latency the probe sees against it comes from the client, the other
# load on the cores and the kernel, not from iqa.
STAND_IN = r"""
import asyncio, sys

BODY = b'{"status":"failure","error":{"type":"api_error","code":50}}'
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(BODY)
        + BODY)
HEALTHY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"

async def answer(reader, writer):
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.write(HEALTHY if head.startswith(b"GET /health") else BUSY)
        await writer.drain()
        writer.write_eof()
        async with asyncio.timeout(5):
            while await reader.read(1 << 16):
                pass
    except Exception:
        pass
    writer.close()

async def main(port):
    server = await asyncio.start_server(answer, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()

asyncio.run(main(int(sys.argv[1])))
"""


def start_stand_in(port: int, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", STAND_IN, str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=log)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def test_image() -> bytes:
    photo = Image.open(ROOT / "docs" / "examples" / "astronaut.jpg").convert("RGB")
    buffer = io.BytesIO()
    photo.resize((1024, 768), Image.LANCZOS).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


# ------------------------------------------------------------------ gzip upstream
def gzip_bomb(inflated: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    block = b"\0" * (1 << 20)
    out = [packer.compress(block) for _ in range(inflated // len(block))]
    out.append(packer.flush())
    return b"".join(out)


@contextlib.contextmanager
def bomb_upstream(body: bytes):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            with contextlib.suppress(OSError):
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

    server = ThreadingHTTPServer((HOST, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}/bomb.jpg"
    finally:
        server.shutdown()
        server.server_close()


# -------------------------------------------------------------------------- load
def load(base: str, image: bytes, concurrency: int, requests: int, deadline_s: float,
         client_nice: int = 0) -> dict:
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    stop = time.monotonic() + deadline_s

    def worker():
        if client_nice:  # Linux: this load thread only, never the server or the probe
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid)
                           + client_nice)
        with httpx.Client(timeout=60, trust_env=False) as client:
            while time.monotonic() < stop:
                with lock:
                    if next(counter, None) is None:
                        return
                start = time.perf_counter()
                try:
                    status = client.post(f"{base}{CHECK}", data={"models": "quality"},
                                         files={"media": ("p.jpg", image, "image/jpeg")}
                                         ).status_code
                except httpx.HTTPError:
                    status = 0
                with lock:
                    results.append((status, time.perf_counter() - start))

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(worker)
    wall = time.perf_counter() - started
    ok = [t for s, t in results if s == 200]
    busy = [t for s, t in results if s == 503]
    return {
        "concurrency": concurrency,
        "client_nice": client_nice,
        "requests": len(results),
        "ok": len(ok),
        "busy_503": len(busy),
        "other": len(results) - len(ok) - len(busy),
        "wall_s": round(wall, 2),
        "ok_per_s": round(len(ok) / wall, 1),
        "p50_ms": _ms(percentile(ok, 50)),
        "p99_ms": _ms(percentile(ok, 99)),
        "busy_p50_ms": _ms(percentile(busy, 50)),
        "busy_p99_ms": _ms(percentile(busy, 99)),
    }


# ------------------------------------------------------------------ 503 probe
PROBE_BOUNDARY = "iqaprobe"


def probe_request(port: int, image: bytes) -> bytes:
    """The upload the load clients send, as raw HTTP/1.1 bytes."""
    b = PROBE_BOUNDARY
    body = (f'--{b}\r\nContent-Disposition: form-data; name="models"\r\n\r\nquality\r\n'
            f'--{b}\r\nContent-Disposition: form-data; name="media"; filename="p.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{b}--\r\n".encode()
    head = (f"POST {CHECK} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={b}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


def probe_once(port: int, request: bytes, timeout: float = 60) -> tuple[int, float]:
    """(status, seconds from connect to the end of the answer's headers); status 0 when
    the connection failed. Sends while watching for an early answer, as curl does."""
    start = time.perf_counter()
    answer = b""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.setblocking(False)
            sent = 0
            while b"\r\n\r\n" not in answer:
                if time.perf_counter() - start > timeout:
                    return 0, time.perf_counter() - start
                writers = [sock] if sent < len(request) else []
                readable, writable, _ = select.select([sock], writers, [], 1)
                if readable:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
                elif writable:
                    try:
                        sent += sock.send(request[sent:sent + 65536])
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        sent = len(request)  # the server stopped reading: wait for the answer
            elapsed = time.perf_counter() - start
    except OSError:
        return 0, time.perf_counter() - start
    try:
        return int(answer.split(b" ", 2)[1]), elapsed
    except (IndexError, ValueError):
        return 0, elapsed


def probe_loop(port: int, image: bytes, interval: float, stop, results) -> None:
    """In its own process: start a probe every ``interval`` seconds until ``stop`` is set,
    each in its own thread (open loop: a probe the server admits, and answers only after
    scoring, does not delay the next one)."""
    request = probe_request(port, image)
    out: list[tuple[int, float]] = []
    threads = []
    next_at = time.perf_counter()
    while not stop.is_set() and len(threads) < 2000:
        thread = threading.Thread(target=lambda: out.append(probe_once(port, request)),
                                  daemon=True)
        thread.start()
        threads.append(thread)
        next_at += interval
        time.sleep(max(0.0, next_at - time.perf_counter()))
    for thread in threads:
        thread.join(90)
    results.put(out)


@contextlib.contextmanager
def probe_503(port: int, image: bytes, interval: float = 0.02):
    """Probe the server from a separate process while the block runs; fills the dict."""
    ctx = multiprocessing.get_context("spawn")
    stop, results = ctx.Event(), ctx.Queue()
    process = ctx.Process(target=probe_loop, args=(port, image, interval, stop, results),
                          daemon=True)
    process.start()
    report: dict = {}
    try:
        yield report
    finally:
        stop.set()
        samples = results.get(timeout=120)
        process.join(10)
    busy = [t for status, t in samples if status == 503]
    report.update({
        "probes": len(samples),
        "busy_503": len(busy),
        "other": len(samples) - len(busy),  # admitted (200), or 0: no answer
        "busy_p50_ms": _ms(percentile(busy, 50)),
        "busy_p99_ms": _ms(percentile(busy, 99)),
        "busy_max_ms": _ms(max(busy) if busy else None),
    })


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# ------------------------------------------------------------------------- abuse
def gzip_attack(base: str, url: str, parallel: int) -> dict:
    def one(_):
        start = time.perf_counter()
        with httpx.Client(timeout=90, trust_env=False) as client:
            try:
                response = client.get(f"{base}{CHECK}",
                                      params={"models": "quality", "url": url})
                answer = f"{response.status_code}/code {response.json()['error']['code']}"
            except httpx.HTTPError as exc:
                answer = f"client {type(exc).__name__}"
        return answer, time.perf_counter() - start

    with ThreadPoolExecutor(parallel) as pool:
        answers = list(pool.map(one, range(parallel)))
    return {"requests": parallel, "answers": {a: [x for x, _ in answers].count(a)
                                              for a in sorted({x for x, _ in answers})},
            "max_s": round(max(t for _, t in answers), 1)}


def slowloris(base: str, image: bytes, connections: int) -> dict:
    port = int(base.rsplit(":", 1)[1])
    head = (f"POST {CHECK} HTTP/1.1\r\nHost: x\r\n" + "X-Pad: a\r\n" * 200).encode()
    closed_after: list[float] = []

    def trickle():
        start = time.monotonic()
        with socket.create_connection((HOST, port), timeout=5) as sock:
            for byte in head:
                try:
                    sock.sendall(bytes([byte]))
                    time.sleep(0.1)
                    sock.setblocking(False)
                    try:
                        if sock.recv(1, socket.MSG_PEEK) is not None:
                            break
                    except BlockingIOError:
                        pass
                    finally:
                        sock.setblocking(True)
                except OSError:
                    break
        closed_after.append(time.monotonic() - start)

    threads = [threading.Thread(target=trickle, daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    time.sleep(1)
    start = time.perf_counter()
    response = httpx.post(f"{base}{CHECK}", data={"models": "quality"},
                          files={"media": ("p.jpg", image)}, timeout=60, trust_env=False)
    served_ms = (time.perf_counter() - start) * 1000
    for t in threads:
        t.join(60)
    return {
        "connections": connections,
        "normal_request_status": response.status_code,
        "normal_request_ms": round(served_ms, 1),
        "slow_connections_closed_after_max_s": round(max(closed_after), 1) if closed_after
        else None,
    }


def invented_methods(base: str, count: int) -> dict:
    with httpx.Client(timeout=10, trust_env=False) as client:
        before = client.get(f"{base}/metrics").text.count("iqa_requests_total{")
        for i in range(count):
            client.request(f"X{i}", f"{base}{CHECK}")
        after = client.get(f"{base}/metrics").text.count("iqa_requests_total{")
    return {"requests": count, "series_before": before, "series_after": after}


# -------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", default="100,600,1300",
                        help="requests at concurrency 1, 8, 64 (default 100,600,1300: 2,000)")
    parser.add_argument("--phase-timeout", type=float, default=60,
                        help="seconds at most per load phase (default 60)")
    parser.add_argument("--bomb-mb", type=int, default=500, help="inflated gzip size, MB")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help="comma-separated phases to run, of " + ", ".join(PHASES) +
                             " (default: all); e.g. --phases c64 for the overload phase only")
    parser.add_argument("--client-nice", type=int, default=0,
                        help="nice increment of the 64 overload threads (Linux), so that the "
                             "load generator sharing the server's cores does not starve it "
                             "and the probe: a stand-in for clients on other machines")
    parser.add_argument("--stand-in", action="store_true",
                        help="drive a stand-in that answers every upload 503 at once instead "
                             "of `iqa serve`: the floor this client and machine put under the "
                             "503 latency (use with --phases c64)")
    parser.add_argument("--server-args", default="",
                        help="extra `iqa serve` arguments, one string, e.g. "
                             "--server-args='--scoring-processes --log-level error'")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    counts = [int(n) for n in args.requests.split(",")]
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown or not phases:
        parser.error(f"--phases: unknown {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(PHASES)}")
    # `timeout` and Ctrl-C must still stop the server subprocess (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    port = free_port()
    server_log = tempfile.TemporaryFile()
    server = start_stand_in(port, server_log) if args.stand_in else start_server(port, server_log, tuple(args.server_args.split()))
    base = f"http://{HOST}:{port}"
    report: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average "
                   f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())} at start",
        "server": "stand-in (503 on the headers, nothing else)" if args.stand_in
                  else " ".join(server.args[2:]),
    }
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                server_log.seek(0)
                raise SystemExit(f"iqa serve did not start: {server_log.read().decode()}")
            time.sleep(0.2)
        image = test_image()
        report["image"] = f"1024x768 JPEG, {len(image)} bytes"
        load(base, image, 2, 10, 60)  # warm-up
        report["rss_mb_before"] = round(rss_mb(server.pid), 1)
        report["load"] = []
        for concurrency, n in zip((1, 8, 64), counts, strict=True):
            if f"c{concurrency}" not in phases:
                continue
            if concurrency < 64:
                report["load"].append(load(base, image, concurrency, n, args.phase_timeout))
                continue
            with probe_503(port, image) as probe:
                report["load"].append(load(base, image, concurrency, n, args.phase_timeout,
                                           args.client_nice))
            report["load"][-1]["probe"] = probe
        report["rss_mb_after_load"] = round(rss_mb(server.pid), 1)
        report["requests_before_rss"] = sum(r["requests"] for r in report["load"])
        if "gzip" in phases:
            body = gzip_bomb(args.bomb_mb << 20)
            report["gzip_body"] = f"{len(body)} bytes inflating to {args.bomb_mb} MiB"
            with bomb_upstream(body) as url:
                report["gzip_attack"] = gzip_attack(base, url, 64)
            report["rss_mb_after_gzip"] = round(rss_mb(server.pid), 1)
        if "slowloris" in phases:
            report["slowloris"] = slowloris(base, image, 50)
        if "methods" in phases:
            report["invented_methods"] = invented_methods(base, 200)
        report["rss_mb_end"] = round(rss_mb(server.pid), 1)
        report["rss_mb_peak"] = round(rss_mb(server.pid, "VmHWM"), 1)
        report["load_average_end"] = "/".join(f"{x:.2f}" for x in os.getloadavg())
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
