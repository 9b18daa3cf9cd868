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
# # Gradient noise at fixed parameters
#
# The noise study (`python -m sngrad noise`, package `sngrad.noise`) holds the parameters of
# one reference run fixed at five checkpoints (initialisation, after the first epoch, 25 %,
# 50 % and 100 % of training) and draws many random batches of every batch size B from the
# training split. This notebook only reads `results/<profile>/noise/<dataset>.csv`, calls
# `sngrad.analysis.noise_summary` for the summary (B_simple per checkpoint, fitted log-log
# slopes) and draws:
#
# - the per-example sigma and the noise of the batch mean against B (slope -1/2 drawn);
# - the batch signal-to-noise ratio against B per layer, with its pure-noise reference
#   (the same batch with every example's gradient multiplied by a random sign);
# - the gradient noise scale B_simple over training (unbiased, exact and the old biased one);
# - the share of coordinates each variant shrinks against B.

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from sngrad.analysis import noise_summary
from sngrad.io import save_figure, write_frame
from sngrad.layout import NOISE_SUMMARY, Layout
from sngrad.noise.measure import ALL
from sngrad.profile import SEED_STUDY_BATCH_SIZES

# %% tags=["parameters"]
profile = "smoke"
results_root = "results"
datasets = ["digits"]

# %%
layout = Layout(profile, results_root)
frames = {d: pd.read_csv(layout.noise(d)) for d in datasets if Path(layout.noise(d)).exists()}
print("datasets without a noise table:", [d for d in datasets if d not in frames] or "none")
for frame in frames.values():
    frame["layer"] = frame["layer"].astype(str)

summary = noise_summary.summary_table(layout, datasets)
write_frame(layout.analysis(NOISE_SUMMARY), summary)
print(f"{len(summary)} summary rows -> {layout.analysis(NOISE_SUMMARY)}")

# %%
NETWORK = ALL
CHECKPOINT_COLOURS = plt.get_cmap("viridis")
VARIANT_STYLE = {"I": "tab:blue", "II": "tab:orange", "III": "tab:green"}
SEED_STUDY = SEED_STUDY_BATCH_SIZES


def checkpoints_of(frame):
    order = frame.drop_duplicates("checkpoint").sort_values("epoch")
    return list(zip(order["checkpoint"], order["epoch"], strict=True))


def colour(i, n):
    return CHECKPOINT_COLOURS(i / max(n - 1, 1))


def grid(n_rows, n_cols, height=2.8):
    return plt.subplots(
        n_rows, n_cols, figsize=(3.6 * n_cols + 2.4, height * n_rows), squeeze=False
    )


def legend_outside(fig, axes):
    handles, labels = axes.flat[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    fig.legend(unique.values(), unique.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5),
               fontsize=8, frameon=False)  # fmt: skip


def empty(ax, text="no noise table"):
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def slope_guide(ax, xs, y0, slope=-0.5):
    xs = np.asarray([min(xs), max(xs)], float)
    ax.plot(xs, y0 * (xs / xs[0]) ** slope, color="0.3", lw=1, ls=":",
            label=r"slope $-1/2$")  # fmt: skip


# %% [markdown]
# ## Per-example sigma and the noise of the batch mean against the batch size
#
# Top: the median over the coordinates of the per-example standard deviation sigma measured
# on a batch, with the full training split's value as a thin line. Bottom: the noise of the
# batch mean, median sigma / sqrt(B) (line) and the measured root-mean-square error of the
# batch mean against the full-data gradient (markers), with a slope -1/2 guide.

