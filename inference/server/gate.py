"""Admission control and the thread pools that keep blocking work off the event loop.

At most ``workers + max_queue`` requests are inside the pipeline (fetch, decode, score)
at once; one more is refused at once with 503 instead of queueing without bound. A
request's slot is held until every thread job it started has finished, even when the
request itself timed out, so abandoned work still counts against capacity.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar

from .errors import ServerBusyError

T = TypeVar("T")
log = logging.getLogger("iqa.server")


class Ticket:
    """One admitted request. Release it with :meth:`close` (or ``async with``)."""

    def __init__(self, gate: WorkGate):
        self._gate = gate
        self._holders = 1  # the request itself
        self._lock = threading.Lock()
        self._closed = False

    def _hold(self) -> None:
        with self._lock:
            self._holders += 1

    def _drop(self) -> None:
        with self._lock:
            self._holders -= 1
            last = self._holders == 0
        if last:
            self._gate._release()

    async def run(self, executor: Executor, fn: Callable[..., T], *args) -> T:
        """Run ``fn(*args)`` on ``executor`` and await it; cancellable without leaking."""
        self._hold()
        try:
            future = executor.submit(fn, *args)
        except BaseException:
            self._drop()
            raise
        future.add_done_callback(lambda _: self._drop())
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._drop()

    async def __aenter__(self) -> Ticket:
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.close()


def lower_thread_priority(increment: int) -> None:
    """Raise the calling thread's nice value by ``increment`` (Linux threads have their own;
    raising it needs no privilege). A no-op where the OS has no per-thread priority."""
    if increment <= 0 or not hasattr(os, "setpriority") or sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)
    except OSError as exc:  # e.g. a sandbox that forbids it: scoring still works
        log.warning("could not lower the scoring threads' priority: %s", exc)


class WorkGate:
    def __init__(self, workers: int, max_queue: int, retry_after: int = 1,
                 scoring_nice: int = 0, scoring: Executor | None = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.workers = workers
        self.capacity = workers + max_queue
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._in_flight = 0
        # Scoring is CPU-bound: exactly `workers` threads (or the worker processes passed
        # in as ``scoring``). Fetching is I/O-bound: one thread per admitted request, so
        # slow URLs never hold up scoring.
        if scoring is None:
            scoring = ThreadPoolExecutor(workers, thread_name_prefix="iqa-score",
                                         initializer=lower_thread_priority,
                                         initargs=(scoring_nice,))
        self.scoring = scoring
        self.fetching = ThreadPoolExecutor(self.capacity, thread_name_prefix="iqa-fetch")

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _busy(self) -> ServerBusyError:
        return ServerBusyError(
            f"the server is busy ({self._in_flight} requests in progress, capacity "
            f"{self.capacity}); retry in {self.retry_after} s"
        )

    def check_room(self) -> None:
        """Refuse now if :meth:`admit` would: lets a request be refused before its body is
        read. It takes no slot, so a slow client cannot hold one while it uploads."""
        if self._in_flight >= self.capacity:
            raise self._busy()

    def admit(self) -> Ticket:
        with self._lock:
            if self._in_flight >= self.capacity:
                raise self._busy()
            self._in_flight += 1
        return Ticket(self)

    def _release(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def shutdown(self) -> None:
        self.scoring.shutdown(wait=False, cancel_futures=True)
        self.fetching.shutdown(wait=False, cancel_futures=True)
