"""The wire-form fast path of the DNS server in isolation: build time, memory, CPU per query.

For a generated cluster (``--services``, as dns_bench.py makes it): the time to build the
ZoneIndex and the FastIndex from it, the memory the FastIndex holds (tracemalloc), then CPU
seconds (time.process_time) over ``--packets`` distinct query packets, for these workloads:
first-time names that do not exist (NXDOMAIN), Service names (A), Service names in mixed case
(a resolver's 0x20 randomisation) and the same through the general dnslib path (on a tenth of
the packets: it is slow). No sockets: this is the cost of
answering, which the UDP loop adds its recvfrom and sendto to.

Usage: python benchmarks/dns_fast_micro.py [--services 10000] [--packets 100000]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from dnslib import DNSRecord

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dns_bench import make_config

from mesh.dns.fast_index import FastIndex
from mesh.dns.responder import Responder
from mesh.dns.zone import ZoneIndex


def per_query(answer: Callable[[bytes], object], packets: list[bytes]) -> float:
    start = time.process_time()
    for p in packets:
        answer(p)
    return (time.process_time() - start) / len(packets)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--packets", type=int, default=100_000)
    opts = p.parse_args()
    config = make_config(opts.services)
    start = time.process_time()
    index = ZoneIndex.build(config)
    zone_s = time.process_time() - start
    start = time.process_time()
    fast = FastIndex(index)
    fast_s = time.process_time() - start
    tracemalloc.start()  # a second build, traced: tracing slows it several times
    traced = FastIndex(index)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del traced
    print(
        f"{opts.services} services, {len(fast)} names: ZoneIndex {zone_s:.2f} s, "
        f"FastIndex {fast_s:.2f} s (CPU), FastIndex memory {held / 2**20:.1f} MiB"
    )

    def packets(fmt: str) -> list[bytes]:
        return [
            bytes(DNSRecord.question(fmt.format(i=i, s=i % opts.services, ns=i % 10)).pack())
            for i in range(opts.packets)
        ]

    nxdomain = packets("q{i}.ns{ns}.svc.cluster.local")
    service = packets("svc{s}.ns{ns}.svc.cluster.local")
    mixed = packets("SvC{s}.nS{ns}.sVc.cluster.LOCAL")
    general = Responder(index)
    tenth = max(1, opts.packets // 10)
    for label, answer, pkts in (
        ("fast, NXDOMAIN", fast.answer, nxdomain),
        ("fast, Service A", fast.answer, service),
        ("fast, mixed case A", fast.answer, mixed),
        ("general, NXDOMAIN", general.handle, nxdomain[:tenth]),
        ("general, Service A", general.handle, service[:tenth]),
        ("general, mixed case", general.handle, mixed[:tenth]),
    ):
        print(
            f"{label:20s} {per_query(answer, pkts) * 1e6:7.2f} us CPU/query ({len(pkts)} packets)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
