"""The nftables reconciler against a fake nft: transactions, rate limit, retry, drift repair."""

from __future__ import annotations

import math
import re

import pytest
import trio
import trio.testing

from mesh.component import Component
from mesh.config.proxy import ProxyConfig, ProxyEndpoint, ProxyPort, ProxyService
from mesh.proxy.conntrack import StaleEntry, stale_entries
from mesh.proxy.nft_render import RenderOptions, SupersededError, render
from mesh.proxy.nft_runner import FakeNftRunner
from mesh.proxy.nft_script import retired, transaction
from mesh.proxy.nft_sync import Step, Syncer, SyncPolicy, SyncScheduler
from mesh.proxy.nftables import NftablesProxy

POLICY = SyncPolicy(
    min_interval=1.0, retry_initial=1.0, retry_max=8.0, probe_interval=5.0, resync_interval=60.0
)


def cfg(
    version: int, *addresses: str, protocol: str = "TCP", affinity: bool = False
) -> ProxyConfig:
    eps = tuple(ProxyEndpoint(address=a, ports={"": 8080}) for a in addresses)
    svc = ProxyService(
        namespace="default",
        name="web",
        cluster_ips=("198.19.0.10",),
        ports=(ProxyPort(port=80, protocol=protocol),),
        endpoints=eps,
        session_affinity=affinity,
    )
    return ProxyConfig(version=version, services=(svc,))


# --- the pure scheduler ----------------------------------------------------------------


def test_nothing_before_the_first_config() -> None:
    s = SyncScheduler(POLICY)
    assert s.next_step(0.0) == Step("wait", math.inf)
    assert s.next_step(1000.0) == Step("wait", math.inf)
    s.config_changed()
    assert s.next_step(1000.0) == Step("sync", 1000.0)


def test_rate_limit_and_probe_and_resync() -> None:
    s = SyncScheduler(POLICY)
    s.config_changed()
    s.sync_started(10.0)
    s.sync_done(10.2, ok=True)
    s.config_changed()
    assert s.next_step(10.3) == Step("sync", 11.0)  # at most one sync per second
    s.sync_started(11.0)
    s.sync_done(11.1, ok=True)
    assert s.next_step(11.2) == Step("probe", 16.1)
    s.probe_done(16.1, ok=True)
    assert s.next_step(16.2) == Step("probe", 21.1)
    s.probe_done(21.1, ok=False)  # drift: sync at once
    assert s.next_step(21.2) == Step("sync", 21.2)


def test_periodic_resync_wins_over_probe() -> None:
    s = SyncScheduler(SyncPolicy(probe_interval=50.0, resync_interval=30.0))
    s.config_changed()
    s.sync_started(0.0)
    s.sync_done(0.0, ok=True)
    assert s.next_step(1.0) == Step("sync", 30.0)


def test_retry_backoff_is_exponential_and_capped() -> None:
    s = SyncScheduler(POLICY)
    s.config_changed()
    at = 0.0
    waits = []
    for _ in range(6):
        s.sync_started(at)
        s.sync_done(at, ok=False)
        step = s.next_step(at)
        assert step.kind == "sync"
        waits.append(step.at - at)
        at = step.at
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    s.sync_started(at)
    s.sync_done(at, ok=True)
    assert s.failures == 0


# --- transactions ----------------------------------------------------------------------


def test_first_sync_replaces_the_table_later_ones_update_it() -> None:
    one = render(cfg(1, "198.18.0.2", "198.18.0.3", affinity=True))
    two = render(cfg(2, "198.18.0.2", affinity=True))
    first = transaction(one, None)
    assert first.startswith("add table ip mesh-proxy\ndelete table ip mesh-proxy\ntable ip")
    update = transaction(two, one)
    lines = update.splitlines()
    t = "ip mesh-proxy"
    gone = sorted(one.chains - two.chains)
    assert len(gone) == 1 and gone[0].startswith("endpoint-")
    service = next(c for c in two.chains if c.startswith("service-"))
    # Only what changed: the service chain is flushed, the services chain gets its new
    # marker, the hairpin pair of the gone endpoint is deleted. The gone endpoint chain and
    # its affinity set stay untouched until the next sync (a packet of the old generation
    # may still be on its way through them).
    assert lines[:3] == [
        f"add table {t}",
        f"flush chain {t} {service}",
        f"flush chain {t} services",
    ]
    assert f"delete element {t} endpoint-hairpin {{ 198.18.0.3 . 198.18.0.3 }}" in lines
    assert not any(ln.startswith("add element") for ln in lines)
    assert gone[0] not in update
    stale_sets = set(one.affinity_sets) - set(two.affinity_sets)
    assert len(stale_sets) == 1 and not any(s in update for s in stale_sets)
    # The surviving affinity set is neither deleted nor declared again: its entries stay.
    assert not any(s in update for s in two.affinity_sets if not s.endswith("8080"))
    assert "flush table" not in update and "delete table" not in update
    # The next sync deletes what this one retired: the chain, then its affinity set.
    later = transaction(two, two, retired(two, one)).splitlines()
    assert later == [
        f"add table {t}",
        f"flush chain {t} {gone[0]}",
        f"delete chain {t} {gone[0]}",
        f"delete set {t} {stale_sets.pop()}",
    ]
    assert transaction(two, two) == f"add table {t}\n"


