"""The config stream server: components ask the control plane for their config kind.

Routes (HTTP/1.1, JSON):

- ``GET /v1/config/{kind}``: the current config snapshot (503 until the first one).
- ``GET /v1/watch/{kind}``: a chunked stream of newline-delimited snapshots, the current one
  first, then one per new version. An empty line every ``heartbeat`` seconds lets clients
  notice a dead connection (as a Kubernetes watch's bookmarks and keep-alives do).
  With ``?deltas=1`` (the delta format the client reads, mesh/config/delta.py) a new version
  travels as a delta against the one before when the subscriber has that one, else (the
  first line, a subscriber that fell behind, a config type without deltas) as a full
  snapshot. Each version's full line and its delta are encoded once and shared by every
  subscriber. A client that asks for another delta format gets full snapshots, which every
  version reads.
- ``GET /v1/objects/{Kind}?namespace=NS``: a Kubernetes ``List`` of stored objects in API
  form; ``Kind`` also accepts ``kubectl`` names (``svc``, ``services``, ``pods``, ...).
- ``GET /v1/objects/{Kind}?watch=1&resourceVersion=N[&namespace=NS]``: as the API server's
  watch, newline-delimited ``{"type": "ADDED"|"MODIFIED"|"DELETED", "object": {...}}``
  events after revision ``N`` (default: now), with heartbeats; 410 when ``N`` is older than
  the store's history (list again and watch from the list's resourceVersion).
- ``POST /v1/reports/{kind}``: a component's run-time report (the gateway's listeners it
  cannot open), a lease from one named instance: decoded strictly by control/reports.py
  (400, 404, 413 or 415 with one sentence), then handed to the kind's status writer;
  ``GET /v1/reports/{kind}`` lists the live ones.
- ``GET /v1/errors``: manifest errors and warnings.
- ``GET /healthz``: ``ok``.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import AsyncGenerator
from typing import Any

import trio

from mesh.config import delta
from mesh.config.base import ComponentConfig
from mesh.control import reports
from mesh.control.plane import ControlPlane
from mesh.control.store import Gone, WatchEvent
from mesh.httpserve import (
    HttpServer,
    Request,
    Response,
    StreamingResponse,
    json_response,
    text,
)
from mesh.objects import KINDS, KubeObject

DEFAULT_LISTEN = ("127.0.0.1", 15010)
HEARTBEAT = 10.0

# kubectl's names for the kinds the store holds: plural, singular and short names.
_ALIASES = {
    "svc": "Service",
    "ep": "Endpoints",
    "ns": "Namespace",
    "po": "Pod",
    "ing": "Ingress",
    "endpointslices": "EndpointSlice",
    "endpoints": "Endpoints",
    "ingresses": "Ingress",
    "ingressclasses": "IngressClass",
}


def resolve_kind(name: str) -> str | None:
    """The Kind for a kubectl-style resource name, or None."""
    lowered = name.lower()
    if lowered in _ALIASES:
        return _ALIASES[lowered]
    for kind in KINDS:
        if lowered in (kind.lower(), kind.lower() + "s"):
            return kind
    return None


def api_object(plane: ControlPlane, obj: KubeObject) -> dict[str, Any]:
    """The object as the API server returns it, with its creationTimestamp and uid."""
    data = obj.to_dict()
    created = plane.store.created(obj.key)
    if created is not None:
        stamp = datetime.datetime.fromtimestamp(int(created), datetime.UTC)
        data["metadata"]["creationTimestamp"] = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    if not obj.metadata.uid:  # one read from a real cluster keeps the API server's
        uid = plane.store.uid(obj.key)
        if uid is not None:
            data["metadata"]["uid"] = uid
    _reference_uids(plane, obj, data)
    return data


def _reference_uids(plane: ControlPlane, obj: KubeObject, data: dict[str, Any]) -> None:
    """The uids of the objects ``data`` refers to (its owners, an EndpointSlice's target
    Pods), filled as the object's own is, at serve time: the same text their own
    ``metadata.uid`` shows. A reference to an object not in the store stays empty."""
    uid = plane.store.uid
    ns = obj.metadata.namespace
    for ref in data["metadata"].get("ownerReferences") or ():
        if not ref.get("uid") and ref.get("kind"):
            ref["uid"] = uid((ref["kind"], ns, ref.get("name", ""))) or ""
    if obj.KIND != "EndpointSlice":
        return
    for ep in data.get("endpoints") or ():
        target = ep.get("targetRef")
        if target and not target.get("uid") and target.get("kind"):
            key = (target["kind"], target.get("namespace") or ns, target.get("name", ""))
            target["uid"] = uid(key) or ""


def object_list(plane: ControlPlane, kind: str, namespace: str | None) -> dict[str, Any]:
    items, revision = plane.store.list(kind, namespace or None)
    return {
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": str(revision)},
        "items": [api_object(plane, obj) for obj in items],
    }


class DeltaLines:
    """Per kind, the delta line from the previously published version to the current one:
    made on the first subscriber's demand, then shared by all (the plane keeps the two
    versions; older bases get a full snapshot)."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self._lines: dict[str, tuple[ComponentConfig, ComponentConfig, bytes | None]] = {}

    def line(self, kind: str, base: ComponentConfig, config: ComponentConfig) -> bytes | None:
        """The delta from ``base`` to ``config``, or None when the server does not hold it
        (``base`` is not the version published just before ``config``, or the type has no
        deltas): the subscriber then gets the full snapshot."""
        plane = self.plane
        if plane.current(kind) is not config or plane.previous(kind) is not base:
            return None
        cached = self._lines.get(kind)
        if cached is None or cached[0] is not base or cached[1] is not config:
            doc = delta.diff(base, config)
            cached = (base, config, None if doc is None else delta.encode(doc))
            self._lines[kind] = cached
        return cached[2]


