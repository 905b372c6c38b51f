"""Incremental nftables syncs against a fresh full sync, in the kernel.

Seeded random edit sequences (conflicting addresses, NodePorts, both families, affinity,
traffic policies, Services coming and going) are synced one by one into a node namespace,
incrementally (each transaction carries only what changed); after every few edits, and once
more after a sync that deletes what the last one retired, the kernel's table must hold what
a fresh full sync of the same config gives in a second table. The listings (``nft -j``) are
compared up to what may differ: rule handles, the order of set elements, the sync marker,
and the numbering of the shared dispatch slots (each ``numgen ... offset N`` is replaced by
the endpoints its slots hold). Between edits, what the last sync retired may still linger
(chains no element reaches, their affinity sets, unused slots); it must be gone after the
settling sync.
"""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.config.proxy import ProxyConfig, ProxyService
from mesh.proxy import cluster_box
from mesh.proxy.cluster_box import ClusterBox
from mesh.proxy.nft_names import DISPATCH_MAP, DNAT_MAP, Family
from mesh.proxy.nft_render import RenderOptions
from mesh.proxy.nft_runner import SubprocessNftRunner
from mesh.proxy.nft_sync import Syncer
from tests.conftest import require_root, require_tool
from tests.proxy.netns_tools import unique_prefix
from tests.proxy.test_table_incremental import edit

