"""``mesh get``: what the control plane holds, as kubectl prints it.

``mesh get KIND [NAME...]``, ``mesh get KIND/NAME...``; namespace ``default`` unless ``-n`` or
``-A``; ``-l`` label selectors; ``-o wide|yaml|json|name``; ``-w`` follows the control plane's
watch after the first listing, and lists again and resumes when it breaks (mesh/getwatch.py).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import click

from mesh.cli_types import CONTROL_URL, NAMESPACE
from mesh.cliopts import DEFAULT_CONTROL

Obj = dict[str, Any]


def parse_targets(args: Sequence[str]) -> tuple[str, list[str]]:
    """``("svc", "web", "db")`` or ``("svc/web", "svc/db")`` -> (Kind, names); raises
    ValueError in kubectl's words for a mix, or for two kinds."""
    from mesh.printing import resolve_kind

    if not args:
        raise ValueError("name a kind, e.g. mesh get svc (kinds: svc, pods, endpoints, ...)")
    if "," in args[0].partition("/")[0]:
        raise ValueError(f"{args[0]!r}: give one kind at a time (KIND,KIND is not supported)")
    if "/" not in args[0]:
        if any("/" in a for a in args[1:]):
            raise ValueError("there is no need to give a kind after KIND/NAME arguments")
        return resolve_kind(args[0]), list(args[1:])
    kinds, names = set(), []
    for arg in args:
        kind, sep, name = arg.partition("/")
        if not sep or not kind or not name:
            raise ValueError(f"{arg!r}: write KIND/NAME for every argument once one has a '/'")
        kinds.add(resolve_kind(kind))
        names.append(name)
    if len(kinds) > 1:
        raise ValueError("give names of one kind at a time")
    return kinds.pop(), names


def control_plane_error(control_url: str, exc: Exception) -> click.ClickException:
    """One sentence for a control plane that is not one (WrongServer) or cannot be reached."""
    from mesh.inspect import WrongServer

    if isinstance(exc, WrongServer):
        return click.ClickException(
            f"{control_url} is not a mesh control plane (give its --control-listen address)"
        )
    return click.ClickException(f"cannot reach the control plane at {control_url}: {exc}")


def select(items: Iterable[Obj], names: Sequence[str], selector: Any) -> list[Obj]:
    out = []
    for obj in items:
        meta = obj.get("metadata", {})
        if names and meta.get("name") not in names:
            continue
        if not selector.matches(meta.get("labels", {}) or {}):
            continue
        out.append(obj)
    return out


def render(kind: str, items: list[Obj], output: str, *, single: bool, table: Any) -> str:
    """The text for ``items`` in ``output`` form (``table`` is a printing.Table)."""
    from mesh.printing import name_of

    if output == "name":
        return "\n".join(name_of(kind, o) for o in items)
    if output in ("json", "yaml"):
        doc: Any = items[0] if single else {"apiVersion": "v1", "kind": "List", "items": items}
        if output == "json":
            return json.dumps(doc, indent=4)
        import yaml

        return yaml.safe_dump(doc, sort_keys=False).rstrip()
    return str(table.render(items))


@click.command()
@click.argument("targets", nargs=-1, required=True, metavar="KIND [NAME...] | KIND/NAME...")
@click.option(
    "-n", "--namespace", default=None, type=NAMESPACE, help="Namespace [default: default]."
)
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace.")
@click.option(
    "-l",
    "--selector",
    default="",
    help="Label selector: k=v, k!=v, 'k in (a,b)', 'k notin (a)', k, !k; comma = and.",
)
@click.option(
    "-o",
    "--output",
    default=None,
    type=click.Choice(["wide", "json", "yaml", "name"]),
    help="Output format (default: a table).",
)
@click.option("-w", "--watch", is_flag=True, help="After listing, print changes as they come.")
@click.option(
    "--control",
    "control_url",
    default=f"http://{DEFAULT_CONTROL}",
    show_default=True,
    type=CONTROL_URL,
    help="Control plane, http://HOST:PORT or HOST:PORT.",
)
def get(
    targets: tuple[str, ...],
    namespace: str | None,
    all_namespaces: bool,
    selector: str,
    output: str | None,
    watch: bool,
    control_url: str,
) -> None:
    """Show what the control plane holds: mesh get svc, mesh get pods -A -o wide,
    mesh get svc/web -o yaml, mesh get pods -l 'app in (web,api)' -w."""
    from mesh.inspect import WrongServer
    from mesh.printing import CLUSTER_SCOPED, PLURAL, Table
    from mesh.selectors import parse_selector

    output = output or ""  # the table
    try:
        kind, names = parse_targets(targets)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        sel = parse_selector(selector)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'-l' / '--selector'") from None
    cluster_scoped = kind in CLUSTER_SCOPED
    if all_namespaces and namespace is not None:
        raise click.UsageError("-n and -A exclude each other")
    ns = None if all_namespaces or cluster_scoped else (namespace or "default")
    try:
        items, version = _list(control_url, kind, ns)
    except (WrongServer, OSError) as exc:
        raise control_plane_error(control_url, exc) from None
    items = select(items, names, sel)
    missing = [n for n in names if n not in {o["metadata"].get("name") for o in items}]
    for name in missing:
        click.echo(f'Error from server (NotFound): {PLURAL[kind]} "{name}" not found', err=True)
    table = Table(kind, all_namespaces=ns is None and not cluster_scoped, wide=output == "wide")
    table.now = time.time()
    if items:
        click.echo(render(kind, items, output, single=len(names) == 1, table=table))
    elif not missing and not watch:
        where = f" in {ns} namespace" if ns is not None else ""
        click.echo(f"No resources found{where}.", err=True)
    if watch:
        sys.stdout.flush()
        _follow(control_url, kind, ns, version, names, sel, output, table, items)
    if missing:
        sys.exit(1)


