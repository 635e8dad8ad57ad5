"""A run says what it is: each family's facts, family.json in the run folder, and the report reading them
(titles, directions, headline keys, closed-form theory pairs) from the folder, not from a list of families."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import run_in_process
from test_reads import hand_run

from collapse_cli.errors import CollapseError
from collapse_cli.families.base import Family, builtin_families, get_family
from collapse_cli.report import plots, stats
from collapse_cli.report.facts import (
    FACTS_FILE,
    Better,
    FamilyFacts,
    MetricFacts,
    builtin_facts,
    run_facts,
)
from collapse_cli.report.runs import discover, load_runs
from collapse_cli.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
OLD_RESULTS = ROOT / "docs" / "results"
# Every builtin family declares its facts (old run folders fall back on them).
BUILTIN = sorted(path.parent.name for path in (ROOT / "collapse_cli" / "families").glob("*/facts.py"))


# --- the facts themselves ------------------------------------------------------------------

def test_every_registered_family_declares_facts():
    assert set(builtin_families()) == set(BUILTIN)


@pytest.mark.parametrize("name", BUILTIN)
def test_each_family_runs_on_the_facts_its_folder_declares(name):
    """The class attributes the loop reads are the facts module's, and family.json round-trips them exactly."""
    family = get_family(name)
    facts = builtin_facts(name)
    assert facts is not None and family.run_facts() == facts and facts.family == name
    assert (family.unit, family.headline, family.table_keys, family.likelihood_key) == (
        facts.unit, facts.headline, facts.table_keys, facts.likelihood_key)
    assert FamilyFacts.from_dict(json.loads(json.dumps(facts.to_dict()))) == facts
    described = [*facts.headline, *facts.compare_keys, *facts.theory, *facts.theory.values()]
    assert [key for key in described if facts.metric(key).title == key] == []  # each has a title


@pytest.mark.parametrize("module", sorted((ROOT / "collapse_cli" / "families").glob("*/facts.py")),
                         ids=lambda path: path.parent.name)
def test_a_facts_module_is_data_that_imports_only_the_facts_types(module):
    """What lets the report read it by path without loading the family (torch) or its package."""
    from test_layers import imported_modules

    imported = imported_modules(module.read_text())
    types = "collapse_cli.report.facts"
    assert imported and all(name == types or name.startswith(types + ".") for name in imported), imported


def test_a_family_without_a_facts_module_records_its_class_attributes():
    class Bare(Family):
        name, unit, headline, table_keys = "bare", "dots", ("score",), ("score", "other")
    facts = Bare.run_facts()
    assert (facts.family, facts.unit, facts.headline, facts.table_keys) == ("bare", "dots", ("score",),
                                                                            ("score", "other"))
    assert facts.metric("score").title == "score"  # nobody described it: shown by its key


def test_lookup_goes_family_then_shared_then_templates_then_the_key():
    facts = FamilyFacts("x", metrics={"tail_coverage": MetricFacts("Own tail", "share", Better.higher),
                                      "q{n}": MetricFacts("Quantile {n}", "units"),
                                      "loss": MetricFacts("Loss", "nats", Better.lower)},
                        theory={"loss": "loss_theory"})
    assert facts.metric("tail_coverage").title == "Own tail"
    assert FamilyFacts("y").metric("tail_coverage").title == "Tail coverage"  # the shared entry
    assert facts.metric("q95") == MetricFacts("Quantile 95", "units")
    assert facts.metric("q") == MetricFacts("q", "q")
    assert facts.metric("loss_se") == MetricFacts("Standard error of: Loss", "nats (standard error)")
    assert facts.metric("fit_time_s") == MetricFacts("Fit time", "seconds")
    assert facts.metric("loss/loss_theory").title == "Loss: measured / closed form (loss_theory)"
    assert facts.metric("loss").worse(+1.0) is True and facts.metric("loss").worse(-1.0) is False
    assert facts.metric("q95").worse(5.0) is None
    assert facts.se_key("nll_test") == "nll_test_se" and facts.se_key("loss") is None
    assert facts.ratio_keys(["loss", "loss_theory", "x"]) == ["loss/loss_theory"]
    assert facts.ratio_keys(["loss"]) == []