# %%
fig, axes = grid(2, max(len(datasets), 1))
for j, dataset in enumerate(datasets):
    top, bottom = axes[0, j], axes[1, j]
    if dataset not in frames:
        empty(top), empty(bottom)
        continue
    net = frames[dataset][frames[dataset]["layer"] == NETWORK]
    points = checkpoints_of(net)
    for i, (checkpoint, epoch) in enumerate(points):
        part = net[net["checkpoint"] == checkpoint].sort_values("batch_size")
        c = colour(i, len(points))
        label = f"{checkpoint} (epoch {epoch})"
        top.errorbar(part["batch_size"], part["sigma_median"], part["sigma_median_se"],
                     color=c, marker="o", ms=3, label=label)  # fmt: skip
        top.axhline(part["sigma_median_exact"].iloc[0], color=c, lw=0.8, alpha=0.6)
        bottom.plot(part["batch_size"], part["mean_noise"], color=c, label=label)
        bottom.plot(part["batch_size"], part["mean_error"], color=c, ls="none", marker="x",
                    ms=4)  # fmt: skip
    first = net[net["checkpoint"] == points[0][0]].sort_values("batch_size")
    slope_guide(bottom, first["batch_size"], first["mean_error"].iloc[0] * 1.5)
    top.set_title(f"{dataset}: per-example " + r"$\sigma$", fontsize=9)
    bottom.set_title(f"{dataset}: noise of the batch mean", fontsize=9)
    top.set_ylabel(r"median $\sigma_i$")
    bottom.set_ylabel(r"$\sigma/\sqrt{B}$ (line), RMS$(\mu - G)$ ($\times$)")
    for ax in (top, bottom):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(r"batch size $B$")
fig.tight_layout()
legend_outside(fig, axes[1:, :])
save_figure(fig, layout.figure("noise_vs_batch"))

# %% [markdown]
# ## Batch signal-to-noise ratio against the batch size, per layer
#
# The median over the coordinates of sqrt(B) |mu| / sigma (solid) and of the same ratio with
# every example's gradient multiplied by a random sign (dashed, the pure-noise reference that
# keeps the sparsity pattern); the dotted black line is the Gaussian pure-noise median.

