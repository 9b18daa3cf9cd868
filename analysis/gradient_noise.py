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
# # Gradient noise
#
# What the per-example gradient statistics recorded during training say about the noise the
# optimizers see: the signal-to-noise ratio |mu| / sigma of each layer's weights over
# training, the gradient noise scale tr(Sigma) / |G|^2 against the batch size, and the mean
# factor by which each sngrad variant (at its default alpha) scales the gradient.
# The reference runs are plain SGD when it is part of the comparison, so that the statistics
# are not shaped by the sngrad rescaling itself.

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
def grid(rows, cols):
    return plt.subplots(
        len(rows), len(cols), figsize=(3.2 * len(cols), 2.6 * len(rows)), squeeze=False
    )


Path(out_dir).mkdir(parents=True, exist_ok=True)
Path(figures_dir).mkdir(parents=True, exist_ok=True)
frames = [
    pd.read_csv(Path(results_dir, d, o, f"bs{b}", "diagnostics.csv")).assign(
        dataset=d, optimizer=o, batch_size=b
    )
    for d in datasets
    for o in optimizers
    for b in batch_sizes
]
diag = pd.concat(frames, ignore_index=True)
reference = "sgd" if "sgd" in optimizers else optimizers[0]
ref = diag[diag["optimizer"] == reference]
print("reference optimizer:", reference)

# %% [markdown]
# ## Signal-to-noise ratio per layer over training

# %%
fig, axes = grid(datasets, batch_sizes)
snr = ref.groupby(["dataset", "batch_size", "layer", "epoch"])["snr_median"].mean()
for i, dataset in enumerate(datasets):
    for j, batch_size in enumerate(batch_sizes):
        ax = axes[i, j]
        for layer, curve in snr.loc[(dataset, batch_size)].groupby(level="layer"):
            ax.plot(curve.index.get_level_values("epoch"), curve.values, label=f"layer {layer}")
        ax.set_yscale("log")
        ax.set_title(f"{dataset}, batch {batch_size} ({reference})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("median |mu| / sigma")
axes[0, -1].legend(fontsize=7)
fig.tight_layout()
save_figure(fig, Path(figures_dir) / "gradient_snr.png")

# %% [markdown]
# ## Noise scale against batch size
#
# Per run: the mean over layers and seeds, at the first and at the last recorded epoch.

# %%
first_last = ref.groupby(["dataset", "batch_size", "seed"])["epoch"].agg(["min", "max"])
ref = ref.join(first_last, on=["dataset", "batch_size", "seed"])
fig, axes = grid([0], datasets)
for j, dataset in enumerate(datasets):
    ax = axes[0, j]
    for when in ["min", "max"]:
        at = ref[(ref["dataset"] == dataset) & (ref["epoch"] == ref[when])]
        curve = at.groupby("batch_size")["noise_scale"].mean()
        label = "first epoch" if when == "min" else "last epoch"
        ax.plot(curve.index, curve.values, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_title(f"{dataset} ({reference})", fontsize=9)
    ax.set_xlabel("batch size")
    ax.set_ylabel("noise scale tr(Sigma)/|G|^2")
axes[0, -1].legend(fontsize=7)
fig.tight_layout()
save_figure(fig, Path(figures_dir) / "noise_scale.png")

# %% [markdown]
# ## sngrad scale factors over training

# %%
variants = ["factor_I", "factor_II", "factor_III"]
fig, axes = grid(datasets, variants)
factors = ref.groupby(["dataset", "batch_size", "epoch"])[variants].mean()
for i, dataset in enumerate(datasets):
    for j, variant in enumerate(variants):
        ax = axes[i, j]
        for batch_size in batch_sizes:
            curve = factors.loc[(dataset, batch_size), variant]
            ax.plot(curve.index, curve.values, label=f"batch {batch_size}")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{dataset}: variant {variant.split('_')[1]}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean scale factor")
axes[0, -1].legend(fontsize=7)
fig.tight_layout()
save_figure(fig, Path(figures_dir) / "sngrad_factors.png")

# %% [markdown]
# ## Table: first and last epoch of every run (means over layers and seeds)

# %%
diag = diag.join(
    diag.groupby(["dataset", "optimizer", "batch_size", "seed"])["epoch"].agg(["min", "max"]),
    on=["dataset", "optimizer", "batch_size", "seed"],
)
keys = ["dataset", "optimizer", "batch_size"]
columns = ["snr_median", "noise_scale", *variants]
first = diag[diag["epoch"] == diag["min"]].groupby(keys)[columns].mean().add_suffix("_first")
last = diag[diag["epoch"] == diag["max"]].groupby(keys)[columns].mean().add_suffix("_last")
table = first.join(last).reset_index()
table["reference"] = table["optimizer"] == reference
write_frame(Path(out_dir) / "gradient_noise.csv", table)
print(table.to_string())
