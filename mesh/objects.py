"""Cluster objects: a trimmed, typed model of the Kubernetes kinds the mesh reads.

Every model is frozen and validates on construction. Field names are snake_case in Python
and camelCase on the wire (as in the Kubernetes API), and each model applies the defaults the
API server would (protocol TCP, targetPort = port, namespace ``default``, ...), so the rest of
the code never has to guess. Label keys and values, annotations and label selectors are
checked as the API server does (mesh/labels.py). Fields the models do not hold are ignored
here, as a client of a newer server must; manifests read from files are checked for fields
Kubernetes does not know before they get here (mesh/kube_fields.py).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from mesh.labels import check_annotations, check_labels, requirement_error
from mesh.selectors import from_label_selector

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _label(value: str) -> str:
    if len(value) > 63 or not DNS1123_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 label (lower case alphanumerics and '-', "
            "starting and ending with an alphanumeric, at most 63 characters)"
        )
    return value


def _subdomain(value: str) -> str:
    if len(value) > 253 or not DNS1123_SUBDOMAIN.match(value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 subdomain (lower case alphanumerics, '-' and '.', "
            "at most 253 characters)"
        )
    return value


def _port_name(value: str) -> str:
    if len(value) > 15 or not IANA_SVC_NAME.match(value):
        raise ValueError(
            f"{value!r} is not a valid port name (at most 15 lower case alphanumerics and '-', "
            "with at least one letter)"
        )
    return value


# A dotted quad already in canonical form (no leading zeros, each octet <= 255) is its own
# canonical text: most addresses take this one match instead of an ipaddress round trip.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_V4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def _ip(value: str) -> str:
    if value.__class__ is str and _CANONICAL_V4.fullmatch(value):
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def _labels(value: dict[str, str]) -> dict[str, str]:
    check_labels(value)
    return value


def _annotations(value: dict[str, str]) -> dict[str, str]:
    check_annotations(value)
    return value


# Namespace names seen valid: thousands of objects share a few namespaces.
_GOOD_NAMESPACES: set[str] = {"", "default"}


def _namespace_name(value: str) -> str:
    """metadata.namespace: a DNS-1123 label, as the API server requires ("" = defaulted)."""
    if value not in _GOOD_NAMESPACES:
        _label(value)
        if len(_GOOD_NAMESPACES) < 65_536:
            _GOOD_NAMESPACES.add(value)
    return value


NamespaceName = Annotated[str, AfterValidator(_namespace_name)]
# A label map (metadata.labels, a selector's matchLabels) and an annotation map, checked as
# the API server does (mesh/labels.py); the error starts with the bad key or value quoted.
Labels = Annotated[dict[str, str], AfterValidator(_labels)]
Annotations = Annotated[dict[str, str], AfterValidator(_annotations)]
Label = Annotated[str, AfterValidator(_label)]
Subdomain = Annotated[str, AfterValidator(_subdomain)]
PortName = Annotated[str, AfterValidator(_port_name)]
IP = Annotated[str, AfterValidator(_ip)]
PortNumber = Annotated[int, Field(ge=1, le=65535)]
Protocol = Literal["TCP", "UDP", "SCTP"]


class Model(BaseModel):
    """Base of every cluster model: frozen, camelCase aliases, unknown fields ignored."""

    model_config = ConfigDict(
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        strict=False,
    )

    def to_dict(self) -> dict[str, Any]:
        """The object as the API would return it (camelCase, no unset optional fields)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


_M = TypeVar("_M", bound=Model)


def replaced(model: _M, updates: dict[str, Any]) -> _M:
    """``model.model_copy(update=updates)`` for a frozen model without extras or private
    attributes: the fields dict copied once; the fields-set kept when no name is new, and a
    shared one (see :func:`share_fields_sets`) grown into a shared one."""
    cls = model.__class__
    new = _new_object(cls)  # BaseModel has no __new__ of its own
    fields = model.__dict__.copy()
    fields.update(updates)
    fields_set = model.__pydantic_fields_set__
    for name in updates:
        if name not in fields_set:
            fields_set = _grown(cls, fields_set, tuple(updates))
            break
    _set_slots(new, fields, fields_set)
    return new


# The slot setters of a model's instance state, looked up once (``object.__setattr__``
# finds them by name on every call): each store write and admission copies a few models.
_new_object = object.__new__
_SET_DICT = BaseModel.__dict__["__dict__"].__set__
_SET_FIELDS_SET = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_SET_EXTRA = BaseModel.__dict__["__pydantic_extra__"].__set__
_SET_PRIVATE = BaseModel.__dict__["__pydantic_private__"].__set__


def _set_slots(model: BaseModel, fields: dict[str, Any], fields_set: set[str]) -> None:
    """Give a new model (``object.__new__(cls)``) of a class without extras or private
    attributes its fields dict and fields-set, as validation would."""
    _SET_DICT(model, fields)
    _SET_FIELDS_SET(model, fields_set)
    _SET_EXTRA(model, None)
    _SET_PRIVATE(model, None)


_B = TypeVar("_B", bound=BaseModel)


def built(cls: type[_B], fields: dict[str, Any], fields_set: set[str]) -> _B:
    """A model of ``cls`` (frozen, no extras or private attributes) holding ``fields`` (every
    field, in declaration order), as its validation would make it from values that are
    valid already: for objects made by the thousand from checked values, where validating
    again is most of the cost."""
    obj = _new_object(cls)
    _set_slots(obj, fields, fields_set)
    return obj


