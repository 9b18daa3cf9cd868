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
# # Sensitivity of the sngrad variants to alpha
#
# Each variant was retrained with its tuned learning rate for every alpha of the sweep; the
# accuracy is the mean over seeds at the last epoch. A flat curve means alpha needs no tuning.

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from sngrad.io import save_figure, write_frame

# %% tags=["parameters"]
datasets = ["digits"]
optimizers = ["sgd+sngrad1"]
batch_size = 64
results_dir = "results"
out_dir = "results/analysis"
figures_dir = "paper/figures"


# %%
Path(out_dir).mkdir(parents=True, exist_ok=True)
Path(figures_dir).mkdir(parents=True, exist_ok=True)
sweeps = pd.concat(
    [
        pd.read_csv(Path(results_dir, d, o, f"bs{batch_size}", "alpha_sweep.csv")).assign(
            dataset=d, optimizer=o, batch_size=batch_size
        )
        for d in datasets
        for o in optimizers
    ],
    ignore_index=True,
)
sweeps["diverged"] = sweeps["diverged"].astype(bool)
table = (
    sweeps.groupby(["dataset", "optimizer", "batch_size", "alpha"])
    .agg(
        val_accuracy_mean=("val_accuracy", "mean"),
        test_accuracy_mean=("test_accuracy", "mean"),
        test_accuracy_std=("test_accuracy", "std"),
        n_seeds=("seed", "nunique"),
        diverged=("diverged", "sum"),
    )
    .reset_index()
)
table["diverged"] = table["diverged"].astype(int)
write_frame(Path(out_dir) / "alpha_sensitivity.csv", table)
print(table.to_string())

# %%
fig, axes = plt.subplots(1, len(datasets), figsize=(3.4 * len(datasets), 2.8), squeeze=False)
for j, dataset in enumerate(datasets):
    ax = axes[0, j]
    for optimizer in optimizers:
        rows = table[(table["dataset"] == dataset) & (table["optimizer"] == optimizer)]
        ax.errorbar(rows["alpha"], rows["test_accuracy_mean"],
                    yerr=rows["test_accuracy_std"].fillna(0), marker="o", capsize=2,
                    label=optimizer)  # fmt: skip
    ax.set_xscale("log")
    ax.set_title(f"{dataset}, batch {batch_size}", fontsize=9)
    ax.set_xlabel("alpha")
    ax.set_ylabel("test accuracy")
axes[0, -1].legend(fontsize=7)
fig.tight_layout()
save_figure(fig, Path(figures_dir) / "alpha_sensitivity.png")
