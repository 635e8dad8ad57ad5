"""Linear regression's facts (docs/families.md, "Facts"): plain data; import nothing here but report.facts."""

from collapse_cli.report.facts import HIGHER, LOWER, FamilyFacts, MetricFacts

FACTS = FamilyFacts(
    family="linreg",
    unit="rows",
    headline=("param_error", "test_mse", "tail_coverage"),
    summary_keys=("mse_theory", "mse_theory_avg"),
    table_keys=("param_error", "mse_theory", "test_mse", "tail_coverage"),
    likelihood_key="test_mse", likelihood_se_key="test_mse_se", likelihood_name="test MSE",
    metrics={
        "tail_coverage": MetricFacts("Tail coverage: outer-5% test inputs predicted within 1.645 sigma",
                                     "share of tail inputs covered", HIGHER),
        "param_error": MetricFacts("Parameter error ||w_hat - w*||^2", "squared error of the weights", LOWER),
        "param_error_to_gen0": MetricFacts("Drift of the weights from generation 0", "squared distance", LOWER),
        "mse_theory": MetricFacts("Closed-form expected parameter error, this design", "squared error of the weights",
                                  LOWER),
        "mse_theory_avg": MetricFacts("Closed-form expected parameter error, over designs",
                                      "squared error of the weights", LOWER),
        "test_mse": MetricFacts("Test mean squared error", "squared error per test point", LOWER),
        "test_mse_se": MetricFacts("Standard error of test MSE", "squared error (SE over test points)"),
        "train_mse": MetricFacts("Training mean squared error", "squared error per training row"),
    },
    # param_error's expectation given the run's design (docs/metrics.md): the report draws and divides by it.
    theory={"param_error": "mse_theory"},
)
