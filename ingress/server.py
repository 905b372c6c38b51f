"""One gateway listener: the engine's HTTP server with the gateway's routing, TLS, retries
and telemetry around each request.

The engine (mesh.http.server.HttpServer) runs the connection loop: read a head, handle it,
keep the connection or not. This subclass changes two steps of it:

- ``_connection``: a TLS listener completes the handshake first (within the header timeout,
  the certificate chosen by SNI by the listener's TlsTerminator); either way the socket is
  wrapped in a :class:`~ingress.conn.Downstream`, which notes the response status and bytes.
- ``_handle``: the decision comes from the current :class:`~ingress.router.Routing` (read once
  per request: a config swap changes the next request, never this one); a forwarded request
  that failed before any response byte reached the client (a connect failure, a reset, a
  per-try timeout, or a response whose status the route retries) is tried again when the
  route's retry policy says so (mesh.http.retry), with the request body replayed from its
  bounded retry buffer (mesh.http.replay); a route with ``auth-url`` asks the auth service
  first (mesh.ingress.extauth); RequestMirror copies, bodies included, go out in the
  background (mesh.ingress.mirror); limit-connections counts requests in flight per route and
  client address; then one access-log record, one metrics sample and,
  when sampled, one span.
- ``_reject``: a head refused before routing (malformed, too large, too slow, CONNECT, TRACE) gets
  its access-log record and metrics sample too, with no route, method or path.
"""

from __future__ import annotations

import logging
import math
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import trio

from mesh.http.decision import Forward, Peer, Respond
from mesh.http.errors import HttpError, UpstreamError
from mesh.http.events import Request
from mesh.http.forward import Abort, HandedOff, forward
from mesh.http.pool import DEADLINES, Pool, Timeout
from mesh.http.replay import RETRY_BUFFER, SentBody
from mesh.http.retry import Again, Failure, decide
from mesh.http.server import HttpServer, Limits
from mesh.http.tracing import SpanEnd, Tracer
from mesh.ingress import extauth
from mesh.ingress.conn import Downstream, Refused, handshake
from mesh.ingress.mirror import Mirrors

if TYPE_CHECKING:
    from mesh.config.gateway import Retry
    from mesh.http.access_log import AccessLog
    from mesh.http.metrics import HttpMetrics
    from mesh.http.otel import OtlpSpans
    from mesh.http.plan import Forward as PlannedForward
    from mesh.http.tee import Tee
    from mesh.ingress.router import Routing
    from mesh.tls import TlsTerminator

log = logging.getLogger("mesh.ingress")

# Upstream failures a retry policy may retry (GEP-1731), by the engine's reason.
_RETRYABLE: dict[str, Failure] = {
    "upstream-connect-failure": "connect-failure",
    "upstream-timeout": "timeout",
    "upstream-reset": "reset",
}


@dataclass
class Telemetry:
    """Where finished requests are reported; each part is optional."""

    metrics: HttpMetrics | None = None
    access_log: AccessLog | None = None
    tracer: Tracer | None = None
    spans: OtlpSpans | None = None  # the tracer's exporter, shut down with the gateway

    async def aclose(self) -> None:
        """Write what the access log holds and export the spans left (both block: threads)."""
        if self.access_log is not None:
            await trio.to_thread.run_sync(self.access_log.close)
        if self.spans is not None:
            await trio.to_thread.run_sync(self.spans.shutdown)


def build_telemetry(
    *, access_log: str | None, otlp_endpoint: str | None, sample_ratio: float = 1.0
) -> Telemetry:
    """``access_log``: a file path, ``-`` for stdout, None for none."""
    from mesh.http.access_log import AccessLog

    t = Telemetry()
    if access_log is not None:
        sink = sys.stdout.buffer if access_log == "-" else open(access_log, "ab")  # noqa: SIM115
        t.access_log = AccessLog(sink)
        t.access_log.start()
    if otlp_endpoint is not None:
        from mesh.http.otel import OtlpSpans

        t.spans = OtlpSpans.to_endpoint(otlp_endpoint, service_name="mesh-gateway")
        t.tracer = Tracer(t.spans, sample_ratio=sample_ratio)
    return t


class Holder:
    """The current routing, shared by every listener of a gateway: swapped by one assignment."""

    __slots__ = ("routing",)

    def __init__(self, routing: Routing) -> None:
        self.routing = routing


