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
# # Performance of the optimizers across datasets
#
# Learning curves (validation accuracy and training loss), how the tuning's validation
# accuracy depends on the learning rate and on the scale-free alpha, accuracy against
# training time, how much each noise-informed variant shrank the gradient, and what the
# control variates achieved. All statistics are `sngrad.analysis` functions; every selection
# (best learning rate, best and worst alpha) uses the validation split only. Diverged seeds
# are left out of means and bands and marked with a cross at the epoch they diverged.

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.transforms as mtransforms
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from sngrad import costs
from sngrad.analysis import loaders, outputs, shrink, training_length, tuning
from sngrad.io import save_figure, write_frame
from sngrad.layout import Layout, notebook_tables
from sngrad.names import parse_run

# %% tags=["parameters"]
profile = "smoke"
results_root = "results"
datasets = ["digits"]
runs = ["sgd", "sgd+sngrad1"]
batch_sizes = [64]
config_json = "{}"

# %%
# the run names parsed once, where the notebook reads them (the files and colours go by name)
parsed = {run: parse_run(run) for run in runs}
layout = Layout(profile, results_root)
config = json.loads(config_json)
model = config.get("model")
cells = [(d, int(b)) for d in datasets for b in batch_sizes]

metrics, missing_metrics = loaders.read_run_tables(
    layout, datasets, runs, batch_sizes, "metrics.csv"
)
tuning_rows, _ = loaders.read_run_tables(layout, datasets, runs, batch_sizes, "tuning.csv")
diagnostics, _ = loaders.read_run_tables(layout, datasets, runs, batch_sizes, "diagnostics.csv")
print("runs without metrics:", missing_metrics or "none")

# one colour per run, the same in every figure
# (tab20 pairs a dark and a light shade of each hue: the dark ones first keep neighbours apart)
tab20 = plt.get_cmap("tab20").colors
palette = tab20[0::2] + tab20[1::2]
COLOURS = {run: palette[i % len(palette)] for i, run in enumerate(runs)}
EMPTY = "no data for this panel"


def grid(n_rows, n_cols, *, sharey="row", height=2.8):
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(3.6 * n_cols + 2.4, height * n_rows), squeeze=False,
        sharex="col", sharey=sharey,
    )  # fmt: skip
    return fig, axes


def whole_epochs(ax):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def note(ax, text):
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=8,
            color="0.4")  # fmt: skip


def mark_diverged(ax, xs, colour):
    """A cross at the bottom edge at each x where a seed diverged (not a value of zero)."""
    if len(xs):
        bottom = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
        ax.plot(xs, [0.03] * len(xs), "x", color=colour, transform=bottom, clip_on=False,
                markersize=6, markeredgewidth=1.5)  # fmt: skip


def log_if_positive(ax, values, axis="y"):
    values = pd.to_numeric(pd.Series(values), errors="coerce")
    if (values > 0).any():
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def run_legend(fig, shown, extra=()):
    handles = [Line2D([], [], color=COLOURS[r], lw=2, label=r) for r in runs if r in shown]
    handles += list(extra)
    if handles:
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7,
                   frameon=False)  # fmt: skip


DIVERGED = Line2D([], [], color="0.3", marker="x", ls="", label="seed diverged (epoch)")


def cell_rows(frame, dataset, batch_size, run=None):
    if frame.empty:
        return frame
    mask = (frame["dataset"] == dataset) & (frame["batch_size"] == batch_size)
    if run is not None:
        mask &= frame["optimizer"] == run
    return frame[mask]


# %% [markdown]
# ## Learning curves: validation accuracy and training loss
#
# One pair of rows per group of runs (a base optimizer with its variants or relatives, so that
# a panel stays readable): validation accuracy above, mean training loss of the epoch (log
# scale) below, the same y-axis within a row. Lines are means over the final seeds that had
# not diverged, bands one standard deviation.

