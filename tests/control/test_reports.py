"""The report route's pure core (control/reports.py): strict decoding as a table, and the
table of live reports with leases, instances and their union."""

from __future__ import annotations

import json

import pytest

from mesh.config.gateway import ListenerFailure
from mesh.control.reports import (
    MAX_BODY,
    MAX_INSTANCES,
    Report,
    ReportError,
    Reports,
    encode_failures,
    parse_report,
)
from mesh.report_client import instance_name

L = "gateway/default/web/8080"
TAKEN = ListenerFailure(message="cannot listen on 127.11.0.1:8080: Address already in use")


def body(**fields: object) -> bytes:
    data: dict[str, object] = {"instance": "host/8080", "listeners": {}}
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


GOOD = [
    (body(), Report("host/8080", 30, {})),
    (
        body(ttlSeconds=5, listeners={L: {"message": TAKEN.message}}),
        Report("host/8080", 5, {L: TAKEN}),
    ),
    (
        body(listeners={L: {"message": "x", "addressUnusable": True}}),
        Report("host/8080", 30, {L: ListenerFailure(message="x", address_unusable=True)}),
    ),
    (body(instance="node-1.example:[::1]:8080"), Report("node-1.example:[::1]:8080", 30, {})),
]


@pytest.mark.parametrize(("raw", "expected"), GOOD)
def test_a_good_report_is_decoded(raw: bytes, expected: Report) -> None:
    assert parse_report("ingress", raw) == expected


BAD = [
    # (kind, body, content type, status, words of the sentence)
    ("dns", body(), "application/json", 404, "no component reports of kind 'dns'"),
    ("ingress", body(), "text/plain", 415, "Content-Type application/json"),
    ("ingress", body(), None, 415, "Content-Type application/json"),
    ("ingress", b" " * (MAX_BODY + 1), "application/json", 413, f"at most {MAX_BODY} bytes"),
    ("ingress", b"{", "application/json", 400, "not JSON"),
    ("ingress", b"\xff\xfe", "application/json", 400, "not JSON"),
    ("ingress", b"[" * 60_000, "application/json", 400, "not JSON"),
    ("ingress", b"[]", "application/json", 400, "must be a JSON object"),
    ("ingress", b'{"instance":"a","instance":"b","listeners":{}}', None, 400, "appears twice"),
    ("ingress", body(extra=1), "application/json", 400, 'unknown field "extra"'),
    ("ingress", body(instance=...), "application/json", 400, '"instance" must name'),
    ("ingress", body(instance=""), "application/json", 400, '"instance" must name'),
    ("ingress", body(instance="a b"), "application/json", 400, '"instance" must name'),
    ("ingress", body(instance="x" * 254), "application/json", 400, '"instance" must name'),
    ("ingress", body(instance=7), "application/json", 400, '"instance" must name'),
    ("ingress", body(ttlSeconds=-1), "application/json", 400, '"ttlSeconds" must be'),
    ("ingress", body(ttlSeconds=601), "application/json", 400, '"ttlSeconds" must be'),
    ("ingress", body(ttlSeconds=2.5), "application/json", 400, '"ttlSeconds" must be'),
    ("ingress", body(ttlSeconds=True), "application/json", 400, '"ttlSeconds" must be'),
    ("ingress", body(listeners=...), "application/json", 400, '"listeners" is missing'),
    ("ingress", body(listeners=[]), "application/json", 400, '"listeners" must be an object'),
    ("ingress", body(listeners={L: "x"}), "application/json", 400, "must be an object"),
    ("ingress", body(listeners={L: {}}), "application/json", 400, ".message must be a string"),
    (
        "ingress",
        body(listeners={L: {"message": "x" * 1025}}),
        "application/json",
        400,
        ".message must be a string",
    ),
    (
        "ingress",
        body(listeners={L: {"message": "x", "why": 1}}),
        "application/json",
        400,
        'unknown field "why"',
    ),
    (
        "ingress",
        body(listeners={L: {"message": "x", "addressUnusable": "yes"}}),
        "application/json",
        400,
        "addressUnusable must be true or false",
    ),
    ("ingress", body(listeners={"": {"message": "x"}}), None, 400, "empty or too long"),
    (
        "ingress",
        body(listeners={f"l{i}": {"message": "x"} for i in range(1025)}),
        "application/json",
        400,
        "more than 1024 entries",
    ),
]


