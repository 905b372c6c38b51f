"""A new config rebuilds only the Backends of the Services that changed."""

from __future__ import annotations

from mesh.config.proxy import ProxyConfig, ProxyEndpoint, ProxyPort, ProxyService
from mesh.proxy.table import ServiceTable


def svc(name: str, vip: str, *addresses: str, local: bool = False) -> ProxyService:
    return ProxyService(
        namespace="default",
        name=name,
        cluster_ips=(vip,),
        ports=(ProxyPort(port=80),),
        internal_traffic_local=local,
        endpoints=tuple(
            ProxyEndpoint(address=a, node_name="n1", ports={"": 8080}) for a in addresses
        ),
    )


def test_unchanged_services_keep_their_backends_and_round_robin() -> None:
    web = svc("web", "127.10.0.1", "127.0.1.1", "127.0.1.2")
    db = svc("db", "127.10.0.2", "127.0.2.1")
    first = ServiceTable.build(ProxyConfig(version=1, services=(web, db)))
    web_backend = first.lookup("127.10.0.1", 80, "TCP")
    db_backend = first.lookup("127.10.0.2", 80, "TCP")
    assert web_backend is not None and db_backend is not None
    assert web_backend.pick("c", 0.0) == ("127.0.1.1", 8080)
    db2 = svc("db", "127.10.0.2", "127.0.2.1", "127.0.2.2")
    second = ServiceTable.build(ProxyConfig(version=2, services=(web, db2)), first)
    assert second.lookup("127.10.0.1", 80, "TCP") is web_backend  # same object, same state
    new_db = second.lookup("127.10.0.2", 80, "TCP")
    assert new_db is not db_backend and new_db is not None
    assert new_db.endpoints == (("127.0.2.1", 8080), ("127.0.2.2", 8080))
    assert web_backend.pick("c", 0.0) == ("127.0.1.2", 8080)  # round robin went on
    # An equal (not identical) Service, as a config from the stream brings, is reused too.
    third = ServiceTable.build(ProxyConfig(version=3, services=(web.model_copy(), db2)), second)
    assert third.lookup("127.10.0.1", 80, "TCP") is web_backend


def test_a_new_node_name_recomputes_local_endpoints() -> None:
    web = svc("web", "127.10.0.1", "127.0.1.1", local=True)
    first = ServiceTable.build(ProxyConfig(version=1, node_name="n1", services=(web,)))
    backend = first.lookup("127.10.0.1", 80, "TCP")
    assert backend is not None and backend.endpoints == (("127.0.1.1", 8080),)
    second = ServiceTable.build(ProxyConfig(version=2, node_name="n2", services=(web,)), first)
    moved = second.lookup("127.10.0.1", 80, "TCP")
    assert moved is not None and moved.endpoints == ()
