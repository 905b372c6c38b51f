"""Canary precedence, weighted shares, affinity cookies, and the retry decision."""

from __future__ import annotations

import random

import pytest

from mesh.config.gateway import Affinity, Canary, Retry, WeightedBackend
from mesh.http.retry import Again, Stop, decide
from mesh.http.split import affinity_cookie, choose, parse_cookies

MAIN = (WeightedBackend(backend="main"),)


def pick(canary: Canary, headers: dict[str, str], cookies: dict[str, str], rand: float) -> str:
    chosen = choose(MAIN, (canary,), headers, cookies, rand)
    assert chosen is not None and chosen.backend is not None
    return chosen.backend


# ingress-nginx: canary-by-header, then canary-by-cookie, then canary-weight.
CANARY = [
    # header "always"/"never", then the other rules
    (Canary(backend="c", header="X-Canary"), {"x-canary": "always"}, {}, 0.9, "c"),
    (Canary(backend="c", header="X-Canary", weight=100), {"x-canary": "never"}, {}, 0.0, "main"),
    (Canary(backend="c", header="X-Canary", cookie="k"), {"x-canary": "never"}, {"k": "always"}, 0.0, "main"),
    (Canary(backend="c", header="X-Canary", cookie="k"), {"x-canary": "other"}, {"k": "always"}, 0.9, "c"),
    # header-value: only that value routes to the canary; anything else falls through
    (Canary(backend="c", header="x-v", header_value="blue"), {"x-v": "blue"}, {}, 0.9, "c"),
    (Canary(backend="c", header="x-v", header_value="blue"), {"x-v": "always"}, {}, 0.9, "main"),
    (Canary(backend="c", header="x-v", header_value="blue", weight=50), {"x-v": "red"}, {}, 0.1, "c"),
    # header-pattern: a regular expression
    (Canary(backend="c", header="x-v", header_pattern="^(b|g).*"), {"x-v": "green"}, {}, 0.9, "c"),
    (Canary(backend="c", header="x-v", header_pattern="^(b|g).*"), {"x-v": "red"}, {}, 0.9, "main"),
    # header before cookie: "always" in the header beats "never" in the cookie
    (Canary(backend="c", header="h", cookie="k"), {"h": "always"}, {"k": "never"}, 0.9, "c"),
    (Canary(backend="c", cookie="k", weight=100), {}, {"k": "never"}, 0.0, "main"),
    (Canary(backend="c", cookie="k"), {}, {"k": "always"}, 0.9, "c"),
    # weight, out of weight-total
    (Canary(backend="c", weight=10), {}, {}, 0.099, "c"),
    (Canary(backend="c", weight=10), {}, {}, 0.1, "main"),
    (Canary(backend="c", weight=1, weight_total=4), {}, {}, 0.24, "c"),
    (Canary(backend="c", weight=0), {}, {}, 0.0, "main"),
]  # fmt: skip


@pytest.mark.parametrize(("canary", "headers", "cookies", "rand", "want"), CANARY)
def test_canary_precedence(
    canary: Canary, headers: dict[str, str], cookies: dict[str, str], rand: float, want: str
) -> None:
    assert pick(canary, headers, cookies, rand) == want


def test_several_canaries_each_take_their_weight() -> None:
    canaries = (Canary(backend="c1", weight=10), Canary(backend="c2", weight=20))
    backends = (WeightedBackend(backend="a", weight=1), WeightedBackend(backend="b", weight=1))
    rng = random.Random(7)
    n = 20_000
    counts: dict[str, int] = {}
    for _ in range(n):
        chosen = choose(backends, canaries, {}, {}, rng.random())
        assert chosen is not None and chosen.backend is not None
        counts[chosen.backend] = counts.get(chosen.backend, 0) + 1
    # Expected shares 10%, 20%, and the remaining 70% split evenly; 5 standard deviations.
    for name, share in {"c1": 0.1, "c2": 0.2, "a": 0.35, "b": 0.35}.items():
        sd = (n * share * (1 - share)) ** 0.5
        assert abs(counts[name] - n * share) < 5 * sd, (name, counts)


def test_cookies_and_affinity_cookie() -> None:
    assert parse_cookies('a=1; b="two"; a=3; junk; =x') == {"a": "1", "b": "two"}
    assert parse_cookies(None) == {}
    cookie = affinity_cookie(Affinity(cookie="S", max_age=60, path="/app"), ("10.0.0.1", 80))
    name_value, *attrs = cookie.split("; ")
    assert name_value.startswith("S=") and len(name_value) == 2 + 16
    assert attrs == ["Path=/app", "Max-Age=60", "HttpOnly"]


POLICY = Retry(codes=(502, 503), attempts=2, backoff=0.1)

# (policy, retries done, outcome, method, body replayable, deadline, expected)
RETRIES = [
    (None, 0, 503, "GET", True, None, Stop("no retry policy")),
    (POLICY, 0, 503, "GET", True, None, Again(0.1)),
    (POLICY, 1, 502, "GET", True, None, Again(0.2)),  # the wait doubles
    (POLICY, 2, 503, "GET", True, None, Stop("attempts used up")),
    (POLICY, 0, 500, "GET", True, None, Stop("status 500 is not retried")),
    (POLICY, 0, "connect-failure", "POST", True, None, Again(0.1)),  # never reached the backend
    (POLICY, 0, "reset", "POST", True, None, Stop("POST is not idempotent and may have reached the backend")),
    (POLICY, 0, 503, "PATCH", True, None, Stop("PATCH is not idempotent and may have reached the backend")),
    (POLICY.model_copy(update={"non_idempotent": True}), 0, 503, "POST", True, None, Again(0.1)),
    (POLICY, 0, "timeout", "PUT", True, None, Again(0.1)),
    (POLICY, 0, "reset", "GET", False, None, Stop("the request body cannot be replayed")),
    (POLICY, 0, "connect-failure", "GET", False, None, Again(0.1)),
    (POLICY, 0, 503, "GET", True, 10.05, Stop("no time left before the request deadline")),
    (POLICY, 0, 503, "GET", True, 10.5, Again(0.1)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "done", "result", "method", "replay", "deadline", "want"), RETRIES
)
def test_retry_decide(
    policy: Retry | None,
    done: int,
    result: str | int,
    method: str,
    replay: bool,
    deadline: float | None,
    want: Again | Stop,
) -> None:
    got = decide(
        policy,
        retries_done=done,
        outcome=result,  # type: ignore[arg-type]
        method=method,
        now=10.0,
        deadline=deadline,
        body_replayable=replay,
    )
    assert got == want
