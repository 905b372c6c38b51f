"""Getting a connection to one endpoint of a backend (trio shell over mesh.attempts).

A pooled connection to the endpoint the balancer picks is used when there is one; otherwise
a fresh connection is made, and when the connect fails (refused, timed out, unreachable) the
balancer is told (``refused``: skipped by its next pick) and the next endpoint is tried, as
the pure ConnectPlan decides. No endpoint at all is 503 ``no-healthy-upstream``; every attempt
failed is 502 ``upstream-connect-failure``, 504 ``upstream-timeout`` when the last one timed
out, 502 ``upstream-tls-failure`` when the last one connected but its TLS handshake failed.
"""

from __future__ import annotations

from collections.abc import Collection

import trio

from mesh.attempts import ConnectPlan
from mesh.http.balance import Balancer, Endpoint
from mesh.http.errors import TlsHandshakeError, UpstreamError
from mesh.http.pool import Pool, Timeout, Upstream, connect


def pooled(pool: Pool, balancer: Balancer) -> tuple[Upstream | None, Endpoint | None]:
    """``acquire``'s fast path without a coroutine: the endpoint picked, and a pooled
    connection to it when there is one (else pass the endpoint to ``acquire`` as ``first``,
    so the balancer is not moved on twice)."""
    if not balancer.endpoints:
        return None, None
    first = balancer.pick(())
    return (pool.take(first) if first is not None else None), first


async def acquire(
    pool: Pool,
    balancer: Balancer,
    *,
    attempts: int,
    connect_timeout: float,
    deadline: float,
    fresh: bool = False,
    first: Endpoint | None = None,
) -> Upstream:
    """A connection to an endpoint of ``balancer``: pooled unless ``fresh``. ``first``: the
    endpoint the caller picked already and found no pooled connection for (see ``pooled``)."""
    if not balancer.endpoints:
        raise UpstreamError("no-healthy-upstream", "the backend has no ready endpoint")
    if not fresh and first is None:  # the fast path: the endpoint picked has a pooled connection
        first = balancer.pick(())
        if first is not None and (up := pool.take(first)) is not None:
            return up

    def pick(tried: Collection[Endpoint]) -> Endpoint | None:
        # The first attempt connects to the endpoint already picked: a second pick would move
        # the balancer on again and skew round robin.
        return first if first is not None and not tried else balancer.pick(tried)

    plan: ConnectPlan[Endpoint] = ConnectPlan(pick, len(balancer.endpoints), attempts)
    timed_out = False
    tls_failure = False  # the last attempt connected, but its TLS handshake failed
    while (endpoint := plan.next()) is not None:
        if not fresh and (up := pool.take(endpoint)) is not None:
            return up
        try:
            sock = await connect(endpoint, connect_timeout, deadline)
        except Timeout:
            timed_out, tls_failure = True, False
        except TlsHandshakeError:
            balancer.refused(endpoint)
            timed_out, tls_failure = False, True
        except OSError:
            balancer.refused(endpoint)
            timed_out, tls_failure = False, False
        else:
            return Upstream(sock, endpoint)
        if trio.current_time() >= deadline:
            break
    if timed_out:
        raise UpstreamError("upstream-timeout", "connecting to the backend timed out")
    if tls_failure:
        # The client learns the reason, not the backend's certificate details.
        raise UpstreamError("upstream-tls-failure", "the TLS handshake with the backend failed")
    raise UpstreamError(
        "upstream-connect-failure", "no endpoint of the backend accepted a connection"
    )
