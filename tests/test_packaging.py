"""A plain (non-editable) `pip install .` installs every package and every config, with no list kept by hand:
setuptools discovers the packages (pyproject.toml), and conf/ goes in as collapse_cli/conf through its link."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_no_package_by_hand():
    text = (ROOT / "pyproject.toml").read_text()
    assert "[tool.setuptools.packages.find]" in text and "\npackages = [" not in text
    assert (ROOT / "collapse_cli" / "conf").resolve() == (ROOT / "conf").resolve()


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_config_of_the_source_tree(tmp_path: Path):
    source = tmp_path / "source"  # a copy: a build writes build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("collapse_cli", "conf"):
        shutil.copytree(ROOT / folder, source / folder, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w",
                            str(tmp_path / "dist")], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("collapse-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "collapse_cli").rglob("*.py")
               if "__pycache__" not in p.parts and "conf" not in p.relative_to(ROOT / "collapse_cli").parts[:1]}
    configs = {f"collapse_cli/{p.relative_to(ROOT).as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert len(configs) > 20 and modules - inside == set() and configs - inside == set()
    assert not any("__pycache__" in name for name in inside)
