"""Small pure pieces: durations, typed filters, htpasswd hashes, header edits, buckets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mesh.config.gateway import HeaderEdits
from mesh.http.filters import TokenBuckets, apply_edits, apr1, parse_htpasswd, verify_password
from mesh.objects import HTTPRoute, format_duration, parse_duration

DURATIONS = [("10s", 10.0), ("1m", 60.0), ("1h", 3600.0), ("500ms", 0.5), ("1m30s", 90.0),
             ("1h2m3s4ms", 3723.004), ("0s", 0.0)]  # fmt: skip


@pytest.mark.parametrize(("text", "seconds"), DURATIONS)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "10", "1.5s", "-1s", "1d", "1s1s1s1s1s", "123456s", "s"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(bad)


def route(rule: dict[str, object]) -> HTTPRoute:
    return HTTPRoute.model_validate({"metadata": {"name": "r"}, "spec": {"rules": [rule]}})


def test_typed_filters_and_round_trip() -> None:
    r = route(
        {
            "timeouts": {"request": "1m30s", "backendRequest": "500ms"},
            "retry": {"codes": [503], "attempts": 2, "backoff": "100ms"},
            "filters": [
                {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "m", "port": 80}, "fraction": {"numerator": 1, "denominator": 4}}},
                {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/x"}}},
            ],
        }
    )  # fmt: skip
    rule = r.spec.rules[0]
    assert rule.timeouts is not None and (rule.timeouts.request, rule.timeouts.backend_request) == (
        90.0,
        0.5,
    )
    mirror = rule.filters[0].request_mirror
    assert mirror is not None and mirror.share == 0.25
    wire = r.to_dict()["spec"]["rules"][0]
    assert wire["timeouts"] == {"request": "1m30s", "backendRequest": "500ms"}
    assert HTTPRoute.model_validate(r.to_dict()) == r


BAD_RULES = [
    ({"filters": [{"type": "URLRewrite"}]}, "needs urlRewrite"),
    ({"filters": [{"type": "URLRewrite", "urlRewrite": {}, "requestRedirect": {}}]}, "may not set requestRedirect"),
    ({"filters": [{"type": "URLRewrite", "urlRewrite": {}}, {"type": "RequestRedirect", "requestRedirect": {}}]}, "cannot both be used"),
    ({"filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch"}}}]}, "needs replacePrefixMatch"),
    ({"timeouts": {"request": "1s", "backendRequest": "2s"}}, "may not be longer"),
    ({"timeouts": {"request": "soon"}}, "is not a duration"),
    ({"matches": [{"path": {"type": "RegularExpression", "value": "(("}}]}, "not a valid regular expression"),
    ({"matches": [{"path": {"type": "Exact", "value": "relative"}}]}, "must start with '/'"),
    ({"retry": {"codes": [200]}}, "greater than or equal to 400"),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "message"), BAD_RULES)
def test_bad_rules_are_refused_with_a_reason(rule: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        route(rule)


def test_apr1_matches_openssl() -> None:
    # openssl passwd -apr1 -salt abcdefgh secret
    assert apr1("secret", "abcdefgh") == "$apr1$abcdefgh$h9FWgUz3n9YxylKLlR5SQ/"
    assert verify_password("$apr1$abcdefgh$h9FWgUz3n9YxylKLlR5SQ/", "secret")
    assert not verify_password("$apr1$abcdefgh$h9FWgUz3n9YxylKLlR5SQ/", "Secret")
    assert not verify_password("$6$unsupported", "secret")


def test_htpasswd_parsing() -> None:
    users, problems = parse_htpasswd("# comment\n\nalice:{PLAIN}a\nnocolon\nbob:$2y$05$x\n")
    assert users == (("alice", "{PLAIN}a"),)
    assert problems == [
        "line 4 is not user:hash",
        "line 5 (bob): only $apr1$ (htpasswd -m), {SHA} and {PLAIN} are supported",
    ]


def test_header_edits() -> None:
    headers = [("Host", "a"), ("X-A", "old"), ("x-a", "old2"), ("X-C", "gone"), ("x-d", "1")]
    edits = HeaderEdits(set=(("x-a", "new"),), add=(("x-d", "2"),), remove=("X-c",))
    assert apply_edits(headers, edits) == [
        ("Host", "a"),
        ("x-d", "1"),
        ("x-a", "new"),
        ("x-d", "2"),
    ]


def test_token_buckets_are_bounded() -> None:
    buckets = TokenBuckets(max_keys=2)
    assert buckets.take((0, "a"), 0.0, 1.0, 1)
    assert not buckets.take((0, "a"), 0.0, 1.0, 1)
    buckets.take((0, "b"), 0.0, 1.0, 1)
    buckets.take((0, "c"), 0.0, 1.0, 1)  # "a" is forgotten: a fresh, full bucket
    assert buckets.take((0, "a"), 0.0, 1.0, 1)
