"""Autopath: a known pod's search path walked by the server, answered with a CNAME."""

from __future__ import annotations

import dns.message
import dns.query
import dns.rcode
import pytest
import trio

from mesh.dns.autopath import AutopathWalk, search_base, steps
from mesh.dns.responder import Responder
from mesh.dns.zone import ZoneIndex
from tests.dns.cases import CLUSTER
from tests.dns.fake_upstream import FakeUpstream
from tests.dns.serving import CLIENT_TIMEOUT, running

Z = "cluster.local."


@pytest.mark.parametrize(
    ("key", "namespace", "base"),
    [
        ("example.org.shop.svc.cluster.local.", "shop", "example.org."),
        ("web.shop.svc.cluster.local.", "shop", "web."),
        ("example.org.shop.svc.cluster.local.", "other", None),  # another pod's path
        ("example.org.svc.cluster.local.", "shop", None),  # a later step
        ("shop.svc.cluster.local.", "shop", None),
        ("example.org.", "shop", None),
    ],
)
def test_search_base(key: str, namespace: str, base: str | None) -> None:
    assert search_base(key, namespace, Z) == base


def test_steps() -> None:
    assert steps("example.org.", Z) == (
        "example.org.svc.cluster.local.",
        "example.org.cluster.local.",
        "example.org.",
    )


def walk(name: str, namespace: str, rdtype: str = "A") -> AutopathWalk | None:
    responder = Responder(ZoneIndex.build(CLUSTER))
    data = dns.message.make_query(name, rdtype).to_wire()
    return AutopathWalk.start(responder, data, namespace)


def test_walk_applies_only_to_the_first_step_that_does_not_exist() -> None:
    assert walk("web.shop.svc.cluster.local.", "shop") is None  # exists
    assert walk("example.org.svc.cluster.local.", "shop") is None  # not the first step
    assert walk("example.org.shop.svc.cluster.local.", "empty") is None  # not this pod's path
    assert walk("example.org.shop.svc.cluster.local.", "shop", "ANY") is None
    w = walk("example.org.shop.svc.cluster.local.", "shop")
    assert w is not None
    assert w.outside == b"\x07example\x03org\x00\x00\x01\x00\x01"
    assert w.outside_name == "example.org."
    assert w.inside() is None  # example.org.svc.cluster.local and .cluster.local: no such names


def test_walk_finds_a_service_of_another_namespace() -> None:
    # A pod in "empty" asks for web.shop: its first step is web.shop.empty.svc.cluster.local.
    w = walk("web.shop.empty.svc.cluster.local.", "empty")
    assert w is not None
    reply = w.inside()
    assert reply is not None
    msg = dns.message.from_wire(reply.wire)
    assert msg.rcode() == dns.rcode.NOERROR
    lines = sorted(r.to_text() for r in msg.answer)
    assert lines == [
        "web.shop.empty.svc.cluster.local. 5 IN CNAME web.shop.svc.cluster.local.",
        "web.shop.svc.cluster.local. 5 IN A 127.10.0.5",
    ]


def test_walk_skips_nodata_and_gives_nxdomain_when_nothing_resolves() -> None:
    # web.shop.svc.cluster.local has no AAAA: NODATA is skipped like NXDOMAIN.
    w = walk("web.shop.empty.svc.cluster.local.", "empty", "AAAA")
    assert w is not None
    assert w.inside() is None
    msg = dns.message.from_wire(w.nxdomain().wire)
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert msg.question[0].name.to_text() == "web.shop.empty.svc.cluster.local."


POD_CONFIG = CLUSTER.model_copy(update={"pod_namespaces": (("127.0.0.1", "shop"),)})


async def ask_from(
    source: str, port: int, name: str, rdtype: str = "A", *, tcp: bool = False
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)

    def ask() -> dns.message.Message:
        exchange = dns.query.tcp if tcp else dns.query.udp
        return exchange(q, "127.0.0.1", port=port, timeout=CLIENT_TIMEOUT, source=source)

    return await trio.to_thread.run_sync(ask)


async def test_one_query_instead_of_four() -> None:
    upstream = FakeUpstream()
    async with trio.open_nursery() as nursery:
        up = await nursery.start(upstream.run)
        async with running(POD_CONFIG, upstreams=[up], autopath=True) as server:
            reply = await ask_from("127.0.0.1", server.port, "example.com.shop.svc.cluster.local.")
            assert reply.rcode() == dns.rcode.NOERROR
            assert sorted(r.to_text() for r in reply.answer) == [
                "example.com. 300 IN A 192.0.2.1",
                "example.com.shop.svc.cluster.local. 5 IN CNAME example.com.",
            ]
            assert upstream.seen == [("udp", "example.com.", "A")]
            assert server.metrics.autopath == {"found": 1}
            assert sum(server.metrics.queries.values()) == 1

            # Nothing resolves: the pod gets its own NXDOMAIN (and walks on itself).
            reply = await ask_from(
                "127.0.0.1", server.port, "nothing.example.shop.svc.cluster.local."
            )
            assert reply.rcode() == dns.rcode.NXDOMAIN
            assert server.metrics.autopath == {"found": 1, "missed": 1}

            # Over TCP too.
            reply = await ask_from(
                "127.0.0.1", server.port, "example.com.shop.svc.cluster.local.", tcp=True
            )
            assert len(reply.answer) == 2
            assert server.metrics.autopath == {"found": 2, "missed": 1}

            # An address no pod has: answered as usual, nothing forwarded.
            before = len(upstream.seen)
            reply = await ask_from("127.0.0.2", server.port, "example.com.shop.svc.cluster.local.")
            assert reply.rcode() == dns.rcode.NXDOMAIN
            assert reply.answer == []
            assert len(upstream.seen) == before
        nursery.cancel_scope.cancel()


async def test_off_by_default() -> None:
    upstream = FakeUpstream()
    async with trio.open_nursery() as nursery:
        up = await nursery.start(upstream.run)
        async with running(POD_CONFIG, upstreams=[up]) as server:
            reply = await ask_from("127.0.0.1", server.port, "example.com.shop.svc.cluster.local.")
            assert reply.rcode() == dns.rcode.NXDOMAIN
            assert upstream.seen == []
        nursery.cancel_scope.cancel()
