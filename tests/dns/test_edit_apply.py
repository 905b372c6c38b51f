"""An edit applied from the previous indexes answers every question exactly as a full build of
the same config does, byte for byte, and does the work of the changed Services only.

The edits keep every unchanged record as the same object, as the config stream's deltas and
the in-process control plane do, so the zone index takes its window path; a Service defined
twice and a change of pods or namespaces take the other paths, and are in the mix too.
"""

from __future__ import annotations

import random

import dns.message
import dns.rcode
import pytest

from mesh.config.dns import DnsConfig, DnsEndpoint, DnsPod, DnsPort, DnsService
from mesh.dns import names, zone_parts
from mesh.dns.fast_encode import encode_node
from mesh.dns.fast_index import FastIndex
from mesh.dns.responder import Reply, Responder
from mesh.dns.zone import ZoneIndex

from .serving import ask_udp, running

TYPES = ("A", "AAAA", "SRV", "PTR", "CNAME", "TXT")


def _ports(rng: random.Random) -> tuple[DnsPort, ...]:
    return tuple(
        DnsPort(name=rng.choice(["http", "grpc", None]), port=rng.choice([80, 81, 9000]))
        for _ in range(rng.randrange(3))
    )


def _service(rng: random.Random, i: int) -> DnsService:
    ns = rng.choice(["a", "b", "c"])
    kind = rng.choice(["ClusterIP", "ClusterIP", "dual", "Headless", "ExternalName"])
    if kind in ("ClusterIP", "dual"):
        ips = [f"10.96.{rng.randrange(3)}.{i}"] if kind == "ClusterIP" else []
        if kind == "dual" or rng.random() < 0.2:
            ips.append(f"fd00::{rng.randrange(3)}:{i:x}")
        return DnsService(
            namespace=ns, name=f"s{i}", kind="ClusterIP", cluster_ips=tuple(ips), ports=_ports(rng)
        )
    if kind == "ExternalName":
        # out of the zone, or another Service (its answers follow that one's)
        target = rng.choice([f"x{i}.example.", f"s{rng.randrange(30)}.{ns}.svc.cluster.local."])
        return DnsService(namespace=ns, name=f"s{i}", kind="ExternalName", external_name=target)
    endpoints = tuple(
        DnsEndpoint(
            # shared between headless Services: shared reverse names
            addresses=tuple(
                rng.choice([f"10.1.0.{rng.randrange(5)}", f"fd01::{rng.randrange(3)}"])
                for _ in range(1 + rng.randrange(2))
            ),
            hostname=rng.choice([None, f"h{j}"]),
            ports=_ports(rng),
        )
        for j in range(rng.randrange(3))
    )
    return DnsService(namespace=ns, name=f"s{i}", kind="Headless", endpoints=endpoints)


def _edit(rng: random.Random, config: DnsConfig) -> DnsConfig:
    """One random edit; every record it does not change stays the same object."""
    services = list(config.services)
    update: dict[str, object] = {"version": config.version + 1}
    action = rng.randrange(10)
    if action < 4 and services:  # change one Service (kind, addresses, ports...)
        at = rng.randrange(len(services))
        services[at] = _service(rng, int(services[at].name[1:]))
    elif action < 6 and services:
        del services[rng.randrange(len(services))]
    elif action < 8:  # add one, at any place, maybe with a name another Service has
        services.insert(rng.randrange(len(services) + 1), _service(rng, rng.randrange(40)))
    elif action == 8:
        pods = list(config.pods)
        pods.append(DnsPod(namespace=rng.choice(["a", "d"]), name=f"p{len(pods)}",
                           ips=(f"10.2.0.{len(pods)}",)))  # fmt: skip
        update["pods"] = tuple(pods)
    elif len(services) > 1:  # two Services swap places
        i, j = rng.sample(range(len(services)), 2)
        services[i], services[j] = services[j], services[i]
    update["services"] = tuple(services)
    return config.model_copy(update=update)


def _questions(index: ZoneIndex, seen: set[str]) -> list[str]:
    """Every stored name, every name seen before (now gone: NXDOMAIN), and pod names."""
    seen.update(name for name, _ in index.items())
    return sorted(seen | {"10-2-0-1.a.pod.cluster.local.", "nothing.a.svc.cluster.local."})


def _same_answers(
    updated: tuple[Responder, FastIndex], full: tuple[Responder, FastIndex], questions: list[str]
) -> None:
    """The same reply bytes from both; through the general path where the fast one does not
    answer (the fast path's agreement with the general path is the conformance tables')."""
    for name in questions:
        for rtype in TYPES:
            data = dns.message.make_query(name, rtype, use_edns=0).to_wire()
            ours, theirs = updated[1].answer(data), full[1].answer(data)
            assert (ours and ours.wire) == (theirs and theirs.wire), (name, rtype)
            if ours is None:
                general, expected = updated[0].handle(data), full[0].handle(data)
                assert type(general) is type(expected), (name, rtype)  # a reverse name gone:
                if isinstance(general, Reply) and isinstance(expected, Reply):  # forwarded
                    assert general.wire == expected.wire, (name, rtype)


