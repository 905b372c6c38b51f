"""Running ``nft``: the :class:`NftRunner` interface the syncer (proxy/nft_sync.py) applies
scripts and probes through, :class:`SubprocessNftRunner` that runs the ``nft`` binary (inside a
network namespace when given one), and :class:`FakeNftRunner` that keeps the text for tests.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from typing import Protocol

_MARKER = re.compile(r'comment "sync ([0-9a-f]+)"')


class NftError(Exception):
    """nft refused a script or could not run; ``stderr`` says why."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


class NftRunner(Protocol):
    def apply(self, script: str) -> None:
        """Run ``script`` as one transaction (``nft -f -``); raise NftError on failure."""

    def list_chain(self, table: str, chain: str, family: str = "ip") -> str | None:
        """``nft list chain FAMILY TABLE CHAIN``, or None when it does not exist."""


class SubprocessNftRunner:
    def __init__(self, netns: str | None = None, binary: str = "nft", timeout: float = 60.0):
        self.netns = netns
        self.binary = binary
        self.timeout = timeout

    def _run(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [self.binary, *args]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        try:
            return subprocess.run(
                argv, input=stdin, capture_output=True, text=True, timeout=self.timeout
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NftError(f"cannot run nft: {exc}") from exc

    def apply(self, script: str) -> None:
        proc = self._run(["-f", "-"], stdin=script)
        if proc.returncode != 0:
            first = proc.stderr.strip().splitlines()[:1]
            raise NftError(f"nft -f failed: {first[0] if first else proc.returncode}", proc.stderr)

    def list_chain(self, table: str, chain: str, family: str = "ip") -> str | None:
        proc = self._run(["list", "chain", family, table, chain])
        if proc.returncode != 0:
            if "No such file or directory" in proc.stderr:
                return None
            raise NftError(f"nft list failed: {proc.stderr.strip()}", proc.stderr)
        return proc.stdout

    def delete_table(self, table: str, family: str = "ip") -> None:
        """Remove the table if present (cleanup; errors other than absence are raised)."""
        proc = self._run(["delete", "table", family, table])
        if proc.returncode != 0 and "No such file or directory" not in proc.stderr:
            raise NftError(f"nft delete table failed: {proc.stderr.strip()}", proc.stderr)


_FAMILY = re.compile(r"^(?:add )?table (ip6?) ", re.MULTILINE)


@dataclass
class FakeNftRunner:
    """Records scripts; ``fail`` makes the next applies raise; ``flush``/``delete`` drift.
    Keeps one marker per table family (``marker`` is the ``ip`` table's)."""

    scripts: list[str] = field(default_factory=list)
    fail: int = 0
    marker: str | None = None  # the marker of the ip table "in the kernel", None: no table
    markers: dict[str, str | None] = field(default_factory=dict)  # other families
    listed: int = 0

    def apply(self, script: str) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise NftError("nft -f failed: injected failure")
        self.scripts.append(script)
        found = _MARKER.findall(script)
        family = _FAMILY.findall(script)
        marker = found[-1] if found else None
        if not family or family[0] == "ip":
            self.marker = marker
        else:
            self.markers[family[0]] = marker

    def list_chain(self, table: str, chain: str, family: str = "ip") -> str | None:
        self.listed += 1
        marker = self.marker if family == "ip" else self.markers.get(family)
        if marker is None:
            return None
        return f'table {family} {table} {{\n\tchain {chain} {{\n\t\t... comment "sync {marker}"\n'

    def flush(self) -> None:
        self.marker = ""  # the table stays, its rules are gone

    def delete(self) -> None:
        self.marker = None
