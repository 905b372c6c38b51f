"""Gateway listeners: which can be served and why not (the specification's reasons), the
route-model listeners they become (one per address and port), and the Gateway's conditions.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mesh.config.gateway import CertificateRef, GatewayListener, ListenerFailure
from mesh.control.translate.conditions import (
    ACCEPTED,
    CONFLICTED,
    PROGRAMMED,
    RESOLVED_REFS,
    condition,
    granted,
)
from mesh.objects import (
    GATEWAY_GROUP,
    Condition,
    Gateway,
    GatewayStatus,
    GatewayStatusAddress,
    Listener,
    ListenerStatus,
    ReferenceGrant,
    RouteGroupKind,
    Secret,
)

if TYPE_CHECKING:
    from mesh.control.store import Snapshot

HTTPROUTE_KIND = RouteGroupKind(group=GATEWAY_GROUP, kind="HTTPRoute")


@dataclass
class GatewayListenerState:
    gateway: Gateway
    spec: Listener
    config_name: str
    conditions: list[Condition]
    kinds: tuple[RouteGroupKind, ...]
    attached: int = 0

    @property
    def valid(self) -> bool:
        return all((c.status == "True") != (c.type == CONFLICTED) for c in self.conditions)


def pinned_address(gw: Gateway) -> str | Exception | None:
    for a in gw.spec.addresses:
        if a.type != "IPAddress":
            return ValueError(f"address type {a.type} is not supported (IPAddress)")
        try:
            return str(ipaddress.ip_address(a.value))
        except ValueError:
            return ValueError(f"{a.value!r} is not an IP address")
    return None


def evaluate_listeners(
    snapshot: Snapshot, gw: Gateway, grants: list[ReferenceGrant], privileged: bool
) -> list[GatewayListenerState]:
    gen = gw.metadata.generation
    by_port: dict[int, list[Listener]] = {}
    for spec in gw.spec.listeners:
        by_port.setdefault(spec.port, []).append(spec)
    out = []
    for spec in gw.spec.listeners:
        conds: list[Condition] = []
        accepted = (True, "Accepted", "")
        if spec.protocol not in ("HTTP", "HTTPS"):
            accepted = (False, "UnsupportedProtocol", f"protocol {spec.protocol} is not served")
        elif spec.port < 1024 and not privileged:
            accepted = (False, "PortUnavailable", f"port {spec.port} needs privileges to bind")
        conds.append(condition(ACCEPTED, accepted[0], accepted[1], accepted[2], gen))
        peers = [p for p in by_port[spec.port] if p.name != spec.name]
        conflict = ""
        if any(p.protocol != spec.protocol for p in peers):
            conflict = "ProtocolConflict"
        elif any((p.hostname or "") == (spec.hostname or "") for p in peers):
            conflict = "HostnameConflict"
        # Conflicted is the one condition where True is the bad news.
        conds.append(condition(CONFLICTED, bool(conflict), conflict or "NoConflicts", "", gen))
        kinds = tuple(
            k
            for k in spec.allowed_routes.kinds
            if (k.group, k.kind) == (GATEWAY_GROUP, "HTTPRoute")
        )
        refs = (True, "ResolvedRefs", "")
        if spec.allowed_routes.kinds and len(kinds) != len(spec.allowed_routes.kinds):
            refs = (False, "InvalidRouteKinds", "only HTTPRoute is supported")
        if not spec.allowed_routes.kinds:
            kinds = (HTTPROUTE_KIND,)
        if spec.protocol == "HTTPS" and refs[0]:
            refs = _certificates_ok(snapshot, gw, spec, grants)
        conds.append(condition(RESOLVED_REFS, refs[0], refs[1], refs[2], gen))
        out.append(
            GatewayListenerState(
                gw, spec, f"gateway/{gw.namespace}/{gw.name}/{spec.port}", conds, kinds
            )
        )
    for lis in out:
        ok = lis.valid
        lis.conditions.append(condition(PROGRAMMED, ok, "Programmed" if ok else "Invalid", "", gen))
    return out


def _certificates_ok(
    snapshot: Snapshot, gw: Gateway, spec: Listener, grants: list[ReferenceGrant]
) -> tuple[bool, str, str]:
    tls = spec.tls
    if tls is None or tls.mode != "Terminate" or not tls.certificate_refs:
        return (False, "InvalidCertificateRef", "HTTPS needs tls.mode Terminate and a certificate")
    for ref in tls.certificate_refs:
        ns = ref.namespace or gw.namespace
        if ref.group != "" or ref.kind != "Secret":
            return (False, "InvalidCertificateRef", f"{ref.kind} is not a Secret")
        if ns != gw.namespace and not granted(
            grants, from_kind="Gateway", from_namespace=gw.namespace, to_group="",
            to_kind="Secret", to_namespace=ns, to_name=ref.name,
        ):  # fmt: skip
            return (False, "RefNotPermitted", f"no ReferenceGrant in {ns} allows Secret {ref.name}")
        secret = snapshot.get(Secret.KIND, ns, ref.name)
        if not isinstance(secret, Secret):
            return (False, "InvalidCertificateRef", f"Secret {ns}/{ref.name} not found")
        if secret.type != "kubernetes.io/tls":
            return (
                False,
                "InvalidCertificateRef",
                f"Secret {ns}/{ref.name} is not a TLS Secret (its type is {secret.type})",
            )
        try:
            problem = _pair_problem(secret.value("tls.crt") or b"", secret.value("tls.key") or b"")
        except ValueError:
            problem = "its data is not base64"
        if problem is not None:  # the gateway would serve its default certificate instead
            return (False, "InvalidCertificateRef", f"Secret {ns}/{ref.name}: {problem}")
    return (True, "ResolvedRefs", "")


@functools.lru_cache(maxsize=256)
def _pair_problem(cert_pem: bytes, key_pem: bytes) -> str | None:
    """Why a Secret's certificate and key cannot be served (Gateway API: a malformed
    Secret is an InvalidCertificateRef); remembered by content, as every translation of
    the Gateway asks again. cryptography is imported only once a listener needs it."""
    from mesh.tls.certs import pair_problem

    return pair_problem(cert_pem, key_pem)


def config_listeners(
    gw: Gateway, address: str, lis: list[GatewayListenerState]
) -> list[GatewayListener]:
    """The served listeners as the route model has them: one per port (they share a socket),
    carrying the certificates of every listener on it."""
    seen: dict[str, GatewayListener] = {}
    for item in lis:
        if not item.valid:
            continue
        spec = item.spec
        certs: tuple[CertificateRef, ...] = ()
        if spec.tls is not None and spec.protocol == "HTTPS":
            certs = tuple(
                CertificateRef(
                    secret=f"{r.namespace or gw.namespace}/{r.name}",
                    hosts=(spec.hostname,) if spec.hostname else (),
                )
                for r in spec.tls.certificate_refs
            )
        prev = seen.get(item.config_name)
        if prev is not None:
            seen[item.config_name] = prev.model_copy(
                update={"certificates": prev.certificates + certs}
            )
            continue
        seen[item.config_name] = GatewayListener(
            name=item.config_name,
            protocol="HTTPS" if spec.protocol == "HTTPS" else "HTTP",
            address=address,
            port=spec.port,
            wildcard="any-labels",
            certificates=certs,
        )
    return list(seen.values())


def gateway_conditions(
    gw: Gateway,
    address: str | Exception | None,
    lis: list[GatewayListenerState],
    runtime: Mapping[str, ListenerFailure] | None = None,
) -> GatewayStatus:
    """``runtime``: the listeners (by route-model name) the gateway could not open, as it
    reported them: Programmed False with reason Pending (not yet ready to accept traffic, the
    specification's reason) and the gateway's sentence; the Gateway's Programmed turns False
    too when none of its listeners is served (AddressNotUsable when its address is the cause)."""
    gen = gw.metadata.generation
    valid = [x for x in lis if x.valid]
    reported = runtime or {}
    failures = {x.config_name: reported[x.config_name] for x in valid if x.config_name in reported}
    listener_conditions = {
        x.spec.name: tuple(
            condition(PROGRAMMED, False, "Pending", failures[x.config_name].message, gen)
            if c.type == PROGRAMMED and x.config_name in failures
            else c
            for c in x.conditions
        )
        for x in lis
    }
    if isinstance(address, Exception):
        conds = (
            condition(ACCEPTED, False, "UnsupportedAddress", str(address), gen),
            condition(PROGRAMMED, False, "AddressNotUsable", str(address), gen),
        )
    elif address is None:
        conds = (
            condition(ACCEPTED, True, "Accepted", "", gen),
            condition(PROGRAMMED, False, "AddressNotAssigned", "the gateway range is full", gen),
        )
    elif not valid:
        conds = (
            condition(ACCEPTED, False, "ListenersNotValid", "no listener is valid", gen),
            condition(PROGRAMMED, False, "Invalid", "no listener is valid", gen),
        )
    else:
        # Some listeners invalid: still Accepted, with the reason saying so (as implementations
        # passing the conformance suite report it).
        bad = len(lis) - len(valid)
        reason, message = (
            ("Accepted", "")
            if not bad
            else ("ListenersNotValid", f"{bad} of {len(lis)} listeners are not valid")
        )
        programmed = condition(PROGRAMMED, True, "Programmed", "", gen)
        if all(x.config_name in failures for x in valid):
            why = "; ".join(sorted({f.message for f in failures.values()}))
            unusable = any(f.address_unusable for f in failures.values())
            programmed = condition(
                PROGRAMMED, False, "AddressNotUsable" if unusable else "Pending", why, gen
            )
        conds = (condition(ACCEPTED, True, reason, message, gen), programmed)
    counts = Counter({x.spec.name: x.attached for x in lis})
    return GatewayStatus(
        addresses=(GatewayStatusAddress(value=address),) if isinstance(address, str) else (),
        conditions=conds,
        listeners=tuple(
            ListenerStatus(
                name=x.spec.name,
                supported_kinds=x.kinds,
                attached_routes=counts[x.spec.name],
                conditions=listener_conditions[x.spec.name],
            )
            for x in lis
        ),
    )
