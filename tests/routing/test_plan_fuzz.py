"""The planner answers every head, however odd, with a decision and never an exception."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.config.gateway import (
    BasicAuth,
    Canary,
    Cors,
    Match,
    PathMatch,
    PathRewrite,
    Policy,
    Redirect,
    Rewrite,
    ValueMatch,
)
from mesh.http.plan import Forward, PlanState, Respond
from tests.routing.tables import compiled, head, route, run

ROUTES = compiled(
    [
        route("exact", "/a", "Exact", hosts=("a.com",)),
        route("wild", "/", hosts=("*.a.com",), policy=Policy(cors=Cors(), allow_sources=("127.0.0.0/8",))),
        route("regex", "^/r(/|$)(.*)", "RegularExpression", policy=Policy(rewrite=Rewrite(path=PathRewrite(kind="Regex", pattern="/r(/|$)(.*)", value="/$2")))),
        route("redir", "/go", policy=Policy(redirect=Redirect(path=PathRewrite(kind="Prefix", value="/")))),
        route("auth", "/auth", policy=Policy(basic_auth=BasicAuth(users=(("u", "{PLAIN}p"),)))),
        route("canary", "/c", canaries=(Canary(backend="c2", header="x-c", header_pattern="^a"),)),
        route("hdr", match=Match(path=PathMatch(value="/h"), headers=(ValueMatch(name="x", kind="RegularExpression", value="a+"),))),
    ]
)  # fmt: skip

text = st.text(max_size=40)


@settings(max_examples=400, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "OPTIONS", "", "get"]),
    target=st.one_of(
        text,
        st.tuples(st.sampled_from(["/", "/a", "/go", "/r", "/auth", "/c", "/h", "http://x/go"]), text).map("".join),
    ),
    host=st.one_of(text, st.sampled_from(["a.com", "b.a.com:80", "[::1]", "[", ":", "."])),
    headers=st.dictionaries(st.sampled_from(["x", "x-c", "cookie", "origin", "authorization", "access-control-request-method"]), text, max_size=4),
    client=st.one_of(text, st.sampled_from(["127.0.0.1", "::1", "10.0.0.1"])),
    scheme=st.sampled_from(["http", "https", ""]),
    length=st.one_of(st.none(), st.integers(min_value=0, max_value=2**64)),
    rand=st.floats(min_value=0.0, max_value=0.999999),
)  # fmt: skip
def test_any_head_gets_a_decision(
    method: str,
    target: str,
    host: str,
    headers: dict[str, str],
    client: str,
    scheme: str,
    length: int | None,
    rand: float,
) -> None:
    h = head(
        target,
        host,
        method=method,
        headers=headers,
        client=client,
        scheme=scheme,
        content_length=length,
    )
    decision = run(ROUTES, h, lambda: rand, state=PlanState())
    assert isinstance(decision, Forward | Respond)
    if isinstance(decision, Forward):
        assert decision.target.startswith("/")
