"""What a researcher reads (issue 26): signed changes, paired differences, condensed long tables, one
precision per column, metric facts in figures, the environment record, threads=auto, --version.

The statistics are checked on hand-made runs against scipy; the environment and the mixed-family
report on real runs made by `collapse run`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, run_collapse, start_collapse

from collapse_cli import environment
from collapse_cli.cli import main as cli_main
from collapse_cli.errors import CollapseError
from collapse_cli.report import plots, stats, tables
from collapse_cli.report.facts import FamilyFacts, builtin_facts
from collapse_cli.report.runs import Group, Run


def hand_run(seed: int, values: list[float], key: str = "nll_test", family: str = "vae", **extra) -> Run:
    rows = [{"generation": g, key: v, **{k: vs[g] for k, vs in extra.items()}} for g, v in enumerate(values)]
    return Run(path=Path(f"/nowhere/{seed}"), name=f"run{seed}", overrides=[], seed=seed, status={"state": "finished"},
               summary={}, rows=rows, config={"model": {"family": family}, "seed": seed})


# --- change from generation 0 ------------------------------------------------------------

def test_a_change_from_a_negative_base_is_a_signed_difference_that_reads_worse():
    """The VAE's nll_test from −15.41 to 11.72 is 27.13 nats worse, not "−176%"."""
    text = tables.change_text(11.72, -15.41, builtin_facts("vae").metric("nll_test"))
    assert text == "(Δ +27.1, worse)"
    assert tables.change_text(-20.0, -15.41, builtin_facts("vae").metric("nll_test")) == "(Δ -4.59, better)"


def test_a_change_from_a_positive_base_is_a_percentage_with_the_metrics_direction():
    assert tables.change_text(171.8, 78.17, builtin_facts("lm").metric("ppl_test")) == "(+120%, worse)"
    assert tables.change_text(0.52, 0.79, builtin_facts("lm").metric("tail_coverage")) == "(-34%, worse)"
    assert tables.change_text(0.5, 0.9, builtin_facts("gmm").metric("component_std")) == "(-44%)"  # no direction
    assert tables.change_text(0.3, 0.0, builtin_facts("gmm").metric("l2_to_gen0")) == "(Δ +0.3, worse)"


def test_metric_facts_name_each_familys_tail_coverage():
    assert "token" in builtin_facts("lm").metric("tail_coverage").title
    assert "token" not in builtin_facts("gmm").metric("tail_coverage").title
    assert "digit" in builtin_facts("vae").metric("tail_coverage").title
    assert builtin_facts("lm").metric("seq_ppl_q95").title.endswith("95th percentile")
    assert FamilyFacts("lm").metric("made_up_key").title == "made_up_key"


def test_a_column_has_one_precision():
    stat = [stats.describe(0, [1.0]), stats.describe(1, [0.86])]
    cells = tables.column(stat, [None, None], builtin_facts("lm").metric("tail_coverage"))
    assert cells == ["1.0000", "0.8600"]
    wide = tables.column([stats.describe(0, [171.8]), stats.describe(1, [78.17])], [None, None],
                         builtin_facts("lm").metric("ppl_test"))
    assert wide == ["171.80", "78.17"]


# --- paired comparisons -------------------------------------------------------------------

