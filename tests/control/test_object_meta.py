"""Object metadata as the API server keeps it: metadata.generation (1 on create, one more per
spec change), status kept across a manifest edit (so condition times stay), and the uids
an EndpointSlice's references carry when served."""

from __future__ import annotations

from typing import Any

from mesh.control.plane import ControlPlane
from mesh.control.store import Store
from mesh.control.stream import api_object, object_list
from mesh.objects import Gateway, KubeObject
from tests.control.test_endpoints import pod, service
from tests.routing.test_translate_gatewayapi import gateway, gclass, listener


def relabelled(obj: KubeObject, **labels: str) -> KubeObject:
    """``obj`` with more labels and no status, as a manifest edit applies it."""
    data = obj.to_dict()
    data.pop("status", None)
    data["metadata"]["labels"] = {**data["metadata"].get("labels", {}), **labels}
    return type(obj).model_validate(data)


def test_generation_counts_spec_changes_only() -> None:
    store = Store()
    first = store.apply(gateway("gw", listener("http")))
    assert first.metadata.generation == 1
    labelled = store.apply(relabelled(first, team="a"))
    assert labelled.metadata.labels == {"team": "a"}
    assert labelled.metadata.generation == 1  # a metadata-only change
    assert isinstance(labelled, Gateway)
    status_only = labelled.status.model_copy(update={"addresses": ()})
    moved = store.apply(gateway("gw", listener("http", port=81)))
    assert moved.metadata.generation == 2
    assert moved.metadata.labels == {}  # the manifest's metadata wins
    again = store.apply(gateway("gw", listener("http", port=81)))
    assert again is moved  # nothing changed: no write, no new generation
    assert isinstance(moved, Gateway)
    status = store.apply(moved.model_copy(update={"status": status_only}))
    assert status.metadata.generation == 2  # a status write


def gateway_times(plane: ControlPlane) -> dict[str, tuple[str, str, int]]:
    gw = plane.store.get("Gateway", "default", "gw")
    assert isinstance(gw, Gateway)
    return {
        c.type: (c.status, c.last_transition_time, c.observed_generation)
        for c in gw.status.conditions
    }


def test_a_label_edit_keeps_condition_times_and_a_status_change_moves_them() -> None:
    now = [1_700_000_000.0]
    plane = ControlPlane(None, node_name="node-1", wanted=["ingress"])
    plane.store.clock = lambda: now[0]
    plane.report("ingress", {})  # a gateway in process has taken the config
    plane.apply(gclass())
    plane.apply(gateway("gw", listener("http")))
    plane.translate(plane.store.snapshot())
    t0 = "2023-11-14T22:13:20Z"
    assert gateway_times(plane) == {"Accepted": ("True", t0, 1), "Programmed": ("True", t0, 1)}

    now[0] += 3600
    stored = plane.store.get("Gateway", "default", "gw")
    assert stored is not None
    plane.apply(relabelled(stored, team="a"))
    gw = plane.store.get("Gateway", "default", "gw")
    assert gw is not None and gw.metadata.labels == {"team": "a"}
    plane.translate(plane.store.snapshot())
    assert gateway_times(plane) == {"Accepted": ("True", t0, 1), "Programmed": ("True", t0, 1)}

    # A spec change with no valid listener: the statuses flip, at the new time, and the
    # conditions observe the new generation.
    now[0] += 3600
    plane.apply(gateway("gw", listener("bad", protocol="UDP")))
    plane.translate(plane.store.snapshot())
    t2 = "2023-11-15T00:13:20Z"
    assert gateway_times(plane) == {
        "Accepted": ("False", t2, 2),
        "Programmed": ("False", t2, 2),
    }


def test_a_served_slice_refers_to_the_uids_its_service_and_pods_are_served_with() -> None:
    plane = ControlPlane(None, node_name="node-1", wanted=[])
    plane.apply(service("web"))
    plane.apply(pod("web-1", "10.0.0.1"))
    plane.apply(pod("web-2", "10.0.0.2"))
    plane.reconcile_endpoints()
    uids: dict[tuple[str, str], Any] = {}
    for kind in ("Service", "Pod"):
        for item in object_list(plane, kind, "default")["items"]:
            uids[(kind, item["metadata"]["name"])] = item["metadata"]["uid"]
    assert len(set(uids.values())) == 3 and all(uids.values())
    (es,) = object_list(plane, "EndpointSlice", "default")["items"]
    assert [(o["kind"], o["uid"]) for o in es["metadata"]["ownerReferences"]] == [
        ("Service", uids[("Service", "web")])
    ]
    targets = {e["targetRef"]["name"]: e["targetRef"]["uid"] for e in es["endpoints"]}
    assert targets == {"web-1": uids[("Pod", "web-1")], "web-2": uids[("Pod", "web-2")]}
    # A reference to an object the store does not hold stays empty.
    plane.store.delete("Service", "default", "web")
    stale = plane.store.get("EndpointSlice", "default", es["metadata"]["name"])
    assert stale is not None
    assert api_object(plane, stale)["metadata"]["ownerReferences"][0]["uid"] == ""
