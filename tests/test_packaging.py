"""The wheel's package lists match the source tree: a package or config folder left out of pyproject.toml
installs a `collapse` that cannot find its own code or configs (the subprocess tests run that install)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _listed(table_line: str) -> set[str]:
    """The quoted names of one pyproject list (`packages = [...]`), read as text: no TOML parser needed."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(rf"^{re.escape(table_line)}\s*=\s*\[(.*?)\]", text, re.S | re.M)
    assert block, f"pyproject.toml has no {table_line} list"
    return set(re.findall(r'"([^"]+)"', block.group(1)))


def _package_data_keys() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]", 1)[1]
    return set(re.findall(r'^"([^"]+)"\s*=', text.split("\n[", 1)[0], re.M))


def test_every_python_package_is_listed():
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "collapse_cli").rglob("__init__.py")}
    assert on_disk - _listed("packages") == set()


def test_every_config_folder_is_packaged_with_its_yaml():
    folders = {p.parent for p in (ROOT / "conf").rglob("*.yaml")}
    names = {".".join(("collapse_cli", *f.relative_to(ROOT).parts)) for f in folders}
    assert names - _listed("packages") == set()
    assert names - _package_data_keys() == set()
