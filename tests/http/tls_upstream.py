"""An HTTPS upstream on 127.0.0.1 for re-encryption tests: serves a certificate from a test
CA, records the SNI of every handshake and answers each request (keep-alive) with JSON naming
the connection it came on, so a test sees whether connections were reused."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field

import trio

from mesh.http.events import CLOSED, NEED_DATA, PAUSED, Data, EndOfMessage, Request
from mesh.http.h1 import Reader
from mesh.tls.contexts import load_chain, server_context
from tests.tls.pki import Issued


@dataclass
class TlsUpstream:
    cert: Issued
    sni: list[str | None] = field(default_factory=list)  # one per ClientHello
    connections: int = 0  # accepted TCP connections
    handshakes_failed: int = 0
    requests: list[Request] = field(default_factory=list)
    address: tuple[str, int] = ("127.0.0.1", 0)
    arrived: trio.Event = field(default_factory=trio.Event)  # set at the first request

    def context(self) -> ssl.SSLContext:
        ctx = server_context()
        load_chain(ctx, self.cert.cert_pem, self.cert.key_pem)

        def record(_conn: object, name: str | None, _ctx: object) -> None:
            self.sni.append(name)

        ctx.sni_callback = record
        return ctx

    async def serve(self, *, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        ctx = self.context()
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.address = listeners[0].socket.getsockname()[:2]
        task_status.started(self.address)

        async def handle(stream: trio.SocketStream) -> None:
            self.connections += 1
            index = self.connections
            tls = trio.SSLStream(stream, ctx, server_side=True, https_compatible=True)
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError:
                self.handshakes_failed += 1
                await trio.aclose_forcefully(tls)
                return
            name = self.sni[-1] if self.sni else None  # this handshake's (tests go one by one)
            try:
                await self._http(tls, index, name)
            except trio.BrokenResourceError:
                pass
            finally:
                await trio.aclose_forcefully(tls)

        await trio.serve_listeners(handle, listeners)

    async def _http(
        self, tls: trio.SSLStream[trio.SocketStream], index: int, sni: str | None
    ) -> None:
        reader = Reader("server")
        body = 0
        request: Request | None = None
        while True:
            ev = reader.next_event()
            if ev is NEED_DATA:
                data = await tls.receive_some(65536)
                reader.feed(bytes(data))
                continue
            if ev is CLOSED:
                return
            if ev is PAUSED:
                reader.next_message()
                continue
            if type(ev) is Request:
                request, body = ev, 0
            elif type(ev) is Data:
                body += len(ev.data)
            elif type(ev) is EndOfMessage:
                assert request is not None
                self.requests.append(request)
                self.arrived.set()
                answer = json.dumps(
                    {
                        "connection": index,
                        "sni": sni,
                        "target": request.target.decode(),
                        "host": (request.header(b"host") or b"").decode(),
                        "body": body,
                    }
                ).encode()
                await tls.send_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(answer), answer)
                )
