"""The GMM's facts (docs/families.md, "Facts"): plain data; import nothing here but report.facts."""

from collapse_cli.report.facts import HIGHER, LOWER, FamilyFacts, MetricFacts

FACTS = FamilyFacts(
    family="gmm",
    unit="points",
    headline=("nll_test", "tail_coverage"),
    summary_keys=("component_std", "l2sq_to_gen0"),
    table_keys=("nll_test", "tail_coverage", "component_std", "l2sq_to_gen0"),
    metrics={
        "nll_test": MetricFacts("Test negative log-likelihood", "nats per real test point", LOWER),
        "nll_test_se": MetricFacts("Standard error of test NLL", "nats (SE over test points)"),
        "tail_coverage": MetricFacts("Tail coverage: samples' share of the true density's outer 5%",
                                     "min(1, tail mass ratio)", HIGHER),
        "component_std": MetricFacts("Spread of the fitted mixture's components",
                                     "weighted component std (truth: 1)"),
        "l2sq_to_gen0": MetricFacts("Squared L2 distance to the generation-0 density (the paper's curve)",
                                    "squared L2 distance (density units)", LOWER),
        "l2_to_gen0": MetricFacts("L2 distance to the generation-0 density", "L2 distance (density units)", LOWER),
        "l2_to_truth": MetricFacts("L2 distance to the true density", "L2 distance (density units)", LOWER),
        "tail_mass_ratio": MetricFacts("Tail mass ratio: samples in the true outer 5%", "share / 0.05 (truth: 1)"),
        "sample_std": MetricFacts("Spread of the generation's samples", "sample std (truth: 1)"),
    },
)
