"""Per-component configuration: what translators produce and components apply.

Each kind is an immutable pydantic model with a ``version`` (the store revision it was
translated from). Components swap whole config objects; they never patch one in place.
"""

from mesh.config.base import ComponentConfig
from mesh.config.dns import DnsConfig
from mesh.config.proxy import ProxyConfig

CONFIG_KINDS: dict[str, type[ComponentConfig]] = {
    "dns": DnsConfig,
    "proxy": ProxyConfig,
}

__all__ = ["CONFIG_KINDS", "ComponentConfig", "DnsConfig", "ProxyConfig"]