def test_paired_difference_is_the_per_seed_t_interval_of_scipy():
    from scipy import stats as scipy_stats

    # Seeds differ a lot (the data and initialisation a seed draws); the regime adds about 0.73 to each.
    a = {0: [1.0, 2.0, 3.1], 1: [1.2, 2.5, 4.0], 2: [0.9, 2.2, 2.2], 3: [1.1, 2.0, 2.9]}
    b = {0: [1.0, 2.6, 3.85], 1: [1.2, 2.9, 4.72], 2: [0.9, 2.4, 2.93], 5: [1.0, 9.0, 9.0]}  # seed 5: unpaired
    reference = Group("mix=0", [hand_run(s, v) for s, v in a.items()])
    other = Group("mix=0.5", [hand_run(s, v) for s, v in b.items()])
    paired = stats.paired_difference(reference, other, ["nll_test"])
    assert paired.seeds == [0, 1, 2] and paired.generation == 2
    differences = [b[s][2] - a[s][2] for s in (0, 1, 2)]
    low, high = scipy_stats.t.interval(0.95, len(differences) - 1, loc=np.mean(differences),
                                       scale=scipy_stats.sem(differences))
    stat = paired.by_metric["nll_test"]
    assert stat.mean == pytest.approx(np.mean(differences))
    assert (stat.low, stat.high) == (pytest.approx(low, rel=1e-3), pytest.approx(high, rel=1e-3))
    # Paired is tighter than the two groups' own intervals: the seeds' common part cancels.
    independent = scipy_stats.ttest_ind([b[s][2] for s in (0, 1, 2)], [a[s][2] for s in (0, 1, 2)])
    assert scipy_stats.ttest_rel([b[s][2] for s in (0, 1, 2)], [a[s][2] for s in (0, 1, 2)]).pvalue \
        < independent.pvalue


def test_paired_table_says_when_the_interval_excludes_zero_and_which_way():
    reference = Group("mix=0", [hand_run(s, [1.0, 3.0 + s / 10]) for s in range(3)])
    other = Group("mix=0.5", [hand_run(s, [1.0, 1.5 + s / 10 + (s == 1) / 50]) for s in range(3)])
    table = tables.paired_table(stats.GroupStats.of([reference, other], ["nll_test"]))
    assert table.rows[0][:4] == ["mix=0.5", "mix=0", "0,1,2", "1"]
    assert table.rows[0][4].startswith("-1.49") and table.rows[0][4].endswith("(CI excludes 0: better)")
    assert stats.paired_difference(reference, Group("one seed", [hand_run(0, [1.0, 2.0])]), ["nll_test"]) is None


# --- long runs ---------------------------------------------------------------------------

def test_thousands_of_generations_condense_to_log_spaced_rows():
    assert stats.condensed(range(31)) == [0, 1, 2, 3, 5, 7, 10, 15, 20, 30]
    assert stats.condensed(range(2001)) == [0, 1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700,
                                           1000, 1500, 2000]
    assert stats.condensed(range(12)) == list(range(12))
    assert stats.condensed(range(2001))[-1] == 2000 and stats.condensed(range(1234))[-1] == 1233


def test_show_of_a_long_run_prints_a_screen_not_thousands_of_lines(tmp_path, capsys):
    run = hand_run(0, list(np.linspace(1.0, 5.0, 2001)), family="gmm")
    table = tables.run_table(run, stats.stats_by_metric([run], ["nll_test"]))
    assert [row[0] for row in table.rows][-3:] == ["1000", "1500", "2000"] and len(table.rows) == 21
    assert "21 of 2001 generations, log-spaced (every one is in metrics.csv)" in table.title


# --- figures -------------------------------------------------------------------------------

def legend_title(figure) -> str:
    return figure.legends[0].get_title().get_text()


def test_one_seed_draws_the_runs_own_se_and_its_legend_says_so():
    one = plots.Series("a", [0, 1, 2], [1.0, 2.0, 3.0], [0.8, 1.8, 2.8], [1.2, 2.2, 3.2], 1, plots.Band.run_se)
    figure = plots.metric_figure(builtin_facts("lm").metric("ppl_test"), [one])
    assert "over seeds" not in legend_title(figure) and "standard error" in legend_title(figure)
    assert plots.figure_contents(figure)["bands"] == 1
    flat = plots.Series("a", [0, 1], [1.0, 2.0], [math.nan] * 2, [math.nan] * 2, 1)
    bare = plots.metric_figure(builtin_facts("lm").metric("ppl_test"), [flat])
    assert "band" not in legend_title(bare)


