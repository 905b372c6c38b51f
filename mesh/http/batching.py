"""A bounded queue drained in batches by a thread: how telemetry leaves the hot path.

The request path calls :meth:`Batcher.put`, a deque append (thread safe under the GIL, no
lock, no I/O). A daemon thread wakes every ``interval`` seconds, or as soon as ``batch``
items wait, and hands them to ``drain(items)`` in lists of at most ``batch``; ``drain`` does
the slow part (formatting, encoding, writing, HTTP). When ``max_pending`` items wait because
the drain cannot keep up, new items are dropped and counted: memory stays bounded and a
request never waits for a log file or a collector.

Used by the access log (:mod:`mesh.http.access_log`) and the span exporter
(:mod:`mesh.http.otel`). Without :meth:`start`, nothing is drained until :meth:`flush`.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    __slots__ = (
        "_batch",
        "_drain",
        "_interval",
        "_lock",
        "_max",
        "_name",
        "_pending",
        "_stop",
        "_thread",
        "_wake",
        "drained",
        "dropped",
        "errors",
    )

    def __init__(
        self,
        drain: Callable[[list[T]], object],
        *,
        batch: int = 256,
        interval: float = 0.5,
        max_pending: int = 65536,
        name: str = "batcher",
    ) -> None:
        self._drain = drain
        self._pending: collections.deque[T] = collections.deque()
        self._batch = batch
        self._interval = interval
        self._max = max_pending
        self._name = name
        self._wake = threading.Event()
        self._stop = False
        self._lock = threading.Lock()  # one drainer at a time: the thread, or flush()
        self._thread: threading.Thread | None = None
        self.dropped = 0  # items refused because max_pending were waiting
        self.drained = 0  # items handed to a drain call that returned
        self.errors = 0  # drain calls that raised OSError or ValueError (their items are lost)

    def put(self, item: T) -> None:
        """Queue one item (the hot path)."""
        pending = self._pending
        n = len(pending)
        if n >= self._max:
            self.dropped += 1
            return
        pending.append(item)
        if n + 1 == self._batch:
            self._wake.set()

    def flush(self) -> None:
        """Drain everything queued now, in batches, in the calling thread."""
        with self._lock:
            pending = self._pending
            while pending:
                items = [pending.popleft() for _ in range(min(len(pending), self._batch))]
                try:
                    self._drain(items)
                except (OSError, ValueError):
                    # A closed or broken sink loses these items; the counter tells.
                    self.errors += 1
                    continue
                self.drained += len(items)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self._interval)
            self._wake.clear()
            self.flush()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and drain what is still queued."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush()
