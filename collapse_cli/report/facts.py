"""What each metrics.jsonl key means to a reader: title, unit, and which way is better.

One lookup, `metric_facts(key, family)`, serves the tables (the sign of a change), the
compare plots (titles, y-labels) and the families' own figures. Keys a family defines
differently (tail_coverage, nll_test) are looked up under the family first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class MetricFacts:
    title: str
    unit: str  # the y-axis label: what the number is, in which unit
    higher_is_better: Optional[bool] = None  # None: neither way is better (a size, a time, a diagnostic)

    def worse(self, change: float) -> Optional[bool]:
        """Whether a change of this sign is a change for the worse; None when the metric has no direction."""
        if self.higher_is_better is None or change == 0:
            return None
        return (change < 0) == self.higher_is_better


LOWER, HIGHER, NEUTRAL = False, True, None

# (family or "", key) -> facts; "" holds what a key means in every family that writes it.
FACTS: dict[tuple[str, str], MetricFacts] = {
    ("", "ppl_test"): MetricFacts("Test perplexity", "perplexity of real test text", LOWER),
    ("", "ppl_valid"): MetricFacts("Validation perplexity", "perplexity of real validation text", LOWER),
    ("", "ppl_test_sliding"): MetricFacts("Test perplexity, sliding window", "perplexity of real test text", LOWER),
    ("", "ppl_test_se"): MetricFacts("Standard error of test perplexity", "perplexity (bootstrap SE)"),
    ("lm", "tail_coverage"): MetricFacts("Tail coverage: rare real token types (count ≤ 5) still generated",
                                         "share of rare types present", HIGHER),
    ("gmm", "tail_coverage"): MetricFacts("Tail coverage: samples' share of the true density's outer 5%",
                                          "min(1, tail mass ratio)", HIGHER),
    ("vae", "tail_coverage"): MetricFacts("Tail coverage: rare real digits a sample still reaches",
                                          "share of rare digits covered", HIGHER),
    ("", "tail_coverage"): MetricFacts("Tail coverage", "share of the real tail kept", HIGHER),
    ("", "tail_coverage_se"): MetricFacts("Standard error of tail coverage", "share (binomial SE)"),
    ("", "kl_truth"): MetricFacts("KL divergence from the true language", "KL(true ‖ model), nats/token", LOWER),
    ("", "ce_truth"): MetricFacts("Cross-entropy against the true language", "nats/token", LOWER),
    ("", "entropy_truth"): MetricFacts("Entropy of the true language", "nats/token"),
    ("", "seq_ppl_w1_log"): MetricFacts("Shift of synthetic vs real sequence perplexity",
                                        "W1 distance of log-perplexity (nats)", LOWER),
    ("", "seq_ppl_frac_above_real_q95"): MetricFacts("Synthetic sequences above real 95th-percentile perplexity",
                                                     "share of synthetic sequences"),
    ("", "seq_ppl_frac_below_real_q05"): MetricFacts("Synthetic sequences below real 5th-percentile perplexity",
                                                     "share of synthetic sequences"),
    ("", "train_loss_last"): MetricFacts("Final training loss", "loss on the training mix (nats)"),
    ("", "compression_ratio"): MetricFacts("Compression ratio of the synthetic text", "raw / zlib-compressed bytes",
                                           LOWER),
    ("", "self_bleu4_tok"): MetricFacts("Self-BLEU-4 of the synthetic text", "BLEU (0 to 1)", LOWER),
    ("", "disk_bytes"): MetricFacts("Disk use per generation", "bytes"),
    ("gmm", "nll_test"): MetricFacts("Test negative log-likelihood", "nats per real test point", LOWER),
    ("vae", "nll_test"): MetricFacts("Test negative log-likelihood (importance-weighted bound)",
                                     "nats per real test digit", LOWER),
    ("", "nll_test"): MetricFacts("Test negative log-likelihood", "nats per test point", LOWER),
    ("", "nll_test_se"): MetricFacts("Standard error of test NLL", "nats (SE over test points)"),
    ("", "elbo_nll_test"): MetricFacts("Test negative ELBO", "nats per real test digit", LOWER),
    ("", "component_std"): MetricFacts("Spread of the fitted mixture's components",
                                       "weighted component std (truth: 1)"),
    ("", "l2sq_to_gen0"): MetricFacts("Squared L2 distance to the generation-0 density (the paper's curve)",
                                      "squared L2 distance (density units)", LOWER),
    ("", "l2_to_gen0"): MetricFacts("L2 distance to the generation-0 density", "L2 distance (density units)", LOWER),
    ("", "l2_to_truth"): MetricFacts("L2 distance to the true density", "L2 distance (density units)", LOWER),
    ("", "tail_mass_ratio"): MetricFacts("Tail mass ratio: samples in the true outer 5%",
                                         "share / 0.05 (truth: 1)"),
    ("", "sample_std"): MetricFacts("Spread of the generation's samples", "sample std (truth: 1)"),
    ("", "latent_spread"): MetricFacts("Spread of the samples in the generation-0 latent space",
                                       "latent std (real digits: latent_spread_real)", HIGHER),
    ("", "latent_std_flat"): MetricFacts("Std of the flattened generation-0 encoder means (the paper's statistic)",
                                         "latent std (100 samples, all dimensions)", HIGHER),
    ("", "latent_spread_real"): MetricFacts("Spread of the real digits in the latent space", "latent std"),
    ("", "class_share_max"): MetricFacts("Largest digit class among the samples", "share of samples (0.1 balanced)",
                                         LOWER),
    ("linreg", "tail_coverage"): MetricFacts("Tail coverage: outer-5% test inputs predicted within 1.645 sigma",
                                             "share of tail inputs covered", HIGHER),
    ("", "param_error"): MetricFacts("Parameter error ||w_hat - w*||^2", "squared error of the weights", LOWER),
    ("", "param_error_to_gen0"): MetricFacts("Drift of the weights from generation 0", "squared distance", LOWER),
    ("", "mse_theory"): MetricFacts("Closed-form expected parameter error, this design", "squared error of the weights",
                                    LOWER),
    ("", "mse_theory_avg"): MetricFacts("Closed-form expected parameter error, over designs",
                                        "squared error of the weights", LOWER),
    ("", "test_mse"): MetricFacts("Test mean squared error", "squared error per test point", LOWER),
    ("", "train_mse"): MetricFacts("Training mean squared error", "squared error per training row"),
    ("categorical", "tail_coverage"): MetricFacts("Tail coverage: rarest outcomes (10% of the mass) still alive",
                                                  "share of rare outcomes surviving", HIGHER),
    ("", "survivors"): MetricFacts("Outcomes still alive (p_hat > 0)", "outcomes", HIGHER),
    ("", "survivors_theory"): MetricFacts("Expected survivors, Wright-Fisher closed form", "outcomes", HIGHER),
    ("", "survivors_theory_avg"): MetricFacts("Expected survivors over real samples, closed form", "outcomes",
                                              HIGHER),
    ("", "test_covered"): MetricFacts("Real test draws the model still gives mass to", "share of test draws", HIGHER),
    ("", "tv_truth"): MetricFacts("Total variation distance to the true distribution", "TV distance (0 to 1)", LOWER),
    ("", "kl_model_truth"): MetricFacts("KL divergence of the model from the truth", "nats", LOWER),
    ("", "class_entropy"): MetricFacts("Entropy of the samples' digit classes", "nats (ln 10 = 2.30 balanced)",
                                       HIGHER),
}


def metric_facts(key: str, family: str = "") -> MetricFacts:
    """The facts of a metrics.jsonl key as `family` writes it; a key nobody described is shown as it is."""
    known = FACTS.get((family, key)) or FACTS.get(("", key))
    if known:
        return known
    quantile = re.fullmatch(r"seq_ppl_q(\d\d)", key)
    if quantile:
        return MetricFacts(f"Synthetic sequence perplexity, {int(quantile.group(1))}th percentile",
                           "perplexity under the generation-0 model")
    decile = re.fullmatch(r"tail_ppl_d(\d)", key)
    if decile:
        return MetricFacts(f"Test perplexity of tokens in frequency decile {decile.group(1)}",
                           "perplexity of real test tokens", LOWER)
    if key.endswith("_time_s"):
        return MetricFacts(key[:-2].replace("_", " ").capitalize(), "seconds")
    return MetricFacts(key, key)


def se_key(key: str) -> Optional[str]:
    """The metrics.jsonl key holding a run's own standard error of `key`, where the loop writes one."""
    return f"{key}_se" if key in ("ppl_test", "tail_coverage", "nll_test", "test_mse", "test_covered") else None
