"""Property tests for the parsers that face the network or the user, outside DNS (which has
its own in tests/dns/test_fuzz.py): the HTTP server behind the config stream and the admin
endpoint, the config-stream client's line splitter and decoder, and the manifest loader.
Whatever arrives, each either answers, reports a clear error, or drops the input — and keeps
serving the next well-formed input."""

from __future__ import annotations

import json
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.config.dns import DnsConfig
from mesh.httpserve import HttpServer, Request, Response, text
from mesh.manifests import ManifestError, load_text, parse_object
from mesh.stream_client import LineSplitter, StreamError, decode

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


async def _hello(request: Request) -> Response:
    return text(200, f"hello {request.path}")


async def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, and read until the server closes (bounded)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    out = b""
    async with stream:
        with trio.move_on_after(5):
            try:
                await stream.send_all(data)
                await stream.send_eof()
                while chunk := await stream.receive_some(65536):
                    out += chunk
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
    return out


HTTPISH = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.sampled_from(
            [
                b"GET / HTTP/1.1\r\n",
                b"Host: x\r\n",
                b"\r\n",
                b"Content-Length: 5\r\n",
                b"Transfer-Encoding: chunked\r\n",
                b"0\r\n\r\n",
                b"POST /v1 HTTP/1.0\r\n",
                b"\x00\xff",
                b"GET /\r\n",
                b" HTTP/1.1",
                b"Content-Length: -1\r\n",
                b"abc",
            ]
        ),
        max_size=12,
    ).map(b"".join),
)


async def test_http_server_survives_any_bytes() -> None:
    server = HttpServer(("127.0.0.1", 0), _hello, read_timeout=1.0, idle_timeout=1.0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)

        @SETTINGS
        @given(data=HTTPISH)
        def check(data: bytes) -> None:
            reply = trio.from_thread.run(_exchange, port, data)
            if reply:
                # Anything said back is a well-formed HTTP/1.1 response.
                assert reply.startswith(b"HTTP/1.1 "), reply[:40]
                status = int(reply[9:12])
                assert status in (200, 400, 405, 413, 414, 431, 501, 505), reply[:60]
            good = trio.from_thread.run(_exchange, port, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            assert good.startswith(b"HTTP/1.1 200") and good.endswith(b"hello /ok\n")

        await trio.to_thread.run_sync(check)
        nursery.cancel_scope.cancel()


@SETTINGS
@given(chunks=st.lists(st.binary(max_size=64), max_size=20))
def test_line_splitter_is_chunking_independent(chunks: list[bytes]) -> None:
    whole = b"".join(chunks)
    splitter = LineSplitter(max_line=1 << 20)
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    assert lines == whole.split(b"\n")[:-1]


@SETTINGS
@given(line=st.binary(max_size=200))
def test_decoding_garbage_is_a_stream_error(line: bytes) -> None:
    # Only StreamError may come out (the client drops the connection and reconnects).
    try:
        config = decode(line, DnsConfig)
    except StreamError as exc:
        assert str(exc).startswith("invalid config")
    else:
        assert isinstance(config, DnsConfig)


def test_overlong_line_is_refused() -> None:
    splitter = LineSplitter(max_line=10)
    try:
        splitter.feed(b"x" * 11)
    except StreamError as exc:
        assert "longer than 10" in str(exc)
    else:
        raise AssertionError("an overlong line must be refused")


JSONISH: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
KINDS = st.sampled_from(
    [
        "Service",
        "Pod",
        "EndpointSlice",
        "Endpoints",
        "Ingress",
        "HTTPRoute",
        "Secret",
        "Namespace",
        "IngressClass",
        "List",
        "Widget",
    ]
)


@SETTINGS
@given(kind=KINDS, metadata=JSONISH, spec=JSONISH, extra=JSONISH)
def test_parse_object_never_raises(kind: str, metadata: Any, spec: Any, extra: Any) -> None:
    doc = {"kind": kind, "metadata": metadata, "spec": spec, "status": extra, "items": extra}
    out = parse_object(doc, "f.yaml")
    if isinstance(out, ManifestError):
        assert out.source == "f.yaml" and out.message


@SETTINGS
@given(text_=st.text(max_size=300))
def test_load_text_never_raises(text_: str) -> None:
    result = load_text(text_, "f.yaml")
    assert all(e.source == "f.yaml" for e in result.errors)


@SETTINGS
@given(docs=st.lists(JSONISH, max_size=4))
def test_good_objects_load_next_to_bad_ones(docs: list[Any]) -> None:
    good = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ok"}}
    result = load_text(json.dumps([*docs, good]), "f.json")
    assert ("Namespace", "", "ok") in [o.key for o in result.objects]
