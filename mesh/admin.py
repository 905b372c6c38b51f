"""The admin endpoint: readiness, metrics and the live config of a process's components.

Routes:

- ``/ready``: 200 ``ready`` once every component has applied its first config (and the
  control plane, if any, has published every kind wanted so far), else 503 naming those not ready.
- ``/metrics``: Prometheus text, each component's registry and then the plane's.
- ``/config``: ``{component name: live config}``; ``/config/{name}`` one of them
  (as ``istioctl proxy-config`` dumps Envoy's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mesh.component import Component
from mesh.httpserve import HttpServer, Request, Response, StreamingResponse, json_response, text

if TYPE_CHECKING:
    from mesh.control.plane import ControlPlane

DEFAULT_ADMIN_LISTEN = ("127.0.0.1", 15000)


class AdminServer:
    def __init__(
        self,
        listen: tuple[str, int],
        components: Sequence[Component[Any]],
        plane: ControlPlane | None = None,
    ) -> None:
        self.components = list(components)
        self.plane = plane
        self.http = HttpServer(listen, self.handle, name="admin")

    @property
    def port(self) -> int:
        return self.http.port

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await self.http.run(task_status=task_status)

    def not_ready(self) -> list[str]:
        """What is not ready, each with its reason when the component gives one."""
        waiting = []
        for c in self.components:
            if not c.ready:
                reason_of = getattr(c, "not_ready_reason", None)
                reason = reason_of() if callable(reason_of) else None
                waiting.append(f"{c.name} ({reason})" if reason else c.name)
        # The plane translates only the kinds something wants (control/plane.py): reading
        # every kind here would make it build them all.
        if self.plane is not None and not self.plane.ready:
            waiting.append("control-plane")
        return waiting

    def metrics(self) -> bytes:
        registries = [c.registry for c in self.components]
        if self.plane is not None:
            registries.append(self.plane.registry)
        return b"".join(generate_latest(r) for r in registries)

    def configs(self) -> dict[str, Any]:
        out: dict[str, Any] = {c.name: c.config_json() for c in self.components}
        if self.plane is not None:
            out["control-plane"] = self.plane.status()
        return out

    async def handle(self, request: Request) -> Response | StreamingResponse:
        parts = [p for p in request.path.split("/") if p]
        match parts:
            case ["ready"]:
                waiting = self.not_ready()
                if waiting:
                    return text(503, "not ready: " + ", ".join(waiting))
                return text(200, "ready")
            case ["metrics"]:
                return Response(200, self.metrics(), CONTENT_TYPE_LATEST)
            case ["config"]:
                return json_response(self.configs())
            case ["config", name]:
                configs = self.configs()
                if name not in configs:
                    return text(404, f"no component named {name!r}")
                return json_response(configs[name])
        return text(404, "not found")
