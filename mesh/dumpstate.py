"""``mesh config dump COMPONENT --state`` for a component whose admin view is its config
alone (the DNS server keeps no derived state worth a view of its own): the live state is
then what its admin address says of it besides, its readiness and its own counters."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from typing import Any

import click
from prometheus_client.parser import text_string_to_metric_families


def live_state(admin_url: str, component: str, config: Any) -> dict[str, Any]:
    """What the admin address says of a component whose view is its config alone: the
    config, whether the component is ready (and why not), and its own counters."""
    base = admin_url.rstrip("/")

    def read(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"{base}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError) as exc:
            raise click.ClickException(
                f"cannot reach the admin endpoint at {base}: {exc}"
            ) from None

    status, text = read("/ready")
    # 503 "not ready: dns (reason), proxy": this component's part of it, if any.
    mine = re.search(rf"(?:^not ready: |, ){re.escape(component)}(?: \(([^)]*)\))?", text)
    out: dict[str, Any] = {"config": config, "ready": status == 200 or mine is None}
    if mine is not None and mine.group(1):
        out["notReady"] = mine.group(1)
    prefix = f"mesh_{component}_"
    metrics: dict[str, float] = {}
    _, text = read("/metrics")
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not sample.name.startswith(prefix) or sample.name.endswith(
                    ("_bucket", "_created")
                ):
                    continue
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                metrics[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    except ValueError:
        raise click.ClickException(f"{base}/metrics is not Prometheus text") from None
    out["metrics"] = metrics
    return out
