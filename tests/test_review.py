"""curate=review (issue #25, item 4): the run stops with a sheet and an empty verdict file, a script fills it,
`collapse resume` trains on exactly the kept rows; a missing or malformed verdict file is one line, exit 2,
and changes nothing."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, read_metrics, read_status, run_in_process
from test_integrity import one_line

from collapse_cli.lifecycle import sweep_end

GMM = ["model=gmm", "dataset=gaussian", "dataset.n_train=200", "dataset.n_test=200"]


def fill(verdicts: Path, keep) -> list[int]:
    """Write keep/drop for every id of the file (keep(id) -> bool); returns the kept ids."""
    ids = [int(row["id"]) for row in csv.DictReader(verdicts.open())]
    with verdicts.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "verdict"])
        writer.writerows([i, "keep" if keep(i) else "drop"] for i in ids)
    return [i for i in ids if keep(i)]


@pytest.mark.slow
def test_stop_fill_by_script_resume_finish_and_the_kept_rows_are_the_verdicts(tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert run_in_process(["run", *GMM, "generations=2", "curate=review", f"hydra.run.dir={run}"]) == 0
    status = read_status(run)
    sheet = run / "gen_000" / "review"
    assert status["state"] == "awaiting_review" and status["generations_done"] == 1
    assert str(sheet / "verdicts.csv") in status["reason"] and str(sheet / "sheet.html") in status["reason"]
    assert (run / "gen_000" / "DONE").exists() and not (run / "gen_001").exists()
    assert not (run / "gen_000" / "curated_index.npy").exists()  # nothing claims a curation that did not happen
    page = (sheet / "sheet.html").read_text()
    assert "<svg" in page and page.count("<tr>") == 201  # the 2-D points as a scatter, and one row a sample
    assert [row["verdict"] for row in csv.DictReader((sheet / "verdicts.csv").open())] == [""] * 200
    capsys.readouterr()
    assert run_in_process(["show", str(run)]) == 0
    assert "awaiting_review (1/3 generations done: awaiting review of generation 0" in capsys.readouterr().out

    # Resuming before the verdicts are in: one line naming the file and the fix, the run untouched.
    assert run_in_process(["resume", str(run)]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(sheet / "verdicts.csv") in line and "id,keep" in line
    assert read_status(run)["state"] == "awaiting_review"

    kept0 = fill(sheet / "verdicts.csv", lambda i: i % 3 == 0)
    assert run_in_process(["resume", str(run)]) == 0
    assert read_status(run)["state"] == "awaiting_review" and read_status(run)["generations_done"] == 2
    np.testing.assert_array_equal(np.load(run / "gen_000" / "curated_index.npy"), kept0)
    origin = np.load(run / "gen_001" / "train_origin.npy")  # generation 1 trained on kept rows of generation 0
    assert set(origin[:, 0]) == {0} and set(origin[:, 1].tolist()) <= set(kept0)

    kept1 = fill(run / "gen_001" / "review" / "verdicts.csv", lambda i: i < 50)
    assert run_in_process(["resume", str(run)]) == 0
    assert read_status(run)["state"] == "finished"
    np.testing.assert_array_equal(np.load(run / "gen_001" / "curated_index.npy"), kept1)
    assert set(np.load(run / "gen_002" / "train_origin.npy")[:, 1].tolist()) <= set(kept1)
    assert not (run / "gen_002" / "review").exists()  # the last generation's samples train nothing
    rows = read_metrics(run)
    assert [row.get("curate_review_keep") for row in rows] == [len(kept0), len(kept1), None]
    assert [row.get("curate_review_drop") for row in rows] == [200 - len(kept0), 200 - len(kept1), None]


@pytest.mark.slow
@pytest.mark.parametrize("content,needle", [
    (None, "missing"),
    ("verdict,id\n", "the first line must be the header id,verdict"),
    ("id,verdict\n0,maybe\n", "line 2 is '0,maybe'"),
    ("id,verdict\n0,keep\n0,drop\n", "line 3 is a repeated id"),
    ("id,verdict\n0,keep\n", "have no verdict"),
    ("id,verdict\n" + "".join(f"{i},drop\n" for i in range(200)), "keep at least one"),
    ("id,verdict\n" + "".join(f"{i},keep\n" for i in range(201)), "[200] are not on the sheet"),
])
def test_a_missing_or_malformed_verdict_file_is_one_line_and_changes_nothing(tmp_path_factory, content, needle,
                                                                              capsys):
    run = tmp_path_factory.mktemp("review") / "run"
    assert run_in_process(["run", *GMM, "generations=1", "curate=review", f"hydra.run.dir={run}"]) == 0
    verdicts = run / "gen_000" / "review" / "verdicts.csv"
    if content is None:
        verdicts.unlink()
    else:
        verdicts.write_text(content)
    capsys.readouterr()
    assert run_in_process(["resume", str(run)]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(verdicts) in line and needle in line, line
    assert read_status(run)["state"] == "awaiting_review" and not (run / "gen_001").exists()


@pytest.mark.slow
def test_running_the_same_command_again_before_the_verdicts_says_where_the_sheet_is(tmp_path: Path, capsys):
    run = tmp_path / "run"
    command = ["run", *GMM, "generations=1", "curate=review", f"hydra.run.dir={run}"]
    assert run_in_process(command) == 0
    before = read_status(run)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:  # a relaunch, not a resume: the verdicts are not in (a job exits
        run_in_process(command)              # through Hydra; `collapse run` exits with its code)
    assert stop.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert "awaiting review of generation 0" in line and str(run / "gen_000" / "review" / "sheet.html") in line
    assert read_status(run) == before and not (run / "gen_001").exists()  # status unchanged, nothing written
    kept = fill(run / "gen_000" / "review" / "verdicts.csv", lambda i: i % 2 == 0)
    assert run_in_process(command) == 0  # with the verdicts in, the same command goes on as a resume would
    assert read_status(run)["state"] == "finished"
    np.testing.assert_array_equal(np.load(run / "gen_000" / "curated_index.npy"), kept)


@pytest.mark.slow
def test_a_review_sweep_ends_saying_its_runs_await_review_and_exits_0(tmp_path: Path, capsys):
    sweep = tmp_path / "sweep"
    command = ["run", "-m", *GMM, "generations=1", "curate=review", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    for attempt in ("first", "relaunched"):
        capsys.readouterr()
        assert run_in_process(command) == 0, attempt
        err = capsys.readouterr().err
        assert "2 of 2 run(s) await review" in err and str(sweep / "1") in err and "error" not in err, (attempt, err)
        assert [read_status(sweep / n)["state"] for n in "01"] == ["awaiting_review"] * 2


def test_a_sweep_with_a_failed_run_still_exits_2_and_names_the_awaiting_ones_apart(capsys):
    assert sweep_end(["/s/1 (failed: a reason)"], ["/s/0"], 2) == 2
    err = capsys.readouterr().err
    assert "1 of 2 run(s) await review" in err and "/s/0" in err
    assert "collapse: error: 1 of 2 run(s) did not finish: /s/1 (failed: a reason)" in err
    assert sweep_end([], [], 2) == 0 and capsys.readouterr().err == ""


@pytest.mark.slow
def test_the_lm_sheet_shows_the_decoded_text(tmp_path: Path):
    run = tmp_path / "run"
    assert run_in_process(["run", *TINY, "curate=review", f"hydra.run.dir={run}"]) == 0
    page = (run / "gen_000" / "review" / "sheet.html").read_text()
    import gzip

    first = gzip.decompress((run / "gen_000" / "synthetic.txt.gz").read_bytes()).decode().split("\n")[0]
    assert first.split()[0] in page and "<pre" in page
