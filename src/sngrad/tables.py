"""The contract between the analysis notebooks and the report: what the tables mean.

The notebooks (through :mod:`sngrad.analysis`) write tables; the report (:mod:`sngrad.report`)
only formats them. Both read the constants the tables are computed with and the columns of the
tables the report opens when none has been written yet from here, so that neither imports the
other. Where each table lives is :data:`sngrad.layout.NOTEBOOK_TABLES`.
"""

SIGNIFICANCE = 0.05

FAMILIES = ("equal_epochs", "equal_compute")

VERDICTS = ("better", "worse", "inconclusive")
NO_OP = "no-op"  # the verdict of a run that does not differ from its base (paired.py)

# the compared outcomes, and whether a larger value is better
OUTCOMES = {"test_accuracy": True, "train_loss": False}
NO_OP_FACTOR = 0.99  # a sngrad run whose mean factor over training is at least this is a no-op
POWER = 0.8  # the power at which the smallest detectable effect of a family is stated

FLAT_SHARE = 0.10

# how a run's paired difference from its base changes from the smallest to the largest batch
# size (batch_trend.csv): its gain larger, smaller, or no change the interval detects
TREND_DIRECTIONS = ("larger at the large batch", "smaller at the large batch",
                    "no detectable change")

ALL_LAYERS = "all"


PAIRED_COLUMNS = [
    "dataset",
    "batch_size",
    "family",
    "schedule",
    "outcome",
    "run",
    "base",
    "no_op",
    "mean_factor",
    "epoch_run",
    "epoch_base",
    "cost_run",
    "cost_base",
    "n_seeds",
    "n_pairs",
    "n_diverged_run",
    "n_diverged_base",
    "run_mean",
    "base_mean",
    "diff_mean",
    "diff_std",
    "ci_low",
    "ci_high",
    "ci_level",
    "p_t",
    "p_signflip",
    "p_holm",
    "detectable",
    "verdict",
    "note",
]


SUMMARY_COLUMNS = [
    "dataset",
    "run",
    "base",
    "batch_size",
    "learning_rate",
    "momentum",
    "alpha",
    "alpha_scaled",
    "val_accuracy",
    "all_diverged",
    "at_bound",
    "epochs",
    "n_seeds",
    "n_diverged",
    "test_accuracy_mean",
    "test_accuracy_std",
    "val_accuracy_final",
]
