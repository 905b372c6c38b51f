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
        "mods = [m for m in sys.modules if m == 'trio' or m.startswith('trio.')]\n"
        "assert not mods, mods\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
