"""The gradient-noise study: :mod:`.measure` (the estimators and the compiled per-batch program)
and :mod:`.command` (``python -m sngrad noise``: inputs, the run over checkpoints, the CSV).

Its pooled summary is :mod:`sngrad.analysis.noise_summary`, its report section
:mod:`sngrad.report.noise`.
"""
