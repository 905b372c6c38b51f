"""Translators: pure functions from a store snapshot to one component's config."""
