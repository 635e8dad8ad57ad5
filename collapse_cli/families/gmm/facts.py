"""The GMM's facts (docs/families.md, "Facts"): plain data; import nothing here but report.facts."""

from collapse_cli.report.facts import HIGHER, LOWER, FamilyFacts, MetricFacts

FACTS = FamilyFacts(
    family="gmm",
    unit="points",
    headline=("nll_test", "tail_coverage"),
    # The kazdan keys only where one component fits one true Gaussian (+experiment=kazdan_gaussian).
    summary_keys=("component_std", "l2sq_to_gen0", "mean_sq_error", "cov_det_ratio", "cov_trace_ratio"),
    table_keys=("nll_test", "tail_coverage", "component_std", "l2sq_to_gen0", "mean_sq_error", "cov_det_ratio"),
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
        "mean_sq_error": MetricFacts("Squared error of the fitted mean", "squared distance to the true mean", LOWER),
        "cov_det_ratio": MetricFacts("Fitted / true covariance determinant", "ratio (truth: 1)"),
        "cov_log_det_ratio": MetricFacts("Log of fitted / true covariance determinant", "log ratio (truth: 0)"),
        "cov_trace_ratio": MetricFacts("Fitted / true covariance trace", "ratio (truth: 1)"),
        "mean_sq_error_theory": MetricFacts("Closed-form expected squared error of the mean (replace)",
                                            "squared distance", LOWER),
        "cov_det_ratio_theory": MetricFacts("Closed-form expected determinant ratio (replace)", "ratio"),
        "cov_log_det_ratio_theory": MetricFacts("Closed-form expected log determinant ratio (replace)", "log ratio"),
        "cov_trace_ratio_theory": MetricFacts("Closed-form expected trace ratio (replace)", "ratio"),
    },
    # Kazdan's one-Gaussian closed forms (replace only; null elsewhere): the report draws and divides by them.
    theory={"mean_sq_error": "mean_sq_error_theory", "cov_log_det_ratio": "cov_log_det_ratio_theory",
            "cov_trace_ratio": "cov_trace_ratio_theory"},
)
