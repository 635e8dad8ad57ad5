"""The LM's facts (docs/families.md, "Facts"): plain data, imported by the family and read by the report
by file path for run folders from before family.json. Import nothing here but report.facts."""

from collapse_cli.report.facts import HIGHER, LOWER, FamilyFacts, MetricFacts

FACTS = FamilyFacts(
    family="lm",
    unit="blocks",
    headline=("ppl_test", "tail_coverage"),
    table_keys=("ppl_test", "tail_coverage", "seq_ppl_q50", "seq_ppl_q99", "kl_truth", "distinct2_tok",
                "train_loss_last"),
    report_keys=("ppl_test", "tail_coverage", "seq_ppl_q50", "kl_truth"),
    likelihood_key="ppl_test", likelihood_se_key="ppl_test_se", likelihood_name="test perplexity",
    metrics={
        "ppl_test": MetricFacts("Test perplexity", "perplexity of real test text", LOWER),
        "ppl_valid": MetricFacts("Validation perplexity", "perplexity of real validation text", LOWER),
        "ppl_test_sliding": MetricFacts("Test perplexity, sliding window", "perplexity of real test text", LOWER),
        "ppl_test_se": MetricFacts("Standard error of test perplexity", "perplexity (bootstrap SE)"),
        "tail_coverage": MetricFacts("Tail coverage: rare real token types (count ≤ 5) still generated",
                                     "share of rare types present", HIGHER),
        "kl_truth": MetricFacts("KL divergence from the true language", "KL(true ‖ model), nats/token", LOWER),
        "ce_truth": MetricFacts("Cross-entropy against the true language", "nats/token", LOWER),
        "entropy_truth": MetricFacts("Entropy of the true language", "nats/token"),
        "seq_ppl_w1_log": MetricFacts("Shift of synthetic vs real sequence perplexity",
                                      "W1 distance of log-perplexity (nats)", LOWER),
        "seq_ppl_frac_above_real_q95": MetricFacts("Synthetic sequences above real 95th-percentile perplexity",
                                                   "share of synthetic sequences"),
        "seq_ppl_frac_below_real_q05": MetricFacts("Synthetic sequences below real 5th-percentile perplexity",
                                                   "share of synthetic sequences"),
        "seq_ppl_q{n}": MetricFacts("Synthetic sequence perplexity, {n}th percentile",
                                    "perplexity under the generation-0 model"),
        "tail_ppl_d{n}": MetricFacts("Test perplexity of tokens in frequency decile {n}",
                                     "perplexity of real test tokens", LOWER),
        "train_loss_last": MetricFacts("Final training loss", "loss on the training mix (nats)"),
        "compression_ratio": MetricFacts("Compression ratio of the synthetic text", "raw / zlib-compressed bytes",
                                         LOWER),
        "self_bleu4_tok": MetricFacts("Self-BLEU-4 of the synthetic text", "BLEU (0 to 1)", LOWER),
        "distinct{n}_tok": MetricFacts("Distinct token {n}-grams of the synthetic text", "distinct / all {n}-grams",
                                       HIGHER),
        "rep4_tok": MetricFacts("Repeated 4-grams within a synthetic sequence (degenerate loops)",
                                "share of repeated 4-grams", LOWER),
        # generate.watermark / curate=watermark (docs/metrics.md, "Watermark provenance").
        "watermark_tpr": MetricFacts("Watermark detection rate on marked synthetic rows", "share detected (TPR)",
                                     HIGHER),
        "watermark_fpr": MetricFacts("Watermark false alarms on real test text", "share flagged (FPR)", LOWER),
        "watermark_through": MetricFacts("Synthetic rows through watermark curation", "share kept"),
        "watermark_z_marked_median": MetricFacts("Median z-score of marked rows", "z (one-proportion test)"),
    },
)