def _list(control_url: str, kind: str, ns: str | None) -> tuple[list[Obj], str]:
    """The objects of ``kind``; for Endpoints, also those the EndpointSlices of Services
    without a legacy Endpoints object stand for (kubectl users look for both)."""
    from mesh.inspect import fetch_objects
    from mesh.printing import endpoints_from_slices, portless_services

    items, version = fetch_objects(control_url, kind, ns)
    if kind != "Endpoints":
        return items, version
    services, _ = fetch_objects(control_url, "Service", ns)
    slices, version = fetch_objects(control_url, "EndpointSlice", ns)
    have = {(o["metadata"].get("namespace"), o["metadata"].get("name")) for o in items}
    for ep in endpoints_from_slices(slices, portless_services(services)):
        if (ep["metadata"]["namespace"], ep["metadata"]["name"]) not in have:
            items.append(ep)
    items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"].get("name", "")))
    return items, version


def _follow(
    control_url: str,
    kind: str,
    ns: str | None,
    version: str,
    names: list[str],
    sel: Any,
    output: str,
    table: Any,
    shown: list[Obj],
) -> None:
    """Print changes as they come; a broken watch is listed again and resumed (getwatch)."""
    from mesh.getwatch import follow, key_of
    from mesh.inspect import WrongServer, watch_objects

    def watch(since: str) -> Iterator[tuple[str, Obj]]:
        return _changes(watch_objects, control_url, kind, ns, since)

    def broken(reason: str) -> None:
        click.echo(f"cannot reach the control plane at {control_url}: {reason}; retrying", err=True)

    def resumed() -> None:
        click.echo(f"the control plane at {control_url} answers again; watching", err=True)

    known = {key_of(o): o for o in shown}

    def keep(obj: Obj) -> bool:
        return bool(select([obj], names, sel))

    try:
        for obj in follow(
            known,
            version,
            watch,
            lambda: _list(control_url, kind, ns),
            keep=keep,
            broken=broken,
            resumed=resumed,
        ):
            table.now = time.time()
            if output in ("", "wide"):
                click.echo(table.line(obj))
            else:
                click.echo(render(kind, [obj], output, single=True, table=table))
            sys.stdout.flush()
    except KeyboardInterrupt:
        return
    except WrongServer:
        raise click.ClickException(
            f"{control_url} is not a mesh control plane, or does not serve watches"
        ) from None


def _changes(
    watch: Any, control_url: str, kind: str, ns: str | None, version: str
) -> Iterator[tuple[str, Obj]]:
    """(event type, object) from the watch. Endpoints follow the EndpointSlices (see _list):
    a slice event prints its Service's merged Endpoints."""
    from mesh.inspect import fetch_objects
    from mesh.printing import endpoints_from_slices, portless_services

    if kind != "Endpoints":
        for event in watch(control_url, kind, ns, version):
            yield event["type"], event["object"]
        return
    # Which Services declare no port, as the watch starts (see endpoints_from_slices).
    portless = portless_services(fetch_objects(control_url, "Service", ns)[0])
    slices: dict[tuple[str, str], Obj] = {}
    for event in watch(control_url, "EndpointSlice", ns, version):
        es = event["object"]
        meta = es["metadata"]
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event["type"] == "DELETED":
            slices.pop(key, None)
        else:
            slices[key] = es
        service = meta.get("labels", {}).get("kubernetes.io/service-name")
        same = [
            s
            for s in slices.values()
            if s["metadata"].get("namespace") == key[0]
            and s["metadata"].get("labels", {}).get("kubernetes.io/service-name") == service
        ]
        for ep in endpoints_from_slices(same or [{**es, "endpoints": [], "ports": []}], portless):
            yield "MODIFIED", ep