# %%
groups = {group: [run.name for run in members]  # the frames and colours go by name
          for group, members in outputs.run_groups(list(parsed.values())).items()}
fig, axes = grid(2 * len(groups), len(cells), height=2.4)
shown = set()
if not metrics.empty:
    accuracy = training_length.curves(metrics, "val_accuracy")
    loss = training_length.curves(metrics, "train_loss")
    died = training_length.divergence_epochs(metrics)
for g, (group, members) in enumerate(groups.items()):
    for j, (dataset, batch_size) in enumerate(cells):
        for i, label in enumerate([r"validation accuracy", r"training loss $L$"]):
            ax = axes[2 * g + i, j]
            table = None if metrics.empty else (accuracy if i == 0 else loss)
            drawn = False
            for run in members:
                curve = (pd.DataFrame() if table is None
                         else cell_rows(table, dataset, batch_size, run))  # fmt: skip
                curve = curve.sort_values("epoch") if len(curve) else curve
                if len(curve) and curve["mean"].notna().any():
                    colour = COLOURS[run]
                    ax.plot(curve["epoch"], curve["mean"], color=colour, lw=1.3)
                    std = curve["std"].fillna(0.0)
                    ax.fill_between(curve["epoch"], curve["mean"] - std, curve["mean"] + std,
                                    color=colour, alpha=0.15, lw=0)  # fmt: skip
                    drawn = True
                    shown.add(run)
                if table is not None:
                    crosses = cell_rows(died, dataset, batch_size, run)["epoch"]
                    mark_diverged(ax, crosses, COLOURS[run])
                    if len(crosses):
                        shown.add(run)
            if not drawn:
                note(ax, EMPTY)
            if i == 1 and table is not None:
                values = cell_rows(loss, dataset, batch_size)
                log_if_positive(ax, values[values["optimizer"].isin(members)]["mean"])
            ax.set_title(f"{group}: {dataset}, $B = {batch_size}$", fontsize=8)
            ax.set_xlabel("epoch")
            whole_epochs(ax)
            if j == 0:
                ax.set_ylabel(label)
run_legend(fig, shown, [DIVERGED])
fig.tight_layout()
save_figure(fig, layout.figure("learning_curves"))

# %% [markdown]
# ## Learning-rate sensitivity (validation, tuning seeds)
#
# For each learning rate tried: the best mean validation accuracy over the second axis
# (momentum or alpha). A filled dot is the chosen setting; a cross at the bottom marks a
# learning rate at which every setting diverged.

# %%
settings = tuning.tuning_settings(tuning_rows)
lr_points = tuning.lr_curve(settings) if len(settings) else pd.DataFrame()
fig, axes = grid(1, len(cells))
shown = set()
for j, (dataset, batch_size) in enumerate(cells):
    ax = axes[0, j]
    for run in runs:
        pts = cell_rows(lr_points, dataset, batch_size, run)
        if pts.empty:
            continue
        pts = pts.sort_values("learning_rate")
        colour = COLOURS[run]
        ok = pts[~pts["all_diverged"]]
        ax.plot(ok["learning_rate"], ok["val_accuracy"], ".-", color=colour, lw=1, ms=3)
        chosen = ok[ok["chosen"]]
        ax.plot(chosen["learning_rate"], chosen["val_accuracy"], "o", color=colour, ms=5)
        mark_diverged(ax, pts[pts["all_diverged"]]["learning_rate"], colour)
        shown.add(run)
    if not shown:
        note(ax, EMPTY)
    else:
        ax.set_xscale("log")
    ax.set_title(f"{dataset}, $B = {batch_size}$", fontsize=9)
    ax.set_xlabel(r"learning rate $\eta$")
    if j == 0:
        ax.set_ylabel("mean validation accuracy")
chosen_marker = Line2D([], [], color="0.3", marker="o", ls="", label="chosen setting")
all_diverged = Line2D([], [], color="0.3", marker="x", ls="", label="all settings diverged")
run_legend(fig, shown, [chosen_marker, all_diverged])
fig.tight_layout()
save_figure(fig, layout.figure("lr_sensitivity"))

