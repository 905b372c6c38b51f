"""Forwarding to upstream servers (trio): one exchange per question, however many ask.

- An exchange uses a fresh UDP socket connected to the upstream, so the kernel drops
  datagrams from any other address; a reply counts only with our random ID (RFC 5452), the QR
  bit and our question. Anything else is read and dropped (a bounded number), so a spoofed or
  stale reply can neither answer the client nor enter the cache. A truncated reply is asked
  again over TCP.
- Identical questions in flight share one exchange: the first asker sends, the others wait
  for its result.
- Upstreams are tried in the order the ``Pool`` gives (policy, health); each within
  ``timeout``. A SERVFAIL or REFUSED makes the next one try. Answers go into the question
  cache; when every upstream fails, an expired entry in its ``serve_stale`` window answers.
- ``run`` probes the upstreams marked down every ``health_check`` seconds (``. IN NS``, as
  CoreDNS's ``forward`` does); any reply brings one back.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from mesh.dns.forward_cache import STALE_TTL, ForwardCache, Ttls, with_ttls
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


@dataclass(frozen=True, slots=True)
class Answer:
    """An upstream's answer: the message, where things are in it, its TTLs as they stand now,
    and how long it may still be cached (0: not at all)."""

    wire: bytes
    layout: Layout
    ttls: Ttls
    remaining: float
    stale: bool = False


def question_key(question: bytes, cd: bool) -> bytes:
    """The question cache's key: the question (name lower-cased, type, class) and CD."""
    return question.lower() + (b"\x01" if cd else b"\x00")


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
    if reply[HEADER:qend].lower() != sent[HEADER:qend].lower():
        return None
    layout = scan(reply)
    return layout if layout is not None and layout.qend == qend else None


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
        for _ in range(MAX_STRAY_REPLIES):
            while True:
                try:
                    data, source = sock.recvfrom(65535)
                    break
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
            if source[:2] != server[:2]:
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


class _Pending:
    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Answer | None = None


class Forwarder:
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
        self._inflight: dict[bytes, _Pending] = {}

    @property
    def upstreams(self) -> list[Address]:
        return list(self.pool.addresses)

    async def resolve(self, question: bytes, cd: bool = False) -> Answer | None:
        """The answer to ``question`` (name, type, class in wire form); None when no upstream
        answered usefully and nothing stale may stand in (the caller replies SERVFAIL)."""
        key = question_key(question, cd)
        now = self.clock()
        entry = self.cache.get(key, now)
        if entry is not None:
            self.metrics.cache_hits["forward"] += 1
            age = int(now - entry.stored)
            layout = scan(entry.wire)
            if layout is not None:
                ttls = tuple((o, max(0, t - age)) for o, t in entry.ttls)
                wire = bytes(with_ttls(entry.wire, entry.ttls, age)) if age else entry.wire
                return Answer(wire, layout, ttls, entry.remaining(now))
        pending = self._inflight.get(key)
        if pending is not None:
            self.metrics.forward_shared += 1
            await pending.done.wait()
            return pending.result
        self.metrics.cache_misses["forward"] += 1
        pending = self._inflight[key] = _Pending()
        try:
            pending.result = await self._ask(key, question.lower(), cd)
        finally:
            del self._inflight[key]
            pending.done.set()
        return pending.result

    async def _ask(self, key: bytes, question: bytes, cd: bool) -> Answer | None:
        wire = request(question, cd)
        qend = HEADER + len(question)
        fallback: Answer | None = None
        for i in self.pool.order():
            server = self.pool.addresses[i]
            try:
                with trio.fail_after(self.timeout):
                    data, layout = await exchange_udp(server, wire, qend)
                    if layout.tc:
                        data, layout = await exchange_tcp(server, wire, qend)
            except trio.TooSlowError:
                self._failed(i, "timeout")
                continue
            except UpstreamError as exc:
                self._failed(i, exc.reason, str(exc))
                continue
            if layout.rcode in RETRY_RCODES:
                # the upstream is alive: its answer for this name is bad, not its health
                self.metrics.forward_errors[RCODE_REASONS[layout.rcode]] += 1
                fallback = fallback or Answer(data, layout, layout.ttls, 0)
                continue
            if self.pool.succeeded(i):
                log.info("upstream up", extra={"upstream": f"{server[0]}:{server[1]}"})
            keep = self.cache.keep_for(layout)
            self.cache.put(key, data, layout.ttls, qend, ttl=keep, now=self.clock())
            return Answer(data, layout, layout.ttls, keep)
        stale = self.cache.stale(key, self.clock())
        found = scan(stale.wire) if stale is not None else None
        if stale is None or found is None:
            return fallback
        self.metrics.cache_hits["stale"] += 1
        wire = bytes(with_ttls(stale.wire, stale.ttls, 0, fixed=STALE_TTL))
        ttls = tuple((o, STALE_TTL) for o, _ in stale.ttls)
        return Answer(wire, found, ttls, 0, stale=True)

    def _failed(self, i: int, reason: str, detail: str = "") -> None:
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
        if self.pool.succeeded(i):
            log.info("upstream up", extra={"upstream": f"{server[0]}:{server[1]}"})
