"""The shared digits module's instrument: the fixed classifier's features, which the Fréchet distance reads."""

from __future__ import annotations

import numpy as np

from collapse_cli.families import digits as digit_data


def test_features_are_the_classifiers_logits_and_see_collapse():
    split = digit_data.load_digits_split(0.2, seed=0)
    classifier = digit_data.train_classifier(split.train, split.train_labels, seed=0)
    logits = digit_data.features(classifier, split.test)
    assert logits.shape == (len(split.test), 10) and logits.dtype == np.float64
    np.testing.assert_array_equal(logits.argmax(axis=1), classifier.predict(split.test))
    floor = digit_data.frechet_to_real(classifier, split.train, split.test)
    ones = split.train[split.train_labels == 1]
    # Real test digits sit far closer to the real training digits than a set holding one class only.
    assert floor * 10 < digit_data.frechet_to_real(classifier, split.train, ones)
