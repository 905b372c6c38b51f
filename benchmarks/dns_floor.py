"""What a query costs in CPython at the least, against what our paths cost: one process,
loopback sockets, no trio, no other server.

dns_bench.py measures whole servers; this one asks how low a Python server could go. Each
round sends ``BURST`` queries at once, then times the server's side only (the client and the
upstream are played by this process between the timed parts), and reports the 10th
percentile of the per-query CPU time of this thread over the rounds (a shared machine adds
noise; the low percentile is the steadier figure, and time given to other processes is not
counted):

- ``floor repeated``: ``recvfrom``, one dict lookup, ``sendto``: the least a cached answer
  can cost (our wire-cache hit is this plus a counter);
- ``floor relay``: ``recvfrom``, a new ID (a counter), ``send`` upstream; then ``epoll``, ``recvfrom`` of
  the reply, ID lookup, ``sendto`` to the client: the least a forwarded query can cost, with
  no check of the reply, no cache and no metrics;
- ``ours forward``: our server's forwarding path (the FastIndex's parse, the exchange, the
  reply's checks, both caches, the relay, metrics) on the same sockets;
- ``ours <workload>``: the server's own UDP loop (``DnsServer._drain``, what runs per batch)
  on dns_bench.py's query files: ``repeated`` (a wire-cache hit), ``nxdomain`` (distinct
  names in the zone, none of which exists), ``mixed`` (search-path expansions and Services),
  ``forward-cached`` (1,000 external names, answered from the answer cache after one pass).

Syscalls alone: the relay makes two ``recvfrom``, a ``send`` and a ``sendto`` (plus a share
of ``epoll`` and of a ``recvfrom`` that finds nothing) where a cache hit makes one of each.

``--steps``: each step of a forwarded query alone (its pure parts, the collector off);
``--calls``: the Python calls, C calls and bytecodes per query of each path.

Usage: python benchmarks/dns_floor.py [--rounds 1500] [--steps] [--calls] [--loop-only]
"""

from __future__ import annotations

import argparse
import gc
import os
import select
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from dnslib import RR, A, DNSRecord

from mesh.dns.outbound import Outbound
from mesh.dns.server import DnsServer
from mesh.dns.upstream import Forwarder
from mesh.dns.zone import ZoneIndex

sys.path.insert(0, os.path.dirname(__file__))
from dns_bench import WORKLOADS, make_config

BURST = 64
HOST = "127.0.0.1"


