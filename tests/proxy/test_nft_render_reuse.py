"""The nftables renderer updates its table in place, in proportion to the change.

Differential: the seeded random edit sequences of the table's test (conflicts, NodePorts,
both families, affinity, traffic policies), rendered under several option sets by a chain
of renders, each from the one before (only the changed Services are rendered again and
swapped in), and by a render from nothing: the two tables must hold the same content after
every step, up to the numbering of the shared dispatch slots (an update keeps the slots of
chains whose endpoint count stays; the rendering from nothing numbers them afresh), and the
delta each update carried must be exactly the difference from the table before. Then the
work: an edit of one Service among 1,000 renders that Service only (counted through the
``_render_service`` seam) and changes only its chains and elements.
"""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

from mesh.config.proxy import ProxyConfig, ProxyService
from mesh.proxy import nft_render
from mesh.proxy.nft_merge import diff_dicts
from mesh.proxy.nft_names import DISPATCH_MAP, DNAT_MAP
from mesh.proxy.nft_render import RenderOptions, Ruleset, render
from mesh.proxy.nft_script import transaction
from tests.proxy.test_table_incremental import edit, numbered

OPTIONS = [
    RenderOptions(dispatch="shared", pod_cidr="127.0.0.0/8"),
    RenderOptions(dispatch="inline"),
    RenderOptions(family="ip6", dispatch="shared", pod_cidr="fd00::/64"),
    RenderOptions(dispatch="shared", node_port_addresses=("127.0.0.1", "::1")),
]
_OFFSET = re.compile(r"numgen inc mod (\d+) offset (\d+) goto (\S+)")
_SLOT_MAPS = {"endpoint-dnat": DNAT_MAP, "endpoint-dispatch": DISPATCH_MAP}


def canonical(ruleset: Ruleset) -> dict[str, Any]:
    """The table's content with each shared dispatch slot range replaced by what it holds
    (a Service with two ports of one name and protocol leaves the first port's slots
    unused, in both renders alike: its two ports share one chain)."""
    elements = ruleset.element_sets
    used: dict[str, set[str]] = {DNAT_MAP: set(), DISPATCH_MAP: set()}

    def resolve(m: re.Match[str]) -> str:
        n, base, chain = int(m[1]), int(m[2]), m[3]
        slots = [str(base + i) for i in range(n)]
        used[_SLOT_MAPS[chain]].update(slots)
        return f"round robin over {[elements[_SLOT_MAPS[chain]][s] for s in slots]}"

    chains = {name: _OFFSET.sub(resolve, block) for name, block in ruleset.chain_blocks.items()}
    for name, keys in used.items():
        assert keys <= set(elements[name]), f"{name} misses slots a chain uses"
    return {
        "chains": chains,
        "elements": {k: v for k, v in elements.items() if k not in used},
        "affinity": dict(ruleset.affinity_sets),
        "udp": dict(ruleset.udp),
        # Elements but the slots (the duplicate ports above may take one or two ranges).
        "counts": (
            ruleset.rules,
            ruleset.elements - sum(len(elements[name]) for name in used),
            ruleset.service_ports,
            ruleset.endpoints,
        ),
        "static": (ruleset.static, ruleset.table, ruleset.family),
    }


def snapshot(ruleset: Ruleset) -> dict[str, Any]:
    """A copy of the content (the state moves on with the next render)."""
    return {
        "chains": dict(ruleset.chain_blocks),
        "elements": {k: dict(v) for k, v in ruleset.element_sets.items()},
        "affinity": dict(ruleset.affinity_sets),
        "udp": dict(ruleset.udp),
    }


