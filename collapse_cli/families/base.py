"""The family interface: what the generation loop asks of a kind of generative model.

The loop (experiment/loop.py) knows rows of arrays, seeds and folders, never tokens,
mixtures or images. A family -- the causal LM (families/lm), the Gaussian mixture
(families/gmm), the VAE (families/vae) -- answers the questions below for its models.

Conventions every method keeps:
- Samples are numpy arrays with one sample per row on axis 0, all rows the same shape
  (LM: int64 [n, block_size] token ids; GMM: float [n, dim]; VAE: float [n, 64]).
  The loop composes training sets by indexing rows (experiment/compose.py).
- The loop owns seeding: every method that draws random numbers takes an explicit
  `seed` (derived by experiment/seeds.py per run, generation and stage) and must not
  touch global RNG state; the same seed gives the same result.
- The loop owns the device choice (`self.device`, a torch.device; families that do not
  use torch ignore it) and the run folder; a family writes only inside the folders it is given.
- `on_step` / `on_batch` / `on_progress` take (done, total) for progress bars; calling them is optional.
- Bad input a family finds (config it cannot honour, unreadable data) raises
  errors.CollapseError with one line naming the key and the fix.

A family package `collapse_cli/families/<name>/` holds `family.py`, which defines `FAMILY`:
its Family subclass; a family outside the package is named by `model.family=package.module:Class`
(or an entry point in the `collapse.families` group). Config schemas (model_schema, dataset_schema,
group_schemas) are dataclasses; `model.family` in the config picks the family, and
compose.to_run_config types its groups with that family's schemas (unknown keys are rejected).
Families are imported on demand only (`get_family`), so one family's import cost or
half-written module never touches another family's runs. docs/families.md: how to write one.

INTERFACE READY
"""

from __future__ import annotations

import html
import importlib
import importlib.metadata
import importlib.util
import math
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np

from collapse_cli.errors import CollapseError
from collapse_cli.measure import stats
from collapse_cli.report.facts import FamilyFacts
from collapse_cli.rundir import RunDir, require_run_array

Progress = Callable[[int, int], None]


def checked_loss(value: float, step: int, generation: int) -> float:
    """The one stop for a diverging fit, in every family that trains by gradient steps (README: a run stops
    with one line when its loss becomes nan or inf): the value itself when finite."""
    if not math.isfinite(value):
        raise CollapseError(
            f"generation {generation}: training loss became {value} at step {step} "
            f"(diverged); lower the learning rate and resume: collapse resume RUN_DIR train.lr=<lower>")
    return value


def checked_probe(rows: np.ndarray, generation: int, verb: str) -> None:
    """The stop for weights the last training step broke after its loss was finite (lr 1e20, one step): a few
    rows the trained model `verb`s (decodes, samples) are probed before anything reads its samples."""
    if not np.isfinite(rows).all():
        raise CollapseError(f"generation {generation}: the trained model {verb} nan or inf (its last training step "
                            f"diverged); lower the learning rate and resume: collapse resume RUN_DIR train.lr=<lower>")


# A family outside the package: its class named by an entry point of this group, or model.family=module:Class.
ENTRY_POINTS = "collapse.families"


@dataclass
class RealData:
    """The real data of a run; arrays hold one sample per row, same dtype and row shape as `sample` returns."""

    train: np.ndarray  # the real pool: rows [:n_train] are generation 0's set; later rows feed regime=fresh
    test: np.ndarray  # held-out real data every generation is scored on
    valid: Optional[np.ndarray] = None
    info: dict = field(default_factory=dict)  # anything the family wants to keep with it (e.g. a tokenizer)


@dataclass
class Curated:
    """What curation keeps: `indices` into the generation's samples (int64, repeats allowed) and a report.
    `awaiting_review` (curate.method=review): the indices are the rows offered to a reviewer, not yet kept."""

    indices: np.ndarray
    report: dict = field(default_factory=dict)
    awaiting_review: bool = False


