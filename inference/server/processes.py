"""Decoding and scoring in worker processes (`iqa serve --scoring-processes`).

Scoring threads share the server's process: a crash in native code while decoding or
scoring (a decoder bug, the OOM killer) ends the server with every request in it. Worker
processes confine it: a worker that dies costs the requests it held a 500, and the pool
is rebuilt for the next ones. Each worker loads the model once. The workers also have
their own interpreters, so the event loop never waits for the GIL behind them, though
that was measured not to be what delays refusals under overload (BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

log = logging.getLogger("iqa.server")

_model = None  # the worker process's QualityModel, set by _start_worker


@dataclass(frozen=True)
class WorkerModel:
    """What a worker needs to load the same model as the server's process."""

    path: str
    providers: tuple[str, ...] | None
    threads: int | None
    max_pixels: int | None
    min_side: int

    @classmethod
    def like(cls, model) -> WorkerModel:
        return cls(str(model.path), tuple(model.providers), getattr(model, "threads", None),
                   model.max_pixels, model.min_side)


def _start_worker(spec: WorkerModel, nice: int) -> None:
    global _model
    if nice > 0 and hasattr(os, "nice"):
        os.nice(nice)  # the whole worker: it only decodes and scores
    from ..model import QualityModel

    _model = QualityModel(spec.path, list(spec.providers) if spec.providers else None,
                          spec.threads, max_pixels=spec.max_pixels, min_side=spec.min_side)


def score_in_worker(data: bytes, name: str):
    from .errors import ScoringError
    from .service import score_bytes

    try:
        return score_bytes(_model, data, name)
    except ScoringError as exc:
        # A real fault: only the message crosses the process boundary (pickling drops the
        # cause), so the traceback is logged here.
        log.error("scoring %s failed", name, exc_info=exc.__cause__)
        raise


def worker_pid() -> int:
    return os.getpid()


class ProcessScoring:
    """A ProcessPoolExecutor of scoring workers that rebuilds itself when one dies; it has
    the two Executor methods WorkGate uses, submit and shutdown."""

    def __init__(self, spec: WorkerModel, workers: int, nice: int = 0):
        self.spec, self.workers, self.nice = spec, workers, nice
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the server's process already runs threads (the log writer,
        # fetchers), and forking a threaded process can copy a held lock.
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(self.spec, self.nice))

    @property
    def executor(self) -> ProcessPoolExecutor:
        return self._pool

    def submit(self, fn, *args) -> Future:
        """ProcessPoolExecutor.submit, on a fresh pool if the current one is broken. A job
        whose worker dies fails with BrokenProcessPool, and the pool is replaced at once."""
        pool = self._pool
        try:
            future = pool.submit(fn, *args)
        except BrokenProcessPool:
            pool = self.replace(pool)
            future = pool.submit(fn, *args)

        def replace_if_broken(done: Future) -> None:
            if not done.cancelled() and isinstance(done.exception(), BrokenProcessPool):
                self.replace(pool)

        future.add_done_callback(replace_if_broken)
        return future

    def replace(self, broken: ProcessPoolExecutor) -> ProcessPoolExecutor:
        """Swap in a new pool once per broken one, however many requests saw it break."""
        with self._lock:
            if self._pool is broken:
                log.error("a scoring worker process died; starting new workers")
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
            return self._pool

    def warm_up(self) -> list[int]:
        """Start every worker and load its model now, not on the first requests; their pids."""
        futures = [self.submit(worker_pid) for _ in range(self.workers)]
        return sorted({f.result() for f in futures})

    def shutdown(self, wait: bool = False, *, cancel_futures: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