# %% [markdown]
# ## Alpha sensitivity (validation, at the chosen learning rate)
#
# Scale-free alpha: $\alpha B$ for variant II, $\alpha\,\sigma_\mathrm{ref}$ for I and III
# (the tuning's units). Only runs whose alpha was tuned; best and worst by validation.

# %%
alpha_points = tuning.alpha_table(settings) if len(settings) else pd.DataFrame(
    columns=tuning.ALPHA_COLUMNS)  # fmt: skip
fig, axes = grid(1, len(cells))
shown = set()
for j, (dataset, batch_size) in enumerate(cells):
    ax = axes[0, j]
    for run in runs:
        line = cell_rows(alpha_points, dataset, batch_size, run)
        if line.empty:
            continue
        colour = COLOURS[run]
        ok = line[~line["diverged"].astype(bool)]
        ax.plot(ok["alpha_scaled"], ok["val_accuracy"], "o-", color=colour, lw=1, ms=3)
        chosen = ok[ok["chosen"].astype(bool)]
        ax.plot(chosen["alpha_scaled"], chosen["val_accuracy"], "o", color=colour, ms=6,
                mfc="none")  # fmt: skip
        mark_diverged(ax, line[line["diverged"].astype(bool)]["alpha_scaled"], colour)
        shown.add(run)
    if not shown:
        note(ax, "no sngrad run with a tuned alpha")
    else:
        ax.set_xscale("log")
    ax.set_title(f"{dataset}, $B = {batch_size}$", fontsize=9)
    ax.set_xlabel(r"scale-free $\alpha$: $\alpha B$ (II), $\alpha\sigma_\mathrm{ref}$ (I, III)")
    if j == 0:
        ax.set_ylabel("mean validation accuracy")
chosen_ring = Line2D([], [], color="0.3", marker="o", mfc="none", ls="", label="chosen")
setting_diverged = Line2D([], [], color="0.3", marker="x", ls="", label="setting diverged")
run_legend(fig, shown, [chosen_ring, setting_diverged])
fig.tight_layout()
save_figure(fig, layout.figure("alpha_sensitivity"))


# %% [markdown]
# ## Accuracy against counted compute
#
# Compute in SGD epochs: epoch x the run's counted cost per epoch relative to an SGD epoch
# (`sngrad.costs.cost_ratio`: the FLOPs of the matrix products and elementwise passes of a step,
# the control variates' anchor amortised), on the study network. The same on any machine.


# %%
def data_meta(dataset):
    path = Path(layout.data_meta(dataset))
    return json.loads(path.read_text()) if path.exists() else None


snapshot_every = int(config.get("train", {}).get("snapshot_every", 1))
fig, axes = grid(1, len(cells))
shown = set()
test_curves = (
    training_length.curves(metrics, "test_accuracy") if not metrics.empty else pd.DataFrame()
)
SGD = parse_run("sgd")  # what every run's cost is read against
for j, (dataset, batch_size) in enumerate(cells):
    ax = axes[0, j]
    meta = data_meta(dataset)
    for run in runs:
        curve = cell_rows(test_curves, dataset, batch_size, run)
        if curve.empty or meta is None:
            continue
        n_train = meta["sizes"]["train"]
        cost = costs.cost_ratio(parsed[run], SGD, outputs.network(model, dataset, meta), n_train,
                                batch_size, snapshot_every)
        curve = curve.sort_values("epoch")
        compute = curve["epoch"] * cost
        ax.plot(compute, curve["mean"], color=COLOURS[run], lw=1.3)
        std = curve["std"].fillna(0.0)
        ax.fill_between(compute, curve["mean"] - std, curve["mean"] + std, color=COLOURS[run],
                        alpha=0.15, lw=0)  # fmt: skip
        shown.add(run)
    if not shown:
        note(ax, EMPTY)
    ax.set_title(f"{dataset}, $B = {batch_size}$", fontsize=9)
    ax.set_xlabel("counted compute (SGD epochs)")
    if j == 0:
        ax.set_ylabel("test accuracy")
