"""Endpoint choice, proxy headers and the connect-and-try-next plan, as tables."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from mesh.attempts import ConnectPlan
from mesh.http.balance import LeastRequest, RoundRobin, balancer
from mesh.http.decision import HeaderEdits, Peer
from mesh.http.proxyheaders import request_fields, response_fields

A, B, C = ("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)


def test_round_robin_cycles_in_order() -> None:
    rr = RoundRobin([A, B, C])
    assert [rr.pick() for _ in range(7)] == [A, B, C, A, B, C, A]


def test_round_robin_skips_a_refusing_endpoint_once() -> None:
    rr = RoundRobin([A, B, C])
    assert rr.pick() == A
    rr.refused(B)
    assert rr.pick() == C  # B skipped for this pick
    assert [rr.pick() for _ in range(3)] == [A, B, C]  # and eligible again


def test_refusals_never_empty_the_choice() -> None:
    rr = RoundRobin([A])
    rr.refused(A)
    assert rr.pick() == A


def test_exclude_and_exhaustion() -> None:
    rr = RoundRobin([A, B])
    assert rr.pick(exclude=(A,)) == B
    assert rr.pick(exclude=(A, B)) is None
    assert RoundRobin([]).pick() is None


def test_least_request_prefers_fewer_in_flight() -> None:
    lr = LeastRequest([A, B], random.Random(1))
    for _ in range(5):
        lr.started(A)
    assert Counter(lr.pick() for _ in range(50)) == Counter({B: 50})
    for _ in range(5):
        lr.finished(A)
    lr.started(B)
    assert {lr.pick() for _ in range(20)} == {A}


def test_least_request_spreads_evenly_when_idle() -> None:
    lr = LeastRequest([A, B, C], random.Random(7))
    counts = Counter(lr.pick() for _ in range(3000))
    assert all(900 < n < 1100 for n in counts.values()), counts


def test_least_request_skips_refused_and_excluded() -> None:
    lr = LeastRequest([A, B, C], random.Random(3))
    lr.refused(A)
    assert lr.pick(exclude=(B,)) == C
    assert lr.pick(exclude=(B, C)) == A  # the refusal was consumed by the last pick


def test_policy_names() -> None:
    assert isinstance(balancer("round-robin", [A]), RoundRobin)
    assert isinstance(balancer("least-request", [A]), LeastRequest)
    with pytest.raises(ValueError, match="unknown load-balancing policy"):
        balancer("random", [A])


@pytest.mark.parametrize(
    ("endpoints", "limit", "refusing", "tried", "gives_up"),
    [
        ([A, B, C], 3, set(), [A], False),
        ([A, B, C], 3, {A}, [A, B], False),
        ([A, B, C], 3, {A, B, C}, [A, B, C], True),
        ([A, B, C], 2, {A, B, C}, [A, B], True),  # bounded by the limit
        ([A], 5, {A}, [A], True),  # never more tries than endpoints
        ([], 3, set(), [], True),
    ],
)
def test_connect_plan(
    endpoints: list[tuple[str, int]],
    limit: int,
    refusing: set[tuple[str, int]],
    tried: list[tuple[str, int]],
    gives_up: bool,
) -> None:
    rr = RoundRobin(endpoints)
    plan = ConnectPlan(rr.pick, len(endpoints), limit)
    got = []
    connected = False
    while (ep := plan.next()) is not None:
        got.append(ep)
        if ep not in refusing:
            connected = True
            break
    assert got == tried
    assert connected is not gives_up


PEER = Peer("192.0.2.7", 40000, b"https", 8443)


def test_request_fields_strip_hop_by_hop_and_add_forwarding() -> None:
    headers = (
        (b"host", b"shop.example"),
        (b"connection", b"keep-alive, x-secret"),
        (b"keep-alive", b"timeout=5"),
        (b"x-secret", b"1"),
        (b"te", b"trailers"),
        (b"upgrade", b"h2c"),
        (b"proxy-connection", b"close"),
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"accept", b"*/*"),
    )
    out, rid = request_fields(headers, PEER, make_id=lambda: b"rid-1")
    assert out == [
        (b"host", b"shop.example"),
        (b"accept", b"*/*"),
        (b"x-forwarded-for", b"192.0.2.7"),  # the client's claim is not ours to vouch for
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"shop.example"),
        (b"x-forwarded-port", b"8443"),
        (b"x-request-id", b"rid-1"),
    ]
    assert rid == b"rid-1"


def test_request_fields_trusted_downstream_appends_and_keeps_request_id() -> None:
    headers = ((b"host", b"a"), (b"x-forwarded-for", b"1.1.1.1"), (b"x-request-id", b"abc"))
    out, rid = request_fields(headers, PEER, trust_downstream=True, host=b"b", forwarded=True)
    assert (b"x-forwarded-for", b"1.1.1.1, 192.0.2.7") in out
    assert (b"host", b"b") in out and (b"host", b"a") not in out
    assert (b"forwarded", b'for=192.0.2.7;proto=https;host="a"') in out
    assert rid == b"abc" and sum(1 for n, _ in out if n == b"x-request-id") == 1


def test_request_fields_keep_upgrade_for_a_switch() -> None:
    headers = ((b"host", b"a"), (b"connection", b"Upgrade"), (b"upgrade", b"websocket"))
    out, _ = request_fields(headers, Peer("::1", 1, b"http", 80), upgrade=True, forwarded=True)
    assert (b"upgrade", b"websocket") in out and (b"connection", b"upgrade") in out
    assert (b"forwarded", b'for="[::1]";proto=http;host="a"') in out


def test_response_fields() -> None:
    headers = (
        (b"content-length", b"2"),
        (b"connection", b"close, x-hop"),
        (b"x-hop", b"1"),
        (b"x-a", b"b"),
    )
    assert response_fields(headers) == [(b"content-length", b"2"), (b"x-a", b"b")]


def test_header_edits() -> None:
    edits = HeaderEdits(set=((b"x-a", b"new"),), add=((b"x-b", b"2"),), remove=(b"x-c",))
    got = edits.apply([(b"x-a", b"old"), (b"x-a", b"old2"), (b"x-b", b"1"), (b"x-c", b"gone")])
    assert got == [(b"x-b", b"1"), (b"x-a", b"new"), (b"x-b", b"2")]
    assert not HeaderEdits()


def test_request_fields_trusted_downstream_fills_in_what_it_did_not_say() -> None:
    said = ((b"host", b"a"), (b"x-forwarded-proto", b"https"), (b"x-forwarded-port", b"443"))
    out, _ = request_fields(said, PEER, trust_downstream=True)
    assert [f for f in out if f[0].startswith(b"x-forwarded-")] == [
        (b"x-forwarded-proto", b"https"),  # the trusted proxy's word, kept
        (b"x-forwarded-port", b"443"),
        (b"x-forwarded-for", b"192.0.2.7"),
        (b"x-forwarded-host", b"a"),  # not said: ours
    ]
    silent, _ = request_fields(((b"host", b"a"),), PEER, trust_downstream=True)
    names = [n for n, _ in silent]
    assert names.count(b"x-forwarded-proto") == names.count(b"x-forwarded-port") == 1