class GatewayServer(HttpServer):
    def __init__(
        self,
        listener: str,
        holder: Holder,
        *,
        telemetry: Telemetry,
        limits: Limits | None = None,
        pool: Pool | None = None,
        tls: TlsTerminator | None = None,
        mirrors: Mirrors | None = None,
    ) -> None:
        super().__init__(self._route, limits=limits, pool=pool, scheme=b"https" if tls else b"http")
        self.listener = listener
        self.holder = holder
        self.tls = tls
        self.telemetry = telemetry
        self.tracer = telemetry.tracer or Tracer(None)
        self.tracing = self.tracer.enabled
        self.mirrors = mirrors or Mirrors()
        self.retry_buffer = RETRY_BUFFER  # request body bytes kept for a retry
        self.in_flight: Counter[tuple[str, str]] = Counter()  # (route, client): limit-connections

    def _route(self, req: Request, peer: Peer) -> Forward | Respond:
        """The plain Router interface (used when the engine calls ``self.router`` itself)."""
        return self.holder.routing.decide(self.listener, req, peer, time.monotonic(), None)[0]

    async def _connection(self, sock: Any, addr: Any, port: int = 0, first: bytes = b"") -> None:
        metrics = self.telemetry.metrics
        if self.tls is not None:
            try:
                tls, first = await handshake(sock, self.tls.context, self.limits.header_timeout)
            except (OSError, Timeout):
                return  # ``handshake`` closed it
            sock = Downstream(tls, tls=True, client=addr[0])
        else:
            sock = Downstream(sock, client=addr[0])
        if metrics is not None:
            metrics.opened(self.listener)
        try:
            await super()._connection(sock, addr, port, first)
        finally:
            if metrics is not None:
                metrics.closed(self.listener)

    async def _reject(self, sock: Any, err: HttpError) -> None:
        """A head refused before routing (malformed, too large, too slow, CONNECT, TRACE) is
        counted with its reason too: no route, no backend."""
        sent = sock.sent
        await super()._reject(sock, err)
        t = self.telemetry
        if t.metrics is not None:
            t.metrics.request("", "", err.status, err.reason, 0.0)
        if t.access_log is not None:  # one line for it too: no method or path to tell
            from mesh.http.access_log import AccessRecord

            t.access_log.log(
                AccessRecord(
                    time.time(), "", "", "", err.status, err.reason,
                    client=sock.client, bytes_out=sock.sent - sent,
                )
            )  # fmt: skip

    async def _handle(self, sock: Any, reader: Any, req: Request, peer: Peer) -> bool:
        started = time.monotonic()
        sock.status = 0
        sent, received = sock.sent, sock.received
        hop = self.tracer.start(req.headers) if self.tracing else None
        reason, status = "", 0
        route = backend = ""
        routing = self.holder.routing  # one read: this request's config
        try:
            decision, planned = routing.decide(self.listener, req, peer, started, hop)
            route = decision.route
            if type(decision) is Respond:
                status, reason = decision.status, decision.reason
                return await self._respond(sock, reader, req, decision)
            assert isinstance(decision, Forward) and planned is not None
            backend = decision.backend
            if id(planned.route) in routing.special:
                answer = await self._special(sock, reader, req, peer, decision, planned, started)
                if isinstance(answer, Respond):
                    status, reason = answer.status, answer.reason
                    return await self._respond(sock, reader, req, answer)
                keep = answer
            else:  # the common route: nothing around the engine
                keep = await forward(self, sock, reader, req, peer, decision)
            status = sock.status
            return keep
        except HttpError as err:
            status, reason = err.status, err.reason
            if isinstance(err, UpstreamError) and self.telemetry.metrics is not None:
                # per failed request (the engine tries other endpoints first and does not say
                # which refused): upstream-connect-failure, -timeout, -reset, ...
                self.telemetry.metrics.upstream_connect_error(backend, err.reason)
            keep = req.keep_alive and reader.message_done and err.blame != "downstream"
            await self._error(sock, err, close=not keep)
            return keep
        except Exception as exc:
            if isinstance(exc, Abort | HandedOff | OSError):
                status = sock.status  # a tunnel, or a response cut short
                raise
            log.exception("request failed")
            status, reason = 500, "internal-error"
            await self._error(sock, HttpError("internal-error"), close=True)
            return False
        finally:
            metrics = self.telemetry.metrics
            if metrics is not None:
                metrics.request(route, backend, status, reason, time.monotonic() - started)
            if self.telemetry.access_log is not None or hop is not None:
                self._report(
                    req, peer, route, backend, status, reason, started, hop,
                    sock.sent - sent, sock.received - received,
                )  # fmt: skip

    async def _special(
        self,
        sock: Downstream,
        reader: Any,
        req: Request,
        peer: Peer,
        decision: Forward,
        planned: PlannedForward,
        started: float,
    ) -> bool | Respond:
        """A route with auth-url, limit-connections, mirrors or retries."""
        route = decision.route
        if planned.external_auth is not None:
            denied = await extauth.check(planned.external_auth, req, peer, route)
            if denied is not None:
                return denied
        limit = planned.connection_limit
        key = (route, peer.address)
        if limit is not None:
            if self.in_flight[key] >= limit:
                return Respond(503, (), b"503 rate-limited\n", "rate-limited", route)
            self.in_flight[key] += 1
        taps: tuple[Tee, ...] = ()
        try:
            if planned.mirrors:
                taps = self.mirrors.start(
                    req,
                    decision.target or req.target,
                    self.holder.routing.mirror_targets(planned.mirrors),
                )
            body = None
            if req.length != 0 and (planned.retry is not None or taps):
                # kept for a retry (none without a policy) and copied to the mirrors
                limit_ = self.retry_buffer if planned.retry is not None else 0
                body = SentBody(limit_, taps)
            return await self._forward(
                sock, reader, req, peer, decision, planned.retry, started, body,
                planned.timeouts.request,
            )  # fmt: skip
        finally:
            for tap in taps:
                tap.close()  # a copy whose body did not end is aborted, never completed
            if limit is not None:
                self.in_flight[key] -= 1
                if not self.in_flight[key]:
                    del self.in_flight[key]

    async def _forward(
        self,
        sock: Downstream,
        reader: Any,
        req: Request,
        peer: Peer,
        fwd: Forward,
        retry: Retry | None,
        started: float,
        body: SentBody | None = None,
        whole: float | None = None,
    ) -> bool:
        """``whole``: the route's whole-request timeout (GEP-1742 ``timeouts.request``): the
        tries and the waits between them all fit in it, each try cut to what is left."""
        retries = 0
        method = req.method.decode("latin-1")
        deadline = started + whole if whole else None
        delay = [0.0]

        def again(outcome: Failure | int) -> bool:
            if body is not None and not body.replayable:
                return False  # part of the body went out and was not kept: no replay
            verdict = decide(
                retry,
                retries_done=retries,
                outcome=outcome,
                method=method,
                now=time.monotonic(),
                deadline=deadline,
                body_replayable=req.length == 0 or body is not None,
            )
            if isinstance(verdict, Again):
                delay[0] = verdict.delay
                return True
            return False

        if retry is not None and retry.codes and (req.length == 0 or body is not None):
            sock.veto = again  # a response with a retried status is refused before it leaves
        try:
            while True:
                this = fwd
                if deadline is not None and retries:  # a retry gets what time is left
                    left = max(deadline - time.monotonic(), 0.001)
                    per_try = fwd.timeouts.request
                    if per_try is None or left < per_try:
                        this = replace(fwd, timeouts=replace(fwd.timeouts, request=left))
                try:
                    return await forward(self, sock, reader, req, peer, this, body)  # type: ignore[arg-type]
                except Refused:
                    pass  # ``again`` said so when it saw the status
                except UpstreamError as err:
                    outcome = _RETRYABLE.get(err.reason)
                    # a final response head already went to the client (a 100 Continue
                    # before it does not count): too late
                    if retry is None or outcome is None or sock.status >= 200:
                        raise
                    if not again(outcome):
                        raise
                retries += 1
                if delay[0] > 0:
                    await _sleep(delay[0])
        finally:
            sock.veto = None

    def _report(
        self,
        req: Request,
        peer: Peer,
        route: str,
        backend: str,
        status: int,
        reason: str,
        started: float,
        hop: Any,
        bytes_out: int,
        bytes_in: int,
    ) -> None:
        """The access-log line and the span of one finished request."""
        t = self.telemetry
        duration = time.monotonic() - started
        host = req.header(b"host") or b""
        if t.access_log is not None:
            from mesh.http.access_log import AccessRecord

            t.access_log.log(
                AccessRecord(
                    time.time() - duration,
                    req.method.decode("latin-1"),
                    host.decode("latin-1"),
                    req.target.decode("latin-1"),
                    status,
                    reason,
                    route,
                    backend,
                    "",
                    peer.address,
                    bytes_in,
                    bytes_out,
                    duration,
                    trace_id=hop.context.trace_id if hop is not None else "",
                    request_id=(req.header(b"x-request-id") or b"").decode("latin-1"),
                )
            )
        if hop is not None and hop.context.sampled:
            self.tracer.finish(
                hop,
                SpanEnd(
                    req.method.decode("latin-1"),
                    host.decode("latin-1"),
                    req.target.decode("latin-1"),
                    status,
                    route,
                    backend,
                    reason,
                    peer.address,
                ),
            )


async def _sleep(seconds: float) -> None:
    """A wait usable inside the engine's reactor (which resumes coroutines only on sockets):
    wait on a socket that never becomes readable until the deadline passes."""
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        await DEADLINES.wait(a, seconds, math.inf, False)
    except Timeout:
        pass
    finally:
        a.close()
        b.close()
