"""A tiny echo app to put behind the gateway (the demo's two versions, tests' upstreams).

``python -m mesh.ingress.echo NAME HOST:PORT [HOST:PORT ...]`` answers every request on each
address with ``NAME`` in an ``x-echo`` header and a JSON body echoing what arrived (method,
path, Host and the request's header fields), so a curl through the gateway shows which version
answered and what the gateway sent on. Standard library only; one thread per connection.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mesh.addresses import parse_address


def handler(name: str) -> type[BaseHTTPRequestHandler]:
    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the gateway's pool expects
        # The head and the body leave in two writes: without TCP_NODELAY the second waits
        # for the delayed ACK of the first (40 ms a request on Linux).
        disable_nagle_algorithm = True

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            data = {
                "name": name,
                "method": self.command,
                "path": self.path,
                "host": self.headers.get("host"),
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_bytes": len(body),
            }
            out = (json.dumps(data, indent=1) + "\n").encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("x-echo", name)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(out)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: the gateway's access log tells the story

    return Echo


def serve(name: str, addresses: list[tuple[str, int]]) -> list[ThreadingHTTPServer]:
    """Start one server per address in daemon threads; returns them (``shutdown()`` each)."""
    servers = []
    for host, port in addresses:
        server = ThreadingHTTPServer((host, port), handler(name))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    return servers


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m mesh.ingress.echo NAME HOST:PORT [HOST:PORT ...]", file=sys.stderr)
        return 2
    try:
        addresses = [parse_address(a) for a in argv[1:]]
        serve(argv[0], addresses)
    except (ValueError, OSError) as exc:
        print(f"echo: {exc}", file=sys.stderr)
        return 1
    threading.Event().wait()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
