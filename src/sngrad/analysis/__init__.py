"""The study's statistics, one module per topic, each called by an analysis notebook.

- :mod:`.loaders`: a profile's per-run files as pandas frames;
- :mod:`.paired`: paired tests of every run against its base, step costs, the summary table;
- :mod:`.schedules`: the schedule contrast (a run's gain at a constant rate against its gain
  under the profile's decaying schedule);
- :mod:`.batch_trend`: the change of each paired difference over the batch sizes;
- :mod:`.tuning`: tuning settings, selection, learning-rate and alpha sensitivity;
- :mod:`.training_length`: training curves and the training-length criterion;
- :mod:`.shrink`: the sngrad factors' and the control variates' diagnostics;
- :mod:`.noise_summary`: the gradient-noise study pooled per checkpoint;
- :mod:`.outputs`: the tables each notebook writes (its entry points).

The constants and columns the report shares with them are :mod:`sngrad.tables`.

All are pure functions on frames in the formats of docs/CONTRACTS.md; the report formats the
tables the notebooks write and computes nothing.
"""
