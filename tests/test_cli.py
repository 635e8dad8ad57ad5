"""The command line itself: what starting it costs, Ctrl-C while it starts, its arguments, libraries' noise."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, collapse_command, run_collapse, start_collapse

from collapse_cli.errors import CollapseError

HEAVY = ("torch", "transformers", "hydra", "matplotlib")


@pytest.mark.slow
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
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout[-2000:]


@pytest.mark.parametrize("args", [["--help"], ["run", "--cfg", "job"]], ids=["help", "cfg-job"])
@pytest.mark.slow
def test_a_reader_that_leaves_early_gets_no_traceback(args: list[str]):
    """`collapse --help | head -1`: the pipe closes before the output is written."""
    process = subprocess.Popen([*collapse_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the interpreter has started: every write meets a closed pipe
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == -signal.SIGPIPE, stderr  # ended by the signal, as `head`'s writers are
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0])
@pytest.mark.slow
def test_ctrl_c_while_starting_is_one_line_and_exit_130(tmp_path: Path, delay: float):
    # Importing torch and transformers and composing the config take seconds, so these delays land in
    # start-up (a later one would land in generation 0, which must answer the same way).
    process = start_collapse(["run", *TINY, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, errors = process.communicate(timeout=120)
    # 130, or death by SIGINT (the shell shows both as 130): CPython re-raises SIGINT at exit when the
    # interrupt came through an exec'd string (a dataclass being built, say), even though it was handled.
    assert process.returncode in (130, -signal.SIGINT), (process.returncode, errors[-3000:])
    assert "Traceback" not in errors, errors[-3000:]
    lines = errors.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("collapse: interrupted"), errors[-3000:]


@pytest.mark.parametrize("command", [["show", "no-such-run"], ["run", "dry_run=true", *TINY]])
@pytest.mark.slow
def test_ctrl_c_right_after_the_entry_point_is_imported_is_one_line(tmp_path: Path, command: list[str]):
    """What the installed `collapse` script does, with a Ctrl-C the moment its import of collapse_cli.cli returns
    and the heavy imports still to come: the handler is in place from the module's first lines."""
    script = ("import os, signal, sys; sys.argv[0] = os.path.join('bin', 'collapse'); "
              "from collapse_cli.cli import main; os.kill(os.getpid(), signal.SIGINT); import torch; "
              f"sys.exit(main({command!r}))")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode in (130, -signal.SIGINT), result.stderr[-3000:]
    assert result.stderr.strip() == f"collapse: interrupted (Ctrl-C) before `{command[0]}` started any work"
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("args,overrides,hydra_argv,multirun,info_only", [
    # Overrides after a flag still reach Hydra, whose argparse takes them in one run only.
    (["mix=0.1", "-m", "seed=0,1"], ["mix=0.1", "seed=0,1"], ["-m", "mix=0.1", "seed=0,1"], True, False),
    (["--multirun", "seed=0"], ["seed=0"], ["--multirun", "seed=0"], True, False),
    # A flag's value is not an override.
    # ... and --cfg prints resolved values (`${oc.select:...}` means nothing to a reader).
    (["--cfg", "job", "mix=0"], ["mix=0"], ["--cfg", "job", "--resolve", "mix=0"], False, False),
    (["--cfg", "job", "--resolve"], [], ["--cfg", "job", "--resolve"], False, False),
    (["-cn=config", "mix=0"], ["mix=0"], ["-cn=config", "mix=0"], False, False),
    # Hydra prints and exits after these: nothing is composed.
    (["--help"], [], ["--help"], False, True),
    (["mix=0", "--info", "config"], ["mix=0"], ["--info", "config", "mix=0"], False, True),
    (["--info=defaults"], [], ["--info=defaults"], False, True),
    (["-i", "mix=0"], ["mix=0"], ["-i", "mix=0"], False, True),  # --info's value is optional
])
def test_run_arguments_parse_once_into_overrides_and_hydra_argv(args, overrides, hydra_argv, multirun, info_only):
    from collapse_cli.cli import parse_run_args

    parsed = parse_run_args(args)
    assert parsed.overrides == overrides and parsed.hydra_argv() == hydra_argv
    assert (parsed.multirun, parsed.info_only) == (multirun, info_only)


@pytest.mark.parametrize("args,needle", [(["--cfg", "-m"], "--cfg: the flag needs a value"),
                                         (["-m", "--bogus"], "unknown flag --bogus")])
def test_run_arguments_refuse_unknown_flags_and_missing_values(args, needle):
    from collapse_cli.cli import parse_run_args

    with pytest.raises(CollapseError, match=needle):
        parse_run_args(args)


