"""ingress-nginx annotations (``nginx.ingress.kubernetes.io/*``) of one Ingress, parsed and typed.

Semantics are ingress-nginx's, value by value. What differs, on purpose:

- Raw configuration (every ``*-snippet`` annotation, and the few others that splice text into
  nginx.conf) is refused with a problem naming the Ingress: the gateway never runs
  user-supplied config. The Ingress is otherwise served.
- A bad value is reported for its Ingress and the annotation ignored (ingress-nginx's
  behaviour), except for the annotations that protect something (source ranges, basic and
  external auth): a bad value there takes the Ingress out of service, as serving it
  unprotected would be worse than not serving it.
- ``proxy-body-size`` has no default here (ingress-nginx's is 1m): no limit unless set.
- An annotation this gateway does not implement is reported once, not silently dropped.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from mesh.config.gateway import Affinity, Cors, RateLimit

PREFIX = "nginx.ingress.kubernetes.io/"

RAW_CONFIG = frozenset(
    {
        "configuration-snippet",
        "server-snippet",
        "auth-snippet",
        "stream-snippet",
        "modsecurity-snippet",
        "location-snippet",
        "main-snippet",
        "http-snippet",
    }
)
KNOWN = frozenset(
    {
        "rewrite-target", "use-regex", "ssl-redirect", "force-ssl-redirect", "app-root",
        "permanent-redirect", "permanent-redirect-code", "temporal-redirect",
        "temporal-redirect-code", "backend-protocol", "proxy-body-size",
        "proxy-connect-timeout", "proxy-read-timeout", "proxy-send-timeout", "upstream-vhost",
        "x-forwarded-prefix", "canary", "canary-by-header", "canary-by-header-value",
        "canary-by-header-pattern", "canary-by-cookie", "canary-weight", "canary-weight-total",
        "affinity", "session-cookie-name", "session-cookie-max-age", "session-cookie-path",
        "whitelist-source-range", "allowlist-source-range", "denylist-source-range",
        "limit-rps", "limit-burst-multiplier", "limit-connections", "enable-cors",
        "cors-allow-origin", "cors-allow-methods", "cors-allow-headers",
        "cors-allow-credentials", "cors-max-age", "cors-expose-headers", "auth-type",
        "auth-secret", "auth-secret-type", "auth-realm", "auth-url",
    }
)  # fmt: skip
GUARDS = frozenset(
    {"whitelist-source-range", "allowlist-source-range", "denylist-source-range", "auth-type",
     "auth-secret", "auth-secret-type", "auth-url"}
)  # fmt: skip


class BadValue(ValueError):
    pass


@dataclass
class CanarySpec:
    header: str | None = None
    header_value: str | None = None
    header_pattern: str | None = None
    cookie: str | None = None
    weight: int = 0
    weight_total: int = 100


@dataclass
class Annotations:
    """One Ingress's annotations, typed; ``problems`` says what was refused or ignored."""

    rewrite_target: str | None = None
    use_regex: bool = False
    ssl_redirect: bool = True
    force_ssl_redirect: bool = False
    app_root: str | None = None
    redirect: tuple[str, int] | None = None  # (URL, code)
    backend_protocol: str = "http"
    body_limit: int | None = None
    connect_timeout: float | None = None
    read_timeout: float | None = None
    send_timeout: float | None = None
    upstream_vhost: str | None = None
    forwarded_prefix: str | None = None
    canary: CanarySpec | None = None
    affinity: Affinity | None = None
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    rate_limit: RateLimit | None = None
    connection_limit: int | None = None
    cors: Cors | None = None
    basic_auth_secret: tuple[str, str, str] | None = None  # (namespace, name, secret type)
    auth_realm: str = "Authentication Required"
    auth_url: str | None = None
    problems: list[str] = field(default_factory=list)
    out_of_service: bool = False  # a guard annotation had a bad value


def parse_annotations(annotations: dict[str, str], namespace: str) -> Annotations:
    got = {k[len(PREFIX) :]: v for k, v in annotations.items() if k.startswith(PREFIX)}
    out = Annotations()
    for key in sorted(got):
        if key in RAW_CONFIG or key.endswith("-snippet"):
            out.problems.append(
                f"annotation {PREFIX}{key} refused: the gateway does not run raw configuration"
            )
        elif key not in KNOWN:
            out.problems.append(f"annotation {PREFIX}{key} is not supported and was ignored")
    for keys, parse in _PARSERS:
        if not any(k in got for k in keys):
            continue
        try:
            parse(out, got, namespace)
        except BadValue as exc:
            out.problems.append(f"annotation {PREFIX}{keys[0]}: {exc}")
            if GUARDS.intersection(keys):
                out.out_of_service = True
    return out