@pytest.mark.parametrize("seed", range(8))
def test_edits_answer_as_a_full_build(seed: int) -> None:
    rng = random.Random(seed)
    pod_mode = ("insecure", "verified")[seed % 2]
    config = DnsConfig(
        version=1,
        services=tuple(_service(rng, i) for i in range(15)),
        pods=(DnsPod(namespace="a", name="p0", ips=("10.2.0.0", "fd02::1")),),
        pod_mode=pod_mode,
    )
    index = ZoneIndex.build(config)
    fast = FastIndex(index)
    seen: set[str] = set()
    for _ in range(15):
        config = _edit(rng, config)
        index = ZoneIndex.build(config, index)
        fast = FastIndex(index, previous=fast)
        full = ZoneIndex.build(config)
        questions = _questions(full, seen)
        _same_answers((Responder(index), fast), (Responder(full), FastIndex(full)), questions)


def _many(n: int) -> tuple[DnsService, ...]:
    return tuple(
        DnsService(
            namespace="bench",
            name=f"s{i}",
            kind="ClusterIP",
            cluster_ips=(f"10.96.{i // 250}.{i % 250}",),
            ports=(DnsPort(name="http", port=80),),
        )
        for i in range(n)
    )


def test_one_edit_among_a_thousand_encodes_that_service_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # with a CNAME to a Service the edit does not touch: kept, not encoded again
    ext = DnsService(
        namespace="bench",
        name="ext",
        kind="ExternalName",
        external_name="s3.bench.svc.cluster.local",
    )
    services = (*_many(1000), ext)
    first = ZoneIndex.build(DnsConfig(version=1, services=services))
    fast = FastIndex(first)
    built: list[str] = []
    encoded: list[str] = []
    part, encode = zone_parts.service_part, encode_node

    def counting_part(svc: DnsService, *args: object) -> object:
        built.append(svc.name)
        return part(svc, *args)  # type: ignore[arg-type]

    def counting_encode(index: ZoneIndex, name: str, *args: object) -> object:
        encoded.append(name)
        return encode(index, name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(zone_parts, "service_part", counting_part)
    monkeypatch.setattr("mesh.dns.fast_index.encode_node", counting_encode)
    changed = list(services)
    changed[500] = changed[500].model_copy(update={"cluster_ips": ("10.97.0.1",)})
    config = DnsConfig(version=2, services=tuple(changed))
    second = ZoneIndex.build(config, first)
    updated = FastIndex(second, previous=fast)
    assert built == ["s500"]
    base = "s500.bench.svc.cluster.local."
    # its names (the old reverse name is gone: removed, not encoded) and the apex (the SOA)
    assert sorted(encoded) == sorted(
        [
            base,
            "_http._tcp." + base,
            "_tcp." + base,
            names.reverse_name("10.97.0.1"),
            "cluster.local.",
        ]
    )
    # the reverse names' NODATA carries the new serial without being encoded again
    other = names.reverse_name("10.96.0.7")
    reply = updated.answer(dns.message.make_query(other, "A").to_wire())
    assert reply is not None
    soa = dns.message.from_wire(reply.wire).authority[0][0]
    assert soa.serial == 2
    # an edit that moves nothing but one Service to the end: that Service only, no names
    encoded.clear()
    built.clear()
    moved = (*changed[:10], *changed[11:], changed[10])
    third = ZoneIndex.build(DnsConfig(version=3, services=moved), second)
    FastIndex(third, previous=updated)
    assert built == []
    assert encoded == ["cluster.local."]


async def test_a_name_cached_as_nxdomain_is_answered_after_the_edit() -> None:
    services = _many(20)
    new = "fresh.bench.svc.cluster.local."
    async with running(DnsConfig(version=1, services=services)) as server:
        for _ in range(2):  # the second answer comes from the negative cache
            reply = await ask_udp(server, dns.message.make_query(new, "A"))
            assert reply.rcode() == dns.rcode.NXDOMAIN
        # and a NODATA of a name that exists, cached, must change with the edit too
        for _ in range(2):
            reply = await ask_udp(
                server, dns.message.make_query("s3.bench.svc.cluster.local.", "AAAA")
            )
            assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
        added = DnsService(namespace="bench", name="fresh", kind="ClusterIP",
                           cluster_ips=("10.96.9.9",))  # fmt: skip
        dual = services[3].model_copy(update={"cluster_ips": ("10.96.0.3", "fd00::3")})
        server.apply(DnsConfig(version=2, services=(*services[:3], dual, *services[4:], added)))
        reply = await ask_udp(server, dns.message.make_query(new, "A"))
        assert reply.rcode() == dns.rcode.NOERROR
        assert [r.address for r in reply.answer[0]] == ["10.96.9.9"]
        reply = await ask_udp(server, dns.message.make_query("s3.bench.svc.cluster.local.", "AAAA"))
        assert [r.address for r in reply.answer[0]] == ["fd00::3"]
        reply = await ask_udp(server, dns.message.make_query("9.9.96.10.in-addr.arpa.", "PTR"))
        assert [r.target.to_text() for r in reply.answer[0]] == [new]


def test_services_sharing_a_name_keep_config_order_when_they_move() -> None:
    def headless(name: str) -> DnsService:
        endpoint = DnsEndpoint(addresses=("10.1.0.1",), hostname=name)
        return DnsService(namespace="a", name=name, kind="Headless", endpoints=(endpoint,))

    one, two, three = headless("one"), headless("two"), headless("three")
    index = ZoneIndex.build(DnsConfig(version=1, services=(one, two, three)))
    fast = FastIndex(index)
    for version, order in enumerate([(two, one, three), (three, two, one), (one, three)], 2):
        config = DnsConfig(version=version, services=order)
        index = ZoneIndex.build(config, index)
        fast = FastIndex(index, previous=fast)
        full = ZoneIndex.build(config)
        questions = _questions(full, set())
        _same_answers((Responder(index), fast), (Responder(full), FastIndex(full)), questions)
