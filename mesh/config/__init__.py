"""Per-component configuration: what translators produce and components apply.

Each kind is an immutable pydantic model with a ``version`` (the store revision it was
translated from). Components swap whole config objects; they never patch one in place.
"""

from mesh.config.base import ComponentConfig
from mesh.config.dns import DnsConfig
from mesh.config.proxy import ProxyConfig

# Which kinds exist is told by the component registry (mesh/registry.py), not here.
__all__ = ["ComponentConfig", "DnsConfig", "ProxyConfig"]
