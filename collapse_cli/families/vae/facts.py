"""The VAE's facts (docs/families.md, "Facts"): plain data; import nothing here but report.facts."""

from collapse_cli.report.facts import HIGHER, LOWER, FamilyFacts, MetricFacts

FACTS = FamilyFacts(
    family="vae",
    unit="images",
    headline=("nll_test", "tail_coverage"),
    summary_keys=("latent_spread", "class_share_max"),
    table_keys=("nll_test", "tail_coverage", "latent_spread", "latent_std_flat", "class_share_max",
                "class_entropy", "train_loss_last"),
    report_keys=("nll_test", "tail_coverage", "latent_std_flat", "latent_spread", "class_share_max"),
    metrics={
        "nll_test": MetricFacts("Test negative log-likelihood (importance-weighted bound)",
                                "nats per real test digit", LOWER),
        "nll_test_se": MetricFacts("Standard error of test NLL", "nats (SE over test points)"),
        "elbo_nll_test": MetricFacts("Test negative ELBO", "nats per real test digit", LOWER),
        "tail_coverage": MetricFacts("Tail coverage: rare real digits a sample still reaches",
                                     "share of rare digits covered", HIGHER),
        "latent_spread": MetricFacts("Spread of the samples in the generation-0 latent space",
                                     "latent std (real digits: latent_spread_real)", HIGHER),
        "latent_std_flat": MetricFacts("Std of the flattened generation-0 encoder means (the paper's statistic)",
                                       "latent std (100 samples, all dimensions)", HIGHER),
        "latent_spread_real": MetricFacts("Spread of the real digits in the latent space", "latent std"),
        "class_share_max": MetricFacts("Largest digit class among the samples", "share of samples (0.1 balanced)",
                                       LOWER),
        "class_entropy": MetricFacts("Entropy of the samples' digit classes", "nats (ln 10 = 2.30 balanced)",
                                     HIGHER),
    },
)
