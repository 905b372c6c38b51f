"""What the control plane gives the gateway component and writes back for it.

- :func:`translate_served`: the GatewayConfig of mesh.control.translate.gateway plus the PEM
  of every TLS Secret its listeners name (the gateway never reads cluster objects).
- :func:`status_updates`: the objects whose status differs from what the gateway's status
  computation says (Ingress ``status.loadBalancer``; GatewayClass, Gateway, HTTPRoute and
  BackendTLSPolicy conditions), ready for the store. An Ingress no longer served loses the address the
  gateway gave it. Applying them changes nothing else, so the next round finds nothing to do.

Both pure functions of a snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mesh.config.gateway import ListenerFailure, ServedGatewayConfig, TlsSecret
from mesh.control.translate.conditions import ACCEPTED, PROGRAMMED
from mesh.control.translate.gateway import gateway_status, translate_gateway
from mesh.control.translate.gatewayapi import CONTROLLER
from mesh.objects import (
    BackendTLSPolicy,
    Condition,
    Gateway,
    GatewayClass,
    GatewayClassStatus,
    GatewayStatus,
    HTTPRoute,
    Ingress,
    IngressStatus,
    KubeObject,
    PolicyStatus,
    RouteStatus,
    Secret,
)

if TYPE_CHECKING:
    from mesh.control.store import Snapshot

TLS_TYPE = "kubernetes.io/tls"

# The kinds the gateway's config depends on (the plane skips the translation when a change
# touched none of them: a Pod going Ready matters through its EndpointSlice only).
GATEWAY_READS = frozenset(
    {
        "Ingress",
        "IngressClass",
        "Gateway",
        "GatewayClass",
        "HTTPRoute",
        "ReferenceGrant",
        "BackendTLSPolicy",
        "ConfigMap",
        "Service",
        "EndpointSlice",
        "Endpoints",
        "Secret",
        "Namespace",
    }
)
# Status says what is served and why not; endpoints coming and going change none of it.
STATUS_READS = GATEWAY_READS - {"EndpointSlice", "Endpoints"}


class ServedTranslator:
    """The registered translator: :func:`translate_served` with the plane's settings."""

    reads = GATEWAY_READS

    def __init__(self, *, gateway_cidr: str, privileged: bool = False) -> None:
        self.gateway_cidr = gateway_cidr
        self.privileged = privileged

    def __call__(self, snapshot: Snapshot) -> ServedGatewayConfig:
        return translate_served(
            snapshot, gateway_cidr=self.gateway_cidr, privileged=self.privileged
        )


class StatusWriter:
    """The registered status writer: :func:`status_updates` with the plane's settings."""

    reads = STATUS_READS

    def __init__(
        self, *, ingress_addresses: tuple[str, ...], gateway_cidr: str, privileged: bool = False
    ) -> None:
        self.ingress_addresses = ingress_addresses
        self.gateway_cidr = gateway_cidr
        self.privileged = privileged
        # What the running gateway reported: listeners it could not open (route-model name
        # -> failure). Replaced whole by ``report``; the plane writes status again then.
        self.runtime: dict[str, ListenerFailure] = {}
        # Whether a gateway has taken the config (it reports once it applied one): until
        # then nothing is Programmed, whatever the config says.
        self.live = False

    def report(self, failures: Mapping[str, ListenerFailure], *, live: bool = True) -> bool:
        """Take the gateway's latest report (``live``: some gateway reports at all); True
        when it changed (status is to be rewritten)."""
        new = dict(failures)
        if new == self.runtime and live == self.live:
            return False
        self.runtime = new
        self.live = live
        return True

    def __call__(self, snapshot: Snapshot) -> list[KubeObject]:
        return status_updates(
            snapshot,
            ingress_addresses=self.ingress_addresses,
            gateway_cidr=self.gateway_cidr,
            privileged=self.privileged,
            runtime=self.runtime,
            gateway_live=self.live,
        )


def translate_served(
    snapshot: Snapshot, *, gateway_cidr: str, privileged: bool = False
) -> ServedGatewayConfig:
    config = translate_gateway(snapshot, gateway_cidr=gateway_cidr, privileged=privileged)
    names = sorted({ref.secret for lis in config.listeners for ref in lis.certificates})
    secrets = []
    for name in names:
        ns, _, short = name.partition("/")
        secret = snapshot.get(Secret.KIND, ns, short)
        if not isinstance(secret, Secret) or secret.type != TLS_TYPE:
            continue  # the listener's status and the TLS layer say why
        cert, key = secret.value("tls.crt"), secret.value("tls.key")
        if cert and key:
            secrets.append(
                TlsSecret(name=name, cert_pem=cert.decode("latin-1"), key_pem=key.decode("latin-1"))
            )
    return ServedGatewayConfig(**dict(config), secrets=tuple(secrets))


