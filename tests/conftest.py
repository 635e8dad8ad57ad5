"""Shared helpers for the CLI tests: a tiny run configuration, in-process and subprocess runners."""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

# One math thread per process: the test machine has two shared cores, and a tiny model
# gains nothing from more (oversubscribed threads make it many times slower). Set before
# torch is imported, so this process and every `collapse` subprocess inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

# The suite imports torch, transformers and sklearn (millions of long-lived objects), then composes
# hundreds of configs, and OmegaConf allocates cyclic nodes by the thousand. Python's collector walks the
# whole heap after every tenth middle-generation pass: 0.3-0.4 s each, 7 s of the one-process quick pass.
# Full passes a tenth as often, and none over what collection imported (gc.freeze once it is done), leave
# about 3 s. Only when the collector runs changes; what it frees does not.
gc.set_threshold(700, 10, 100)


def pytest_collection_finish(session: pytest.Session) -> None:
    gc.freeze()


# A run of a few seconds: a 300-word builtin language, a ~30k-parameter model, one epoch.
TINY = [
    "generations=1", "dataset.train_tokens=4000", "dataset.test_tokens=2000", "train.epochs=1",
    "model.hidden_size=32", "model.ffn_dim=64", "model.num_layers=1", "model.num_heads=2",
    "dataset.vocab_words=300",
]
# Metrics that measure the machine, not the run: excluded when runs are compared.
UNSTABLE_SUFFIXES = ("_time_s",)
UNSTABLE_KEYS = ("disk_bytes",)


def collapse_command() -> list[str]:
    """The installed `collapse` script (the real entry point), else the module."""
    script = shutil.which("collapse")
    return [script] if script else [sys.executable, "-m", "collapse_cli.cli"]


def run_collapse(args: list[str], cwd: Path, timeout: float = 180,
                 env: dict | None = None) -> subprocess.CompletedProcess:
    """`collapse ARGS` as a subprocess, where exit codes and stderr are what is under test."""
    return subprocess.run([*collapse_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def start_collapse(args: list[str], cwd: Path) -> subprocess.Popen:
    """`collapse ARGS` started in the background (stdout dropped: tests read the run folder and stderr)."""
    return subprocess.Popen([*collapse_command(), *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=answer_ctrl_c)


def answer_ctrl_c() -> None:
    """In the child: SIGINT back to its default, as at a terminal. Started from a shell's `cmd &`, the test
    run inherits SIGINT ignored; collapse keeps what it inherits once started, so a Ctrl-C a test sends after
    start-up was lost and the run finished with exit 0 (the flaky ctrl-c test, reproduced that way)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_in_process(args: list[str]) -> int:
    """`collapse ARGS` through collapse_cli.cli.main in this process: no interpreter start-up.

    Hydra points the root logger at the run's collapse.log and at this test's captured stderr; both are gone
    once the test ends, so the logging set-up is put back as it was (else a later test's log line fails)."""
    import logging

    from collapse_cli.cli import main

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return main(list(args))
    finally:
        for handler in set(root.handlers) - set(handlers):
            handler.close()
        root.handlers[:], root.level = handlers, level


@pytest.fixture(scope="package")
def compose():
    """collapse_cli.compose.compose: overrides -> the validated RunConfig `collapse run` would run, as every
    caller composes (the command line, scripts), its schemas registered once for the package."""
    from collapse_cli.compose import compose, register

    register()
    return compose


def tiny_run(run_dir: Path, *overrides: str) -> Path:
    """A finished tiny run in `run_dir` (in-process); fails the test if it did not finish."""
    code = run_in_process(["run", *TINY, *overrides, f"hydra.run.dir={run_dir}"])
    assert code == 0, f"collapse run exited {code}"
    assert read_status(run_dir)["state"] == "finished"
    return run_dir


def gone_pid() -> int:
    """The pid of a process that has exited and been reaped: what a killed run's status.json names."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(finished.stdout)


def read_status(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "status.json").read_text())


def read_metrics(run_dir: Path) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def stable(rows: list[dict]) -> list[dict]:
    """Metrics rows without the timing and disk-size figures."""
    return [{k: v for k, v in row.items() if not k.endswith(UNSTABLE_SUFFIXES) and k not in UNSTABLE_KEYS}
            for row in rows]


def is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def finished_runs(root: Path) -> list[Path]:
    """Run folders under `root` whose status says finished."""
    return [p.parent for p in Path(root).rglob("status.json") if read_status(p.parent).get("state") == "finished"]


@pytest.fixture(scope="session")
def tiny_finished(tmp_path_factory) -> Path:
    """One finished tiny run (seed 0), shared by the tests that only read it."""
    return tiny_run(tmp_path_factory.mktemp("tiny") / "run")
