"""Forwarding to upstream servers (trio): UDP first, TCP when the answer comes back truncated.

Each exchange uses a fresh UDP socket connected to the upstream (a random source port and a
random ID, RFC 5452) and accepts only a reply with that ID and question. Upstreams are tried
in order, each within ``timeout``; a SERVFAIL or REFUSED makes the next one try. Answers go
through the forward cache first.
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from collections.abc import Callable, Sequence

import trio
from dnslib import EDNS0, RCODE, DNSHeader, DNSQuestion, DNSRecord

from mesh.dns.forward_cache import ForwardCache, Key
from mesh.dns.metrics import DnsMetrics
from mesh.dns.packet import Query

log = logging.getLogger("mesh.dns.upstream")

UPSTREAM_PAYLOAD = 1232  # DNS flag day 2020: no fragmentation on common paths
MAX_STRAY_REPLIES = 16  # replies that do not match, read and dropped, per exchange
RETRY_RCODES = frozenset((int(RCODE.SERVFAIL), int(RCODE.REFUSED)))


class UpstreamError(Exception):
    """One exchange with one upstream failed; ``reason`` is the metrics label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _matches(reply: DNSRecord, request: DNSRecord) -> bool:
    if reply.header.id != request.header.id or not reply.header.qr or len(reply.questions) != 1:
        return False
    rq, q = reply.questions[0], request.questions[0]
    return bool(rq.qtype == q.qtype and rq.qclass == q.qclass and rq.qname == q.qname)


def _parse(wire: bytes) -> DNSRecord | None:
    try:
        return DNSRecord.parse(wire)
    except Exception:  # dnslib raises several types on garbage
        return None


async def exchange_udp(server: tuple[str, int], request: DNSRecord, wire: bytes) -> DNSRecord:
    with trio.socket.socket(_family(server[0]), socket.SOCK_DGRAM) as sock:
        try:
            await sock.connect(server)
            await sock.send(wire)
            for _ in range(MAX_STRAY_REPLIES):
                data = await sock.recv(65535)
                reply = _parse(data)
                if reply is not None and _matches(reply, request):
                    return reply
        except OSError as exc:
            raise UpstreamError("network", str(exc)) from exc
    raise UpstreamError("malformed", "no matching reply")


async def exchange_tcp(server: tuple[str, int], request: DNSRecord, wire: bytes) -> DNSRecord:
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
    reply = _parse(data)
    if reply is None or not _matches(reply, request):
        raise UpstreamError("malformed", "reply does not match the query")
    return reply


async def _receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:  # bounded: each pass reads at least one byte of at most n
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            raise UpstreamError("network", "connection closed")
        buf += chunk
    return bytes(buf)


class Forwarder:
    def __init__(
        self,
        upstreams: Sequence[tuple[str, int]],
        *,
        metrics: DnsMetrics,
        cache: ForwardCache | None = None,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstreams = list(upstreams)
        self.metrics = metrics
        self.cache = cache if cache is not None else ForwardCache()
        self.timeout = timeout
        self.clock = clock

    async def resolve(self, query: Query) -> tuple[DNSRecord, int] | None:
        """The upstream answer to ``query`` and its age in the cache; None when no upstream
        answered usefully (the caller replies SERVFAIL)."""
        q = query.question
        key: Key = (str(q.qname).lower(), int(q.qtype), int(q.qclass))
        cached = self.cache.get(key, self.clock())
        if cached is not None:
            self.metrics.cache_hits["forward"] += 1
            return cached
        self.metrics.cache_misses["forward"] += 1
        request = DNSRecord(
            DNSHeader(id=secrets.randbits(16), rd=1, cd=query.record.header.cd),
            [DNSQuestion(q.qname, q.qtype, q.qclass)],
        )
        request.add_ar(EDNS0(udp_len=UPSTREAM_PAYLOAD))
        wire = request.pack()
        fallback: DNSRecord | None = None
        for server in self.upstreams:
            try:
                with trio.fail_after(self.timeout):
                    reply = await exchange_udp(server, request, wire)
                    if reply.header.tc:
                        reply = await exchange_tcp(server, request, wire)
            except trio.TooSlowError:
                self._error("timeout", server)
                continue
            except UpstreamError as exc:
                self._error(exc.reason, server, str(exc))
                continue
            if reply.header.rcode in RETRY_RCODES:
                self._error("upstream_" + RCODE[reply.header.rcode].lower(), server)
                fallback = fallback or reply
                continue
            self.cache.put(key, reply, self.clock())
            return reply, 0
        return (fallback, 0) if fallback is not None else None

    def _error(self, reason: str, server: tuple[str, int], detail: str = "") -> None:
        self.metrics.forward_errors[reason] += 1
        log.debug(
            "upstream failed",
            extra={"upstream": f"{server[0]}:{server[1]}", "reason": reason, "detail": detail},
        )
