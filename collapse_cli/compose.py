"""One run's configuration from overrides: Hydra composes conf/ onto the typed schemas, the family types its
groups, and every range check runs. `compose(["model=gmm", ...])` serves the command line, tests and scripts.

Above both config.py (the loop's keys, which knows no family) and the families (which own their groups'
schemas and checks): this module joins them. Not experiment/compose.py, which composes training sets.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
import secrets
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Optional, Union

from omegaconf import DictConfig, OmegaConf

from collapse_cli.checks import check, is_int
from collapse_cli.config import RunConfig, validate_shared
from collapse_cli.errors import CollapseError
from collapse_cli.families.base import Family, builtin_families, family_name, get_family

# The typed groups of RunConfig a family's schemas fill (Family.schemas); the rest of RunConfig is shared.
FAMILY_GROUPS = ("model", "dataset", "generate", "metrics")


def conf_dir() -> str:
    """Installed: collapse_cli/conf; source checkout or editable install: the repository's conf/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate.resolve())  # the checkout's collapse_cli/conf is a link to conf/ (pyproject.toml)
    raise CollapseError(f"cannot find the Hydra configs next to {here}; reinstall with `pip install .`")


def config_groups() -> str:
    """`collapse run --help`'s list of groups: conf/'s folders and their options, one line each. Hydra's own
    list would also show the schema groups in the ConfigStore, which only compose the typed defaults."""
    root = Path(conf_dir())
    folders = sorted({file.parent for file in root.rglob("*.yaml")} - {root})
    return "\n".join(f"{folder.relative_to(root).as_posix()}: "
                     f"{', '.join(sorted(file.stem for file in folder.glob('*.yaml')))}" for folder in folders)


@functools.cache
def schema(family: Optional[type[Family]] = None) -> DictConfig:
    """The typed root node: the family groups typed by `family`'s schemas, or left open (family None).

    Hydra composes onto the open form, so any family's options fit; a builtin family's options may name
    its schemas in their defaults (`/schema/model/lm@_here_`, see register), and to_run_config types them all.
    Built once per family (structuring RunConfig cost a fifth of a composition); its callers copy it
    (OmegaConf.merge and ConfigStore.store both do) and never change it.
    """
    node = OmegaConf.structured(RunConfig)
    typed = family.schemas() if family else {}
    for group in FAMILY_GROUPS:
        node[group] = OmegaConf.structured(typed[group]) if group in typed else ({} if family is None else None)
    return node


