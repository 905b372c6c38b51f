"""The nftables renderer reuses the pieces of unchanged Services, and gives the same ruleset.

Differential: the seeded random edit sequences of the table's test (conflicts, NodePorts,
both families, affinity, traffic policies), rendered under several option sets by a chain
that reuses pieces and one that renders every Service again, with the previous ruleset for
both (the shared dispatch slots carry over): every field of the two rulesets, text included,
must be equal after every step. Then the work: an edit of one Service among 1,000 renders
that Service only (counted through the ``_render_service`` seam).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from mesh.config.proxy import ProxyConfig, ProxyService
from mesh.proxy import nft_render
from mesh.proxy.nft_render import RenderOptions, Ruleset, render
from tests.proxy.test_table_incremental import edit, numbered

OPTIONS = [
    RenderOptions(dispatch="shared", pod_cidr="127.0.0.0/8"),
    RenderOptions(dispatch="inline"),
    RenderOptions(family="ip6", dispatch="shared", pod_cidr="fd00::/64"),
    RenderOptions(dispatch="shared", node_port_addresses=("127.0.0.1", "::1")),
]


def fields(ruleset: Ruleset) -> dict[str, Any]:
    return {
        f.name: getattr(ruleset, f.name)
        for f in dataclasses.fields(ruleset)
        if f.name not in ("pieces", "pieces_for")
    }


@pytest.mark.parametrize("options", OPTIONS, ids=["shared", "inline", "ip6", "node-addresses"])
@pytest.mark.parametrize("seed", range(15))
def test_reusing_pieces_renders_what_rendering_everything_renders(
    seed: int, options: RenderOptions
) -> None:
    rng = random.Random(seed)
    services: list[ProxyService] = []
    node = "n1"
    reused: Ruleset | None = None
    whole: Ruleset | None = None
    for step in range(1, 40):
        edit(rng, services)
        if rng.random() < 0.05:
            node = "n2" if node == "n1" else "n1"
        config = ProxyConfig(version=step, node_name=node, services=tuple(services))
        reused = render(config, options, reused)
        whole = render(config, options, whole, reuse=False)
        assert fields(reused) == fields(whole)


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the Services rendered, through the module's seam."""
    made: list[str] = []
    real = nft_render._render_service

    def counting(out: Any, node_name: str, svc: ProxyService, opts: RenderOptions) -> None:
        made.append(svc.name)
        real(out, node_name, svc, opts)

    monkeypatch.setattr(nft_render, "_render_service", counting)
    return made


def test_an_edit_of_one_service_among_1000_renders_one(renders: list[str]) -> None:
    services = [numbered(i) for i in range(1000)]
    # From nothing every Service is rendered straight; the next render makes the pieces.
    first = render(ProxyConfig(version=1, services=tuple(services)))
    first = render(ProxyConfig(version=1, services=tuple(services)), previous=first)
    assert len(renders) == 2000
    renders.clear()
    services[500] = numbered(500, endpoints=2)
    second = render(ProxyConfig(version=2, services=tuple(services)), previous=first)
    assert renders == ["svc-500"]
    assert second.body != first.body
    renders.clear()
    # Other options (or another node name) render everything again.
    render(
        ProxyConfig(version=3, services=tuple(services)),
        RenderOptions(pod_cidr="10.0.0.0/8"),
        second,
    )
    assert len(renders) == 1000