# The shared fields-sets: the first one met per class, then one per other combination of
# names (_VARIANTS). _SHARED lists them per class, the first one first: a scan with == over
# a few small sets finds a variant without building a frozenset per model. _SHARED_IDS
# tells a shared set from a model's own by identity (shared sets live as long as the
# process, so their ids are never reused).
_FIELDS_SETS: dict[type[BaseModel], set[str]] = {}
_VARIANTS: dict[tuple[type[BaseModel], frozenset[str]], set[str]] = {}
_SHARED: dict[type[BaseModel], list[set[str]]] = {}
_SHARED_IDS: dict[int, set[str]] = {}
_MAX_SCANNED = 16  # variants per class in the scanned list; any more are found by frozenset
# A shared set with some names added, by (the shared set's id, the names).
_GROWN: dict[tuple[int, tuple[str, ...]], set[str]] = {}
_NESTED: dict[type[BaseModel], tuple[str, ...]] = {}


def _variant(cls: type[BaseModel], fields_set: set[str]) -> set[str]:
    """The shared set of ``cls`` equal to ``fields_set`` (which becomes it if none is), once
    the class has its first one."""
    known = _SHARED.get(cls)
    if known is None:
        primary = _FIELDS_SETS[cls]
        known = _SHARED[cls] = [primary]
        _SHARED_IDS[id(primary)] = primary
    for shared in known:
        if shared == fields_set:
            return shared
    shared = _VARIANTS.setdefault((cls, frozenset(fields_set)), fields_set)
    _SHARED_IDS[id(shared)] = shared
    if len(known) < _MAX_SCANNED:
        known.append(shared)
    return shared


def _grown(cls: type[BaseModel], fields_set: set[str], names: tuple[str, ...]) -> set[str]:
    """``fields_set | set(names)``: a shared set when ``fields_set`` is one (a store write
    stamps resourceVersion into every ObjectMeta: one set for all of them, not one each)."""
    shared = _GROWN.get((id(fields_set), names))
    if shared is not None:
        return shared
    grown = fields_set.union(names)
    if _SHARED_IDS.get(id(fields_set)) is not fields_set:
        primary = _FIELDS_SETS.get(cls)
        if primary is not fields_set:
            return grown  # not a shared set: a set of its own, as model_copy makes
        _SHARED_IDS[id(primary)] = primary
    shared = _FIELDS_SETS[cls] if _FIELDS_SETS[cls] == grown else _variant(cls, grown)
    _GROWN[(id(fields_set), names)] = shared
    return shared


def _may_hold_model(annotation: Any) -> bool:
    if annotation is Any or annotation is object:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_may_hold_model(arg) for arg in get_args(annotation))


def _nested_fields(cls: type[BaseModel]) -> tuple[str, ...]:
    """The fields of ``cls`` whose value may be a model or hold models, once per class:
    the others (names, numbers, label dicts) are not looked at."""
    found = _NESTED.get(cls)
    if found is None:
        fields = cls.model_fields.items()
        found = _NESTED[cls] = tuple(n for n, f in fields if _may_hold_model(f.annotation))
    return found


# Per class met inside a model, whether it is a model (a dict hit instead of an isinstance
# through pydantic's metaclass): the walk below runs for some ten models per store write.
_IS_MODEL: dict[type, bool] = {}


def _is_model(cls: type) -> bool:
    found = _IS_MODEL[cls] = issubclass(cls, BaseModel)
    return found


def share_fields_sets(model: BaseModel) -> None:
    """Make ``model`` and the models inside it share one fields-set per class where the
    sets are equal. Pydantic gives every instance its own ``set`` of the fields it was
    given (some 200 bytes), a third of the memory of a stored object; the models are
    frozen, so nothing adds to those sets (``model_copy`` copies the set before updating).
    A loop over a stack, not recursion: every store write walks some ten models."""
    stack = [model]
    pop, push = stack.pop, stack.append
    shared_sets, nested_fields, is_model = _FIELDS_SETS, _NESTED, _IS_MODEL
    set_fields_set = _SET_FIELDS_SET
    while stack:
        item = pop()
        cls = item.__class__
        fields_set = item.__pydantic_fields_set__
        shared = shared_sets.setdefault(cls, fields_set)
        if shared is not fields_set:
            if shared != fields_set:  # a less common combination: one shared set per variant
                shared = _variant(cls, fields_set)
            set_fields_set(item, shared)
        nested = nested_fields.get(cls)
        if nested is None:
            nested = _nested_fields(cls)
        if nested:
            values = item.__dict__
            for name in nested:
                value = values[name]
                value_cls = value.__class__
                if value_cls is tuple:
                    for inner in value:
                        inner_cls = inner.__class__
                        found = is_model.get(inner_cls)
                        if found or (found is None and _is_model(inner_cls)):
                            push(inner)
                else:
                    found = is_model.get(value_cls)
                    if found or (found is None and _is_model(value_cls)):
                        push(value)


class OwnerReference(Model):
    kind: str
    name: str
    api_version: str = ""
    uid: str = ""


class ObjectMeta(Model):
    name: Subdomain
    namespace: NamespaceName = ""
    labels: Labels = Field(default_factory=dict)
    annotations: Annotations = Field(default_factory=dict)
    resource_version: str = ""
    uid: str = ""
    generation: int = 0
    deletion_timestamp: str | None = None
    creation_timestamp: str | None = None
    owner_references: tuple[OwnerReference, ...] = ()