_SLOT_MAPS = {"endpoint-dnat": DNAT_MAP, "endpoint-dispatch": DISPATCH_MAP}


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterBox]:
    require_root()
    require_tool("nft", "ip")
    state = tmp_path_factory.mktemp("diffbox") / "state"
    b = cluster_box.up(unique_prefix(), state_dir=state)
    try:
        yield b
    finally:
        cluster_box.down(state)


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in ("handle", "table")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def listing(box: ClusterBox, family: str, table: str) -> dict[str, Any]:
    """The table's content in a form two equal tables share (see the module doc)."""
    out = subprocess.run(
        box.node_argv(["nft", "-j", "list", "table", family, table]),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    items = _strip(json.loads(out)["nftables"])
    slots: dict[str, dict[int, Any]] = {DNAT_MAP: {}, DISPATCH_MAP: {}}
    for item in items:
        if "map" in item and item["map"]["name"] in slots:
            slots[item["map"]["name"]] = {k: v for k, v in item["map"].get("elem", [])}
    used: dict[str, set[int]] = {DNAT_MAP: set(), DISPATCH_MAP: set()}
    rules: dict[str, list[str]] = {}
    objects: list[str] = []
    for item in items:
        if "rule" in item:
            rule = item["rule"]
            text = json.dumps(rule["expr"], sort_keys=True)
            target = next((e["goto"]["target"] for e in rule["expr"] if "goto" in e), None)
            if target in _SLOT_MAPS:
                rule = _resolve(rule, slots[_SLOT_MAPS[target]], used[_SLOT_MAPS[target]])
                text = json.dumps(rule["expr"], sort_keys=True)
            if rule.get("comment", "").startswith("sync "):
                rule.pop("comment")
                text = json.dumps(rule["expr"], sort_keys=True)
            rules.setdefault(rule["chain"], []).append(text)
            continue
        if "table" in item or "metainfo" in item:
            continue
        for kind in ("set", "map"):
            if kind in item:
                if item[kind]["name"] in slots:
                    item[kind].pop("elem", None)
                elif "elem" in item[kind]:
                    item[kind]["elem"] = sorted(item[kind]["elem"], key=json.dumps)
        objects.append(json.dumps(item, sort_keys=True))
    unused = {name: sorted(set(slots[name]) - used[name]) for name in slots}
    return {"objects": sorted(objects), "rules": rules, "unused": unused}


def _resolve(rule: dict[str, Any], slots: dict[int, Any], used: set[int]) -> dict[str, Any]:
    """``numgen inc mod N offset B`` -> the N endpoints (or chains) slots B.. hold."""

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if "numgen" in value and "offset" in value["numgen"]:
                n, base = value["numgen"]["mod"], value["numgen"]["offset"]
                used.update(range(base, base + n))
                return {"round robin": [slots.get(base + i) for i in range(n)]}
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return {**rule, "expr": walk(rule["expr"])}


def _fresh(box: ClusterBox, opts: RenderOptions, config: ProxyConfig) -> dict[str, Any]:
    ref = RenderOptions(**{**_fields(opts), "table": "mesh-ref"})
    syncer = Syncer(SubprocessNftRunner(box.node), ref)
    result = syncer.sync(config, full=True)
    assert result.ok, result.error
    return listing(box, opts.family, "mesh-ref")


def _fields(opts: RenderOptions) -> dict[str, Any]:
    return {f: getattr(opts, f) for f in opts.__dataclass_fields__}


OPTIONS: list[tuple[Family, str]] = [("ip", "shared"), ("ip", "inline"), ("ip6", "shared")]


@pytest.mark.parametrize(("family", "dispatch"), OPTIONS, ids=[f"{f}-{d}" for f, d in OPTIONS])
@pytest.mark.parametrize("seed", range(3))
def test_random_incremental_syncs_equal_a_fresh_full_sync(
    box: ClusterBox, family: Family, dispatch: str, seed: int
) -> None:
    pod_cidr = "127.0.0.0/8" if family == "ip" else "fd00::/64"
    opts = box.render_options(pod_cidr=pod_cidr, dispatch=dispatch, family=family)
    syncer = Syncer(SubprocessNftRunner(box.node), opts)
    rng = random.Random(seed)
    services: list[ProxyService] = []
    config = ProxyConfig(version=0, node_name="n1")
    assert syncer.sync(config, full=True).ok
    for step in range(1, 25):
        edit(rng, services)
        config = ProxyConfig(version=step, node_name="n1", services=tuple(services))
        result = syncer.sync(config)
        assert result.ok, (step, result.error)
        assert syncer.last_full < float("inf") and result.ruleset is not None
        assert result.ruleset.delta is not None  # incremental, not a replaced table
        if step % 6 == 0:
            assert_lingering_only(listing(box, family, opts.table), _fresh(box, opts, config))
    assert syncer.sync(config).ok  # deletes what the last edit retired
    kernel, fresh = listing(box, family, opts.table), _fresh(box, opts, config)
    # Unused slots: only those of a Service with two ports of one name and protocol (they
    # share a chain; a full render gives the first port slots of its own, left unused).
    unused = kernel.pop("unused"), fresh.pop("unused")
    assert sum(map(len, unused[0].values())) <= sum(map(len, unused[1].values()))
    assert kernel == fresh


def assert_lingering_only(kernel: dict[str, Any], fresh: dict[str, Any]) -> None:
    """The kernel holds the fresh table, plus at most what the last sync retired and the
    next one deletes: Service and endpoint chains no element reaches any more, their
    affinity sets, and unused dispatch slots."""
    assert set(fresh["objects"]) <= set(kernel["objects"])
    extra = [json.loads(o) for o in set(kernel["objects"]) - set(fresh["objects"])]
    retired = {o["chain"]["name"] for o in extra if "chain" in o}
    assert all("/" in c for c in retired), retired  # never a base or dispatch chain
    assert all("chain" in o or o.get("set", {}).get("name", "").startswith("affinity-")
               for o in extra), extra  # fmt: skip
    live = {c: r for c, r in kernel["rules"].items() if c not in retired}
    assert live == fresh["rules"]


def test_the_box_is_ours(box: ClusterBox, tmp_path: Path) -> None:
    """Only the tables this module made live in its node namespace."""
    out = subprocess.run(
        box.node_argv(["nft", "list", "tables"]), capture_output=True, text=True, timeout=30
    ).stdout
    assert set(out.splitlines()) <= {
        "table ip mesh-proxy",
        "table ip6 mesh-proxy",
        "table ip mesh-ref",
        "table ip6 mesh-ref",
    }