@pytest.mark.parametrize(("kind", "raw", "ctype", "status", "words"), BAD)
def test_a_bad_report_gets_its_status_and_one_sentence(
    kind: str, raw: bytes, ctype: str | None, status: int, words: str
) -> None:
    if ctype is None and status == 400:
        ctype = "application/json; charset=utf-8"  # parameters of the media type are fine
    with pytest.raises(ReportError) as caught:
        parse_report(kind, raw, ctype)
    assert caught.value.status == status
    message = str(caught.value)
    assert words in message, message
    assert "\n" not in message and len(message) < 200


def test_the_reporter_encoding_is_what_the_route_decodes() -> None:
    failures = {
        L: TAKEN,
        "gateway/default/web/9090": ListenerFailure(message="y", address_unusable=True),
    }
    raw = json.dumps({"instance": "h/1", "listeners": encode_failures(failures)}).encode()
    assert parse_report("ingress", raw).payload == failures


def test_two_instances_are_kept_apart_and_a_listener_one_serves_is_served() -> None:
    reports = Reports()
    other = ListenerFailure(message="other")
    assert reports.put("ingress", "b/1", {L: other, "y": other}, 10.0) is True
    assert reports.merged("ingress") == {L: other, "y": other}
    # a sorts first: its sentence; it serves "y", so "y" is served.
    assert reports.put("ingress", "a/1", {L: TAKEN}, 20.0) is True
    assert reports.merged("ingress") == {L: TAKEN}
    assert reports.put("ingress", "a/1", {}, 20.0) is True  # a binds L: served
    assert reports.merged("ingress") == {}
    assert reports.put("ingress", "a/1", {}, 25.0) is False  # a refresh changes nothing
    assert reports.expire(20.0) == []  # a's lease runs to 25 now; b's ended: nothing changes
    assert reports.live("ingress")
    # No instance left: nothing reported, and no gateway has the config any more (a change:
    # its Gateways are Programmed no longer).
    assert reports.expire(25.0) == ["ingress"]
    assert not reports.live("ingress") and reports.merged("ingress") == {}
    assert reports.merged("dns") == {}


def test_the_first_instance_is_a_change_even_with_nothing_to_report() -> None:
    reports = Reports()
    assert not reports.live("ingress")
    assert reports.put("ingress", "gw/1", {}, 10.0) is True  # a gateway took the config
    assert reports.put("ingress", "gw/2", {}, 10.0) is False  # a second one: no news
    assert reports.live("ingress")


def test_a_lease_that_ends_drops_its_report_and_only_that() -> None:
    reports = Reports()
    reports.put("ingress", "gone/1", {L: TAKEN}, 10.0)  # it serves "x"
    reports.put("ingress", "local", {L: TAKEN, "x": TAKEN}, None)  # in process: no lease
    assert reports.merged("ingress") == {L: TAKEN}
    assert reports.next_expiry() == 10.0
    assert reports.expire(9.9) == []
    assert reports.expire(10.0) == ["ingress"]  # nobody serves "x" any more
    assert reports.merged("ingress") == {L: TAKEN, "x": TAKEN}
    assert reports.next_expiry() is None
    assert reports.expire(1e9) == []
    assert reports.describe("ingress", 0.0) == {
        "local": {"expiresInSeconds": None, "entries": [L, "x"]}
    }


def test_the_table_of_live_reporters_is_bounded() -> None:
    reports = Reports()
    for i in range(MAX_INSTANCES):
        reports.put("ingress", f"gw/{i}", {}, 10.0)
    with pytest.raises(ReportError) as caught:
        reports.put("ingress", "one/more", {}, 10.0)
    assert caught.value.status == 429
    reports.put("ingress", "gw/0", {L: TAKEN}, 20.0)  # a known instance refreshes
    reports.expire(10.0)
    assert reports.put("ingress", "one/more", {}, 30.0) is True  # room again; it serves L


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("node-1.example", 8080, "node-1.example/8080"),
        ("my host", 1, "my-host/1"),
        ("_x", 2, "x/2"),
        ("", 3, "gateway/3"),
    ],
)
def test_a_host_name_becomes_an_instance_the_route_takes(
    host: str, port: int, expected: str
) -> None:
    name = instance_name(host, port)
    assert name == expected
    assert parse_report("ingress", body(instance=name)).instance == name
