"""ingress-nginx annotations, each with ingress-nginx's semantics, through translator and planner."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from mesh.control.translate.gateway import translate_gateway
from mesh.control.translate.nginx import parse_annotations, size
from mesh.http.filters import apr1
from mesh.http.plan import Forward, Respond
from mesh.http.split import affinity_token
from tests.routing.world import (
    NGINX,
    ingress,
    ingress_class,
    obj,
    path,
    request,
    served_by,
    service,
    snapshot,
)

SERVICES = [
    *service("web", "127.0.1.1"),
    *service("canary", "127.0.1.2"),
    *service("canary2", "127.0.1.3"),
]


def world(annotations: dict[str, str], *extra: Any, p: str = "/app", **spec: Any) -> Any:
    return snapshot(
        ingress_class(),
        *SERVICES,
        *extra,
        ingress("i", "foo.com", path(p, "web"), annotations=annotations, **spec),
    )


def fields(decision: Forward | Respond) -> dict[str, Any]:
    out: dict[str, Any] = {"served": served_by(decision)}
    if isinstance(decision, Respond):
        out.update({k: v for k, v in decision.headers})
    else:
        out.update(target=decision.target, host=decision.host)
    return out


TLS = {"tls": [{"hosts": ["foo.com"], "secretName": "foo-tls"}]}

# (id, annotations, Ingress spec extras, request target, request fields, expected subset)
CASES = [
    ("rewrite-target with captures", {"rewrite-target": "/$2"}, {"p": "/app(/|$)(.*)"}, "/app/x/y?q=1", {}, {"served": "web", "target": "/x/y?q=1"}),
    ("rewrite-target case-insensitive", {"rewrite-target": "/$2"}, {"p": "/app(/|$)(.*)"}, "/APP/x", {}, {"served": "web", "target": "/x"}),
    ("rewrite-target replaces the whole path", {"rewrite-target": "/"}, {}, "/app/deep/path", {}, {"target": "/"}),
    ("use-regex makes the path a regex", {"use-regex": "true"}, {"p": "/ap+/[0-9]+"}, "/appp/42", {}, {"served": "web", "target": "/appp/42"}),
    ("regex paths match any prefix string", {"use-regex": "true"}, {}, "/application", {}, {"served": "web"}),
    ("without regex, prefix by element", {}, {}, "/application", {}, {"served": "404 no-route"}),
    ("ssl-redirect with TLS", {}, TLS, "/app?x=1", {"scheme": "http"}, {"served": "308 redirect", "location": "https://foo.com/app?x=1"}),
    ("ssl-redirect over TLS goes through", {}, TLS, "/app", {"scheme": "https"}, {"served": "web"}),
    ("ssl-redirect false", {"ssl-redirect": "false"}, TLS, "/app", {"scheme": "http"}, {"served": "web"}),
    ("no TLS, no redirect", {}, {}, "/app", {"scheme": "http"}, {"served": "web"}),
    ("force-ssl-redirect without TLS", {"force-ssl-redirect": "true"}, {}, "/app", {"scheme": "http"}, {"served": "308 redirect", "location": "https://foo.com/app"}),
    ("app-root", {"app-root": "/app"}, {"p": "/"}, "/", {}, {"served": "302 redirect", "location": "/app"}),
    ("app-root only for /", {"app-root": "/app"}, {"p": "/"}, "/x", {}, {"served": "web"}),
    ("permanent-redirect", {"permanent-redirect": "https://new.example/x"}, {}, "/app", {}, {"served": "301 redirect", "location": "https://new.example/x"}),
    ("permanent-redirect-code", {"permanent-redirect": "https://n.example", "permanent-redirect-code": "308"}, {}, "/app", {}, {"served": "308 redirect"}),
    ("temporal-redirect", {"temporal-redirect": "https://t.example"}, {}, "/app", {}, {"served": "302 redirect", "location": "https://t.example"}),
    ("temporal wins over permanent", {"temporal-redirect": "https://t.example", "permanent-redirect": "https://p.example"}, {}, "/app", {}, {"served": "302 redirect", "location": "https://t.example"}),
    ("temporal-redirect-code", {"temporal-redirect": "https://t.example", "temporal-redirect-code": "307"}, {}, "/app", {}, {"served": "307 redirect"}),
    ("proxy-body-size 1k", {"proxy-body-size": "1k"}, {}, "/app", {"content_length": 1025}, {"served": "413 body-too-large"}),
    ("proxy-body-size at the limit", {"proxy-body-size": "1k"}, {}, "/app", {"content_length": 1024}, {"served": "web"}),
    ("proxy-body-size 0 is no limit", {"proxy-body-size": "0"}, {}, "/app", {"content_length": 10**12}, {"served": "web"}),
    ("upstream-vhost", {"upstream-vhost": "internal.svc"}, {}, "/app", {}, {"host": "internal.svc"}),
    ("whitelist-source-range allows", {"whitelist-source-range": "127.0.0.0/24, 10.0.0.1"}, {}, "/app", {"client": "10.0.0.1"}, {"served": "web"}),
    ("whitelist-source-range denies", {"whitelist-source-range": "127.0.0.0/24"}, {}, "/app", {"client": "127.0.1.1"}, {"served": "403 denied"}),
    ("denylist-source-range", {"denylist-source-range": "127.0.0.0/8"}, {}, "/app", {"client": "127.0.0.1"}, {"served": "403 denied"}),
    ("cors preflight", {"enable-cors": "true", "cors-allow-origin": "https://a.example", "cors-allow-methods": "GET, PUT", "cors-max-age": "600", "cors-allow-credentials": "false"}, {}, "/app", {"method": "OPTIONS", "headers": {"origin": "https://a.example", "access-control-request-method": "PUT"}}, {"served": "204 cors-preflight", "access-control-allow-origin": "https://a.example", "access-control-allow-methods": "GET, PUT", "access-control-max-age": "600"}),
    ("cors off by default", {"cors-allow-origin": "https://a.example"}, {}, "/app", {"method": "OPTIONS", "headers": {"origin": "https://a.example", "access-control-request-method": "PUT"}}, {"served": "web"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("annotations", "spec", "target", "req", "want"),
    [pytest.param(a, s, t, r, w, id=i) for i, a, s, t, r, w in CASES],
)
def test_annotation(
    annotations: dict[str, str],
    spec: dict[str, Any],
    target: str,
    req: dict[str, Any],
    want: dict[str, Any],
) -> None:
    got = fields(request(world(annotations, **spec), target, **req))
    assert {k: got.get(k) for k in want} == want
    assert translate_gateway(world(annotations, **spec)).problems == ()


def test_timeouts_forwarded_prefix_and_backend_protocol() -> None:
    ann = {"proxy-connect-timeout": "3", "proxy-read-timeout": "120", "proxy-send-timeout": "30",
           "x-forwarded-prefix": "/app", "backend-protocol": "HTTPS"}  # fmt: skip
    fwd = request(world(ann), "/app")
    assert isinstance(fwd, Forward)
    t = fwd.timeouts
    assert (t.connect, t.read, t.send) == (3.0, 120.0, 30.0)
    assert fwd.request_headers.set == (("x-forwarded-prefix", "/app"),)
    assert fwd.protocol == "https"


def canary(name: str, svc: str, ann: dict[str, str], created: str = "2026-03-01T00:00:00Z") -> Any:
    return ingress(
        name, "foo.com", path("/app", svc), annotations={"canary": "true", **ann}, created=created
    )


def test_canary_by_header_cookie_and_weight() -> None:
    snap = world(
        {},
        canary(
            "c",
            "canary",
            {"canary-by-header": "X-Canary", "canary-by-cookie": "cc", "canary-weight": "10"},
        ),
    )
    cases: list[tuple[dict[str, Any], str]] = [
        ({"headers": {"x-canary": "always"}, "rand": 0.99}, "canary"),
        ({"headers": {"x-canary": "never", "cookie": "cc=always"}, "rand": 0.0}, "web"),
        ({"headers": {"cookie": "cc=always"}, "rand": 0.99}, "canary"),
        ({"headers": {"cookie": "cc=never"}, "rand": 0.0}, "web"),
        ({"rand": 0.05}, "canary"),
        ({"rand": 0.5}, "web"),
    ]
    for req, want in cases:
        assert served_by(request(snap, "/app", **req)) == want, req


def test_several_canaries_each_take_their_weight() -> None:
    snap = world(
        {},
        canary("c1", "canary", {"canary-weight": "10"}),
        canary("c2", "canary2", {"canary-weight": "20", "canary-weight-total": "100"}),
    )
    got = [served_by(request(snap, "/app", rand=r)) for r in (0.05, 0.15, 0.29, 0.31, 0.9)]
    assert got == ["canary", "canary2", "canary2", "web", "web"]


def test_canary_by_header_value_and_pattern() -> None:
    snap = world(
        {}, canary("c", "canary", {"canary-by-header": "x-v", "canary-by-header-value": "blue"})
    )
    assert served_by(request(snap, "/app", headers={"x-v": "blue"})) == "canary"
    assert served_by(request(snap, "/app", headers={"x-v": "always"})) == "web"
    snap = world(
        {}, canary("c", "canary", {"canary-by-header": "x-v", "canary-by-header-pattern": "^gr"})
    )
    assert served_by(request(snap, "/app", headers={"x-v": "green"})) == "canary"


def test_canary_without_main_ingress_is_reported() -> None:
    snap = world(
        {},
        ingress(
            "lonely",
            "bar.com",
            path("/", "canary"),
            annotations={"canary": "true", "canary-weight": "50"},
        ),
    )
    problems = [(p.object, p.message) for p in translate_gateway(snap).problems]
    assert problems == [("default/lonely", "canary for host bar.com path / has no main Ingress")]


def test_affinity_cookie() -> None:
    snap = world(
        {
            "affinity": "cookie",
            "session-cookie-name": "route",
            "session-cookie-max-age": "3600",
            "session-cookie-path": "/app",
        }
    )
    fwd = request(snap, "/app")
    assert isinstance(fwd, Forward) and fwd.affinity is not None
    assert (fwd.affinity.cookie, fwd.affinity.max_age, fwd.affinity.path) == ("route", 3600, "/app")
    token = affinity_token("127.0.1.1", 8080)
    fwd = request(snap, "/app", headers={"cookie": f"route={token}"})
    assert isinstance(fwd, Forward) and fwd.pinned == ("127.0.1.1", 8080) and fwd.affinity is None


def test_limits() -> None:
    snap = world({"limit-rps": "5", "limit-burst-multiplier": "2", "limit-connections": "7"})
    fwd = request(snap, "/app")
    assert isinstance(fwd, Forward) and fwd.connection_limit == 7
    rate = fwd.route.policy.rate_limit
    assert rate is not None and (rate.rps, rate.burst) == (5, 10)


def auth_secret(text: str, name: str = "users") -> Any:
    return obj("Secret", name, data={"auth": base64.b64encode(text.encode()).decode()})


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_from_htpasswd_secret() -> None:
    htpasswd = f"alice:{apr1('wonder', 'abcdefgh')}\nbob:$2y$05$notsupported\n"
    snap = world(
        {"auth-type": "basic", "auth-secret": "users", "auth-realm": "Staff"}, auth_secret(htpasswd)
    )
    r = request(snap, "/app")
    assert isinstance(r, Respond) and (r.status, r.headers) == (
        401,
        (("www-authenticate", 'Basic realm="Staff"'),),
    )
    assert served_by(request(snap, "/app", headers=basic("alice", "wonder"))) == "web"
    assert served_by(request(snap, "/app", headers=basic("alice", "nope"))) == "401 denied"
    problems = [p.message for p in translate_gateway(snap).problems]
    assert problems == [
        "auth-secret default/users: line 2 (bob): only $apr1$ (htpasswd -m), {SHA} and {PLAIN} are supported"
    ]


def test_basic_auth_with_missing_secret_is_not_served_open() -> None:
    snap = world({"auth-type": "basic", "auth-secret": "nope"})
    assert served_by(request(snap, "/app")) == "404 no-route"
    assert [p.message for p in translate_gateway(snap).problems] == [
        "auth-secret default/nope not found: not served"
    ]


def test_auth_url_is_passed_to_the_data_path() -> None:
    fwd = request(world({"auth-url": "http://auth.default.svc/check"}), "/app")
    assert isinstance(fwd, Forward) and fwd.external_auth == "http://auth.default.svc/check"


def test_raw_configuration_is_refused_and_the_ingress_still_serves() -> None:
    ann = {
        "configuration-snippet": "more_set_headers 'X: y';",
        "server-snippet": "location /x {}",
        "auth-snippet": "x",
    }
    snap = world(ann)
    assert served_by(request(snap, "/app")) == "web"
    problems = [(p.object, p.message) for p in translate_gateway(snap).problems]
    assert problems == [
        (
            "default/i",
            f"annotation {NGINX}{key} refused: the gateway does not run raw configuration",
        )
        for key in ("auth-snippet", "configuration-snippet", "server-snippet")
    ]


BAD = [
    # (annotations, what a request to the Ingress gets, message)
    ({"proxy-body-size": "lots"}, "web", "annotation nginx.ingress.kubernetes.io/proxy-body-size: 'lots' is not a size such as 512k, 8m or 1g"),
    ({"ssl-redirect": "yes"}, "web", "annotation nginx.ingress.kubernetes.io/ssl-redirect: 'yes' is not a boolean (true or false)"),
    ({"proxy-read-timeout": "1m"}, "web", "annotation nginx.ingress.kubernetes.io/proxy-read-timeout: '1m' is not a whole number"),
    ({"backend-protocol": "GRPC"}, "web", "annotation nginx.ingress.kubernetes.io/backend-protocol: 'GRPC' is not supported (HTTP or HTTPS)"),
    # still a canary (weight 0); with no main Ingress for its path it serves nothing
    ({"canary": "true", "canary-weight": "101"}, "404 no-route", "annotation nginx.ingress.kubernetes.io/canary-weight: '101' must be between 0 and 100"),
    ({"permanent-redirect": "not a url"}, "web", "annotation nginx.ingress.kubernetes.io/permanent-redirect: 'not a url' is not an http(s) URL for a redirect"),
    ({"permanent-redirect": "https://x.example", "permanent-redirect-code": "304"}, "301 redirect", "annotation nginx.ingress.kubernetes.io/permanent-redirect-code: 304 is not a redirect status (301, 302, 303, 307 or 308)"),
    ({"affinity": "ip"}, "web", "annotation nginx.ingress.kubernetes.io/affinity: 'ip' is not supported (cookie)"),
    ({"limit-rps": "-1"}, "web", "annotation nginx.ingress.kubernetes.io/limit-rps: '-1' must be at least 1"),
    ({"whitelist-source-range": "10.0.0.0/33"}, "404 no-route", "annotation nginx.ingress.kubernetes.io/whitelist-source-range: '10.0.0.0/33' is not an address range (CIDR)"),
    ({"auth-type": "digest", "auth-secret": "s"}, "404 no-route", "annotation nginx.ingress.kubernetes.io/auth-type: 'digest' is not supported (basic)"),
    ({"mirror-target": "x"}, "web", "annotation nginx.ingress.kubernetes.io/mirror-target is not supported and was ignored"),
]  # fmt: skip


@pytest.mark.parametrize(("annotations", "served", "message"), BAD)
def test_a_bad_annotation_is_reported_for_its_ingress_and_others_keep_serving(
    annotations: dict[str, str], served: str, message: str
) -> None:
    snap = snapshot(
        ingress_class(),
        *SERVICES,
        ingress("bad", "foo.com", path("/app", "web"), annotations=annotations),
        ingress("good", "bar.com", path("/", "web")),
    )
    assert served_by(request(snap, "/app")) == served
    assert served_by(request(snap, "/", "bar.com")) == "web"
    problems = [(p.object, p.message) for p in translate_gateway(snap).problems]
    assert ("default/bad", message) in problems
    assert all(who == "default/bad" for who, _ in problems)


def test_sizes() -> None:
    assert [size(v) for v in ("0", "100", "8k", "8K", "2m", "1g")] == [
        None,
        100,
        8192,
        8192,
        2 << 20,
        1 << 30,
    ]


def test_annotations_of_other_controllers_are_not_reported() -> None:
    assert (
        parse_annotations(
            {"example.com/x": "1", "kubernetes.io/ingress.class": "mesh"}, "default"
        ).problems
        == []
    )


def test_canary_weight_total() -> None:
    snap = world({}, canary("c", "canary", {"canary-weight": "1", "canary-weight-total": "4"}))
    assert [served_by(request(snap, "/app", rand=r)) for r in (0.2, 0.3)] == ["canary", "web"]


def test_basic_auth_from_an_auth_map_secret() -> None:
    users = obj("Secret", "map", stringData={"carol": apr1("pw", "saltsalt")})
    snap = world(
        {"auth-type": "basic", "auth-secret": "map", "auth-secret-type": "auth-map"}, users
    )
    assert served_by(request(snap, "/app", headers=basic("carol", "pw"))) == "web"
    assert served_by(request(snap, "/app", headers=basic("carol", "no"))) == "401 denied"


def test_auth_secret_in_another_namespace() -> None:
    users = obj(
        "Secret", "users", "auth", data={"auth": base64.b64encode(b"dan:{PLAIN}x").decode()}
    )
    snap = world({"auth-type": "basic", "auth-secret": "auth/users"}, users)
    assert served_by(request(snap, "/app", headers=basic("dan", "x"))) == "web"
