"""The TLS and observability layers are sans-I/O cores: none of them imports trio, so a raw
reactor can use them without an event loop."""

from __future__ import annotations

import subprocess
import sys


def test_tls_and_observability_do_not_import_trio() -> None:
    code = (
        "import sys\n"
        "import mesh.tls, mesh.tls.names, mesh.tls.certs, mesh.tls.session\n"
        "import mesh.tls.terminator, mesh.tls.contexts\n"
        "import mesh.http.tracing, mesh.http.otel, mesh.http.access_log, mesh.http.metrics\n"
        "import mesh.http.replay, mesh.http.tee\n"
        "mods = [m for m in sys.modules if m == 'trio' or m.startswith('trio.')]\n"
        "assert not mods, mods\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr


def test_only_the_tests_need_h11() -> None:
    """The admin server, the config stream (both ends), the CLI and the gateway speak HTTP
    through mesh.http.h1: h11 is only the codec tests' differential reference."""
    code = (
        "import sys\n"
        "import mesh.cli, mesh.httpserve, mesh.stream_client, mesh.admin, mesh.feed\n"
        "import mesh.getcmd, mesh.getwatch, mesh.control.stream, mesh.ingress.gateway\n"
        "assert 'h11' not in sys.modules, [m for m in sys.modules if 'h11' in m]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