class ObjectReference(Model):
    kind: str = ""
    namespace: str = ""
    name: str = ""
    uid: str = ""


class KubeObject(Model):
    """Any object with apiVersion, kind and metadata."""

    KIND: ClassVar[str] = ""
    API_VERSIONS: ClassVar[tuple[str, ...]] = ()
    NAMESPACED: ClassVar[bool] = True

    api_version: str = ""
    kind: str = ""
    metadata: ObjectMeta

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            data.setdefault("apiVersion", cls.API_VERSIONS[0] if cls.API_VERSIONS else "")
            data.setdefault("kind", cls.KIND)
            meta = data.get("metadata")
            if isinstance(meta, dict) and cls.NAMESPACED and not meta.get("namespace"):
                data["metadata"] = {**meta, "namespace": "default"}
            elif isinstance(meta, dict) and not cls.NAMESPACED and meta.get("namespace"):
                # The API server ignores metadata.namespace on cluster-scoped objects.
                data["metadata"] = {**meta, "namespace": ""}
        return data

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def key(self) -> tuple[str, str, str]:
        """(kind, namespace, name): the identity of an object in the store."""
        return (self.KIND, self.metadata.namespace, self.metadata.name)

    def with_resource_version(self, version: str, generation: int | None = None) -> KubeObject:
        """This object with ``metadata.resourceVersion`` (and ``generation``, unless None)
        set (the store's stamp on a write). A shallow copy of the two models, as
        ``model_copy`` makes, without its generic deep machinery: every store write makes one."""
        meta = self.metadata
        if generation is not None and meta.generation != generation:
            if meta.resource_version != version:
                meta = replaced(meta, {"resource_version": version, "generation": generation})
            else:
                meta = replaced(meta, {"generation": generation})
        elif meta.resource_version == version:
            return self
        else:
            meta = replaced(meta, {"resource_version": version})
        return replaced(self, {"metadata": meta})


# --- Namespace ---------------------------------------------------------------------------


class Namespace(KubeObject):
    KIND = "Namespace"
    API_VERSIONS = ("v1",)
    NAMESPACED = False

    @model_validator(mode="after")
    def _name_is_label(self) -> Namespace:
        try:
            _label(self.metadata.name)
        except ValueError as exc:
            raise ValueError(f"metadata.name: {exc}") from None
        return self


# --- Service -----------------------------------------------------------------------------


class ServicePort(Model):
    name: PortName | None = None
    protocol: Protocol = "TCP"
    port: PortNumber
    target_port: PortNumber | PortName | None = None
    node_port: PortNumber | None = None
    app_protocol: str | None = None

    @model_validator(mode="after")
    def _target_defaults_to_port(self) -> ServicePort:
        if self.target_port is None:
            object.__setattr__(self, "target_port", self.port)
        return self


class ClientIPConfig(Model):
    timeout_seconds: Annotated[int, Field(ge=1, le=86400)] = 10800


class SessionAffinityConfig(Model):
    client_ip: ClientIPConfig = Field(default_factory=ClientIPConfig, alias="clientIP")


class LoadBalancerIngress(Model):
    ip: IP | None = None
    hostname: str | None = None


class LoadBalancerStatus(Model):
    ingress: tuple[LoadBalancerIngress, ...] = ()


class ServiceStatus(Model):
    load_balancer: LoadBalancerStatus = Field(default_factory=LoadBalancerStatus)


ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]


class ServiceSpec(Model):
    type: ServiceType = "ClusterIP"
    cluster_ip: str | None = Field(default=None, alias="clusterIP")
    cluster_ips: tuple[str, ...] = Field(default=(), alias="clusterIPs")
    ip_families: tuple[Literal["IPv4", "IPv6"], ...] = ()
    ip_family_policy: Literal["SingleStack", "PreferDualStack", "RequireDualStack"] | None = None
    ports: tuple[ServicePort, ...] = ()
    selector: Labels | None = None
    session_affinity: Literal["None", "ClientIP"] = "None"
    session_affinity_config: SessionAffinityConfig | None = None
    publish_not_ready_addresses: bool = False
    internal_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    external_traffic_policy: Literal["Cluster", "Local"] | None = None
    external_name: str | None = None
    external_ips: tuple[IP, ...] = Field(default=(), alias="externalIPs")
    load_balancer_ip: IP | None = Field(default=None, alias="loadBalancerIP")

    @model_validator(mode="after")
    def _check(self) -> ServiceSpec:
        ips = list(self.cluster_ips)
        if self.cluster_ip and not ips:
            ips = [self.cluster_ip]
        if self.cluster_ip and ips and ips[0] != self.cluster_ip:
            raise ValueError("clusterIP: must equal clusterIPs[0]")
        if ips and ips[0] == "None":
            if len(ips) > 1:
                raise ValueError("clusterIPs: 'None' must be the only value")
            if self.type != "ClusterIP":
                raise ValueError("clusterIP: None (headless) requires type ClusterIP")
        else:
            for i, ip in enumerate(ips):
                try:
                    ips[i] = _ip(ip)
                except ValueError as exc:
                    raise ValueError(f"clusterIPs[{i}]: {exc}") from None
            if len(ips) > 2 or (
                len(ips) == 2
                and ipaddress.ip_address(ips[0]).version == ipaddress.ip_address(ips[1]).version
            ):
                raise ValueError("clusterIPs: at most one address per IP family")
        families = self.ip_families or tuple(
            "IPv6" if ":" in ip else "IPv4" for ip in ips if ip != "None"
        )
        if self.type == "ExternalName":
            if not self.external_name:
                raise ValueError("externalName: required for type ExternalName")
            if ips:
                raise ValueError("clusterIP: may not be set for type ExternalName")
            try:
                _subdomain(self.external_name.rstrip(".").lower())
            except ValueError as exc:
                raise ValueError(f"externalName: {exc}") from None
        else:
            if not self.ports and not (ips and ips[0] == "None"):
                raise ValueError("ports: at least one port is required")
        names = [p.name for p in self.ports]
        if len(self.ports) > 1 and any(n is None for n in names):
            raise ValueError("ports: every port must have a name when there is more than one")
        seen: set[str] = set()
        for n in names:
            if n is not None and n in seen:
                raise ValueError(f"ports: duplicate port name {n!r}")
            if n is not None:
                seen.add(n)
        seen_ports: set[tuple[int, str]] = set()
        for i, p in enumerate(self.ports):
            if p.node_port is not None and self.type not in ("NodePort", "LoadBalancer"):
                raise ValueError(
                    f"ports[{i}].nodePort: may only be set for type NodePort or LoadBalancer"
                )
            if (p.port, p.protocol) in seen_ports:
                raise ValueError(f"ports[{i}]: duplicate port {p.port}/{p.protocol}")
            seen_ports.add((p.port, p.protocol))
        object.__setattr__(self, "cluster_ips", tuple(ips))
        object.__setattr__(self, "cluster_ip", ips[0] if ips else None)
        object.__setattr__(self, "ip_families", tuple(families))
        if self.session_affinity == "ClientIP" and self.session_affinity_config is None:
            object.__setattr__(self, "session_affinity_config", SessionAffinityConfig())
        if self.external_traffic_policy is None and self.type in ("NodePort", "LoadBalancer"):
            object.__setattr__(self, "external_traffic_policy", "Cluster")
        return self

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"


