"""What the router decides for one request, and the interface the engine calls it through.

This is the contract between the route model (which compiles Ingress and Gateway API into
routes) and the data path (server, forward, pool). A router is any callable

    router(request: events.Request, peer: Peer) -> Forward | Respond

that is pure and fast (it runs once per request, on the hot path) and never raises for a
request it does not like: it returns a ``Respond`` saying why (``no-route``, ``denied``,
``rate-limited``, a redirect). The engine holds one router at a time; swapping it
(``server.router = new``) changes the decision for new requests only, a request in flight
finishes with the decision it got.

``Forward``: proxy the request to one endpoint of ``upstream`` (a balancer from
mesh.http.balance, which the router keeps across config swaps while its endpoint list is
unchanged), with the per-request timeouts, header edits, and the target or Host rewritten
when a filter said so. The engine adds the proxy headers (X-Forwarded-*, X-Request-Id) and
removes hop-by-hop fields itself; the edits apply after that, so a route may still override
them. ``Respond``: answer from the gateway itself. Both are frozen: build them once per
route where possible and reuse them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mesh.http.balance import Balancer
from mesh.http.events import Headers, Request


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; None means no limit. ``read`` and ``send`` bound the wait for each read from
    and write to the upstream (ingress-nginx's proxy-read/send-timeout); ``request`` bounds
    the whole exchange with the upstream (Gateway API ``timeouts.backendRequest``)."""

    connect: float = 5.0
    read: float | None = 60.0
    send: float | None = 60.0
    request: float | None = None


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """Gateway API's HeaderModifier semantics: ``set`` replaces every field of that name,
    ``add`` appends one, ``remove`` drops all of that name. Names lower-case bytes."""

    set: Headers = ()
    add: Headers = ()
    remove: tuple[bytes, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)

    def apply(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        drop = set(self.remove) | {name for name, _ in self.set}
        out = [f for f in headers if f[0] not in drop] if drop else headers
        out.extend(self.set)
        out.extend(self.add)
        return out


NO_EDITS = HeaderEdits()
DEFAULT_TIMEOUTS = Timeouts()


@dataclass(frozen=True, slots=True)
class Forward:
    upstream: Balancer
    route: str = ""  # names for logs and metric labels
    backend: str = ""
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    request_headers: HeaderEdits = NO_EDITS
    response_headers: HeaderEdits = NO_EDITS
    target: bytes | None = None  # the rewritten request target (path and query); None keeps it
    host: bytes | None = None  # the rewritten Host; None keeps it
    max_body: int | None = None  # request body bytes allowed (413 body-too-large above)
    connect_attempts: int = 3  # endpoints tried before 502 upstream-connect-failure


@dataclass(frozen=True, slots=True)
class Respond:
    status: int
    headers: Headers = ()
    body: bytes = b""
    reason: str = ""  # the x-mesh-reason when the gateway answers on its own account
    route: str = ""


@dataclass(frozen=True, slots=True)
class Peer:
    """Who sent the request, and where it arrived."""

    address: str
    port: int
    scheme: bytes = b"http"  # b"https" behind TLS termination
    local_port: int = 0


Decision = Forward | Respond
Router = Callable[[Request, Peer], Decision]
