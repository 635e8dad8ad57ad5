"""Every shipped config composes and validates; generation presets reach generate() as intended."""

from __future__ import annotations

import functools
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from collapse_cli.compose import composing, conf_dir, to_run_config
from collapse_cli.config import CurateConfig, RunConfig, TrainConfig
from collapse_cli.errors import CollapseError
from collapse_cli.families.base import get_family

GROUPS = ("model", "dataset", "generate", "metrics", "curate")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(conf_dir()) / group).glob("*.yaml"))


ALL_OPTIONS = [(group, option) for group in GROUPS for option in options(group)]


@pytest.fixture(scope="module")
def text_files(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("text")
    for name in ("train", "test"):
        (folder / f"{name}.txt").write_text("a first document\n\na second one\n")
    return [f"dataset.train={folder / 'train.txt'}", f"dataset.test={folder / 'test.txt'}"]


def test_every_group_has_options():
    for group in GROUPS:
        assert len(options(group)) >= 2, group
    assert ("generate", "shumailov") in ALL_OPTIONS and ("model", "opt125m") in ALL_OPTIONS


def option_value(group: str, option: str, key: str, default: str) -> str:
    return OmegaConf.load(Path(conf_dir()) / group / f"{option}.yaml").get(key, default)


def partner(group: str, option: str) -> list[str]:
    """The overrides that make a model or dataset option runnable: its family's first counterpart."""
    if group == "model":
        family = get_family(option_value("model", option, "family", "lm"))
        if family.name == "lm":
            return []
        # The first dataset option whose name the family reads (toy2d's name is its toy: moons, ring8, ...).
        return [next(f"dataset={data}" for data in options("dataset")
                     if option_value("dataset", data, "name", data) in family.datasets)]
    if group == "dataset":
        name = option_value("dataset", option, "name", option)
        for model in options("model"):
            family = get_family(option_value("model", model, "family", "lm"))
            if name in family.datasets:
                return [] if family.name == "lm" else [f"model={model}"]
    return []


@pytest.mark.parametrize("group,option", ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_every_shipped_option_composes(compose, group: str, option: str, text_files: list[str]):
    extra = text_files if (group, option) == ("dataset", "text") else []
    cfg = compose([f"{group}={option}", *extra, *partner(group, option)])
    assert isinstance(cfg, RunConfig)
    node = getattr(cfg, group)
    expected = {
        # tiny is built from its config; every other option names a hub model.
        "model": lambda: (getattr(node, "name", None) == "tiny") == (option == "tiny"),
        "dataset": lambda: node.name == option_value("dataset", option, "name", option),  # toy2d: name is the toy
        "generate": lambda: node.preset == option,
        "metrics": lambda: node.level == option,
        "curate": lambda: isinstance(node, CurateConfig),
    }[group]
    assert expected(), (group, option, node)
    # Interpolations resolved into typed values: lr follows the model, new_tokens the block size.
    assert cfg.train.lr == getattr(cfg.model, "lr", 1e-3)
    family = get_family(cfg.model.family)
    assert isinstance(cfg.model, family.model_schema)
    # The LM's generate group follows the block size; a family that declares no generate group gets none.
    assert (cfg.generate.new_tokens == cfg.train.block_size) if "generate" in family.schemas() else cfg.generate is None


def test_a_family_named_without_a_model_option_composes_its_schemas_defaults(compose):
    """model.family=X alone: X's dataclass defaults are the model and dataset, as for a family with no yaml."""
    family = get_family("vae")
    cfg = compose(["model.family=vae", "model.latent=4"])
    assert cfg.model == family.model_schema(latent=4) and cfg.dataset == family.dataset_schema()
    assert (cfg.train.epochs, cfg.train.lr) == (family.model_schema.epochs, family.model_schema.lr)  # the model's
    assert compose(["model.family=gmm", "model=gmm", "dataset=gaussian"]).model == get_family("gmm").model_schema()


def test_model_options_name_the_right_models(compose):
    assert compose(["model=opt125m"]).model.name == "facebook/opt-125m"
    assert compose(["model=gpt2"]).model.name == "gpt2"
    tiny = compose([])
    assert tiny.model.name == "tiny" and tiny.model.path is None and tiny.dataset.name == "builtin"


def test_text_dataset_without_files_is_refused(compose):
    with pytest.raises(CollapseError, match="dataset.train"):
        compose(["dataset=text"])


def test_overrides_reach_the_typed_config(compose):
    cfg = compose(["mix=0.1", "generations=3", "regime=accumulate", "train.block_size=32", "generate=top_k"])
    assert (cfg.mix, cfg.generations, cfg.regime) == (0.1, 3, "accumulate")
    assert cfg.train.block_size == 32 and cfg.generate.new_tokens == 32 and cfg.generate.top_k == 50


def test_added_keys_are_refused(compose):
    # `+key=value` gets past Hydra; the run must not silently ignore a misspelt key.
    with pytest.raises(CollapseError, match="generationz"):
        compose(["+generationz=3"])
    with pytest.raises(CollapseError, match="train.learning_rate"):
        compose(["+train.learning_rate=1e-4"])


def preset(compose, name: str):
    """A composed decoding preset; what each one decodes is tested in test_generate.py."""
    return compose([f"generate={name}"]).generate


def test_shumailov_preset_is_beam_search_with_repetition_penalty(compose):
    cfg = preset(compose, "shumailov")
    assert cfg.num_beams == 5 and cfg.do_sample is False and cfg.repetition_penalty == 3.0
    assert cfg.prompt_tokens == 64 and cfg.new_tokens == 64


def test_choices_are_typed_and_compare_as_words(compose):
    cfg = compose(["regime=fresh", "mix=0.1", "checkpoints=last", "train.init=previous", "generate.prompt=bos",
                    "metrics=full", "curate.on_shortfall=resample"])
    assert (cfg.regime, cfg.checkpoints, cfg.train.init) == ("fresh", "last", "previous")
    assert (cfg.generate.prompt, cfg.metrics.level, cfg.curate.on_shortfall) == ("bos", "full", "resample")
    assert f"{cfg.regime}" == "fresh"  # StrEnum: f-strings and JSON see the word, not Regime.fresh
    with pytest.raises(Exception) as err:
        compose(["regime=sometimes"])
    assert "expected one of [replace, accumulate" in str(err.value.__cause__)  # refused by OmegaConf itself


@pytest.mark.slow
def test_cfg_job_prints_every_key_of_the_lm_model(tmp_path: Path):
    # gpt2.yaml names three keys; its schema default (schema/model/lm) fills in the rest when composing.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "collapse_cli.cli", "run", "model=gpt2", "--cfg", "job"],
                         capture_output=True, text=True, check=True, cwd=Path(conf_dir()).parent).stdout
    model = OmegaConf.create(out).model
    assert model.name == "gpt2" and model.family == "lm" and "hidden_size" in model and "bpe_vocab_size" in model


def test_sampling_presets(compose):
    values = {name: (p.do_sample, p.num_beams, p.temperature, p.top_k, p.top_p, p.repetition_penalty)
              for name in ("greedy", "sample", "top_k", "top_p") for p in [preset(compose, name)]}
    assert values == {"greedy": (False, 1, 1.0, 0, 1.0, 1.0), "sample": (True, 1, 1.0, 0, 1.0, 1.0),
                      "top_k": (True, 1, 1.0, 50, 1.0, 1.0), "top_p": (True, 1, 1.0, 0, 0.9, 1.0)}


@pytest.mark.parametrize("group", ["model", "dataset"])
def test_a_wrong_option_is_offered_the_shipped_options_and_no_schema(group: str, capsys):
    from conftest import run_in_process

    assert run_in_process(["run", f"{group}=nonesuch", "dry_run=true"]) == 2
    shipped = ", ".join(sorted(p.stem for p in (Path(conf_dir()) / group).glob("*.yaml")))
    assert capsys.readouterr().err.strip().endswith(f"use one of {shipped}")


# --- every numeric key (issue #21): finite everywhere, and no size that cannot fit -----------------------

# Every builtin family, by its first model option and that option's dataset (a new family is walked unasked).
FAMILY_ARGS = {"lm": [], "gmm": ["model=gmm", "dataset=gaussian"], "vae": ["model=vae", "dataset=digits"]}
for _model in options("model"):
    _name = option_value("model", _model, "family", "lm")
    FAMILY_ARGS.setdefault(_name, [f"model={_model}", *partner("model", _model)])
# Ints that may be as large as one likes: caps (a cap above the data is the data), batch sizes (clipped to
# the data), and min_free_disk_mb (preflight compares it with the disk: tests/test_errors.py).
HUGE_IS_HARMLESS = {"min_free_disk_mb", "dataset.max_train_blocks", "dataset.max_test_blocks", "dataset.max_train",
                    "train.batch_size", "generate.batch_size", "metrics.eval_batch_size", "model.batch_size"}
# A model's defaults of train.* (conf/config.yaml interpolates them): the message names the key they feed.
FEEDS = {"model.epochs": "train.epochs", "model.batch_size": "train.batch_size", "model.lr": "train.lr"}
# Keys of the shared groups that the GMM and the VAE never read (they train by EM, or on no token blocks):
# outside their Family.reads, so unchecked. test_shared_keys_are_checked_only_where_the_family_reads_them.


def not_read_by(family_name: str) -> tuple[str, ...]:
    """Shared keys the family ignores (outside Family.reads; the text filters where it writes no text): unchecked."""
    family = get_family(family_name)
    unread = tuple(f"train.{spec.name}" for spec in fields(TrainConfig) if f"train.{spec.name}" not in family.reads)
    return unread + (() if family.curates else TEXT_FILTERS)


TEXT_FILTERS = ("curate.near_dedup_n", "curate.repetition_n")


@functools.cache
def composed_keys(family_name: str) -> frozenset[str]:
    """Dotted keys of the family's composed config (a combined schema's keys of another dataset are not there:
    `dataset.n_train` on dataset=digits is Hydra's own refusal, not the walker's)."""
    def walk(node: Any, prefix: str = "") -> list[str]:
        if not isinstance(node, dict):
            return [prefix[:-1]]
        return [key for name, value in node.items() for key in walk(value, f"{prefix}{name}.")]

    with composing() as node:
        return frozenset(walk(OmegaConf.to_container(node(FAMILY_ARGS[family_name]), resolve=False)))


def numeric_keys(schema: type, prefix: str = "") -> list[tuple[str, type]]:
    """(dotted key, int or float) of every number field under a config dataclass, nested ones included."""
    import typing
    from dataclasses import fields, is_dataclass

    hints, keys = typing.get_type_hints(schema), []
    for spec in fields(schema):
        hint = hints[spec.name]
        if typing.get_origin(hint) is typing.Union:  # Optional[X]
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        if is_dataclass(hint):
            keys += numeric_keys(hint, f"{prefix}{spec.name}.")
        elif hint in (int, float):
            keys.append((f"{prefix}{spec.name}", hint))
    return keys


def family_keys(family_name: str) -> list[tuple[str, type]]:
    """The loop's and shared groups' numbers, and those of every group the family types (its schemas)."""
    family = get_family(family_name)
    shared = [(k, t) for k, t in numeric_keys(RunConfig) if not k.startswith("logger.")]
    return shared + [(f"{group}.{k}", t) for group, schema in family.schemas().items() for k, t in numeric_keys(schema)]


def refusal(compose, overrides: list[str]) -> str:
    """The one-line message of the CollapseError the config is refused with (fails the test if it passes)."""
    with pytest.raises(CollapseError) as caught:
        compose(overrides)
    return str(caught.value)


def refusals(base: list[str], overrides: list[str]) -> dict[str, str]:
    """refusal() of base + each override, composed in one Hydra context (a context per config costs seconds)."""
    messages = {}
    with composing() as node:
        for override in overrides:
            with pytest.raises(CollapseError) as caught:
                to_run_config(node([*base, override]))
            messages[override] = str(caught.value)
    return messages


@pytest.mark.parametrize("family", sorted(FAMILY_ARGS))
@pytest.mark.slow  # one compose per key and value, ~100 for the LM: ~10 s; each family's test_bad_keys stays quick
def test_every_float_key_of_every_family_refuses_inf_and_nan(family: str):
    keys = [key for key, kind in family_keys(family) if kind is float and key in composed_keys(family)]
    assert len(keys) >= 5, keys
    messages = refusals(FAMILY_ARGS[family], [f"{key}={value}" for key in keys for value in ("inf", "nan")])
    for override, message in messages.items():
        assert message.startswith(f"{override} is not a finite number"), (override, message)


@pytest.mark.parametrize("family", sorted(FAMILY_ARGS))
@pytest.mark.slow  # one compose per key, ~60 for the LM: ~5 s; each family's test_bad_keys stays quick
def test_every_size_key_of_every_family_refuses_1e11(family: str):
    """1e11 of anything the family reads is a typo: refused at the door, never an allocation traceback."""
    keys = [key for key, kind in family_keys(family) if kind is int and key not in HUGE_IS_HARMLESS
            and key not in not_read_by(family)
            and key in composed_keys(family)]
    assert len(keys) >= 5, keys
    messages = refusals(FAMILY_ARGS[family], [f"{key}=100000000000" for key in keys])
    for override, message in messages.items():
        key = override.split("=")[0]
        assert FEEDS.get(key, key) in message, (override, message)


def test_shared_keys_are_checked_only_where_the_family_reads_them(compose):
    """train.lr is the LM's and the VAE's (Family.reads), not the GMM's, which fits by EM: there it holds anything
    finite, and conf/model/gmm.yaml needs no learning rate to make it pass."""
    assert get_family("gmm").reads == () and "train.lr" in get_family("vae").reads
    assert compose([*FAMILY_ARGS["gmm"], "train.lr=-1", "train.epochs=0"]).train.lr == -1
    for family in ("lm", "vae"):
        assert refusal(compose, [*FAMILY_ARGS[family], "train.lr=-1"]) == "train.lr=-1.0 must be positive"
    assert "nan" in refusal(compose, [*FAMILY_ARGS["gmm"], "train.lr=nan"])  # finite everywhere, read or not


def test_nested_float_keys_are_named_with_their_index(compose):
    message = refusal(compose, [*FAMILY_ARGS["gmm"], "dataset.weights=[0.5,0.5]", "dataset.means=[[0,0],[0,nan]]",
                       "dataset.covariances=[[[1,0],[0,1]],[[1,0],[0,1]]]"])
    assert message.startswith("dataset.means[1][1]=nan is not a finite number"), message


def test_ints_are_accepted_where_floats_are_and_become_floats(compose):
    """README's own GMM example: integer means, weights and covariances in float lists."""
    run = compose([*FAMILY_ARGS["gmm"], "dataset.weights=[1,0]", "dataset.means=[[-2,0],[2,0]]",
                    "dataset.covariances=[[[1,0],[0,1]],[[2,0],[0,2]]]"])
    assert run.dataset.means == [[-2.0, 0.0], [2.0, 0.0]]
    assert run.dataset.covariances[1] == [[2.0, 0.0], [0.0, 2.0]] and run.dataset.weights == [1.0, 0.0]
    values = [run.dataset.weights, *run.dataset.means, *(row for cov in run.dataset.covariances for row in cov)]
    assert all(type(number) is float for row in values for number in row)


def test_memory_refusal_compares_with_this_machine(compose, monkeypatch):
    """The estimate is a floor on what the run holds at once: refused only above the machine's memory."""
    from collapse_cli import checks

    fine = [*FAMILY_ARGS["gmm"], "dataset.n_train=1000000"]  # 1e6 x (2 + 2) float64: 32 MB
    compose(fine)
    monkeypatch.setattr(checks, "machine_memory", lambda: 16 * 2**20)  # a 16 MiB machine
    message = refusal(compose, fine)
    assert "dataset.n_train=1000000" in message and "this machine's 0 GiB" in message
