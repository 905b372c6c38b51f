"""Typed route filters, applied as pure functions: no I/O, the clock passed in.

Each function takes the filter's config value (mesh.config.gateway) and the parts of the
request it needs, and returns the new value or a verdict. ``CompiledPolicy`` holds what is
worth preparing once per config (parsed address ranges, the users of a basic-auth file).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache

from mesh.config.gateway import BasicAuth, Cors, HeaderEdits, PathRewrite, Policy, Redirect

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    policy: Policy
    allow: tuple[Network, ...]
    deny: tuple[Network, ...]
    users: dict[str, str]  # basic auth: user -> hash
    rewrite_regex: re.Pattern[str] | None  # PathRewrite kind Regex, of rewrite or redirect
    # client address -> verdict: parsing an address costs more than the rest of a plan
    verdicts: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def build(cls, policy: Policy) -> CompiledPolicy:
        pattern = None
        for holder in (policy.rewrite, policy.redirect):
            pr = holder.path if holder is not None else None
            if pr is not None and pr.kind == "Regex":
                pattern = re.compile(pr.pattern, re.IGNORECASE)
        return cls(
            policy=policy,
            allow=tuple(ipaddress.ip_network(c, strict=False) for c in policy.allow_sources),
            deny=tuple(ipaddress.ip_network(c, strict=False) for c in policy.deny_sources),
            users=dict(policy.basic_auth.users) if policy.basic_auth else {},
            rewrite_regex=pattern,
        )

    def source_permitted(self, client: str) -> bool:
        """ingress-nginx: a deny range refuses; with allow ranges, only they are let in."""
        if not (self.allow or self.deny):
            return True
        verdict = self.verdicts.get(client)
        if verdict is None:
            if len(self.verdicts) >= 4096:  # bounded: clients come and go
                self.verdicts.clear()
            verdict = self.verdicts[client] = self._permitted(client)
        return verdict

    def _permitted(self, client: str) -> bool:
        try:
            ip = ipaddress.ip_address(client)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.deny):
            return False
        return not self.allow or any(ip in net for net in self.allow)


# --- paths, redirects --------------------------------------------------------------------

_DOLLAR = re.compile(r"\$(\d)")


def rewrite_path(
    rewrite: PathRewrite, path: str, prefix: str, regex: re.Pattern[str] | None = None
) -> str:
    """The new path. ``prefix`` is the matched Prefix (no trailing slash, "" for "/")."""
    if rewrite.kind == "Full":
        return rewrite.value
    if rewrite.kind == "Prefix":
        rest = path[len(prefix) :]  # "" or "/..."
        if not rest:
            return rewrite.value or "/"
        return (rewrite.value.rstrip("/") + rest) or "/"
    # nginx "rewrite": the whole URI becomes the replacement when the pattern matches.
    m = (regex or re.compile(rewrite.pattern, re.IGNORECASE)).search(path)
    if m is None:
        return path
    groups = m.groups()
    return _DOLLAR.sub(lambda d: _group(groups, int(d.group(1))), rewrite.value)


def _group(groups: tuple[str | None, ...], n: int) -> str:
    if n == 0 or n > len(groups):
        return ""
    return groups[n - 1] or ""


_DEFAULT_PORT = {"http": 80, "https": 443}


def redirect_location(
    redirect: Redirect,
    *,
    scheme: str,
    host: str,
    listener_port: int | None,
    path: str,
    query: str,
    prefix: str,
    regex: re.Pattern[str] | None = None,
    https_port: int | None = None,
) -> str:
    """The Location of a RequestRedirect (Gateway API rules for the port). ``https_port``:
    where this gateway serves HTTPS beside the listener when that is not 443; a redirect to
    https with no port of its own goes there (as ingress-nginx's use-port-in-redirects
    would), not to a port nothing on this gateway listens on."""
    if redirect.location is not None:
        return redirect.location
    new_scheme = redirect.scheme or (scheme if scheme in _DEFAULT_PORT else "http")
    new_host = redirect.hostname or host
    if redirect.port is not None:
        port: int | None = redirect.port
    elif redirect.scheme == "https" and https_port is not None:
        port = https_port
    elif redirect.scheme is not None:
        port = _DEFAULT_PORT[redirect.scheme]
    else:
        port = listener_port
    new_path = rewrite_path(redirect.path, path, prefix, regex) if redirect.path else path
    if ":" in new_host and not new_host.startswith("["):
        new_host = f"[{new_host}]"  # an IPv6 literal (RFC 3986 section 3.2.2)
    # Well-known ports are left out of the Location (the specification's SHOULD NOT).
    authority = new_host if port in (None, _DEFAULT_PORT[new_scheme]) else f"{new_host}:{port}"
    return f"{new_scheme}://{authority}{new_path}" + (f"?{query}" if query else "")


# --- headers -------------------------------------------------------------------------------


def merge_edits(*edits: HeaderEdits) -> HeaderEdits:
    return HeaderEdits(
        set=tuple(p for e in edits for p in e.set),
        add=tuple(p for e in edits for p in e.add),
        remove=tuple(n for e in edits for n in e.remove),
    )


def apply_edits(headers: list[tuple[str, str]], edits: HeaderEdits) -> list[tuple[str, str]]:
    """Headers after remove, then set (replacing every value), then add (appending)."""
    drop = {n.lower() for n in edits.remove} | {n.lower() for n, _ in edits.set}
    out = [(n, v) for n, v in headers if n.lower() not in drop]
    out.extend(edits.set)
    out.extend(edits.add)
    return out


def cors_headers(cors: Cors, origin: str | None) -> tuple[tuple[str, str], ...]:
    """The Access-Control-* headers for a request from ``origin`` (none if not allowed)."""
    if "*" in cors.allow_origins:
        # A credentialed request may not be answered with "*": echo the origin then.
        allowed = origin if (cors.allow_credentials and origin) else "*"
    elif origin is not None and origin in cors.allow_origins:
        allowed = origin
    else:
        return ()
    out: list[tuple[str, str]] = [
        ("access-control-allow-origin", allowed),
        ("access-control-allow-methods", cors.allow_methods),
        ("access-control-allow-headers", cors.allow_headers),
        ("access-control-max-age", str(cors.max_age)),
    ]
    if cors.allow_credentials:
        out.append(("access-control-allow-credentials", "true"))
    if cors.expose_headers:
        out.append(("access-control-expose-headers", cors.expose_headers))
    if allowed != "*":
        out.append(("vary", "Origin"))
    return tuple(out)


# --- basic auth ----------------------------------------------------------------------------


def parse_htpasswd(text: str) -> tuple[tuple[tuple[str, str], ...], list[str]]:
    """(users, problems): one ``user:hash`` a line; unsupported hash schemes are problems."""
    users: list[tuple[str, str]] = []
    problems: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            problems.append(f"line {n} is not user:hash")
        elif not hashed.startswith(("$apr1$", "{SHA}", "{PLAIN}")):
            problems.append(
                f"line {n} ({user}): only $apr1$ (htpasswd -m), {{SHA}} and {{PLAIN}} are supported"
            )
        else:
            users.append((user, hashed))
    return tuple(users), problems


def check_basic(users: dict[str, str], authorization: str | None) -> bool:
    if not authorization or authorization[:6].lower() != "basic ":
        return False
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, sep, password = decoded.partition(":")
    hashed = users.get(user)
    return bool(sep) and hashed is not None and verify_password(hashed, password)


@lru_cache(maxsize=1024)
def verify_password(hashed: str, password: str) -> bool:
    # Cached: $apr1$ costs 1000 MD5 rounds, too much to pay on every request.
    if hashed.startswith("{PLAIN}"):
        got, want = password, hashed[7:]
    elif hashed.startswith("{SHA}"):
        got, want = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode(), hashed[5:]
    elif hashed.startswith("$apr1$"):
        got, want = apr1(password, hashed[6:].split("$", 1)[0]), hashed
    else:
        return False
    return hmac.compare_digest(got.encode(), want.encode())


_ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def apr1(password: str, salt: str) -> str:
    """Apache's MD5 crypt (``htpasswd -m``, ``openssl passwd -apr1``)."""
    pw, sl, magic = password.encode(), salt[:8].encode(), b"$apr1$"
    ctx = hashlib.md5(pw + magic + sl)
    alt = hashlib.md5(pw + sl + pw).digest()
    for left in range(len(pw), 0, -16):
        ctx.update(alt[: min(16, left)])
    i = len(pw)
    while i:
        ctx.update(b"\0" if i & 1 else pw[:1])
        i >>= 1
    final = ctx.digest()
    for i in range(1000):
        step = hashlib.md5(pw if i & 1 else final)
        if i % 3:
            step.update(sl)
        if i % 7:
            step.update(pw)
        step.update(final if i & 1 else pw)
        final = step.digest()
    out: list[str] = []
    for a, b, c in ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)):
        v = (final[a] << 16) | (final[b] << 8) | final[c]
        out.extend(_ITOA64[(v >> (6 * k)) & 0x3F] for k in range(4))
    v = final[11]
    out.extend(_ITOA64[(v >> (6 * k)) & 0x3F] for k in range(2))
    return f"$apr1${salt[:8]}${''.join(out)}"


def basic_challenge(auth: BasicAuth) -> tuple[tuple[str, str], ...]:
    realm = auth.realm.replace("\\", "\\\\").replace('"', '\\"')
    return (("www-authenticate", f'Basic realm="{realm}"'),)


# --- rate limits ---------------------------------------------------------------------------


@dataclass
class TokenBuckets:
    """Per-key token buckets (ingress-nginx limit-rps: rate plus a burst), clock passed in.

    The only mutable state the planner touches; bounded: the least recently used keys go
    first when ``max_keys`` is reached (a full bucket is the same as a forgotten one).
    """

    max_keys: int = 100_000
    _buckets: OrderedDict[tuple[int, str], tuple[float, float]] = field(default_factory=OrderedDict)

    def take(self, key: tuple[int, str], now: float, rps: float, burst: int) -> bool:
        tokens, stamp = self._buckets.pop(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - stamp) * rps)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed
