"""Translator tables: manifests in a store -> the DnsConfig the DNS server answers from."""

from __future__ import annotations

import textwrap

import pytest

from mesh.config.dns import DnsConfig, DnsEndpoint, DnsPod, DnsPort, DnsService
from mesh.control.store import Store
from mesh.control.translate.dns import PodMode, translate_dns
from mesh.manifests import load_text
from tests.control.plane_fixtures import mirror_legacy_endpoints


def translate(
    manifests: str, *, zone: str = "cluster.local", pod_mode: PodMode = "insecure"
) -> DnsConfig:
    result = load_text(textwrap.dedent(manifests))
    assert not result.errors, result.errors
    store = Store()
    for obj in result.objects:
        store.apply(obj)
    mirror_legacy_endpoints(store)
    return translate_dns(store.snapshot(), zone=zone, pod_mode=pod_mode)


def service(config: DnsConfig, name: str) -> DnsService:
    (svc,) = [s for s in config.services if s.name == name]
    return svc


HTTP = (DnsPort(name="http", protocol="TCP", port=80),)


def _slice(service: str, endpoints: str, ports: str = "[{name: http, port: 8080}]") -> str:
    return textwrap.indent(
        textwrap.dedent(
            f"""
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata:
              name: {service}-abc
              namespace: shop
              labels: {{kubernetes.io/service-name: {service}}}
            addressType: IPv4
            ports: {ports}
            endpoints: {endpoints}
            """
        ),
        " " * 8,
    )


SERVICE_TABLE = [
    (
        "clusterip",
        """
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: shop}
        spec: {clusterIP: 127.10.0.5, ports: [{name: http, port: 80}]}
        """,
        DnsService(
            namespace="shop", name="web", kind="ClusterIP", cluster_ips=("127.10.0.5",), ports=HTTP
        ),
    ),
    (
        "dual-stack",
        """
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: shop}
        spec: {clusterIPs: [127.10.0.5, "fd00::5"], ports: [{name: http, port: 80}]}
        """,
        DnsService(
            namespace="shop",
            name="web",
            kind="ClusterIP",
            cluster_ips=("127.10.0.5", "fd00::5"),
            ports=HTTP,
        ),
    ),
    (
        "nodeport-has-clusterip",
        """
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: shop}
        spec: {type: NodePort, clusterIP: 127.10.0.5, ports: [{name: http, port: 80, nodePort: 30080}]}
        """,
        DnsService(
            namespace="shop", name="web", kind="ClusterIP", cluster_ips=("127.10.0.5",), ports=HTTP
        ),
    ),
    (
        "loadbalancer-has-clusterip",
        """
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: shop}
        spec: {type: LoadBalancer, clusterIP: 127.10.0.5, ports: [{name: http, port: 80}]}
        """,
        DnsService(
            namespace="shop", name="web", kind="ClusterIP", cluster_ips=("127.10.0.5",), ports=HTTP
        ),
    ),
    (
        "clusterip-not-allocated",
        """
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: shop}
        spec: {ports: [{name: http, port: 80}]}
        """,
        DnsService(namespace="shop", name="web", kind="ClusterIP", cluster_ips=(), ports=HTTP),
    ),
    (
        "unnamed-udp-port",
        """
        apiVersion: v1
        kind: Service
        metadata: {name: dns, namespace: shop}
        spec: {clusterIP: 127.10.0.53, ports: [{port: 53, protocol: UDP}]}
        """,
        DnsService(
            namespace="shop",
            name="dns",
            kind="ClusterIP",
            cluster_ips=("127.10.0.53",),
            ports=(DnsPort(name=None, protocol="UDP", port=53),),
        ),
    ),
    (
        "externalname",
        """
        apiVersion: v1
        kind: Service
        metadata: {name: ext, namespace: shop}
        spec: {type: ExternalName, externalName: Example.COM.}
        """,
        DnsService(namespace="shop", name="ext", kind="ExternalName", external_name="example.com"),
    ),
    (
        "headless-ready-only",
        """
        apiVersion: v1
        kind: Service
        metadata: {name: db, namespace: shop}
        spec: {clusterIP: None, ports: [{name: http, port: 8080}]}
        """
        + _slice(
            "db",
            "[{addresses: [10.1.0.1], hostname: db-0},"
            " {addresses: [10.1.0.2], conditions: {ready: false}},"
            " {addresses: [10.1.0.3], conditions: {ready: true}}]",
        ),
        DnsService(
            namespace="shop",
            name="db",
            kind="Headless",
            ports=(DnsPort(name="http", port=8080),),
            endpoints=(
                DnsEndpoint(
                    addresses=("10.1.0.1",),
                    hostname="db-0",
                    ports=(DnsPort(name="http", port=8080),),
                ),
                DnsEndpoint(addresses=("10.1.0.3",), ports=(DnsPort(name="http", port=8080),)),
            ),
        ),
    ),
    (
        "headless-publish-not-ready",
        """
        apiVersion: v1
        kind: Service
        metadata: {name: db, namespace: shop}
        spec: {clusterIP: None, publishNotReadyAddresses: true, ports: [{name: http, port: 8080}]}
        """
        + _slice("db", "[{addresses: [10.1.0.2], conditions: {ready: false}}]"),
        DnsService(
            namespace="shop",
            name="db",
            kind="Headless",
            ports=(DnsPort(name="http", port=8080),),
            endpoints=(
                DnsEndpoint(addresses=("10.1.0.2",), ports=(DnsPort(name="http", port=8080),)),
            ),
        ),
    ),
    (
        "headless-slice-of-other-service-ignored",
        """
        apiVersion: v1
        kind: Service
        metadata: {name: db, namespace: shop}
        spec: {clusterIP: None}
        """
        + _slice("other", "[{addresses: [10.1.0.9]}]"),
        DnsService(namespace="shop", name="db", kind="Headless"),
    ),
    (
        "statefulset-hostname-from-pod",
        """
        apiVersion: v1
        kind: Service
        metadata: {name: pets, namespace: shop}
        spec: {clusterIP: None, ports: [{name: http, port: 8080}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: pets-0, namespace: shop}
        spec: {hostname: pets-0, subdomain: pets}
        status: {phase: Running, podIP: 10.1.0.7}
        """
        + _slice("pets", "[{addresses: [10.1.0.7], targetRef: {kind: Pod, name: pets-0}}]"),
        DnsService(
            namespace="shop",
            name="pets",
            kind="Headless",
            ports=(DnsPort(name="http", port=8080),),
            endpoints=(
                DnsEndpoint(
                    addresses=("10.1.0.7",),
                    hostname="pets-0",
                    ports=(DnsPort(name="http", port=8080),),
                ),
            ),
        ),
    ),
    (
        "legacy-endpoints",
        """
        apiVersion: v1
        kind: Service
        metadata: {name: db, namespace: shop}
        spec: {clusterIP: None}
        ---
        apiVersion: v1
        kind: Endpoints
        metadata: {name: db, namespace: shop}
        subsets:
        - addresses: [{ip: 10.1.0.1, hostname: db-0}]
          notReadyAddresses: [{ip: 10.1.0.2}]
          ports: [{name: pg, port: 5432}]
        """,
        DnsService(
            namespace="shop",
            name="db",
            kind="Headless",
            endpoints=(
                DnsEndpoint(
                    addresses=("10.1.0.1",), hostname="db-0", ports=(DnsPort(name="pg", port=5432),)
                ),
            ),
        ),
    ),
]