def test_a_changed_affinity_timeout_rewrites_the_table_in_place() -> None:
    one = render(cfg(1, "198.18.0.2", "198.18.0.3", affinity=True))
    svc = cfg(2, "198.18.0.2", affinity=True).services[0]
    two = render(
        ProxyConfig(version=2, services=(svc.model_copy(update={"affinity_timeout": 60}),))
    )
    lines = transaction(two, one).splitlines()
    assert lines[:2] == ["add table ip mesh-proxy", "flush table ip mesh-proxy"]
    assert "flush map ip mesh-proxy service-ips" in lines
    assert sorted(ln for ln in lines if ln.startswith("delete set")) == sorted(
        f"delete set ip mesh-proxy {s}" for s in one.affinity_sets
    )


def test_incremental_elements_are_diffed() -> None:
    one = render(cfg(1, "198.18.0.2", "198.18.0.3"))
    two = render(cfg(2, "198.18.0.2", "198.18.0.4"))
    lines = transaction(two, one).splitlines()
    t = "ip mesh-proxy"
    assert f"delete element {t} endpoint-hairpin {{ 198.18.0.3 . 198.18.0.3 }}" in lines
    assert f"add element {t} endpoint-hairpin {{ 198.18.0.4 . 198.18.0.4 }}" in lines
    assert not any("element" in ln and "service-ips" in ln for ln in lines)  # key unchanged


def test_shared_slots_stay_put_when_the_endpoint_count_does() -> None:
    opts = RenderOptions(dispatch="shared")
    a = ProxyService(
        namespace="a",
        name="a",
        cluster_ips=("198.19.0.1",),
        ports=(ProxyPort(port=80),),
        endpoints=tuple(ProxyEndpoint(address=f"198.18.0.{i}", ports={"": 80}) for i in (2, 3)),
    )
    b = a.model_copy(update={"name": "b", "cluster_ips": ("198.19.0.2",)})
    one = render(ProxyConfig(services=(a, b)), opts)
    grown = a.model_copy(update={"endpoints": (*a.endpoints, a.endpoints[0].model_copy(
        update={"address": "198.18.0.9"}))})  # fmt: skip
    b_chain = next(c for c in one.chains if "a/b/" in c)
    a_chain = next(c for c in one.chains if "a/a/" in c)
    assert one.slots == {a_chain: (1, 2), b_chain: (3, 2)}
    # Rendered from ``one``, ``two`` takes its state over: ``one`` keeps only its fields.
    two = render(ProxyConfig(services=(grown, b)), opts, one)
    with pytest.raises(SupersededError):
        one.slots  # noqa: B018
    assert two.slots == {a_chain: (5, 3), b_chain: (3, 2)}  # b keeps its slots
    lines = transaction(two, one).splitlines()
    assert not any(b_chain in ln for ln in lines)
    # a's old slots are deleted late, by the next transaction (a packet that ran a's old
    # chain during this commit may still look them up).
    assert not any(ln.startswith("delete element ip mesh-proxy endpoint-addrs") for ln in lines)
    later = transaction(two, two, retired(two, one)).splitlines()
    assert "delete element ip mesh-proxy endpoint-addrs { 1, 2 }" in later
    assert render(ProxyConfig(services=(grown, b)), opts).slots[a_chain] == (1, 3)


def test_stale_udp_entries() -> None:
    old = render(cfg(1, "198.18.0.2", "198.18.0.3", protocol="UDP")).udp
    new = render(cfg(2, "198.18.0.3", protocol="UDP")).udp
    assert stale_entries(None, new) == []
    assert stale_entries(old, new) == [StaleEntry("198.19.0.10", 80, ("198.18.0.2", 8080))]
    empty = render(cfg(3, protocol="UDP")).udp
    assert stale_entries(empty, new) == [StaleEntry("198.19.0.10", 80, None)]
    assert StaleEntry("198.19.0.10", 80, ("198.18.0.2", 8080)).conntrack_args() == [
        "-D",
        "-p",
        "udp",
        "--orig-dst",
        "198.19.0.10",
        "--orig-port-dst",
        "80",
        "--reply-src",
        "198.18.0.2",
        "--reply-port-src",
        "8080",
    ]
    assert render(cfg(1, "198.18.0.2")).udp == {}  # TCP needs no cleanup
    # IPv6 entries (the ip6 table's) name their family: a NodePort entry has no address.
    six = stale_entries({("", 30053): frozenset({("fd00:18::2", 53)})}, {}, family=6)
    assert six == [StaleEntry("", 30053, ("fd00:18::2", 53), 6)]
    assert six[0].conntrack_args()[:5] == ["-D", "-f", "ipv6", "-p", "udp"]