@pytest.mark.parametrize("options", OPTIONS, ids=["shared", "inline", "ip6", "node-addresses"])
@pytest.mark.parametrize("seed", range(15))
def test_updating_in_place_renders_what_rendering_from_nothing_renders(
    seed: int, options: RenderOptions
) -> None:
    rng = random.Random(seed)
    services: list[ProxyService] = []
    node = "n1"
    updated: Ruleset | None = None
    for step in range(1, 40):
        edit(rng, services)
        if rng.random() < 0.05:
            node = "n2" if node == "n1" else "n1"
        config = ProxyConfig(version=step, node_name=node, services=tuple(services))
        before = snapshot(updated) if updated is not None else None
        previous = updated
        updated = render(config, options, updated)
        fresh = render(config, options)
        assert canonical(updated) == canonical(fresh)
        if updated.delta is None:
            continue  # rendered from nothing (the first step, another node name)
        assert previous is not None and before is not None
        after = snapshot(updated)
        assert updated.delta.chains == diff_dicts(before["chains"], after["chains"])
        assert updated.delta.affinity == diff_dicts(before["affinity"], after["affinity"])
        assert updated.delta.udp == diff_dicts(before["udp"], after["udp"])
        for name, elems in after["elements"].items():
            want = diff_dicts(before["elements"][name], elems)
            assert updated.delta.elements.get(name, {}) == want, name
        if not updated.delta:
            assert updated.marker == previous.marker  # nothing changed, nothing to write
        else:
            assert updated.marker != previous.marker


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


@pytest.mark.parametrize("dispatch", ["shared", "inline"])
def test_an_edit_of_one_service_among_1000_renders_and_changes_only_it(
    renders: list[str], dispatch: str
) -> None:
    opts = RenderOptions(dispatch=dispatch, pod_cidr="10.0.0.0/8")  # type: ignore[arg-type]
    services = [numbered(i) for i in range(1000)]
    first = render(ProxyConfig(version=1, services=tuple(services)), opts)
    assert len(renders) == 1000
    renders.clear()
    services[500] = numbered(500, endpoints=2)
    second = render(ProxyConfig(version=2, services=tuple(services)), opts, first)
    assert renders == ["svc-500"]
    assert second.delta is not None
    changed = set(second.delta.chains)
    assert changed and all("/svc-500/" in c for c in changed)
    keys = {k for elems in second.delta.elements.values() for k in elems}
    # Its address and verdict stay; with shared dispatch its chain's three slots go (late,
    # see nft_script) and two new ones come: nothing of the 999 others.
    assert "service-ips" not in second.delta.elements
    assert len(keys) == (5 if dispatch == "shared" else 0)
    script = transaction(second, first)
    assert "svc-500" in script
    assert not re.search(r"svc-(?!500/)\d+/", script)  # no other Service's chain
    assert len(script) < 2000
    renders.clear()
    # Other options (or another node name) render everything again.
    render(ProxyConfig(version=3, services=tuple(services)), RenderOptions(), second)
    assert len(renders) == 1000


def test_a_service_given_twice_renders_from_nothing_and_back() -> None:
    """Two records of one Service (a config no source should send): rendered from nothing,
    the first by order winning the shared keys as before; the next render starts over too,
    and once the duplicate is gone updates resume."""
    services = [numbered(i) for i in range(5)]
    one = render(ProxyConfig(version=1, services=tuple(services)))
    twice = (*services, numbered(2, endpoints=1))
    two = render(ProxyConfig(version=2, services=twice), previous=one)
    assert two.delta is None and not two.state.updatable
    assert canonical(two) == canonical(render(ProxyConfig(version=2, services=twice)))
    three = render(ProxyConfig(version=3, services=tuple(services)), previous=two)
    assert three.delta is None  # started over
    four = render(ProxyConfig(version=4, services=tuple(services[:4])), previous=three)
    assert four.delta is not None and all("/svc-4/" in c for c in four.delta.chains)
    assert canonical(four) == canonical(render(ProxyConfig(services=tuple(services[:4]))))
    # The same record object twice is caught too.
    five = render(ProxyConfig(version=5, services=(*services[:4], services[0])), previous=four)
    assert five.delta is None
