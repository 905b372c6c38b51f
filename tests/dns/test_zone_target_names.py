"""The index builder makes the PTR and SRV targets' labels from the names' bytes
(dns/zone_parts.py ``_name``): each must be the label dnslib makes from the text itself."""

from __future__ import annotations

import pytest
from dnslib import PTR, SRV, DNSLabel

from mesh.dns.zone_parts import _name

NAMES = [
    "web.default.svc.cluster.local.",
    "web.default.svc.cluster.local",
    "_http._tcp.web.default.svc.cluster.local.",
    "10-0-0-1.web.default.svc.cluster.local.",
    "MiXeD.Case.example.",
    ".",
    "",
    "a\\046b.example.",  # a backslash escape: dnslib's own path
    "bücher.example.",  # beyond ASCII: the IDNA codec
]


@pytest.mark.parametrize("name", NAMES)
def test_a_target_label_is_dnslibs_own(name: str) -> None:
    assert DNSLabel(_name(name)).label == DNSLabel(name).label
    pairs = [(PTR(_name(name)), PTR(name)), (SRV(0, 100, 80, _name(name)), SRV(0, 100, 80, name))]
    for rdata, again in pairs:
        assert rdata == again
        assert str(rdata) == str(again)
