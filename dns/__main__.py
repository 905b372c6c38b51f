"""Run the cluster DNS server alone from a config file: ``python -m mesh.dns --config FILE``.

The file holds a DnsConfig as JSON or YAML; it is re-read when it changes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import trio
import yaml
from mesh.dns.server import DnsServer

from mesh import log as mesh_log
from mesh.component import ConfigRejected
from mesh.config.dns import DnsConfig

log = logging.getLogger("mesh.dns.main")


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def load_config(path: Path) -> DnsConfig:
    data = yaml.safe_load(path.read_text())
    return DnsConfig.model_validate(data)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mesh.dns", description=__doc__)
    p.add_argument("--config", type=Path, required=True, help="DnsConfig file (JSON or YAML)")
    p.add_argument("--listen", type=host_port, default=("127.0.0.1", 5353), help="HOST:PORT")
    p.add_argument(
        "--upstream",
        type=host_port,
        action="append",
        help="HOST:PORT to forward other names to (repeatable; default: resolv.conf)",
    )
    p.add_argument("--no-forward", action="store_true", help="answer REFUSED for other names")
    p.add_argument("--reload-interval", type=float, default=1.0, help="seconds; 0 disables")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


async def _watch(server: DnsServer, path: Path, interval: float) -> None:
    seen = (await trio.Path(path).stat()).st_mtime_ns
    while True:
        await trio.sleep(interval)
        try:
            mtime = (await trio.Path(path).stat()).st_mtime_ns
            if mtime == seen:
                continue
            seen = mtime
            server.apply(load_config(path))  # a small file: read inline
        except (OSError, ValueError, yaml.YAMLError, ConfigRejected) as exc:
            log.error("config not reloaded", extra={"path": str(path), "error": str(exc)})


async def main_async(args: argparse.Namespace) -> None:
    upstreams = [] if args.no_forward else args.upstream
    server = DnsServer(listen=args.listen, upstreams=upstreams)
    server.apply(load_config(args.config))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        print(f"dns listening on {args.listen[0]}:{server.port} pid {os.getpid()}", flush=True)
        if args.reload_interval > 0:
            nursery.start_soon(_watch, server, args.config, args.reload_interval)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    mesh_log.setup(args.log_level)
    try:
        trio.run(main_async, args)
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