class Service(KubeObject):
    KIND = "Service"
    API_VERSIONS = ("v1",)

    spec: ServiceSpec = Field(default_factory=ServiceSpec)
    status: ServiceStatus = Field(default_factory=ServiceStatus)

    @model_validator(mode="after")
    def _name_is_label(self) -> Service:
        # Service names become DNS labels: RFC 1035 label (must start with a letter).
        name = self.metadata.name
        try:
            _label(name)
        except ValueError as exc:
            raise ValueError(f"metadata.name: {exc}") from None
        if not name[0].isalpha():
            raise ValueError(f"metadata.name: {name!r} must start with a letter (RFC 1035 label)")
        return self


# --- EndpointSlice and Endpoints -----------------------------------------------------------


class EndpointConditions(Model):
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class Endpoint(Model):
    addresses: tuple[str, ...] = Field(min_length=1, max_length=100)
    conditions: EndpointConditions = Field(default_factory=EndpointConditions)
    hostname: Label | None = None
    node_name: str | None = None
    zone: str | None = None
    target_ref: ObjectReference | None = None

    @property
    def ready(self) -> bool:
        # An unset ready condition means ready (discovery.k8s.io/v1 semantics).
        return self.conditions.ready is not False

    @property
    def serving(self) -> bool:
        c = self.conditions
        return c.serving if c.serving is not None else self.ready

    @property
    def terminating(self) -> bool:
        return bool(self.conditions.terminating)


class EndpointPort(Model):
    name: str | None = None
    protocol: Protocol = "TCP"
    port: PortNumber | None = None
    app_protocol: str | None = None


SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"


class EndpointSlice(KubeObject):
    KIND = "EndpointSlice"
    API_VERSIONS = ("discovery.k8s.io/v1",)

    address_type: Literal["IPv4", "IPv6", "FQDN"]
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[EndpointPort, ...] = ()

    @model_validator(mode="after")
    def _check_addresses(self) -> EndpointSlice:
        if self.address_type == "FQDN":
            return self
        want = 4 if self.address_type == "IPv4" else 6
        for i, ep in enumerate(self.endpoints):
            for j, addr in enumerate(ep.addresses):
                if want == 4 and _CANONICAL_V4.fullmatch(addr):
                    continue  # the common case, without an ipaddress object
                try:
                    ip = ipaddress.ip_address(addr)
                except ValueError:
                    raise ValueError(
                        f"endpoints[{i}].addresses[{j}]: {addr!r} is not an IP address"
                    ) from None
                if ip.version != want:
                    raise ValueError(
                        f"endpoints[{i}].addresses[{j}]: {addr!r} is not an {self.address_type} address"
                    )
        return self

    @property
    def service_name(self) -> str | None:
        return self.metadata.labels.get(SERVICE_NAME_LABEL)


class EndpointAddress(Model):
    ip: IP
    hostname: Label | None = None
    node_name: str | None = None
    target_ref: ObjectReference | None = None


class EndpointsPort(Model):
    name: str | None = None
    port: PortNumber
    protocol: Protocol = "TCP"
    app_protocol: str | None = None


class EndpointSubset(Model):
    addresses: tuple[EndpointAddress, ...] = ()
    not_ready_addresses: tuple[EndpointAddress, ...] = ()
    ports: tuple[EndpointsPort, ...] = ()


class Endpoints(KubeObject):
    """Legacy core/v1 Endpoints; converted to EndpointSlices by the store's consumers."""

    KIND = "Endpoints"
    API_VERSIONS = ("v1",)

    subsets: tuple[EndpointSubset, ...] = ()


