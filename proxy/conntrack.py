"""Stale UDP conntrack entries: found by comparing two rulesets, removed with conntrack(8).

UDP has no connection teardown, so a flow DNATed to an endpoint keeps going there (its
conntrack entry is refreshed by every packet) even after the endpoint is gone. As kube-proxy
does, after each successful sync we delete

- the entries of every UDP Service address whose endpoint was removed (matched on the
  original destination and the endpoint the reply comes from), and
- every entry to a UDP Service address that had no endpoints and now has some: packets sent
  while it was rejecting have entries that would otherwise keep bypassing the new rules.

:func:`stale_entries` is pure; :class:`ConntrackCleaner` runs the conntrack tool (inside a
network namespace when given one).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

UdpTargets = Mapping[tuple[str, int], frozenset[tuple[str, int]]]


@dataclass(frozen=True, slots=True, order=True)
class StaleEntry:
    """UDP conntrack entries to delete: to ``ip:port`` (ip "" for a NodePort on any node
    address), DNATed to ``endpoint`` (None: every entry to that destination)."""

    ip: str
    port: int
    endpoint: tuple[str, int] | None = None
    family: int = 4  # the IP version of the flows (a NodePort entry names no address)

    def conntrack_args(self) -> list[str]:
        args = ["-D", "-f", "ipv6"] if self.family == 6 else ["-D"]
        args += ["-p", "udp"]
        if self.ip:
            args += ["--orig-dst", self.ip]
        args += ["--orig-port-dst", str(self.port)]
        if self.endpoint is not None:
            args += ["--reply-src", self.endpoint[0], "--reply-port-src", str(self.endpoint[1])]
        return args


def stale_entries(old: UdpTargets | None, new: UdpTargets, family: int = 4) -> list[StaleEntry]:
    """What to delete after moving from ``old`` to ``new`` (None: nothing was synced)."""
    if old is None:
        return []
    out: set[StaleEntry] = set()
    for (ip, port), before in old.items():
        after = new.get((ip, port), frozenset())
        for ep in before - after:
            out.add(StaleEntry(ip, port, ep, family))
    for (ip, port), after in new.items():
        if after and not old.get((ip, port)):
            out.add(StaleEntry(ip, port, None, family))
    return sorted(out, key=lambda e: (e.ip, e.port, e.endpoint or ("", 0)))


class ConntrackCleaner:
    """Deletes entries with ``conntrack -D``; failures are logged, never raised: a stale
    entry only delays a client until it times out, it must not fail the sync."""

    def __init__(self, netns: str | None = None, binary: str = "conntrack") -> None:
        self.netns = netns
        self.binary = binary
        self.deleted = 0
        self.errors = 0

    def _argv(self, args: Sequence[str]) -> list[str]:
        base = [self.binary, *args]
        return ["ip", "netns", "exec", self.netns, *base] if self.netns else base

    def delete(self, entries: Sequence[StaleEntry]) -> None:
        for entry in entries:
            try:
                proc = subprocess.run(
                    self._argv(entry.conntrack_args()),
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                self.errors += 1
                log.warning("conntrack failed", extra={"entry": str(entry), "error": str(exc)})
                continue
            # conntrack exits 1 when nothing matched ("0 flow entries have been deleted").
            if proc.returncode == 0 or "0 flow entries" in proc.stderr:
                self.deleted += _count(proc.stderr)
            else:
                self.errors += 1
                log.warning(
                    "conntrack failed", extra={"entry": str(entry), "error": proc.stderr.strip()}
                )


def _count(stderr: str) -> int:
    for line in stderr.splitlines():
        words = line.split()
        if len(words) > 1 and words[1] == "flow" and words[0].isdigit():
            return int(words[0])
    return 0