def status_updates(
    snapshot: Snapshot,
    *,
    ingress_addresses: tuple[str, ...],
    gateway_cidr: str,
    privileged: bool = False,
    runtime: Mapping[str, ListenerFailure] | None = None,
    gateway_live: bool = True,
) -> list[KubeObject]:
    """``gateway_live`` False: no gateway has taken the config yet, so what would be
    Programmed is Programmed False, Pending (:func:`not_yet_programmed`)."""
    found = gateway_status(
        snapshot,
        ingress_addresses=ingress_addresses,
        gateway_cidr=gateway_cidr,
        privileged=privileged,
        runtime=runtime,
    )
    if not gateway_live:
        found.gateways = {k: not_yet_programmed(v) for k, v in found.gateways.items()}
    out: list[KubeObject] = []

    def update(kind: str, ns: str, name: str, status: Any) -> None:
        obj = snapshot.get(kind, ns, name)
        if obj is not None and getattr(obj, "status", None) != status:
            out.append(obj.model_copy(update={"status": status}))

    for obj in snapshot.list(Ingress.KIND):
        key = (obj.metadata.namespace, obj.metadata.name)
        served = found.ingresses.get(key)
        if served is not None:
            update(Ingress.KIND, *key, served)
        elif (
            isinstance(obj, Ingress)
            and obj.status.load_balancer.ingress
            and all(
                (lb.ip or lb.hostname) in ingress_addresses
                for lb in obj.status.load_balancer.ingress
            )
        ):  # served before, not any more: the address it had was ours
            update(Ingress.KIND, *key, IngressStatus())
    for name, cls_status in found.classes.items():
        update(GatewayClass.KIND, "", name, cls_status)
    for (ns, name), gw_status in found.gateways.items():
        update(Gateway.KIND, ns, name, gw_status)
    for (ns, name), route_status in found.routes.items():
        update(HTTPRoute.KIND, ns, name, route_status)
    for (ns, name), policy_status in found.backend_tls.items():
        update(BackendTLSPolicy.KIND, ns, name, policy_status)
    return out


WAITING_FOR_GATEWAY = "waiting for a gateway to take the config"


def not_yet_programmed(status: GatewayStatus) -> GatewayStatus:
    """``status`` as it stands while no gateway has taken the config: Accepted says the
    config is valid, Programmed that a data plane has it (as Istio and Envoy Gateway mean
    them), so each Programmed True (the Gateway's and its listeners') becomes False with
    the specification's reason Pending."""

    def hold(conds: tuple[Condition, ...]) -> tuple[Condition, ...]:
        return tuple(
            c.model_copy(
                update={"status": "False", "reason": "Pending", "message": WAITING_FOR_GATEWAY}
            )
            if c.type == PROGRAMMED and c.status == "True"
            else c
            for c in conds
        )

    listeners = tuple(
        lis.model_copy(update={"conditions": hold(lis.conditions)}) for lis in status.listeners
    )
    return status.model_copy(update={"conditions": hold(status.conditions), "listeners": listeners})


# What the Gateway API's CRDs default a status to, and so what a Gateway or GatewayClass
# shows while its controller is not running: nothing has accepted or programmed it.
_NO_CONTROLLER_TIME = "1970-01-01T00:00:00Z"


def _waiting(kind: str) -> Condition:
    return Condition(
        type=kind,
        status="Unknown",
        reason="Pending",
        message="Waiting for controller",
        last_transition_time=_NO_CONTROLLER_TIME,
    )


class AbsentGatewayStatus:
    """The status writer where no gateway runs (``mesh up --no-gateway``): the objects the
    gateway would serve get what they have when their controller is absent, never a claim
    that something serves them. Gateways and GatewayClasses: Accepted and Programmed
    Unknown, "Waiting for controller" (the CRDs' default status); Ingresses: no address;
    HTTPRoutes and BackendTLSPolicies: no entry of this controller."""

    reads = STATUS_READS

    def __init__(
        self, *, ingress_addresses: tuple[str, ...], gateway_cidr: str, privileged: bool = False
    ) -> None:
        self.ingress_addresses = ingress_addresses
        self.gateway_cidr = gateway_cidr
        self.privileged = privileged

    def __call__(self, snapshot: Snapshot) -> list[KubeObject]:
        # Which objects are this controller's is what the gateway's status computation says.
        found = gateway_status(
            snapshot,
            ingress_addresses=self.ingress_addresses,
            gateway_cidr=self.gateway_cidr,
            privileged=self.privileged,
        )
        out: list[KubeObject] = []

        def update(kind: str, ns: str, name: str, status: Any) -> None:
            obj = snapshot.get(kind, ns, name)
            if obj is not None and getattr(obj, "status", None) != status:
                out.append(obj.model_copy(update={"status": status}))

        for ns, name in found.ingresses:
            update(Ingress.KIND, ns, name, IngressStatus())
        for name in found.classes:
            update(
                GatewayClass.KIND, "", name, GatewayClassStatus(conditions=(_waiting(ACCEPTED),))
            )
        waiting = GatewayStatus(conditions=(_waiting(ACCEPTED), _waiting(PROGRAMMED)))
        for ns, name in found.gateways:
            update(Gateway.KIND, ns, name, waiting)
        for ns, name in found.routes:
            route = snapshot.get(HTTPRoute.KIND, ns, name)
            if isinstance(route, HTTPRoute):
                others = tuple(p for p in route.status.parents if p.controller_name != CONTROLLER)
                update(HTTPRoute.KIND, ns, name, RouteStatus(parents=others))
        for ns, name in found.backend_tls:
            policy = snapshot.get(BackendTLSPolicy.KIND, ns, name)
            if isinstance(policy, BackendTLSPolicy):
                kept = tuple(a for a in policy.status.ancestors if a.controller_name != CONTROLLER)
                update(BackendTLSPolicy.KIND, ns, name, PolicyStatus(ancestors=kept))
        return out