def test_long_curves_get_a_symlog_axis_that_keeps_generation_zero_and_no_markers():
    generations = list(range(2001))
    series = plots.Series("g", generations, list(np.linspace(3, 6, 2001)), [math.nan] * 2001, [math.nan] * 2001, 1)
    figure = plots.metric_figure(builtin_facts("gmm").metric("nll_test"), [series])
    axes = figure.axes[0]
    assert axes.get_xscale() == "symlog" and axes.get_xlim()[0] == 0
    assert axes.get_lines()[0].get_marker() in (None, "None", "")
    assert axes.get_ylabel() == "nats per real test point"
    assert figure._suptitle.get_text() == "Test negative log-likelihood"
    two = plots.Series("g", [0, 1], [3, 4], [math.nan] * 2, [math.nan] * 2, 1)
    short = plots.metric_figure(builtin_facts("gmm").metric("nll_test"), [two])
    assert short.axes[0].get_xscale() == "linear" and short.axes[0].get_lines()[0].get_marker() == "o"


def test_a_zero_on_a_log_axis_stays_on_the_plot():
    from matplotlib.figure import Figure

    axes = Figure().add_subplot()
    values = np.array([0.0, 0.02, 0.05, 0.4])
    axes.plot(range(4), values)
    plots.log_axis_keeping_zero(axes, values)
    assert axes.get_yscale() == "symlog"
    low, high = axes.get_ylim()
    assert low <= 0.0 < 0.4 <= high
    positive = Figure().add_subplot()
    plots.log_axis_keeping_zero(positive, np.array([0.9, 0.5]))
    assert positive.get_yscale() == "log"


