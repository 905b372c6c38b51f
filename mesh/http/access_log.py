"""The JSON access log: one line per request, written off the hot path.

Contract for the gateway wiring:

- ``log = AccessLog(sys.stdout.buffer)`` (any binary file, or a callable taking bytes), then
  ``log.start()``; ``log.close()`` at shutdown writes what is left and stops the writer.
- Per finished request: ``log.log(AccessRecord(...))``. That is a deque append (thread safe,
  no lock taken, no I/O, no formatting); a writer thread (:class:`~mesh.http.batching.Batcher`)
  wakes every ``interval`` seconds or when ``batch`` records wait, renders them and writes them
  with one ``write`` call. When the sink cannot keep up and ``max_pending`` records wait, new
  ones are dropped and counted in ``dropped`` (export it as a metric) rather than growing
  memory or blocking a request.
- Without ``start()`` nothing is written until ``flush()`` is called: tests and a reactor that
  prefers to flush on its own timer can do that.

One line (keys always present, in this order; null when not applicable)::

    {"time":"2026-01-02T03:04:05.678Z","method":"GET","host":"shop.example.com",
     "path":"/cart?id=1","status":200,"reason":null,"route":"shop/web/0",
     "backend":"shop/web:80","upstream":"127.0.1.5:8080","client":"127.0.0.9",
     "bytes_in":312,"bytes_out":5120,"duration_ms":1.234,"upstream_connect_ms":0.101,
     "upstream_response_ms":0.987,"trace_id":"4bf9...","request_id":"..."}

``reason`` is the ``x-mesh-reason`` of a response the gateway made itself (null when the
backend answered); ``duration_ms`` runs from the first byte of the request head to the last
byte of the response; ``upstream_connect_ms`` is the time to get a connection to the endpoint
(near 0 for a pooled one, null when no upstream was tried); ``upstream_response_ms`` runs from
sending the request head upstream to the end of the response head from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import BinaryIO, NamedTuple

from mesh.http.batching import Batcher


class AccessRecord(NamedTuple):
    start: float  # wall clock (time.time()) when the request head began
    method: str
    host: str
    path: str
    status: int
    reason: str = ""
    route: str = ""
    backend: str = ""
    upstream: str = ""  # the endpoint "address:port" that answered
    client: str = ""  # the client's address
    bytes_in: int = 0  # request bytes read from the client, head and body
    bytes_out: int = 0  # response bytes written to the client, head and body
    duration: float = 0.0  # seconds
    upstream_connect: float | None = None  # seconds
    upstream_response: float | None = None  # seconds
    trace_id: str = ""
    request_id: str = ""


def _q(value: str) -> str:
    out: str = encode_basestring_ascii(value) if value else "null"
    return out


def _ms(seconds: float | None) -> str:
    return "null" if seconds is None else f"{seconds * 1000:.3f}"


class _Clock:
    """RFC 3339 UTC timestamps with milliseconds; strftime once per second, not per line."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, t: float) -> str:
        second, ms = divmod(round(t * 1000), 1000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{ms:03d}Z"


def render(record: AccessRecord, clock: _Clock | None = None) -> str:
    """One JSON line, newline included (strings escaped to ASCII by the json C encoder)."""
    r = record
    ts = (clock or _Clock()).format(r.start)
    return (
        f'{{"time":"{ts}","method":{_q(r.method)},"host":{_q(r.host)},"path":{_q(r.path)},'
        f'"status":{int(r.status)},"reason":{_q(r.reason)},"route":{_q(r.route)},'
        f'"backend":{_q(r.backend)},"upstream":{_q(r.upstream)},"client":{_q(r.client)},'
        f'"bytes_in":{int(r.bytes_in)},"bytes_out":{int(r.bytes_out)},'
        f'"duration_ms":{_ms(r.duration)},"upstream_connect_ms":{_ms(r.upstream_connect)},'
        f'"upstream_response_ms":{_ms(r.upstream_response)},"trace_id":{_q(r.trace_id)},'
        f'"request_id":{_q(r.request_id)}}}\n'
    )


class AccessLog:
    """See the module docstring; ``log`` is the hot-path call."""

    __slots__ = ("_clock", "_queue", "_write", "log")

    def __init__(
        self,
        sink: BinaryIO | Callable[[bytes], object],
        *,
        batch: int = 256,
        interval: float = 0.5,
        max_pending: int = 65536,
    ) -> None:
        if callable(sink):
            self._write: Callable[[bytes], object] = sink
        else:
            file = sink

            def write(data: bytes) -> None:
                file.write(data)
                file.flush()

            self._write = write
        self._clock = _Clock()  # used by the draining thread only
        self._queue: Batcher[AccessRecord] = Batcher(
            self._drain, batch=batch, interval=interval, max_pending=max_pending, name="access-log"
        )
        # The queue's own put, bound once: the hot path makes one call, not two.
        self.log: Callable[[AccessRecord], None] = self._queue.put

    def _drain(self, records: list[AccessRecord]) -> None:
        clock = self._clock
        self._write("".join([render(r, clock) for r in records]).encode("ascii"))

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    @property
    def written(self) -> int:
        return self._queue.drained

    @property
    def write_errors(self) -> int:
        return self._queue.errors

    def start(self) -> None:
        self._queue.start()

    def flush(self) -> None:
        self._queue.flush()

    def close(self) -> None:
        """Stop the writer thread and write what is still queued."""
        self._queue.close()
