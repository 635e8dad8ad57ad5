"""Shumailov et al.'s training details (lr schedule, best-validation selection, ppl_valid); the experiment configs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, is_finite_number, read_metrics, tiny_run

from collapse_cli.compose import composing, conf_dir, to_run_config
from collapse_cli.config import TrainConfig
from collapse_cli.families.lm.train import lr_at, train

EXPERIMENTS = sorted(p.stem for p in (Path(conf_dir()) / "experiment").glob("*.yaml"))
# The Shumailov LM configs this file holds to the paper's settings; every other preset is tested where its family
# is (test_gmm.py, test_linreg.py, test_diffusion.py, ...), and every preset composes (below): a family that ships a
# preset edits no list here.
LM_EXPERIMENTS = ["shumailov_10pct", "shumailov_no_data", "shumailov_smoke"]


@pytest.fixture(scope="module")
def wiki_files(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("wiki")
    for name in ("train", "valid", "test"):
        (folder / f"wiki.{name}.raw").write_text(f" = {name} = \n\n a first paragraph \n\n a second one \n")
    return [f"dataset.{name}={folder / f'wiki.{name}.raw'}" for name in ("train", "valid", "test")]


# --- the schedule: hand-computed multipliers of the peak lr -------------------------------


def test_linear_schedule_values():
    # 10 steps, 2 of warm-up: 1/2, 2/2, then 1 - (step - 2) / 8 down to the floor.
    assert [lr_at(s, 10, 2) for s in (0, 1, 2, 6, 9)] == [0.5, 1.0, 1.0, 0.5, 0.125]
    assert lr_at(6, 10, 2, "linear", floor=0.1) == pytest.approx(0.1 + 0.9 * 0.5)


def test_cosine_schedule_values():
    # progress = (step - 2) / 8; multiplier = floor + (1 - floor) * (1 + cos(pi * progress)) / 2
    assert lr_at(0, 10, 2, "cosine") == 0.5 and lr_at(2, 10, 2, "cosine") == 1.0
    assert lr_at(4, 10, 2, "cosine") == pytest.approx((1 + math.sqrt(0.5)) / 2)  # cos(pi/4)
    assert lr_at(6, 10, 2, "cosine") == pytest.approx(0.5)  # cos(pi/2) = 0
    assert lr_at(8, 10, 2, "cosine") == pytest.approx((1 - math.sqrt(0.5)) / 2)
    floor = 1e-6 / 2e-5  # Shumailov et al.: 2e-5 annealed to 1e-6
    assert lr_at(6, 10, 2, "cosine", floor) == pytest.approx(0.05 + 0.95 * 0.5)
    assert lr_at(10, 10, 2, "cosine", floor) == pytest.approx(floor)  # the end of the schedule is min_lr


# --- training with a validation hook --------------------------------------------------------


def tiny_model(seed: int = 0) -> torch.nn.Module:
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
                       max_position_embeddings=32, word_embed_proj_dim=16)
    torch.manual_seed(seed)
    return OPTForCausalLM(config)


def blocks(seed: int, n: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50, size=(n, 12), dtype=np.int64)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("scripted", [[3.0, 1.0, 2.0], [math.nan, 1.0, 2.0]], ids=["best-middle", "nan-first"])
def test_best_valid_restores_the_best_epochs_weights(scripted: list[float]):
    """Validation losses 3 (or nan), 1, 2: the model ends with exactly the weights it had after epoch 2."""
    model, seen = tiny_model(), []

    def validate(m: torch.nn.Module, epoch: int) -> float:
        assert epoch == len(seen) + 1
        seen.append(snapshot(m))
        return scripted[len(seen) - 1]

    cfg = TrainConfig(epochs=3, lr=1e-2, batch_size=8, select="best_valid", schedule="cosine", min_lr=1e-4)
    stats = train(model, blocks(0), cfg, seed=0, device=torch.device("cpu"), generation=0, validate=validate)
    assert len(seen) == 3 and stats.kept_epoch == 2 and stats.valid_loss == 1.0
    assert same_weights(snapshot(model), seen[1])
    assert not same_weights(seen[1], seen[2])  # the last epoch really moved the weights
    assert not model.training


def test_best_valid_keeps_the_lowest_real_validation_loss():
    """With the real NLL: the kept model scores the lowest recorded loss, and the last epoch is worse."""
    from collapse_cli.families.lm.evaluate import token_nll

    valid, losses = blocks(1, 8), []

    def validate(m: torch.nn.Module, epoch: int) -> float:
        losses.append(float(token_nll(m, valid, 8, torch.device("cpu")).mean(dtype=np.float64)))
        return losses[-1]

    # Memorising 4 blocks of random tokens at a high lr: the loss on other random blocks rises epoch after epoch.
    model = tiny_model()
    cfg = TrainConfig(epochs=4, lr=3e-2, batch_size=4, warmup_ratio=0.0, select="best_valid")
    stats = train(model, blocks(0, 4), cfg, seed=0, device=torch.device("cpu"), generation=0, validate=validate)
    best = int(np.argmin(losses))
    assert stats.kept_epoch == best + 1 < 4 and losses[-1] > losses[best]
    assert validate(model, stats.kept_epoch) == pytest.approx(losses[best], rel=1e-6)


def test_select_last_validates_once_and_keeps_the_last_epoch():
    model, calls = tiny_model(), []

    def validate(m: torch.nn.Module, epoch: int) -> float:
        assert epoch == 3  # the last epoch alone
        calls.append(snapshot(m))
        return 1.0

    cfg = TrainConfig(epochs=3, lr=1e-2, batch_size=8)
    stats = train(model, blocks(0), cfg, seed=0, device=torch.device("cpu"), generation=0, validate=validate)
    assert len(calls) == 1 and stats.kept_epoch == 3 and same_weights(snapshot(model), calls[0])


@pytest.mark.slow
def test_ppl_valid_is_measured(tmp_path: Path):
    run = tiny_run(tmp_path / "run", "train.epochs=2", "train.select=best_valid", "train.schedule=cosine",
                   "train.min_lr=1e-4")
    rows = read_metrics(run)
    assert len(rows) == 2
    for row in rows:
        assert is_finite_number(row["ppl_valid"]) and row["ppl_valid"] > 1 and row["kept_epoch"] in (1, 2)


@pytest.mark.slow  # starts `collapse run` in-process
def test_without_a_valid_split_selection_is_off_and_said(tmp_path: Path, capsys, wiki_files):
    from conftest import run_in_process

    train_file, _, test_file = wiki_files
    code = run_in_process(["run", *TINY, "dataset=text", train_file, test_file, "model.bpe_vocab_size=300",
                           "train.block_size=8", "generate.new_tokens=8", "generate.prompt_tokens=4",
                           "train.select=best_valid", "dry_run=true", f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 0
    out = capsys.readouterr()
    assert "train.select=best_valid: the dataset has no validation split" in out.out + out.err


def test_schedule_and_selection_values_are_checked(compose):
    from collapse_cli.errors import CollapseError

    # schedule and select are enums: OmegaConf refuses other values while composing, naming the choices.
    for override, choices in (("train.schedule=step", "linear, cosine"), ("train.select=best", "last, best_valid")):
        with pytest.raises(Exception) as err:
            compose([override])
        assert override in str(err.value) and choices in str(err.value.__cause__)
    with pytest.raises(CollapseError, match="train.min_lr"):
        compose(["train.min_lr=1"])


# --- the experiment configs -----------------------------------------------------------------


def test_experiments_are_shipped():
    assert set(LM_EXPERIMENTS) <= set(EXPERIMENTS)


def test_every_shipped_preset_composes_into_a_valid_run():
    """One override each: conf/experiment/NAME.yaml alone gives a run that passes every check (composed in one
    Hydra context: a context per preset costs a second each)."""
    with composing() as node:
        for name in EXPERIMENTS:
            assert to_run_config(node([f"+experiment={name}"])).generations >= 1, name


@pytest.mark.parametrize("name", LM_EXPERIMENTS)
def test_every_experiment_composes(compose, name: str, wiki_files):
    cfg = compose([f"+experiment={name}"])
    # Shumailov et al.: lr 2e-5 cosine-annealed to 1e-6, best-validation epoch, 64-token blocks in batches of 128,
    # beam search.
    t = cfg.train
    assert (t.lr, t.min_lr, t.schedule, t.select, t.block_size, t.batch_size) == (
        2e-5, 1e-6, "cosine", "best_valid", 64, 128)
    assert cfg.generate.preset == "shumailov" and cfg.generate.num_beams == 5
    assert cfg.dataset.name == "wikitext2"
    # Offline: the local model and local text files replace the hub.
    offline = compose([f"+experiment={name}", "model=smollm2", *wiki_files])
    assert offline.model.name == "smollm2" and offline.dataset.valid.endswith("wiki.valid.raw")
    assert offline.train.schedule == "cosine" and offline.train.epochs == t.epochs and offline.mix == cfg.mix
    assert offline.train.batch_size == 128


def test_experiments_set_the_papers_settings(compose):
    no_data, kept = compose(["+experiment=shumailov_no_data"]), compose(["+experiment=shumailov_10pct"])
    assert no_data.model.name == "facebook/opt-125m" and kept.model.name == "facebook/opt-125m"
    assert (no_data.train.epochs, no_data.mix, no_data.generations) == (5, 0.0, 9)
    assert (kept.train.epochs, kept.mix, kept.generations) == (10, 0.1, 9)
    smoke = compose(["+experiment=shumailov_smoke"])
    assert smoke.model.name == "smollm2" and smoke.generations == 2 and smoke.dataset.max_train_blocks == 2048
    assert compose(["+experiment=shumailov_smoke", "model=opt125m"]).model.name == "facebook/opt-125m"
