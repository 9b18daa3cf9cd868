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
# # The study over batch sizes
#
# Every cell is tuned and trained at every batch size of the profile. This notebook draws, per
# dataset, each run's paired difference in test accuracy from its base against the batch size
# (the Holm-level intervals of `paired.csv`, so an interval beside zero is a "better" or
# "worse" verdict), and the chosen learning rate against the batch size beside the linear and
# square-root scaling rules; it writes the scaling exponents (`analysis/lr_scaling.csv`,
# `sngrad.analysis.batch_trend.lr_scaling`). The change of each difference from the smallest to
# the largest batch size is the summary notebook's `batch_trend.csv`.

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D

from sngrad.analysis import batch_trend, loaders
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
primary = config.get("train", {}).get("schedule", "constant")
sizes = sorted(int(b) for b in batch_sizes)


def read_all(path_of):
    frames = [pd.read_csv(path_of(d)) for d in datasets]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


summary = read_all(layout.summary)
paired = read_all(layout.paired)
best = loaders.read_best(layout, datasets, runs, sizes)
scaling = batch_trend.lr_scaling(summary, best)

tab20 = plt.get_cmap("tab20").colors
palette = tab20[0::2] + tab20[1::2]
COLOURS = {run: palette[i % len(palette)] for i, run in enumerate(runs)}
ONE_SIZE = "one batch size in this profile: no trend to draw"


def note(ax, text):
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=8,
            color="0.4")  # fmt: skip


def batch_axis(ax):
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.minorticks_off()
    ax.set_xlabel("batch size $B$")


def legend(fig, shown, extra=()):
    handles = [Line2D([], [], color=COLOURS[r], marker="o", lw=1.2, label=r)
               for r in runs if r in shown] + list(extra)  # fmt: skip
    if handles:
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7,
                   frameon=False)  # fmt: skip


# %% [markdown]
# ## Each run against its base over the batch sizes
#
# Test accuracy, run minus base in percentage points, at equal epochs: the mean over paired
# seeds and its interval at the level Holm's procedure tested the row. One panel per dataset
# and schedule (the constant-rate arm apart); a hollow marker is a no-op run.

# %%
schedules = [primary] + (["constant"] if primary != "constant" else [])
rows = pd.DataFrame()
if len(paired):
    rows = paired[(paired["family"] == "equal_epochs") & (paired["outcome"] == "test_accuracy")]
    schedules = [s for s in schedules if (rows["schedule"] == s).any()] or schedules[:1]
fig, axes = plt.subplots(len(datasets), len(schedules), squeeze=False, sharex=True,
                         figsize=(4.2 * len(schedules) + 2.4, 3.0 * len(datasets)))  # fmt: skip
shown = set()
for i, dataset in enumerate(datasets):
    for j, schedule in enumerate(schedules):
        ax = axes[i, j]
        ax.set_title(f"{dataset}, schedule {schedule}", fontsize=9)
        batch_axis(ax)
        if j == 0:
            ax.set_ylabel("test accuracy, run - base (points)")
        if len(sizes) < 2:
            note(ax, ONE_SIZE)
            continue
        here = rows[(rows["dataset"] == dataset) & (rows["schedule"] == schedule)] \
            if len(rows) else rows
        if here.empty:
            note(ax, "no run compared with a base")
            continue
        runs_here = [r for r in runs if r in set(here["run"])]
        # small sideways offsets keep the intervals of neighbouring runs apart
        spread = 2 ** ((pd.Series(range(len(runs_here))) - (len(runs_here) - 1) / 2) * 0.04)
        for k, run in enumerate(runs_here):
            line = here[here["run"] == run].sort_values("batch_size")
            x = line["batch_size"].to_numpy(float) * spread[k]
            y = 100 * line["diff_mean"].to_numpy(float)
            low = 100 * line["ci_low"].to_numpy(float)
            high = 100 * line["ci_high"].to_numpy(float)
            finite = pd.notna(low) & (abs(low) != float("inf"))
            colour = COLOURS[run]
            ax.plot(x, y, "-", color=colour, lw=1.0)
            ax.errorbar(x[finite], y[finite], yerr=[y[finite] - low[finite],
                                                     high[finite] - y[finite]],
                        fmt="none", ecolor=colour, elinewidth=1.0, capsize=2)  # fmt: skip
            no_op = line["no_op"].astype(bool).to_numpy()
            ax.plot(x[~no_op], y[~no_op], "o", color=colour, ms=4)
            ax.plot(x[no_op], y[no_op], "o", color=colour, ms=4, mfc="none")
            shown.add(run)
        ax.axhline(0.0, color="0.5", lw=0.8, ls=":")
hollow = Line2D([], [], color="0.3", marker="o", mfc="none", ls="", label="no-op run")
legend(fig, shown, [hollow])
fig.tight_layout()
save_figure(fig, layout.figure("batch_size_trend"))

# %% [markdown]
# ## The chosen learning rate against the batch size
#
# The learning rate each run's tuning chose at each batch size (validation split), log-log,
# with the two usual rules drawn through `sgd`'s rate at the smallest batch size: linear
# scaling (slope 1) and square-root scaling (slope 1/2). Cells whose every setting diverged
# are left out.

# %%
fig, axes = plt.subplots(1, len(datasets), squeeze=False,
                         figsize=(4.2 * len(datasets) + 2.4, 3.2))  # fmt: skip
shown = set()
rule_lines = [Line2D([], [], color="0.2", ls="--", lw=1, label="linear: $\\eta \\propto B$"),
              Line2D([], [], color="0.2", ls=":", lw=1,
                     label="square root: $\\eta \\propto \\sqrt{B}$")]  # fmt: skip
for j, dataset in enumerate(datasets):
    ax = axes[0, j]
    ax.set_title(dataset, fontsize=9)
    batch_axis(ax)
    if j == 0:
        ax.set_ylabel(r"chosen learning rate $\eta$")
    if len(sizes) < 2:
        note(ax, ONE_SIZE)
        continue
    here = summary[(summary["dataset"] == dataset)
                   & ~summary["all_diverged"].astype(bool)] if len(summary) else summary
    for run in runs:
        line = here[here["run"] == run].sort_values("batch_size") if len(here) else here
        if line.empty:
            continue
        dashed = parsed[run].schedule_or(primary) != primary
        ax.plot(line["batch_size"], line["learning_rate"], "o-" if not dashed else "s-.",
                color=COLOURS[run], lw=1.0, ms=3)  # fmt: skip
        shown.add(run)
    anchor = here[(here["run"] == "sgd") & (here["batch_size"] == sizes[0])] if len(here) \
        else here
    if len(anchor):
        lr0 = float(anchor["learning_rate"].iloc[0])
        xs = pd.Series(sizes, dtype=float)
        ax.plot(xs, lr0 * xs / sizes[0], "--", color="0.2", lw=1)
        ax.plot(xs, lr0 * (xs / sizes[0]) ** 0.5, ":", color="0.2", lw=1)
    if shown:
        ax.set_yscale("log")
    else:
        note(ax, "no run with a valid setting")
legend(fig, shown, rule_lines)
fig.tight_layout()
save_figure(fig, layout.figure("lr_vs_batch_size"))

# %%
(scaling_path,) = notebook_tables(layout, "batch_sizes")
write_frame(scaling_path, scaling)
print(scaling.to_string())
