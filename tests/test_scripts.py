"""The helper scripts in scripts/ that turn run folders into README figures."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a script's dataclasses look their module up while being defined
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
    out = capsys.readouterr().out.splitlines()
    seeds = [int(line.split("|")[1]) for line in out[2:] if line.startswith("|")]
    assert seeds == list(range(12))  # a string sort would put 10 and 11 before 2
    assert "0: 1.0 s of generations; no environment.json (a run from before it)" in out


def test_default_run_figures_prints_readmes_table(tmp_path: Path, capsys):
    """README's default-run table is this script's output, header and number formats alike."""
    figures = load_script("default_run_figures")
    folder = tmp_path / "0"
    folder.mkdir()
    rows = [{"generation": g, "ppl_test": 78.17 + 18.73 * g, "tail_coverage": 0.79 - 0.0532 * g,
             "kl_truth": 0.725 + 0.1564 * g, "wall_time_s": 10.0} for g in range(6)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "config.yaml").write_text("seed: 0\n")
    figures.main(tmp_path)
    printed = capsys.readouterr().out.splitlines()
    readme = (SCRIPTS.parent / "README.md").read_text()
    table = readme.split("<!-- default-run-figures -->\n", 1)[1].split("<!--", 1)[0].splitlines()
    assert printed[:2] == table[:2]
    assert printed[2] == "| 0 | 78.17 | 171.8 | 0.790 | 0.524 | 0.725 | 1.507 |"


@pytest.mark.slow
def test_gen0_ppl_trains_generation_0_as_the_run_does(tmp_path: Path):
    """The script's generation 0 is the run's: the same training loss and ppl_test, lower than before training."""
    from conftest import TINY, read_metrics, tiny_run

    gen0 = load_script("gen0_ppl")
    result = gen0.main([*TINY, "train.epochs=2", "model.dropout=0.1"])
    assert result["ppl_test"] < 0.8 * result["ppl_test_before"]
    gen_0 = read_metrics(tiny_run(tmp_path / "run", "train.epochs=2", "model.dropout=0.1"))[0]
    assert result["train_loss_last"] == gen_0["train_loss_last"]
    assert abs(result["ppl_test"] - gen_0["ppl_test"]) < 1e-6 * gen_0["ppl_test"]


def test_family_figures_prints_the_readme_tables_and_the_environment(tmp_path: Path, capsys):
    figures = load_script("family_figures")
    for name in (*figures.GMM_RUNS, *figures.VAE_RUNS):
        folder = tmp_path / name
        folder.mkdir()
        last = 2000 if name.startswith("gmm") else 5
        rows = [{"generation": g, "component_std": 1.0 / (g + 1), "l2sq_to_gen0": 0.001 * g, "nll_test": 2.0 + g,
                 "tail_coverage": 1.0, "fit_iterations": 7, "latent_std_flat": 0.5 - 0.01 * g,
                 "latent_spread": 0.4, "class_share_max": 0.2, "wall_time_s": 0.01} for g in range(last + 1)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    figures.main([str(tmp_path), "--tables"])
    out = capsys.readouterr().out
    assert "| `+experiment=shumailov_gmm` | 1.000 → 0.020 → 0.002 → 0.001 → 0.000 | 0.05 / 2 |" in out
    assert out.count("| paper (MNIST) | 0.674 → 0.608 → 0.527 → 0.468 → 0.433 |") == 3
    assert "| 2 | 0.490 → 0.480 → 0.470 → 0.460 → 0.450 | 0.400 → 0.400 |" in out  # generations 1-5, not 0-5
    assert "environment: Python " in out and " torch " in out and "logical CPUs" in out


def test_write_constraints_pins_the_running_environment(tmp_path: Path, monkeypatch):
    import numpy

    constraints = load_script("write_constraints")
    monkeypatch.setattr(constraints, "TARGET", tmp_path / "constraints" / "ci-latest.txt")
    constraints.main()
    lines = (tmp_path / "constraints" / "ci-latest.txt").read_text().splitlines()
    assert f"numpy=={numpy.__version__}" in lines
    assert not any(line.lower().startswith("collapse==") for line in lines)
    assert all(line.startswith("#") or "==" in line for line in lines)
