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
# # Summary of one dataset
#
# For every run and batch size: the setting the tuning chose on the validation split and the
# final test accuracy over the final seeds (`summary.csv`). Then every run against its base
# optimizer, paired by seed, by test accuracy and final training loss, at equal epochs and
# (accuracy) at equal counted compute: an exact sign-flip p-value, Holm's correction within
# each family, an interval at the level Holm tested the row, the family's smallest detectable
# difference, and no-op runs set apart (`paired.csv`); per run with a constant-rate arm, the
# theory's prediction tested (`schedules.csv`); per run with a base, how its difference changes
# from the smallest to the largest batch size (`batch_trend.csv`). The statistics are
# `sngrad.analysis` functions (their docstrings state the rules, including how diverged seeds
# are handled); this notebook only loads, calls and writes.

# %%
import json

from sngrad.analysis import outputs
from sngrad.io import write_frame
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
layout = Layout(profile, results_root)
config = json.loads(config_json)
(dataset,) = datasets
parsed = [parse_run(run) for run in runs]  # the run names, parsed once where they are read
summary, paired, winners, schedules, trend = outputs.dataset_tables(layout, dataset, parsed,
                                                                      batch_sizes, config)

# %% [markdown]
# ## Chosen settings and final test accuracy

# %%
print(summary.to_string())

# %% [markdown]
# ## Each run against its base, paired by seed

# %%
shown = ["family", "outcome", "batch_size", "run", "base", "no_op", "n_pairs", "diff_mean",
         "ci_low", "ci_high", "ci_level", "p_signflip", "p_holm", "detectable",
         "verdict"]  # fmt: skip
print(paired[shown].to_string())

# %%
# %% [markdown]
# ## Each run's difference from its base, smallest against largest batch size

# %%
print(trend.to_string())

# %%
paths = notebook_tables(layout, "summary", dataset)
for path, table in zip(paths, (summary, paired, winners, schedules, trend), strict=True):
    write_frame(path, table)
