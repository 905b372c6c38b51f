"""Run-time reports from components, and the table of the live ones (pure: no trio).

A component that runs beside the control plane (``mesh up``) hands its report to
:meth:`~mesh.control.plane.ControlPlane.report` in process. One that runs apart (``mesh
ingress --control URL``) POSTs it to the config stream server::

    POST /v1/reports/{kind}
    {"instance": "host/8080", "ttlSeconds": 30,
     "listeners": {"gateway/default/web/8080": {"message": "...", "addressUnusable": false}}}

The body is decoded as strictly as the API server's strict field validation would: one
JSON object, no duplicate or unknown fields, every field of its type and within bounds;
anything else is a :class:`ReportError` with an HTTP status and one sentence.

Each report is a lease. It names its ``instance`` (two gateways' reports never overwrite
each other) and lives ``ttlSeconds`` (default 30) unless posted again: the reporter re-posts
every third of that, so a gateway that went away without a word stops counting within one
lease, and one that stops cleanly posts a last report with ``ttlSeconds`` 0 (it ends at
once). The kind's status writer sees what the live reports agree on: an entry (a listener
not served) stands only while every live instance reports it, because each gateway is fed
every Gateway, one instance that binds a listener serves it, and the others then fail on
the taken port; the first instance by name gives the sentence. An in-process report
(``expires`` None) never expires. Whether any instance is live at all matters too: a gateway
reports once it has applied a config, so until one does no Gateway is Programmed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh.config.gateway import ListenerFailure

MAX_BODY = 64 << 10  # a report of every listener a Gateway may have fits many times over
MAX_LISTENERS = 1024
MAX_NAME = 253
MAX_MESSAGE = 1024
MAX_INSTANCES = 256  # live reporters of one kind: the table stays bounded whoever posts
DEFAULT_TTL = 30
MIN_TTL, MAX_TTL = 0, 600  # 0: the instance is leaving, its report ends now
_INSTANCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/\[\]_-]*")
_FIELDS = {"instance", "ttlSeconds", "listeners"}
_FAILURE_FIELDS = {"message", "addressUnusable"}


class ReportError(Exception):
    """A report refused: ``status`` is the HTTP answer, the message one sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Report:
    instance: str
    ttl: int
    payload: dict[str, Any]  # what the kind's status writer takes (see PAYLOADS)


def _listener_failures(value: Any) -> dict[str, ListenerFailure]:
    """The gateway's payload: route-model listener name -> why its socket is not open."""
    if not isinstance(value, dict):
        raise ReportError(400, '"listeners" must be an object of listener name to failure')
    if len(value) > MAX_LISTENERS:
        raise ReportError(400, f'"listeners" has more than {MAX_LISTENERS} entries')
    failures = {}
    for name, item in value.items():
        if not name or len(name) > MAX_NAME:
            raise ReportError(400, f"listener name {name[:40]!r} is empty or too long")
        where = f'"listeners.{name}"'
        if not isinstance(item, dict):
            raise ReportError(400, f"{where} must be an object")
        unknown = sorted(set(item) - _FAILURE_FIELDS)
        if unknown:
            raise ReportError(400, f'{where} has an unknown field "{unknown[0][:40]}"')
        message = item.get("message")
        if not isinstance(message, str) or not message or len(message) > MAX_MESSAGE:
            raise ReportError(
                400, f"{where}.message must be a string of 1 to {MAX_MESSAGE} characters"
            )
        unusable = item.get("addressUnusable", False)
        if not isinstance(unusable, bool):
            raise ReportError(400, f"{where}.addressUnusable must be true or false")
        failures[name] = ListenerFailure(message=message, address_unusable=unusable)
    return failures


# kind -> decoder of its report's payload (the ``listeners`` field, for now the only one).
PAYLOADS: dict[str, Callable[[Any], dict[str, Any]]] = {"ingress": _listener_failures}


def encode_failures(failures: Mapping[str, ListenerFailure]) -> dict[str, Any]:
    """The ``listeners`` field for ``failures`` (the reporter's side of
    :func:`_listener_failures`)."""
    return {
        name: {"message": f.message, "addressUnusable": f.address_unusable}
        for name, f in sorted(failures.items())
    }


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ReportError(400, f'the field "{key[:40]}" appears twice')
        seen[key] = value
    return seen