def test_preflight_composes_once_for_the_folder_check_and_the_sweep_folder(tmp_path: Path, monkeypatch):
    from collapse_cli.cli import preflight

    monkeypatch.chdir(tmp_path)
    single = preflight(["mix=0.5"], multirun=False)
    assert [run.mix for run in single.runs] == [0.5] and single.sweep_dir is None
    sweep = preflight(["seed=0,1", "generations=2"], multirun=True)
    assert [(run.seed, run.generations) for run in sweep.runs] == [(0, 2), (1, 2)]
    # The default folder: a timestamp and the run_id resolver, resolved here, once, to a plain path.
    assert re.fullmatch(r"outputs/multirun/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{6}", str(sweep.sweep_dir))
    assert sweep.by_job_number
    custom = preflight(["seed=0,1", f"hydra.sweep.dir={tmp_path}/s", "hydra.sweep.subdir=seed_${seed}"], True)
    assert custom.sweep_dir == tmp_path / "s" and not custom.by_job_number


def environ_without(*keys: str) -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in keys}


def run_python(code: str, cwd: Path | None = None, drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`python -c code` with this checkout importable, in os.environ without the variables in `drop`."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=cwd,
                          env={**environ_without(*drop), "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


@pytest.mark.slow
def test_gmm_vae_runs_and_run_help_import_no_transformers(tmp_path: Path):
    # transformers is the LM family's: the other families and Hydra's help must not pay its start-up.
    code = """
import sys
from collapse_cli.cli import main
for args in (["run", "--help"], ["run", "model=gmm", "dataset=gaussian", "dry_run=true"],
             ["run", "model=vae", "dataset=digits", "dry_run=true"]):
    try:
        code = main(args)
    except SystemExit as done:  # Hydra's --help exits
        code = done.code
    print("after", args[1], code, "transformers" in sys.modules)
"""
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("after ")]
    expected = ["after --help 0 False", "after model=gmm 0 False", "after model=vae 0 False"]
    assert lines == expected, result.stdout[-3000:]


@pytest.mark.slow
def test_lm_run_shows_no_transformers_progress_bars_or_warnings(tmp_path: Path):
    # transformers draws a "Writing model shards" bar on every save_pretrained and "Loading weights" on
    # every from_pretrained. The environment is the user's, without the variables the command line sets.
    env = environ_without("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "TOKENIZERS_PARALLELISM")
    run = tmp_path / "run"
    result = subprocess.run([*collapse_command(), "run", *TINY, "device=cpu", "checkpoints=all", "train.init=previous",
                             f"hydra.run.dir={run}"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**env, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "gen_001" / "model").is_dir()  # the saves that would draw bars happened
    assert "it/s" not in result.stderr + result.stdout and "shards" not in result.stderr + result.stdout
    assert result.stderr.strip() == "", result.stderr[-3000:]  # no library warnings either


@pytest.mark.slow
def test_lm_family_saves_and_loads_without_bars_in_a_process_that_never_ran_main(tmp_path: Path):
    # An nproc rank or a launcher job uses the family without passing through the command line's main,
    # and may not inherit its environment: the family itself keeps transformers' bars off.
    code = f"""
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from collapse_cli.compose import compose
from collapse_cli.families.base import get_family

run_config = compose({TINY!r})
family = get_family("lm")(run_config, torch.device("cpu"))
family.save_model(family.build_base_model(seed=0), Path("model"))
family.load_model(Path("model"))
print("bars on", hf_logging.is_progress_bar_enabled())
"""
    result = run_python(code, tmp_path, drop=("HF_HUB_DISABLE_PROGRESS_BARS",))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "bars on True"  # so without the family's care, bars showed
    assert (tmp_path / "model" / "config.json").is_file()
    for bar_text in ("it/s", "Writing model shards", "Loading weights"):
        assert bar_text not in result.stderr, result.stderr[-3000:]


@pytest.mark.slow
def test_run_help_lists_every_shipped_group_and_no_schema_group(tmp_path: Path):
    """The groups a user can pick: one line per conf/ folder, with its options; the schema groups compose only."""
    conf = Path(__file__).resolve().parents[1] / "conf"
    result = run_collapse(["run", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    listed = dict(line.split(": ", 1) for line in result.stdout.split("== Config ==")[0].splitlines()
                  if re.fullmatch(r"[a-z_/]+: [a-z0-9_, ]+", line))
    shipped = {folder.relative_to(conf).as_posix(): ", ".join(sorted(file.stem for file in folder.glob("*.yaml")))
               for folder in {file.parent for file in conf.rglob("*.yaml")} - {conf}}
    assert listed == shipped and "model" in listed and "hydra/launcher" in listed
    assert "schema" not in result.stdout.split("== Config ==")[0]