@pytest.mark.parametrize(
    ("manifests", "expected"), [t[1:] for t in SERVICE_TABLE], ids=[t[0] for t in SERVICE_TABLE]
)
def test_service_table(manifests: str, expected: DnsService) -> None:
    assert service(translate(manifests), expected.name) == expected


def test_config_fields_and_namespaces() -> None:
    config = translate(
        """
        apiVersion: v1
        kind: Namespace
        metadata: {name: empty}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: shop}
        spec: {clusterIP: 127.10.0.5, ports: [{port: 80}]}
        """,
        zone="Example.Internal.",
    )
    assert config.zone == "example.internal"
    assert config.ttl == 5 and config.pod_mode == "insecure"
    assert config.namespaces == ("empty", "shop")
    assert config.pods == ()
    assert config.version > 0


def test_pods_listed_in_verified_mode_only() -> None:
    manifests = """
        apiVersion: v1
        kind: Pod
        metadata: {name: a, namespace: shop}
        status: {phase: Running, podIPs: [{ip: 10.2.0.1}, {ip: "fd00::1"}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: pending, namespace: shop}
        status: {phase: Pending}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: done, namespace: shop}
        status: {phase: Succeeded, podIP: 10.2.0.3}
        """
    assert translate(manifests).pods == ()
    verified = translate(manifests, pod_mode="verified")
    assert verified.pods == (DnsPod(namespace="shop", name="a", ips=("10.2.0.1", "fd00::1")),)
    assert verified.namespaces == ("shop",)
    # Autopath knows a pod by its address, in every pod mode; finished pods' addresses are free.
    want = (("10.2.0.1", "shop"), ("fd00::1", "shop"))
    assert translate(manifests).pod_namespaces == want
    assert verified.pod_namespaces == want


def test_pod_addresses_sorted_by_address_without_the_gone_ones() -> None:
    manifests = """
        apiVersion: v1
        kind: Pod
        metadata: {name: b, namespace: zz}
        status: {phase: Running, podIP: 10.2.0.10}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: a, namespace: zz}
        status: {phase: Running, podIPs: [{ip: 10.2.0.2}, {ip: "fd00::2"}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: c, namespace: aa}
        status: {phase: Unknown, podIP: 10.2.0.10}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: leaving, namespace: aa, deletionTimestamp: "2024-01-01T00:00:00Z"}
        status: {phase: Running, podIP: 10.2.0.1}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: failed, namespace: aa}
        status: {phase: Failed, podIP: 10.2.0.3}
        """
    # (the same address in two namespaces: a pod that left one and one that came, both listed)
    want = (("10.2.0.10", "aa"), ("10.2.0.10", "zz"), ("10.2.0.2", "zz"), ("fd00::2", "zz"))
    assert translate(manifests).pod_namespaces == want
    assert translate(manifests, pod_mode="verified").pod_namespaces == want


def test_translation_is_pure() -> None:
    manifests = SERVICE_TABLE[-4][1]
    assert translate(manifests).model_dump() == translate(manifests).model_dump()