class Family(ABC):
    """One kind of generative model. Built once per run: `Family(cfg, device)`."""

    # --- facts the loop and config read without building anything -----------------------
    name: ClassVar[str]  # its short name: model.family of a builtin family (its folder), in plans and figures
    model_schema: ClassVar[type]  # dataclass typing cfg.model (it must have a `family: str` field)
    dataset_schema: ClassVar[type]  # dataclass typing cfg.dataset (it must have a `name: str` field)
    # Further config groups the family reads, each typed by its dataclass (the LM: generate, metrics).
    # A group in conf/config.yaml's defaults that the family does not declare is composed, then dropped (None).
    group_schemas: ClassVar[dict[str, type]] = {}
    # The shared keys the family reads ("train.epochs", ...): their range checks run, the others' do not
    # (the GMM fits by EM and reads no train key, so a nonsense train.lr cannot stop its run).
    reads: ClassVar[tuple[str, ...]] = ()
    # Keys older run folders hold that the family no longer has: dropped when such a folder is resumed.
    retired_keys: ClassVar[tuple[str, ...]] = ()
    # The key that sets N, the rows generation 0 trains on (train_cap): named where the real pool runs short.
    size_key: ClassVar[Optional[str]] = None
    # Whether one run may span nproc > 1 processes (the family shards its work across ranks); else N copies.
    supports_nproc: ClassVar[bool] = False
    datasets: ClassVar[tuple[str, ...]]  # dataset.name values this family reads; others exit 2
    unit: ClassVar[str] = "samples"  # what one row is called in metrics and the plan: train_<unit>, ...
    samples_file: ClassVar[str] = "samples.npy"  # the file save_samples writes in each gen folder
    # The .npy file the default save_samples writes the per-sample scores to; None: not saved (recomputable).
    scores_file: ClassVar[Optional[str]] = None
    # Headline metrics, best first: the first is shown in summaries; `summarize` may use them all.
    headline: ClassVar[tuple[str, ...]] = ("nll_test", "tail_coverage")
    # Further metrics whose first and last values go into summary.json (the paper's own figures, say).
    summary_keys: ClassVar[tuple[str, ...]] = ()
    # The likelihood headline the early-warning verdict sets tail_coverage (and tail_coverage_se) against:
    # its metrics key, the key of its standard error, and its name in the verdict text.
    likelihood_key: ClassVar[str] = "nll_test"
    likelihood_se_key: ClassVar[str] = "nll_test_se"
    likelihood_name: ClassVar[str] = "test NLL"
    # Keys first in every metrics line, in this order; the rest follow alphabetically.
    leading_keys: ClassVar[tuple[str, ...]] = ("generation", "nll_test", "tail_coverage")
    # Metrics each generation's log line and the end-of-run table show after `generation` (missing: skipped).
    table_keys: ClassVar[tuple[str, ...]] = ("nll_test", "tail_coverage")
    # Whether this family applies the text filters of `curate` (LM: yes). The generic methods
    # (curate.method=verifier|tail, experiment/curation.py) serve every family.
    curates: ClassVar[bool] = False
    # The family's facts, from its folder's facts.py (docs/families.md, "Facts"): when a family sets them, the
    # attributes above that they hold (unit, headline, summary_keys, likelihood_*, table_keys) come from them.
    facts: ClassVar[Optional[FamilyFacts]] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("facts")
        if own is not None:  # one place declares them; the loop and summarize read the class attributes
            cls.unit, cls.headline, cls.summary_keys, cls.table_keys = (own.unit, own.headline, own.summary_keys,
                                                                        own.table_keys)
            cls.likelihood_key, cls.likelihood_se_key, cls.likelihood_name = (
                own.likelihood_key, own.likelihood_se_key, own.likelihood_name)

    @classmethod
    def run_facts(cls) -> FamilyFacts:
        """What the loop records in the run folder (family.json): the family's facts, or for a family that
        declares none, those its class attributes give (its metrics then shown by their keys)."""
        return cls.facts or FamilyFacts(cls.name, unit=cls.unit, headline=cls.headline,
                                        summary_keys=cls.summary_keys, table_keys=cls.table_keys,
                                        likelihood_key=cls.likelihood_key, likelihood_se_key=cls.likelihood_se_key,
                                        likelihood_name=cls.likelihood_name)

    # Whether `fit` takes row_weights (train.real_weight != 1); families that cannot weight rows refuse it.
    weighs_rows: ClassVar[bool] = False

    def __init__(self, cfg: Any, device: Any):
        """cfg: the validated RunConfig (cfg.model / cfg.dataset typed by this family's schemas)."""
        self.cfg = cfg
        self.device = device

    @classmethod
    def schemas(cls) -> dict[str, type]:
        """Every group this family types, by group name: model, dataset and group_schemas. Their dataclass
        defaults are the family's defaults: what `model.family=...` composes where conf/ has no option for it."""
        return {"model": cls.model_schema, "dataset": cls.dataset_schema, **cls.group_schemas}

    @classmethod
    def validate(cls, cfg: Any) -> None:
        """Range checks of the family's own groups (and of shared keys beyond `reads`' ranges); raise CollapseError."""

    # --- data and models ------------------------------------------------------------------
    @abstractmethod
    def real_data(self, pool_cap: Optional[int]) -> RealData:
        """The real data; `pool_cap` caps the train pool's rows (None: all the family has). Seeded by config only."""

    def train_cap(self) -> Optional[int]:
        """N requested by the config (rows generation 0 trains on and every generation samples); None: the pool."""
        return None

    def prepare(self, real: RealData, n_train: int) -> None:
        """Called once after real_data with the N the loop settled on: precompute references (LM: prompts)."""

    @abstractmethod
    def build_base_model(self, seed: int) -> Any:
        """A fresh, untrained model (seeded by `seed`); the loop deep-copies it for each generation."""

    @abstractmethod
    def fit(self, model: Any, train: np.ndarray, seed: int, generation: int, on_step: Progress) -> dict:
        """Train `model` in place on rows `train`; returns flat stats merged into metrics (e.g. train_loss_last).

        A family with `weighs_rows` also takes `row_weights` (float [n], one loss weight per row), which
        the loop passes only when train.real_weight != 1."""

    def for_inference(self, model: Any) -> Any:
        """The model as `sample` and `measure` run it (LM: a bf16 copy on CUDA); by default the model itself.

        The loop asks once per trained model and hands that one copy to its sample and measure calls;
        generation 0's copy scores as the reference for the rest of the run (a resume asks once for the
        reference it reloads). No family keeps copies of its own to avoid repeats.
        """
        return model

    @abstractmethod
    def sample(self, model: Any, n: int, seed: int, on_batch: Progress) -> np.ndarray:
        """n new samples (rows) from `model` (as for_inference made it), same dtype and row shape as the real data."""

    @abstractmethod
    def measure(self, generation: int, model: Any, reference_model: Any, samples: np.ndarray, seed: int,
                on_progress: Progress) -> tuple[dict, np.ndarray]:
        """(flat metrics of this generation, float per-sample scores [n] used by curation and saved).

        Both models are as for_inference made them. reference_model is the generation-0 model (the model
        itself when generation == 0).
        Must not keep state that a resume would not rebuild (a resume calls prepare and measure afresh).
        """

    def curate(self, samples: np.ndarray, scores: np.ndarray, seed: int) -> Curated:
        """The family's own filters (LM: the text filters); by default all samples, in order.
        experiment/curation.py runs the generic method (verifier, tail) on what this keeps."""
        return Curated(np.arange(len(samples), dtype=np.int64))

    def truth_scores(self, samples: np.ndarray) -> Optional[np.ndarray]:
        """Each sample's log-likelihood under the true distribution (higher: more plausible), float [n];
        None where the family does not know the truth. The verifier and tail curation score by it."""
        return None

    def review_cells(self, samples: np.ndarray) -> list[str]:
        """Each sample as an HTML fragment for the review sheet (curate.method=review); by default its numbers."""
        return [html.escape(" ".join(f"{value:.4g}" for value in np.ravel(row))) for row in samples]

    def model_scores(self, scores: np.ndarray) -> np.ndarray:
        """measure's per-sample scores as log-likelihoods (higher: more typical); by default -scores (an NLL)."""
        return -np.asarray(scores, dtype=np.float64)

    def extent(self, n_rows: int) -> dict[str, int]:
        """Extra size facts of n rows for the plan, manifest and metrics, e.g. {"tokens": n * block_size}."""
        return {}

    def reference_files(self) -> dict[str, np.ndarray]:
        """Arrays the loop saves in the run folder once generation 0 is measured (LM: the real test perplexities)."""
        return {}

    def n_parameters(self, model: Any) -> int:
        """Trainable numbers in `model`, for the plan line."""
        return 0

    def describe(self) -> str:
        """The model's name in the plan line."""
        return self.name

    def describe_precision(self) -> str:
        """The number format training and sampling run in, for the plan line ("bf16"); empty: full precision."""
        return ""

    def describe_sampling(self, model: Any) -> str:
        """How `sample` draws, for the plan (LM: the decoder and its settings); empty: nothing to say."""
        return ""

    # --- files ------------------------------------------------------------------------------
    def save_samples(self, folder: Path, samples: np.ndarray, scores: np.ndarray) -> None:
        """Write a generation's samples (as `samples_file`) and anything readable beside them into `folder`.

        By default the array as sampled (.npy) and, with a `scores_file`, the scores as float32; a family
        whose rows read better in another form (the LM: compressed token ids and their texts) overrides both.
        """
        files = RunDir(folder)
        files.save_array(self.samples_file, samples)
        if self.scores_file is not None:
            files.save_array(self.scores_file, scores.astype(np.float32))

    def load_samples(self, folder: Path) -> np.ndarray:
        """The samples save_samples wrote in `folder`, exactly (dtype included): resume relies on it."""
        return require_run_array(Path(folder) / self.samples_file)

    @abstractmethod
    def save_model(self, model: Any, folder: Path) -> None:
        """Write `model` into the empty folder `folder` (the loop renames it into place: never half-written)."""

    @abstractmethod
    def load_model(self, folder: Path) -> Any:
        """The model save_model wrote, on self.device, ready for fit/sample/measure."""

    # --- end of run -------------------------------------------------------------------------
    def summarize(self, run_dir: Any, rows: list[dict]) -> dict:
        """Family figures for summary.json from every generation's metrics rows (loop adds generations, time).

        Headline firsts and lasts, and the early warning: does tail coverage depart from generation 0
        (beyond noise) before the likelihood headline does? Subclasses add their own figures to this.
        """
        out: dict = {}
        for key in (*self.headline, *self.summary_keys):
            if rows and key in rows[0]:
                out[f"{key}_first"], out[f"{key}_last"] = rows[0][key], rows[-1][key]
        if rows:
            out["early_warning"] = stats.early_warning_verdict(
                metric_series(rows, "tail_coverage"), metric_series(rows, "tail_coverage_se"),
                metric_series(rows, self.likelihood_key), metric_series(rows, self.likelihood_se_key),
                headline=self.likelihood_name)
        return out

    def figures(self, run_dir: Path, rows: list[dict]) -> list[Path]:
        """Write PNGs into <run_dir>/figures/ (e.g. sample scatters, grids); returns their paths. Optional."""
        return []


