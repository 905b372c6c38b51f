"""The node agent of the cluster in a box: what kubelet and the CNI plugin do on a real node.

Every Pod in the store gets a network namespace on the box's bridge; its address is written
back into the Pod's status (``podIP``, phase Running), so the endpoints controller, DNS and
the proxy see the address that really answers. Pods that leave the store lose their namespace.
A reconcile loop: desired pods from a snapshot, diff against the box, apply, repeat on change.

Also here: the cluster DNS Service (``kube-system/kube-dns``) that the pods' resolv.conf
points at, served by the DNS server on the node's address.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import trio

from mesh.objects import (
    SERVICE_NAME_LABEL,
    EndpointSlice,
    Pod,
    PodIP,
    Service,
)

log = logging.getLogger("mesh.boxnode")

DNS_NAMESPACE = "kube-system"
DNS_SERVICE = "kube-dns"


def dns_objects(cluster_ip: str, node_ip: str, port: int = 53) -> list[Service | EndpointSlice]:
    """The kube-dns Service at ``cluster_ip``, its endpoint the DNS server on the node."""
    ports = [
        {"name": "dns", "port": 53, "targetPort": port, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "targetPort": port, "protocol": "TCP"},
    ]
    service = Service.model_validate(
        {
            "metadata": {"name": DNS_SERVICE, "namespace": DNS_NAMESPACE},
            "spec": {"clusterIP": cluster_ip, "ports": ports},
        }
    )
    endpoints = EndpointSlice.model_validate(
        {
            "metadata": {
                "name": f"{DNS_SERVICE}-node",
                "namespace": DNS_NAMESPACE,
                "labels": {SERVICE_NAME_LABEL: DNS_SERVICE},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [node_ip], "conditions": {"ready": True}}],
            "ports": [
                {"name": "dns", "port": port, "protocol": "UDP"},
                {"name": "dns-tcp", "port": port, "protocol": "TCP"},
            ],
        }
    )
    return [service, endpoints]


def with_address(pod: Pod, ips: str | tuple[str, ...]) -> Pod:
    """The pod as its kubelet reports it: running, at ``ips`` (one per family, primary
    first, as ``status.podIPs``)."""
    ips = (ips,) if isinstance(ips, str) else ips
    status = pod.status.model_copy(
        update={
            "pod_ip": ips[0],
            "pod_ips": tuple(PodIP(ip=ip) for ip in ips),
            "phase": "Running",
        }
    )
    return pod.model_copy(update={"status": status})


class BoxNode:
    """Keeps the box's pod namespaces equal to the store's Pods."""

    def __init__(self, plane: Any, box: Any) -> None:
        self.plane = plane
        self.box = box
        self._unplaced: dict[str, str] = {}  # pod -> why it has no namespace

    def _wanted(self) -> dict[str, Pod]:
        pods = self.plane.store.snapshot().list("Pod")
        return {
            f"{p.metadata.namespace}/{p.metadata.name}": p
            for p in pods
            if isinstance(p, Pod) and not p.spec.host_network and not p.terminating
        }

    def _place(self, wanted: dict[str, Pod]) -> list[tuple[Pod, tuple[str, ...]]]:
        """Create and remove namespaces (blocking: runs in a worker thread). Returns the
        pods whose status must change."""
        for key in list(self.box.pods):
            if key not in wanted:
                ns, name = key.split("/", 1)
                self.box.remove_pod(ns, name)
                log.info("pod removed", extra={"pod": key})
        patches = []
        for key, pod in wanted.items():
            placed = self.box.pods.get(key)
            if placed is None:
                try:
                    placed = self._add(pod)
                except (OSError, ValueError) as exc:
                    # This pod stays Pending (as kubelet leaves a pod it cannot network);
                    # the others run. Said once per pod until it is placed or removed.
                    if self._unplaced.get(key) != str(exc):
                        log.error("cannot place pod", extra={"pod": key, "error": str(exc)})
                    self._unplaced[key] = str(exc)
                    continue
                self._unplaced.pop(key, None)
                log.info("pod placed", extra={"pod": key, "ips": list(placed.ips)})
            if pod.ips != placed.ips or pod.status.phase != "Running":
                patches.append((pod, placed.ips))
        for key in [k for k in self._unplaced if k not in wanted]:
            del self._unplaced[key]
        return patches

    def _add(self, pod: Pod) -> Any:
        requested = pod.status.pod_ip
        if requested and ipaddress.ip_address(requested) not in self.box.pod_net:
            requested = None  # an address from another mode (loopback): allocate
        ns, name = pod.metadata.namespace, pod.metadata.name
        if requested:
            try:
                return self.box.add_pod(ns, name, requested)
            except ValueError:
                pass  # taken: allocate another
        return self.box.add_pod(ns, name, None)

    async def reconcile(self) -> None:
        patches = await trio.to_thread.run_sync(self._place, self._wanted())
        for pod, ips in patches:
            self.plane.apply(with_address(pod, ips))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        revision = self.plane.store.revision
        await self.reconcile()
        task_status.started()
        while True:
            revision = await self.plane.store.wait_for_change(revision)
            await trio.sleep(0.05)  # let a burst of changes settle into one pass
            try:
                await self.reconcile()
            except (OSError, ValueError) as exc:
                log.error(
                    "pod placement failed; retrying on the next change", extra={"error": str(exc)}
                )
