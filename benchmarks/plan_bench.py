"""The routing decision alone: microseconds per ``plan()`` call, and per config compile.

A generated GatewayConfig of N hosts, each with a few Prefix paths, one Exact path, a
header-matched canary route and a catch-all, as Ingresses and HTTPRoutes translate into. The
requests are a fixed mix: plain prefix hits, an exact hit, a header match, a weighted split,
a policy-heavy route (CORS, source ranges, rewrite), and a 404. Each case is timed on its own
(best of several repeats, as timeit advises) so a slow case is not hidden in an average.
Times are CPU time of this process (``time.process_time``), so on a shared machine the time
spent waiting for a core is left out; a compile figure is wall time.

Usage: python benchmarks/plan_bench.py [--hosts 500] [--number 100000]
"""

from __future__ import annotations

import argparse
import random
import time
import timeit

from mesh.config.gateway import (
    Cors,
    GatewayBackend,
    GatewayConfig,
    GatewayEndpoint,
    GatewayListener,
    Match,
    PathMatch,
    PathRewrite,
    Policy,
    Rewrite,
    Route,
    ValueMatch,
    WeightedBackend,
)
from mesh.http.plan import Head, plan
from mesh.http.routes import compile_routes


def config(hosts: int) -> GatewayConfig:
    routes = []
    backends = []
    for h in range(hosts):
        host = f"app{h}.example.com"
        for i, p in enumerate(("/api", "/api/v1", "/static", "/")):
            name = f"b{h}-{i}"
            backends.append(
                GatewayBackend(
                    name=name,
                    endpoints=tuple(
                        GatewayEndpoint(ip=f"127.0.{h % 250}.{e}", port=8080) for e in range(1, 4)
                    ),
                )
            )
            routes.append(
                Route(
                    name=f"r{h}-{i}",
                    listeners=("l",),
                    hosts=(host,),
                    matches=(Match(path=PathMatch(kind="Prefix", value=p)),),
                    order=h * 10 + i,
                    backends=(WeightedBackend(backend=name),),
                )
            )
        routes.append(
            Route(
                name=f"exact{h}",
                listeners=("l",),
                hosts=(host,),
                matches=(Match(path=PathMatch(kind="Exact", value="/healthz")),),
                backends=(WeightedBackend(backend=f"b{h}-0"),),
            )
        )
        routes.append(
            Route(
                name=f"hdr{h}",
                listeners=("l",),
                hosts=(host,),
                matches=(
                    Match(
                        path=PathMatch(value="/api"),
                        headers=(ValueMatch(name="x-canary", value="1"),),
                    ),
                ),
                backends=(
                    WeightedBackend(backend=f"b{h}-1", weight=90),
                    WeightedBackend(backend=f"b{h}-2", weight=10),
                ),
            )
        )
        routes.append(
            Route(
                name=f"policy{h}",
                listeners=("l",),
                hosts=(host,),
                matches=(Match(path=PathMatch(value="/secure")),),
                policy=Policy(
                    allow_sources=("127.0.0.0/8",),
                    cors=Cors(),
                    rewrite=Rewrite(path=PathRewrite(kind="Prefix", value="/")),
                ),
                backends=(WeightedBackend(backend=f"b{h}-3"),),
            )
        )
    return GatewayConfig(
        listeners=(GatewayListener(name="l"),), routes=tuple(routes), backends=tuple(backends)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=500)
    ap.add_argument("--number", type=int, default=100_000)
    args = ap.parse_args()
    cfg = config(args.hosts)
    start = time.perf_counter()
    routes = compile_routes(cfg)
    compile_ms = (time.perf_counter() - start) * 1000
    print(f"{len(cfg.routes)} routes on {args.hosts} hosts: compile {compile_ms:.1f} ms")
    host = f"app{args.hosts // 2}.example.com"
    ua = {"user-agent": "bench", "accept": "*/*"}
    cases = {
        "prefix /api/v1/users": Head("l", "GET", "/api/v1/users?id=7", host, ua),
        "prefix / (last entry)": Head("l", "GET", "/index.html", host, ua),
        "exact /healthz": Head("l", "GET", "/healthz", host, ua),
        "header match, 90/10 split": Head("l", "GET", "/api/x", host, {**ua, "x-canary": "1"}),
        "policy: ranges, CORS, rewrite": Head(
            "l",
            "GET",
            "/secure/x",
            f"{host}:8080",
            {**ua, "origin": "https://a.example"},
            client="127.0.0.1",
        ),
        "no route (unknown host)": Head("l", "GET", "/", "nowhere.example", ua),
    }
    rand = random.Random(1).random
    for name, head in cases.items():
        best = min(
            timeit.Timer(lambda h=head: plan(routes, h, 0.0, rand), timer=time.process_time).repeat(
                number=args.number, repeat=5
            )
        )
        print(f"  {name:32s} {best / args.number * 1e6:6.2f} us")


if __name__ == "__main__":
    main()
