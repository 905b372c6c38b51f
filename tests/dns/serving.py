"""Running the DNS server on loopback for a test, and asking it with real clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import dns.message
import dns.query
import trio

from mesh.config.dns import DnsConfig
from mesh.dns.server import DnsServer

HOST = "127.0.0.1"
CLIENT_TIMEOUT = 5.0


@asynccontextmanager
async def running(
    config: DnsConfig | None,
    *,
    upstreams: Sequence[tuple[str, int]] = (),
    **options: Any,
) -> AsyncIterator[DnsServer]:
    server = DnsServer((HOST, 0), list(upstreams), **options)
    if config is not None:
        server.apply(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        yield server
        nursery.cancel_scope.cancel()


async def ask_udp(server: DnsServer, q: dns.message.Message) -> dns.message.Message:
    def ask() -> dns.message.Message:
        return dns.query.udp(q, HOST, port=server.port, timeout=CLIENT_TIMEOUT)

    return await trio.to_thread.run_sync(ask)


async def ask_tcp(server: DnsServer, q: dns.message.Message) -> dns.message.Message:
    def ask() -> dns.message.Message:
        return dns.query.tcp(q, HOST, port=server.port, timeout=CLIENT_TIMEOUT)

    return await trio.to_thread.run_sync(ask)


async def ask(server: DnsServer, q: dns.message.Message, transport: str) -> dns.message.Message:
    return await (ask_udp if transport == "udp" else ask_tcp)(server, q)


async def udp_exchange(port: int, packets: Sequence[bytes], *, host: str = HOST) -> bytes:
    """Send ``packets`` from one socket, return the first datagram that comes back."""
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.connect((host, port))
        for p in packets:
            await sock.send(p)
        with trio.fail_after(CLIENT_TIMEOUT):
            return await sock.recv(65535)


async def tcp_exchange(port: int, messages: Sequence[bytes], replies: int) -> list[bytes]:
    """Send length-prefixed ``messages`` on one connection, read ``replies`` replies."""
    out: list[bytes] = []
    with trio.fail_after(CLIENT_TIMEOUT):
        stream = await trio.open_tcp_stream(HOST, port)
        async with stream:
            await stream.send_all(b"".join(len(m).to_bytes(2, "big") + m for m in messages))
            buf = b""
            while len(out) < replies:
                chunk = await stream.receive_some(65535)
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                    size = int.from_bytes(buf[:2], "big")
                    out.append(buf[2 : 2 + size])
                    buf = buf[2 + size :]
    return out
