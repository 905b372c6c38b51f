"""ProxyConfig: everything the node proxy load-balances.

Translated from Services and EndpointSlices (control/translate/proxy.py). Both proxy modes,
userspace and nftables, build their service table (proxy/table.py) from this alone.

A Service appears here only if the proxy has something to do for it: it has an allocated
ClusterIP, is not headless and not ExternalName. Its endpoints are every endpoint of its
EndpointSlices, with conditions as published; which of them are eligible (ready, or
serving-and-terminating as a fallback, node-local for a Local traffic policy) is decided by
the service table, so both modes apply the same rules.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mesh.config.base import ComponentConfig, Frozen
from mesh.objects import IP, PortNumber, Protocol


class ProxyEndpoint(Frozen):
    address: IP
    node_name: str | None = None
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    # Service port name ("" for an unnamed port) -> the endpoint's port for it: named
    # targetPorts are resolved per endpoint, so two endpoints may differ. An endpoint with no
    # entry for a Service port does not serve that port.
    ports: dict[str, PortNumber] = Field(default_factory=dict)


class ProxyPort(Frozen):
    name: str = ""
    protocol: Protocol = "TCP"
    port: PortNumber
    node_port: PortNumber | None = None


class ProxyService(Frozen):
    namespace: str
    name: str
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    cluster_ips: tuple[IP, ...] = ()
    external_ips: tuple[IP, ...] = ()
    load_balancer_ips: tuple[IP, ...] = ()  # status.loadBalancer.ingress[].ip
    ports: tuple[ProxyPort, ...] = ()
    session_affinity: bool = False  # sessionAffinity: ClientIP
    affinity_timeout: Annotated[int, Field(ge=1, le=86400)] = 10800  # seconds
    internal_traffic_local: bool = False  # internalTrafficPolicy: Local (ClusterIP traffic)
    external_traffic_local: bool = (
        False  # externalTrafficPolicy: Local (NodePort, LB, external IPs)
    )
    endpoints: tuple[ProxyEndpoint, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


class ProxyConfig(ComponentConfig):
    node_name: str = ""  # endpoints with this nodeName are local (traffic policy Local)
    services: tuple[ProxyService, ...] = ()
