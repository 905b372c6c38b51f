"""ProxyConfig: everything the node proxy load-balances.

Translated from Services and EndpointSlices (control/translate/proxy.py). Both proxy modes,
userspace and nftables, build their service table from this alone.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mesh.config.base import ComponentConfig, Frozen

Protocol = Literal["TCP", "UDP", "SCTP"]


class ProxyEndpoint(Frozen):
    address: str
    node_name: str | None = None
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    # Service port name ("" for an unnamed port) -> the endpoint's port for it: named
    # targetPorts are resolved per endpoint, so two endpoints may differ.
    ports: dict[str, int] = Field(default_factory=dict)


class ProxyPort(Frozen):
    name: str = ""
    protocol: Protocol = "TCP"
    port: int
    node_port: int | None = None


class ProxyService(Frozen):
    namespace: str
    name: str
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    cluster_ips: tuple[str, ...] = ()
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    ports: tuple[ProxyPort, ...] = ()
    session_affinity: bool = False
    affinity_timeout: int = 10800  # seconds, sessionAffinityConfig.clientIP.timeoutSeconds
    internal_traffic_local: bool = False
    external_traffic_local: bool = False
    endpoints: tuple[ProxyEndpoint, ...] = ()


class ProxyConfig(ComponentConfig):
    node_name: str = ""
    services: tuple[ProxyService, ...] = ()
