"""A family small enough to read in one screen: a 1-D normal fitted by its mean and std.

It proves the loop is family-agnostic (tests/test_family.py runs it through the real
loop, resume included) and measures the loop's own per-generation cost
(scripts/loop_overhead.py). It lives outside the package, as a user's family would: with tests/ on
the Python path, `model.family=toy_family:ToyFamily` names it, and collapse needs no edit to run it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from collapse_cli.errors import CollapseError
from collapse_cli.families.base import Family, Progress, RealData
from collapse_cli.report.facts import LOWER, FamilyFacts, MetricFacts


@dataclass
class ToyModelConfig:
    family: str = "toy_family:ToyFamily"  # the class, as model.family names a family outside collapse
    # Raise KeyboardInterrupt when fitting this generation: a kill in the middle of a run.
    interrupt_at: int = -1


@dataclass
class ToyDatasetConfig:
    name: str = "normal"
    n_train: Optional[int] = 200  # N; null: the whole pool
    pool: int = 400
    n_test: int = 100
    seed: int = 0


class ToyFamily(Family):
    name = "toy"
    model_schema = ToyModelConfig
    dataset_schema = ToyDatasetConfig
    datasets = ("normal",)
    # What its metrics mean, as a user's family declares it: the run folder records these (family.json), and
    # `collapse compare` titles the metrics by them with no edit to collapse.
    facts = FamilyFacts(family="toy", unit="samples", headline=("nll_test", "tail_coverage"),
                        table_keys=("nll_test", "std"),
                        metrics={"nll_test": MetricFacts("Toy test NLL", "nats per test point", LOWER),
                                 "std": MetricFacts("Spread of the fitted normal", "std (truth: 1)")})

    @classmethod
    def validate(cls, cfg) -> None:
        if cfg.dataset.n_train is not None and cfg.dataset.n_train < 2:
            raise CollapseError(f"dataset.n_train={cfg.dataset.n_train} must be at least 2")

    def train_cap(self) -> Optional[int]:
        return self.cfg.dataset.n_train

    def real_data(self, pool_cap: Optional[int]) -> RealData:
        rng = np.random.default_rng(self.cfg.dataset.seed)
        pool = rng.normal(size=(self.cfg.dataset.pool, 1))
        return RealData(train=pool[:pool_cap], test=rng.normal(size=(self.cfg.dataset.n_test, 1)))

    def prepare(self, real: RealData, n_train: int) -> None:
        self.test = real.test
        self.tail_radius = float(np.quantile(np.abs(real.test), 0.9))

    def build_base_model(self, seed: int) -> dict:
        return {"mean": 0.0, "std": 1.0}

    def fit(self, model: dict, train: np.ndarray, seed: int, generation: int, on_step: Progress) -> dict:
        if generation == self.cfg.model.interrupt_at:
            raise KeyboardInterrupt
        started_from = model["mean"]  # train.init=previous: the last generation's mean, base: 0
        model.update(mean=float(train.mean()), std=float(train.std()))
        on_step(1, 1)
        return {"train_rows_seen": int(len(train)), "started_from_mean": started_from}

    def sample(self, model: dict, n: int, seed: int, on_batch: Progress) -> np.ndarray:
        return np.random.default_rng(seed).normal(model["mean"], model["std"], size=(n, 1))

    def measure(self, generation, model, reference_model, samples, seed, on_progress):
        z = (self.test - model["mean"]) / model["std"]
        nll = float(np.mean(0.5 * z**2 + np.log(model["std"]) + 0.5 * np.log(2 * np.pi)))
        tail = float(np.mean(np.abs(samples) > self.tail_radius) / 0.1)
        # The seed the loop handed over, so a test can check which one it derives.
        metrics = {"nll_test": nll, "tail_coverage": tail, "mean": model["mean"], "std": model["std"],
                   "measure_seed": seed}
        return metrics, np.abs(samples[:, 0])

    def save_samples(self, folder: Path, samples: np.ndarray, scores: np.ndarray) -> None:
        np.save(folder / self.samples_file, samples)

    def load_samples(self, folder: Path) -> np.ndarray:
        return np.load(folder / self.samples_file)

    def save_model(self, model: dict, folder: Path) -> None:
        (folder / "model.json").write_text(json.dumps(model))

    def load_model(self, folder: Path) -> dict:
        return json.loads((folder / "model.json").read_text())


FAMILY = ToyFamily
