"""Forwarding to upstream servers: the upstreams, their health and the single exchanges.

- ``Forwarder`` holds the upstream ``Pool`` (policy, health), the question cache and the
  health checker; the exchanges of forwarded questions run in ``outbound.Outbound`` (kept-open
  sockets polled by the server's UDP loop), which ``resolve`` hands the question to.
- A reply counts only with our random ID (RFC 5452), the QR bit and our question
  (``matches``). A truncated reply is asked again over TCP (``exchange_tcp``).
- ``run`` probes the upstreams marked down every ``health_check`` seconds (``. IN NS``, as
  CoreDNS's ``forward`` does) with a one-off exchange (``exchange_udp``: a fresh socket
  connected to the upstream); any reply brings one back.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from mesh.dns.forward_cache import ForwardCache, Ttls, with_ttls
from mesh.dns.layout import HEADER, Layout, opt_record, scan
from mesh.dns.metrics import DnsMetrics
from mesh.dns.pool import Address, Pool

log = logging.getLogger("mesh.dns.upstream")

UPSTREAM_PAYLOAD = 1232  # DNS flag day 2020: no fragmentation on common paths
MAX_STRAY_REPLIES = 16  # replies that do not match, read and dropped, per exchange
RETRY_RCODES = frozenset((2, 5))  # SERVFAIL, REFUSED
RCODE_REASONS = {2: "upstream_servfail", 5: "upstream_refused"}
HEALTH_QUESTION = b"\x00\x00\x02\x00\x01"  # . IN NS


class UpstreamError(Exception):
    """One exchange with one upstream failed; ``reason`` is the metrics label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(slots=True)  # not frozen: see Layout (one per forwarded query)
class Answer:
    """An upstream's answer: the message, where things are in it, its TTLs as they stand now,
    how long it may still be cached (0: not at all), and whether it came from the question
    cache (asked before: the UDP relay keeps the client's reply only then)."""

    wire: bytes
    layout: Layout
    ttls: Ttls
    remaining: float
    stale: bool = False
    cached: bool = False


def lower_name(question: bytes) -> bytes:
    """``question`` (name, type, class) with only its name lower-cased: the type and class
    are numbers, and HTTPS (65) is the byte of an ASCII "A" (lower-cased: type 97)."""
    return question[:-4].lower() + question[-4:]


def question_key(question: bytes, cd: bool) -> bytes:
    """The question cache's key: the question (name lower-cased, type, class) and CD."""
    return lower_name(question) + (b"\x01" if cd else b"\x00")


class _Ids:
    """Random query IDs (RFC 5452) from the OS's CSPRNG, fetched 2 KiB at a time: one
    ``getrandom`` call per thousand forwards instead of one each."""

    __slots__ = ("buf", "pos")

    def __init__(self) -> None:
        self.buf = b""
        self.pos = 0

    def next(self) -> bytes:
        if self.pos >= len(self.buf):
            self.buf = secrets.token_bytes(2048)
            self.pos = 0
        self.pos += 2
        return self.buf[self.pos - 2 : self.pos]


_IDS = _Ids()
# a forked child must not replay its parent's IDs
os.register_at_fork(after_in_child=lambda: setattr(_IDS, "buf", b""))
new_id = _IDS.next


def request(question: bytes, cd: bool) -> bytes:
    """A recursive query for ``question`` with a random ID and our EDNS0 payload size."""
    flags = b"\x01\x10" if cd else b"\x01\x00"
    return (
        _IDS.next()
        + flags
        + b"\x00\x01\x00\x00\x00\x00\x00\x01"
        + question
        + opt_record(UPSTREAM_PAYLOAD)
    )


