"""8x8 digits for every image family (VAE, diffusion, GAN): the data, the split, one fixed classifier, figures.

scikit-learn's digits stand in for MNIST (1,797 8x8 grey images shipped in the wheel, loaded with no
network); pixels are scaled from 0..16 to [0, 1]. The families share:
- the split (load_digits_split, split_sizes) and its dataset config and checks (DigitsDatasetConfig,
  check_dataset), so every image family holds out the same test digits for the same dataset.seed;
- one measuring instrument, a multinomial logistic regression trained once on the real training digits
  (train_classifier): its predicted classes give class_shares / share_entropy, and its logits are the
  fixed feature map of the Fréchet distance (features, frechet_to_real; measure/points.py computes it);
- the rare-digit coverage test (RareDigits, tail_coverage) and the digit grid figure (grid_figure).

Every function that draws random numbers takes an explicit seed; global RNG state is never read or changed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from collapse_cli.checks import check_seed
from collapse_cli.errors import CollapseError
from collapse_cli.families.plots import pyplot, save
from collapse_cli.measure.points import frechet_distance

PIXELS = 64  # 8 x 8
N_CLASSES = 10
N_DIGITS = 1797  # sklearn's digits set
TAIL_MASS = 0.05  # the rare real digits: the lowest-density 5% under the generation-0 model


@contextmanager
def one_thread() -> Iterator[None]:
    """torch's intra-op threads set to one inside the block, and put back after it.

    A run's numbers then do not depend on how many cores the machine has. On these 64-pixel
    MLPs one thread loses nothing: on the shared 2-core CPU a default VAE run took 3-8 s a
    generation with one thread and 23-142 s with two, with bit-identical metrics.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------
# Data, its config and its checks
# --------------------------------------------------------------------------


@dataclass
class Digits:
    """Real digits split once: images [n, 64] float32 in [0, 1], labels [n] int64."""

    train: np.ndarray
    train_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray


def split_sizes(test_fraction: float) -> tuple[int, int]:
    """(training, test) image counts of load_digits_split, known before loading (validation reads them)."""
    n_test = int(round(test_fraction * N_DIGITS))
    return N_DIGITS - n_test, n_test


def load_digits_split(test_fraction: float, seed: int) -> Digits:
    """sklearn's 1,797 digits (a stand-in for MNIST), shuffled by `seed`, the last test_fraction held out."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.data / 16.0).astype(np.float32)
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = split_sizes(test_fraction)[1]
    train, test = order[n_test:], order[:n_test]
    return Digits(images[train], labels[train], images[test], labels[test])


@dataclass
class DigitsDatasetConfig:
    """`dataset=digits`: scikit-learn's 1,797 8x8 digits (a stand-in for MNIST), split once by `seed`."""

    name: str = "digits"
    test_fraction: float = 0.2
    max_train: Optional[int] = None  # cap on N (null: the whole train split, 1,438 images)
    seed: int = 0


# Fewest images a split may hold: the rare 5% of the test digits must be at least one digit, and the
# classifier and generation 0 must see every class several times.
MIN_TEST_IMAGES, MIN_TRAIN_IMAGES = 20, 100


def check_split(test_fraction: float) -> None:
    """Refuse a test_fraction that leaves too few images on either side, with the range that works."""
    n_train, n_test = split_sizes(test_fraction)
    if n_test >= MIN_TEST_IMAGES and n_train >= MIN_TRAIN_IMAGES:
        return
    total = n_train + n_test
    low, high = MIN_TEST_IMAGES / total, 1 - MIN_TRAIN_IMAGES / total
    raise CollapseError(f"dataset.test_fraction={test_fraction} leaves {n_train} training and {n_test} test images "
                        f"of the {total:,} digits; use a value from {math.ceil(low * 1000) / 1000} to "
                        f"{math.floor(high * 1000) / 1000} (the default is 0.2)")


def check_dataset(d: DigitsDatasetConfig) -> None:
    """Every `dataset=digits` key checked, one line naming the key and the fix on a bad one."""
    check_seed("dataset.seed", d.seed)
    if not 0.0 < d.test_fraction < 1.0:
        raise CollapseError(f"dataset.test_fraction={d.test_fraction} must be in (0, 1)")
    check_split(d.test_fraction)
    if d.max_train is not None and d.max_train < 1:
        raise CollapseError(f"dataset.max_train={d.max_train} must be positive or null")


