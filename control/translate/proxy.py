"""Store snapshot -> ProxyConfig: what the node proxy load-balances.

The rules (as kube-proxy reads the API):

- A Service is proxied when it has an allocated ClusterIP and is neither headless nor
  ExternalName. NodePorts count for types NodePort and LoadBalancer; load-balancer IPs come
  from ``status.loadBalancer.ingress[].ip`` of a LoadBalancer Service; externalIPs from spec.
- ``internalTrafficPolicy: Local`` restricts ClusterIP traffic, ``externalTrafficPolicy:
  Local`` restricts NodePort, external-IP and load-balancer traffic, to this node's endpoints.
  Which endpoints are eligible is the service table's decision (proxy/table.py); this layer
  passes every endpoint on with its conditions.
- Endpoints come from the EndpointSlices labelled ``kubernetes.io/service-name`` in the
  Service's namespace; legacy Endpoints were mirrored into slices by the endpoints controller
  and are not read here. Merging slices and matching ports by name is the endpoint policy's
  (mesh/endpoint_policy.py); this layer passes every endpoint on with its conditions.
- With ``publishNotReadyAddresses`` every endpoint counts as ready.

Incremental: a :class:`ProxyTranslator` keeps each Service's output with the objects it was
built from, and rebuilds a Service only when its Service object or one of its slices is not
the very object it saw last time (stored objects are immutable, so identity is change).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from mesh import endpoint_policy
from mesh.config.proxy import ProxyConfig, ProxyEndpoint, ProxyPort, ProxyService
from mesh.control.store import Snapshot, WatchEvent
from mesh.control.translate.memo import Inputs, ServiceMemo, touched_services
from mesh.objects import EndpointSlice, KubeObject, Service


class ProxyTranslator:
    """Snapshot -> ProxyConfig, rebuilding only the Services whose inputs changed;
    :meth:`update` visits only the Services that store events name."""

    reads = frozenset({"Service", "EndpointSlice"})

    def __init__(self, *, node_name: str = "") -> None:
        self.node_name = node_name
        self._memo: ServiceMemo[ProxyService] = ServiceMemo(_inputs, _build)

    @property
    def built(self) -> int:
        """Services built (not taken from the memo): tests pin the work."""
        return self._memo.built

    def __call__(self, snapshot: Snapshot) -> ProxyConfig:
        return self._config(snapshot, self._memo.full(snapshot))

    def update(self, snapshot: Snapshot, events: Sequence[WatchEvent]) -> ProxyConfig:
        if not self._memo.warm:
            return self(snapshot)
        return self._config(snapshot, self._memo.update(snapshot, touched_services(events)))

    def _config(self, snapshot: Snapshot, services: tuple[ProxyService, ...]) -> ProxyConfig:
        return ProxyConfig(version=snapshot.revision, node_name=self.node_name, services=services)


def translate_proxy(snapshot: Snapshot, *, node_name: str = "") -> ProxyConfig:
    return ProxyTranslator(node_name=node_name)(snapshot)


def _inputs(svc: Service, snapshot: Snapshot) -> Inputs | None:
    if not _proxied(svc):
        return None
    slices = snapshot.by_index("service-slices", (svc.namespace, svc.name))
    return (svc, *sorted((s for s in slices if isinstance(s, EndpointSlice)), key=_name))


def _name(obj: KubeObject) -> str:
    return obj.name


def _build(svc: Service, inputs: Inputs, snapshot: Snapshot) -> ProxyService:
    slices = [s for s in inputs[1:] if isinstance(s, EndpointSlice)]
    return _service(svc, _endpoints(svc, slices))


def _proxied(svc: Service) -> bool:
    spec = svc.spec
    return spec.type != "ExternalName" and bool(spec.cluster_ip) and not spec.headless


def _endpoints(svc: Service, slices: list[EndpointSlice]) -> tuple[ProxyEndpoint, ...]:
    found = endpoint_policy.from_slices(
        [(p.name or "", p.protocol) for p in svc.spec.ports],
        slices,
        publish_not_ready=svc.spec.publish_not_ready_addresses,
    )
    return tuple(
        ProxyEndpoint(
            address=ep.address,
            node_name=ep.node_name,
            ready=ep.ready,
            serving=ep.serving,
            terminating=ep.terminating,
            ports=dict(ep.ports),
        )
        for ep in found
    )


def _service(svc: Service, endpoints: tuple[ProxyEndpoint, ...]) -> ProxyService:
    spec = svc.spec
    node_ports = spec.type in ("NodePort", "LoadBalancer")
    lb_ips: tuple[str, ...] = ()
    if spec.type == "LoadBalancer":
        lb_ips = tuple(dict.fromkeys(i.ip for i in svc.status.load_balancer.ingress if i.ip))
    affinity = spec.session_affinity == "ClientIP"
    timeout = 10800
    if affinity and spec.session_affinity_config is not None:
        timeout = spec.session_affinity_config.client_ip.timeout_seconds
    kind: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    if spec.type in ("NodePort", "LoadBalancer"):
        kind = "NodePort" if spec.type == "NodePort" else "LoadBalancer"
    return ProxyService(
        namespace=svc.namespace,
        name=svc.name,
        type=kind,
        cluster_ips=spec.cluster_ips,
        external_ips=tuple(dict.fromkeys(spec.external_ips)),
        load_balancer_ips=lb_ips,
        ports=tuple(
            ProxyPort(
                name=p.name or "",
                protocol=p.protocol,
                port=p.port,
                node_port=p.node_port if node_ports else None,
            )
            for p in spec.ports
        ),
        session_affinity=affinity,
        affinity_timeout=timeout,
        internal_traffic_local=spec.internal_traffic_policy == "Local",
        external_traffic_local=spec.external_traffic_policy == "Local",
        endpoints=endpoints,
    )
