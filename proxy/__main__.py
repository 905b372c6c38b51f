"""A standalone node proxy: ``python -m mesh.proxy --config FILE``.

Reads a ProxyConfig from a YAML or JSON file (re-read when it changes; a bad file is logged
and the previous config kept), runs the userspace proxy, and serves ``/ready``, ``/metrics``
and ``/config`` on the admin address. ``mesh proxy`` is the full command; this runner exists
so the proxy can be started alone (benchmarks, debugging).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import pydantic
import trio
import yaml
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mesh import log as mesh_log
from mesh.config.proxy import ProxyConfig
from mesh.proxy.userspace import UserspaceProxy

log = logging.getLogger("mesh.proxy")
MAX_REQUEST = 16 * 1024


def load(path: Path) -> ProxyConfig:
    data: Any = yaml.safe_load(path.read_text())
    return ProxyConfig.model_validate(data or {})


async def watch_file(proxy: UserspaceProxy, path: Path, interval: float = 1.0) -> None:
    seen = (await trio.Path(path).stat()).st_mtime_ns
    while True:
        await trio.sleep(interval)
        try:
            mtime = (await trio.Path(path).stat()).st_mtime_ns
            if mtime == seen:
                continue
            seen = mtime
            proxy.apply(await trio.to_thread.run_sync(load, path))
            log.info("config reloaded", extra={"file": str(path)})
        except (OSError, yaml.YAMLError, pydantic.ValidationError) as exc:
            proxy.metrics.sync_errors.inc()
            log.error("config not reloaded", extra={"file": str(path), "error": str(exc)})


async def _admin_conn(proxy: UserspaceProxy, conn: trio.SocketStream) -> None:
    async with conn:
        request = b""
        with trio.move_on_after(10):
            while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST:
                chunk = await conn.receive_some(4096)
                if not chunk:
                    return
                request += chunk
        parts = request.split(b"\r\n", 1)[0].split()
        path = parts[1].decode(errors="replace").split("?")[0] if len(parts) >= 2 else ""
        status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
        if path == "/ready":
            ok = proxy.ready
            status = "200 OK" if ok else "503 Service Unavailable"
            body = b"ready\n" if ok else b"not ready\n"
        elif path == "/metrics":
            status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(proxy.registry)
        elif path == "/config":
            status, ctype = "200 OK", "application/json"
            body = json.dumps(proxy.config_json(), indent=2).encode() + b"\n"
        head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        with contextlib.suppress(trio.BrokenResourceError):
            await conn.send_all(head.encode() + body)


async def main(args: argparse.Namespace) -> None:
    path = Path(args.config)
    proxy = UserspaceProxy(node_ip=args.node_ip, udp_idle_timeout=args.udp_idle_timeout)
    proxy.apply(load(path))
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        nursery.start_soon(watch_file, proxy, path)
        if args.admin_listen:
            host, _, port = args.admin_listen.rpartition(":")
            listeners = await trio.open_tcp_listeners(int(port), host=host or "127.0.0.1")
            nursery.start_soon(trio.serve_listeners, lambda c: _admin_conn(proxy, c), listeners)
            log.info("admin listening", extra={"address": args.admin_listen})


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mesh.proxy", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="ProxyConfig file (YAML or JSON)")
    p.add_argument("--mode", choices=["userspace"], default="userspace")
    p.add_argument("--node-ip", default="127.0.0.1", help="address NodePorts listen on")
    p.add_argument("--udp-idle-timeout", type=float, default=30.0, help="seconds")
    p.add_argument("--admin-listen", default="", help="HOST:PORT for /ready, /metrics, /config")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    mesh_log.setup(arguments.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main, arguments)
