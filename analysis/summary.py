# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Per-dataset summary
#
# One row per optimizer and batch size: the hyper-parameters the tuning chose, and the test
# accuracy at the last epoch over the training seeds. Then every sngrad variant is compared
# with its base optimizer seed by seed (all optimizers train from the same seeds), with a 95 %
# Student-t confidence interval on the mean difference.

# %%
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from sngrad.io import write_frame

# %% tags=["parameters"]
dataset = "digits"
results_dir = "results"
optimizers = ["sgd", "sgd+sngrad1"]
batch_sizes = [64]

# %%
root = Path(results_dir) / dataset

# %%
finals, rows = [], []
for optimizer in optimizers:
    for batch_size in batch_sizes:
        run = root / optimizer / f"bs{batch_size}"
        best = json.loads((run / "best.json").read_text())
        metrics = pd.read_csv(run / "metrics.csv")
        # the last recorded epoch of each seed (a diverged run may stop early)
        final = metrics.sort_values("epoch").groupby("seed").tail(1)
        diverged = metrics.groupby("seed")["diverged"].any()
        finals.append(final[["optimizer", "batch_size", "seed", "test_accuracy"]])
        rows.append(
            {
                "dataset": dataset,
                "optimizer": optimizer,
                "batch_size": batch_size,
                "learning_rate": best.get("learning_rate"),
                "momentum": best.get("momentum"),
                "alpha": best.get("alpha"),
                "val_accuracy": best.get("val_accuracy"),
                "test_accuracy_mean": final["test_accuracy"].mean(),
                "test_accuracy_std": final["test_accuracy"].std(ddof=1),
                "n_seeds": int(final["seed"].nunique()),
                "diverged": int(diverged.sum()),
            }
        )
summary = pd.DataFrame(rows)
write_frame(root / "summary.csv", summary)
print(summary.to_string())

# %% [markdown]
# ## Paired comparison: sngrad variant minus its base optimizer


# %%
def paired(diff):
    """Mean of the paired differences and its 95 % t interval (NaN with fewer than 2 pairs)."""
    n = len(diff)
    mean = float(np.mean(diff)) if n else np.nan
    if n < 2:
        return n, mean, np.nan, np.nan
    half = stats.t.ppf(0.975, n - 1) * np.std(diff, ddof=1) / np.sqrt(n)
    return n, mean, mean - half, mean + half


final = pd.concat(finals, ignore_index=True)
comparisons = []
for optimizer in optimizers:
    base, _, variant = optimizer.partition("+")
    if not variant or base not in optimizers:
        continue
    for batch_size in batch_sizes:
        at_bs = final[final["batch_size"] == batch_size]
        pairs = pd.merge(
            at_bs[at_bs["optimizer"] == optimizer],
            at_bs[at_bs["optimizer"] == base],
            on="seed",
            suffixes=("", "_base"),
        ).dropna(subset=["test_accuracy", "test_accuracy_base"])
        n, mean, low, high = paired(pairs["test_accuracy"] - pairs["test_accuracy_base"])
        comparisons.append(
            {
                "dataset": dataset,
                "batch_size": batch_size,
                "optimizer": optimizer,
                "base": base,
                "n_pairs": n,
                "diff_mean": mean,
                "ci_low": low,
                "ci_high": high,
                "excludes_zero": bool(n >= 2 and (low > 0 or high < 0)),
            }
        )
columns = ["dataset", "batch_size", "optimizer", "base", "n_pairs", "diff_mean", "ci_low",
           "ci_high", "excludes_zero"]  # fmt: skip
paired_table = pd.DataFrame(comparisons, columns=columns)
write_frame(root / "paired.csv", paired_table)
print(paired_table.to_string())
