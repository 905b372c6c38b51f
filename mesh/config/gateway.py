"""GatewayConfig: everything the ingress gateway serves, in one route model.

Translated from Ingress (with ingress-nginx's annotations) and from Gateway API objects
(control/translate/gateway.py). Both front ends end up here, and only here: the gateway never
reads a cluster object. ``mesh.http.routes.compile_routes`` turns this into the lookup tables
that ``mesh.http.plan.plan`` walks per request.

Shape:

- ``listeners``: where the gateway accepts traffic. The two Ingress listeners have no address
  (they use ``--gateway-listen`` / ``--gateway-tls-listen``); a Gateway's listeners carry the
  Gateway's address and port. ``wildcard`` says how ``*.`` hosts match on it: one label for
  Ingress (the Ingress spec), one or more labels for Gateway API (the listener spec).
- ``certificates``: which Secret serves which SNI names (references; the TLS layer loads them).
- ``routes``: each names the listeners it is attached to, its effective hostnames (already
  intersected with the listener's hostname), its matches, filters, backends and policies.
- ``backends``: named by ``namespace/service:port``, with the endpoints to use.

Times are seconds (floats); sizes are bytes.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from mesh.config.base import ComponentConfig, Frozen

Seconds = Annotated[float, Field(ge=0)]


class GatewayEndpoint(Frozen):
    ip: str
    port: Annotated[int, Field(ge=1, le=65535)]


class BackendTls(Frozen):
    """Re-encryption to a backend (ingress-nginx ``backend-protocol: HTTPS`` with its
    ``proxy-ssl-*`` annotations, or a BackendTLSPolicy). Certificates are public: no private
    key travels here."""

    source: str = ""  # what asked for it: "Ingress ns/name", "BackendTLSPolicy ns/name"
    server_name: str | None = None  # SNI sent; None: none
    verify: bool = False  # verify the chain and the name; False: ingress-nginx's default
    # When verifying, the certificate must carry one of these DNS names (its own ``*.``
    # wildcards count) or URIs (e.g. SPIFFE IDs) in subjectAltName.
    verify_names: tuple[str, ...] = ()
    verify_uris: tuple[str, ...] = ()
    # Trusted CAs (PEM) when verifying; None: the system's trust store (wellKnown "System").
    ca_pem: str | None = None


class GatewayBackend(Frozen):
    name: str  # "namespace/service:port"; with TLS settings a suffix tells them apart
    protocol: Literal["http", "https"] = "http"
    endpoints: tuple[GatewayEndpoint, ...] = ()
    tls: BackendTls | None = None  # with protocol "https"; None there: BackendTls()


class WeightedBackend(Frozen):
    # None: a reference that could not be resolved. Requests it would have taken get 500, as
    # the Gateway API asks (the other backends keep their share).
    backend: str | None
    weight: Annotated[int, Field(ge=0)] = 1


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
    return value


class PathMatch(Frozen):
    # Prefix matches whole path elements ("/foo" matches "/foo" and "/foo/x", not "/foobar").
    # RegularExpression is searched from the start of the path (anchored at the start only,
    # as ingress-nginx's "location ~*" blocks); ignore_case for ingress-nginx's "~*".
    kind: Literal["Exact", "Prefix", "RegularExpression"] = "Prefix"
    value: str = "/"
    ignore_case: bool = False

    @model_validator(mode="after")
    def _check(self) -> PathMatch:
        if self.kind == "RegularExpression":
            _regex(self.value)
        return self


class ValueMatch(Frozen):
    name: str
    kind: Literal["Exact", "RegularExpression"] = "Exact"
    value: str

    @model_validator(mode="after")
    def _check(self) -> ValueMatch:
        if self.kind == "RegularExpression":
            _regex(self.value)
        return self


class Match(Frozen):
    path: PathMatch = Field(default_factory=PathMatch)
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()
    method: str | None = None


class HeaderEdits(Frozen):
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


class PathRewrite(Frozen):
    # Full: the path becomes ``value``. Prefix: the matched prefix is replaced by ``value``.
    # Regex: nginx's ``rewrite pattern value``: when ``pattern`` matches, the whole path
    # becomes ``value`` with $1..$9 expanded (ingress-nginx's rewrite-target).
    kind: Literal["Full", "Prefix", "Regex"]
    value: str
    pattern: Annotated[str, AfterValidator(_regex)] = ""


class Redirect(Frozen):
    scheme: Literal["http", "https"] | None = None
    hostname: str | None = None
    port: int | None = None
    path: PathRewrite | None = None
    status: Literal[301, 302, 303, 307, 308] = 302
    # ingress-nginx's permanent-/temporal-redirect: the target is a full URL, taken as is.
    location: str | None = None


class Rewrite(Frozen):
    hostname: str | None = None
    path: PathRewrite | None = None


class Mirror(Frozen):
    backend: str
    share: Annotated[float, Field(ge=0, le=1)] = 1.0


class Cors(Frozen):
    allow_origins: tuple[str, ...] = ("*",)
    allow_methods: str = "GET, PUT, POST, DELETE, PATCH, OPTIONS"
    allow_headers: str = (
        "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,"
        "Content-Type,Range,Authorization"
    )
    expose_headers: str = ""
    allow_credentials: bool = True
    max_age: int = 1728000


class BasicAuth(Frozen):
    realm: str = "Authentication Required"
    users: tuple[tuple[str, str], ...] = ()  # (user, htpasswd hash)


class RateLimit(Frozen):
    rps: Annotated[float, Field(gt=0)]
    burst: Annotated[int, Field(ge=1)]


class Canary(Frozen):
    """An ingress-nginx canary: header, then cookie, then weight decide (in that order)."""

    backend: str
    source: str = ""  # the canary Ingress, for logs
    header: str | None = None
    header_value: str | None = None
    header_pattern: Annotated[str, AfterValidator(_regex)] | None = None
    cookie: str | None = None
    weight: Annotated[int, Field(ge=0)] = 0
    weight_total: Annotated[int, Field(ge=1)] = 100


class Affinity(Frozen):
    cookie: str = "INGRESSCOOKIE"
    max_age: int | None = None
    path: str | None = None


class Retry(Frozen):
    """GEP-1731. ``attempts`` counts retries after the first try."""

    codes: tuple[int, ...] = ()
    attempts: Annotated[int, Field(ge=0)] = 0
    backoff: Seconds = 0.0
    # Retry a request that is not idempotent even after it may have reached the backend.
    non_idempotent: bool = False


class Timeouts(Frozen):
    request: Seconds | None = None  # the whole exchange, retries included
    backend_request: Seconds | None = None  # one try
    connect: Seconds | None = None
    read: Seconds | None = None
    send: Seconds | None = None


class Policy(Frozen):
    """Everything a route does besides choosing a backend, applied in this order."""

    allow_sources: tuple[str, ...] = ()  # CIDRs; empty: everyone
    deny_sources: tuple[str, ...] = ()
    https_redirect: Literal[301, 302, 307, 308] | None = None  # only for plain-HTTP requests
    cors: Cors | None = None
    basic_auth: BasicAuth | None = None
    external_auth: str | None = None  # URL of an auth service (the data path calls it)
    rate_limit: RateLimit | None = None  # per client address
    connection_limit: int | None = None  # per client address (the data path counts)
    body_limit: int | None = None  # bytes; over it: 413
    app_root: str | None = None  # "/" redirects here (302)
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    request_headers: HeaderEdits = Field(default_factory=HeaderEdits)
    response_headers: HeaderEdits = Field(default_factory=HeaderEdits)
    mirrors: tuple[Mirror, ...] = ()


class Route(Frozen):
    name: str  # "ingress/ns/name", "httproute/ns/name/rule-0": logs and metrics
    listeners: tuple[str, ...]
    hosts: tuple[str, ...] = ()  # empty: any host
    matches: tuple[Match, ...] = (Match(),)
    # Tie-break after the match's own precedence: lower first (age, then name; rule index).
    order: int = 0
    policy: Policy = Field(default_factory=Policy)
    backends: tuple[WeightedBackend, ...] = ()
    canaries: tuple[Canary, ...] = ()
    affinity: Affinity | None = None
    timeouts: Timeouts = Field(default_factory=Timeouts)
    retry: Retry | None = None


class CertificateRef(Frozen):
    secret: str  # "namespace/name" of a kubernetes.io/tls Secret
    hosts: tuple[str, ...] = ()  # SNI names (exact or "*."); empty: the certificate's own DNS names


class GatewayListener(Frozen):
    name: str  # "ingress-http", "ingress-https", "gateway/ns/name/listener"
    protocol: Literal["HTTP", "HTTPS"] = "HTTP"
    address: str | None = None  # None: the gateway's --gateway-listen / --gateway-tls-listen
    port: int | None = None
    hostname: str | None = None
    wildcard: Literal["one-label", "any-labels"] = "any-labels"
    certificates: tuple[CertificateRef, ...] = ()


class Problem(Frozen):
    """Something in the source objects the gateway refused or ignored, and why."""

    kind: str  # "Ingress", "HTTPRoute", ...
    object: str  # "namespace/name"
    message: str


class GatewayConfig(ComponentConfig):
    listeners: tuple[GatewayListener, ...] = ()
    routes: tuple[Route, ...] = ()
    backends: tuple[GatewayBackend, ...] = ()
    problems: tuple[Problem, ...] = ()


class TlsSecret(Frozen):
    """The PEM of a kubernetes.io/tls Secret a listener's certificates name (the gateway never
    reads cluster objects, so what it serves travels in its config)."""

    name: str  # "namespace/name", as CertificateRef.secret
    cert_pem: str
    key_pem: str


class ServedGatewayConfig(GatewayConfig):
    """The config the gateway component runs: the route model plus the TLS Secrets its
    listeners name."""

    secrets: tuple[TlsSecret, ...] = ()


class ListenerFailure(Frozen):
    """The gateway's report of a listener it could not open at run time (the port is taken or
    needs privileges, the address is not local), by route-model listener name: the control
    plane writes it into the Gateway's status until the gateway reports it bound."""

    message: str  # one sentence
    address_unusable: bool = False  # the Gateway's address itself cannot be bound
