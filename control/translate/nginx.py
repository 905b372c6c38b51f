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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar
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
        "auth-secret", "auth-secret-type", "auth-realm", "auth-url", "proxy-ssl-secret",
        "proxy-ssl-verify", "proxy-ssl-name", "proxy-ssl-server-name",
    }
)  # fmt: skip
GUARDS = frozenset(
    {"whitelist-source-range", "allowlist-source-range", "denylist-source-range", "auth-type",
     "auth-secret", "auth-secret-type", "auth-url", "proxy-ssl-secret", "proxy-ssl-verify"}
)  # fmt: skip


T = TypeVar("T")


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
    # Re-encryption (with backend-protocol HTTPS): the Secret holding ca.crt, whether the
    # backend's certificate is verified, the name verified (and sent as SNI when
    # proxy_ssl_server_name is on). ingress-nginx's defaults: off, off.
    proxy_ssl_secret: tuple[str, str] | None = None
    proxy_ssl_verify: bool = False
    proxy_ssl_name: str | None = None
    proxy_ssl_server_name: bool = False
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
    read = _Reader(got, out)
    for parse in _PARSERS:
        parse(out, read, namespace)
    return out


class _Reader:
    """Reads one annotation at a time: a bad value is reported under its own name and the
    default used instead (or, for a guard, the Ingress taken out of service)."""

    def __init__(self, got: dict[str, str], out: Annotations) -> None:
        self.got = got
        self.out = out

    def __contains__(self, key: str) -> bool:
        return key in self.got

    def __call__(self, key: str, parse: Callable[[str], T], default: T) -> T:
        if key not in self.got:
            return default
        try:
            return parse(self.got[key])
        except BadValue as exc:
            self.out.problems.append(f"annotation {PREFIX}{key}: {exc}")
            if key in GUARDS:
                self.out.out_of_service = True
            return default


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


def _text(value: str) -> str:
    return value.strip()


def _path(value: str) -> str:
    if not value.strip().startswith("/"):
        raise BadValue(f"{value!r} must be a path starting with '/'")
    return value.strip()


def _seconds(value: str) -> float:
    return float(integer(value, 1))


def _rewrite(out: Annotations, read: _Reader, ns: str) -> None:
    out.use_regex = read("use-regex", boolean, False)
    out.rewrite_target = read("rewrite-target", str, None)


def _ssl(out: Annotations, read: _Reader, ns: str) -> None:
    out.ssl_redirect = read("ssl-redirect", boolean, True)
    out.force_ssl_redirect = read("force-ssl-redirect", boolean, False)


def _app_root(out: Annotations, read: _Reader, ns: str) -> None:
    out.app_root = read("app-root", _path, None)


def _redirect_code(value: str) -> int:
    code = integer(value, 300, 308)
    if code not in (301, 302, 303, 307, 308):
        raise BadValue(f"{code} is not a redirect status (301, 302, 303, 307 or 308)")
    return code


def _redirects(out: Annotations, read: _Reader, ns: str) -> None:
    # ingress-nginx checks temporal-redirect first: it wins when both are set.
    for kind, code in (("temporal", 302), ("permanent", 301)):
        url = read(f"{kind}-redirect", _redirect_url, None)
        if url:
            out.redirect = (url, read(f"{kind}-redirect-code", _redirect_code, code))
            return


def _redirect_url(value: str) -> str | None:
    return _url(value, "a redirect") if value.strip() else None


def _protocol_value(value: str) -> str:
    if value.strip().upper() not in ("HTTP", "HTTPS"):
        raise BadValue(f"{value.strip().upper()!r} is not supported (HTTP or HTTPS)")
    return value.strip().lower()


def _proxy(out: Annotations, read: _Reader, ns: str) -> None:
    out.backend_protocol = read("backend-protocol", _protocol_value, "http")
    out.body_limit = read("proxy-body-size", size, None)
    out.connect_timeout = read("proxy-connect-timeout", _seconds, None)
    out.read_timeout = read("proxy-read-timeout", _seconds, None)
    out.send_timeout = read("proxy-send-timeout", _seconds, None)
    out.upstream_vhost = read("upstream-vhost", _text, None)
    out.forwarded_prefix = read("x-forwarded-prefix", _text, None)


def _on_off(value: str) -> bool:
    if value.strip() not in ("on", "off"):
        raise BadValue(f"{value!r} is not on or off")
    return value.strip() == "on"


def _server_name(value: str) -> str:
    name = value.strip().lower().rstrip(".")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", name):
        raise BadValue(f"{value!r} is not a server name")
    return name


