"""Exact per-example gradient moments (mean, population variance, control-variate
covariances) of any JAX loss, with a fast path for flax NNX Linear and Conv layers.

- :func:`per_example_moments`: any ``loss_fn(params, batch)`` returning the B per-example
  losses, any parameter pytree; backends ``vmap`` (reference) and ``chunked`` (bounded memory).
- :func:`flax_moments`: an ``nnx.Module`` and ``loss_fn(model, batch)``; backends ``auto``,
  ``fast``, ``vmap`` and ``chunked``; :func:`fast_path_plan` says which layers fell back;
  :func:`flax_grad_norms`: each example's squared gradient norm per parameter, from the
  same passes.

- :func:`accumulate_moments`: gradient accumulation over micro-batches that merges their
  variances (``optax.MultiSteps`` would pass on the last micro-batch's variance only);
  :func:`from_aggregating` adapts ``optax.experimental.aggregating``'s statistics.

The flax names are imported on first use, so that ``sngrad.stats`` does not load flax.
"""

from importlib import import_module

from sngrad.moments.generic import CVStats, Moments, per_example_moments
from sngrad.moments.optax_glue import accumulate_moments, from_aggregating

_FLAX = {"flax_moments", "flax_grad_norms", "fast_path_plan", "FastPathPlan", "FAST_LAYERS"}

__all__ = ["CVStats", "Moments", "accumulate_moments", "from_aggregating",
           "per_example_moments", *sorted(_FLAX)]


def __getattr__(name: str):
    if name in _FLAX:
        return getattr(import_module("sngrad.moments.flax_nnx"), name)
    raise AttributeError(f"module 'sngrad.moments' has no attribute {name!r}")
