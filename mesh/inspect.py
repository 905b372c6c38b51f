"""Small blocking HTTP reads for the inspection commands (``mesh get``, ``mesh config dump``)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


def fetch_json(url: str, timeout: float = 5.0) -> Any:
    """GET a JSON document. Raises LookupError on 404, OSError when unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise LookupError(url) from exc
        raise OSError(f"HTTP {exc.code} from {url}") from exc
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from exc


def fetch_objects(control_url: str, kind: str, namespace: str | None) -> list[dict[str, Any]]:
    query = f"?namespace={urllib.parse.quote(namespace)}" if namespace else ""
    data = fetch_json(f"{control_url.rstrip('/')}/v1/objects/{kind}{query}")
    items = data.get("items", []) if isinstance(data, dict) else []
    return [i for i in items if isinstance(i, dict)]
