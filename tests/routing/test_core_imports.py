"""The routing decision and the translators are sans-I/O cores: none of them imports trio."""

from __future__ import annotations

import subprocess
import sys


def test_routing_cores_do_not_import_trio() -> None:
    code = (
        "import sys\n"
        "import mesh.http.routes, mesh.http.filters, mesh.http.split, mesh.http.retry\n"
        "import mesh.http.plan, mesh.config.gateway\n"
        "import mesh.control.translate.gateway, mesh.control.translate.nginx\n"
        "mods = [m for m in sys.modules if m == 'trio' or m.startswith('trio.')]\n"
        "assert not mods, mods\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