@pytest.mark.slow
def test_gmm_figures_have_titles_labels_and_a_contour_legend(tmp_path, monkeypatch):
    from PIL import Image

    run = tmp_path / "gmm"
    result = run_collapse(["run", "model=gmm", "dataset=gaussian", "generations=3", f"hydra.run.dir={run}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("gmm_scatter.png", "gmm_std_l2.png"):
        with Image.open(run / "figures" / name) as image:
            assert image.size[0] > 500
    from collapse_cli.families.gmm import core

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    import matplotlib.pyplot as plt

    created = []
    original = plt.subplots

    def keep(*args, **kwargs):
        made = original(*args, **kwargs)
        created.append(made[0])
        return made

    monkeypatch.setattr(plt, "subplots", keep)  # to read the figure the function builds and closes
    core.curves_figure(rows, tmp_path / "curves.png")
    std_axes, l2_axes = created[0].axes
    assert "Spread" in std_axes.get_title() and std_axes.get_ylabel() and std_axes.get_xlabel() == "generation"
    assert l2_axes.get_yscale() == "symlog"  # l2_to_gen0 is 0 at generation 0
    assert rows[0]["l2_to_gen0"] == 0.0


# --- environment, threads, version ----------------------------------------------------------

def test_environment_is_recorded_once_per_start_and_resume(tmp_path):
    first = environment.record(tmp_path, 0)
    assert first["numpy"] == np.__version__ and first["python"] and first["cpu"] and first["os"]
    assert first["torch"] and first["threads"] >= 1 and "cuda" in first
    environment.record(tmp_path, 71)
    environment.record(tmp_path, 71)  # a second attempt at the same resume replaces its entry
    entries = environment.read(tmp_path)
    assert [e["first_generation"] for e in entries] == [0, 71]
    assert environment.differences(entries) == []
    changed = {**entries[1], "numpy": "1.0.0"}
    assert environment.differences([entries[0], changed]) == [f"numpy {np.__version__} / 1.0.0"]
    (tmp_path / environment.FILE).write_text("{not json")
    assert environment.read(tmp_path) is None  # unknown, not "none recorded"
    assert environment.read(tmp_path / "elsewhere") == []
    environment.record(tmp_path, 72)  # a resume replaces a damaged record with its own entry alone
    assert [e["first_generation"] for e in environment.read(tmp_path)] == [72]


def test_show_and_compare_say_a_damaged_environment_is_unknown(tmp_path):
    from collapse_cli.report.compare import environment_words
    from collapse_cli.report.runs import Group, Run
    from collapse_cli.report.tables import environment_notes

    runs = {}
    for name in ("recorded", "old", "damaged"):
        (tmp_path / name).mkdir()
        runs[name] = Run(path=tmp_path / name, name=name, overrides=[], seed=0, status={"state": "finished"},
                         summary={}, rows=[{"generation": 0}], config={"model": {"family": "gmm"}})
    environment.record(tmp_path / "recorded", 0)
    (tmp_path / "damaged" / environment.FILE).write_text('[{"numpy": "2.')  # torn mid-write
    assert environment_words(tmp_path / "old") == [("environment", "not recorded (a run from before environment.json)")]
    assert environment_words(tmp_path / "damaged") == [
        ("environment", f"unknown: {environment.FILE} cannot be read (damaged)")]
    assert environment_notes([Group("a", [runs["recorded"], runs["old"]])]) == []
    notes = environment_notes([Group("a", [runs["recorded"]]), Group("b", [runs["damaged"]])])
    assert len(notes) == 1 and str(tmp_path / "damaged") in notes[0] and "unknown" in notes[0]


def test_threads_auto_takes_the_affinity_cores_shared_among_a_local_sweep(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert environment.thread_count("auto") == cores
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv(environment.SWEEP_JOBS, str(cores * 2))
    assert environment.thread_count("auto") == 1  # never below one
    monkeypatch.setenv(environment.SWEEP_JOBS, "1")
    assert environment.thread_count("auto") == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's word wins
    assert environment.thread_count("auto") == 3
    assert environment.thread_count("2") == 2


def test_apply_threads_sets_torch(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        assert environment.apply_threads("2") == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("value", ["many", "0", "-1"])
def test_a_bad_threads_value_is_one_line(value, tmp_path):
    result = run_collapse(["run", f"threads={value}", "dry_run=true"], tmp_path)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert f"threads={value}" in result.stderr and "auto" in result.stderr


def test_version(capsys):
    assert cli_main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("collapse 0.")


# --- real runs: show reads the environment back, compare by family --------------------------

@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """A GMM sweep (2 seeds x 2 mixes, 40 generations) and a tiny LM run, side by side."""
    root = tmp_path_factory.mktemp("mixed")
    jobs = [start_collapse(["run", "-m", "model=gmm", "dataset=gaussian", "generations=40", "mix=0,0.5", "seed=0,1",
                            f"hydra.sweep.dir={root / 'gmm'}"], cwd=root),
            start_collapse(["run", *TINY, f"hydra.run.dir={root / 'lm'}"], cwd=root)]
    for job in jobs:
        _, errors = job.communicate(timeout=600)
        assert job.returncode == 0, errors[-3000:]
    return root


@pytest.mark.slow
def test_show_prints_the_recorded_environment(mixed, capsys):
    assert cli_main(["show", str(mixed / "gmm" / "0")]) == 0
    out = capsys.readouterr().out
    entry = environment.read(mixed / "gmm" / "0")[0]
    assert f"numpy {entry['numpy']}" in out and f"torch {entry['torch']}" in out
    assert "lr 1.0" not in out and "means None" not in out  # keys the GMM does not read
    assert "nll_test ↓" in out


@pytest.mark.slow
def test_compare_mixed_families_tables_and_plots_per_family(mixed, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli_main(["compare", str(mixed / "gmm"), str(mixed / "lm"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "gmm family — final generation" in text and "lm family — final generation" in text
    assert "gmm family — paired difference" in text and "gmm: mix=0.5" in text
    pngs = sorted(p.name for p in out.glob("metric_*.png"))
    assert "metric_gmm_nll_test.png" in pngs and "metric_lm_ppl_test.png" in pngs
    assert "metric_gmm_tail_coverage.png" in pngs and "metric_lm_tail_coverage.png" in pngs
    assert plots.read_png_description(out / "metric_gmm_nll_test.png")["lines"] == 2
    report = (out / "report.html").read_text()
    assert "gmm: Tail coverage: samples" in report and "lm: Tail coverage: rare real token types" in report


@pytest.mark.slow
def test_compare_flags_runs_computed_in_different_environments(mixed, tmp_path, capsys):
    copy = tmp_path / "gmm"
    shutil.copytree(mixed / "gmm", copy)
    for job in ("2", "3"):  # the mix=0.5 group, as if computed with another numpy
        entries = environment.read(copy / job)
        (copy / job / environment.FILE).write_text(json.dumps([{**entries[0], "numpy": "1.26.4"}]))
    assert cli_main(["compare", str(copy)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "different environments" in text
    assert f"numpy {np.__version__} (mix=0) / 1.26.4 (mix=0.5)" in text


def test_unknown_metric_in_a_family_is_still_one_error(tmp_path):
    with pytest.raises(CollapseError):
        stats.choose_metrics("nope", [hand_run(0, [1.0])])


def test_a_copied_run_does_not_send_the_reader_to_another_machines_path(tmp_path):
    run = hand_run(0, [1.0, 2.0])
    run.path = tmp_path / "copy"
    run.status = {"state": "interrupted", "generations_total": 3,
                  "reason": "terminated (SIGTERM); `collapse resume /elsewhere/outputs/run` continues it"}
    text = run.status_text()
    assert "`collapse resume /elsewhere" not in text and "written in /elsewhere/outputs/run" in text
    run.status["reason"] = f"terminated (SIGTERM); `collapse resume {run.path}` continues it"
    assert f"`collapse resume {run.path}` continues it" in run.status_text()


def test_progress_gives_an_eta_for_the_whole_run():
    from rich.console import Console

    from collapse_cli.experiment.progress import Feedback

    feedback = Feedback(Console(quiet=True))
    feedback.last_generation = 2000
    assert feedback.run_eta(70, now=100.0) == ""  # the first line of this process: no rate yet
    assert feedback.run_eta(80, now=120.0) == "; run eta 1h04m (gen 80 of 2,000)"  # 2 s a generation, 1,920 to go
    assert feedback.run_eta(2000, now=4000.0) == ""  # done


def test_a_one_seed_group_is_drawn_with_its_runs_own_standard_error():
    from collapse_cli.report import export

    run = hand_run(0, [3.0, 4.0], nll_test_se=[0.1, 0.2])
    (series,) = export.metric_series(stats.GroupStats.of([Group("g", [run])], ["nll_test"]), "nll_test")
    assert series.band == plots.Band.run_se
    assert series.low == pytest.approx([3.0 - 0.196, 4.0 - 0.392]) and series.high[1] == pytest.approx(4.392)
    two = Group("h", [hand_run(0, [3.0, 4.0], nll_test_se=[0.1, 0.2]), hand_run(1, [3.2, 4.4], nll_test_se=[0.1, 0.2])])
    (over_seeds,) = export.metric_series(stats.GroupStats.of([two], ["nll_test"]), "nll_test")
    assert over_seeds.band == plots.Band.seeds and over_seeds.high[1] == pytest.approx(4.2 + 12.706 * 0.2, rel=1e-4)


@pytest.mark.slow
def test_the_smoke_preset_composes_to_a_short_default_loop(tmp_path):
    result = run_collapse(["run", "+experiment=smoke", "dry_run=true"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 recursive generations after generation 0" in result.stdout
    assert "32000" in result.stdout  # the plan's tokens per generation: half the default's 64000


def test_a_column_spanning_decades_gets_no_run_of_decimals():
    assert tables.decimals([6.977, 0.0553]) == 4  # 6.9770 and 0.0553, not 6.977000
    assert tables.decimals([2.5e-5, 1.0]) is None  # scientific notation: fmt decides
