"""Log writes off the event loop: `iqa serve` hands records to one writer thread.

A log handler writes synchronously in the thread that logs, and the server logs on its
event loop: one line per refused request (every 503 of an overloaded server), uvicorn's
access log, warnings. A slow destination (a terminal, a full pipe, a stalled disk) then
stalls every connection. :func:`deferred_log_writes` swaps each handler of the given
loggers for a :class:`logging.handlers.QueueHandler` and writes through a
:class:`logging.handlers.QueueListener` thread instead, keeping every handler's own
level, formatter and filters. Logger filters (the redaction in logsafe.py) still run in
the logging thread, before a record is queued.

The queue is bounded: when the destination cannot keep up, at most MAX_QUEUED records
wait and later ones are dropped and counted (one line says how many), so memory stays
bounded and logging never blocks a request.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import queue
import threading
from collections.abc import Iterable, Iterator

MAX_QUEUED = 10_000
logger = logging.getLogger("iqa.server")


class _Handoff(logging.handlers.QueueHandler):
    """Stands in for ``target``: queues (target, record) for the writer thread."""

    def __init__(self, q: queue.Queue, target: logging.Handler, drops: _Drops):
        super().__init__(q)
        self.target = target
        self.drops = drops
        self.setLevel(target.level)  # the logger checks this level, not target's

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The target formats it later: uvicorn's formatters need the record's args, which
        # QueueHandler.prepare would have merged into the message and dropped.
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait((self.target, record))
        except queue.Full:
            self.drops.add()


class _Drops:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self) -> None:
        with self._lock:
            self.count += 1

    def take(self) -> int:
        with self._lock:
            count, self.count = self.count, 0
        return count


class _Writer(logging.handlers.QueueListener):
    """Writes each queued record with the handler it was meant for."""

    def __init__(self, q: queue.Queue, drops: _Drops):
        super().__init__(q, respect_handler_level=False)
        self.drops = drops

    def enqueue_sentinel(self) -> None:
        self.queue.put(self._sentinel)  # waits for room: the queue may be full right now

    def handle(self, item) -> None:
        target, record = item
        target.handle(record)
        if self.queue.empty():
            dropped = self.drops.take()
            if dropped:
                notice = logger.makeRecord(
                    logger.name, logging.WARNING, __file__, 0,
                    "%d log record(s) dropped: the log destination could not keep up",
                    (dropped,), None)
                target.handle(notice)


@contextlib.contextmanager
def deferred_log_writes(names: Iterable[str] = ("",), max_queued: int = MAX_QUEUED
                        ) -> Iterator[queue.Queue]:
    """Within the block, the handlers of loggers ``names`` write from one thread.

    On exit the original handlers come back, after every queued record is written.
    """
    q: queue.Queue = queue.Queue(max_queued)
    drops = _Drops()
    swapped: list[tuple[logging.Logger, logging.Handler, logging.Handler]] = []
    for name in dict.fromkeys(names):
        log = logging.getLogger(name)
        for handler in list(log.handlers):
            if isinstance(handler, logging.handlers.QueueHandler):
                continue  # already deferred
            handoff = _Handoff(q, handler, drops)
            log.handlers = [handoff if h is handler else h for h in log.handlers]
            swapped.append((log, handler, handoff))
    writer = _Writer(q, drops)
    writer.start()
    try:
        yield q
    finally:
        for log, handler, handoff in swapped:
            log.handlers = [handler if h is handoff else h for h in log.handlers]
        writer.stop()  # writes what is still queued, then ends the thread