def test_two_tables_on_one_runner_drift_apart() -> None:
    """The fake keeps a marker per family, so the ip6 table's probe is its own."""
    fake = FakeNftRunner()
    v4 = Syncer(fake, RenderOptions())
    v6 = Syncer(fake, RenderOptions(family="ip6"))
    config = cfg(1, "198.18.0.2")
    assert v4.sync(config).ok and v6.sync(config).ok
    assert fake.scripts[-1].startswith("add table ip6 mesh-proxy")
    assert v4.probe() and v6.probe()
    fake.markers["ip6"] = None  # the ip6 table was deleted behind our back
    assert v4.probe() and not v6.probe()


def test_full_sync_period() -> None:
    now = [0.0]
    fake = FakeNftRunner()
    syncer = Syncer(fake, full_sync_period=100.0, clock=lambda: now[0])
    for version, at in enumerate((0.0, 50.0, 99.0, 100.0, 150.0, 199.0, 200.0), start=1):
        now[0] = at
        assert syncer.sync(cfg(version, f"198.18.0.{version}")).ok
    replaced = ["delete table" in script for script in fake.scripts]
    assert replaced == [True, False, False, True, False, False, True]


def test_syncer_falls_back_to_replace_after_a_failure() -> None:
    fake = FakeNftRunner()
    syncer = Syncer(fake)
    assert syncer.sync(cfg(1, "198.18.0.2")).ok
    fake.fail = 1
    result = syncer.sync(cfg(2, "198.18.0.3"))
    assert not result.ok and "injected" in result.error
    assert syncer.sync(cfg(2, "198.18.0.3")).ok
    assert "delete table" in fake.scripts[-1]
    assert syncer.sync(cfg(3, "198.18.0.4")).ok
    assert "delete table" not in fake.scripts[-1]  # the table is known: incremental
    assert syncer.sync(cfg(4, "198.18.0.4"), full=True).ok
    assert "delete table" in fake.scripts[-1]
    assert syncer.probe()
    fake.flush()
    assert not syncer.probe()
    assert syncer.applied is None  # the next sync rewrites the whole table


# --- the trio shell, in virtual time ---------------------------------------------------


def test_is_a_component() -> None:
    assert isinstance(NftablesProxy(runner=FakeNftRunner(), conntrack=False), Component)


def _ready(proxy: NftablesProxy) -> bool:
    return proxy.ready  # a call, so the type checker does not narrow it between awaits


async def _started(fake: FakeNftRunner, nursery: trio.Nursery) -> NftablesProxy:
    proxy = NftablesProxy(runner=fake, policy=POLICY, conntrack=False, threaded=False)
    await nursery.start(proxy.run)
    return proxy