def matches(reply: bytes, sent: bytes, qend: int) -> Layout | None:
    """The layout of ``reply`` when it answers ``sent`` (ID, QR, question), else None."""
    if len(reply) < qend or reply[:2] != sent[:2] or not reply[2] & 0x80:
        return None
    if reply[HEADER:qend] != sent[HEADER:qend]:  # the usual reply echoes it byte for byte
        if reply[qend - 4 : qend] != sent[qend - 4 : qend]:
            return None  # another type or class: compared as numbers, never case-folded
        if reply[HEADER : qend - 4].lower() != sent[HEADER : qend - 4].lower():
            return None
    # The question is ours up to case (its length bytes, below 0x40, are not letters, so
    # the same labels): scan need not walk it again.
    return scan(reply, qend)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def exchange_udp(server: Address, wire: bytes, qend: int) -> tuple[bytes, Layout]:
    # A plain non-blocking socket and trio's readiness wait: a trio socket object would
    # resolve the (numeric) address and wrap every call, per query.
    sock = socket.socket(_family(server[0]), socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect(server)  # UDP: no packet sent; replies from elsewhere are dropped
        sock.send(wire)
        peer = sock.getpeername()[:2]  # ``localhost`` answers from 127.0.0.1
        for _ in range(MAX_STRAY_REPLIES):
            while True:
                try:
                    data, source = sock.recvfrom(65535)
                    break
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
            if source[:2] != peer:
                continue  # the kernel filters a connected socket; be sure anyway
            layout = matches(data, wire, qend)
            if layout is not None:
                return data, layout
    except OSError as exc:
        raise UpstreamError("network", str(exc)) from exc
    finally:
        sock.close()
    raise UpstreamError("malformed", "no matching reply")


async def exchange_tcp(server: Address, wire: bytes, qend: int) -> tuple[bytes, Layout]:
    try:
        stream = await trio.open_tcp_stream(*server)
    except OSError as exc:
        raise UpstreamError("network", str(exc)) from exc
    async with stream:
        try:
            await stream.send_all(len(wire).to_bytes(2, "big") + wire)
            size = int.from_bytes(await _receive_exactly(stream, 2), "big")
            data = await _receive_exactly(stream, size)
        except (trio.BrokenResourceError, OSError) as exc:
            raise UpstreamError("network", str(exc)) from exc
    layout = matches(data, wire, qend)
    if layout is None:
        raise UpstreamError("malformed", "reply does not match the query")
    return data, layout


async def _receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:  # bounded: each pass reads at least one byte of at most n
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            raise UpstreamError("network", "connection closed")
        buf += chunk
    return bytes(buf)


class Asker(Protocol):
    """What runs the exchanges (``outbound.Outbound``): the answer comes through ``waiter``."""

    def ask(
        self, question: bytes, cd: bool, waiter: Callable[[Answer | None], None], now: float
    ) -> None: ...


class Forwarder:
    """The upstreams (order and health), the question cache and the health checker; the
    exchanges themselves run in ``outbound`` (the server's loop), which ``resolve`` uses."""

    def __init__(
        self,
        upstreams: Sequence[Address],
        *,
        metrics: DnsMetrics,
        cache: ForwardCache | None = None,
        timeout: float = 2.0,
        policy: str = "random",
        max_fails: int = 2,
        health_check: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = Pool(upstreams, policy=policy, max_fails=max_fails)
        self.metrics = metrics
        self.cache = cache if cache is not None else ForwardCache()
        self.timeout = timeout
        self.health_check = health_check
        self.clock = clock
        self.outbound: Asker | None = None  # set by the server's loop
        self.wake: Callable[[], None] = lambda: None  # tells the loop a deadline was added

    @property
    def upstreams(self) -> list[Address]:
        return list(self.pool.addresses)

    async def resolve(self, question: bytes, cd: bool = False) -> Answer | None:
        """The answer to ``question`` (name, type, class in wire form); None when no upstream
        answered usefully and nothing stale may stand in (the caller replies SERVFAIL)."""
        outbound = self.outbound
        if outbound is None:  # the loop is not running (yet): nothing can be asked
            return None
        got: list[Answer | None] = []
        done = trio.Event()

        def waiter(answer: Answer | None) -> None:
            got.append(answer)
            done.set()

        outbound.ask(question, cd, waiter, self.clock())
        if not got:
            self.wake()
            await done.wait()
        return got[0]

    def cached(self, key: bytes, now: float) -> Answer | None:
        """A fresh answer from the question cache, its TTLs lowered for its age."""
        entry = self.cache.get(key, now)
        if entry is None:
            return None
        layout = scan(entry.wire)
        if layout is None:
            return None
        self.metrics.cache_hits["forward"] += 1
        age = int(now - entry.stored)
        ttls = tuple((o, max(0, t - age)) for o, t in entry.ttls)
        wire = bytes(with_ttls(entry.wire, entry.ttls, age)) if age else entry.wire
        return Answer(wire, layout, ttls, entry.remaining(now), False, True)

    def succeeded(self, i: int) -> None:
        if self.pool.succeeded(i):
            server = self.pool.addresses[i]
            log.info("upstream up", extra={"upstream": f"{server[0]}:{server[1]}"})

    def failed(self, i: int, reason: str, detail: str = "") -> None:
        server = self.pool.addresses[i]
        self.metrics.forward_errors[reason] += 1
        if self.pool.failed(i):
            log.warning("upstream down", extra={"upstream": f"{server[0]}:{server[1]}"})
        log.debug(
            "upstream failed",
            extra={"upstream": f"{server[0]}:{server[1]}", "reason": reason, "detail": detail},
        )

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe the upstreams marked down, every ``health_check`` seconds (0: never)."""
        task_status.started()
        if self.health_check <= 0:
            return
        while True:
            await trio.sleep(self.health_check)
            for i in self.pool.unhealthy():
                await self._probe(i)

    async def _probe(self, i: int) -> None:
        server = self.pool.addresses[i]
        wire = request(HEALTH_QUESTION, False)
        try:
            with trio.fail_after(min(self.timeout, max(self.health_check, 0.1))):
                await exchange_udp(server, wire, HEADER + len(HEALTH_QUESTION))
        except (trio.TooSlowError, UpstreamError):
            self.metrics.health_checks["failed"] += 1
            self.pool.failed(i)
            return
        self.metrics.health_checks["ok"] += 1
        self.succeeded(i)