def test_the_measured_over_theory_ratio_is_the_mean_of_each_seeds_ratio():
    """Seed 0: 2/1 then 3/2; seed 1: 1/1 then 1/2. Generation 1: mean 1.0, std 0.7071, CI 12.706·0.7071/√2."""
    runs = [hand_run(0, [2.0, 3.0], key="param_error", family="linreg", mse_theory=[1.0, 2.0]),
            hand_run(1, [1.0, 1.0], key="param_error", family="linreg", mse_theory=[1.0, 2.0])]
    assert "param_error/mse_theory" in stats.choose_metrics(None, runs)
    first, last = stats.aggregate(runs, "param_error/mse_theory")
    assert first.mean == 1.5 and last.mean == 1.0
    assert last.std == pytest.approx(math.sqrt(0.5))
    assert last.ci == pytest.approx(12.706 * math.sqrt(0.5) / math.sqrt(2))
    zero = [hand_run(0, [1.0], key="param_error", family="linreg", mse_theory=[0.0])]
    assert stats.aggregate(zero, "param_error/mse_theory") == []  # no ratio to a closed form of 0


def test_a_figure_draws_each_groups_closed_form_beside_its_mean():
    measured = [plots.Series(f"g{i}", [0, 1, 2], [1.0, 2.0, 3.0], [0.5] * 3, [1.5] * 3, 3) for i in range(2)]
    theory = [plots.Series(f"g{i}", [0, 1, 2], [1.0, 2.0, 3.0], [math.nan] * 3, [math.nan] * 3, 3) for i in range(2)]
    figure = plots.metric_figure(MetricFacts("T", "u"), measured, closed_form=theory)
    assert plots.figure_contents(figure) == {"lines": 4, "bands": 2, "histograms": 0}
    dashed = [line for line in figure.axes[0].get_lines() if line.get_linestyle() == "--"]
    assert [line.get_color() for line in dashed] == [plots.group_style(0)["color"], plots.group_style(1)["color"]]
    ratio = plots.metric_figure(MetricFacts("R", "ratio"), measured[:1], reference=1.0)
    assert plots.figure_contents(ratio)["lines"] == 2


# --- family.json in the run folder ---------------------------------------------------------

def test_the_folders_facts_win_and_a_damaged_file_is_one_line(tmp_path):
    own = FamilyFacts("linreg", metrics={"param_error": MetricFacts("Mine", "u", Better.higher)})
    (tmp_path / FACTS_FILE).write_text(json.dumps(own.to_dict()))
    assert run_facts(tmp_path, "linreg").metric("param_error").title == "Mine"
    (tmp_path / FACTS_FILE).write_text(json.dumps({"family": "x", "metrics": {"a": {"title": "t", "unit": "u",
                                                                                       "better": "up"}}}))
    with pytest.raises(CollapseError, match=r"family\.json.*metrics\.a\.better: 'up', not higher, lower or neither"):
        run_facts(tmp_path, "x")
    (tmp_path / FACTS_FILE).write_text("[1]")
    with pytest.raises(CollapseError, match="family.json"):
        run_facts(tmp_path, "x")
    assert run_facts(tmp_path / "none", "nosuch") == FamilyFacts("nosuch")
    assert builtin_facts("../lm") is None  # a config's family name never leaves the families folder


def test_facts_are_written_once_and_a_resume_keeps_what_the_run_began_with(tmp_path):
    from collapse_cli.experiment.loop import record_facts

    family = get_family("categorical")
    record_facts(RunDir(tmp_path), family)
    written = json.loads((tmp_path / FACTS_FILE).read_text())
    assert FamilyFacts.from_dict(written) == family.run_facts()
    written["metrics"]["survivors"]["title"] = "as the run began"
    (tmp_path / FACTS_FILE).write_text(json.dumps(written))
    record_facts(RunDir(tmp_path), family)
    assert run_facts(tmp_path, "categorical").metric("survivors").title == "as the run began"


def test_the_trackers_take_the_headline_from_the_run_folder(tmp_path):
    from collapse_cli.compose import compose as composed
    from collapse_cli.experiment import tracking

    cfg = composed(["model=linreg", "dataset=regression"])
    assert tracking.run_info(cfg, tmp_path).headline == builtin_facts("linreg").headline  # no family.json yet
    (tmp_path / FACTS_FILE).write_text(json.dumps(FamilyFacts("linreg", headline=("a", "b")).to_dict()))
    assert tracking.run_info(cfg, tmp_path).headline == ("a", "b")


def test_only_the_lm_on_cuda_says_bf16():
    from collapse_cli.families.lm.family import LMFamily

    assert LMFamily.describe_precision(SimpleNamespace(device=SimpleNamespace(type="cuda"))) == "bf16"
    assert LMFamily.describe_precision(SimpleNamespace(device=SimpleNamespace(type="cpu"))) == ""
    others = [name for name in BUILTIN if name != "lm"]
    assert all(get_family(n).describe_precision is Family.describe_precision for n in others)


