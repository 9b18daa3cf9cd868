"""The per-step record of a training run: how much its optimizer changed the mean gradient.

Computed inside the scanned train step from the statistics the step has anyway, per layer and
for the layer's weight matrix W only (biases left out), and averaged over an epoch's steps by
the engine (:data:`STEP_COLUMNS`):

- ``factor_mean``: the mean over the weights of the factor f by which the run's optimizer
  scales the batch mean gradient mu (a sngrad variant at the alpha its update takes on the
  step, ``transforms.step_alpha`` over all the parameters, or svag's
  mu^2 / (mu^2 + sigma^2 / B)); ``shrink_share``: the share of weights with f < 1. Together
  they say whether a variant was active at all and how strongly.
- ``lambda_median``: the median over the weights of a control variate's coefficient lambda
  (taken at the last step of the epoch, from the optimizer state: a median is a sort, too
  dear for every step).
- ``variance_ratio``: sum_W Var[g - lambda h] / sum_W Var[g], with
  Var[g - lambda h] = var + lambda^2 snap_var - 2 lambda cov per coordinate
  (``transforms.corrected_variance``): the variance of the corrected batch mean over that of
  the raw one (the 1/B of both cancels). 1 means no reduction, 1 - rho^2 the optimum.

Each column is NaN for a run it does not apply to (plain optimizers: all of them).
"""

from __future__ import annotations

import jax.numpy as jnp

from sngrad.names import RunName
from sngrad.optimizers import svag_factor
from sngrad.transforms import corrected_variance, scale_factor, step_alpha

STEP_COLUMNS = ("factor_mean", "shrink_share", "lambda_median", "variance_ratio")


# ----------------------------------------------------------------------------- per-step record


def _weights(tree) -> list:
    """The weight matrix W of every layer of a ``[(W, b), ...]`` pytree."""
    return [w for w, _ in tree]


def shrink_record(run: RunName, mean, var, alpha, batch_size: int) -> dict[str, jnp.ndarray]:
    """``factor_mean`` and ``shrink_share`` (L,) of a shrinking optimizer on this step.

    ``run`` is the parsed run; ``alpha``, read as ``run.alpha_reference`` says, is used by
    sngrad variants, ``batch_size`` by svag. The factor takes the alpha the update takes,
    ``step_alpha`` over the whole variance pytree (weights and biases, as the transform sees
    it), though only the weights are recorded.
    """
    if run.variant is not None:
        alpha = step_alpha(run.variant, alpha, run.alpha_reference, var)

    def factor(m, v):
        if run.variant is not None:
            return scale_factor(run.variant, m, v, alpha)
        return svag_factor(m, v, batch_size)

    fs = [factor(m, v) for m, v in zip(_weights(mean), _weights(var), strict=True)]
    return {
        "factor_mean": jnp.stack([jnp.mean(f) for f in fs]),
        "shrink_share": jnp.stack([jnp.mean((f < 1).astype(jnp.float32)) for f in fs]),
    }


def cv_lambda(opt_state):
    """The control variate's last coefficient lambda (a params-shaped pytree) from the state
    of ``optax.chain(control_variate(...), base)``: the first member's ``lam``."""
    return opt_state[0].lam


def cv_record(cv, lam) -> dict[str, jnp.ndarray]:
    """``variance_ratio`` (L,) from the step's :class:`sngrad.stats.CVStats` and lambda."""
    ratios = []
    for v, sv, c, la in zip(_weights(cv.var), _weights(cv.snap_var), _weights(cv.cov),
                            _weights(lam), strict=True):
        corrected = jnp.sum(corrected_variance(v, sv, c, la))
        raw = jnp.sum(v)
        ratios.append(jnp.where(raw > 0, corrected / jnp.where(raw > 0, raw, 1.0), jnp.nan))
    return {"variance_ratio": jnp.stack(ratios)}


def lambda_median(lam) -> jnp.ndarray:
    """Median over each layer's weights of lambda, (L,)."""
    return jnp.stack([jnp.median(w) for w in _weights(lam)])


def complete_record(record: dict, layers: int) -> dict[str, jnp.ndarray]:
    """``record`` with every per-step column present, NaN (L,) where it does not apply."""
    nan = jnp.full((layers,), jnp.nan, jnp.float32)
    return {c: record.get(c, nan) for c in STEP_COLUMNS if c != "lambda_median"}
