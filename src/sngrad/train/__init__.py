"""Training: the step (:mod:`.step`), the K-run engine (:mod:`.engine`), the tuning protocol
(:mod:`.protocol`), the result-writing commands (:mod:`.commands`), their command line
(:mod:`.cli`), checkpoints (:mod:`.checkpoint`) and per-step diagnostics
(:mod:`.diagnostics`). The names below are re-exported for ``from sngrad.train import ...``,
lazily, so that importing :mod:`.protocol` (as the profile checks do) does not import jax."""

from importlib import import_module

_EXPORTS = {
    "DIAGNOSTICS_COLUMNS": "sngrad.train.commands",
    "METRICS_COLUMNS": "sngrad.train.commands",
    "Mode": "sngrad.train.engine",
    "Programs": "sngrad.train.engine",
    "REFERENCE_MODE": "sngrad.train.engine",
    "RunConfig": "sngrad.train.engine",
    "SweepResult": "sngrad.train.engine",
    "TRAIN_MODE": "sngrad.train.engine",
    "TUNE_MODE": "sngrad.train.engine",
    "TUNING_COLUMNS": "sngrad.train.commands",
    "cli_reference": "sngrad.train.cli",
    "cli_train": "sngrad.train.cli",
    "cli_tune": "sngrad.train.cli",
    "make_step": "sngrad.train.step",
    "programs": "sngrad.train.engine",
    "reference": "sngrad.train.commands",
    "run_sweep": "sngrad.train.engine",
    "select": "sngrad.train.protocol",
    "train": "sngrad.train.commands",
    "tune": "sngrad.train.commands",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sngrad.train' has no attribute {name!r}")
