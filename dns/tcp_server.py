"""DNS over TCP (RFC 7766): length-prefixed messages, several per connection, bounded.

The shell around the server's answer function: at most ``max_connections`` at once (more are
closed at once, counted), at most ``max_queries`` messages per connection, each connection
closed after ``idle`` seconds without a complete message. ``answer`` gets the message and
the peer's address (autopath knows pods by it) and returns the reply, or None to close the
connection (not a query: there is nothing to say).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from mesh.dns.metrics import DnsMetrics

Answer = Callable[[bytes, str], Awaitable[bytes | None]]


class TcpServing:
    def __init__(
        self,
        answer: Answer,
        metrics: DnsMetrics,
        *,
        idle: float,
        max_connections: int,
        max_queries: int,
    ) -> None:
        self.answer = answer
        self.metrics = metrics
        self.idle = idle
        self.max_connections = max_connections
        self.max_queries = max_queries
        self.connections = 0

    async def serve(self, stream: trio.SocketStream) -> None:
        if self.connections >= self.max_connections:
            self.metrics.dropped["tcp_connections"] += 1
            await stream.aclose()
            return
        self.connections += 1
        try:
            peer = str(stream.socket.getpeername()[0])
        except OSError:
            peer = ""
        try:
            async with stream:
                for _ in range(self.max_queries):
                    data = await self.read_message(stream)
                    if data is None:
                        return
                    reply = await self.answer(data, peer)
                    if reply is None:
                        return
                    await stream.send_all(len(reply).to_bytes(2, "big") + reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.connections -= 1

    async def read_message(self, stream: trio.SocketStream) -> bytes | None:
        """The next length-prefixed message, or None at EOF or after the idle timeout."""
        buf = bytearray()
        with trio.move_on_after(self.idle):
            while len(buf) < 2:
                chunk = await stream.receive_some(2 - len(buf))
                if not chunk:
                    return None
                buf += chunk
            size = int.from_bytes(buf[:2], "big")
            while len(buf) < 2 + size:
                chunk = await stream.receive_some(2 + size - len(buf))
                if not chunk:
                    return None
                buf += chunk
            return bytes(buf[2:])
        return None