# %%
n_groups = max((f["layer"].nunique() for f in frames.values()), default=1)
fig, axes = grid(max(len(datasets), 1), n_groups)
for i, dataset in enumerate(datasets):
    if dataset not in frames:
        empty(axes[i, 0])
        continue
    frame = frames[dataset]
    groups = sorted(frame["layer"].unique(), key=lambda g: (g == NETWORK, g))
    points = checkpoints_of(frame)
    for j, group in enumerate(groups):
        ax = axes[i, j]
        part_g = frame[frame["layer"] == group]
        for k, (checkpoint, epoch) in enumerate(points):
            part = part_g[part_g["checkpoint"] == checkpoint].sort_values("batch_size")
            c = colour(k, len(points))
            ax.plot(part["batch_size"], part["snr_batch_median"], color=c, marker="o", ms=3,
                    label=f"{checkpoint} (epoch {epoch})")  # fmt: skip
            ax.plot(part["batch_size"], part["snr_pure_noise"], color=c, ls="--", lw=0.9)
        ax.plot(part["batch_size"], part["snr_gaussian_null"], color="k", ls=":", lw=1,
                label="Gaussian pure noise")  # fmt: skip
        ax.plot([], [], color="0.5", ls="--", label="sign-flipped (pure noise)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        name = "network" if group == NETWORK else f"layer {group}"
        ax.set_title(f"{dataset}: {name}", fontsize=9)
        ax.set_xlabel(r"batch size $B$")
        ax.set_ylabel(r"median $\sqrt{B}\,|\mu_i| / \sigma_i$")
fig.tight_layout()
legend_outside(fig, axes)
save_figure(fig, layout.figure("snr_vs_batch"))

# %% [markdown]
# ## Gradient noise scale B_simple over training
#
# tr(Sigma)/|G|^2 of the network and of each layer at every checkpoint: the unbiased
# estimate (combined over the batch sizes, with its standard error), the exact value on the
# full training split, and the old same-batch estimate at B = 128, which cannot exceed B.
# The band marks the batch sizes 128-1024 of the seed's study.

# %%
fig, axes = grid(1, max(len(datasets), 1), height=3.2)
for j, dataset in enumerate(datasets):
    ax = axes[0, j]
    if dataset not in frames:
        empty(ax)
        continue
    table = noise_summary.b_simple_by_checkpoint(frames[dataset])
    groups = sorted(table["layer"].unique(), key=lambda g: (g == NETWORK, g))
    for k, group in enumerate(groups):
        part = table[table["layer"] == group].sort_values("epoch")
        c = "k" if group == NETWORK else plt.get_cmap("tab10")(k)
        name = "network" if group == NETWORK else f"layer {group}"
        ax.errorbar(part["epoch"], part["b_simple"], part["b_simple_se"], color=c, marker="o",
                    ms=4, capsize=2, label=f"{name}: unbiased")  # fmt: skip
        ax.plot(part["epoch"], part["b_simple_exact"], color=c, ls="none", marker="_", ms=12,
                label=f"{name}: full split")  # fmt: skip
        if group == NETWORK:
            ax.plot(part["epoch"], part["b_simple_biased"], color="tab:red", ls="--",
                    marker="v", ms=4,
                    label=f"network: same-batch, B = {part['biased_batch_size'].iloc[0]}")
    ax.axhspan(*SEED_STUDY, color="0.85", alpha=0.6, lw=0, label="seed's batch sizes")
    ax.set_yscale("log")
    ax.set_xlabel("epoch of the checkpoint")
    ax.set_ylabel(r"$B_{\mathrm{simple}} = \mathrm{tr}\,\Sigma / |G|^2$")
    ax.set_title(dataset, fontsize=9)
fig.tight_layout()
legend_outside(fig, axes)
save_figure(fig, layout.figure("noise_scale_over_training"))

# %% [markdown]
# ## Share of coordinates each variant shrinks, against the batch size
#
# Share of the informative coordinates (gradient non-zero for some training example) with
# factor f < 1, at the tuned alpha (solid) and at alpha = 1 (dashed), per checkpoint.

# %%
variants = ["I", "II", "III"]
fig, axes = grid(max(len(datasets), 1), len(variants))
for i, dataset in enumerate(datasets):
    if dataset not in frames:
        empty(axes[i, 0])
        continue
    net = frames[dataset][frames[dataset]["layer"] == NETWORK]
    points = checkpoints_of(net)
    for j, variant in enumerate(variants):
        ax = axes[i, j]
        for k, (checkpoint, epoch) in enumerate(points):
            part = net[net["checkpoint"] == checkpoint].sort_values("batch_size")
            c = colour(k, len(points))
            ax.plot(part["batch_size"], part[f"shrink_share_{variant}_tuned"], color=c,
                    marker="o", ms=3, label=f"{checkpoint} (epoch {epoch})")  # fmt: skip
            ax.plot(part["batch_size"], part[f"shrink_share_{variant}_alpha1"], color=c,
                    ls="--", lw=0.9)  # fmt: skip
        ax.plot([], [], color="0.5", label=r"tuned $\alpha$")
        ax.plot([], [], color="0.5", ls="--", label=r"$\alpha = 1$")
        alpha = net[f"alpha_{variant}_tuned"].iloc[0]
        tuned = "not tuned" if np.isnan(alpha) else rf"tuned $\alpha$ = {alpha:.3g}"
        ax.set_title(f"{dataset}: variant {variant} ({tuned})", fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel(r"batch size $B$")
        ax.set_ylabel(r"share with $f < 1$")
fig.tight_layout()
legend_outside(fig, axes)
save_figure(fig, layout.figure("shrink_vs_batch"))

# %% [markdown]
# ## Summary (what the report quotes)

# %%
columns = [
    "dataset", "checkpoint", "epoch", "b_simple", "b_simple_se", "b_simple_exact",
    "b_simple_biased", "mean_noise_slope", "mean_noise_slope_se", "mean_error_slope",
    "mean_error_slope_se", "sigma_slope", "sigma_slope_se", "sigma_changes",
]  # fmt: skip
print(summary[[c for c in columns if c in summary]].to_string() if len(summary) else "empty")
