"""The helper scripts in scripts/ that turn run folders into README figures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_run_figures_lists_jobs_in_numeric_order(tmp_path: Path, capsys):
    figures = load_script("default_run_figures")
    for job in range(12):  # job folders 0..11, as a Hydra multirun names them; seed = job
        folder = tmp_path / str(job)
        folder.mkdir()
        row = {"generation": 0, "ppl_test": 1.0, "tail_coverage": 1.0, "kl_truth": 0.1, "wall_time_s": 1.0}
        (folder / "metrics.jsonl").write_text(json.dumps(row) + "\n")
        (folder / "config.yaml").write_text(f"seed: {job}\n")
    assert [p.name for p in figures.job_folders(tmp_path)] == [str(job) for job in range(12)]
    figures.main(tmp_path)
    seeds = [int(line.split("|")[1]) for line in capsys.readouterr().out.splitlines()[2:]]
    assert seeds == list(range(12))  # a string sort would put 10 and 11 before 2