def udp(bound: bool = True, blocking: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    if bound:
        sock.bind((HOST, 0))
    sock.setblocking(blocking)
    return sock


def queries(n: int) -> list[bytes]:
    return [bytes(DNSRecord.question(f"n{i}.bench.example", "A").pack()) for i in range(n)]


def answer(query: bytes) -> bytes:
    reply = DNSRecord.parse(query).reply()
    reply.add_answer(RR(reply.q.qname, rdata=A("192.0.2.1"), ttl=300))
    return bytes(reply.pack())


def p10(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 10] * 1e6


def repeated_floor(rounds: int) -> float:
    client, server = udp(), udp(blocking=False)
    q = queries(1)[0]
    cache = {q[2:]: answer(q)[2:]}
    samples = []
    for _ in range(rounds):
        for _ in range(BURST):
            client.sendto(q, server.getsockname())
        start = time.thread_time()
        for _ in range(BURST):
            data, addr = server.recvfrom(4096)
            server.sendto(data[:2] + cache[data[2:]], addr)
        samples.append((time.thread_time() - start) / BURST)
        for _ in range(BURST):
            client.recvfrom(4096)
    return p10(samples)


def relay_floor(rounds: int) -> float:
    client, server, up = udp(), udp(blocking=False), udp()
    out = udp(bound=False, blocking=False)
    out.connect(up.getsockname())
    poller = select.epoll()
    poller.register(out.fileno(), select.EPOLLIN)
    qs = queries(rounds * BURST)
    pending: dict[bytes, tuple[bytes, tuple[str, int]]] = {}
    samples, k = [], 0
    for _ in range(rounds):
        for _ in range(BURST):
            client.sendto(qs[k], server.getsockname())
            k += 1
        start = time.thread_time()
        for i in range(BURST):
            data, addr = server.recvfrom(4096)
            qid = i.to_bytes(2, "big")  # a counter: the floor, not a safe ID
            pending[qid] = (data[:2], addr)
            out.send(qid + data[2:])
        half = time.thread_time() - start
        for _ in range(BURST):  # the upstream (untimed)
            q, source = up.recvfrom(4096)
            up.sendto(answer(q), source)
        time.sleep(0.0005)
        start = time.thread_time()
        poller.poll(0)
        while True:
            try:
                data = out.recv(4096)
            except BlockingIOError:
                break
            client_id, addr = pending.pop(data[:2])
            server.sendto(client_id + data[2:], addr)
        samples.append((half + time.thread_time() - start) / BURST)
        for _ in range(BURST):
            client.recvfrom(4096)
    return p10(samples)


def ours_forward(rounds: int, counting: bool = False) -> Any:
    """Our path, driven as the server's loop drives it, with its own exchanges' sockets;
    ``counting``: the calls and bytecodes per query of the last round, instead of times."""
    client, server, up = udp(), udp(blocking=False), udp()
    dns = DnsServer((HOST, 0), upstreams=[up.getsockname()])
    dns.apply(make_config(300))
    forwarder = Forwarder([up.getsockname()], metrics=dns.metrics, cache=dns._forward_cache)
    dns._forwarder = dns._path.forwarder = forwarder
    outbound = Outbound(
        forwarder, server.fileno(), dns._relay.spawn_tcp, answer_udp=dns._relay.udp_answered
    )
    dns._relay.outbound = forwarder.outbound = outbound
    qs = queries(rounds * BURST)
    samples, k = [], 0
    for r in range(rounds):
        for _ in range(BURST):
            client.sendto(qs[k], server.getsockname())
            k += 1
        counter = Counting()
        last = counting and r == rounds - 1
        if last:
            counter.start()
        start = time.thread_time()
        dns._drain(server, BURST)  # the loop's lookups, then the FastIndex, then the relay
        half = time.thread_time() - start
        counter.stop()
        for _ in range(BURST):
            q, source = up.recvfrom(4096)
            up.sendto(answer(q), source)
        time.sleep(0.0005)
        if last:
            counter.start()
        start = time.thread_time()
        outbound.poll(time.monotonic())
        samples.append((half + time.thread_time() - start) / BURST)
        counter.stop()
        if last:
            outbound.close()
            return counter.per(BURST)
        for _ in range(BURST):
            client.recvfrom(4096)
    outbound.close()
    return p10(samples)


class Counting:
    """Python function calls, calls of C functions, and bytecodes executed while on."""

    def __init__(self) -> None:
        self.calls = self.c_calls = self.opcodes = 0

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            self.calls += 1
        elif event == "c_call":
            self.c_calls += 1

    def _trace(self, frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        if event == "opcode":
            self.opcodes += 1
        return self._trace

    def start(self) -> None:
        sys.setprofile(self._profile)
        sys.settrace(self._trace)

    def stop(self) -> None:
        sys.settrace(None)
        sys.setprofile(None)

    def per(self, n: int) -> tuple[float, float, float]:
        return (self.calls - 1) / n, self.c_calls / n, self.opcodes / n


def workload_queries(workload: str, count: int) -> list[bytes]:
    """dns_bench.py's query file of ``workload`` as packets, cycled to ``count``."""
    config = make_config(300)
    index = ZoneIndex.build(config)
    names = sorted(name.rstrip(".") for name, _ in index.items() if "_" not in name)
    lines = WORKLOADS[workload].queries(config, names)[:count]
    packets = []
    for line in lines[:count]:
        name, qtype = line.split()
        packets.append(bytes(DNSRecord.question(name, qtype).pack()))
    return [packets[i % len(packets)] for i in range(count)]


def ours_loop(workload: str, rounds: int, counting: bool = False) -> Any:
    """The server's UDP loop, one ``_drain`` of a burst per round, after a warm-up pass over
    the workload's names (none for ``nxdomain``); an upstream played here answers what the
    loop forwards (the warm-up pass of ``forward-cached``)."""
    client, server, up = udp(), udp(blocking=False), udp()
    dns = DnsServer((HOST, 0), upstreams=[up.getsockname()])
    dns.apply(make_config(300))
    forwarder = Forwarder([up.getsockname()], metrics=dns.metrics, cache=dns._forward_cache)
    dns._forwarder = dns._path.forwarder = forwarder
    outbound = Outbound(
        forwarder, server.fileno(), dns._relay.spawn_tcp, answer_udp=dns._relay.udp_answered
    )
    dns._relay.outbound = forwarder.outbound = outbound
    # a first pass over the whole file (as dnsperf makes over and over) unless every name
    # must be new; forwarded names until the answer cache holds each
    warm = [] if workload == "nxdomain" else sorted(set(workload_queries(workload, 300_000)))
    if workload.startswith("forward"):
        warm += warm  # the second pass makes the answer cache's memos (once a second each)
    for k in range(0, len(warm), BURST):
        for q in warm[k : k + BURST]:
            client.sendto(q, server.getsockname())
        got = dns._drain(server, BURST)
        deadline = time.monotonic() + 1.0
        while any(port.pending for port in outbound.ports.values()):
            try:
                q, source = up.recvfrom(4096, socket.MSG_DONTWAIT)
                up.sendto(answer(q), source)
            except BlockingIOError:
                outbound.poll(time.monotonic())
            if time.monotonic() > deadline:
                break
        for _ in range(got):
            client.recvfrom(4096)
    qs = workload_queries(workload, rounds * BURST)
    samples = []
    for r in range(rounds):
        k = r * BURST % len(qs)
        for q in qs[k : k + BURST]:
            client.sendto(q, server.getsockname())
        if counting:  # deterministic: calls and bytecodes, not time
            counter = Counting()
            counter.start()
            got = dns._drain(server, BURST)
            counter.stop()
            samples.append(counter.per(got))
        else:
            start = time.thread_time()  # this thread's CPU: time given to others is not ours
            got = dns._drain(server, BURST)
            samples.append((time.thread_time() - start) / got)
        for _ in range(got):
            client.recvfrom(4096)
    if counting:
        outbound.close()
        return samples[-1]
    outbound.close()
    return p10(samples)


def steps(n: int = 20000) -> list[tuple[str, float]]:
    """The CPU of each step of a forwarded query, alone, over ``n`` distinct names (the
    pure parts: no socket, no metrics; the collector off, as its share depends on what else
    lives: ``ours forward`` has it). In the order the server runs them: the query's
    classification, the exchange's creation, the reply's check and layout, the question
    cache's put, the client's reply."""
    from mesh.dns.forward_cache import ForwardCache
    from mesh.dns.layout import Layout, relay, scan
    from mesh.dns.outbound import Exchange
    from mesh.dns.pool import ONE
    from mesh.dns.responder import Forward
    from mesh.dns.upstream import Answer, new_id

    dns = DnsServer((HOST, 0), upstreams=[])
    dns.apply(make_config(300))
    fast = dns._live.fast
    assert fast is not None
    qs = queries(n)
    replies = [answer(q) for q in qs]
    fwds: list[Forward] = []
    for q in qs:
        fwd = fast.reply(q)
        assert isinstance(fwd, Forward)
        fwds.append(fwd)
    keys = [f.wire_name + b"\x00\x01\x00\x01\x00" for f in fwds]
    exchanges = [Exchange(k, k[:-1], False, ONE) for k in keys]
    for ex in exchanges:
        ex.wire = new_id() + ex.body
    layouts: list[Layout] = []
    for r, ex in zip(replies, exchanges, strict=True):
        found = scan(r, ex.qend)
        assert found is not None
        layouts.append(found)
    cache = ForwardCache(10_000)
    out: list[tuple[str, float]] = []

    def timed(name: str, run: Callable[[], object]) -> None:
        gc.collect()
        gc.disable()
        start = time.thread_time()
        run()
        out.append((name, (time.thread_time() - start) / n * 1e6))
        gc.enable()

    both = list(zip(fwds, qs, strict=True))
    pairs = list(zip(replies, exchanges, strict=True))
    fours = list(zip(keys, replies, layouts, exchanges, strict=True))
    timed("classify (FastIndex.reply -> Forward)", lambda: [fast.reply(q) for q in qs])
    timed(
        "key + Exchange",
        lambda: [
            Exchange(f.wire_name + q[-4:] + b"\x00", f.wire_name + q[-4:], False, ONE)
            for f, q in both
        ],
    )
    timed("new_id + wire", lambda: [new_id() + ex.body for ex in exchanges])
    timed(
        "the reply's question check + scan",
        lambda: [r[12 : ex.qend] == ex.question and scan(r, ex.qend) for r, ex in pairs],
    )
    timed(
        "keep_for + question cache put",
        lambda: [
            cache.put(k, r, lay.ttls, ex.qend, ttl=cache.keep_for(lay), now=0.0)
            for k, r, lay, ex in fours
        ],
    )
    timed("Answer", lambda: [Answer(r, lay, lay.ttls, 300) for _, r, lay, _ in fours])
    timed(
        "relay (client's reply)",
        lambda: [
            relay(q, ex.qend, r, lay, edns=False, limit=512, advertise=1232)
            for q, (_, r, lay, ex) in zip(qs, fours, strict=True)
        ],
    )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=1500)
    p.add_argument(
        "--loop-only", action="store_true", help="only the server loop's workloads (ours ...)"
    )
    p.add_argument(
        "--calls",
        action="store_true",
        help="the loop's Python calls, C calls and bytecodes per query, instead of times",
    )
    p.add_argument(
        "--steps", action="store_true", help="the CPU of each step of a forwarded query, alone"
    )
    opts = p.parse_args()
    rounds = max(20, opts.rounds)
    if opts.steps:
        print("per forwarded query, each step alone (thread CPU, warm):")
        for name, t in steps():
            print(f"  {name:40s} {t:6.2f} us")
        return 0
    if opts.calls:
        print("per query in the server loop (one burst of 64 after the warm-up):")
        for w in ("repeated", "nxdomain", "mixed", "forward-cached"):
            calls, c_calls, opcodes = ours_loop(w, 20, counting=True)
            print(
                f"  ours {w:15s} {calls:5.2f} Python calls  {c_calls:5.2f} C calls  "
                f"{opcodes:6.1f} bytecodes"
            )
        calls, c_calls, opcodes = ours_forward(20, counting=True)
        print(
            f"  ours {'forward':15s} {calls:5.2f} Python calls  {c_calls:5.2f} C calls  "
            f"{opcodes:6.1f} bytecodes"
        )
        return 0
    loops = {w: ours_loop(w, rounds) for w in ("repeated", "nxdomain", "mixed", "forward-cached")}
    if opts.loop_only:
        print(
            f"per query, 10th percentile of {rounds} rounds of {BURST} (server side, thread CPU):"
        )
        for w, t in loops.items():
            print(f"  ours {w:15s} {t:6.2f} us  ({t / loops['repeated']:.2f}x ours repeated)")
        return 0
    repeated = repeated_floor(rounds)
    relay = relay_floor(rounds)
    ours = ours_forward(rounds)
    print(f"per query, 10th percentile of {rounds} rounds of {BURST} (server side, thread CPU):")
    print(f"  floor repeated  {repeated:6.2f} us")
    print(f"  floor relay     {relay:6.2f} us  ({relay / repeated:.1f}x the repeated floor)")
    print(f"  ours forward    {ours:6.2f} us  ({ours / repeated:.1f}x the repeated floor)")
    for w, t in loops.items():
        print(f"  ours {w:15s} {t:6.2f} us  ({t / repeated:.1f}x the repeated floor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
