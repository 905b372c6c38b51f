"""HOST:PORT and http://HOST:PORT parsing for the address flags (no heavy imports: the CLI
parses flags with these before anything else loads)."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

Address = tuple[str, int]


def parse_address(text: str) -> Address:
    """``127.0.0.1:53``, ``[::1]:53`` or ``localhost:53`` -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as [::1]:53")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is out of range 0-65535")
    if host != "localhost":
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    return host, port


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_url(url: str) -> tuple[str, int, str]:
    """(host, port, path prefix) of an ``http://host:port[/prefix]`` control URL."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname or not _HOST.fullmatch(parts.hostname):
        raise ValueError(f"{url!r} is not http://HOST:PORT or HOST:PORT")
    try:
        port = parts.port
    except ValueError:  # not a number, or out of 0-65535
        raise ValueError(f"{url!r}: the port is not a number in 1-65535") from None
    if port == 0:
        raise ValueError(f"{url!r}: the port is not a number in 1-65535")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r} is not http://HOST:PORT or HOST:PORT")
    return parts.hostname, port or 80, parts.path.rstrip("/")


# A DNS name or an IP address (IPv6 without its brackets): nothing with spaces or '@'.
_HOST = re.compile(r"[A-Za-z0-9_.-]+|[0-9A-Fa-f:.]+")
