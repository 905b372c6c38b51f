"""The request body as the engine sent it upstream: kept for a retry, handed to mirror copies.

Theory of operation. A request body is streamed to its upstream piece by piece, as the
client sends it (mesh.http.forward); nothing holds the whole of it. A retry (GEP-1731) needs
the body a second time, so for a route with a retry policy the engine keeps what it sends in
a :class:`SentBody`, up to ``limit`` body bytes (``RETRY_BUFFER``, 64 KiB, by default: what
Envoy calls the per-request buffer). Past the limit the pieces kept so far are released and
the request becomes one that cannot be replayed: it goes on streaming as any other (a 1 GB
upload still never sits in memory), and the retry decision (mesh.http.retry) refuses a retry
that would need the body again.

A retry sends the upstream head again and then ``replay()``: the pieces of the body sent so
far, exactly as they went out (chunk framing included, so the next upstream receives the
same bytes). When the client's body had not ended yet, the engine then goes on reading it and
keeping it as before; ``complete`` says the body has ended and the client is done.

Each piece read from the client is also offered to the ``taps`` (RequestMirror copies,
mesh.ingress.mirror), once, whatever the retries: a tap must never block or fail the request,
so it only gets the bytes and decides for itself (a bounded buffer it drops when full).

Pure: no I/O, no clock.
"""

from __future__ import annotations

from typing import Final, Protocol

RETRY_BUFFER: Final = 64 << 10  # body bytes kept for a retry, per request


class Tap(Protocol):
    """Something that sees each piece of a request body as it goes upstream."""

    def piece(self, wire: bytes) -> None:
        """Body bytes as sent upstream (chunk framing included when the body is chunked)."""

    def end(self, wire: bytes) -> None:
        """The body ended; ``wire``: the last bytes of its framing (the last chunk), or b""."""


class SentBody:
    """What the engine did with a request body (see the module docstring)."""

    __slots__ = ("_pieces", "complete", "continued", "kept", "limit", "replayable", "taps")

    def __init__(self, limit: int = RETRY_BUFFER, taps: tuple[Tap, ...] = ()) -> None:
        self.limit = limit
        self.taps = taps
        self._pieces: list[bytes] = []
        self.kept = 0  # body bytes kept (without chunk framing)
        self.replayable = True  # every byte sent so far is kept
        self.complete = False  # the client's body has ended (and was read to its end)
        self.continued = False  # ``100 Continue`` went to the client: never twice

    @property
    def started(self) -> bool:
        """Some of the body was read from the client (a try sent it, or part of it)."""
        return bool(self._pieces) or self.complete or not self.replayable

    def piece(self, wire: bytes, size: int) -> None:
        """``wire`` was sent upstream, carrying ``size`` body bytes."""
        for tap in self.taps:
            tap.piece(wire)
        if not self.replayable:
            return
        self.kept += size
        if self.kept > self.limit:
            self.replayable = False
            self._pieces = []  # released: the body streams on unkept
            self.kept = 0
        else:
            self._pieces.append(wire)

    def end(self, wire: bytes) -> None:
        for tap in self.taps:
            tap.end(wire)
        self.complete = True
        if self.replayable and wire:
            self._pieces.append(wire)

    def replay(self) -> bytes:
        """The body bytes sent so far, for the next try (only while ``replayable``)."""
        if not self.replayable:
            raise RuntimeError("the request body was not kept: it cannot be replayed")
        if len(self._pieces) > 1:
            self._pieces = [b"".join(self._pieces)]
        return self._pieces[0] if self._pieces else b""
