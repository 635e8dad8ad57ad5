"""Experiment trackers (issue #16): real TensorBoard, MLflow and W&B writers, read back through their own readers.

Every tracker writes local files only: TensorBoard event files and W&B offline runs under the run folder,
MLflow a file store beside it. A test is skipped only when its tracker's package is not installed.
"""

from __future__ import annotations

import json
import signal
import struct
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import (
    TINY,
    finished_runs,
    read_metrics,
    read_status,
    run_collapse,
    run_in_process,
    start_collapse,
)

PLOTTED = "metric_ppl_test"  # one of the plots `collapse compare` makes for every run
TRACKERS = ("tensorboard", "mlflow", "wandb")


@pytest.fixture(autouse=True)
def local_only(tmp_path: Path, monkeypatch):
    """W&B offline with every folder it uses under tmp_path; MLflow's variables restored after each test."""
    for key, folder in (("WANDB_DIR", "wandb"), ("WANDB_CACHE_DIR", "wandb-cache"),
                        ("WANDB_CONFIG_DIR", "wandb-config"), ("WANDB_DATA_DIR", "wandb-data")):
        monkeypatch.setenv(key, str(tmp_path / folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for key in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_ALLOW_FILE_STORE",
                "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)  # the tracker sets some in-process; monkeypatch unsets them again


def mlflow_runs(store: Path) -> dict[str, object]:
    """Every run in the store's `collapse` experiment, by the run folder it was logged from."""
    mlflow = pytest.importorskip("mlflow")
    import os

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    mlflow.set_tracking_uri(store.resolve().as_uri())
    try:
        found = mlflow.search_runs(experiment_names=["collapse"], output_format="list")
    finally:
        mlflow.set_tracking_uri(None)
    return {run.data.tags["collapse.run_dir"]: run for run in found}


def mlflow_history(store: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    history = MlflowClient(tracking_uri=store.resolve().as_uri()).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


def tensorboard_events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    return events


def expected(run: Path, key: str) -> list[tuple[int, float]]:
    return [(row["generation"], row[key]) for row in read_metrics(run)]


def assert_tensorboard_scalars(run: Path, events) -> None:
    for key in ("ppl_test", "tail_coverage"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert [step for step, _ in logged] == [g for g, _ in expected(run, key)], key  # each generation once
        assert [value for _, value in logged] == pytest.approx([v for _, v in expected(run, key)], rel=1e-6), key


def wandb_records(path: Path):
    """The protobuf records of a W&B offline run file (its LevelDB-style log: 32 KiB blocks of framed chunks)."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B", path
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0 and length == 0:
            break
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_history(run: Path, run_id: str) -> tuple[dict[int, dict], list]:
    """{step: logged values} over every offline run folder of this W&B run id, and their `run` records."""
    files = sorted((run / "wandb").glob(f"offline-run-*-{run_id}*/run-{run_id}.wandb"))
    assert files, list((run / "wandb").glob("*"))
    steps, run_records = {}, []
    for file in files:
        for record in wandb_records(file):
            if record.HasField("history"):
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                       for item in record.history.item}
                assert row["_step"] not in steps, f"step {row['_step']} logged twice"
                steps[row["_step"]] = row
            elif record.HasField("run"):
                run_records.append(record.run)
    return steps, run_records


@pytest.mark.slow
def test_sweep_logs_every_generation_to_tensorboard_and_mlflow(tmp_path: Path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from tensorboard.plugins.hparams import plugin_data_pb2

    sweep = tmp_path / "sweep"
    code = run_in_process(["run", "-m", *TINY, "seed=0,1", "logger=[tensorboard,mlflow]", "logger.plots=true",
                           f"hydra.sweep.dir={sweep}"])
    assert code == 0
    runs = sorted(finished_runs(sweep))
    assert len(runs) == 2
    store = sweep / "mlruns"  # the default: a file store beside the run folders
    by_folder = mlflow_runs(store)
    assert set(by_folder) == {str(run.resolve()) for run in runs}  # one MLflow run per sweep job

    for run in runs:
        seed = str(yaml.safe_load((run / "config.yaml").read_text())["seed"])
        summary = json.loads((run / "summary.json").read_text())
        logged = by_folder[str(run.resolve())]
        assert logged.info.status == "FINISHED"
        # Tags: only what the sweep varies; the whole resolved config is in the params.
        user_tags = {k: v for k, v in logged.data.tags.items() if not k.startswith(("mlflow.", "collapse."))}
        assert user_tags == {"seed": seed}
        assert logged.data.tags["collapse.sweep"] == "sweep"
        assert logged.data.params["seed"] == seed and logged.data.params["train.epochs"] == "1"
        assert logged.data.params["regime"] == "replace" and "logger.plots" not in logged.data.params
        for key in ("ppl_test", "tail_coverage"):
            assert mlflow_history(store, logged.info.run_id, key) == expected(run, key), key
        assert logged.data.tags["collapse.early_warning"] == summary["early_warning"]["text"]
        assert logged.data.metrics["summary/ppl_test_last"] == summary["ppl_test_last"]
        from mlflow import MlflowClient

        artifacts = {a.path for a in MlflowClient(store.resolve().as_uri()).list_artifacts(logged.info.run_id, "plots")}
        assert f"plots/{PLOTTED}.png" in artifacts

        events = tensorboard_events(run)
        assert_tensorboard_scalars(run, events)
        start_info = plugin_data_pb2.HParamsPluginData.FromString(
            events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
        assert start_info.hparams["seed"].string_value == seed
        assert start_info.hparams["train.epochs"].string_value == "1"
        assert events.Tensors("run_dir/text_summary")[0].tensor_proto.string_val[0].decode() == str(run.resolve())
        assert f"plots/{PLOTTED}" in events.Tags()["images"]
        state = json.loads((run / "trackers.json").read_text())
        assert state["mlflow"]["run_id"] == logged.info.run_id
        assert state["mlflow"]["logged_through"] == state["tensorboard"]["logged_through"] == 1


@pytest.mark.slow
def test_unreachable_mlflow_server_costs_one_warning_line(tmp_path: Path):
    pytest.importorskip("mlflow")
    # Port 9 (discard) on the loopback: nothing listens, so every connection is refused.
    result = run_collapse(["run", *TINY, "logger=mlflow", "logger.mlflow.tracking_uri=http://127.0.0.1:9",
                           "hydra.run.dir=run"], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    # (The test's own folder name says mlflow too: paths are left out of the count.)
    lines = (result.stdout + result.stderr).replace(str(tmp_path), "TMP").splitlines()
    warnings = [line for line in lines if "collapse: warning" in line]
    assert len(warnings) == 1, warnings
    assert "logger mlflow failed while starting its run" in warnings[0] and "127.0.0.1" in warnings[0]
    assert [line for line in lines if "mlflow" in line.lower() or "127.0.0.1" in line] == warnings
    assert "Traceback" not in result.stderr
    run = tmp_path / "run"
    assert read_status(run)["state"] == "finished"
    assert [row["generation"] for row in read_metrics(run)] == [0, 1]
    assert not (run / "trackers.json").exists()  # no tracker run was ever opened


def interrupt_when(proc, marker: Path, timeout: float = 120) -> str:
    """SIGTERM (a scheduler's preemption) the moment `marker` exists; the run's stderr."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"the run ended before {marker} appeared: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"{marker} never appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    return err


@pytest.mark.slow
def test_resume_continues_the_same_tracker_runs(tmp_path: Path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    run = tmp_path / "run"
    proc = start_collapse(["run", *TINY, "generations=2", "logger=[tensorboard,mlflow,wandb]",
                           f"hydra.run.dir={run}"], cwd=tmp_path)
    err = interrupt_when(proc, run / "gen_001" / "composition.json")
    assert "collapse: warning" not in err
    before = json.loads((run / "trackers.json").read_text())
    assert {name: state["logged_through"] for name, state in before.items()} == dict.fromkeys(TRACKERS, 0)
    store = tmp_path / "mlruns"
    interrupted = mlflow_runs(store)[str(run.resolve())]
    assert interrupted.info.status == "KILLED"  # the tracker run was closed as the run stopped
    assert [g for g, _ in mlflow_history(store, interrupted.info.run_id, "ppl_test")] == [0]

    assert run_in_process(["resume", str(run)]) == 0
    after = json.loads((run / "trackers.json").read_text())
    assert after["mlflow"]["run_id"] == before["mlflow"]["run_id"] and after["wandb"]["id"] == before["wandb"]["id"]
    assert {name: state["logged_through"] for name, state in after.items()} == dict.fromkeys(TRACKERS, 2)
    (resumed,) = mlflow_runs(store).values()  # the same MLflow run, continued, not a second one
    assert resumed.info.run_id == interrupted.info.run_id and resumed.info.status == "FINISHED"
    for key in ("ppl_test", "tail_coverage"):
        assert mlflow_history(store, resumed.info.run_id, key) == expected(run, key), key
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one file per process
    # Each process's environment: in the run folder, and copied to every tracker.
    import numpy
    from mlflow import MlflowClient

    entries = json.loads((run / "environment.json").read_text())
    assert [e["first_generation"] for e in entries] == [0, 1] and entries[1]["numpy"] == numpy.__version__
    listed = {a.path for a in MlflowClient(store.resolve().as_uri()).list_artifacts(resumed.info.run_id, "environment")}
    assert listed == {"environment/from_generation_0.json", "environment/from_generation_1.json"}
    assert resumed.data.tags["collapse.env.numpy"] == numpy.__version__
    assert "environment/text_summary" in tensorboard_events(run).Tags()["tensors"]
    assert_tensorboard_scalars(run, tensorboard_events(run))

    steps, run_records = wandb_history(run, before["wandb"]["id"])
    assert sorted(steps) == [0, 1, 2]  # two offline folders of one run id, each generation once
    for key in ("ppl_test", "tail_coverage"):
        assert [(g, steps[g][key]) for g in sorted(steps)] == expected(run, key), key
    assert all(record.run_id == before["wandb"]["id"] and record.project == "collapse" for record in run_records)
    config = {item.key: json.loads(item.value_json) for item in run_records[0].config.update}
    assert config["run_dir"] == str(run.resolve()) and config["generations"] == 2


@pytest.mark.slow
def test_a_resume_override_reaches_every_tracker(tmp_path: Path, capsys):
    """A value a resume changes is noted beside the one the run began with: MLflow params are write-once,
    so a tag; TensorBoard's hparams are written once, so a text at the resumed generation; W&B, a summary field."""
    for package in TRACKERS:
        pytest.importorskip(package)
    run = tmp_path / "run"
    # generations=4: three generations still to run when the marker appears, so a test process that is slow to
    # see it (a full collection at the end of the suite) still finds the run going (one CI run at 2 saw it done).
    proc = start_collapse(["run", *TINY, "generations=4", "logger=[tensorboard,mlflow,wandb]", f"hydra.run.dir={run}"],
                          cwd=tmp_path)
    interrupt_when(proc, run / "gen_001" / "composition.json")
    assert run_in_process(["resume", str(run), "train.lr=2e-3", "train.epochs=2"]) == 0
    assert "collapse: warning" not in capsys.readouterr().err
    noted = {"resumed.train.lr": "0.002 (generation 1 on)", "resumed.train.epochs": "2 (generation 1 on)"}
    (resumed,) = mlflow_runs(tmp_path / "mlruns").values()
    assert resumed.info.status == "FINISHED"
    assert resumed.data.params["train.lr"] == "0.003" and resumed.data.params["train.epochs"] == "1"
    assert {k: v for k, v in resumed.data.tags.items() if k.startswith("resumed.")} == noted

    events = tensorboard_events(run)
    texts = {tag.removesuffix("/text_summary"): [(e.step, e.tensor_proto.string_val[0].decode()) for e in
                                                 events.Tensors(tag)]
             for tag in events.Tags()["tensors"] if tag.startswith("resumed.")}
    assert texts == {tag: [(1, text)] for tag, text in noted.items()}

    state = json.loads((run / "trackers.json").read_text())
    summaries = {}
    for file in sorted((run / "wandb").glob(f"offline-run-*-{state['wandb']['id']}*/run-*.wandb")):
        for record in wandb_records(file):
            if record.HasField("summary"):
                summaries.update({item.key or ".".join(item.nested_key): json.loads(item.value_json)
                                  for item in record.summary.update})
    assert {k: v for k, v in summaries.items() if k.startswith("resumed.")} == noted


def test_resume_changes_tag_what_differs_from_the_value_in_force():
    from collapse_cli.experiment.tracking import resume_changes

    params = {"train.lr": "0.003", "seed": "0", "mix": "0.1"}
    assert resume_changes(params, {}, {"train.lr": "0.003", "seed": "0", "mix": "0.1"}, 2) == {}
    assert resume_changes(params, {}, {"train.lr": "0.002", "seed": "0", "mix": "0.1"}, 2) == {
        "resumed.train.lr": "0.002 (generation 2 on)"}
    earlier = {"resumed.train.lr": "0.002 (generation 2 on)"}
    # A later resume that keeps the earlier change tags nothing; one that changes it again (back, too) says so.
    assert resume_changes(params, earlier, {"train.lr": "0.002", "seed": "0", "mix": "0.1"}, 4) == {}
    assert resume_changes(params, earlier, {"train.lr": "0.003", "seed": "0", "mix": "0.5"}, 4) == {
        "resumed.train.lr": "0.003 (generation 4 on)", "resumed.mix": "0.5 (generation 4 on)"}


@pytest.mark.slow
def test_missing_tracker_package_is_one_line_naming_the_install(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now fails as if it were not installed
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    run = tmp_path / "run"
    assert run_in_process(["run", *TINY, "logger=[tensorboard,wandb]", f"hydra.run.dir={run}"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in (captured.out + captured.err).splitlines() if "collapse: warning" in line]
    assert len(warnings) == 2, warnings
    assert 'needs the tensorboard package: pip install ".[tensorboard]"' in warnings[0]
    assert 'needs the wandb package: pip install ".[wandb]"' in warnings[1]
    assert read_status(run)["state"] == "finished" and not (run / "trackers.json").exists()


@pytest.mark.slow
def test_a_failing_tracker_leaves_the_run_and_the_other_trackers_alone(tmp_path: Path, capsys):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    run = tmp_path / "run"
    run.mkdir()
    (run / "tensorboard").write_text("a file where TensorBoard wants its folder")
    assert run_in_process(["run", *TINY, "logger=[tensorboard,mlflow]", f"hydra.run.dir={run}"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in (captured.out + captured.err).splitlines() if "collapse: warning" in line]
    assert len(warnings) == 1 and "logger tensorboard failed while starting its run" in warnings[0], warnings
    assert read_status(run)["state"] == "finished"
    logged = mlflow_runs(tmp_path / "mlruns")[str(run.resolve())]
    assert logged.info.status == "FINISHED"
    assert mlflow_history(tmp_path / "mlruns", logged.info.run_id, "ppl_test") == expected(run, "ppl_test")
    # A single run is tagged with every override it was given (a sweep: only the swept keys).
    assert logged.data.tags["generations"] == "1" and logged.data.tags["model.hidden_size"] == "32"
    assert set(json.loads((run / "trackers.json").read_text())) == {"mlflow"}


def test_logger_group_composes_as_a_list_and_checks_its_keys(tmp_path: Path, capsys):
    assert run_in_process(["run", "--cfg", "job", "logger=[tensorboard,mlflow]"]) == 0
    logger = yaml.safe_load(capsys.readouterr().out)["logger"]
    assert logger == {"tensorboard": {}, "mlflow": {"tracking_uri": None, "experiment": "collapse", "timeout_s": 10},
                      "wandb": None, "plots": False}
    assert run_in_process(["run", "--cfg", "job"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["logger"] == {"tensorboard": None, "mlflow": None, "wandb": None,
                                                                 "plots": False}
    for overrides, named in ((["logger=[tensorboard,comet]"], "logger/comet"),
                             (["logger=wandb", "logger.wandb.mode=sometimes"], "logger.wandb.mode"),
                             (["logger=mlflow", "logger.mlflow.timeout_s=0"], "logger.mlflow.timeout_s")):
        assert run_in_process(["run", *overrides, f"hydra.run.dir={tmp_path / 'never'}"]) == 2, overrides
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith("collapse: error:") and named in errors[0], errors
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_an_unreadable_trackers_file_turns_tracking_off_not_the_run(tmp_path: Path, capsys):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    run.mkdir()
    (run / "trackers.json").write_text("{ not json")  # as if edited by hand, then the run resumed into it
    assert run_in_process(["run", *TINY, "logger=tensorboard", f"hydra.run.dir={run}"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in (captured.out + captured.err).splitlines() if "collapse: warning" in line]
    assert len(warnings) == 1 and "cannot read this run's tracking records" in warnings[0], warnings
    assert read_status(run)["state"] == "finished" and not (run / "tensorboard").exists()
