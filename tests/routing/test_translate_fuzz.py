"""Any annotation value, any backend reference: the translator reports, never raises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.control.translate.gateway import gateway_status, translate_gateway
from mesh.control.translate.nginx import KNOWN, RAW_CONFIG
from mesh.http.routes import compile_routes
from tests.routing.world import NGINX, ingress, ingress_class, obj, path, service, snapshot

values = st.one_of(
    st.sampled_from(["true", "false", "0", "1", "-1", "10k", "1m", "/", "/$1", "cookie", "basic",
                     "https://x.example", "127.0.0.1/8", "HTTPS", "(", "*", "", "999999999999"]),
    st.text(max_size=20),
)  # fmt: skip
keys = st.sampled_from(sorted(KNOWN | RAW_CONFIG | {"unknown-thing"}))


@settings(max_examples=300, deadline=None)
@given(
    annotations=st.dictionaries(keys, values, max_size=8),
    canary=st.dictionaries(keys, values, max_size=6),
    p=st.sampled_from(["/", "/app", "/a(/|$)(.*)", "/(("]),
)
def test_any_annotations_translate(
    annotations: dict[str, str], canary: dict[str, str], p: str
) -> None:
    snap = snapshot(
        ingress_class(),
        *service("web"),
        obj("Secret", "users", data={"auth": "YTp7UExBSU59Yg=="}),
        ingress("i", "foo.com", path(p, "web"), annotations=annotations, tls=[{"secretName": "t"}]),
        ingress("c", "foo.com", path(p, "web"), annotations={"canary": "true", **canary}),
    )
    config = translate_gateway(snap)
    compile_routes(config)  # regexes and ranges compile
    gateway_status(snap, ingress_addresses=("127.0.0.1",))
    for problem in config.problems:
        assert problem.object in ("default/i", "default/c")
        assert "\n" not in problem.message and problem.message


def test_a_regex_path_that_does_not_compile_is_reported() -> None:
    snap = snapshot(
        ingress_class(),
        *service("web"),
        ingress("i", "foo.com", path("/((", "web"), annotations={NGINX + "use-regex": "true"}),
    )
    compile_routes(translate_gateway(snap))
