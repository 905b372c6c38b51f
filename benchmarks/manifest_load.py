"""The start's first step, ``manifest loaded``, in isolation: for N Services with 3 Pods
each (the scale benchmark's manifest, benchmarks/scale_bench.py), a fresh process does what
``mesh up`` does up to that event (the early parsing child forked first thing, the plane's
imports, the collector paused, the file read and loaded through the document cache with that
child adopted) and prints its wall time and the CPU seconds of the process (imports, load)
and of the child, the documents the child parsed, and the peak resident memory.

CPU seconds are steadier than wall time on a shared machine. ``--settle S`` waits S seconds
after the imports, so that the child has parsed everything: the load then measures only the
parent's own work per object (taking the child's results and validating them).

    python benchmarks/manifest_load.py [--services 10000] [--runs 3] [--settle 0]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_bench import manifest

PROBE = """
import gc, hashlib, resource, sys, time
from pathlib import Path
wall = time.perf_counter()
path, settle = sys.argv[1], float(sys.argv[2])
from mesh.control import early
early.start(Path(path))
import mesh.run  # noqa: F401  (what mesh up imports before its source reads)
gc.disable()  # as the plane does while the first objects load (mesh/gcpause.py)
imports = time.process_time()
time.sleep(settle)
from mesh.control.documents import DocumentCache
from mesh.control.source_dir import parse_manifest
data = Path(path).read_bytes()
cache = DocumentCache()
cache.early = early.adopt(path, hashlib.sha256(data).digest())
start = time.process_time()
result = parse_manifest(path, data, cache)
load = time.process_time() - start
early.drop()
child = resource.getrusage(resource.RUSAGE_CHILDREN)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
assert not result.errors and len(result.objects) > 0
print(time.perf_counter() - wall - settle, imports, load, child.ru_utime + child.ru_stime,
      cache.parsed_ahead, len(result.objects), peak)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=0.0)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "all.yaml")
        path.write_text(manifest(opts.services))
        rows = []
        for _ in range(opts.runs):
            out = subprocess.run(
                [sys.executable, "-c", PROBE, str(path), str(opts.settle)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            rows.append([float(x) for x in out])
    wall, imports, load, child, ahead, objects, peak = (
        statistics.median(c) for c in zip(*rows, strict=True)
    )
    print(
        f"N={opts.services}: {objects:.0f} objects loaded in {wall:.2f} s wall (median of "
        f"{opts.runs}); cpu: imports {imports:.2f} s + load {load:.2f} s, child {child:.2f} s "
        f"({ahead:.0f} documents parsed ahead); peak rss {peak:.0f} MB"
    )


if __name__ == "__main__":
    main()
