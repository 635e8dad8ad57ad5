"""The 2-D toy sets every point family shares (KDE, diffusion, GAN): `dataset=toy2d dataset.name=<toy>`.

moons, circles and the 2-D swiss roll are scikit-learn's generators; blobs are scikit-learn's make_blobs
around fixed centres; ring8 is the GAN literature's ring of 8 Gaussians (radius 2, std 0.02 by default;
Metz et al. 2017, Srivastava et al. 2017). The mixtures (blobs, ring8) have known mode centres, which
the modes-covered and high-quality metrics of measure/points.py read.

Every draw is a pure function of (name, n, noise, seed): no global RNG state. Points are float32, so
what a generation writes to disk is exactly what the next one reads (a resumed run matches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from collapse_cli.checks import StrEnum, check_count, check_seed  # StrEnum: 3.10 too
from collapse_cli.errors import CollapseError
from collapse_cli.families.base import RealData
from collapse_cli.measure.points import NEAREST_K

SAMPLE_DTYPE = np.float32
RING_RADIUS = 2.0
RING_MODES = 8
# make_blobs around three fixed centres on a circle of radius 2 (make_blobs' own default draws them at random).
BLOB_CENTRES = RING_RADIUS * np.array([[math.cos(a), math.sin(a)] for a in np.radians([90.0, 210.0, 330.0])])
SWISS_ROLL_SCALE = 0.1  # make_swiss_roll's (x, z) plane spans about +-12; scaled to about the others' +-1.2


class Toy(StrEnum):
    moons = "moons"
    circles = "circles"
    blobs = "blobs"
    swiss_roll = "swiss_roll"
    ring8 = "ring8"


TOY_NAMES: tuple[str, ...] = tuple(toy.value for toy in Toy)

# Each toy's noise when dataset.noise is null: the std of its Gaussian noise, in the toy's own units
# (swiss_roll: before SWISS_ROLL_SCALE; blobs and ring8: each mode's std).
DEFAULT_NOISE = {Toy.moons: 0.05, Toy.circles: 0.05, Toy.blobs: 0.3, Toy.swiss_roll: 0.5, Toy.ring8: 0.02}


@dataclass
class Toy2DDatasetConfig:
    """`dataset=toy2d`: points of one 2-D toy set, drawn afresh from its generator (train and test independent)."""

    name: str = "moons"  # moons | circles | blobs | swiss_roll | ring8
    n_train: int = 1000  # N: real points generation 0 fits, and points every generation samples
    n_test: int = 1000  # held-out real points every generation is scored on
    noise: Optional[float] = None  # std of the toy's Gaussian noise; null: DEFAULT_NOISE of the toy
    seed: int = 0  # the real points depend on this seed only, so a seed sweep shares them


def noise_of(name: str, noise: Optional[float]) -> float:
    """The noise a toy is drawn with: `noise`, or the toy's default when None."""
    return DEFAULT_NOISE[Toy(name)] if noise is None else float(noise)


def mode_centres(name: str) -> Optional[np.ndarray]:
    """float64 [k, 2] centres of the toy's modes when it is a mixture with known modes (blobs, ring8), else None."""
    toy = Toy(name)
    if toy == Toy.ring8:
        angles = 2 * np.pi * np.arange(RING_MODES) / RING_MODES
        return RING_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if toy == Toy.blobs:
        return BLOB_CENTRES.copy()
    return None


def make_toy(name: str, n: int, noise: Optional[float], seed: int) -> np.ndarray:
    """float32 [n, 2]: n points of toy `name` in random order (any prefix is a random subsample)."""
    from sklearn import datasets  # imported here: only the point families pay for it

    toy, std = Toy(name), noise_of(name, noise)
    if toy == Toy.ring8:
        rng = np.random.default_rng([seed, 8])
        centres = mode_centres(name)[rng.integers(RING_MODES, size=n)]
        points = centres + std * rng.standard_normal((n, 2))
    elif toy == Toy.moons:
        points, _ = datasets.make_moons(n, noise=std, random_state=seed)
    elif toy == Toy.circles:
        points, _ = datasets.make_circles(n, noise=std, factor=0.5, random_state=seed)
    elif toy == Toy.blobs:
        points, _ = datasets.make_blobs(n, centers=BLOB_CENTRES, cluster_std=std, random_state=seed)
    else:
        roll, _ = datasets.make_swiss_roll(n, noise=std, random_state=seed)
        points = SWISS_ROLL_SCALE * roll[:, [0, 2]]
    return points.astype(SAMPLE_DTYPE)


def true_log_density(name: str, noise: Optional[float], points: np.ndarray) -> Optional[np.ndarray]:
    """log p(x) [n] float64 under the toy's generator where it has a closed form: blobs and ring8 are equal-weight
    mixtures of isotropic Gaussians (std: the noise) around mode_centres (ring8 draws its mode uniformly; make_blobs
    splits n evenly). None for the others (noise around a curve: no closed form) and for noise 0 (no density)."""
    centres, std = mode_centres(name), noise_of(name, noise)
    if centres is None or std == 0:
        return None
    from scipy.special import logsumexp

    squared = np.square(np.asarray(points, dtype=np.float64)[:, None, :] - centres[None]).sum(axis=2)
    per_mode = -squared / (2 * std**2) - math.log(2 * math.pi * std**2)
    return logsumexp(per_mode, axis=1) - math.log(len(centres))


def validate(d: Toy2DDatasetConfig) -> None:
    """Range checks of dataset=toy2d's keys; CollapseError naming the key and the fix."""
    if d.name not in TOY_NAMES:
        raise CollapseError(f"dataset.name={d.name!r}: use one of {', '.join(TOY_NAMES)}")
    check_seed("dataset.seed", d.seed)
    for key in ("n_train", "n_test"):
        if getattr(d, key) <= NEAREST_K:  # the point metrics' k-NN balls need k + 1 points
            raise CollapseError(f"dataset.{key}={getattr(d, key)} must be at least {NEAREST_K + 1}")
        check_count(f"dataset.{key}", getattr(d, key))
    if d.noise is not None and not (math.isfinite(d.noise) and d.noise >= 0):
        raise CollapseError(f"dataset.noise={d.noise} must be a finite number >= 0 (null: the toy's default)")


def data_seed(seed: int, part: int) -> int:
    """The seed of one part of the real data (0: train pool, 1: test), derived from dataset.seed only."""
    return int(np.random.SeedSequence([seed, part]).generate_state(1)[0])


def real_data(d: Toy2DDatasetConfig, pool_cap: Optional[int]) -> RealData:
    """The run's real points: a train pool of pool_cap (or n_train) rows and n_test independent test rows."""
    return RealData(train=make_toy(d.name, pool_cap or d.n_train, d.noise, data_seed(d.seed, 0)),
                    test=make_toy(d.name, d.n_test, d.noise, data_seed(d.seed, 1)))


class PointFiles:
    """save_samples of float32 rows [n, d] for the point and image families (GMM, KDE, diffusion, GAN); put it
    before Family among the bases. It casts, then writes as Family's default does (samples_file, and the
    scores when the family names a scores_file), whose load_samples reads them back: float32 on disk is what
    the next generation reads, exactly."""

    def save_samples(self, folder: Path, samples: np.ndarray, scores: np.ndarray) -> None:
        super().save_samples(folder, samples.astype(SAMPLE_DTYPE), scores)