async def test_no_sync_before_first_config(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeNftRunner()
    proxy = await _started(fake, nursery)
    await trio.sleep(3600)
    assert fake.scripts == [] and fake.listed == 0 and not _ready(proxy)
    proxy.apply(cfg(7, "198.18.0.2"))
    await trio.sleep(0.1)
    assert len(fake.scripts) == 1 and _ready(proxy)
    assert proxy.registry.get_sample_value("mesh_proxy_config_version") == 7
    assert proxy.config_json()["synced_version"] == 7


async def test_changes_are_rate_limited_and_coalesced(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeNftRunner()
    proxy = await _started(fake, nursery)
    proxy.apply(cfg(1, "198.18.0.2"))
    await trio.sleep(0.01)
    start = trio.current_time()
    for v in range(2, 12):  # ten changes in 0.5 s
        proxy.apply(cfg(v, "198.18.0.2", f"198.18.1.{v}"))
        await trio.sleep(0.05)
    assert len(fake.scripts) == 1
    await trio.sleep(start + 1.0 - trio.current_time() + 0.01)
    assert len(fake.scripts) == 2  # one sync for all ten, a second after the first
    assert "198.18.1.11" in fake.scripts[-1]
    assert proxy.registry.get_sample_value("mesh_proxy_syncs_total") == 2


async def test_failed_sync_is_retried(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeNftRunner(fail=3)
    proxy = await _started(fake, nursery)
    proxy.apply(cfg(1, "198.18.0.2"))
    await trio.sleep(0.01)
    assert not _ready(proxy) and fake.scripts == []
    await trio.sleep(1.0 + 2.0 + 4.0)  # backoff 1, 2, 4
    assert _ready(proxy) and len(fake.scripts) == 1
    assert proxy.registry.get_sample_value("mesh_proxy_sync_errors_total") == 3


async def test_drift_is_repaired(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeNftRunner()
    proxy = await _started(fake, nursery)
    proxy.apply(cfg(1, "198.18.0.2"))
    await trio.sleep(0.01)
    fake.delete()  # someone deleted the table
    await trio.sleep(POLICY.probe_interval + 0.5)
    assert len(fake.scripts) == 2 and fake.marker
    assert fake.scripts[-1].startswith("add table ip mesh-proxy\ndelete table")
    fake.flush()  # someone flushed it
    await trio.sleep(POLICY.probe_interval + 0.5)
    assert len(fake.scripts) == 3
    assert proxy.registry.get_sample_value("mesh_proxy_drift_repairs_total") == 2


async def test_periodic_resync(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeNftRunner()
    proxy = await _started(fake, nursery)
    proxy.apply(cfg(1, "198.18.0.2"))
    await trio.sleep(POLICY.resync_interval + 0.5)
    assert len(fake.scripts) == 2
    assert fake.listed >= 10  # probes in between


def test_syncer_deletes_retired_slots_one_sync_late() -> None:
    runner = FakeNftRunner()
    syncer = Syncer(runner, RenderOptions(dispatch="shared"))
    assert syncer.sync(cfg(1, "198.18.0.2", "198.18.0.3")).ok  # slots 1, 2
    assert syncer.sync(cfg(2, "198.18.0.2", "198.18.0.3", "198.18.0.4")).ok  # slots 3-5
    assert "delete element ip mesh-proxy endpoint-addrs" not in runner.scripts[-1]
    assert syncer.lingering.elements == {"endpoint-addrs": ["1", "2"]}
    assert syncer.sync(cfg(3, "198.18.0.2", "198.18.0.3")).ok  # slots 6, 7; 3-5 retire
    assert "delete element ip mesh-proxy endpoint-addrs { 1, 2 }" in runner.scripts[-1]
    assert syncer.lingering.elements == {"endpoint-addrs": ["3", "4", "5"]}
    runner.fail = 1
    assert not syncer.sync(cfg(4, "198.18.0.2")).ok
    assert not syncer.lingering  # the next sync replaces the table, lingering slots too
    assert syncer.sync(cfg(5, "198.18.0.2")).ok
    assert runner.scripts[-1].startswith("add table ip mesh-proxy\ndelete table ip mesh-proxy")


def test_one_service_edit_among_1000_sends_only_its_chain_and_elements() -> None:
    """The work per change, through the syncer: after the first sync replaced the table,
    an edit of one Service sends nft that Service's chain and elements only, and an
    unchanged config sends nothing but the table's name."""
    from tests.proxy.test_table_incremental import numbered

    fake = FakeNftRunner()
    syncer = Syncer(fake, RenderOptions(pod_cidr="10.0.0.0/8", dispatch="shared"))
    services = [numbered(i) for i in range(1000)]
    assert syncer.sync(ProxyConfig(version=1, services=tuple(services))).ok
    assert fake.scripts[-1].count("chain service-") == 1000
    assert syncer.applied is not None
    base = next(b for k, (b, _) in syncer.applied.slots.items() if "/svc-500/" in k)
    services[500] = numbered(500, endpoints=2)
    assert syncer.sync(ProxyConfig(version=2, services=tuple(services))).ok
    script = fake.scripts[-1]
    named = set(re.findall(r"bench/(svc-\d+)/", script))
    assert named == {"svc-500"}
    # Its chain is rewritten with the new round robin over two new slots; its three old
    # slots linger until the next sync, which deletes them and nothing else.
    assert "numgen inc mod 2 offset 3001" in script
    assert "add element ip mesh-proxy endpoint-addrs { 3001 : " in script
    assert len(script) < 1500
    assert syncer.sync(ProxyConfig(version=3, services=tuple(services))).ok
    assert fake.scripts[-1] == (
        "add table ip mesh-proxy\n"
        f"delete element ip mesh-proxy endpoint-addrs {{ {base}, {base + 1}, {base + 2} }}\n"
    )
    assert syncer.sync(ProxyConfig(version=4, services=tuple(services))).ok
    assert fake.scripts[-1] == "add table ip mesh-proxy\n"
