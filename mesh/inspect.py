"""Small blocking HTTP reads for the inspection commands (``mesh get``, ``mesh config dump``)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any


class WrongServer(Exception):
    """Something answered, but not a mesh control plane (or admin endpoint)."""


def fetch_json(url: str, timeout: float = 5.0) -> Any:
    """GET a JSON document. Raises LookupError on 404, OSError when unreachable, WrongServer
    when the answer is not JSON."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise LookupError(url) from exc
        raise OSError(f"HTTP {exc.code} from {url}") from exc
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from exc
    except (ValueError, OSError) as exc:  # a reset, a timeout, garbage instead of HTTP
        raise OSError(str(exc) or type(exc).__name__) from exc
    try:
        return json.loads(body)
    except ValueError:
        raise WrongServer(url) from None


def _objects_url(control_url: str, kind: str, query: dict[str, str]) -> str:
    qs = urllib.parse.urlencode(query)
    return f"{control_url.rstrip('/')}/v1/objects/{kind}" + (f"?{qs}" if qs else "")


def fetch_objects(
    control_url: str, kind: str, namespace: str | None
) -> tuple[list[dict[str, Any]], str]:
    """The stored objects of ``kind`` and the list's resourceVersion (to watch from).
    Raises WrongServer when ``control_url`` is not a mesh control plane."""
    url = _objects_url(control_url, kind, {"namespace": namespace} if namespace else {})
    try:
        data = fetch_json(url)
    except LookupError:
        raise WrongServer(url) from None
    if not isinstance(data, dict) or data.get("kind") != "List":
        raise WrongServer(url)
    items = [i for i in data.get("items", []) if isinstance(i, dict)]
    return items, str(data.get("metadata", {}).get("resourceVersion", ""))


def watch_objects(
    control_url: str, kind: str, namespace: str | None, resource_version: str, timeout: float = 60.0
) -> Iterator[dict[str, Any]]:
    """Watch events (``{"type": ..., "object": ...}``) after ``resource_version``, until the
    stream ends. The server sends an empty line every few seconds, so ``timeout`` only fires
    on a dead connection (raised as OSError)."""
    query = {"watch": "1", "resourceVersion": resource_version}
    if namespace:
        query["namespace"] = namespace
    url = _objects_url(control_url, kind, query)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            for line in resp:
                if not line.strip():
                    continue  # heartbeat
                event = json.loads(line)
                if isinstance(event, dict) and isinstance(event.get("object"), dict):
                    yield event
    except urllib.error.HTTPError as exc:
        if exc.code == 410:
            raise OSError("the watch fell too far behind (410 Gone)") from exc
        raise OSError(f"HTTP {exc.code} from {url}") from exc
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from exc
    except ValueError as exc:
        raise WrongServer(url) from exc


class SecretMismatch(Exception):
    """A key cannot be filled in honestly; ``str()`` is one sentence."""


def fill_secrets(config: Any, control_url: str) -> int:
    """Put the private key of each TLS Secret a gateway config names (``secrets``, whose
    ``key_pem`` the admin port redacts) back in, from the Secrets the control plane holds.

    A key is filled in only when the Secret's certificate is still the one the component
    serves: a key paired with another certificate would make a config that does not load.
    Returns how many keys were filled in; a config without ``secrets`` is left as it is.
    """
    import base64

    secrets = config.get("secrets") if isinstance(config, dict) else None
    if not secrets:
        return 0
    by_namespace: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in secrets:
        name = str(entry.get("name", ""))
        ns, _, short = name.partition("/")
        if ns not in by_namespace:
            items, _ = fetch_objects(control_url, "Secret", ns)
            by_namespace[ns] = {str(i.get("metadata", {}).get("name")): i for i in items}
        obj = by_namespace[ns].get(short)
        if obj is None:
            raise SecretMismatch(f"Secret {name} is not in the control plane any more")

        def value(key: str, obj: dict[str, Any] = obj) -> str | None:
            if key in obj.get("stringData", {}):
                return str(obj["stringData"][key])
            if key in obj.get("data", {}):
                return base64.b64decode(obj["data"][key]).decode("latin-1")
            return None

        if value("tls.crt") != entry.get("cert_pem"):
            raise SecretMismatch(f"Secret {name} changed since the component loaded it; dump again")
        key = value("tls.key")
        if key is None:
            raise SecretMismatch(f"Secret {name} has no tls.key")
        entry["key_pem"] = key
    return len(secrets)
