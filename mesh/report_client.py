"""The way back: a component run apart from the control plane (``mesh ingress --control``)
posts its run-time report to ``POST /v1/reports/{kind}`` (control/reports.py says what the
plane does with it).

:meth:`Reporter.update` is what the component calls (the gateway's ``on_failures``): it only
keeps the latest report and wakes the posting task, so the data path never waits on the
control plane. The task posts

- once the component has taken its first config (its first :meth:`Reporter.update`:
  the plane counts a reporting gateway as one that serves, so nothing is posted before;
  that post also replaces what a predecessor of the same instance left),
- on each change, only the latest (a burst of changes costs one post),
- on each (re)connection of the config stream (:meth:`Reporter.reconnected`: a restarted
  plane has forgotten every report),
- every ``refresh`` seconds (a third of the lease, ``ttl``): the plane drops a report whose
  lease ends, so a gateway that went away stops counting within ``ttl`` seconds;
- once more as it stops (cancelled: SIGTERM, Ctrl-C), with a lease of 0 seconds, so a gateway
  that stops cleanly stops counting at once (one short try; the lease covers a failure).

A post that fails (the plane is down, a timeout, a 5xx) is tried again after a backoff that
doubles up to ``backoff.maximum``; each try is bounded by ``timeout``. A refusal (4xx) is a
bug on one side: logged, and tried again only at the next change or refresh.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping
from typing import Any

import trio

from mesh.config.gateway import ListenerFailure
from mesh.control.reports import DEFAULT_TTL, encode_failures
from mesh.stream_client import Backoff, StreamError, fetch_json

log = logging.getLogger("mesh.report")

_FAILED = (OSError, trio.BrokenResourceError, trio.TooSlowError, StreamError)
WITHDRAW_S = 1.0  # how long a stopping component gives its last post


def instance_name(host: str, port: int) -> str:
    """``host/port`` in the characters a report's ``instance`` allows (control/reports.py)."""
    clean = re.sub(r"[^A-Za-z0-9._:\[\]_-]", "-", host)
    clean = re.sub(r"^[^A-Za-z0-9]+", "", clean)[:200]  # it starts with a letter or digit
    return f"{clean or 'gateway'}/{port}"


class Reporter:
    def __init__(
        self,
        url: str,
        kind: str,
        instance: str,
        *,
        ttl: int = DEFAULT_TTL,
        backoff: Backoff | None = None,
        timeout: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.kind = kind
        self.instance = instance
        self.ttl = ttl
        self.refresh = ttl / 3
        self.backoff = backoff or Backoff(initial=0.5, maximum=10.0)
        self.timeout = timeout
        self.rng = rng or random.Random()
        self.posted = 0  # reports the plane took (tests and /config read it)
        self.last_error = ""  # why the last post failed ("" when it went through)
        self._latest: dict[str, ListenerFailure] | None = None  # None: nothing to say yet
        self._wanted = 0  # generation of the latest report: a change while posting shows
        self._wake = trio.Event()

    # --- the component's side (never blocks) -----------------------------------------------

    def update(self, failures: Mapping[str, ListenerFailure]) -> None:
        self._latest = dict(failures)
        self._ask()

    def describe(self) -> dict[str, Any]:
        """For the component's ``/config``: where the report goes and whether it arrives."""
        return {
            "url": f"{self.url}/v1/reports/{self.kind}",
            "instance": self.instance,
            "posted": self.posted,
            "lastError": self.last_error,
        }

    def reconnected(self) -> None:
        self._ask()

    def _ask(self) -> None:
        self._wanted += 1
        self._wake.set()

    # --- the posting task ------------------------------------------------------------------

    def body(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "ttlSeconds": self.ttl,
            "listeners": encode_failures(self._latest or {}),
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await self._post_loop()
        finally:
            if self.posted:
                await self._withdraw()

    async def _withdraw(self) -> None:
        """Say this instance is leaving: its report with a lease of 0 seconds."""
        with trio.CancelScope(shield=True), trio.move_on_after(min(self.timeout, WITHDRAW_S)):
            try:
                await fetch_json(
                    self.url, f"/v1/reports/{self.kind}", post={**self.body(), "ttlSeconds": 0}
                )
            except _FAILED as exc:
                log.debug("report not withdrawn", extra={"url": self.url, "error": str(exc)})

    async def _post_loop(self) -> None:
        attempt = 0
        last_error = ""
        while self._latest is None:  # no config taken yet (see the module's docstring)
            self._wake = trio.Event()
            await self._wake.wait()
        while True:
            wanted = self._wanted
            wait = self.refresh
            error = await self._post_once()
            self.last_error = error or ""
            if error is None:
                attempt = 0
                last_error = ""
            else:
                # Said once while it lasts: the same failure on every retry is not news.
                level = logging.DEBUG if error == last_error else logging.WARNING
                log.log(level, "report not posted", extra={"url": self.url, "error": error})
                last_error = error
                if not error.startswith("refused"):
                    wait = self.backoff.delay(attempt, self.rng)
                    attempt += 1
            if self._wanted != wanted and error is None:
                continue  # changed while posting: post the newer one now
            self._wake = trio.Event()
            with trio.move_on_after(wait):
                await self._wake.wait()

    async def _post_once(self) -> str | None:
        """One post of the latest report; None when the plane took it, else why not."""
        try:
            with trio.fail_after(self.timeout):
                status, answer = await fetch_json(
                    self.url, f"/v1/reports/{self.kind}", post=self.body()
                )
        except _FAILED as exc:
            return str(exc) or type(exc).__name__
        if status == 200:
            self.posted += 1
            return None
        sentence = str(answer).strip().splitlines()[0] if str(answer).strip() else ""
        prefix = "refused" if 400 <= status < 500 else "failed"
        return f"{prefix}: HTTP {status}: {sentence}"[:300]
