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
# # Performance of the optimizers
#
# Learning curves (test accuracy per epoch, mean over seeds), final test accuracy against
# batch size, and how sensitive each optimizer is to its learning rate (every setting the
# tuning tried, scored on the validation split).

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from sngrad.io import save_figure, write_frame

# %% tags=["parameters"]
datasets = ["digits"]
optimizers = ["sgd", "sgd+sngrad1"]
batch_sizes = [64]
results_dir = "results"
out_dir = "results/analysis"
figures_dir = "paper/figures"


# %%
def read_runs(name):
    frames = []
    for dataset in datasets:
        for optimizer in optimizers:
            for batch_size in batch_sizes:
                frame = pd.read_csv(Path(results_dir, dataset, optimizer, f"bs{batch_size}", name))
                frames.append(frame.assign(dataset=dataset, optimizer=optimizer,
                                           batch_size=batch_size))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def grid(rows, cols):
    fig, axes = plt.subplots(
        len(rows), len(cols), figsize=(3.2 * len(cols), 2.6 * len(rows)), squeeze=False
    )
    return fig, axes


Path(out_dir).mkdir(parents=True, exist_ok=True)
Path(figures_dir).mkdir(parents=True, exist_ok=True)
metrics = read_runs("metrics.csv")
tuning = read_runs("tuning.csv")
summary = pd.concat(
    [pd.read_csv(Path(results_dir, d, "summary.csv")) for d in datasets], ignore_index=True
)

# %% [markdown]
# ## Learning curves

# %%
fig, axes = grid(datasets, batch_sizes)
curves = metrics.groupby(["dataset", "batch_size", "optimizer", "epoch"])["test_accuracy"].mean()
for i, dataset in enumerate(datasets):
    for j, batch_size in enumerate(batch_sizes):
        ax = axes[i, j]
        for optimizer in optimizers:
            curve = curves.loc[(dataset, batch_size, optimizer)]
            ax.plot(curve.index, curve.values, label=optimizer)
        ax.set_title(f"{dataset}, batch {batch_size}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy")
axes[0, -1].legend(fontsize=7)
fig.tight_layout()
save_figure(fig, Path(figures_dir) / "learning_curves.png")

# %% [markdown]
# ## Test accuracy against batch size

# %%
fig, axes = grid([0], datasets)
for j, dataset in enumerate(datasets):
    ax = axes[0, j]
    for optimizer in optimizers:
        rows = summary[(summary["dataset"] == dataset) & (summary["optimizer"] == optimizer)]
        rows = rows.sort_values("batch_size")
        ax.errorbar(rows["batch_size"], rows["test_accuracy_mean"],
                    yerr=rows["test_accuracy_std"].fillna(0), marker="o", capsize=2,
                    label=optimizer)  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_title(dataset, fontsize=9)
    ax.set_xlabel("batch size")
    ax.set_ylabel("test accuracy")
axes[0, -1].legend(fontsize=7)
fig.tight_layout()
save_figure(fig, Path(figures_dir) / "accuracy_vs_batch_size.png")

# %% [markdown]
# ## Learning-rate sensitivity
#
# Each point is one tried setting (mean over the tuning seeds); diverged settings are drawn
# at zero accuracy so that the edge of stability stays visible.

# %%
tuning["diverged"] = tuning["diverged"].astype(bool)
settings = (
    tuning.groupby(["dataset", "batch_size", "optimizer", "setting"])
    .agg(
        learning_rate=("learning_rate", "first"),
        val_accuracy=("val_accuracy", "mean"),
        diverged=("diverged", "any"),
    )
    .reset_index()
)
settings.loc[settings["diverged"], "val_accuracy"] = 0.0

fig, axes = grid(datasets, batch_sizes)
for i, dataset in enumerate(datasets):
    for j, batch_size in enumerate(batch_sizes):
        ax = axes[i, j]
        for optimizer in optimizers:
            pts = settings[
                (settings["dataset"] == dataset)
                & (settings["batch_size"] == batch_size)
                & (settings["optimizer"] == optimizer)
            ].sort_values("learning_rate")
            ax.plot(pts["learning_rate"], pts["val_accuracy"], marker=".", label=optimizer)
        ax.set_xscale("log")
        ax.set_title(f"{dataset}, batch {batch_size}", fontsize=9)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("validation accuracy")
axes[0, -1].legend(fontsize=7)
fig.tight_layout()
save_figure(fig, Path(figures_dir) / "lr_sensitivity.png")

# %%
# How flat the optimum is: the share of tried settings within one accuracy point of the best.
sensitivity = (
    settings.groupby(["dataset", "optimizer", "batch_size"])
    .agg(
        settings=("setting", "count"),
        diverged_settings=("diverged", "sum"),
        best_val_accuracy=("val_accuracy", "max"),
        median_val_accuracy=("val_accuracy", "median"),
    )
    .reset_index()
)
best = settings.groupby(["dataset", "optimizer", "batch_size"])["val_accuracy"].transform("max")
near = (
    (settings["val_accuracy"] >= best - 0.01)
    .groupby([settings["dataset"], settings["optimizer"], settings["batch_size"]])
    .mean()
)
sensitivity["share_within_1pt"] = near.to_numpy()
sensitivity["diverged_settings"] = sensitivity["diverged_settings"].astype(int)
write_frame(Path(out_dir) / "lr_sensitivity.csv", sensitivity)
print(sensitivity.to_string())
