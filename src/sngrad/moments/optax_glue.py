"""Moments in optax pipelines: gradient accumulation that merges variances, and an adapter
from ``optax.experimental.aggregating``.

``optax.MultiSteps(opt, k)`` averages the k micro-batch gradients it receives but forwards the
extra arguments of the k-th call only, so ``noise_informed`` inside it would see the mean
over k micro-batches with the variance of the last one. :func:`accumulate_moments` is the
replacement for a transformation that needs ``grad_var``: it merges the k micro-batches'
``(mean, var)`` into those of the whole k x B batch with the parallel update of Chan, Golub
and LeVeque (equal micro-batch sizes, so the weights are counts of micro-batches):

    mean = mean_L + delta / n,    m2 = m2_L + var_R + delta^2 (n - 1) / n,
    delta = mean_R - mean_L,      var = m2 / k   after the k-th micro-batch,

where ``m2`` is the sum over the n micro-batches seen so far of their within-batch variances
plus the spread of their means, divided by the micro-batch size (both sides scale by B).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sngrad.errors import SngradError


class AccumulateMomentsState(NamedTuple):
    """Micro-batches seen in this cycle, running mean and m2, and the inner state."""

    count: jax.Array
    mean: Any
    m2: Any
    inner: Any


def accumulate_moments(inner: optax.GradientTransformation, every_k: int
                       ) -> optax.GradientTransformationExtraArgs:
    """Apply ``inner`` once per ``every_k`` micro-batches with their merged mean and variance.

    Each ``update(mean, state, params, grad_var=var)`` call takes one micro-batch's moments
    (all micro-batches of the same size); the first ``every_k - 1`` calls return zero updates,
    the ``every_k``-th calls ``inner.update(merged_mean, ..., grad_var=merged_var)`` with the
    population moments of all ``every_k`` micro-batches together and starts a new cycle.
    """
    if isinstance(every_k, bool) or not isinstance(every_k, int) or every_k < 1:
        raise SngradError(f"every_k must be an integer >= 1, got {every_k!r}")
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return AccumulateMomentsState(jnp.zeros((), jnp.int32), zeros, zeros,
                                      inner.init(params))

    def update_fn(updates, state, params=None, *, grad_var=None, **extra_args):
        if grad_var is None:
            raise SngradError("accumulate_moments needs the micro-batch variance: call "
                              "update(mean, state, params, grad_var=var)")
        n = state.count + 1
        delta = jax.tree.map(jnp.subtract, updates, state.mean)
        mean = jax.tree.map(lambda m, d: m + d / n, state.mean, delta)
        m2 = jax.tree.map(lambda q, v, d: q + v + jnp.square(d) * ((n - 1) / n),
                          state.m2, grad_var, delta)

        def emit(_):
            var = jax.tree.map(lambda q: q / every_k, m2)
            out, inner_state = inner.update(mean, state.inner, params, grad_var=var,
                                            **extra_args)
            zeros = jax.tree.map(jnp.zeros_like, mean)
            return out, AccumulateMomentsState(jnp.zeros((), jnp.int32), zeros, zeros,
                                               inner_state)

        def hold(_):
            zeros = jax.tree.map(jnp.zeros_like, updates)
            return zeros, AccumulateMomentsState(n, mean, m2, state.inner)

        return jax.lax.cond(n == every_k, emit, hold, None)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def from_aggregating(mean, aux):
    """``(mean, var)`` from the output of
    ``optax.experimental.aggregating.get_per_element_mean_and_sum_sq_diff_grads``:
    the population variance is the sum of squared deviations over the sample size."""
    var = jax.tree.map(lambda s: s / aux["sample_size"], aux["sum_sq_diff_grads"])
    return mean, var
