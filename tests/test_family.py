"""The family interface: a toy family (tests/toy_family.py) runs through the real loop, resume
included, so the loop is family-agnostic; config types each family's keys and refuses bad pairs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import read_metrics, read_status, run_collapse, run_in_process, stable
from omegaconf import OmegaConf
from rich.console import Console
from toy_family import ToyDatasetConfig, ToyFamily, ToyModelConfig

from collapse_cli.compose import to_run_config, validate
from collapse_cli.config import RunConfig, TrainConfig
from collapse_cli.errors import CollapseError
from collapse_cli.experiment.loop import execute
from collapse_cli.experiment.progress import Feedback
from collapse_cli.experiment.seeds import stage_seed
from collapse_cli.families import base

N = 50


TOY = "toy_family:ToyFamily"


def toy_config(**run) -> RunConfig:
    model = ToyModelConfig(interrupt_at=run.pop("interrupt_at", -1))
    train = TrainConfig(lr=1e-3, init=run.pop("init", "base"))
    return validate(RunConfig(model=model, dataset=ToyDatasetConfig(n_train=N, pool=4 * N), train=train,
                              device="cpu", **{"generations": 3, **run}))


def run_toy(path: Path, **run) -> dict:
    return execute(toy_config(**run), path, Feedback(Console(quiet=True)))


@pytest.mark.parametrize("regime,mix", [("replace", 0.0), ("replace", 0.2), ("accumulate", 0.5),
                                        ("accumulate_subsample", 1.0), ("fresh", 0.2)])
def test_toy_family_runs_through_the_real_loop(tmp_path: Path, regime: str, mix: float):
    summary = run_toy(tmp_path / "run", regime=regime, mix=mix)
    rows = read_metrics(tmp_path / "run")
    assert [row["generation"] for row in rows] == [0, 1, 2, 3]
    assert list(rows[0])[:3] == ["generation", "nll_test", "tail_coverage"]  # the family's leading keys
    n_real = round(mix * N)
    for row in rows[1:]:
        # Sizes are named by the family's unit ("samples"), and count what the composition drew.
        expected = n_real + N * row["generation"] if regime == "accumulate" else N
        assert row["train_samples"] == expected, row
        if regime != "accumulate_subsample":  # that one draws N from the pool: its real share varies
            assert row["train_real_samples"] == n_real, row
        assert row["train_samples"] == row["train_real_samples"] + row["train_synthetic_samples"]
        assert row["train_rows_seen"] == row["train_samples"]  # fit's stats reach the metrics line
    # Provenance points at rows of the samples each generation saved, so every training row can be looked up.
    origin = np.load(tmp_path / "run" / "gen_002" / "train_origin.npy")
    samples = {g: np.load(tmp_path / "run" / f"gen_{g:03d}" / "samples.npy") for g in range(2)}
    assert samples[0].shape == (N, 1) and samples[0].dtype == np.float64
    for g, row in origin[origin[:, 0] >= 0]:
        assert row < len(samples[g])
    assert summary["generations"] == 3 and summary["nll_test_first"] == rows[0]["nll_test"]
    assert read_status(tmp_path / "run")["state"] == "finished"
    assert not (tmp_path / "run" / "reference").exists()


def test_toy_std_follows_the_samples_it_was_fitted_on(tmp_path: Path):
    # fit really gets the composed rows: at mix=1 every generation refits the same real data.
    run_toy(tmp_path / "real", mix=1.0)
    stds = [row["std"] for row in read_metrics(tmp_path / "real")]
    assert len(set(stds)) == 1
    run_toy(tmp_path / "synthetic", mix=0.0)
    stds = [row["std"] for row in read_metrics(tmp_path / "synthetic")]
    assert len(set(stds)) == 4


def test_the_loop_hands_measure_the_metrics_seed_of_the_run_and_generation(tmp_path: Path):
    # seed + generation would give run 0's generation 1 the subsample of run 1's generation 0.
    for run_seed in (0, 1):
        run_toy(tmp_path / str(run_seed), seed=run_seed)
        seeds = [row["measure_seed"] for row in read_metrics(tmp_path / str(run_seed))]
        assert seeds == [stage_seed(run_seed, g, "metrics") for g in range(4)]


@pytest.mark.parametrize("init", ["base", "previous"])
def test_killed_toy_run_resumes_to_the_same_metrics(tmp_path: Path, init: str):
    run_toy(tmp_path / "whole", mix=0.2, init=init)
    with pytest.raises(KeyboardInterrupt):
        run_toy(tmp_path / "killed", mix=0.2, interrupt_at=2, init=init)
    assert [row["generation"] for row in read_metrics(tmp_path / "killed")] == [0, 1]
    assert (tmp_path / "killed" / "reference" / "model.json").is_file()  # saved through the family
    resumed = toy_config(mix=0.2, init=init)
    resumed.resume = True
    execute(resumed, tmp_path / "killed", Feedback(Console(quiet=True)))
    rows = read_metrics(tmp_path / "killed")
    assert stable(rows) == stable(read_metrics(tmp_path / "whole"))
    # Generation 2 ran in the resumed process; with init=previous it started from generation 1's saved model.
    expected = [0.0] * 3 if init == "base" else [row["mean"] for row in rows[:3]]
    assert [row["started_from_mean"] for row in rows[1:]] == expected
    for g in range(4):
        name = f"gen_{g:03d}/samples.npy"
        assert np.array_equal(np.load(tmp_path / "killed" / name), np.load(tmp_path / "whole" / name))


@pytest.mark.slow
def test_the_loop_imports_no_family():
    code = ("import sys, collapse_cli.experiment.loop; "
            "print([m for m in sys.modules if m.startswith('collapse_cli.families.') or m == 'transformers'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    assert json.loads(out.strip().replace("'", '"')) == ["collapse_cli.families.base"]


def test_get_family_imports_on_demand_and_names_the_choices():
    assert base.get_family(TOY) is ToyFamily
    assert base.get_family("lm").name == "lm"
    # Builtin families are found by their folders, not a hand-kept list.
    assert set(base.builtin_families()) >= {"lm", "gmm", "vae", "linreg", "categorical"}
    choices = "categorical, diffusion, gan, gmm, kde, linreg, lm, vae"
    with pytest.raises(CollapseError, match=f"model.family='nope': use one of {choices}"):
        base.get_family("nope")


@pytest.mark.parametrize("name,needle", [
    ("no_such_module:Family", "cannot import no_such_module"),
    ("toy_family:NoSuchClass", "no class 'NoSuchClass' in toy_family"),
    ("toy_family:ToyModelConfig", "is not a subclass of collapse_cli.families.base.Family"),
    ("../etc", "use one of"),
])
def test_a_family_that_cannot_be_found_is_one_line_naming_it(name: str, needle: str):
    with pytest.raises(CollapseError) as err:
        base.get_family(name)
    assert f"model.family={name}" in str(err.value).replace("'", "") and needle in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_a_family_outside_collapse_runs_through_the_command_with_no_edit_to_collapse(tmp_path: Path):
    """The user's view: a Family subclass in their own module (here tests/toy_family.py, importable through
    PYTHONPATH only), named by model.family; its schemas' defaults fill the model and dataset groups."""
    here = str(Path(__file__).resolve().parent)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    run = tmp_path / "run"
    result = run_collapse(["run", f"model.family={TOY}", "generations=2", "dataset.n_train=40", "regime=fresh",
                           "mix=0.5", f"hydra.run.dir={run}"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics(run)
    assert [row["generation"] for row in rows] == [0, 1, 2]
    assert [row["train_samples"] for row in rows] == [40, 40, 40] and rows[1]["train_real_samples"] == 20
    assert all(np.isfinite(row["nll_test"]) and "std" in row for row in rows)
    assert OmegaConf.load(run / ".hydra" / "config.yaml").model.family == TOY  # what a resume reads back
    assert read_status(run)["state"] == "finished"
    # The report reads what the run says of itself: the user's titles, without importing the user's module.
    report = run_collapse(["compare", str(run), "--out", str(tmp_path / "report")], cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Spread of the fitted normal" in html and "Toy test NLL" in html


def test_an_unknown_family_is_one_line_and_exit_2(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, needle in (("nowhere.at_all:Family", "cannot import nowhere.at_all"), ("nope", "use one of")):
        assert run_in_process(["run", f"model.family={name}", "dry_run=true"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("collapse: error: model.family=") and needle in err, err
    assert list(tmp_path.iterdir()) == []  # refused before any folder


def test_an_installed_entry_point_names_a_family(tmp_path: Path, monkeypatch):
    """A package that declares [project.entry-points."collapse.families"] toy = "toy_family:ToyFamily"."""
    info = tmp_path / "toy_family-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-family\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{base.ENTRY_POINTS}]\ntoyfamily = {TOY}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert base.get_family("toyfamily") is ToyFamily


@pytest.mark.parametrize("name", base.builtin_families())
def test_every_builtin_family_declares_keys_that_exist(name: str):
    """reads and size_key name keys of the family's own groups or of train: a misspelt one would check nothing."""
    from dataclasses import fields

    family = base.get_family(name)
    groups = {**family.schemas(), "train": TrainConfig}
    for key in (*family.reads, *([family.size_key] if family.size_key else []), *family.retired_keys):
        group, _, field = key.partition(".")
        assert (field in {spec.name for spec in fields(groups[group])}) != (key in family.retired_keys), key
    assert family.supports_nproc == (name == "lm")  # the one family that shards its work across ranks


def composed_toy(**overrides) -> RunConfig:
    node = OmegaConf.merge({"model": {"family": TOY}, "dataset": {"name": "normal"}, "train": {"lr": 1e-3}},
                           OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()]))
    return to_run_config(node)


def test_config_types_the_family_groups_with_its_schemas():
    cfg = composed_toy(**{"dataset.n_train": 30, "model.interrupt_at": 2})
    assert isinstance(cfg.model, ToyModelConfig) and isinstance(cfg.dataset, ToyDatasetConfig)
    assert (cfg.dataset.n_train, cfg.model.interrupt_at) == (30, 2)
    with pytest.raises(CollapseError, match="model.hidden_size: no such key"):
        composed_toy(**{"model.hidden_size": 3})  # an LM key on a toy run
    with pytest.raises(CollapseError, match="dataset.n_train=1 must be at least 2"):
        composed_toy(**{"dataset.n_train": 1})  # the family's own validate runs


@pytest.mark.parametrize("overrides,needles", [
    ({"dataset.name": "builtin"}, [f"model.family={TOY} reads dataset.name=normal", "not dataset=builtin"]),
    ({"curate.exact_dedup": "true"}, ["curate", f"model.family={TOY}", "curate=none"]),
    ({"nproc": 2}, ["nproc=2", f"model.family={TOY}", "use nproc=1"]),
    ({"curate.ppl_drop_high": 0.05}, ["curate", "curate=none"]),
])
def test_bad_combinations_name_the_keys(overrides: dict, needles: list[str]):
    with pytest.raises(CollapseError) as err:
        composed_toy(**overrides)
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_lm_config_refuses_a_dataset_of_another_family():
    node = OmegaConf.create({"model": {"family": "lm"}, "dataset": {"name": "normal"}, "train": {"lr": 1e-3}})
    with pytest.raises(CollapseError, match="model.family=lm reads dataset=builtin or dataset=text"):
        to_run_config(node)


class DefaultFiles(ToyFamily):
    """The toy family with Family's own save_samples/load_samples, which array families (GMM, VAE, ...) use."""

    save_samples, load_samples = base.Family.save_samples, base.Family.load_samples


@pytest.mark.parametrize("samples,scores_file", [
    (np.arange(12, dtype=np.int64).reshape(6, 2), None),  # the categorical's int64 draws; no scores kept
    (np.random.default_rng(0).random((6, 64), dtype=np.float32), "scores.npy"),  # the VAE's images and scores
])
def test_default_sample_files_read_back_exactly_and_a_missing_one_is_one_line(tmp_path: Path, samples, scores_file):
    family = DefaultFiles(RunConfig(), None)
    family.scores_file = scores_file
    scores = np.linspace(0.0, 1.0, len(samples))
    family.save_samples(tmp_path, samples, scores)
    back = family.load_samples(tmp_path)
    assert back.dtype == samples.dtype and np.array_equal(back, samples)
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == sorted(["samples.npy", *([scores_file] if scores_file else [])])
    if scores_file:
        assert np.array_equal(np.load(tmp_path / scores_file), scores.astype(np.float32))
    (tmp_path / "samples.npy").unlink()
    with pytest.raises(CollapseError, match=r"samples\.npy: damaged: missing"):
        family.load_samples(tmp_path)
