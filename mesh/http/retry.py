"""Whether to try a request again (GEP-1731 HTTPRoute retry), as one pure decision.

``decide`` is called after each failed try with what happened; it answers ``Again(delay)``
or ``Stop(why)``. The rules:

- no retry policy: stop;
- the attempts are used up (``attempts`` counts retries after the first try): stop;
- a connection that never got established (``connect-failure``) is always safe to retry:
  nothing reached the backend;
- otherwise the request may have reached the backend, so a request that is not idempotent
  (RFC 9110 section 9.2.2: POST, PATCH, CONNECT, unknown methods) is not retried unless the
  route says so (``Retry.non_idempotent``); nor is a request whose body the data path could
  not keep for a replay;
- a response is retried when its status is in ``codes``; a reset or a per-try timeout is
  retried as connection errors are (GEP-1731: implementations should retry those);
- the wait doubles from ``backoff`` each retry, and a retry that could not finish before the
  request's deadline is not started.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mesh.config.gateway import Retry

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

Failure = Literal["connect-failure", "reset", "timeout"]


@dataclass(frozen=True, slots=True)
class Again:
    delay: float  # seconds to wait before the next try


@dataclass(frozen=True, slots=True)
class Stop:
    why: str


def decide(
    policy: Retry | None,
    *,
    retries_done: int,
    outcome: Failure | int,
    method: str,
    now: float,
    deadline: float | None = None,
    body_replayable: bool = True,
) -> Again | Stop:
    """``outcome``: a failure kind, or the status code the backend answered."""
    if policy is None:
        return Stop("no retry policy")
    if retries_done >= policy.attempts:
        return Stop("attempts used up")
    if isinstance(outcome, int) and outcome not in policy.codes:
        return Stop(f"status {outcome} is not retried")
    if outcome != "connect-failure":
        if not body_replayable:
            return Stop("the request body cannot be replayed")
        if method not in IDEMPOTENT and not policy.non_idempotent:
            return Stop(f"{method} is not idempotent and may have reached the backend")
    delay = policy.backoff * (2**retries_done)
    if deadline is not None and now + delay >= deadline:
        return Stop("no time left before the request deadline")
    return Again(delay)
