"""The base of every component config."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    """An immutable value; unknown fields are rejected so a typo in a config file is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ComponentConfig(Frozen):
    """A full, versioned snapshot of one component's configuration."""

    version: int = 0