class ConfigServer:
    def __init__(
        self,
        plane: ControlPlane,
        listen: tuple[str, int] = DEFAULT_LISTEN,
        *,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        self.plane = plane
        self.heartbeat = heartbeat
        self.deltas = DeltaLines(plane)
        self.http = HttpServer(
            listen,
            self.handle,
            name="control",
            methods=("GET", "HEAD", "POST"),
            max_body=reports.MAX_BODY,
        )

    @property
    def port(self) -> int:
        return self.http.port

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await self.http.run(task_status=task_status)

    async def handle(self, request: Request) -> Response | StreamingResponse:
        parts = [p for p in request.path.split("/") if p]
        if request.method == "POST" or parts[:2] == ["v1", "reports"]:
            return self._reports(request, parts)
        match parts:
            case ["healthz"]:
                return text(200, "ok")
            case ["v1", "config", kind]:
                if kind not in self.plane.translators:
                    return text(404, f"unknown config kind {kind!r}")
                config = self.plane.current(kind)
                if config is None:
                    return text(503, f"no {kind} config yet")
                return Response(200, self.plane.encoded(config), "application/json")
            case ["v1", "watch", kind]:
                if kind not in self.plane.translators:
                    return text(404, f"unknown config kind {kind!r}")
                wants = request.query.get("deltas") == str(delta.FORMAT)
                return StreamingResponse(self.watch(kind, deltas=wants))
            case ["v1", "objects", name]:
                resolved = resolve_kind(name)
                if resolved is None:
                    return text(404, f"unknown kind {name!r}")
                if request.query.get("watch") in ("1", "true"):
                    return self._watch_objects(resolved, request.query)
                return json_response(
                    object_list(self.plane, resolved, request.query.get("namespace"))
                )
            case ["v1", "errors"]:
                errors = [
                    {"source": e.source, "object": e.object, "field": e.field, "message": e.message}
                    for e in self.plane.errors
                ]
                return json_response({"errors": errors, "warnings": self.plane.warnings})
        return text(404, "not found")

    def _reports(self, request: Request, parts: list[str]) -> Response:
        if len(parts) != 3 or parts[:2] != ["v1", "reports"]:
            if request.method == "POST":
                return Response(405, b"method not allowed\n", headers=(("allow", "GET, HEAD"),))
            return text(404, "not found")
        kind = parts[2]
        if not self.plane.takes_reports(kind):
            return text(404, f"no component reports of kind {kind[:40]!r}")
        now = trio.current_time()
        if request.method != "POST":
            return json_response(self.plane.reports.describe(kind, now))
        content_type = next((v for k, v in request.headers if k.lower() == "content-type"), None)
        try:
            report = reports.parse_report(kind, request.body, content_type)
            self.plane.report(
                kind, report.payload, instance=report.instance, expires=now + report.ttl
            )
        except reports.ReportError as exc:
            return text(exc.status, str(exc))
        return json_response(
            {"kind": kind, "instance": report.instance, "ttlSeconds": report.ttl,
             "entries": len(report.payload)}
        )  # fmt: skip

    def _watch_objects(self, kind: str, query: dict[str, str]) -> Response | StreamingResponse:
        since_text = query.get("resourceVersion", "")
        if since_text and not since_text.isdigit():
            return text(400, f"resourceVersion {since_text!r} is not a number")
        since = int(since_text) if since_text else self.plane.store.revision
        try:
            self.plane.store.events_since(since, kind)  # 410 now rather than mid-stream
        except Gone as exc:
            return text(410, str(exc))
        return StreamingResponse(self.object_events(kind, query.get("namespace") or None, since))

    async def object_events(
        self, kind: str, namespace: str | None, since: int
    ) -> AsyncGenerator[bytes, None]:
        """Store events of ``kind`` after ``since``, one JSON line each, with heartbeats."""
        store = self.plane.store
        revision = since
        while True:
            seen = store.revision  # events_since covers everything up to here
            try:
                events = store.events_since(revision, kind)
            except Gone:
                return  # the client lists again, as after a 410
            for ev in events:
                if namespace is None or ev.object.metadata.namespace == namespace:
                    yield self._event_line(ev)
            revision = seen
            with trio.move_on_after(self.heartbeat) as scope:
                await store.wait_for_change(revision)
            if scope.cancelled_caught:
                yield b"\n"

    def _event_line(self, ev: WatchEvent) -> bytes:
        data = {"type": ev.type, "object": api_object(self.plane, ev.object)}
        return json.dumps(data, separators=(",", ":")).encode() + b"\n"

    async def watch(self, kind: str, *, deltas: bool = False) -> AsyncGenerator[bytes, None]:
        """Snapshots of ``kind`` as they are published, with heartbeats in between; with
        ``deltas``, each one after the first as a delta when there is one from the last."""
        last: ComponentConfig | None = None
        while True:
            config: ComponentConfig | None = None
            with trio.move_on_after(self.heartbeat):
                config = await self.plane.next_config(kind, last)
            if config is None:
                yield b"\n"
                continue
            line = self.deltas.line(kind, last, config) if deltas and last is not None else None
            form = "delta"
            if line is None:
                line, form = self.plane.encoded(config), "full"
            self.plane.stream_sent(kind, form, len(line))
            last = config
            yield line