# --------------------------------------------------------------------------
# The fixed classifier: class shares and the Fréchet distance's features
# --------------------------------------------------------------------------


def train_classifier(images: np.ndarray, labels: np.ndarray, seed: int):
    """Multinomial logistic regression on real digits (deterministic lbfgs; `seed` for completeness)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    classifier = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    with threadpool_limits(limits=1):
        return classifier.fit(images, labels)


def features(classifier: Any, images: np.ndarray) -> np.ndarray:
    """The classifier's 10 logits per image [n, 10] float64: the fixed feature map of the Fréchet distance.

    The logits, not the probability vector: softmax saturates to near one-hot on confident digits, which
    squashes the within-class spread the distance should see and leaves a near-singular covariance. A
    logistic regression has no hidden layer, so its logits (a fixed affine map of the pixels onto the ten
    directions that tell real digits apart) are its "penultimate" features, as Inception's pool features
    are FID's.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return np.asarray(classifier.decision_function(np.asarray(images, dtype=np.float32)), dtype=np.float64)


def log_confidence(classifier: Any, images: np.ndarray) -> np.ndarray:
    """log of the classifier's probability of its predicted class, per image [n] float64: the image families'
    curation truth (a stand-in for the true density digits lack; floored so a sure "no" stays finite)."""
    return np.log(np.maximum(classifier.predict_proba(images).max(axis=1), 1e-300))


def frechet_to_real(classifier: Any, real: np.ndarray, images: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to `real` and to `images` in the classifier's features."""
    return frechet_distance(features(classifier, real), features(classifier, images))


def class_shares(predicted: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """Fraction of samples given to each class [n_classes] (nan when there are no samples)."""
    counts = np.bincount(np.asarray(predicted, dtype=np.int64), minlength=n_classes).astype(np.float64)
    return counts / counts.sum() if counts.sum() else np.full(n_classes, np.nan)


def share_entropy(shares: np.ndarray) -> float:
    """Entropy of the class shares in nats: ln 10 = 2.303 for balanced digits, 0 for one class."""
    positive = shares[shares > 0]
    return float(-(positive * np.log(positive)).sum()) + 0.0  # + 0.0: no "-0" for a single class


# --------------------------------------------------------------------------
# The rare digits
# --------------------------------------------------------------------------


def nearest_distances(queries: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Euclidean distance from every query row to its nearest row of `points` (pixel space)."""
    q, p = np.asarray(queries, dtype=np.float64), np.asarray(points, dtype=np.float64)
    squared = (q * q).sum(1)[:, None] - 2 * q @ p.T + (p * p).sum(1)[None, :]
    return np.sqrt(np.maximum(squared.min(axis=1), 0.0))


@dataclass
class RareDigits:
    """The rare part of the real test digits and, per digit, the distance a synthetic image must come within."""

    images: np.ndarray  # the lowest-density TAIL_MASS of the real test digits under the gen-0 model
    radii: np.ndarray  # per rare digit: how close a sample must come to count it as drawn


def tail_coverage(rare: RareDigits, samples: np.ndarray) -> float:
    """Share of the rare real digits with a synthetic image within their radius (pixel distance)."""
    if len(samples) == 0:
        return 0.0
    return float(np.mean(nearest_distances(rare.images, samples) <= rare.radii))


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------


def grid_figure(images: np.ndarray, path: Path, title: str, columns: int = 10, rows: int = 6) -> Path:
    """The first rows x columns images as one grey grid PNG."""
    plt = pyplot()

    shown = np.asarray(images[:rows * columns]).reshape(-1, 8, 8)
    canvas = np.zeros((rows * 9 + 1, columns * 9 + 1), dtype=np.float32)  # white gaps under gray_r
    for i, image in enumerate(shown):
        r, c = divmod(i, columns)
        canvas[1 + r * 9:1 + r * 9 + 8, 1 + c * 9:1 + c * 9 + 8] = image
    fig, ax = plt.subplots(figsize=(columns * 0.5, rows * 0.5 + 0.4))
    ax.imshow(canvas, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    return save(fig, path, dpi=100)
