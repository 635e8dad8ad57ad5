"""`collapse run` end to end on the CPU (issue #2): folder layout, sweeps, dry runs, local models, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import (
    TINY,
    finished_runs,
    is_finite_number,
    read_metrics,
    read_status,
    run_in_process,
    stable,
    start_collapse,
    tiny_run,
)

from collapse_cli.families.lm.builtin import build_language, make_tokenizer
from collapse_cli.families.lm.corpus_files import load_ids, read_texts_gz

HEADLINE_KEYS = ("generation", "ppl_test", "tail_coverage", "train_tokens", "wall_time_s")


def tiny_language():
    """The builtin language TINY configures (dataset.vocab_words=300, the default dataset seed)."""
    return build_language(300, 1.1, 8, 0.6, 0)


@pytest.mark.slow
def test_run_folder_layout(tiny_finished: Path):
    run = tiny_finished
    assert (run / ".hydra" / "config.yaml").is_file() and (run / ".hydra" / "overrides.yaml").is_file()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["generations"] == 1 and config["model"]["hidden_size"] == 32
    assert read_status(run)["state"] == "finished"

    rows = read_metrics(run)
    assert [row["generation"] for row in rows] == [0, 1]  # generations + 1 lines, in order
    for row in rows:
        for key in HEADLINE_KEYS:
            assert is_finite_number(row[key]), (key, row.get(key))
    assert rows[0]["train_tokens"] > 0

    summary = json.loads((run / "summary.json").read_text())
    assert summary["generations"] == 1
    assert summary["ppl_test_first"] == rows[0]["ppl_test"] and summary["ppl_test_last"] == rows[1]["ppl_test"]


@pytest.mark.slow
def test_generation_folders_hold_readable_synthetic_text(tiny_finished: Path):
    vocabulary = set(tiny_language().vocab)
    n_real = json.loads((tiny_finished / "gen_000" / "composition.json").read_text())["by_origin"]["real"]
    assert n_real > 0
    for g in (0, 1):
        folder = tiny_finished / f"gen_{g:03d}"
        assert (folder / "DONE").exists()
        composition = json.loads((folder / "composition.json").read_text())
        assert composition["generation"] == g and composition["blocks"] == n_real
        texts = read_texts_gz(folder / "synthetic.txt.gz")
        # One synthetic sequence per real training block, each one block (64 word tokens) long.
        assert len(texts) == n_real
        assert all(len(text.split()) == 64 for text in texts)
        assert all(word in vocabulary for text in texts for word in text.split())
        ids = load_ids(folder / "synthetic_ids.npz")
        assert ids.shape == (n_real, 64)


@pytest.mark.slow
def test_multirun_makes_one_folder_per_value(tmp_path: Path):
    sweep = tmp_path / "sweep"
    assert run_in_process(["run", "-m", *TINY, "mix=0,1", f"hydra.sweep.dir={sweep}"]) == 0
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0", "1"]
    mixes = []
    for run in runs:
        assert read_status(run)["state"] == "finished"
        assert len(read_metrics(run)) == 2
        mixes.append(yaml.safe_load((run / "config.yaml").read_text())["mix"])
    assert mixes == [0.0, 1.0]
    # mix=1 trains generation 1 on real data only, mix=0 on synthetic data only.
    assert read_metrics(runs[0])[1]["train_real_blocks"] == 0
    assert read_metrics(runs[1])[1]["train_synthetic_blocks"] == 0


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path: Path, capsys, tiny_finished: Path):
    run = tmp_path / "dry"
    assert run_in_process(["run", *TINY, "mix=0.25", "dry_run=true", "device=cpu", f"hydra.run.dir={run}"]) == 0
    out = capsys.readouterr().out
    n_real = json.loads((tiny_finished / "gen_000" / "composition.json").read_text())["blocks"]
    assert "on cpu" in out
    assert "M parameters" in out
    assert "decoder: own tree-cache decoder (opt)" in out
    assert "each generation trains on 25% real / 75% synthetic data" in out
    # The plan table: generation 1 trains on N blocks (N*64 tokens), round(N/4) of them real.
    plan_rows = [line.split() for line in out.splitlines() if line.count("│") >= 5]
    numbers = [[cell for cell in row if cell.isdigit()] for row in plan_rows]
    assert ["0", str(n_real), str(n_real * 64), str(n_real), "0"] in numbers
    n_kept = round(0.25 * n_real)
    assert ["1", str(n_real), str(n_real * 64), str(n_kept), str(n_real - n_kept)] in numbers
    assert not run.exists()


def test_cfg_job_prints_the_config_and_makes_no_folder(tmp_path: Path, capsys):
    run = tmp_path / "cfg"
    assert run_in_process(["run", "--cfg", "job", *TINY, "mix=0.3", f"hydra.run.dir={run}"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["mix"] == 0.3 and printed["generations"] == 1 and printed["model"]["name"] == "tiny"
    assert not run.exists()


@pytest.mark.slow
def test_model_path_wins_over_an_unreachable_hub_id(tmp_path: Path):
    from transformers import OPTConfig, OPTForCausalLM

    tokenizer = make_tokenizer(tiny_language())
    config = OPTConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       ffn_dim=64, max_position_embeddings=128, word_embed_proj_dim=32,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    folder = tmp_path / "local_model"
    OPTForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    run = tmp_path / "run"
    # model=opt125m names facebook/opt-125m, which this machine cannot fetch: only the folder can work.
    tiny_run(run, "model=opt125m", f"model.path={folder}", "train.lr=1e-3")
    saved = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert saved["name"] == "facebook/opt-125m" and saved["path"] == str(folder)
    assert len(read_metrics(run)) == 2


@pytest.mark.slow
def test_text_dataset_run(tmp_path: Path):
    # Local files, no validation split: a BPE tokenizer is trained on the training file.
    # Words follow a Zipf law, as real text does, so the corpus has rare types (tail_coverage's subject).
    rng = np.random.default_rng(0)
    weights = 1 / np.arange(1, 501)
    for name in ("train", "test"):
        words = rng.choice(500, size=(40, 40), p=weights / weights.sum())
        docs = [" ".join(f"word{w}" for w in doc) for doc in words]
        (tmp_path / f"{name}.txt").write_text("\n\n".join(docs) + "\n")
    run = tiny_run(tmp_path / "run", "dataset=text", f"dataset.train={tmp_path / 'train.txt'}",
                   f"dataset.test={tmp_path / 'test.txt'}")
    rows = read_metrics(run)
    assert len(rows) == 2 and all(is_finite_number(row[key]) for row in rows for key in HEADLINE_KEYS)
    n_real = rows[0]["train_blocks"]
    texts = read_texts_gz(run / "gen_001" / "synthetic.txt.gz")
    assert len(texts) == n_real > 0 and any("word" in text for text in texts)


@pytest.mark.slow
def test_same_seed_same_metrics_other_seed_other_metrics(tmp_path: Path, tiny_finished: Path):
    again = tiny_run(tmp_path / "again")
    other = tiny_run(tmp_path / "other", "seed=1")
    assert stable(read_metrics(again)) == stable(read_metrics(tiny_finished))
    assert [r["ppl_test"] for r in read_metrics(other)] != [r["ppl_test"] for r in read_metrics(tiny_finished)]
    for g in (0, 1):
        name = f"gen_{g:03d}/synthetic_ids.npz"
        assert np.array_equal(load_ids(again / name), load_ids(tiny_finished / name))


@pytest.mark.slow
def test_runs_started_together_get_their_own_folders(tmp_path: Path):
    # The default hydra.run.dir is a per-second timestamp plus a random id: start two at once.
    procs = [start_collapse(["run", *TINY], cwd=tmp_path) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-2000:]
    folders = sorted((tmp_path / "outputs" / "runs").iterdir())
    assert len(folders) == 2, folders
    assert sorted(finished_runs(tmp_path / "outputs")) == folders


@pytest.mark.slow
def test_unconditional_prompts_previous_init_and_last_checkpoint(tmp_path):
    """generate.prompt=bos, train.init=previous and checkpoints=last together, on a real run."""
    from collapse_cli.families.lm.config import GenerateConfig
    from collapse_cli.families.lm.generate import prompts_for

    real = np.arange(12).reshape(3, 4)
    assert prompts_for(real, GenerateConfig(prompt="bos"), bos_id=7).tolist() == [[7], [7], [7]]
    real_prompts = prompts_for(real, GenerateConfig(prompt="real", prompt_tokens=2), bos_id=7)
    assert real_prompts.tolist() == [[0, 1], [4, 5], [8, 9]]

    run = tiny_run(tmp_path / "run", "generate.prompt=bos", "train.init=previous", "checkpoints=last")
    assert (run / "gen_001" / "model").is_dir()  # the last generation's weights stay
    assert not (run / "gen_000" / "model").exists()  # earlier ones go
    assert not (run / "reference").exists()  # the generation-0 copy is only kept while needed
    ids = load_ids(run / "gen_001/synthetic_ids.npz")
    assert ids.shape[1] == 64


@pytest.mark.slow
def test_previous_init_trains_each_generation_on_from_the_last_ones_weights(tmp_path):
    """Generation 2, retrained here from generation 1's saved weights, matches the run's generation 2;
    from generation 0's weights the same training ends elsewhere, so the check can tell them apart."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from collapse_cli.compose import to_run_config
    from collapse_cli.experiment.seeds import stage_seed
    from collapse_cli.families.lm.train import train

    run = tiny_run(tmp_path / "run", "train.init=previous", "checkpoints=all", "generations=2")
    cfg = to_run_config(OmegaConf.load(run / ".hydra" / "config.yaml"))
    origin = np.load(run / "gen_002" / "train_origin.npy")
    assert (origin[:, 0] == 1).all()  # mix=0, replace: generation 1's corpus only
    blocks = load_ids(run / "gen_001/synthetic_ids.npz")[origin[:, 1]].astype(np.int64)

    def retrained_from(generation: int) -> dict:
        model = AutoModelForCausalLM.from_pretrained(run / f"gen_{generation:03d}" / "model", dtype=torch.float32)
        train(model, blocks, cfg.train, stage_seed(cfg.seed, 2, "train"), torch.device("cpu"), 2)
        return model.state_dict()

    saved = AutoModelForCausalLM.from_pretrained(run / "gen_002" / "model", dtype=torch.float32).state_dict()
    same = lambda weights: all(torch.allclose(weights[k], saved[k], atol=1e-6) for k in saved)  # noqa: E731
    assert same(retrained_from(1))
    assert not same(retrained_from(0))
