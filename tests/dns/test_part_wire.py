"""The plain ClusterIP Services' answers made from templates (dns/part_wire.py) are the bytes
the nodes give, and the nodes the index makes when first asked are the ones a build that makes
every node from its Services' records gives: the same index, the same FastIndex, the same
replies from both paths, before and after an edit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from unittest import mock

import dns.message
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.config.dns import DnsConfig, DnsPort, DnsService
from mesh.dns import names, zone_parts
from mesh.dns.fast_index import FastIndex
from mesh.dns.responder import Reply, Responder
from mesh.dns.zone import ZoneIndex

TYPES = ("A", "AAAA", "SRV", "PTR", "TXT")


@contextlib.contextmanager
def no_templates() -> Iterator[None]:
    """Every part made from its records, as before templates."""
    with mock.patch.object(zone_parts, "clusterip_wire", lambda svc, t: None):
        yield


def dump(index: ZoneIndex) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in index.names():
        node = index.find(name)
        assert node is not None
        rrsets = {t: [str(r) for r in rs] for t, rs in node.rrsets.items()}
        out[name] = (rrsets, node.cname, [(o, t, str(r)) for o, t, r in node.additional])
    return out


def wire_form(fast: FastIndex) -> tuple[Any, ...]:
    return fast._nodes, fast._reverse, fast._cnames, fast._rebuilt


def same_replies(ours: ZoneIndex, theirs: ZoneIndex) -> None:
    """Every name of either, every type, through the fast path and the general path."""
    paths = [(FastIndex(i), Responder(i)) for i in (ours, theirs)]
    for name in sorted(set(ours.names()) | set(theirs.names())):
        for rtype in TYPES:
            data = dns.message.make_query(name, rtype, use_edns=0).to_wire()
            (fast, general), (fast2, general2) = paths
            got, want = fast.answer(data), fast2.answer(data)
            assert (got and got.wire) == (want and want.wire), (name, rtype)
            g, w = general.handle(data), general2.handle(data)
            assert isinstance(g, Reply) and isinstance(w, Reply), (name, rtype)
            assert g.wire == w.wire, (name, rtype)
            if got is not None:  # and the fast path agrees with the general one
                assert got.wire == g.wire, (name, rtype)


ADDRESSES = st.sampled_from(
    ["10.96.0.1", "10.96.0.2", "10.96.0.3", "192.168.255.0", "fd00::1", "010.96.0.4", "0.0.0.0"]
)


def services(*odd: str) -> st.SearchStrategy[DnsService]:
    ports = st.builds(
        DnsPort,
        name=st.sampled_from([None, "", "http", "dns", "x" * 62, *odd]),
        protocol=st.sampled_from(["TCP", "UDP", "SCTP"]),
        port=st.sampled_from([0, 53, 80, 65535]),
    )
    return st.builds(
        DnsService,
        namespace=st.sampled_from(["a", "b-2", "Caps", "under_score"]),
        name=st.sampled_from(["web", "api", "x" * 63, "_srv", *odd]),
        kind=st.just("ClusterIP"),
        cluster_ips=st.lists(ADDRESSES, max_size=3).map(tuple),
        ports=st.lists(ports, max_size=4).map(tuple),
    )


# Names no API server takes: with a dot (only a full build finds the empty non-terminal it
# makes above its base name), in upper case (the general path does not find such a port's SRV
# name, which the fast path answers) or too long for a label: the templates leave them to the
# records, and the edits below, which also hold both paths to the same bytes, do without them.
ODD = ("dot.ted", "a.b", "HTTP", "x" * 63)


def plain(config: DnsConfig) -> bool:
    odd = set(ODD)
    return not any(s.name in odd or any(p.name in odd for p in s.ports) for s in config.services)


SERVICES = services()


def configs(zones: list[str], *odd: str) -> st.SearchStrategy[DnsConfig]:
    return st.builds(
        DnsConfig,
        version=st.integers(1, 5),
        zone=st.sampled_from(zones),
        ttl=st.sampled_from([0, 5, 2**31 - 1]),
        services=st.lists(services(*odd), max_size=6).map(tuple),
        namespaces=st.just(("a", "empty")),
    )


# (A zone in in-addr.arpa holds the reverse names: only a full build finds their empty
# non-terminals, as with the dotted names.)
CONFIGS = configs(["cluster.local", "Example.ORG", "in-addr.arpa", "a_b.test"], *ODD)
PLAIN_CONFIGS = configs(["cluster.local", "a_b.test"])


def rejected(config: DnsConfig) -> bool:
    """Whether ``config`` is refused (an address the records cannot hold): with templates
    or without, the same way."""
    try:
        ZoneIndex.build(config)
    except ValueError:
        with no_templates(), pytest.raises(ValueError):
            ZoneIndex.build(config)
        return True
    return False


@settings(max_examples=200, deadline=None)
@given(CONFIGS)
def test_templates_answer_as_the_records_do(config: DnsConfig) -> None:
    if rejected(config):
        return
    ours = ZoneIndex.build(config)
    with no_templates():
        theirs = ZoneIndex.build(config)
        assert not theirs.wire_sources()[0]
    assert dump(ours) == dump(theirs)
    assert len(ours) == len(theirs)
    assert wire_form(FastIndex(ours)) == wire_form(FastIndex(theirs))


@settings(max_examples=40, deadline=None)
@given(PLAIN_CONFIGS, st.lists(st.integers(0, 99), max_size=5), st.integers(-1, 6), SERVICES)
def test_an_edit_after_names_were_asked_answers_as_a_full_build(
    config: DnsConfig, asked: list[int], at: int, edited: DnsService
) -> None:
    if rejected(config):
        return
    first = ZoneIndex.build(config)
    fast = FastIndex(first)
    known = first.names()
    for i in asked:
        first.find(known[i % len(known)])  # made now, kept: the next build must let go of it
    now = list(config.services)
    if 0 <= at < len(now):
        now[at] = edited
    else:
        now.append(edited)
    config = config.model_copy(update={"version": config.version + 1, "services": tuple(now)})
    if rejected(config):
        return
    second = ZoneIndex.build(config, first)
    full = ZoneIndex.build(config)
    assert dump(second) == dump(full)
    assert FastIndex(second, previous=fast)._nodes == FastIndex(full)._nodes
    assert wire_form(FastIndex(second)) == wire_form(FastIndex(full))  # in full from an edit
    same_replies(second, full)


def _plain(n: int) -> tuple[DnsService, ...]:
    http = DnsPort(name="http", port=80)
    return tuple(
        DnsService(
            namespace="bench",
            name=f"s{i}",
            kind="ClusterIP",
            cluster_ips=(f"10.96.0.{i}",),
            ports=(http, DnsPort(name="dns", protocol="UDP", port=53)),
        )
        for i in range(n)
    )


def test_plain_services_make_no_node_until_asked_and_answer_as_the_records_do() -> None:
    config = DnsConfig(version=3, services=_plain(20))
    index = ZoneIndex.build(config)
    assert len(index.wire_sources()[0]) == 20
    base = "s7.bench.svc.cluster.local."
    assert base not in index._nodes
    # the general path asks first (ANY goes there), then the fast path: the same records
    general = Responder(index).handle(dns.message.make_query(base, "ANY").to_wire())
    assert isinstance(general, Reply)
    assert base in index._nodes
    with no_templates():
        eager = ZoneIndex.build(config)
    same_replies(index, eager)
    assert wire_form(FastIndex(index)) == wire_form(FastIndex(eager))


def test_a_name_shared_by_two_services_is_answered_from_both() -> None:
    # two Services with one address: its reverse name has two PTR records, from the nodes
    one, two = _plain(2)
    two = two.model_copy(update={"cluster_ips": one.cluster_ips})
    config = DnsConfig(version=1, services=(one, two))
    index = ZoneIndex.build(config)
    reply = FastIndex(index).answer(
        dns.message.make_query(names.reverse_name("10.96.0.0"), "PTR").to_wire()
    )
    assert reply is not None
    targets = sorted(r.target.to_text() for r in dns.message.from_wire(reply.wire).answer[0])
    assert targets == ["s0.bench.svc.cluster.local.", "s1.bench.svc.cluster.local."]
    with no_templates():
        same_replies(index, ZoneIndex.build(config))