def metric_series(rows: list[dict], key: str) -> list[float]:
    """One metric across generations; a missing key or JSON null (a NaN on disk) comes back as NaN."""
    return [float("nan") if row.get(key) is None else float(row[key]) for row in rows]


def family_name(model_cfg: Any) -> str:
    """model.family of a config node or dataclass; the LM when absent (configs from before families)."""
    if isinstance(model_cfg, dict):
        return model_cfg.get("family", "lm")
    return getattr(model_cfg, "family", "lm")


def builtin_families() -> list[str]:
    """The names of the families in this package: every collapse_cli/families/<name>/ that holds family.py."""
    here = Path(__file__).resolve().parent
    return sorted(info.name for info in pkgutil.iter_modules([str(here)])
                  if info.ispkg and (here / info.name / "family.py").is_file())


def _entry_point(name: str) -> Optional[importlib.metadata.EntryPoint]:
    found = [point for point in importlib.metadata.entry_points(group=ENTRY_POINTS) if point.name == name]
    return found[0] if found else None


def _import(module: str, name: str) -> Any:
    """The module, or one line naming model.family and what is missing (a module of the family's own that fails
    for another reason raises as it is: a traceback into the family's code is the useful answer)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise CollapseError(f"model.family={name}: cannot import {module} ({error}); check the name and that its "
                            f"folder is on PYTHONPATH or installed") from None


def _load(name: str) -> Any:
    if ":" in name:  # package.module:Class, a family outside collapse
        module, _, attr = name.partition(":")
        found = getattr(_import(module, name), attr, None) if module and attr.isidentifier() else None
        if found is None:
            raise CollapseError(f"model.family={name}: no class {attr!r} in {module}; "
                                f"give model.family=package.module:ClassName")
        return found
    if name.isidentifier() and name in builtin_families():
        return _import(f"collapse_cli.families.{name}.family", name).FAMILY
    point = _entry_point(name) if name.isidentifier() else None
    if point is not None:
        return point.load()
    raise CollapseError(f"model.family={name!r}: use one of {', '.join(builtin_families())} (model=tiny for the "
                        f"LM, model=gmm, model=vae, ...), or package.module:ClassName for a family of your own")


def get_family(name: str) -> type[Family]:
    """The Family subclass `name` picks (a builtin family's name, package.module:Class, or an entry point
    of the collapse.families group), imported now (and only now)."""
    found = _load(name)
    if not (isinstance(found, type) and issubclass(found, Family)):
        raise CollapseError(f"model.family={name}: {found!r} is not a subclass of "
                            f"collapse_cli.families.base.Family; name the family's class")
    return found
