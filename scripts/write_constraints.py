"""Write constraints/ci-latest.txt: the exact versions of the environment the test suite last passed in.

Run it in that environment right after the tests pass:

    python -m pytest && python scripts/write_constraints.py

collapse pins nothing it does not need (pyproject.toml gives lower bounds); this file is what to
install when a result must be reproduced bit for bit, or when a new release breaks something:

    pip install ".[test]" -c constraints/ci-latest.txt

Lines are `pip freeze`'s, less the collapse package itself and packages installed from a local path.
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import time
from pathlib import Path

TARGET = Path(__file__).resolve().parents[1] / "constraints" / "ci-latest.txt"


def pinned() -> list[str]:
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    # pip's own comments ("# Editable Git install ... (collapse==0.1.0)") and collapse itself are no pins. A local
    # build label goes (torch==2.13.0+cpu -> torch==2.13.0): a pin without one matches any build of the version,
    # the CPU index's or PyPI's, where the label would match only the index this machine used.
    return sorted((re.sub(r"\+[\w.]+$", "", line) for line in frozen
                   if "==" in line and not line.startswith("#") and not line.lower().startswith("collapse==")
                   and " @ " not in line),
                  key=str.lower)


def main() -> None:
    header = [f"# The versions `python -m pytest` last passed with, written {time.strftime('%Y-%m-%d')} by",
              "# scripts/write_constraints.py (pip freeze) on", f"# Python {platform.python_version()}, "
              f"{platform.platform()}. Use: pip install \".[test]\" -c constraints/ci-latest.txt"]
    lines = pinned()
    TARGET.parent.mkdir(exist_ok=True)
    TARGET.write_text("\n".join([*header, *lines]) + "\n")
    print(f"wrote {TARGET} ({len(lines)} packages)")


if __name__ == "__main__":
    main()
