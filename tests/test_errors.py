"""Bad configs and inputs (issues #2 and #6): exit code 2, one line on stderr naming the key or file, no traceback,
and no run folder that looks finished (none at all when the preflight catches the problem)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from conftest import (
    TINY,
    finished_runs,
    read_metrics,
    read_status,
    run_collapse,
    run_in_process,
)

PREFLIGHT, RUNTIME = "preflight", "runtime"  # RUNTIME: caught once the run started, so its folder says failed
OTHER_FAMILIES = {"model=gmm", "model=vae", "dataset=gaussian", "dataset=digits"}  # TINY's keys do not fit them


def composed_config(*overrides: str) -> str:
    """The config a `collapse run` with these overrides would record, without validating it."""
    from omegaconf import OmegaConf

    from collapse_cli.compose import composing

    with composing() as node:
        return OmegaConf.to_yaml(node(list(overrides)))


def write_run_folder(folder: Path, config: str, files: dict[str, str]) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(config)
    for name, content in files.items():
        (folder / name).write_text(content)


def write_inputs(folder: Path) -> None:
    (folder / "adir").mkdir()
    # Run folders as an older version, an editor or a crash might leave them.
    write_run_folder(folder / "negative_seed_run", composed_config("seed=-1"), {"status.json": '{"state": "failed"}'})
    write_run_folder(folder / "garbled_run", "{{ not: yaml", {})
    write_run_folder(folder / "bad_status_run", "seed: 0\n", {"status.json": "{oops", "metrics.jsonl": ""})
    write_run_folder(folder / "list_metrics_run", "seed: 0\n", {"metrics.jsonl": "[1, 2]\n"})
    # Damaged run folders (issue #21): each file compare, show and resume read, broken in each way.
    for name, files in DAMAGED_FOLDERS.items():
        write_run_folder(folder / name, "seed: 0\n", {"metrics.jsonl": "", **files})
    (folder / "status_dir_run" / "status.json").mkdir()
    (folder / "metrics_dir_run" / "metrics.jsonl").unlink()
    (folder / "metrics_dir_run" / "metrics.jsonl").mkdir()
    (folder / "status_binary_run" / "status.json").write_bytes(b"\xff\xfe{}")
    (folder / "empty_config_run" / ".hydra" / "config.yaml").write_text("")
    (folder / "small.txt").write_text("hello world\n\nfoo bar\n")
    (folder / "empty.txt").write_text("")
    (folder / "binary.txt").write_bytes(b"some text\x00\x01\x02 more")
    (folder / "latin1.txt").write_bytes("café au lait\n".encode("latin-1"))
    words = [f"w{i}" for i in range(200)]
    docs = [" ".join(words[(d * 7 + k) % 200] for k in range(50)) for d in range(60)]
    (folder / "big.txt").write_text("\n\n".join(docs))


FAILED = '{"state": "failed"}'
DAMAGED_FOLDERS = {"status_list_run": {"status.json": "[1, 2]"}, "status_null_run": {"status.json": "null"},
                   "status_binary_run": {}, "status_dir_run": {}, "metrics_dir_run": {"status.json": FAILED},
                   "metrics_garbage_run": {"status.json": FAILED, "metrics.jsonl": '{"generation": 0}\ngarbage{\n'},
                   "summary_list_run": {"status.json": '{"state": "finished"}', "summary.json": "[]",
                                        "metrics.jsonl": '{"generation": 0}\n'},
                   "empty_config_run": {"status.json": FAILED},
                   "config_shape_run": {"status.json": FAILED, "config.yaml": "model: 5\n"},
                   "repeated_generation_run": {"status.json": FAILED,
                                               "metrics.jsonl": '{"generation": 0}\n{"generation": 0}\n'}}
GMM = ["model=gmm", "dataset=gaussian"]
VAE = ["model=vae", "dataset=digits"]


def text(train: str, test: str = "big.txt") -> list[str]:
    return ["dataset=text", f"dataset.train={{tmp}}/{train}", f"dataset.test={{tmp}}/{test}"]


# (id, arguments after `collapse`, strings the message must contain, where it is caught)
CASES = [
    ("unknown-group-option", ["run", "model=nope"], ["model/nope", "tiny"], PREFLIGHT),
    ("unknown-dataset-option", ["run", "dataset=nope"], ["dataset/nope", "builtin"], PREFLIGHT),
    ("unknown-key", ["run", "foo=1"], ["'foo'"], PREFLIGHT),
    ("unknown-nested-key", ["run", "model.nope=1"], ["model.nope"], PREFLIGHT),
    ("added-unknown-key", ["run", "+foo=1"], ["foo", "no such key"], PREFLIGHT),
    ("mix-not-a-number", ["run", "mix=abc"], ["mix=abc", "Float"], PREFLIGHT),
    ("generations-not-an-int", ["run", "generations=1.5"], ["generations=1.5", "Integer"], PREFLIGHT),
    ("mix-above-one", ["run", "mix=1.5"], ["mix=1.5"], PREFLIGHT),
    ("mix-negative", ["run", "mix=-0.1"], ["mix=-0.1"], PREFLIGHT),
    ("zero-generations", ["run", "generations=0"], ["generations=0"], PREFLIGHT),
    ("negative-batch", ["run", "train.batch_size=-1"], ["train.batch_size=-1"], PREFLIGHT),
    ("zero-epochs", ["run", "train.epochs=0"], ["train.epochs=0"], PREFLIGHT),
    ("negative-tokens", ["run", "dataset.train_tokens=-5"], ["dataset.train_tokens=-5"], PREFLIGHT),
    ("sweep-without-multirun", ["run", "mix=0,1"], ["mix=0,1", "--multirun"], PREFLIGHT),
    ("bad-value-in-a-later-sweep-job", ["run", "-m", "mix=0,1.5"], ["mix=1.5"], PREFLIGHT),
    ("text-without-files", ["run", "dataset=text"], ["dataset.train"], PREFLIGHT),
    ("missing-text-file", ["run", *text("missing.txt")], ["dataset.train=", "missing.txt", "no such file"], PREFLIGHT),
    ("empty-text-file", ["run", *text("empty.txt")], ["dataset.train=", "empty.txt", "empty"], PREFLIGHT),
    ("binary-text-file", ["run", *text("binary.txt")], ["dataset.train=", "binary.txt", "binary"], RUNTIME),
    ("non-utf8-text-file", ["run", *text("latin1.txt")], ["dataset.train=", "latin1.txt", "UTF-8"], RUNTIME),
    ("corpus-below-one-block", ["run", *text("small.txt")], ["dataset.train", "train.block_size=64"], RUNTIME),
    ("block-above-max-positions", ["run", "model.max_positions=32", "train.block_size=64"],
     ["train.block_size=64", "32"], PREFLIGHT),
    ("prompt-plus-new-above-max-positions", ["run", "model.max_positions=70"],
     ["generate.prompt_tokens", "generate.new_tokens", "80", "70"], PREFLIGHT),
    ("new-tokens-not-a-block", ["run", "generate.new_tokens=32"], ["generate.new_tokens=32", "train.block_size"],
     PREFLIGHT),
    ("fresh-with-no-real-data", ["run", "regime=fresh", "mix=0"], ["regime=fresh", "mix"], PREFLIGHT),
    ("accumulate-with-no-real-data", ["run", "regime=accumulate", "mix=0"], ["regime=accumulate", "mix=1"], PREFLIGHT),
    # TINY's real pool holds 62 blocks; N=50 plus one unseen share of 25 needs 75.
    ("fresh-pool-exhausted", ["run", "regime=fresh", "mix=0.5", "dataset.max_train_blocks=50"],
     ["regime=fresh", "75", "62", "dataset.max_train_blocks"], RUNTIME),
    ("unreachable-hub-model", ["run", "model=opt125m"], ["facebook/opt-125m", "model.path="], RUNTIME),
    ("unreachable-hub-dataset", ["run", "dataset=wikitext2"], ["dataset=wikitext2", "dataset=text"], RUNTIME),
    ("missing-model-folder", ["run", "model.path=/nonexistent"], ["model.path=/nonexistent"], PREFLIGHT),
    ("cuda-on-a-cpu-machine", ["run", "device=cuda"], ["device=cuda"], PREFLIGHT),
    ("top-p-zero", ["run", "generate.top_p=0"], ["generate.top_p"], PREFLIGHT),
    ("curate-fraction-above-one", ["run", "curate.ppl_drop_low=1.5"], ["curate.ppl_drop_low"], PREFLIGHT),
    # A family's model with another family's data or text-only curation (issue #12).
    ("gmm-with-text-data", ["run", "model=gmm", "dataset=wikitext2"],
     ["model.family=gmm", "dataset=gaussian", "not dataset=wikitext2"], PREFLIGHT),
    ("lm-with-digits", ["run", "dataset=digits"], ["model.family=lm", "not dataset=digits"], PREFLIGHT),
    ("gmm-with-text-curation", ["run", "model=gmm", "dataset=gaussian", "curate=quality"],
     ["curate", "model.family=gmm", "curate=none"], PREFLIGHT),
    ("unknown-subcommand", ["frobnicate"], ["frobnicate"], PREFLIGHT),
    ("resume-a-non-run-folder", ["resume", "{tmp}"], ["not a run folder"], PREFLIGHT),
    # Seeds feed numpy's SeedSequence (non-negative) and torch.manual_seed: checked at the door, resume included.
    ("negative-seed", ["run", "seed=-1"], ["seed=-1", "from 0"], PREFLIGHT),
    ("negative-seed-in-a-sweep", ["run", "-m", "seed=0,-1"], ["seed=-1"], PREFLIGHT),
    ("huge-seed", ["run", "seed=4294967296"], ["seed=4294967296"], PREFLIGHT),
    ("negative-dataset-seed", ["run", "dataset.seed=-1"], ["dataset.seed=-1"], PREFLIGHT),
    ("resume-a-run-with-a-negative-seed", ["resume", "{tmp}/negative_seed_run"], ["seed=-1"], PREFLIGHT),
    # The run and sweep folders are checked before Hydra tries to make them.
    ("run-dir-under-proc", ["run", "hydra.run.dir=/proc/x/y"], ["hydra.run.dir=/proc/x/y", "cannot create"],
     PREFLIGHT),
    ("run-dir-is-a-file", ["run", "hydra.run.dir={tmp}/small.txt"], ["hydra.run.dir=", "is a file"], PREFLIGHT),
    ("run-dir-below-a-file", ["run", "hydra.run.dir={tmp}/small.txt/run"], ["small.txt is a file"], PREFLIGHT),
    ("empty-run-dir", ["run", "hydra.run.dir="], ["hydra.run.dir is empty"], PREFLIGHT),
    ("sweep-dir-is-a-file", ["run", "-m", "seed=0,1", "hydra.sweep.dir={tmp}/small.txt"],
     ["hydra.sweep.dir=", "is a file"], PREFLIGHT),
    ("run-dir-with-unicode-unquoted", ["run", "hydra.run.dir={tmp}/ü"], ["hydra.run.dir=", "quote"], PREFLIGHT),
    # Numbers out of range, wrong types, empty strings, unicode.
    ("huge-generations", ["run", "generations=100000000000"], ["generations=100000000000"], PREFLIGHT),
    ("zero-bootstrap", ["run", "metrics.bootstrap=0"], ["metrics.bootstrap=0"], PREFLIGHT),
    ("negative-self-bleu-sample", ["run", "metrics.self_bleu_sample=-1"], ["metrics.self_bleu_sample=-1"],
     PREFLIGHT),
    ("nan-learning-rate", ["run", "train.lr=nan"], ["train.lr=nan"], PREFLIGHT),
    ("bool-for-a-float", ["run", "mix=true"], ["mix=true", "Float"], PREFLIGHT),
    ("empty-model-path", ["run", "model.path="], ["model.path", "empty"], PREFLIGHT),
    ("empty-regime", ["run", "regime="], ["regime=", "Invalid value ''", "replace, accumulate"], PREFLIGHT),
    ("unicode-value-unquoted", ["run", "regime=ünï"], ["regime=ünï", "quote"], PREFLIGHT),
    ("unbalanced-override", ["run", "mix=0.1)"], ["mix=0.1)"], PREFLIGHT),
    # Paths of the wrong kind.
    ("folder-as-text-file", ["run", *text("adir")], ["dataset.train=", "adir", "a folder"], PREFLIGHT),
    ("file-as-model-folder", ["run", "model.path={tmp}/small.txt"], ["model.path=", "no such folder"], PREFLIGHT),
    ("folder-without-a-tokenizer", ["run", "model.tokenizer={tmp}/adir"], ["model.tokenizer=", "adir"], RUNTIME),
    # Flags Hydra does not know, or without their value.
    ("unknown-flag", ["run", "--bogus-flag"], ["--bogus-flag"], PREFLIGHT),
    ("flag-without-value", ["run", "--cfg"], ["--cfg", "value"], PREFLIGHT),
    # compare, show and resume on things that are not (sound) run folders.
    ("compare-a-file", ["compare", "{tmp}/small.txt"], ["small.txt", "no run folders"], PREFLIGHT),
    ("compare-a-garbled-status", ["compare", "{tmp}/bad_status_run"], ["status.json", "not valid JSON"], PREFLIGHT),
    ("compare-wrong-shaped-metrics", ["compare", "{tmp}/list_metrics_run"], ["metrics.jsonl", "line 1"], PREFLIGHT),
    ("show-nonsense", ["show", "nonsense"], ["nonsense", "no such file"], PREFLIGHT),
    ("show-without-a-folder", ["show"], ["RUN_DIR"], PREFLIGHT),
    ("resume-a-garbled-config", ["resume", "{tmp}/garbled_run"], [".hydra/config.yaml", "not a run configuration"],
     PREFLIGHT),
    # Issue #21. Non-finite and huge values, in every family (tests/test_config.py walks every numeric key).
    ("gmm-reg-covar-inf", ["run", *GMM, "model.reg_covar=inf"], ["model.reg_covar=inf", "finite"], PREFLIGHT),
    ("gmm-tol-inf", ["run", *GMM, "model.tol=inf"], ["model.tol=inf", "finite"], PREFLIGHT),
    ("gmm-means-inf", ["run", *GMM, "dataset.means=[[inf,0.0]]"], ["dataset.means[0][0]=inf"], PREFLIGHT),
    ("gmm-means-far", ["run", *GMM, "dataset.means=[[1e20,0.0]]"], ["dataset.means", "scale them down"],
     PREFLIGHT),
    ("float-beyond-float32", ["run", *VAE, "train.lr=1e39"], ["train.lr=1e+39", "float32"], PREFLIGHT),
    ("gmm-huge-n-train", ["run", *GMM, "dataset.n_train=100000000000"], ["dataset.n_train=100000000000", "GiB"],
     PREFLIGHT),
    ("gmm-huge-figure-generations", ["run", *GMM, "model.figure_generations=100000000000"],
     ["model.figure_generations=100000000000", "100"], PREFLIGHT),
    ("gmm-negative-data-seed", ["run", *GMM, "dataset.seed=-1"], ["dataset.seed=-1"], PREFLIGHT),
    ("gmm-ints-for-floats-still-checked", ["run", *GMM, "dataset.means=[[-2,0],[2,0]]"],
     ["dataset.weights/means/covariances", "one per weight"], PREFLIGHT),
    ("vae-huge-hidden", ["run", *VAE, "model.hidden=1000000000000"], ["model.hidden=1000000000000", "GiB"],
     PREFLIGHT),
    ("vae-huge-nll-samples", ["run", *VAE, "model.nll_samples=100000000"], ["model.nll_samples=100000000", "GiB"],
     PREFLIGHT),
    ("vae-pixel-std-inf", ["run", *VAE, "model.pixel_std=inf"], ["model.pixel_std=inf", "finite"], PREFLIGHT),
    ("vae-no-training-images", ["run", *VAE, "dataset.test_fraction=0.9999"],
     ["dataset.test_fraction=0.9999", "0 training", "0.012 to 0.944"], PREFLIGHT),
    ("vae-no-test-images", ["run", *VAE, "dataset.test_fraction=0.0001"],
     ["dataset.test_fraction=0.0001", "0 test", "0.012 to 0.944"], PREFLIGHT),
    ("vae-negative-data-seed", ["run", *VAE, "dataset.seed=-1"], ["dataset.seed=-1"], PREFLIGHT),
    ("vae-diverging", ["run", *VAE, "train.lr=1e6", "generations=1", "train.epochs=1"],
     ["generation 0: training loss became", "train.lr="], RUNTIME),
    ("weight-decay-inf-is-not-the-learning-rate", ["run", "train.weight_decay=inf"],
     ["train.weight_decay=inf", "finite"], PREFLIGHT),
    ("lm-huge-hidden", ["run", "model.hidden_size=1000000000"], ["model.hidden_size=1000000000", "GiB"], PREFLIGHT),
    ("lm-huge-corpus", ["run", "dataset.train_tokens=1000000000000"], ["train_tokens=1000000000000", "GiB"],
     PREFLIGHT),
    ("huge-bootstrap", ["run", "metrics.bootstrap=100000000"], ["metrics.bootstrap=100000000"], PREFLIGHT),
    ("huge-zipf", ["run", "dataset.zipf_exponent=1e11"], ["dataset.zipf_exponent"], PREFLIGHT),
    ("ngram-longer-than-a-block", ["run", "curate.repetition_n=100000000000"], ["curate.repetition_n", "block_size"],
     PREFLIGHT),
    ("nproc-above-the-cores", ["run", "nproc=100000", "device=cpu"], ["nproc=100000", "cores"], PREFLIGHT),
    ("empty-literal-separator", ["run", "dataset.doc_separator=literal:"], ["dataset.doc_separator=literal:"],
     PREFLIGHT),
    ("proc-file-as-text", ["run", "dataset=text", "dataset.train=/proc/cpuinfo", "dataset.test={tmp}/big.txt"],
     ["dataset.train=/proc/cpuinfo", "virtual file"], PREFLIGHT),
    ("device-as-text", ["run", "dataset=text", "dataset.train=/dev/null", "dataset.test={tmp}/big.txt"],
     ["dataset.train=/dev/null", "not a regular file"], PREFLIGHT),
    ("disk-below-the-minimum", ["run", "min_free_disk_mb=1000000000000"], ["hydra.run.dir", "MiB free"], PREFLIGHT),
    # Damaged run folders: one line naming the file and why, in compare, show and resume alike.
    *[(f"{command}-{name}", [command, f"{{tmp}}/{name}"], [f"{name}/{file}", "damaged", why], PREFLIGHT)
      for command in ("compare", "show", "resume")
      for name, file, why in [("status_list_run", "status.json", "JSON list"),
                              ("status_null_run", "status.json", "JSON null"),
                              ("status_binary_run", "status.json", "not UTF-8"),
                              ("status_dir_run", "status.json", "folder")]],
    *[(f"{command}-{name}", [command, f"{{tmp}}/{name}"], [f"{name}/{file}", "damaged", why], PREFLIGHT)
      for command in ("compare", "show")
      for name, file, why in [("metrics_dir_run", "metrics.jsonl", "folder"),
                              ("metrics_garbage_run", "metrics.jsonl", "line 2"),
                              ("summary_list_run", "summary.json", "JSON list"),
                              ("config_shape_run", "config.yaml", "`model` holds 5"),
                              ("repeated_generation_run", "metrics.jsonl", "line 2 repeats")]],
    ("run-into-a-damaged-folder", ["run", *GMM, "hydra.run.dir={tmp}/status_null_run"],
     ["status_null_run/status.json", "damaged", "JSON null"], PREFLIGHT),
    ("resume-metrics-dir", ["resume", "{tmp}/metrics_dir_run"], ["metrics_dir_run/metrics.jsonl", "folder"],
     PREFLIGHT),
    ("resume-an-empty-config", ["resume", "{tmp}/empty_config_run"], [".hydra/config.yaml", "empty", "collapse run"],
     PREFLIGHT),
    ("resume-with-another-model", ["resume", "{tmp}/negative_seed_run", "model=vae"],
     ["model=vae", "collapse run model=vae"], PREFLIGHT),
    ("resume-with-another-family", ["resume", "{tmp}/negative_seed_run", "model.family=gmm"],
     ["model.family=gmm", "model.family=lm"], PREFLIGHT),
]


def one_error_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("collapse: error: ")
    return lines[0]


@pytest.mark.parametrize("args,needles,stage", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.slow
def test_bad_input_gives_one_line_and_exit_2(tmp_path: Path, args: list[str], needles: list[str], stage: str):
    write_inputs(tmp_path)
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    if args[0] == "run" and not set(args) & OTHER_FAMILIES:  # TINY's keys are the LM's
        args = ["run", *TINY, *args[1:]]
    # No CUDA, whatever the machine: device=cuda must fail the same way everywhere. (Offline hub attempts
    # must fail fast rather than retry for minutes: the timeout turns a hang into a failure.)
    result = run_collapse(args, cwd=tmp_path, timeout=120, env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    line = one_error_line(result)
    for needle in needles:
        assert needle in line, (needle, line)

    outputs = tmp_path / "outputs"
    assert not outputs.exists() or finished_runs(outputs) == []
    if stage == PREFLIGHT:
        assert not outputs.exists(), list(outputs.rglob("*"))
    else:
        (run,) = (outputs / "runs").iterdir()
        status = read_status(run)
        assert status["state"] == "failed" and status["reason"] == line.removeprefix("collapse: error: ")
        assert not list(run.glob("gen_*/DONE"))


@pytest.mark.slow
def test_diverging_run_names_generation_and_step_and_can_resume(tmp_path: Path, capsys):
    result = run_collapse(["run", *TINY, "train.lr=1e6"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result)
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    # The loss really became non-finite; the message says where and how to go on.
    match = re.search(r"generation 0: training loss became (nan|inf|-inf) at step (\d+)", line)
    assert match, line
    assert int(match.group(2)) >= 1
    assert f"collapse resume {run} train.lr=" in line
    status = read_status(run)
    assert status["state"] == "failed" and status["reason"] == line.removeprefix("collapse: error: ")

    # Bad resume overrides are named and change nothing.
    assert run_in_process(["resume", str(run), "train.lr=abc"]) == 2
    assert run_in_process(["resume", str(run), "train.learning_rate=1"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "train.lr" in errors[0] and "train.learning_rate" in errors[1]
    assert read_status(run)["state"] == "failed" and "lr: 1000000.0" in (run / ".hydra" / "config.yaml").read_text()

    # Resuming with a sane learning rate finishes the run and records the new value.
    assert run_in_process(["resume", str(run), "train.lr=3e-3"]) == 0
    assert read_status(run)["state"] == "finished"
    assert [row["generation"] for row in read_metrics(run)] == [0, 1]
    assert "lr: 0.003" in (run / ".hydra" / "config.yaml").read_text()


# Typed choices (StrEnums in config.py): OmegaConf refuses them while composing, before any run folder.
CHOICES = [("regime=foo", "replace, accumulate, accumulate_subsample, fresh"), ("device=gpu", "auto, cpu, cuda"),
           ("checkpoints=some", "none, last, all"), ("train.init=x", "base, previous"),
           ("generate.prompt=x", "real, bos"), ("metrics.level=x", "fast, full"),
           ("curate.on_shortfall=x", "error, resample"),
           ("model.family=x", "categorical, diffusion, gan, gmm, kde, linreg, lm, vae"),
           ("train.schedule=x", "linear, cosine"), ("train.select=x", "last, best_valid")]


@pytest.mark.parametrize("override,choices", CHOICES, ids=[c[0] for c in CHOICES])
def test_bad_choice_names_the_key_and_the_choices(tmp_path: Path, capsys, monkeypatch, override: str, choices: str):
    monkeypatch.chdir(tmp_path)
    assert run_in_process(["run", override]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith("collapse: error: "), line
    assert override.split("=")[0] in line and choices in line, line
    assert not (tmp_path / "outputs").exists()


# --- launchers and disks that cannot start a run (issue #21) ----------------------------------------------


def test_a_launcher_without_the_slurm_extra_names_the_install(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_submitit_launcher", None)  # as if not installed
    for launcher, sweep in (("slurm", ["-m", "seed=0,1"]), ("local_gpus", ["-m", "seed=0,1"]), ("slurm", [])):
        assert run_in_process(["run", *sweep, *GMM, f"hydra/launcher={launcher}"]) == 2
        line = capsys.readouterr().err.strip()
        assert "\n" not in line and f'hydra/launcher={launcher} needs the slurm extra: pip install ".[slurm]"' in line
    assert not (tmp_path / "outputs").exists()


def test_slurm_off_a_cluster_is_one_line_before_any_job(tmp_path: Path, capsys, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the [slurm] extra is not installed")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun here, whatever the machine has
    assert run_in_process(["run", "-m", *GMM, "seed=0,1", "hydra/launcher=slurm"]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "hydra/launcher=slurm: no `srun` on this machine" in line
    assert not (tmp_path / "outputs").exists()


def full_disk_command(folder: Path, command: list[str]) -> list[str]:
    """`command` in a private mount namespace where `folder` is a 64 KiB tmpfs filled to the last byte:
    a real full disk, gone with the process (which lists the disk's files on stdout last). As root directly;
    otherwise as root of a user namespace."""
    script = (f'mount -t tmpfs -o size=64k tmpfs "{folder}" && cat /dev/zero > "{folder}/fill" 2>/dev/null; '
              f'"$@"; code=$?; ls -A "{folder}"; exit $code')
    as_root = [] if os.geteuid() == 0 else ["--map-root-user"]
    return ["unshare", *as_root, "--mount", "sh", "-c", script, "sh", *command]


@pytest.mark.slow
def test_a_disk_full_at_start_is_one_line_and_leaves_nothing(tmp_path: Path):
    import subprocess

    from conftest import collapse_command

    disk = tmp_path / "disk"
    disk.mkdir()
    probe = subprocess.run(full_disk_command(disk, ["df", "--output=avail", str(disk)]), capture_output=True,
                           text=True)
    assert probe.returncode == 0 and probe.stdout.split()[-2:] == ["0", "fill"], probe  # mounted, and full
    args = ["run", *GMM, "min_free_disk_mb=0", f"hydra.run.dir={disk}/run"]
    result = subprocess.run(full_disk_command(disk, [*collapse_command(), *args]), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result)
    assert f"hydra.run.dir={disk}/run: only 0 MiB free" in line and "free space" in line
    assert result.stdout.split()[-1:] == ["fill"]  # no run folder, no half-written .hydra/config.yaml
