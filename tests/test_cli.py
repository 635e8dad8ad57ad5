"""The command line itself: what starting it costs, and Ctrl-C while it starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, collapse_command

HEAVY = ("torch", "transformers", "hydra", "matplotlib")


def test_help_and_compare_help_import_no_heavy_library():
    # Behaviour, not timing: the commands that do not train must not pay for torch/transformers at start-up.
    code = f"""
import sys
from collapse_cli.cli import main
assert main(["--help"]) == 0
for command in ("compare", "show"):
    try:
        main([command, "--help"])
    except SystemExit as done:
        assert done.code == 0, done.code
print(sorted(name for name in {HEAVY!r} if name in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout[-2000:]


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0])
def test_ctrl_c_while_starting_is_one_line_and_exit_130(tmp_path: Path, delay: float):
    # Importing torch and transformers and composing the config take seconds, so these delays land in
    # start-up (a later one would land in generation 0, which must answer the same way).
    process = subprocess.Popen([*collapse_command(), "run", *TINY, f"hydra.run.dir={tmp_path / 'run'}"],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, errors = process.communicate(timeout=120)
    # 130, or death by SIGINT (the shell shows both as 130): CPython re-raises SIGINT at exit when the
    # interrupt came through an exec'd string (a dataclass being built, say), even though it was handled.
    assert process.returncode in (130, -signal.SIGINT), (process.returncode, errors[-3000:])
    assert "Traceback" not in errors, errors[-3000:]
    lines = errors.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("collapse: interrupted"), errors[-3000:]
