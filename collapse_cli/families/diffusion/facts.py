"""The diffusion family's facts (docs/families.md, "Facts"): plain data; import nothing here but report.facts.

The shared point metrics (frechet, precision, recall, density, coverage, tail_coverage, modes) take their
titles from report.facts.SHARED; the keys below are this family's own.
"""

from collapse_cli.report.facts import HIGHER, LOWER, FamilyFacts, MetricFacts

FACTS = FamilyFacts(
    family="diffusion",
    unit="samples",
    headline=("frechet", "tail_coverage"),
    summary_keys=("nll_test", "recall", "class_entropy", "modes_covered"),
    table_keys=("frechet", "tail_coverage", "nll_test", "precision", "recall", "class_entropy", "modes_covered",
                "train_loss_last"),
    report_keys=("frechet", "tail_coverage", "recall", "precision", "nll_test", "class_entropy"),
    likelihood_key="frechet",
    likelihood_se_key="frechet_se",
    likelihood_name="Fréchet distance",
    metrics={
        "frechet_floor": MetricFacts("Fréchet distance between two real sets (the floor)",
                                     "squared distance of Gaussian fits"),
        "nll_test": MetricFacts("Test negative ELBO (ddpm only)", "nats per real test row", LOWER),
        "nll_test_se": MetricFacts("Standard error of test NLL", "nats (SE over test rows)"),
        "class_share_max": MetricFacts("Largest digit class among the samples", "share of samples (0.1 balanced)",
                                       LOWER),
        "class_entropy": MetricFacts("Entropy of the samples' digit classes", "nats (ln 10 = 2.30 balanced)",
                                     HIGHER),
    },
)
