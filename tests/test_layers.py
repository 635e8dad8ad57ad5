"""The import graph is a stack, not a circle: run folders at the bottom, the report above them, the families
below the experiment that calls them (their collectives live beneath them), the experiment above the report
(its trackers draw `collapse compare`'s plots), the command line on top.

Read from the source with `ast`, so an import inside a function (the lazy kind) counts as much as one at the top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "collapse_cli"
# A module may not import any module under these prefixes, where it or its folder is named.
BELOW_ALL = ("collapse_cli.cli", "collapse_cli.experiment", "collapse_cli.report", "collapse_cli.families",
             "collapse_cli.config")
FORBIDDEN = {
    "checks.py": (*BELOW_ALL, "collapse_cli.compose"),  # the checks config.py and every family use
    # The loop's keys and the shared groups: each family owns its own schemas, and compose.py joins the two.
    "config.py": ("collapse_cli.cli", "collapse_cli.experiment", "collapse_cli.families", "collapse_cli.compose"),
    "measure": (*BELOW_ALL, "collapse_cli.rundir"),  # statistics: numbers in, numbers out
    "rundir.py": BELOW_ALL,  # the run-folder format: experiment/ writes it, report/ reads it
    "ranks.py": (*BELOW_ALL, "collapse_cli.rundir"),  # which process writes: what rundir.py asks
    "atomic.py": (*BELOW_ALL, "collapse_cli.rundir"),  # how rundir.py writes
    "liveness.py": (*BELOW_ALL, "collapse_cli.rundir"),  # whether a run's writer lives: what rundir.py records
    "collectives.py": (*BELOW_ALL, "collapse_cli.rundir"),  # where ranks meet: the families call it
    "families": ("collapse_cli.cli", "collapse_cli.experiment"),  # the loop calls the families, never back
    "lifecycle.py": ("collapse_cli.cli",),  # the command line decides, the run folder's life follows
    # lifecycle.py starts the loop; the loop reads run states from the folder's format (rundir.py), never back up
    "experiment": ("collapse_cli.cli", "collapse_cli.lifecycle", "collapse_cli.compose"),
    # experiment -> report only, never back; a family's facts reach the report as data (report/facts.py)
    "report": ("collapse_cli.cli", "collapse_cli.experiment", "collapse_cli.families"),
}


def imported_modules(source: str) -> set[str]:
    """Every module a source names in an import, wherever the import stands; `from a import b` gives a and a.b."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def breaks(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def test_imported_modules_sees_imports_inside_functions():
    source = ("import os\nfrom collapse_cli import rundir\n"
              "def plots():\n    from collapse_cli.experiment.loop import execute\n    from . import sibling\n")
    assert imported_modules(source) == {"os", "collapse_cli", "collapse_cli.rundir", "collapse_cli.experiment.loop",
                                        "collapse_cli.experiment.loop.execute"}
    assert breaks("collapse_cli.experiment.loop", ("collapse_cli.experiment",))
    assert not breaks("collapse_cli.experimental", ("collapse_cli.experiment",))


@pytest.mark.parametrize("place", sorted(FORBIDDEN))
def test_lower_layers_import_nothing_above_them(place):
    files = sorted((PACKAGE / place).rglob("*.py")) if (PACKAGE / place).is_dir() else [PACKAGE / place]
    assert files and all(file.is_file() for file in files)
    wrong = [f"{file.relative_to(PACKAGE.parent)} imports {module}" for file in files
             for module in sorted(imported_modules(file.read_text())) if breaks(module, FORBIDDEN[place])]
    assert wrong == []


@pytest.mark.slow
def test_report_and_rundir_load_without_the_experiment_or_torch():
    """What `collapse compare` and `collapse show` load: the report, the run folder, never the loop or torch."""
    code = ("import sys, collapse_cli.report.compare, collapse_cli.report.export, collapse_cli.report.plots; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('collapse_cli.experiment', 'torch')))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=PACKAGE.parent).stdout.split()
    assert loaded == []


def test_no_family_folder_imports_another():
    """What families share lives in modules beside their folders (families/toy2d.py, digits.py, toy_or_digits.py,
    plots.py; measure/), so a family changes, or goes, alone."""
    families = PACKAGE / "families"
    folders = sorted(path.name for path in families.iterdir() if (path / "family.py").is_file())
    assert len(folders) >= 8
    wrong = [f"{file.relative_to(PACKAGE.parent)} imports {module}" for name in folders
             for file in sorted((families / name).rglob("*.py"))
             for module in sorted(imported_modules(file.read_text()))
             if breaks(module, tuple(f"collapse_cli.families.{other}" for other in folders if other != name))]
    assert wrong == []