# --- Pod ---------------------------------------------------------------------------------


class ContainerPort(Model):
    name: PortName | None = None
    container_port: PortNumber
    protocol: Protocol = "TCP"


class Container(Model):
    name: Label
    image: str = ""
    ports: tuple[ContainerPort, ...] = ()


class PodSpec(Model):
    hostname: Label | None = None
    subdomain: Label | None = None
    service_account_name: str = "default"
    node_name: str | None = None
    containers: tuple[Container, ...] = ()
    host_network: bool = False


class PodCondition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]


class PodIP(Model):
    ip: IP


class PodStatus(Model):
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"] = "Pending"
    pod_ip: IP | None = Field(default=None, alias="podIP")
    pod_ips: tuple[PodIP, ...] = Field(default=(), alias="podIPs")
    conditions: tuple[PodCondition, ...] = ()

    @model_validator(mode="after")
    def _ips(self) -> PodStatus:
        if self.pod_ip and not self.pod_ips:
            object.__setattr__(self, "pod_ips", (PodIP(ip=self.pod_ip),))
        elif self.pod_ips and not self.pod_ip:
            object.__setattr__(self, "pod_ip", self.pod_ips[0].ip)
        elif self.pod_ip and self.pod_ips and self.pod_ips[0].ip != self.pod_ip:
            raise ValueError("podIP must equal podIPs[0].ip")
        return self


class Pod(KubeObject):
    KIND = "Pod"
    API_VERSIONS = ("v1",)

    spec: PodSpec = Field(default_factory=PodSpec)
    status: PodStatus = Field(default_factory=PodStatus)

    @property
    def ready(self) -> bool:
        """Running with condition Ready=True (or no conditions reported at all: a manifest
        written by hand for the embedded default rarely carries status conditions)."""
        if self.status.phase != "Running":
            return False
        for cond in self.status.conditions:
            if cond.type == "Ready":
                return cond.status == "True"
        return True

    @property
    def terminating(self) -> bool:
        return self.metadata.deletion_timestamp is not None

    @property
    def ips(self) -> tuple[str, ...]:
        pod_ips = self.status.pod_ips
        if len(pod_ips) == 1:  # the common case, without a generator (read per index write)
            return (pod_ips[0].ip,)
        return tuple(p.ip for p in pod_ips)

    def container_port(self, name: str, protocol: str) -> int | None:
        """Resolve a named port (a Service targetPort) through this pod's containers."""
        for c in self.spec.containers:
            for p in c.ports:
                if p.name == name and p.protocol == protocol:
                    return p.container_port
        return None


# --- Ingress, IngressClass -----------------------------------------------------------------


class ServiceBackendPort(Model):
    name: str | None = None
    number: PortNumber | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ServiceBackendPort:
        if (self.name is None) == (self.number is None):
            raise ValueError("exactly one of port.name and port.number must be set")
        return self


class IngressServiceBackend(Model):
    name: Label
    port: ServiceBackendPort


class TypedLocalObjectReference(Model):
    api_group: str | None = None
    kind: str
    name: str


class IngressBackend(Model):
    service: IngressServiceBackend | None = None
    resource: TypedLocalObjectReference | None = None

    @model_validator(mode="after")
    def _one_of(self) -> IngressBackend:
        if (self.service is None) == (self.resource is None):
            raise ValueError("exactly one of backend.service and backend.resource must be set")
        return self


class HTTPIngressPath(Model):
    path: str | None = None
    path_type: Literal["Exact", "Prefix", "ImplementationSpecific"]
    backend: IngressBackend

    @model_validator(mode="after")
    def _path(self) -> HTTPIngressPath:
        if self.path_type in ("Exact", "Prefix") and not (self.path or "").startswith("/"):
            raise ValueError(f"path must be an absolute path for pathType {self.path_type}")
        return self


class HTTPIngressRuleValue(Model):
    paths: tuple[HTTPIngressPath, ...] = Field(min_length=1)


def _host(value: str) -> str:
    """An Ingress or Gateway API hostname: a DNS subdomain, optionally ``*.`` in front."""
    name = value[2:] if value.startswith("*.") else value
    if "*" in name or not name:
        raise ValueError(f"{value!r} is not a host name: a wildcard may only be a leading '*.'")
    _subdomain(name)
    return value


HostName = Annotated[str, AfterValidator(_host)]


def _precise_host(value: str) -> str:
    """Gateway API's PreciseHostname: a DNS subdomain, no wildcard, not an IP address."""
    if "*" in value:
        raise ValueError(f"{value!r} is not a precise host name: no wildcard allowed")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return _subdomain(value)
    raise ValueError(f"{value!r} is an IP address, not a host name")


PreciseHostName = Annotated[str, AfterValidator(_precise_host)]


class IngressRule(Model):
    host: HostName | None = None
    http: HTTPIngressRuleValue | None = None


class IngressTLS(Model):
    hosts: tuple[str, ...] = ()
    secret_name: str | None = None


class IngressSpec(Model):
    ingress_class_name: str | None = None
    default_backend: IngressBackend | None = None
    tls: tuple[IngressTLS, ...] = ()
    rules: tuple[IngressRule, ...] = ()


class IngressStatus(Model):
    load_balancer: LoadBalancerStatus = Field(default_factory=LoadBalancerStatus)


