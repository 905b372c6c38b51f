"""Store snapshot -> GatewayConfig (Ingress and Gateway API together), and the status the
gateway writes back to the objects it serves.

``translate_gateway`` is the translator the control plane registers; ``gateway_status`` gives
the status of each served object from the same snapshot (pure, for a status writer to
apply): Ingress ``status.loadBalancer`` with the gateway's address, and the GatewayClass,
Gateway, HTTPRoute and BackendTLSPolicy statuses with the Gateway API's conditions and reasons.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mesh.config.gateway import GatewayConfig, GatewayListener, ListenerFailure, Problem
from mesh.control.translate.gatewayapi import translate_gateway_api
from mesh.control.translate.ingress import translate_ingresses
from mesh.objects import (
    GatewayClassStatus,
    GatewayStatus,
    IngressStatus,
    LoadBalancerIngress,
    LoadBalancerStatus,
    PolicyStatus,
    RouteStatus,
)

if TYPE_CHECKING:
    from mesh.control.store import Snapshot

DEFAULT_GATEWAY_CIDR = "127.11.0.0/16"


def translate_gateway(
    snapshot: Snapshot,
    *,
    gateway_cidr: str = DEFAULT_GATEWAY_CIDR,
    privileged: bool = False,
) -> GatewayConfig:
    ing = translate_ingresses(snapshot)
    api = translate_gateway_api(snapshot, gateway_cidr=gateway_cidr, privileged=privileged)
    listeners = (
        GatewayListener(name="ingress-http", protocol="HTTP", wildcard="one-label"),
        GatewayListener(
            name="ingress-https",
            protocol="HTTPS",
            wildcard="one-label",
            certificates=tuple(ing.certificates),
        ),
        *api.listeners,
    )
    backends = {**ing.backends, **api.backends}
    return GatewayConfig(
        version=snapshot.revision,
        listeners=listeners,
        routes=(*ing.routes, *api.routes),
        backends=tuple(backends[k] for k in sorted(backends)),
        problems=tuple(
            Problem(kind="Ingress", object=who, message=msg) for who, msg in ing.problems
        ),
    )


@dataclass
class GatewayStatuses:
    ingresses: dict[tuple[str, str], IngressStatus] = field(default_factory=dict)
    classes: dict[str, GatewayClassStatus] = field(default_factory=dict)
    gateways: dict[tuple[str, str], GatewayStatus] = field(default_factory=dict)
    routes: dict[tuple[str, str], RouteStatus] = field(default_factory=dict)
    backend_tls: dict[tuple[str, str], PolicyStatus] = field(default_factory=dict)


def gateway_status(
    snapshot: Snapshot,
    *,
    ingress_addresses: tuple[str, ...],
    gateway_cidr: str = DEFAULT_GATEWAY_CIDR,
    privileged: bool = False,
    runtime: Mapping[str, ListenerFailure] | None = None,
) -> GatewayStatuses:
    """The status of every object the gateway serves; ``ingress_addresses``: where the
    Ingress listeners are reachable (IPs, or host names); ``runtime``: the listeners the
    gateway reported it could not open."""
    ing = translate_ingresses(snapshot)
    api = translate_gateway_api(
        snapshot, gateway_cidr=gateway_cidr, privileged=privileged, runtime=runtime
    )
    lb = LoadBalancerStatus(ingress=tuple(_lb(a) for a in ingress_addresses))
    return GatewayStatuses(
        ingresses={key: IngressStatus(load_balancer=lb) for key in ing.served},
        classes=api.classes,
        gateways=api.gateways,
        routes=api.routes_status,
        backend_tls=api.policies.statuses() if api.policies is not None else {},
    )


def _lb(address: str) -> LoadBalancerIngress:
    import ipaddress

    try:
        return LoadBalancerIngress(ip=str(ipaddress.ip_address(address)))
    except ValueError:
        return LoadBalancerIngress(hostname=address)
