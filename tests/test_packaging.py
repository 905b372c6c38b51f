"""Every package folder is listed in pyproject.toml, so a regular (non-editable) install
carries all of it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = config["package-dir"]
    listed = set(config["packages"])
    found = set()
    for name, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    # A sub-folder mapped by its own entry (mesh.dns -> dns/) is not also under mesh/.
    assert found == listed
    for folder in mapping.values():
        assert (ROOT / folder / "py.typed").is_file()