# --- value parsers (ingress-nginx's spellings) ----------------------------------------------

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def boolean(value: str) -> bool:
    """Go's strconv.ParseBool, which ingress-nginx uses."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadValue(f"{value!r} is not a boolean (true or false)")


def integer(value: str, low: int = 0, high: int | None = None) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise BadValue(f"{value!r} is not a whole number") from None
    if n < low or (high is not None and n > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadValue(f"{value!r} must be {bound}")
    return n


_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)\s*$")


def size(value: str) -> int | None:
    """An nginx size (``8m``, ``512k``, ``1g``, ``100``) in bytes; ``0`` means no limit."""
    m = _SIZE.match(value)
    if not m:
        raise BadValue(f"{value!r} is not a size such as 512k, 8m or 1g")
    n = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]
    return n or None


def cidrs(value: str) -> tuple[str, ...]:
    out = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise BadValue(f"{part!r} is not an address range (CIDR)") from None
    if not out:
        raise BadValue("no address range given")
    return tuple(out)


def _url(value: str, what: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadValue(f"{value!r} is not an http(s) URL for {what}")
    return value.strip()


# --- one parser per annotation group --------------------------------------------------------

Parsed = dict[str, str]


def _rewrite(out: Annotations, a: Parsed, ns: str) -> None:
    if "use-regex" in a:
        out.use_regex = boolean(a["use-regex"])
    if "rewrite-target" in a:
        out.rewrite_target = a["rewrite-target"]


def _ssl(out: Annotations, a: Parsed, ns: str) -> None:
    if "ssl-redirect" in a:
        out.ssl_redirect = boolean(a["ssl-redirect"])
    if "force-ssl-redirect" in a:
        out.force_ssl_redirect = boolean(a["force-ssl-redirect"])


def _app_root(out: Annotations, a: Parsed, ns: str) -> None:
    root = a["app-root"].strip()
    if not root.startswith("/"):
        raise BadValue(f"{root!r} must be a path starting with '/'")
    out.app_root = root


def _redirects(out: Annotations, a: Parsed, ns: str) -> None:
    # ingress-nginx checks temporal-redirect first: it wins when both are set.
    if a.get("temporal-redirect"):
        code = _redirect_code(a.get("temporal-redirect-code", "302"))
        out.redirect = (_url(a["temporal-redirect"], "temporal-redirect"), code)
    elif a.get("permanent-redirect"):
        code = _redirect_code(a.get("permanent-redirect-code", "301"))
        out.redirect = (_url(a["permanent-redirect"], "permanent-redirect"), code)


def _redirect_code(value: str) -> int:
    code = integer(value, 300, 308)
    if code not in (301, 302, 303, 307, 308):
        raise BadValue(f"{code} is not a redirect status (301, 302, 303, 307 or 308)")
    return code


def _protocol(out: Annotations, a: Parsed, ns: str) -> None:
    value = a["backend-protocol"].strip().upper()
    if value not in ("HTTP", "HTTPS"):
        raise BadValue(f"{value!r} is not supported (HTTP or HTTPS)")
    out.backend_protocol = value.lower()


def _body(out: Annotations, a: Parsed, ns: str) -> None:
    out.body_limit = size(a["proxy-body-size"])


def _timeouts(out: Annotations, a: Parsed, ns: str) -> None:
    for key, attr in (
        ("proxy-connect-timeout", "connect_timeout"),
        ("proxy-read-timeout", "read_timeout"),
        ("proxy-send-timeout", "send_timeout"),
    ):
        if key in a:
            setattr(out, attr, float(integer(a[key], 1)))


def _vhost(out: Annotations, a: Parsed, ns: str) -> None:
    if "upstream-vhost" in a:
        out.upstream_vhost = a["upstream-vhost"].strip()
    if "x-forwarded-prefix" in a:
        out.forwarded_prefix = a["x-forwarded-prefix"].strip()


def _canary(out: Annotations, a: Parsed, ns: str) -> None:
    if not boolean(a.get("canary", "false")):
        return
    spec = CanarySpec(
        header=a.get("canary-by-header") or None,
        header_value=a.get("canary-by-header-value") or None,
        header_pattern=a.get("canary-by-header-pattern") or None,
        cookie=a.get("canary-by-cookie") or None,
    )
    if spec.header_pattern is not None:
        try:
            re.compile(spec.header_pattern)
        except re.error as exc:
            raise BadValue(f"canary-by-header-pattern is not a regular expression: {exc}") from None
    spec.weight_total = integer(a.get("canary-weight-total", "100"), 1)
    spec.weight = integer(a.get("canary-weight", "0"), 0, spec.weight_total)
    out.canary = spec


def _affinity(out: Annotations, a: Parsed, ns: str) -> None:
    if a["affinity"].strip() != "cookie":
        raise BadValue(f"{a['affinity']!r} is not supported (cookie)")
    max_age = a.get("session-cookie-max-age")
    out.affinity = Affinity(
        cookie=a.get("session-cookie-name", "INGRESSCOOKIE").strip() or "INGRESSCOOKIE",
        max_age=integer(max_age, 0) if max_age is not None else None,
        path=a.get("session-cookie-path") or None,
    )


def _ranges(out: Annotations, a: Parsed, ns: str) -> None:
    allow = a.get("allowlist-source-range") or a.get("whitelist-source-range")
    if allow is not None:
        out.allow = cidrs(allow)
    if "denylist-source-range" in a:
        out.deny = cidrs(a["denylist-source-range"])


def _limits(out: Annotations, a: Parsed, ns: str) -> None:
    if "limit-rps" in a:
        rps = integer(a["limit-rps"], 1)
        multiplier = integer(a.get("limit-burst-multiplier", "5"), 1)
        out.rate_limit = RateLimit(rps=rps, burst=rps * multiplier)
    if "limit-connections" in a:
        out.connection_limit = integer(a["limit-connections"], 1)


def _cors(out: Annotations, a: Parsed, ns: str) -> None:
    if not boolean(a.get("enable-cors", "false")):
        return
    base = Cors()
    origins = tuple(o.strip() for o in a.get("cors-allow-origin", "*").split(",") if o.strip())
    out.cors = Cors(
        allow_origins=origins or ("*",),
        allow_methods=a.get("cors-allow-methods", base.allow_methods),
        allow_headers=a.get("cors-allow-headers", base.allow_headers),
        expose_headers=a.get("cors-expose-headers", ""),
        allow_credentials=boolean(a.get("cors-allow-credentials", "true")),
        max_age=integer(a.get("cors-max-age", str(base.max_age)), 0),
    )


def _auth(out: Annotations, a: Parsed, ns: str) -> None:
    if "auth-url" in a:
        out.auth_url = _url(a["auth-url"], "auth-url")
    if "auth-type" not in a:
        return
    if a["auth-type"].strip() != "basic":
        raise BadValue(f"{a['auth-type']!r} is not supported (basic)")
    ref = a.get("auth-secret", "").strip()
    if not ref:
        raise BadValue("auth-type basic needs auth-secret")
    secret_ns, _, name = ref.rpartition("/")
    kind = a.get("auth-secret-type", "auth-file").strip()
    if kind not in ("auth-file", "auth-map"):
        raise BadValue(f"auth-secret-type {kind!r} is not auth-file or auth-map")
    out.basic_auth_secret = (secret_ns or ns, name, kind)
    out.auth_realm = a.get("auth-realm", out.auth_realm)


_PARSERS = (
    (("rewrite-target", "use-regex"), _rewrite),
    (("ssl-redirect", "force-ssl-redirect"), _ssl),
    (("app-root",), _app_root),
    (("permanent-redirect", "temporal-redirect"), _redirects),
    (("backend-protocol",), _protocol),
    (("proxy-body-size",), _body),
    (("proxy-connect-timeout", "proxy-read-timeout", "proxy-send-timeout"), _timeouts),
    (("upstream-vhost", "x-forwarded-prefix"), _vhost),
    (("canary",), _canary),
    (("affinity",), _affinity),
    (("whitelist-source-range", "allowlist-source-range", "denylist-source-range"), _ranges),
    (("limit-rps", "limit-connections"), _limits),
    (("enable-cors",), _cors),
    (("auth-type", "auth-url"), _auth),
)
