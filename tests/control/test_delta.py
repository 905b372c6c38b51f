"""The pure delta core (mesh/config/delta.py): diff then apply gives the new config, for
every kind of change; only the records that travel are new objects; a delta never lands on
the wrong base."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import field_validator

from mesh.config import delta
from mesh.config.base import ComponentConfig
from mesh.config.dns import DnsConfig, DnsEndpoint, DnsPort, DnsService
from mesh.config.gateway import GatewayBackend, GatewayEndpoint, Route, ServedGatewayConfig
from mesh.config.proxy import ProxyConfig, ProxyEndpoint, ProxyPort, ProxyService


def dsvc(name: str, ip: str = "10.0.0.1", ns: str = "default") -> DnsService:
    return DnsService(
        namespace=ns,
        name=name,
        kind="ClusterIP",
        cluster_ips=(ip,),
        ports=(DnsPort(name="http", port=80),),
    )


def headless(name: str, *ips: str) -> DnsService:
    eps = tuple(DnsEndpoint(addresses=(ip,)) for ip in ips)
    return DnsService(namespace="default", name=name, kind="Headless", endpoints=eps)


def psvc(name: str, *ips: str) -> ProxyService:
    eps = tuple(ProxyEndpoint(address=ip, ports={"": 8080}) for ip in ips)
    return ProxyService(
        namespace="default",
        name=name,
        cluster_ips=("10.96.0.1",),
        ports=(ProxyPort(port=80),),
        endpoints=eps,
    )


A, B, C, D = dsvc("a"), dsvc("b"), dsvc("c"), dsvc("d")
BASE_DNS = DnsConfig(version=1, services=(A, B, C), namespaces=("default",))
BASE_PROXY = ProxyConfig(version=1, services=(psvc("a", "10.1.0.1"), psvc("b", "10.1.0.2")))
BASE_GATEWAY = ServedGatewayConfig(
    version=1,
    routes=(Route(name="r1", listeners=("ingress-http",)),),
    backends=(
        GatewayBackend(name="default/a:80", endpoints=(GatewayEndpoint(ip="1.1.1.1", port=80),)),
    ),
)


def dns(**fields: Any) -> DnsConfig:
    return BASE_DNS.model_copy(update={"version": 2, **fields})


# (what changes, base, new, fields expected spliced, fields expected set whole)
CASES: list[tuple[str, ComponentConfig, ComponentConfig, set[str], set[str]]] = [
    ("nothing but the version", BASE_DNS, dns(), set(), set()),
    ("one record added", BASE_DNS, dns(services=(A, B, dsvc("bb"), C)), {"services"}, set()),
    ("one added at the end", BASE_DNS, dns(services=(A, B, C, D)), {"services"}, set()),
    ("one added at the start", BASE_DNS, dns(services=(dsvc("0"), A, B, C)), {"services"}, set()),
    ("one removed", BASE_DNS, dns(services=(A, C)), {"services"}, set()),
    ("one replaced", BASE_DNS, dns(services=(A, dsvc("b", "10.0.0.9"), C)), {"services"}, set()),
    (
        "replaced by an equal copy (decoded)",
        BASE_DNS,
        dns(services=(A, dsvc("b"), C)),
        set(),
        set(),
    ),
    ("renamed", BASE_DNS, dns(services=(A, dsvc("bx"), C)), {"services"}, set()),
    (
        "added, replaced and removed at once",
        BASE_DNS.model_copy(update={"services": (A, B, C, D, dsvc("e"), dsvc("f"))}),
        dns(services=(A, dsvc("b", "10.0.0.7"), C, dsvc("cc"), dsvc("e"), dsvc("f"))),
        {"services"},
        set(),
    ),
    ("to empty", BASE_DNS, dns(services=()), set(), {"services"}),
    (
        "from empty",
        BASE_DNS.model_copy(update={"services": ()}),
        dns(services=(A, B)),
        set(),
        {"services"},
    ),
    ("reordered", BASE_DNS, dns(services=(C, B, A)), set(), {"services"}),
    (
        "the same name twice",
        BASE_DNS.model_copy(update={"services": (A, A, B, C, D, dsvc("e"))}),
        dns(services=(A, dsvc("a", "10.0.0.2"), B, C, D, dsvc("e"))),
        {"services"},
        set(),
    ),
    (
        "scalars and small lists",
        BASE_DNS,
        dns(zone="example.org", ttl=30, pod_mode="verified", namespaces=("default", "x")),
        {"namespaces"},
        {"zone", "ttl", "pod_mode"},
    ),
    (
        "whole kind: every field",
        BASE_DNS,
        DnsConfig(version=9, zone="z.local", ttl=1, services=(D,), namespaces=("y",)),
        set(),
        {"zone", "ttl", "services", "namespaces"},
    ),
    (
        "plain values keyed by themselves",
        BASE_DNS.model_copy(
            update={"pod_namespaces": (("10.0.0.1", "a"), ("10.0.0.2", "a"), ("10.0.0.3", "b"))}
        ),
        dns(pod_namespaces=(("10.0.0.1", "a"), ("10.0.0.4", "b"), ("10.0.0.3", "b"))),
        {"pod_namespaces"},
        set(),
    ),
    (
        "headless endpoints changed",
        BASE_DNS.model_copy(update={"services": (A, headless("h", "10.2.0.1"), C, D)}),
        dns(services=(A, headless("h", "10.2.0.1", "10.2.0.2"), C, D)),
        {"services"},
        set(),
    ),
    (
        "proxy endpoint added",
        BASE_PROXY,
        BASE_PROXY.model_copy(
            update={
                "version": 2,
                "services": (psvc("a", "10.1.0.1", "10.1.0.3"), BASE_PROXY.services[1]),
            }
        ),
        {"services"},
        set(),
    ),
    (
        "proxy node name",
        BASE_PROXY,
        BASE_PROXY.model_copy(update={"version": 2, "node_name": "n1"}),
        set(),
        {"node_name"},
    ),
    (
        "gateway route added",
        BASE_GATEWAY,
        BASE_GATEWAY.model_copy(
            update={
                "version": 2,
                "routes": (*BASE_GATEWAY.routes, Route(name="r2", listeners=("x",), hosts=("h",))),
            }
        ),
        {"routes"},
        set(),
    ),
]


def roundtrip(
    base: ComponentConfig, new: ComponentConfig
) -> tuple[ComponentConfig, dict[str, Any]]:
    doc = delta.diff(base, new)
    assert doc is not None
    line = delta.encode(doc)
    assert delta.is_delta(line) and line.endswith(b"\n") and b"\n" not in line[:-1]
    return delta.decode_delta(base, line), json.loads(line)


@pytest.mark.parametrize(
    ("what", "base", "new", "spliced", "whole"), CASES, ids=[c[0] for c in CASES]
)
def test_diff_then_apply_is_the_new_config(
    what: str, base: ComponentConfig, new: ComponentConfig, spliced: set[str], whole: set[str]
) -> None:
    got, doc = roundtrip(base, new)
    assert got == new and type(got) is type(new)
    assert got.model_dump(mode="json") == new.model_dump(mode="json")
    assert set(doc["splice"]) == spliced and set(doc["set"]) == whole
    assert (doc["base"], doc["version"]) == (base.version, new.version)


def test_unchanged_records_stay_the_same_objects() -> None:
    new = dns(services=(A, dsvc("b", "10.0.0.9"), C, D))
    got, doc = roundtrip(BASE_DNS, new)
    assert isinstance(got, DnsConfig)
    assert got.services[0] is A and got.services[2] is C  # not decoded again
    assert got.services[1] is not B and got.services[1] == new.services[1]
    assert got.namespaces is BASE_DNS.namespaces  # fields not sent are kept as they are
    # Only the replaced and the added record travel.
    assert [len(items) for _, _, items in doc["splice"]["services"]] == [1, 1]


def test_splices_are_positional_edits() -> None:
    key = delta._key_function(DnsService)
    assert delta.splices((A, B, C), (A, B, C), key) == []
    assert delta.splices((A, B, C), (A, C), key) == [(1, 1, [])]
    assert delta.splices((A, C), (A, B, C), key) == [(1, 0, [B])]
    b2 = dsvc("b", "10.0.0.2")
    assert delta.splices((A, B, C, D), (A, b2, C, dsvc("dd"), D), key) == [
        (1, 1, [b2]),
        (3, 0, [dsvc("dd")]),
    ]


def bad_line(**overrides: Any) -> bytes:
    doc = delta.diff(BASE_DNS, dns(services=(A, C)))
    assert doc is not None
    doc.update(overrides)
    return delta.encode({k: v for k, v in doc.items() if v is not None})


@pytest.mark.parametrize(
    ("line", "error", "message"),
    [
        (bad_line(base=7), delta.DeltaMismatch, "from version 7 does not apply to version 1"),
        (bad_line(lengths={"services": 3}), delta.DeltaMismatch, "left services with 2 records"),
        (bad_line(splice={"services": [[2, 5, []]]}), delta.DeltaMismatch, "outside its records"),
        (bad_line(splice={"services": [[1, 1, []], [0, 1, []]]}), delta.DeltaMismatch, "outside"),
        (bad_line(splice={"services": [[1, True, []]]}), delta.DeltaMismatch, "outside"),
        (bad_line(_delta=2), delta.DeltaError, "format 2 and this process reads format 1 only"),
        (bad_line(version="x"), delta.DeltaError, "whose 'version' is not a number"),
        (bad_line(set={"colour": 1}), delta.DeltaError, "sets 'colour', not a field of DnsConfig"),
        (bad_line(set={"ttl": -1}), delta.DeltaError, "at ttl: Input should be greater than"),
        (bad_line(splice={"zone": []}), delta.DeltaError, "splices 'zone'"),
        (bad_line(splice={"services": {}}), delta.DeltaError, "are not a list"),
        (
            bad_line(splice={"services": [[1, 0, [{"name": "x"}]]]}, lengths={"services": 4}),
            delta.DeltaError,
            "invalid record in a config delta at services[1].0.namespace: Field required",
        ),
        (b'{"_delta":1,', delta.DeltaError, "not JSON"),
        (b"[1]", delta.DeltaError, "not a JSON object"),
    ],
)
def test_bad_deltas_are_refused_in_one_sentence(
    line: bytes, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as caught:
        delta.decode_delta(BASE_DNS, line)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


class Checked(ComponentConfig):
    names: tuple[str, ...] = ()

    @field_validator("names")
    @classmethod
    def _sorted(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if list(value) != sorted(value):
            raise ValueError("names must be sorted")
        return value


def test_a_type_with_its_own_validators_gets_no_deltas() -> None:
    assert not delta.supports_deltas(Checked)
    assert delta.diff(Checked(names=("a",)), Checked(version=2, names=("a", "b"))) is None
    assert delta.supports_deltas(DnsConfig) and delta.supports_deltas(ServedGatewayConfig)


# --- hypothesis: any two configs --------------------------------------------------------

names_ = st.sampled_from(["a", "b", "c", "d", "e", "f"])
ips = st.sampled_from(["10.0.0.1", "10.0.0.2", "fd00::1"])
services = st.builds(dsvc, names_, ips, st.sampled_from(["default", "kube-system"]))
dns_configs = st.builds(
    DnsConfig,
    version=st.integers(0, 100),
    ttl=st.integers(0, 60),
    services=st.lists(services, max_size=12).map(tuple),
    namespaces=st.lists(st.sampled_from(["default", "x", "y"]), max_size=3).map(tuple),
    pod_namespaces=st.lists(st.tuples(ips, names_), max_size=6).map(tuple),
)


@st.composite
def edited(draw: st.DrawFn) -> tuple[DnsConfig, DnsConfig]:
    """A config and an edit of it: records kept (the same objects), dropped, added, changed."""
    base = draw(dns_configs)
    out: list[DnsService] = []
    for svc in base.services:
        action = draw(st.sampled_from(["keep", "keep", "drop", "change"]))
        if action == "keep":
            out.append(svc)
        elif action == "change":
            out.append(dsvc(svc.name, draw(ips), svc.namespace))
        if draw(st.booleans()):
            out.append(draw(services))
    return base, base.model_copy(update={"version": base.version + 1, "services": tuple(out)})


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.tuples(dns_configs, dns_configs), edited()))
def test_roundtrip_any_two_configs(pair: tuple[DnsConfig, DnsConfig]) -> None:
    base, new = pair
    got, _ = roundtrip(base, new)
    assert got == new
    assert got.model_dump_json() == new.model_dump_json()