class Ingress(KubeObject):
    KIND = "Ingress"
    API_VERSIONS = ("networking.k8s.io/v1",)

    spec: IngressSpec = Field(default_factory=IngressSpec)
    status: IngressStatus = Field(default_factory=IngressStatus)


class IngressClassSpec(Model):
    controller: str = ""


class IngressClass(KubeObject):
    KIND = "IngressClass"
    API_VERSIONS = ("networking.k8s.io/v1",)
    NAMESPACED = False

    spec: IngressClassSpec = Field(default_factory=IngressClassSpec)


# --- Gateway API (gateway.networking.k8s.io/v1) --------------------------------------------

GATEWAY_GROUP = "gateway.networking.k8s.io"
_DURATION = re.compile(r"^(?:[0-9]{1,5}(?:h|m|s|ms)){1,4}$")
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(value: Any) -> float:
    """A Gateway API duration (GEP-2257: ``10s``, ``1m30s``, ``500ms``) in seconds."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{value!r} is not a duration such as '10s', '1m' or '500ms'")
    if isinstance(value, int | float):  # already parsed (a model copied or re-validated)
        if value < 0:
            raise ValueError(f"{value!r} is not a duration: it is negative")
        return float(value)
    if not _DURATION.match(value):
        raise ValueError(
            f"{value!r} is not a duration: use up to four number-unit pairs with units "
            "h, m, s or ms, such as '10s', '1m30s' or '500ms'"
        )
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))


def format_duration(seconds: float) -> str:
    """Seconds back to the shortest GEP-2257 spelling (``90.0`` -> ``1m30s``)."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    out = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


# Durations are floats (seconds) in Python and GEP-2257 strings on the wire.
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    observed_generation: int = 0
    last_transition_time: str = ""


class ParentReference(Model):
    group: str = GATEWAY_GROUP
    kind: str = "Gateway"
    namespace: str | None = None
    name: str
    section_name: str | None = None
    port: PortNumber | None = None


class HTTPPathMatch(Model):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = "/"

    @model_validator(mode="after")
    def _check(self) -> HTTPPathMatch:
        if self.type != "RegularExpression" and not self.value.startswith("/"):
            raise ValueError(f"path.value: {self.value!r} must start with '/'")
        if self.type == "RegularExpression":
            _regex(self.value)
        return self


def _regex(value: str) -> None:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from None


class HTTPHeaderMatch(Model):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: Annotated[str, Field(min_length=1, max_length=256)]
    value: str

    @model_validator(mode="after")
    def _check(self) -> HTTPHeaderMatch:
        if self.type == "RegularExpression":
            _regex(self.value)
        return self


class HTTPQueryParamMatch(HTTPHeaderMatch):
    pass


HTTPMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]


class HTTPRouteMatch(Model):
    path: HTTPPathMatch = Field(default_factory=HTTPPathMatch)
    headers: tuple[HTTPHeaderMatch, ...] = ()
    query_params: tuple[HTTPQueryParamMatch, ...] = ()
    method: HTTPMethod | None = None


class BackendObjectReference(Model):
    group: str = ""
    kind: str = "Service"
    name: str
    namespace: str | None = None
    port: PortNumber | None = None


class HTTPHeader(Model):
    name: Annotated[str, Field(min_length=1, max_length=256)]
    value: str


class HTTPHeaderFilter(Model):
    set: tuple[HTTPHeader, ...] = ()
    add: tuple[HTTPHeader, ...] = ()
    remove: tuple[str, ...] = ()


class HTTPPathModifier(Model):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: str | None = None
    replace_prefix_match: str | None = None

    @model_validator(mode="after")
    def _one(self) -> HTTPPathModifier:
        want = "replace_full_path" if self.type == "ReplaceFullPath" else "replace_prefix_match"
        if getattr(self, want) is None:
            raise ValueError(f"path: type {self.type} needs {to_camel(want)}")
        return self


class HTTPRequestRedirectFilter(Model):
    scheme: Literal["http", "https"] | None = None
    hostname: str | None = None
    path: HTTPPathModifier | None = None
    port: PortNumber | None = None
    status_code: Literal[301, 302, 303, 307, 308] = 302


class HTTPURLRewriteFilter(Model):
    hostname: str | None = None
    path: HTTPPathModifier | None = None


class Fraction(Model):
    numerator: Annotated[int, Field(ge=0)]
    denominator: Annotated[int, Field(ge=1)] = 100


class HTTPRequestMirrorFilter(Model):
    backend_ref: BackendObjectReference
    percent: Annotated[int, Field(ge=0, le=100)] | None = None
    fraction: Fraction | None = None

    @property
    def share(self) -> float:
        """The fraction of requests mirrored, 0..1 (all when neither field is set)."""
        if self.percent is not None:
            return self.percent / 100
        if self.fraction is not None:
            return min(1.0, self.fraction.numerator / self.fraction.denominator)
        return 1.0


_FILTER_FIELDS = {
    "RequestHeaderModifier": "request_header_modifier",
    "ResponseHeaderModifier": "response_header_modifier",
    "RequestRedirect": "request_redirect",
    "URLRewrite": "url_rewrite",
    "RequestMirror": "request_mirror",
    "ExtensionRef": "extension_ref",
}


class LocalObjectReference(Model):
    group: str = ""
    kind: str
    name: str


