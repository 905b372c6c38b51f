"""The DNS half of a cluster's start, stage by stage: the DNS config's first translation and
the DNS server's indexes, for N Services with 3 Pods each (scale_bench's manifest).

The store is filled once (manifest -> source -> store -> endpoints plan, untimed); then each
stage runs ``--repeat`` times on the same input and its best CPU and wall seconds are printed:

- translate: a new DnsTranslator over a new snapshot (the first translation of ``mesh up``);
- zone index: ZoneIndex.build of that config, from nothing;
- fast index: FastIndex of that index;
- apply: DnsServer.apply of the config on a new server (both indexes and the rest).

Then the memory the DNS server keeps for the config (tracemalloc, one apply on a new server)
and the first-question cost of a few names. The collector is off during the stages, as in the
plane's start (mesh/gcpause.py). Figures on a shared machine are noisy: compare CPU seconds
of runs made side by side.

    python benchmarks/dns_stages.py [--services 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from scale_bench import manifest

from mesh.config.dns import DnsConfig
from mesh.control.plane import ControlPlane
from mesh.control.translate.dns import DnsTranslator
from mesh.dns import names
from mesh.dns.fast_index import FastIndex
from mesh.dns.responder import Forward
from mesh.dns.server import DnsServer
from mesh.dns.zone import ZoneIndex


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """The smallest CPU and wall seconds of ``repeat`` calls, and the last result."""
    cpu, wall, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        out = None  # the previous result is freed before the next is made
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        c1, w1 = time.process_time(), time.perf_counter()
        cpu, wall = min(cpu, c1 - c0), min(wall, w1 - w0)
    return cpu, wall, out


def query(name: str, qtype: int) -> bytes:
    wire = b"".join(bytes((len(p),)) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    return (
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        + wire
        + qtype.to_bytes(2, "big")
        + b"\0\1"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    opts = parser.parse_args()
    n = opts.services
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "all.yaml").write_text(manifest(n))
        plane = ControlPlane(Path(tmp), service_cidr="10.96.0.0/12", wanted=["dns"])
        assert plane.source is not None
        gc.disable()
        plane.source._apply_changes(plane.source._read_changes())
        plane.reconcile_endpoints()
        snap = plane.store.snapshot()
        gc.freeze()

    rows: list[tuple[str, float, float]] = []
    # A new snapshot each time, as the first translation gets (the store's snapshot of the
    # revision after the endpoint slices' writes): its sorted lists are not made yet.
    cpu, wall, config = best(
        lambda: DnsTranslator()(dataclasses.replace(snap, _lists={}, _indexes={})), opts.repeat
    )
    rows.append(("translate", cpu, wall))
    assert isinstance(config, DnsConfig)
    config = config.model_copy(update={"version": snap.revision})
    cpu, wall, index = best(lambda: ZoneIndex.build(config), opts.repeat)
    rows.append(("zone index", cpu, wall))
    cpu, wall, _ = best(lambda: FastIndex(index), opts.repeat)
    rows.append(("fast index", cpu, wall))

    def apply() -> DnsServer:
        server = DnsServer()
        server.apply(config)
        return server

    cpu, wall, server = best(apply, opts.repeat)
    rows.append(("apply", cpu, wall))
    del server
    total_cpu = rows[0][1] + rows[-1][1]
    print(
        f"N={n:>6}  DNS stages (best of {opts.repeat}, CPU/wall ms): "
        + ", ".join(f"{k} {c * 1000:.0f}/{w * 1000:.0f}" for k, c, w in rows)
        + f"; translate + apply {total_cpu * 1000:.0f} CPU ms",
        flush=True,
    )

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    server = apply()
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    live = server._live
    fast = live.fast
    assert fast is not None
    firsts = []
    for name, qtype in [
        (f"svc-{n // 2}.bench.svc.cluster.local", 1),
        (f"_http._tcp.svc-{n // 3}.bench.svc.cluster.local", 33),
        (names.reverse_name(config.services[n // 4].cluster_ips[0]), 12),
        ("bench.svc.cluster.local", 1),
    ]:
        data = query(name, qtype)
        t0 = time.perf_counter()
        reply = fast.reply(data)
        firsts.append(f"{name.split('.')[0]}/{qtype} {(time.perf_counter() - t0) * 1e6:.0f}")
        assert reply is not None and not isinstance(reply, Forward), name
    print(
        f"N={n:>6}  kept by the DNS server for the config: {kept / 2**20:.1f} MB "
        f"(tracemalloc); first question (us): " + ", ".join(firsts),
        flush=True,
    )


if __name__ == "__main__":
    main()
