"""The categorical family's facts (docs/families.md, "Facts"): plain data; import nothing here but report.facts."""

from collapse_cli.report.facts import HIGHER, LOWER, FamilyFacts, MetricFacts

FACTS = FamilyFacts(
    family="categorical",
    unit="draws",
    headline=("survivors", "tail_coverage", "test_covered"),
    summary_keys=("survivors_theory", "tv_truth"),
    table_keys=("survivors", "survivors_theory", "tail_coverage", "test_covered", "tv_truth"),
    report_keys=("survivors", "survivors_theory", "tail_coverage", "tv_truth"),
    likelihood_key="test_covered", likelihood_se_key="test_covered_se", likelihood_name="test draws covered",
    metrics={
        "tail_coverage": MetricFacts("Tail coverage: rarest outcomes (10% of the mass) still alive",
                                     "share of rare outcomes surviving", HIGHER),
        "survivors": MetricFacts("Outcomes still alive (p_hat > 0)", "outcomes", HIGHER),
        "survivors_theory": MetricFacts("Expected survivors, Wright-Fisher closed form", "outcomes", HIGHER),
        "survivors_theory_avg": MetricFacts("Expected survivors over real samples, closed form", "outcomes", HIGHER),
        "test_covered": MetricFacts("Real test draws the model still gives mass to", "share of test draws", HIGHER),
        "test_covered_se": MetricFacts("Standard error of test draws covered", "share (binomial SE)"),
        "tv_truth": MetricFacts("Total variation distance to the true distribution", "TV distance (0 to 1)", LOWER),
        "kl_model_truth": MetricFacts("KL divergence of the model from the truth", "nats", LOWER),
    },
    # survivors' expectation given generation 0's real sample (docs/metrics.md).
    theory={"survivors": "survivors_theory"},
)
