"""sngrad: noise-informed (signal-to-noise) gradient descent in JAX.

For every parameter, the batch's per-example gradients g_1..g_B give a mean mu and a
population standard deviation sigma; the optimizer is fed one of

    I:   mu * min(1 / (alpha sigma), 1)
    II:  mu * min(mu^2 / (alpha sigma^2), 1)
    III: (1 - min(alpha sigma, 1)) * mu

The public names below are imported lazily so that ``python -m sngrad data`` starts fast.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "gradient_stats": "sngrad.stats",
    "loss_and_grad": "sngrad.stats",
    "BACKENDS": "sngrad.names",
    "noise_informed": "sngrad.transforms",
    "scale_factor": "sngrad.transforms",
    "VARIANTS": "sngrad.names",
    "DEFAULT_ALPHA": "sngrad.transforms",
    "control_variate": "sngrad.transforms",
    "CVStats": "sngrad.stats",
    "build_optimizer": "sngrad.optimizers",
    "needs_variance": "sngrad.optimizers",
    "OPTIMIZERS": "sngrad.names",
    "parse_optimizer": "sngrad.names",
    "parse_run": "sngrad.names",
    "has_momentum": "sngrad.optimizers",
    "msvag": "sngrad.optimizers",
    "mlp_init": "sngrad.models",
    "mlp_apply": "sngrad.models",
    "cross_entropy": "sngrad.models",
    "load_dataset": "sngrad.data",
    "DATASETS": "sngrad.data",
    "SngradError": "sngrad.errors",
    "per_example_moments": "sngrad.moments",
    "Moments": "sngrad.moments",
    "flax_moments": "sngrad.moments",
    "flax_grad_norms": "sngrad.moments",
    "fast_path_plan": "sngrad.moments",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sngrad' has no attribute {name!r}")