def test_the_plan_line_names_the_precision_the_family_gives(capsys):
    from rich.console import Console

    from collapse_cli.experiment.progress import Feedback

    cfg = SimpleNamespace(dataset=SimpleNamespace(name="digits"), regime="replace", seed=0, generations=1)
    for precision in ("", "bf16"):
        Feedback(Console(width=200)).show_plan(cfg, SimpleNamespace(type="cuda"), "vae", 1000,
                                               [{"generation": 0}], "mix", precision=precision)
    first, second = [line for line in capsys.readouterr().out.splitlines() if "collapse run" in line]
    assert "on cuda," in first and "on cuda (bf16)," in second


# --- old folders ----------------------------------------------------------------------------

def test_old_folders_open_in_show_and_compare_with_their_familys_builtin_facts(tmp_path):
    folders = discover([str(OLD_RESULTS)])
    assert folders and not any((f / FACTS_FILE).exists() for f in folders)  # from before family.json
    for folder in folders:
        assert run_in_process(["show", str(folder)]) == 0
    assert run_in_process(["compare", str(OLD_RESULTS), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.html").read_text()
    assert "<th>ppl_test ↓</th>" in report and "Test perplexity" in report


@pytest.mark.slow
def test_reading_old_folders_loads_no_family_code_and_no_torch():
    code = ("import sys; from collapse_cli.report.runs import discover, load_runs; "
            f"runs = load_runs(discover([{str(OLD_RESULTS)!r}])); assert runs[0].facts.family == 'lm'; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('torch', 'collapse_cli.families')))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.split() == []


# --- real runs of two families --------------------------------------------------------------

@pytest.fixture(scope="module")
def two_families(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("two_families")
    for regime in ("replace", "accumulate"):
        for seed in (0, 1, 2):
            assert run_in_process(["run", "model=linreg", "dataset=regression", "generations=3", f"regime={regime}",
                                   "mix=1" if regime == "accumulate" else "mix=0", f"seed={seed}",
                                   f"hydra.run.dir={root / 'linreg' / f'{regime}_{seed}'}"]) == 0
    assert run_in_process(["run", "model=categorical", "dataset=zipf", "generations=3",
                           f"hydra.run.dir={root / 'categorical'}"]) == 0
    return root


@pytest.mark.slow
def test_compare_draws_the_closed_forms_and_tabulates_the_ratio(two_families, tmp_path):
    from collapse_cli.report.plots import read_png_description

    out = tmp_path / "report"
    assert run_in_process(["compare", str(two_families), "--out", str(out)]) == 0
    report = (out / "report.html").read_text()  # its tables are the terminal's, unwrapped
    assert "<th>param_error/mse_theory</th>" in report and "<th>survivors/survivors_theory</th>" in report
    assert "<th>param_error ↓</th>" in report and "<th>survivors ↑</th>" in report
    # two linreg groups: a mean and a dashed closed form each; one categorical group: one of each
    assert read_png_description(out / "metric_linreg_param_error.png")["lines"] == 4
    assert read_png_description(out / "metric_categorical_survivors.png")["lines"] == 2
    assert "Parameter error ||w_hat - w*||^2" in report and "Outcomes still alive (p_hat &gt; 0)" in report
    runs = load_runs(discover([str(two_families / "linreg")]))
    ratio = stats.aggregate(runs, "param_error/mse_theory")
    assert all(s.n == 6 and math.isfinite(s.mean) and s.mean > 0 for s in ratio)


@pytest.mark.slow
def test_titles_and_directions_come_from_the_run_folder(two_families, tmp_path):
    """Edit family.json in a copy of the runs: compare prints the edited direction and draws the edited title."""
    copy = tmp_path / "copy"
    shutil.copytree(two_families / "linreg", copy)
    for facts_file in copy.glob(f"*/{FACTS_FILE}"):
        facts = json.loads(facts_file.read_text())
        facts["metrics"]["param_error"] = {"title": "An edited title", "unit": "edited unit", "better": "higher"}
        facts_file.write_text(json.dumps(facts))
    out = tmp_path / "report"
    assert run_in_process(["compare", str(copy), "--out", str(out)]) == 0
    report = (out / "report.html").read_text()
    assert "<th>param_error ↑</th>" in report and "param_error ↓" not in report
    assert "An edited title" in report and "Parameter error" not in report
