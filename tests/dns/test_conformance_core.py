"""The conformance table against the pure core: query bytes in, reply bytes out."""

from __future__ import annotations

import dns.message
import pytest

from mesh.config.dns import DnsConfig
from mesh.dns.responder import Reply, Responder
from mesh.dns.zone import ZoneIndex
from tests.dns.cases import TABLES, Case, check, query

_RESPONDERS: dict[int, Responder] = {}


def responder(config: DnsConfig) -> Responder:
    key = id(config)
    if key not in _RESPONDERS:
        _RESPONDERS[key] = Responder(ZoneIndex.build(config))
    return _RESPONDERS[key]


@pytest.mark.parametrize(("config", "case"), TABLES, ids=[c.id for _, c in TABLES])
@pytest.mark.parametrize("edns", [False, True], ids=["plain", "edns"])
def test_conformance(config: DnsConfig, case: Case, edns: bool) -> None:
    q = query(case, use_edns=0 if edns else False)
    outcome = responder(config).handle(q.to_wire())
    assert isinstance(outcome, Reply)
    assert outcome.cacheable
    reply = dns.message.from_wire(outcome.wire)
    assert reply.id == q.id
    assert (reply.edns >= 0) == edns
    check(case, reply)
