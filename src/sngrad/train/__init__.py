"""Training: the step (:mod:`.step`), the K-run engine (:mod:`.engine`), the tuning protocol
(:mod:`.protocol`), the result-writing commands (:mod:`.commands`) and their command line
(:mod:`.cli`). The names below are re-exported for ``from sngrad.train import ...``."""

from sngrad.train.cli import cli_reference, cli_train, cli_tune
from sngrad.train.commands import (
    DIAGNOSTICS_COLUMNS,
    METRICS_COLUMNS,
    TUNING_COLUMNS,
    reference,
    train,
    tune,
)
from sngrad.train.engine import (
    REFERENCE_MODE,
    TRAIN_MODE,
    TUNE_MODE,
    Mode,
    Programs,
    RunConfig,
    SweepResult,
    programs,
    run_sweep,
)
from sngrad.train.protocol import Run, parse_run, select_setting
from sngrad.train.step import make_step

__all__ = [
    "DIAGNOSTICS_COLUMNS", "METRICS_COLUMNS", "REFERENCE_MODE", "TRAIN_MODE", "TUNE_MODE",
    "TUNING_COLUMNS", "Mode", "Programs", "Run", "RunConfig", "SweepResult", "cli_reference",
    "cli_train", "cli_tune", "make_step", "parse_run", "programs", "reference", "run_sweep",
    "select_setting", "train", "tune",
]