class HTTPRouteFilter(Model):
    type: Literal[
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestRedirect",
        "URLRewrite",
        "RequestMirror",
        "ExtensionRef",
    ]
    request_header_modifier: HTTPHeaderFilter | None = None
    response_header_modifier: HTTPHeaderFilter | None = None
    request_redirect: HTTPRequestRedirectFilter | None = None
    url_rewrite: HTTPURLRewriteFilter | None = None
    request_mirror: HTTPRequestMirrorFilter | None = None
    extension_ref: LocalObjectReference | None = None

    @model_validator(mode="after")
    def _matches_type(self) -> HTTPRouteFilter:
        want = _FILTER_FIELDS[self.type]
        if getattr(self, want) is None:
            raise ValueError(f"filter of type {self.type} needs {to_camel(want)}")
        for other in _FILTER_FIELDS.values():
            if other != want and getattr(self, other) is not None:
                raise ValueError(f"filter of type {self.type} may not set {to_camel(other)}")
        return self


class HTTPBackendRef(BackendObjectReference):
    weight: Annotated[int, Field(ge=0, le=1000000)] = 1
    filters: tuple[HTTPRouteFilter, ...] = ()


class HTTPRouteTimeouts(Model):
    request: Duration | None = None
    backend_request: Duration | None = None

    @model_validator(mode="after")
    def _order(self) -> HTTPRouteTimeouts:
        # GEP-1742: backendRequest must not exceed request (0 means no timeout).
        r, b = self.request, self.backend_request
        if r and b and b > r:
            raise ValueError("timeouts.backendRequest may not be longer than timeouts.request")
        return self


class HTTPRouteRetry(Model):
    """GEP-1731: retry the listed codes (plus connection errors) up to ``attempts`` times."""

    codes: tuple[Annotated[int, Field(ge=400, le=599)], ...] = ()
    attempts: Annotated[int, Field(ge=0)] | None = None
    backoff: Duration | None = None


class HTTPRouteRule(Model):
    name: str | None = None
    matches: tuple[HTTPRouteMatch, ...] = (HTTPRouteMatch(),)
    filters: tuple[HTTPRouteFilter, ...] = ()
    backend_refs: tuple[HTTPBackendRef, ...] = ()
    timeouts: HTTPRouteTimeouts | None = None
    retry: HTTPRouteRetry | None = None

    @model_validator(mode="after")
    def _filters(self) -> HTTPRouteRule:
        kinds = [f.type for f in self.filters]
        for once in ("RequestHeaderModifier", "ResponseHeaderModifier", "URLRewrite"):
            if kinds.count(once) > 1:
                raise ValueError(f"filters: {once} may appear at most once in a rule")
        if "RequestRedirect" in kinds and "URLRewrite" in kinds:
            raise ValueError("filters: RequestRedirect and URLRewrite cannot both be used")
        if "RequestRedirect" in kinds and self.backend_refs:
            raise ValueError("filters: a RequestRedirect rule may not have backendRefs")
        return self


class RouteParentStatus(Model):
    parent_ref: ParentReference
    controller_name: str
    conditions: tuple[Condition, ...] = ()


class RouteStatus(Model):
    parents: tuple[RouteParentStatus, ...] = ()


class HTTPRouteSpec(Model):
    parent_refs: tuple[ParentReference, ...] = ()
    hostnames: tuple[HostName, ...] = ()
    rules: tuple[HTTPRouteRule, ...] = (HTTPRouteRule(),)


class HTTPRoute(KubeObject):
    KIND = "HTTPRoute"
    API_VERSIONS = ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1")

    spec: HTTPRouteSpec = Field(default_factory=HTTPRouteSpec)
    status: RouteStatus = Field(default_factory=RouteStatus)


class GatewayClassSpec(Model):
    controller_name: str
    description: str | None = None


class GatewayClassStatus(Model):
    conditions: tuple[Condition, ...] = ()


class GatewayClass(KubeObject):
    KIND = "GatewayClass"
    API_VERSIONS = ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1")
    NAMESPACED = False

    spec: GatewayClassSpec
    status: GatewayClassStatus = Field(default_factory=GatewayClassStatus)


class SecretObjectReference(Model):
    group: str = ""
    kind: str = "Secret"
    name: str
    namespace: str | None = None


class GatewayTLSConfig(Model):
    mode: Literal["Terminate", "Passthrough"] = "Terminate"
    certificate_refs: tuple[SecretObjectReference, ...] = ()


class LabelSelectorRequirement(Model):
    key: str
    operator: str
    values: tuple[str, ...] = ()


