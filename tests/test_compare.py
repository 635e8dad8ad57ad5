"""Tests for `collapse compare` / `collapse show` on REAL tiny runs made by `collapse run`.

One sweep (mix=0,1 x seed=0,1) and one single run are made once per module, in
parallel, with one torch thread each (2 shared cores). Everything else reads
them back, through the same entry point the CLI uses.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, gone_pid, run_collapse, start_collapse

from collapse_cli.cli import main as cli_main
from collapse_cli.errors import CollapseError
from collapse_cli.report import plots, stats
from collapse_cli.report import runs as report_runs
from collapse_cli.report.facts import MetricFacts, builtin_facts


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    sweep, single = root / "sweep", root / "single"
    jobs = [start_collapse(["run", "-m", "mix=0,1", "seed=0,1", *TINY, f"hydra.sweep.dir={sweep}"], cwd=root),
            start_collapse(["run", "seed=3", *TINY, f"hydra.run.dir={single}"], cwd=root)]
    for job in jobs:
        _, errors = job.communicate(timeout=300)
        assert job.returncode == 0, errors[-3000:]
    return {"sweep": sweep, "single": single}


@pytest.fixture(scope="module")
def sweep_out(made, tmp_path_factory) -> Path:
    """`collapse compare SWEEP --out DIR` once; several tests read its files."""
    out = tmp_path_factory.mktemp("compare_out")
    assert cli_main(["compare", str(made["sweep"]), "--out", str(out)]) == 0
    return out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- discovery and grouping ---------------------------------------------------

@pytest.mark.slow
def test_sweep_groups_by_seed(made):
    runs = report_runs.load_runs(report_runs.discover([str(made["sweep"])]))
    groups, shared = report_runs.group_runs(runs)
    assert [g.label for g in groups] == ["mix=0", "mix=1"]
    assert [[r.seed for r in g.runs] for g in groups] == [[0, 1], [0, 1]]
    assert "train.epochs=1" in shared and not any(o.startswith(("seed", "hydra")) for o in shared)
    assert {r.name for r in runs} == {f"sweep/{i}" for i in range(4)}


@pytest.mark.slow
def test_quoted_glob_and_run_folder_both_found(made, capsys):
    assert cli_main(["compare", f"{made['sweep']}/*", str(made["single"])]) == 0
    out = capsys.readouterr().out
    assert "5 run(s) in 3 group(s)" in out


def test_overrides_normalised_and_seed_hydra_left_out():
    assert report_runs.normal_override("mix=0") == report_runs.normal_override("+mix=0.0")
    assert report_runs.normal_override("mix=0.5") != report_runs.normal_override("mix=0.05")
    assert not report_runs.is_label_override("seed=2")
    assert not report_runs.is_label_override("hydra.sweep.dir=x")
    assert report_runs.is_label_override("dataset.seed=2")


# --- statistics -----------------------------------------------------------------

def test_t_critical_matches_scipy():
    from scipy import stats as scipy_stats  # a test dependency (pyproject [test])
    for df in (1, 2, 5, 29, 30, 31, 50, 200):
        assert stats.t_critical(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=2e-3)


@pytest.mark.slow
def test_group_stats_are_mean_std_and_t_interval(made):
    runs = report_runs.load_runs(report_runs.discover([str(made["sweep"])]))
    group = report_runs.group_runs(runs)[0][0]
    values = [row["ppl_test"] for run in group.runs for row in jsonl(run.path / "metrics.jsonl")
              if row["generation"] == 1]
    stat = {s.generation: s for s in stats.aggregate(group.runs, "ppl_test")}[1]
    assert stat.n == 2
    assert stat.mean == pytest.approx(np.mean(values))
    assert stat.std == pytest.approx(np.std(values, ddof=1))
    assert stat.ci == pytest.approx(12.706 * np.std(values, ddof=1) / math.sqrt(2))


# --- files ----------------------------------------------------------------------

@pytest.mark.slow
def test_csv_values_are_the_runs_own(sweep_out):
    rows = read_csv(sweep_out / "metrics.csv")
    paths = {r["run"]: Path(r["path"]) for r in read_csv(sweep_out / "runs.csv")}
    assert len(paths) == 4
    expected = {}
    for name, path in paths.items():
        for line in jsonl(path / "metrics.jsonl"):
            expected.update({(name, str(line["generation"]), k): v for k, v in line.items() if k != "generation"})
    assert len(rows) == len(expected)
    for row in rows:
        value = expected[(row["run"], row["generation"], row["metric"])]
        assert (row["value"] == "") if value is None else (float(row["value"]) == value), row
    assert {(r["group"], r["seed"]) for r in rows} == {("mix=0", "0"), ("mix=0", "1"), ("mix=1", "0"), ("mix=1", "1")}


@pytest.mark.slow
def test_metric_pngs_are_images_with_one_line_and_band_per_group(sweep_out):
    from matplotlib.image import imread

    files = sorted(sweep_out.glob("metric_*.png"))
    assert {f.stem for f in files} >= {"metric_ppl_test", "metric_tail_coverage", "metric_kl_truth"}
    for file in files:
        height, width, _ = imread(file).shape
        assert width >= 600 and height >= 400
        drawn = plots.read_png_description(file)
        assert (drawn["kind"], drawn["lines"], drawn["bands"]) == ("metric", 2, 2), file.name


@pytest.mark.slow
def test_histograms_one_per_group_one_outline_per_generation(sweep_out):
    files = sorted(sweep_out.glob("seq_ppl_hist_*.png"))
    assert len(files) == 2
    for file in files:
        drawn = plots.read_png_description(file)
        # Two generations (0 and 1) plus the dashed real-test-text reference.
        assert (drawn["kind"], drawn["histograms"], drawn["lines"]) == ("seq_ppl_hist", 3, 0)


def test_figure_counts_only_what_is_drawn():
    """figure_contents reads the figure, so a dropped series or band shows up."""
    one_seed = plots.Series("a", [0, 1], [1.0, 2.0], [math.nan] * 2, [math.nan] * 2, 1)
    two_seeds = plots.Series("b", [0, 1], [1.0, 2.0], [0.5, 1.5], [1.5, 2.5], 2)
    figure = plots.metric_figure(builtin_facts("lm").metric("ppl_test"), [one_seed, two_seeds, two_seeds])
    assert plots.figure_contents(figure) == {"lines": 3, "bands": 2, "histograms": 0}
    assert figure.axes[0].get_xlabel() == "generation"
    assert all(float(t).is_integer() for t in figure.axes[0].get_xticks())


@pytest.mark.slow
def test_report_is_self_contained(sweep_out, made):
    page = (sweep_out / "report.html").read_text()
    pngs = list(sweep_out.glob("*.png"))
    assert page.count("src='data:image/png;base64,") == len(pngs) == 6
    assert "src='metric_" not in page and "mix=0" in page and "mix=1" in page
    verdict = json.loads((made["sweep"] / "0" / "summary.json").read_text())["early_warning"]["text"]
    assert verdict in page


@pytest.mark.slow
def test_report_embeds_the_pngs_a_run_wrote_into_figures(made, tmp_path, capsys):
    import base64

    from matplotlib.figure import Figure

    run = tmp_path / "with_figures"
    shutil.copytree(made["single"], run)
    figure = Figure(figsize=(2, 2))
    figure.add_subplot().scatter([0, 1, 2], [2, 0, 1])
    scatter = plots.png_bytes(figure, "scatter", "a family's figure")
    (run / "figures").mkdir()
    (run / "figures" / "gmm_scatter.png").write_bytes(scatter)
    (run / "figures" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert cli_main(["compare", str(run), "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    embedded = f"src='data:image/png;base64,{base64.b64encode(scatter).decode('ascii')}'"
    assert page.count(embedded) == 1
    # In its own section after the metric curves, captioned with the run and the file it came from.
    assert page.index("metrics by generation</h2>") < page.index("figures the runs wrote") < page.index(embedded)
    assert "with_figures: gmm_scatter" in page and str(run / "figures" / "gmm_scatter.png") in page
    assert "broken.png: not a PNG image" in page
    # show writes the same report for one run.
    assert cli_main(["show", str(run), "--out", str(tmp_path / "show")]) == 0
    assert embedded in (tmp_path / "show" / "report.html").read_text()


# --- terminal -------------------------------------------------------------------

@pytest.mark.slow
def test_final_table_shows_ci_change_and_seeds(made, capsys):
    assert cli_main(["compare", str(made["sweep"]), "--metrics", "ppl_test,seq_ppl_q*"]) == 0
    out = capsys.readouterr().out
    assert "2 run(s)" not in out and "4 run(s) in 2 group(s)" in out
    assert "±" in out and "%)" in out and "seq_ppl_q99" in out and "tail_coverage" not in out.split("early")[0]


@pytest.mark.slow
def test_by_generation_lists_every_generation(made, capsys):
    assert cli_main(["compare", str(made["sweep"]), "--by-generation", "--metrics", "kl_truth"]) == 0
    out = capsys.readouterr().out
    assert "kl_truth ↓ by generation" in out and "mix=0 (n=2)" in out


@pytest.mark.slow
def test_unknown_metric_is_a_clear_error(made):
    runs = report_runs.load_runs(report_runs.discover([str(made["single"])]))
    with pytest.raises(CollapseError, match="--metrics: no run has 'nope'"):
        stats.choose_metrics("nope", runs)


# --- errors and robustness ----------------------------------------------------

@pytest.mark.parametrize("which", ["empty", "missing"])
@pytest.mark.slow
def test_path_without_runs_exits_nonzero_with_one_line(tmp_path, which):
    target = tmp_path / which
    if which == "empty":
        (target / "notes").mkdir(parents=True)
        (target / "notes" / "readme.txt").write_text("not a run")
    result = run_collapse(["compare", str(target)], cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert str(target) in result.stderr and result.stderr.startswith("collapse: error:")


def make_unfinished_copy(source: Path, target: Path) -> None:
    """A run killed after generation 0: status running by a process that is gone, no summary, one metrics line."""
    shutil.copytree(source, target)
    status = json.loads((target / "status.json").read_text())
    (target / "status.json").write_text(json.dumps({**status, "state": "running", "generations_done": 1,
                                                    "pid": gone_pid()}))
    (target / "summary.json").unlink()
    lines = (target / "metrics.jsonl").read_text().splitlines()
    first = {k: v for k, v in json.loads(lines[0]).items() if k != "kl_truth"}  # a metric set of its own
    (target / "metrics.jsonl").write_text(json.dumps({**first, "extra_metric": 1.5}) + "\n")
    shutil.rmtree(target / "gen_001")


@pytest.mark.slow
def test_mixed_folder_lists_the_unfinished_run(made, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    shutil.copytree(made["single"], mixed / "done")
    make_unfinished_copy(made["single"], mixed / "killed")
    (mixed / "unrelated" / "deeper").mkdir(parents=True)
    (mixed / "unrelated" / "deeper" / "data.csv").write_text("a,b\n1,2\n")
    out_dir = tmp_path / "out"
    assert cli_main(["compare", str(mixed), "--out", str(out_dir)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich may wrap long lines
    assert "2 run(s) in 1 group(s)" in out
    assert "unfinished" in out and "killed" in out and "stopped (1/2 generations done: its process" in out
    assert "1 finished, 1 stopped" in out and "1 of 2" in out
    runs = {r["run"]: r for r in read_csv(out_dir / "runs.csv")}
    assert set(runs) == {"mixed/done", "mixed/killed"} and runs["mixed/killed"]["state"] == "stopped"
    rows = read_csv(out_dir / "metrics.csv")
    killed = {(r["generation"], r["metric"]) for r in rows if r["run"] == "mixed/killed"}
    assert ("0", "ppl_test") in killed and ("0", "extra_metric") in killed and ("0", "kl_truth") not in killed
    assert not any(r["generation"] == "1" for r in rows if r["run"] == "mixed/killed")



@pytest.mark.slow
def test_a_run_resumed_with_a_changed_key_is_a_group_of_its_own(made, tmp_path, capsys, monkeypatch):
    """`collapse resume RUN train.lr=...` makes the run's later generations another experiment: it is not
    averaged with the seeds it was launched beside, and its label names the change. Overrides that only
    say how the run is carried out (min_free_disk_mb, device) split nothing."""
    from collapse_cli.families.lm.family import LMFamily

    folder = tmp_path / "sweep"
    shutil.copytree(made["sweep"] / "1", folder / "1")  # mix=0 seed=1, as the sweep ran it
    real_fit = LMFamily.fit

    def stop_at_generation_1(self, model, rows, seed, generation, on_step):
        if generation == 1:
            raise KeyboardInterrupt  # as Ctrl-C would: generation 0 is done
        return real_fit(self, model, rows, seed, generation, on_step)

    monkeypatch.setattr(LMFamily, "fit", stop_at_generation_1)
    with pytest.raises(SystemExit):  # mix=0 seed=0, the sweep's other seed, stopped after generation 0
        cli_main(["run", "mix=0", "seed=0", *TINY, f"hydra.run.dir={folder / '0'}"])
    monkeypatch.setattr(LMFamily, "fit", real_fit)
    assert cli_main(["resume", str(folder / "0"), "train.lr=2e-3", "min_free_disk_mb=100"]) == 0
    assert (folder / "0" / "resume_overrides.yaml").is_file()
    runs = report_runs.load_runs(report_runs.discover([str(folder)]))
    groups, _ = report_runs.group_runs(runs)
    assert [(g.label, [r.seed for r in g.runs]) for g in groups] == [("resumed:train.lr=2e-3", [0]),
                                                                      ("default", [1])]
    capsys.readouterr()
    assert cli_main(["compare", str(folder)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "2 run(s) in 2 group(s)" in out and "resumed:train.lr=2e-3" in out
    assert "config.yaml differs" not in out  # no longer "same overrides" with the run it differs from
    assert cli_main(["show", str(folder / "0")]) == 0
    assert "resumed with train.lr=2e-3" in " ".join(capsys.readouterr().out.split())


# --- show -----------------------------------------------------------------------

@pytest.mark.slow
def test_show_describes_one_run(made, tmp_path, capsys):
    out_dir = tmp_path / "show"
    assert cli_main(["show", str(made["single"]), "--out", str(out_dir)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for words in ("tiny OPT-architecture decoder", "hidden 32", "builtin Zipf-Markov language of 300 words",
                  "fully synthetic after generation 0", "replace", "1 after generation 0", "seed 3",
                  "sample: sampling at temperature 1.0", "(linear decay)", "keeps the last epoch", "finished",
                  "early warning"):
        assert words in out, words
    assert plots.read_png_description(out_dir / "metric_ppl_test.png")["lines"] == 1
    assert len(list(out_dir.glob("seq_ppl_hist_*.png"))) == 1


@pytest.mark.slow
def test_show_refuses_a_sweep(made, capsys):
    assert cli_main(["show", str(made["sweep"])]) == 2
    assert "holds 4 runs" in capsys.readouterr().err


def test_verdict_table_names_the_likelihood_headline_of_its_runs():
    from collapse_cli.report.tables import verdict_table

    def run(seed: int, warning) -> report_runs.Run:
        return report_runs.Run(path=Path(f"r{seed}"), name=f"r{seed}", overrides=[], seed=seed,
                               status={"state": "finished"}, summary={"early_warning": warning} if warning else {},
                               rows=[{"generation": 0}], config={})  # a finished run has its rows

    gmm = {"first_tail_gen": 166, "first_likelihood_gen": 12, "gap": -154, "headline": "test NLL", "text": "..."}
    # Before `headline` existed, and before first_likelihood_gen was renamed from first_ppl_gen.
    old_lm = {"first_tail_gen": 1, "first_ppl_gen": 4, "gap": 3, "text": "..."}
    table = verdict_table([report_runs.Group("gmm", [run(0, gmm), run(1, None)])])
    assert table.headers[3] == "test NLL"
    assert table.rows[0][2:4] == ["166", "12"] and table.rows[1][2:4] == ["", ""]
    old_table = verdict_table([report_runs.Group("lm", [run(0, old_lm)])])
    assert old_table.headers[3] == "test perplexity" and old_table.rows[0][2:4] == ["1", "4"]
    assert verdict_table([report_runs.Group("lm", [run(0, old_lm)]),
                          report_runs.Group("gmm", [run(1, gmm)])]).headers[3] == "likelihood"


# --- damaged and foreign run folders (issue #21): one line naming the file, never a traceback ---------------

OTHER_UID = 65534  # nobody


@pytest.fixture(scope="module")
def gmm_run(tmp_path_factory) -> Path:
    """A finished GMM run (seconds) in a folder every user may traverse (pytest's tmp root is the owner's alone)."""
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="collapse-shared-"))
    shared.chmod(0o755)
    assert cli_main(["run", "model=gmm", "dataset=gaussian", "generations=2", "dataset.n_train=200",
                     f"hydra.run.dir={shared / 'run'}"]) == 0
    yield shared / "run"
    for path in shared.rglob("*"):  # chmod'ed by the tests: make it removable again
        path.chmod(0o755)
    shutil.rmtree(shared)


def copy_of(run: Path, name: str) -> Path:
    copy = run.parent / name
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy)
    copy.chmod(0o755)
    return copy


def as_another_user(args: list[str]) -> tuple[int, str]:
    """`collapse ARGS` in a forked child that is not the files' owner: as root, uid and gid 65534 (root reads
    everything, so a chmod alone tests nothing); otherwise this user, whom a chmod 000 shuts out as well.
    Forked rather than started: the interpreter may live where the other user may not read (a root pyenv),
    so what the command needs is imported here, before the fork. Returns (exit code, stderr)."""
    import collapse_cli.cli  # noqa: F401
    import collapse_cli.config  # noqa: F401
    import collapse_cli.report.compare  # noqa: F401

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.close(read_end)
            sys.stderr = open(write_end, "w", closefd=False)
            sys.stdout = open(os.devnull, "w")
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(OTHER_UID)
                os.setuid(OTHER_UID)
            assert os.geteuid() != 0
            code = cli_main(list(args))
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        errors = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), errors


def one_line(code: int, errors: str) -> str:
    assert "Traceback" not in errors and code == 2, (code, errors[-3000:])
    (line,) = errors.strip().splitlines()
    assert line.startswith("collapse: error: ")
    return line


@pytest.mark.slow
@pytest.mark.parametrize("file", ["status.json", "metrics.jsonl", "summary.json", "config.yaml",
                                  ".hydra/overrides.yaml"])
def test_a_file_another_user_may_not_read_is_one_line_in_compare_and_show(gmm_run, file):
    run = copy_of(gmm_run, f"unreadable_{file.replace('/', '_')}")
    (run / file).chmod(0o000)
    uid = OTHER_UID if os.geteuid() == 0 else os.getuid()
    for command in ("compare", "show"):
        line = one_line(*as_another_user([command, str(run)]))
        assert f"{run / file}: damaged: this user (uid {uid}) may not read it" in line, line


@pytest.mark.slow
def test_a_folder_another_user_may_not_search_is_one_line(gmm_run):
    run = copy_of(gmm_run, "unsearchable")
    run.chmod(0o000)
    line = one_line(*as_another_user(["compare", str(run)]))
    assert f"{run}: cannot look into it (Permission denied)" in line


@pytest.mark.slow
def test_resuming_another_users_run_is_refused_before_it_writes_anything(gmm_run):
    run = copy_of(gmm_run, "foreign")
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "failed", "reason": "made up"}))
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    run.chmod(0o555)  # root's folder is not nobody's to write either way; a non-root owner is shut out by this
    line = one_line(*as_another_user(["resume", str(run), "model.tol=1e-4"]))
    assert f"{run}: this user (uid " in line and "may not write it" in line and "copy the folder" in line
    run.chmod(0o755)
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before


@pytest.mark.slow
def test_a_finished_run_whose_metrics_are_gone_gets_no_verdict(gmm_run, capsys):
    run = copy_of(gmm_run, "emptied")
    (run / "metrics.jsonl").write_text("")
    assert cli_main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "no verdict: damaged: metrics.jsonl: no generations in it" in out
    assert "departed" not in out  # summary.json's verdict is not repeated as if the run stood behind it


# --- interpolated overrides and wide-ranging metrics (issue 24's presets) -------------------------

@pytest.mark.slow
def test_an_interpolated_override_reads_as_typed_and_is_no_config_warning(tmp_path, capsys):
    """`'dataset.seed=${seed}'` (the linreg and Gaussian presets' independent runs): Hydra records it
    escaped, and each run's dataset.seed differs by design; a key that really differs still warns."""
    sweep = tmp_path / "sweep"
    assert cli_main(["run", "-m", "model=linreg", "dataset=regression", "generations=1", "seed=0,1",
                     "dataset.seed=${seed}", f"hydra.sweep.dir={sweep}"]) == 0
    assert "\\{" in (sweep / "0" / ".hydra" / "overrides.yaml").read_text()  # what Hydra writes
    capsys.readouterr()
    assert cli_main(["compare", str(sweep)]) == 0
    printed = capsys.readouterr().out
    assert "dataset.seed=${seed}" in " ".join(printed.split()) and "\\{" not in printed
    assert "config.yaml differs" not in printed
    config = sweep / "1" / "config.yaml"  # the resolved config compare reads
    config.write_text(config.read_text().replace("noise_std: 1.0", "noise_std: 2.0"))
    assert cli_main(["compare", str(sweep)]) == 0
    warned = " ".join(capsys.readouterr().out.split())
    assert "config.yaml differs in dataset.noise_std (" in warned


def test_hydra_escapes_are_undone():
    assert report_runs.unescaped(r"dataset.seed=$\{seed\}") == "dataset.seed=${seed}"
    assert report_runs.unescaped(r"a=x\,y\=z") == "a=x,y=z"
    assert report_runs.interpolated_keys(["+dataset.seed=${seed}", "mix=0"]) == {"dataset.seed"}


@pytest.mark.parametrize("means, scale", [([[0.09, 0.14, 0.14], [0.09, 1.0, 8.6]], "log"),  # replace vs accumulate
                                          ([[78.0, 170.0]], "linear"),                      # a doubling
                                          ([[-15.4, 14.9]], "linear"),                      # a signed NLL
                                          ([[0.86, 0.0]], "linear")])                       # a share reaching 0
def test_the_y_axis_is_logarithmic_only_for_positive_means_spanning_decades(means, scale):
    series = [plots.Series(f"g{i}", list(range(len(m))), m, [math.nan] * len(m), [math.nan] * len(m), 1)
              for i, m in enumerate(means)]
    figure = plots.metric_figure(MetricFacts("T", "u"), series)
    assert figure.axes[0].get_yscale() == scale
    assert figure.axes[0].get_ylabel().endswith("(log scale)") == (scale == "log")


def test_a_band_reaching_zero_runs_along_the_bottom_of_a_log_axis():
    """A one-seed band of ±1.96 s.e. can reach below 0 (ring8's Fréchet distance at generation 0): on a log
    axis it is drawn down to the axis' bottom, not clipped to an invisible sliver."""
    wide = plots.Series("far", [0, 1], [10.0, 20.0], [5.0, 15.0], [15.0, 25.0], 1)
    near = plots.Series("near", [0, 1], [0.008, 0.08], [-0.003, 0.03], [0.019, 0.13], 1)
    figure = plots.metric_figure(MetricFacts("T", "u"), [wide, near])
    axes = figure.axes[0]
    bottom = axes.get_ylim()[0]
    assert axes.get_yscale() == "log" and 0 < bottom < 0.008
    lowest = min(float(np.min(c.get_paths()[0].vertices[:, 1])) for c in axes.collections)
    assert lowest == pytest.approx(bottom)
