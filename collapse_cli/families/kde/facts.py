"""The KDE's facts (docs/families.md, "Facts"): plain data; import nothing here but report.facts.

The manifold metrics (precision, recall, coverage, frechet, modes) are titled once, in report.facts.SHARED.
"""

from collapse_cli.report.facts import LOWER, FamilyFacts, MetricFacts

FACTS = FamilyFacts(
    family="kde",
    unit="points",
    headline=("nll_test", "tail_coverage"),
    summary_keys=("precision", "recall", "coverage", "frechet", "modes_covered"),
    table_keys=("nll_test", "tail_coverage", "precision", "recall", "coverage", "modes_covered"),
    metrics={
        "nll_test": MetricFacts("Test negative log-likelihood", "nats per real test point", LOWER),
        "nll_test_se": MetricFacts("Standard error of test NLL", "nats (SE over test points)"),
        "bandwidth": MetricFacts("Kernel bandwidth h", "data units"),
        "sample_std": MetricFacts("Spread of the generation's samples", "pooled std (data units)"),
    },
)
