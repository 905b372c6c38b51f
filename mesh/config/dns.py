"""DnsConfig: everything the cluster DNS server answers from.

Translated from Services, EndpointSlices and Pods (control/translate/dns.py). The DNS server
builds its lookup index from this and nothing else.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mesh.config.base import ComponentConfig, Frozen


class DnsPort(Frozen):
    name: str | None = None  # SRV records exist only for named ports
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: int


class DnsEndpoint(Frozen):
    """One published endpoint of a headless Service (already filtered for readiness, or
    publishNotReadyAddresses)."""

    addresses: tuple[str, ...]
    hostname: str | None = None  # from the EndpointSlice (Pod spec.hostname + subdomain)
    ports: tuple[DnsPort, ...] = ()


class DnsService(Frozen):
    namespace: str
    name: str
    kind: Literal["ClusterIP", "Headless", "ExternalName"]
    cluster_ips: tuple[str, ...] = ()  # ClusterIP kind; IPv4 and/or IPv6
    external_name: str | None = None  # ExternalName kind
    ports: tuple[DnsPort, ...] = ()  # the Service's ports (SRV for ClusterIP services)
    endpoints: tuple[DnsEndpoint, ...] = ()  # Headless kind


class DnsPod(Frozen):
    """A pod, for ``a-b-c-d.ns.pod.zone`` in verified mode."""

    namespace: str
    name: str
    ips: tuple[str, ...]


class DnsConfig(ComponentConfig):
    zone: str = "cluster.local"
    ttl: int = Field(default=5, ge=0, le=2**31 - 1)  # RFC 2181 section 8
    pod_mode: Literal["disabled", "insecure", "verified"] = "insecure"
    services: tuple[DnsService, ...] = ()
    pods: tuple[DnsPod, ...] = ()  # filled in verified pod mode only
    # Namespaces that exist: ``<ns>.svc.<zone>`` and ``<ns>.pod.<zone>`` answer NODATA rather
    # than NXDOMAIN for them, and insecure pod names resolve only inside them. The namespaces
    # of ``services`` and ``pods`` always count as existing.
    namespaces: tuple[str, ...] = ()
    # (pod IP, namespace) of every pod with an address: with autopath the server finds the
    # asking pod's search path (<ns>.svc.<zone>, svc.<zone>, <zone>) from its source address.
    pod_namespaces: tuple[tuple[str, str], ...] = ()