run_legend(fig, shown)
fig.tight_layout()
save_figure(fig, layout.figure("equal_compute"))

# %% [markdown]
# ## How much the noise-informed factors shrank the gradient
#
# Mean factor $f$ and the share of coordinates with $f < 1$ per epoch (mean over seeds), one
# line style per layer.

# %%
shrink_lines = shrink.shrink_curves(diagnostics)
layers = sorted(shrink_lines["layer"].unique()) if len(shrink_lines) else []
styles = ["-", "--", ":", "-."]
fig, axes = grid(2, len(cells))
shown = set()
for j, (dataset, batch_size) in enumerate(cells):
    for i, (column, label) in enumerate(
        [("factor_mean", r"mean factor $\bar f$"), ("shrink_share", r"share with $f < 1$")]
    ):
        ax = axes[i, j]
        drawn = False
        for run in runs:
            for k, layer in enumerate(layers):
                line = cell_rows(shrink_lines, dataset, batch_size, run)
                line = line[line["layer"] == layer].sort_values("epoch")
                if line.empty:
                    continue
                ax.plot(line["epoch"], line[column], styles[k % len(styles)],
                        color=COLOURS[run], lw=1.2)  # fmt: skip
                drawn = True
                shown.add(run)
        if not drawn:
            note(ax, "no run with a factor")
        ax.set_ylim(-0.02, 1.02)  # both are fractions
        ax.set_title(f"{dataset}, $B = {batch_size}$", fontsize=9)
        ax.set_xlabel("epoch")
        whole_epochs(ax)
        if j == 0:
            ax.set_ylabel(label)
layer_styles = [Line2D([], [], color="0.3", ls=styles[k % len(styles)], label=f"layer {layer}")
                for k, layer in enumerate(layers)]  # fmt: skip
run_legend(fig, shown, layer_styles)
fig.tight_layout()
save_figure(fig, layout.figure("shrink_over_training"))

# %% [markdown]
# ## Control variates
#
# Achieved variance ratio (variance of the corrected gradient over that of the plain batch
# mean; below 1 is a reduction) and the median coefficient lambda, per epoch.

# %%
cv_lines = shrink.cv_curves(diagnostics)
fig, axes = grid(2, len(cells))
shown = set()
for j, (dataset, batch_size) in enumerate(cells):
    for i, (column, label) in enumerate(
        [("variance_ratio", "variance ratio"), ("lambda_median", r"median $\lambda$")]
    ):
        ax = axes[i, j]
        drawn = False
        for run in runs:
            line = cell_rows(cv_lines, dataset, batch_size, run).sort_values("epoch")
            if line.empty or not line[column].notna().any():
                continue
            ax.plot(line["epoch"], line[column], "o-", color=COLOURS[run], lw=1.2, ms=3)
            drawn = True
            shown.add(run)
        if i == 0 and drawn:
            ax.axhline(1.0, color="0.6", lw=0.8, ls=":")
        if not drawn:
            note(ax, "no control-variate run in this profile")
        ax.set_title(f"{dataset}, $B = {batch_size}$", fontsize=9)
        ax.set_xlabel("epoch")
        whole_epochs(ax)
        if j == 0:
            ax.set_ylabel(label)
run_legend(fig, shown)
fig.tight_layout()
save_figure(fig, layout.figure("control_variates"))

# %% [markdown]
# ## Tables

# %%
tables = outputs.performance_tables(layout, datasets, list(parsed.values()), batch_sizes, model)
for path in notebook_tables(layout, "performance"):
    write_frame(path, tables[Path(path).name])
print(tables["training_length.csv"].to_string())
