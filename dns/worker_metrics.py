"""One ``/metrics`` for ``mesh dns --workers N``: worker 0 serves every worker's counters summed.

Each worker keeps its own plain counters (``DnsMetrics``: no locks, no shared memory on the
hot path). Workers 1..N-1 write theirs, as Prometheus text, to a file in a directory the
supervisor made (``publish``, every ``PUBLISH_INTERVAL`` seconds, by an atomic rename), and
worker 0's registry holds ``Merged``: its own counters plus the others' last files, summed
sample by sample (the same name and labels), so a scrape of the announced admin address sees
the whole server; a peer's share is at most ``PUBLISH_INTERVAL`` old. Gauges are summed too
(queries in flight) except the config version, which is the lowest any worker runs. Each
worker's own admin port still shows its own counters alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

log = logging.getLogger("mesh.dns.worker_metrics")

PUBLISH_INTERVAL = 1.0
LOWEST = frozenset(("mesh_dns_config_version",))  # gauges merged by min: every worker has it


def snapshot(directory: Path, worker: int) -> Path:
    return directory / f"worker-{worker}.prom"


async def publish(collector: Collector, directory: Path, worker: int) -> None:
    """Write ``collector``'s metrics for worker 0 to merge, every ``PUBLISH_INTERVAL``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    path = snapshot(directory, worker)
    tmp = path.with_suffix(".tmp")
    while True:
        try:
            tmp.write_bytes(generate_latest(registry))
            os.replace(tmp, path)
        except OSError as exc:  # the supervisor's directory is gone: it is shutting down
            log.debug("metrics not published", extra={"error": str(exc)})
        await trio.sleep(PUBLISH_INTERVAL)


def merge(families: Iterable[Metric]) -> list[Metric]:
    """Families of the same name summed sample by sample (``LOWEST``: the minimum)."""
    merged: dict[str, Metric] = {}
    # by family: (sample name, sorted labels) -> (labels as first seen, value)
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], tuple[dict[str, str], float]]]
    values = {}
    for family in families:
        out = merged.get(family.name)
        if out is None:
            out = merged[family.name] = Metric(family.name, family.documentation, family.type)
            values[family.name] = {}
        samples = values[family.name]
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            old = samples.get(key)
            if old is None:
                samples[key] = (sample.labels, sample.value)
            elif family.name in LOWEST:
                samples[key] = (old[0], min(old[1], sample.value))
            else:
                samples[key] = (old[0], old[1] + sample.value)
    for name, out in merged.items():
        for (sample_name, _), (labels, value) in values[name].items():
            out.add_sample(sample_name, labels, value)
    return list(merged.values())


class Merged(Collector):
    """Worker 0's metrics: its own collector's and every other worker's last snapshot."""

    def __init__(self, own: Collector, directory: Path, worker: int = 0) -> None:
        self.own = own
        self.directory = directory
        self.worker = worker

    def collect(self) -> Iterable[Metric]:
        families: list[Metric] = list(self.own.collect())
        mine = snapshot(self.directory, self.worker).name
        try:
            peers = sorted(p for p in self.directory.glob("worker-*.prom") if p.name != mine)
        except OSError:
            peers = []
        for path in peers:
            try:
                families += text_string_to_metric_families(path.read_text())
            except (OSError, ValueError) as exc:  # being replaced, or cut short: next scrape
                log.debug("worker metrics unreadable", extra={"file": path.name, "error": str(exc)})
        return merge(families)
