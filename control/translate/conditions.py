"""Status pieces for Gateway API and Ingress: conditions with the specification's reasons,
hostname intersection, ReferenceGrant checks, and gateway address allocation. All pure.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Hashable, Iterable
from typing import Any, TypeVar

from mesh.objects import GATEWAY_GROUP, Condition, Model, ReferenceGrant

_M = TypeVar("_M", bound=Model)

# Reasons, as the Gateway API names them (apis/v1/gateway_types.go, httproute_types.go).
ACCEPTED, PROGRAMMED, RESOLVED_REFS, CONFLICTED = (
    "Accepted",
    "Programmed",
    "ResolvedRefs",
    "Conflicted",
)


def condition(
    kind: str, ok: bool, reason: str, message: str = "", generation: int = 0
) -> Condition:
    return Condition(
        type=kind,
        status="True" if ok else "False",
        reason=reason,
        message=message,
        observed_generation=generation,
    )


def carry_transitions(old: Model | None, new: _M, now: str) -> _M:
    """``new`` (an object whose status was just computed) with each status condition's
    lastTransitionTime, as the API conventions define it: when the condition last changed
    status. A condition of the same type at the same place (the same listener, parent or
    ancestor) in ``old`` with the same status keeps its time, so an unchanged status is an
    unchanged object (no write, no new resourceVersion); a new or flipped one gets ``now``
    (RFC 3339). A time the writer set itself is kept."""
    status = getattr(new, "status", None)
    if not isinstance(status, Model):
        return new
    stamped = _carry(getattr(old, "status", None), status, now)
    return new if stamped is status else new.model_copy(update={"status": stamped})


def _carry(old: Any, new: _M, now: str) -> _M:
    updates: dict[str, Any] = {}
    for name, value in new.__dict__.items():
        before = getattr(old, name, None) if old is not None else None
        if isinstance(value, Model):
            walked = _carry(before, value, now)
            if walked is not value:
                updates[name] = walked
        elif type(value) is tuple and value and isinstance(value[0], Model):
            if isinstance(value[0], Condition):
                by_type = {c.type: c for c in before or ()}
                items = [_stamp(c, by_type.get(c.type), now) for c in value]
            else:
                by_place = {_place(e): e for e in before or ()}
                items = [_carry(by_place.get(_place(e)), e, now) for e in value]
            if any(a is not b for a, b in zip(items, value, strict=True)):
                updates[name] = tuple(items)
    return new.model_copy(update=updates) if updates else new


def _stamp(cond: Condition, old: Condition | None, now: str) -> Condition:
    if cond.last_transition_time:
        return cond
    if old is not None and old.status == cond.status and old.last_transition_time:
        when = old.last_transition_time
    else:
        when = now
    return cond.model_copy(update={"last_transition_time": when})


def _place(item: Model) -> Hashable:
    """What tells one status entry from its siblings: a listener's name, a route parent's
    or policy ancestor's reference and controller."""
    return tuple(
        getattr(item, f, None) for f in ("name", "parent_ref", "ancestor_ref", "controller_name")
    )


def host_matches(pattern: str, host: str) -> bool:
    """Gateway API hostname matching: ``*.example.com`` covers one or more labels."""
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return pattern == host


def intersect(listener: str | None, route: str) -> str | None:
    """The hostnames a route hostname and a listener hostname have in common (the more
    specific of the two), or None."""
    if listener is None or listener == route:
        return route
    if host_matches(listener, route):
        return route
    if host_matches(route, listener):
        return listener
    return None


def route_hosts(listener: str | None, hostnames: Iterable[str]) -> tuple[str, ...] | None:
    """The effective hostnames of a route on a listener: () for any, None for no overlap."""
    names = list(hostnames)
    if not names:
        return (listener,) if listener else ()
    found = [h for h in (intersect(listener, n) for n in names) if h is not None]
    return tuple(dict.fromkeys(found)) or None


def granted(
    grants: Iterable[ReferenceGrant],
    *,
    from_kind: str,
    from_namespace: str,
    to_group: str,
    to_kind: str,
    to_namespace: str,
    to_name: str,
) -> bool:
    """Whether a ReferenceGrant in ``to_namespace`` lets the reference through."""
    for g in grants:
        if g.namespace != to_namespace:
            continue
        if not any(
            f.group == GATEWAY_GROUP and f.kind == from_kind and f.namespace == from_namespace
            for f in g.spec.from_
        ):
            continue
        if any(
            t.group == to_group and t.kind == to_kind and t.name in (None, "", to_name)
            for t in g.spec.to
        ):
            return True
    return False


def allocate(keys: list[str], cidr: str, taken: set[str]) -> dict[str, str]:
    """One address per key from ``cidr``: a hash of the key, then the next free address.

    ``keys`` come oldest first, so an older Gateway keeps its address when a newer one would
    have collided with it.
    """
    net = ipaddress.ip_network(cidr, strict=False)
    first = 1 if net.num_addresses > 2 else 0  # skip the network address
    size = max(1, net.num_addresses - 2 * first)
    used = set(taken)
    out: dict[str, str] = {}
    for key in keys:
        start = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % size
        for step in range(size):
            ip = str(net.network_address + first + (start + step) % size)
            if ip not in used:
                used.add(ip)
                out[key] = ip
                break
    return out
