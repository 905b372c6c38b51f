"""Log lines as people and machines read them."""

from __future__ import annotations

import json
import logging

import pytest

from mesh.log import JsonFormatter, TextFormatter


def record(
    msg: str, *args: object, level: int = logging.ERROR, **extra: object
) -> logging.LogRecord:
    rec = logging.LogRecord("mesh.test", level, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


ERR = "shop.yaml: Service/shop/web: spec.ports[0].port: Input should be less than 65536"


@pytest.mark.parametrize(
    ("rec", "tail"),
    [
        # Fields the message already says are not repeated.
        (record("invalid manifest: %s", ERR, manifest="shop.yaml", object="Service/shop/web",
                field="spec.ports[0].port"),
         f"ERROR mesh.test: invalid manifest: {ERR}"),
        # Short values are always shown: finding "0" or "dns" inside a message means nothing.
        (record("config applied", level=logging.INFO, component="dns", version=0),
         "INFO mesh.test: config applied component=dns version=0"),
        (record("cannot listen", address="127.0.0.1:80/TCP", error="Address already in use"),
         'ERROR mesh.test: cannot listen address=127.0.0.1:80/TCP error="Address already in use"'),
    ],
)  # fmt: skip
def test_text_says_each_thing_once(rec: logging.LogRecord, tail: str) -> None:
    line = TextFormatter().format(rec)
    assert line.split(" ", 1)[1] == tail
    assert "\x1b" not in line


def test_colour_only_when_asked() -> None:
    line = TextFormatter(color=True).format(record("boom"))
    assert "\x1b[31mERROR\x1b[0m" in line


def test_json_keeps_every_field() -> None:
    out = json.loads(JsonFormatter().format(record("invalid manifest: %s", ERR, object="x")))
    assert (out["msg"], out["object"], out["level"]) == (f"invalid manifest: {ERR}", "x", "error")