class LabelSelector(Model):
    """metav1.LabelSelector: matchLabels and matchExpressions must all hold; an empty
    selector matches every object."""

    match_labels: Labels = Field(default_factory=dict)
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> LabelSelector:
        problems = [  # every bad requirement, as the API server lists them
            f"matchExpressions[{i}].{problem[0]}: {problem[1]}"
            for i, expr in enumerate(self.match_expressions)
            if (problem := requirement_error(expr.key, expr.operator, expr.values)) is not None
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        return from_label_selector(
            self.match_labels, ((e.key, e.operator, e.values) for e in self.match_expressions)
        ).matches(labels)


class RouteNamespaces(Model):
    from_: Literal["All", "Same", "Selector"] = Field(default="Same", alias="from")
    selector: LabelSelector | None = None


class RouteGroupKind(Model):
    group: str = GATEWAY_GROUP
    kind: str


class AllowedRoutes(Model):
    namespaces: RouteNamespaces = Field(default_factory=RouteNamespaces)
    kinds: tuple[RouteGroupKind, ...] = ()


class Listener(Model):
    name: Label
    hostname: HostName | None = None
    port: PortNumber
    protocol: str
    tls: GatewayTLSConfig | None = None
    allowed_routes: AllowedRoutes = Field(default_factory=AllowedRoutes)


class GatewayAddress(Model):
    type: str = "IPAddress"
    value: str


class GatewaySpec(Model):
    gateway_class_name: str
    listeners: tuple[Listener, ...] = Field(min_length=1)
    addresses: tuple[GatewayAddress, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> GatewaySpec:
        names = [lis.name for lis in self.listeners]
        for n in names:
            if names.count(n) > 1:
                raise ValueError(f"listeners: duplicate listener name {n!r}")
        return self


class ListenerStatus(Model):
    name: str
    supported_kinds: tuple[RouteGroupKind, ...] = ()
    attached_routes: int = 0
    conditions: tuple[Condition, ...] = ()


class GatewayStatusAddress(Model):
    type: str = "IPAddress"
    value: str


class GatewayStatus(Model):
    addresses: tuple[GatewayStatusAddress, ...] = ()
    conditions: tuple[Condition, ...] = ()
    listeners: tuple[ListenerStatus, ...] = ()


class Gateway(KubeObject):
    KIND = "Gateway"
    API_VERSIONS = ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1")

    spec: GatewaySpec
    status: GatewayStatus = Field(default_factory=GatewayStatus)


class ReferenceGrantFrom(Model):
    group: str
    kind: str
    namespace: str


class ReferenceGrantTo(Model):
    group: str
    kind: str
    name: str | None = None


class ReferenceGrantSpec(Model):
    from_: tuple[ReferenceGrantFrom, ...] = Field(alias="from", min_length=1)
    to: tuple[ReferenceGrantTo, ...] = Field(min_length=1)


class ReferenceGrant(KubeObject):
    KIND = "ReferenceGrant"
    API_VERSIONS = ("gateway.networking.k8s.io/v1beta1", "gateway.networking.k8s.io/v1")

    spec: ReferenceGrantSpec


class PolicyTargetReference(Model):
    """A policy's target in its own namespace (LocalPolicyTargetReferenceWithSectionName)."""

    group: str = ""
    kind: str
    name: str
    section_name: str | None = None


class SubjectAltName(Model):
    type: Literal["Hostname", "URI"]
    hostname: str | None = None
    uri: str | None = None


class BackendTLSPolicyValidation(Model):
    ca_certificate_refs: tuple[LocalObjectReference, ...] = ()
    # "System" is the one well-known set; any other value leaves the policy not Accepted.
    well_known_ca_certificates: str | None = Field(default=None, alias="wellKnownCACertificates")
    hostname: PreciseHostName
    subject_alt_names: tuple[SubjectAltName, ...] = ()

    @model_validator(mode="after")
    def _one_trust_source(self) -> BackendTLSPolicyValidation:
        if bool(self.ca_certificate_refs) == bool(self.well_known_ca_certificates):
            raise ValueError(
                "exactly one of caCertificateRefs and wellKnownCACertificates must be set"
            )
        return self


class BackendTLSPolicySpec(Model):
    target_refs: tuple[PolicyTargetReference, ...] = Field(min_length=1)
    validation: BackendTLSPolicyValidation
    options: dict[str, str] = Field(default_factory=dict)


class PolicyAncestorStatus(Model):
    ancestor_ref: ParentReference
    controller_name: str
    conditions: tuple[Condition, ...] = ()


class PolicyStatus(Model):
    ancestors: tuple[PolicyAncestorStatus, ...] = ()


class BackendTLSPolicy(KubeObject):
    """How the gateway speaks TLS to a Service's endpoints (Gateway API v1.4: v1; the
    v1alpha3 spelling of the experimental channel reads the same)."""

    KIND = "BackendTLSPolicy"
    API_VERSIONS = ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1alpha3")

    spec: BackendTLSPolicySpec
    status: PolicyStatus = Field(default_factory=PolicyStatus)


# --- ConfigMap -----------------------------------------------------------------------------


class ConfigMap(KubeObject):
    KIND = "ConfigMap"
    API_VERSIONS = ("v1",)

    data: dict[str, str] = Field(default_factory=dict)
    binary_data: dict[str, str] = Field(default_factory=dict)


# --- Secret --------------------------------------------------------------------------------


class Secret(KubeObject):
    KIND = "Secret"
    API_VERSIONS = ("v1",)

    type: str = "Opaque"
    data: dict[str, str] = Field(default_factory=dict)
    string_data: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _tls(self) -> Secret:
        import base64
        import binascii

        for key, value in self.data.items():
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"data.{key}: not valid base64") from None
        if self.type == "kubernetes.io/tls":
            for key in ("tls.crt", "tls.key"):
                if key not in self.data and key not in self.string_data:
                    raise ValueError(f"data: {key!r} is required for type kubernetes.io/tls")
        return self

    def value(self, key: str) -> bytes | None:
        import base64

        if key in self.string_data:
            return self.string_data[key].encode()
        if key in self.data:
            return base64.b64decode(self.data[key])
        return None


KINDS: dict[str, type[KubeObject]] = {
    cls.KIND: cls
    for cls in (
        Namespace,
        Service,
        EndpointSlice,
        Endpoints,
        Pod,
        Ingress,
        IngressClass,
        HTTPRoute,
        GatewayClass,
        Gateway,
        ReferenceGrant,
        BackendTLSPolicy,
        ConfigMap,
        Secret,
    )
}