def register() -> None:
    """The ConfigStore's schemas and the resolvers conf/config.yaml uses; idempotent. Call before composing
    (and again in a launcher's job process: resolvers registered in the parent do not reach it, hydra#861)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    if "schema.yaml" not in store.repo:  # once per process: storing again would only copy the same nodes
        _store_schemas(store)
    if not OmegaConf.has_resolver("run_id"):
        # Appended to Hydra's per-second timestamp so runs started in the same second never share a folder.
        OmegaConf.register_new_resolver("run_id", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("config_groups"):
        OmegaConf.register_new_resolver("config_groups", config_groups)


def _store_schemas(store: Any) -> None:
    store.store(name="schema", node=schema())
    # A builtin family's options extend its schemas (`/schema/model/lm@_here_`), so composing types their keys
    # and `--cfg job` shows them all. Read from families/<name>/config.py's SCHEMAS, which imports no model code;
    # stored outside the groups, so they are never offered as a `model=` or `dataset=` choice.
    for name in builtin_families():
        if importlib.util.find_spec(f"collapse_cli.families.{name}.config") is None:
            continue
        for group, node in getattr(importlib.import_module(f"collapse_cli.families.{name}.config"),
                                   "SCHEMAS", {}).items():
            store.store(group=f"schema/{group}", name=name, node=node)


def _given(overrides: list[str]) -> dict[str, str]:
    return {key.lstrip("+~"): value for key, _, value in (o.partition("=") for o in overrides)}


def family_options(overrides: list[str]) -> list[str]:
    """`model.family=X` with no `model=` (nor `dataset=`) option: X's own schemas, defaults and all, become the
    model (and dataset) option, stored in the ConfigStore now. So a family with no yaml in conf/ (one of
    a user's, `model.family=package.module:Class`) composes with no edit to collapse. Returns the overrides
    that pick them; nothing for a sweep over families (`model.family=a,b`: give model= per family)."""
    from hydra.core.config_store import ConfigStore

    given = _given(overrides)
    name = given.get("model.family")
    if name is None or "model" in given or "," in name:
        return []
    family = get_family(name)
    option = "family_" + re.sub(r"\W", "_", name)  # beside conf/'s options, never one of their names
    store = ConfigStore.instance()
    store.store(group="model", name=option, node=family.model_schema(family=name))
    picked = [f"model={option}"]
    if "dataset" not in given:
        store.store(group="dataset", name=option, node=family.dataset_schema())
        picked.append(f"dataset={option}")
    return picked


@contextmanager
def composing() -> Iterator[Callable[..., DictConfig]]:
    """Hydra's context over conf/, for many configs at the cost of one: yields `node(overrides, hydra=False)`,
    the composed DictConfig (with Hydra's own node when hydra=True), not yet typed or checked."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore

    register()
    repo = ConfigStore.instance().repo

    def node(overrides: list[str], hydra: bool = False) -> DictConfig:
        before = {group: set(repo.get(group, {})) for group in ("model", "dataset")}
        try:
            return hydra_compose(config_name="config", overrides=[*overrides, *family_options(overrides)],
                                 return_hydra_config=hydra)
        finally:  # the options family_options stored for this config go again: never offered to another
            for group, kept in before.items():
                for option in set(repo.get(group, {})) - kept:
                    del repo[group][option]

    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        yield node


def compose(overrides: list[str]) -> RunConfig:
    """The validated RunConfig `collapse run OVERRIDES` would run (no run folder, nothing started).
    Raises CollapseError on a bad value, and Hydra's own errors on an unknown group or option."""
    with composing() as node:
        return to_run_config(node(overrides))


def _unknown_key(values: dict, schema: Any, prefix: str = "") -> Optional[str]:
    """The first key no dataclass field holds (`+foo=1` gets past Hydra, and OmegaConf keeps it silently)."""
    names = {f.name for f in fields(schema)}
    for key, value in values.items():
        if key not in names:
            return f"{prefix}{key}"
        child = getattr(schema, key)
        if is_dataclass(child) and isinstance(value, dict):
            found = _unknown_key(value, child, f"{prefix}{key}.")
            if found:
                return found
    return None


def _as_float_lists(values: Any, hint: Any) -> Any:
    """ints where the schema says float, as floats, inside lists too: OmegaConf 2.3 converts a plain float
    field's int (mix=0) but refuses one in a nested list (`dataset.means=[[-2,0],[2,0]]`)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:  # Optional[X]
        hint = next((arg for arg in args if arg is not type(None)), Any)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if is_dataclass(hint) and isinstance(values, dict):
        hints = typing.get_type_hints(hint)
        return {key: _as_float_lists(value, hints.get(key, Any)) for key, value in values.items()}
    if origin is list and args and isinstance(values, list):
        return [_as_float_lists(value, args[0]) for value in values]
    if hint is float and is_int(values):
        return float(values)
    return values


def _dataset_options() -> dict[str, str]:
    """conf/dataset's options by the dataset.name each sets (digits: digits; toy2d: moons)."""
    options = {}
    for file in sorted((Path(conf_dir()) / "dataset").glob("*.yaml")):
        value = OmegaConf.load(file).get("name")
        options.setdefault(str(value), file.stem)
    return options


def _dataset_choices(names: tuple[str, ...], options: dict[str, str]) -> list[str]:
    """How a user picks each dataset.name of `names`: its own option (`dataset=digits`), an option whose
    name is another of `names` (`dataset=toy2d dataset.name=moons|circles|...`: one option, several sets),
    or dataset.name alone (a family with no option in conf/, whose own schema is the option)."""
    shared = {options[n] for n in names if n in options and options[n] != n}
    groups: dict[Optional[str], list[str]] = {}
    for n in names:
        option = options.get(n) or (next(iter(shared)) if len(shared) == 1 else None)
        groups.setdefault(option, []).append(n)
    return [f"dataset.name={'|'.join(group)}" if option is None else f"dataset={option}" if group == [option]
            else f"dataset={option} dataset.name={'|'.join(group)}" for option, group in groups.items()]


def _check_dataset(family: type[Family], name: str, dataset_name: Any) -> None:
    if dataset_name in family.datasets:
        return
    options = _dataset_options()
    given = str(dataset_name)
    got = (f"dataset={given}" if options.get(given) == given else
           f"dataset={options[given]} dataset.name={given}" if given in options else f"dataset.name={given}")
    check(False, f"model.family={name} reads {' or '.join(_dataset_choices(family.datasets, options))}, not "
                 f"{got}; pick one of those (or a model of another family)")


def _family_values(values: dict, family: type[Family]) -> dict:
    """The composed values the family reads: groups it does not declare dropped (conf/config.yaml composes the
    LM's generate and metrics for every run), and its retired keys (`model.lr` of an old GMM run) too."""
    typed = family.schemas()
    kept = {key: value for key, value in values.items() if key not in FAMILY_GROUPS or key in typed}
    for retired in family.retired_keys:
        group, _, key = retired.partition(".")
        if isinstance(kept.get(group), dict):
            kept[group] = {k: v for k, v in kept[group].items() if k != key}
    return kept


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Turn Hydra's composed DictConfig into the validated dataclass."""
    name = family_name(OmegaConf.to_container(cfg.get("model") or {}, resolve=False))
    family = get_family(name)
    # Before the key check: another family's dataset has keys this family's schema lacks.
    _check_dataset(family, name, OmegaConf.select(cfg, "dataset.name"))
    values = _family_values(OmegaConf.to_container(cfg, resolve=False), family)
    expected = RunConfig(**{group: typed() for group, typed in family.schemas().items()})
    unknown = _unknown_key(values, expected)
    check(unknown is None, f"{unknown}: no such key (check its spelling; `collapse run --cfg job` lists every key)")
    for group, typed in family.schemas().items():
        if isinstance(values.get(group), dict):
            values[group] = _as_float_lists(values[group], typed)
    # Interpolations stay as text until to_object resolves them in the whole tree: train.lr reads model.lr.
    run_config = OmegaConf.to_object(OmegaConf.merge(schema(family), OmegaConf.create(values)))
    assert isinstance(run_config, RunConfig)
    return validate(run_config)


def validate(cfg: RunConfig) -> RunConfig:
    """Every range check: the loop's and shared keys the family reads (config.py), then the family's own."""
    name = family_name(cfg.model)
    family = get_family(name)
    validate_shared(cfg, family.reads)
    _check_dataset(family, name, cfg.dataset.name)
    check(family.curates or not cfg.curate.active(),
          f"curate filters text sequences, and model.family={name} writes none; use curate=none")
    check(family.weighs_rows or cfg.train.real_weight == 1,
          f"train.real_weight={cfg.train.real_weight}: model.family={name} fits without a per-row loss "
          f"weight; use train.real_weight=1 (or mix to change the real share)")
    # A family that shards its work across ranks runs one run on N processes; another would run N copies of one run.
    check(cfg.nproc == 1 or family.supports_nproc,
          f"nproc={cfg.nproc}: model.family={name} runs in one process (it does not shard its work across ranks); "
          f"use nproc=1 with model.family={name}")
    family.validate(cfg)
    return cfg