def parse_report(kind: str, body: bytes, content_type: str | None = "application/json") -> Report:
    """Decode a POSTed report of ``kind``; ReportError says what is wrong with it."""
    payload = PAYLOADS.get(kind)
    if payload is None:
        raise ReportError(404, f"no component reports of kind {kind[:40]!r}")
    media = (content_type or "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise ReportError(415, "a report is sent as Content-Type application/json")
    if len(body) > MAX_BODY:
        raise ReportError(413, f"a report is at most {MAX_BODY} bytes")
    try:
        data = json.loads(body, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReportError(400, f"the body is not JSON: {first}") from None
    if not isinstance(data, dict):
        raise ReportError(400, "a report must be a JSON object")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ReportError(400, f'unknown field "{unknown[0][:40]}"')
    instance = data.get("instance")
    if (
        not isinstance(instance, str)
        or len(instance) > MAX_NAME
        or not _INSTANCE.fullmatch(instance)
    ):
        raise ReportError(
            400,
            f'"instance" must name the reporter: 1 to {MAX_NAME} letters, digits and ._:/[]_-',
        )
    ttl = data.get("ttlSeconds", DEFAULT_TTL)
    if type(ttl) is not int or not MIN_TTL <= ttl <= MAX_TTL:
        raise ReportError(400, f'"ttlSeconds" must be a whole number from {MIN_TTL} to {MAX_TTL}')
    if "listeners" not in data:
        raise ReportError(400, 'the field "listeners" is missing')
    return Report(instance, ttl, payload(data["listeners"]))


class Reports:
    """The live reports by kind and instance, each with the time it expires (None: never).
    Times are whatever clock the caller uses (the plane: trio's)."""

    def __init__(self) -> None:
        self._live: dict[str, dict[str, tuple[float | None, dict[str, Any]]]] = {}

    def put(
        self, kind: str, instance: str, payload: Mapping[str, Any], expires: float | None
    ) -> bool:
        """Record ``instance``'s latest report; True when what they agree on changed (or
        the first instance came). ReportError (429) for a new instance when MAX_INSTANCES
        are live."""
        live = self._live.get(kind, {})
        if instance not in live and len(live) >= MAX_INSTANCES:
            raise ReportError(429, f"{MAX_INSTANCES} instances already report {kind[:40]!r}")
        before = self._seen(kind)
        self._live.setdefault(kind, {})[instance] = (expires, dict(payload))
        return self._seen(kind) != before

    def expire(self, now: float) -> list[str]:
        """Drop the reports whose lease ended by ``now``; the kinds whose merged report
        changed."""
        changed = []
        for kind, by_instance in sorted(self._live.items()):
            gone = [i for i, (exp, _) in by_instance.items() if exp is not None and exp <= now]
            if not gone:
                continue
            before = self._seen(kind)
            for instance in gone:
                del by_instance[instance]
            if self._seen(kind) != before:
                changed.append(kind)
        return changed

    def next_expiry(self) -> float | None:
        times = [exp for by in self._live.values() for exp, _ in by.values() if exp is not None]
        return min(times, default=None)

    def live(self, kind: str) -> bool:
        """Whether any instance of ``kind`` reports (a gateway that has taken a config)."""
        return bool(self._live.get(kind))

    def _seen(self, kind: str) -> tuple[bool, dict[str, Any]]:
        return (self.live(kind), self.merged(kind))

    def merged(self, kind: str) -> dict[str, Any]:
        """The entries every live report of ``kind`` has (the first instance by name gives
        the value)."""
        payloads = [p for _, (_, p) in sorted(self._live.get(kind, {}).items())]
        if not payloads:
            return {}
        first, *others = payloads
        return {k: v for k, v in first.items() if all(k in p for p in others)}

    def describe(self, kind: str, now: float) -> dict[str, Any]:
        """The live reports of ``kind`` for ``GET /v1/reports/{kind}``."""
        out = {}
        for instance, (exp, payload) in sorted(self._live.get(kind, {}).items()):
            out[instance] = {
                "expiresInSeconds": None if exp is None else max(0.0, round(exp - now, 1)),
                "entries": sorted(payload),
            }
        return out
