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
its Family subclass. Config schemas (model_schema, dataset_schema) are dataclasses;
`model.family` in the config picks the family, and config.to_run_config types the
`model` and `dataset` groups with that family's schemas (unknown keys are rejected).
Families are imported on demand only (`get_family`), so one family's import cost or
half-written module never touches another family's runs.

INTERFACE READY
"""

from __future__ import annotations

import html
import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np

from collapse_cli.errors import CollapseError
from collapse_cli.measure import metrics as M

Progress = Callable[[int, int], None]


def checked_loss(value: float, step: int, generation: int) -> float:
    """The one stop for a diverging fit, in every family that trains by gradient steps (README: a run stops
    with one line when its loss becomes nan or inf): the value itself when finite."""
    if not math.isfinite(value):
        raise CollapseError(
            f"generation {generation}: training loss became {value} at step {step} "
            f"(diverged); lower the learning rate and resume: collapse resume RUN_DIR train.lr=<lower>")
    return value


# model.family -> the module whose FAMILY attribute is the Family subclass.
FAMILY_MODULES = {
    "lm": "collapse_cli.families.lm.family",
    "gmm": "collapse_cli.families.gmm.family",
    "vae": "collapse_cli.families.vae.family",
    "linreg": "collapse_cli.families.linreg.family",
    "categorical": "collapse_cli.families.categorical.family",
}


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


class ObjectCache:
    """One value made from one object (a model, a sample array), kept until another object asks.

    Keyed by the object itself, which it holds: an id() is reused by a new object once the old one is
    freed (a resume's reloaded model, the next run in the same process) and would get the old value.
    """

    def __init__(self) -> None:
        self.clear()

    def holds(self, key: Any) -> bool:
        return self._full and self._key is key

    def get(self, key: Any, make: Callable[[Any], Any]) -> Any:
        if not self.holds(key):
            self.clear()  # the old value goes before the new one is made: a model copy's memory
            self.put(key, make(key))
        return self._value

    def put(self, key: Any, value: Any) -> None:
        self._key, self._value, self._full = key, value, True

    def clear(self) -> None:
        self._key, self._value, self._full = None, None, False


class Family(ABC):
    """One kind of generative model. Built once per run: `Family(cfg, device)`."""

    # --- facts the loop and config read without building anything -----------------------
    name: ClassVar[str]  # the value of model.family
    model_schema: ClassVar[type]  # dataclass typing cfg.model (it must have a `family: str` field)
    dataset_schema: ClassVar[type]  # dataclass typing cfg.dataset (it must have a `name: str` field)
    datasets: ClassVar[tuple[str, ...]]  # dataset.name values this family reads; others exit 2
    unit: ClassVar[str] = "samples"  # what one row is called in metrics and the plan: train_<unit>, ...
    samples_file: ClassVar[str] = "samples.npy"  # the file save_samples writes in each gen folder
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
    # Whether `fit` takes row_weights (train.real_weight != 1); families that cannot weight rows refuse it.
    weighs_rows: ClassVar[bool] = False

    def __init__(self, cfg: Any, device: Any):
        """cfg: the validated RunConfig (cfg.model / cfg.dataset typed by this family's schemas)."""
        self.cfg = cfg
        self.device = device

    @classmethod
    def validate(cls, cfg: Any) -> None:
        """Range checks of cfg.model / cfg.dataset and of the shared keys this family reads; raise CollapseError."""

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

    @abstractmethod
    def sample(self, model: Any, n: int, seed: int, on_batch: Progress) -> np.ndarray:
        """n new samples (rows) from `model`, same dtype and row shape as the real data."""

    @abstractmethod
    def measure(self, generation: int, model: Any, reference_model: Any, samples: np.ndarray, seed: int,
                on_progress: Progress) -> tuple[dict, np.ndarray]:
        """(flat metrics of this generation, float per-sample scores [n] used by curation and saved).

        reference_model is the generation-0 model (the model itself when generation == 0).
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

    def describe_sampling(self, model: Any) -> str:
        """How `sample` draws, for the plan (LM: the decoder and its settings); empty: nothing to say."""
        return ""

    # --- files ------------------------------------------------------------------------------
    @abstractmethod
    def save_samples(self, folder: Path, samples: np.ndarray, scores: np.ndarray) -> None:
        """Write a generation's samples (as `samples_file`) and anything readable beside them into `folder`."""

    @abstractmethod
    def load_samples(self, folder: Path) -> np.ndarray:
        """The samples save_samples wrote in `folder`, exactly (dtype included): resume relies on it."""

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
            out["early_warning"] = M.early_warning_verdict(
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


def get_family(name: str) -> type[Family]:
    """The Family subclass registered as `name`, imported now (and only now)."""
    if name not in FAMILY_MODULES:
        raise CollapseError(f"model.family={name!r}: use one of {', '.join(FAMILY_MODULES)} "
                            f"(model=tiny for the LM, model=gmm, model=vae, model=linreg, model=categorical)")
    try:
        module = importlib.import_module(FAMILY_MODULES[name])
    except ModuleNotFoundError as error:
        if error.name and FAMILY_MODULES[name].startswith(error.name):
            raise CollapseError(f"model.family={name}: {FAMILY_MODULES[name]} is not installed in this "
                                f"checkout yet; use model=tiny") from None
        raise
    return module.FAMILY