def _proxy_ssl(out: Annotations, read: _Reader, ns: str) -> None:
    ref = read("proxy-ssl-secret", _text, "")
    if ref:
        secret_ns, _, name = ref.rpartition("/")
        if secret_ns != ns or not name:  # ingress-nginx: namespace/name, the Ingress's own
            out.problems.append(
                f"annotation {PREFIX}proxy-ssl-secret: {ref!r} must be {ns}/NAME "
                "(a Secret in the Ingress's namespace)"
            )
            out.out_of_service = True
        else:
            out.proxy_ssl_secret = (secret_ns, name)
    out.proxy_ssl_verify = read("proxy-ssl-verify", _on_off, False)
    out.proxy_ssl_name = read("proxy-ssl-name", _server_name, None)
    out.proxy_ssl_server_name = read("proxy-ssl-server-name", _on_off, False)
    used = sorted(k for k in read.got if k.startswith("proxy-ssl-"))
    if used and out.backend_protocol != "https":
        out.problems.append(
            f"annotation {PREFIX}{used[0]} has no effect without backend-protocol: HTTPS"
        )


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise BadValue(f"{value!r} is not a regular expression: {exc}") from None
    return value


def _canary(out: Annotations, read: _Reader, ns: str) -> None:
    if not read("canary", boolean, False):
        return
    total = read("canary-weight-total", lambda v: integer(v, 1), 100)
    out.canary = CanarySpec(
        header=read("canary-by-header", _text, "") or None,
        header_value=read("canary-by-header-value", str, "") or None,
        header_pattern=read("canary-by-header-pattern", _regex, "") or None,
        cookie=read("canary-by-cookie", _text, "") or None,
        weight=read("canary-weight", lambda v: integer(v, 0, total), 0),
        weight_total=total,
    )


def _cookie_affinity(value: str) -> str:
    if value.strip() != "cookie":
        raise BadValue(f"{value!r} is not supported (cookie)")
    return "cookie"


def _affinity(out: Annotations, read: _Reader, ns: str) -> None:
    if read("affinity", _cookie_affinity, None) is None:
        return
    out.affinity = Affinity(
        cookie=read("session-cookie-name", _text, "") or "INGRESSCOOKIE",
        max_age=read("session-cookie-max-age", integer, None),
        path=read("session-cookie-path", _path, None),
    )


def _ranges(out: Annotations, read: _Reader, ns: str) -> None:
    none: tuple[str, ...] = ()
    out.allow = read("allowlist-source-range", cidrs, none) or read(
        "whitelist-source-range", cidrs, none
    )
    out.deny = read("denylist-source-range", cidrs, none)


def _limits(out: Annotations, read: _Reader, ns: str) -> None:
    rps = read("limit-rps", lambda v: integer(v, 1), None)
    if rps is not None:
        multiplier = read("limit-burst-multiplier", lambda v: integer(v, 1), 5)
        out.rate_limit = RateLimit(rps=rps, burst=rps * multiplier)
    out.connection_limit = read("limit-connections", lambda v: integer(v, 1), None)


def _cors(out: Annotations, read: _Reader, ns: str) -> None:
    if not read("enable-cors", boolean, False):
        return
    base = Cors()
    every: tuple[str, ...] = ("*",)
    origins = read("cors-allow-origin", _origins, every)
    out.cors = Cors(
        allow_origins=origins or every,
        allow_methods=read("cors-allow-methods", _text, base.allow_methods),
        allow_headers=read("cors-allow-headers", _text, base.allow_headers),
        expose_headers=read("cors-expose-headers", _text, ""),
        allow_credentials=read("cors-allow-credentials", boolean, True),
        max_age=read("cors-max-age", integer, base.max_age),
    )


def _origins(value: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in value.split(",") if o.strip())


def _basic(value: str) -> str:
    if value.strip() != "basic":
        raise BadValue(f"{value!r} is not supported (basic)")
    return "basic"


def _secret_type(value: str) -> str:
    if value.strip() not in ("auth-file", "auth-map"):
        raise BadValue(f"{value!r} is not auth-file or auth-map")
    return value.strip()


def _auth(out: Annotations, read: _Reader, ns: str) -> None:
    out.auth_url = read("auth-url", lambda v: _url(v, "auth-url"), None)
    if read("auth-type", _basic, None) is None:
        return
    ref = read("auth-secret", _text, "")
    if not ref:
        out.problems.append(f"annotation {PREFIX}auth-type: basic needs auth-secret")
        out.out_of_service = True
        return
    secret_ns, _, name = ref.rpartition("/")
    kind = read("auth-secret-type", _secret_type, "auth-file")
    out.basic_auth_secret = (secret_ns or ns, name, kind)
    out.auth_realm = read("auth-realm", str, out.auth_realm)


_PARSERS = (_rewrite, _ssl, _app_root, _redirects, _proxy, _proxy_ssl, _canary, _affinity,
            _ranges, _limits, _cors, _auth)  # fmt: skip
