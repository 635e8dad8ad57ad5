"""The GAN's facts (docs/families.md, "Facts" on main): plain data; import nothing here but report.facts.

A GAN has no likelihood: the headline the early-warning verdict reads is the Fréchet distance.
On this branch nothing imports this module yet (report.facts.FamilyFacts arrives with main's facts
refactor); once merged, GANFamily sets `facts = FACTS` in place of its class attributes.
"""

from collapse_cli.report.facts import HIGHER, LOWER, FamilyFacts, MetricFacts

FACTS = FamilyFacts(
    family="gan",
    unit="samples",
    headline=("frechet", "tail_coverage"),
    summary_keys=("precision", "recall", "modes_covered", "high_quality", "class_entropy"),
    table_keys=("frechet", "tail_coverage", "precision", "recall", "modes_covered", "high_quality", "class_entropy"),
    likelihood_key="frechet",
    likelihood_se_key="frechet_se",
    likelihood_name="Fréchet distance",
    metrics={
        "frechet": MetricFacts("Fréchet distance to real test data (the GAN's headline: it has no likelihood)",
                               "Fréchet distance (2-D: coordinates; digits: classifier logits)", LOWER),
        "frechet_se": MetricFacts("Standard error of the Fréchet distance", "Fréchet distance (bootstrap SE)"),
        "frechet_floor": MetricFacts("Fréchet distance between two real sets", "Fréchet distance"),
        "tail_coverage": MetricFacts("Tail coverage: rare real points a sample's k-NN ball reaches",
                                     "share of rare real points covered", HIGHER),
        "precision": MetricFacts("Precision: samples on the real k-NN manifold", "share of samples", HIGHER),
        "recall": MetricFacts("Recall: real points on the samples' k-NN manifold", "share of real points", HIGHER),
        "density": MetricFacts("Density: real k-NN balls per sample / k", "density (1: as real)"),
        "coverage": MetricFacts("Coverage: real points whose k-NN ball holds a sample", "share of real points",
                                HIGHER),
        "modes_covered": MetricFacts("Modes covered (ring8, blobs)", "modes with a high-quality sample", HIGHER),
        "high_quality": MetricFacts("High-quality samples: within 3 sigma of a mode", "share of samples", HIGHER),
        "class_share_max": MetricFacts("Largest digit class among the samples", "share of samples (0.1 balanced)",
                                       LOWER),
        "class_entropy": MetricFacts("Entropy of the samples' digit classes", "nats (ln 10 = 2.30 balanced)",
                                     HIGHER),
        "d_loss_last": MetricFacts("Final discriminator loss", "nats (2 ln 2 = 1.386 at equilibrium)"),
        "g_loss_last": MetricFacts("Final generator loss (non-saturating)", "nats (ln 2 = 0.693 at equilibrium)"),
    },
)
