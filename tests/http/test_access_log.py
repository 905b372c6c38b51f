"""The JSON access log: the exact line, escaping, batching, and a sink that blocks or fails
never reaching the caller."""

from __future__ import annotations

import io
import json
import threading

from mesh.http.access_log import AccessLog, AccessRecord, render

FULL = AccessRecord(
    start=1767323045.678,
    method="GET",
    host="shop.example.com",
    path="/cart?id=1",
    status=200,
    route="shop/web/0",
    backend="shop/web:80",
    upstream="127.0.1.5:8080",
    client="127.0.0.9",
    bytes_in=312,
    bytes_out=5120,
    duration=0.001234,
    upstream_connect=0.000101,
    upstream_response=0.000987,
    trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    request_id="b7ad6b71-6f0e-4ab4-9e0c-d6fd4e5e8e5a",
)


def test_a_full_line() -> None:
    assert render(FULL) == (
        '{"time":"2026-01-02T03:04:05.678Z","method":"GET","host":"shop.example.com",'
        '"path":"/cart?id=1","status":200,"reason":null,"route":"shop/web/0",'
        '"backend":"shop/web:80","upstream":"127.0.1.5:8080","client":"127.0.0.9",'
        '"bytes_in":312,"bytes_out":5120,"duration_ms":1.234,"upstream_connect_ms":0.101,'
        '"upstream_response_ms":0.987,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736",'
        '"request_id":"b7ad6b71-6f0e-4ab4-9e0c-d6fd4e5e8e5a"}\n'
    )


def test_a_response_the_gateway_made_itself() -> None:
    record = AccessRecord(1767323045.0, "POST", "x.test", "/", 503, reason="no-healthy-upstream")
    line = json.loads(render(record))
    assert line["reason"] == "no-healthy-upstream" and line["status"] == 503
    assert line["route"] is None and line["upstream_connect_ms"] is None
    assert line["time"] == "2026-01-02T03:04:05.000Z"
    assert line["duration_ms"] == 0.0


def test_hostile_strings_stay_on_one_line_and_round_trip() -> None:
    nasty = 'a"b\\c\nd\re\x00f\u2028g\U0001f600h'
    line = render(FULL._replace(path=nasty, host=nasty, method="G\tET"))
    assert line.count("\n") == 1 and line.endswith("\n") and line.isascii()
    parsed = json.loads(line)
    assert parsed["path"] == parsed["host"] == nasty and parsed["method"] == "G\tET"


class Sink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.event = threading.Event()

    def __call__(self, data: bytes) -> None:
        self.writes.append(data)
        self.event.set()


def test_nothing_is_written_until_flushed_then_in_batches() -> None:
    sink = Sink()
    log = AccessLog(sink, batch=4)
    for i in range(10):
        log.log(FULL._replace(status=200 + i))
    assert sink.writes == []
    log.flush()
    assert [w.count(b"\n") for w in sink.writes] == [4, 4, 2]
    statuses = [json.loads(x)["status"] for w in sink.writes for x in w.splitlines()]
    assert statuses == list(range(200, 210)) and log.written == 10


def test_the_writer_thread_flushes_on_a_full_batch_and_on_close() -> None:
    sink = Sink()
    log = AccessLog(sink, batch=8, interval=60)  # only a full batch can wake it early
    log.start()
    for _ in range(8):
        log.log(FULL)
    assert sink.event.wait(10)
    assert b"".join(sink.writes).count(b"\n") == 8
    log.log(FULL)
    log.close()
    assert b"".join(sink.writes).count(b"\n") == 9


def test_the_timer_flushes_a_partial_batch() -> None:
    sink = Sink()
    log = AccessLog(sink, batch=1000, interval=0.05)
    log.start()
    log.log(FULL)
    assert sink.event.wait(10)
    log.close()
    assert sink.writes == [render(FULL).encode()]


def test_a_blocked_sink_drops_and_counts_instead_of_blocking() -> None:
    release = threading.Event()
    entered = threading.Event()

    def stuck(data: bytes) -> None:
        entered.set()
        release.wait(10)

    log = AccessLog(stuck, batch=2, interval=60, max_pending=5)
    log.start()
    log.log(FULL)
    log.log(FULL)  # a full batch: the writer takes both and blocks in the sink
    assert entered.wait(10)
    for _ in range(20):  # returns at once although the sink is stuck
        log.log(FULL)
    assert log.dropped == 15
    release.set()
    log.close()
    assert log.written == 7


def test_a_failing_sink_is_counted_not_raised() -> None:
    closed = io.BytesIO()
    closed.close()
    log = AccessLog(closed)
    log.log(FULL)
    log.flush()
    assert log.write_errors == 1 and log.written == 0


def test_a_file_sink_gets_flushed_lines() -> None:
    buffer = io.BytesIO()
    log = AccessLog(buffer, batch=2)
    log.log(FULL)
    log.close()
    assert buffer.getvalue() == render(FULL).encode()
