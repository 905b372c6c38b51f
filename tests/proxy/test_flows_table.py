"""The packet-flow table against the pure service table (the meaning every mode must match)."""

from __future__ import annotations

import pytest

from mesh.proxy.table import ServiceTable
from tests.proxy.flows import CASES, CASES6, NODE, REJECT, FlowCase, remap

NODE_IP = "127.9.0.1"
NODE_IP6 = "fd00:9::1"
BOTH = [(NODE_IP, c) for c in CASES] + [(NODE_IP6, c) for c in CASES6]


@pytest.mark.parametrize(
    ("node_ip", "case"), BOTH, ids=[f"{'v6' if ':' in n else 'v4'} {c.name}" for n, c in BOTH]
)
def test_flow_table(node_ip: str, case: FlowCase) -> None:
    table = ServiceTable.build(case.config)
    dest = node_ip if case.dest == NODE else case.dest
    got = []
    for i, (client, _) in enumerate(case.flows):
        backend = table.route(dest, case.port, case.protocol, node_ips={node_ip})
        assert backend is not None, "every case targets a Service address"
        picked = backend.pick(client, float(i))
        got.append(REJECT if picked is None else f"{picked[0]}:{picked[1]}")
    assert tuple(got) == case.expected


def test_remap_rewrites_every_address() -> None:
    case = next(c for c in CASES if c.name == "client ip affinity")
    moved = remap(
        case, {"127.10.0.1": "198.19.0.1", "127.0.1.1": "198.18.0.11", "127.0.0.11": "198.18.0.2"}
    )
    assert moved.dest == "198.19.0.1"
    assert moved.config.services[0].cluster_ips == ("198.19.0.1",)
    assert moved.flows[0] == ("198.18.0.2", "198.18.0.11:28080")
    assert ("198.18.0.11", 28080) in moved.endpoints()
