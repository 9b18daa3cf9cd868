"""Gradient-noise diagnostics of one layer's weights, from per-example gradient statistics.

Two kinds. The per-step record of a training run (:data:`STEP_COLUMNS`, computed inside the
scanned train step and averaged over an epoch by the engine), per layer and weights only:

- ``factor_mean``: the mean over the weights of the factor f by which the run's optimizer
  scales the mean gradient (a sngrad variant at the run's alpha, or svag's
  mu^2 / (mu^2 + sigma^2 / B)); ``shrink_share``: the share of weights with f < 1.
- ``lambda_median``: the median over the weights of a control variate's coefficient lambda
  (the engine takes it at the last step of the epoch, from the optimizer state).
- ``variance_ratio``: sum_W Var[g - lambda h] / sum_W Var[g], with
  Var[g - lambda h] = var + lambda^2 snap_var - 2 lambda cov: the variance of the corrected
  batch mean over that of the raw one (the 1/B of both cancels), from the step's statistics.

Each is NaN for a run it does not apply to.

The noise study's snapshot of a layer (:data:`COLUMNS`): given, for the weight matrix W of a
layer, the batch mean ``mu`` and population variance
``sigma^2`` of the per-example gradients on a batch of B examples (``stats.dense_stats``):

- ``snr_mean``, ``snr_median``: mean and median over the weights of ``|mu| / sigma``.
  Weights with ``sigma = 0`` are left out: in an MLP they are the ones whose input is zero for
  every example of the batch (constant-zero pixels, dead ReLUs), where ``mu = 0`` as well and
  the ratio 0/0 says nothing. If every weight has ``sigma = 0`` both values are NaN.
- ``factor_I``, ``factor_II``, ``factor_III``: the mean over the weights of each variant's
  scale factor ``f(mu, sigma^2; alpha)`` at ``transforms.DEFAULT_ALPHA`` (how strongly that
  variant would shrink this layer's gradient right now, whichever optimizer is training).
- ``grad_norm = |mu|_2`` and ``noise_norm = sqrt(sum sigma^2) = sqrt(tr Sigma)``, with Sigma
  the per-example gradient covariance of the layer's weights (only its trace is needed).
- ``noise_scale = tr(Sigma) / |mu|^2``, the "simple" gradient noise scale of McCandlish et al.
  (2018) measured with the batch mean ``mu`` in place of the true gradient G. Since
  ``E|mu|^2 = |G|^2 + tr(Sigma) / B`` the estimate is biased low when the noise dominates
  (it cannot exceed B by much), which is why it is reported "at this batch size".

All values refer to the layer's W (biases left out). The noise scale of all weights of the
network together follows from the per-layer columns as
``sum_l noise_norm_l^2 / sum_l grad_norm_l^2``.
"""

from __future__ import annotations

import jax.numpy as jnp

from sngrad.transforms import DEFAULT_ALPHA, VARIANTS, corrected_variance, scale_factor

STEP_COLUMNS = ("factor_mean", "shrink_share", "lambda_median", "variance_ratio")

COLUMNS = (
    "snr_mean",
    "snr_median",
    *(f"factor_{v}" for v in VARIANTS),
    "noise_scale",
    "grad_norm",
    "noise_norm",
)


def layer_diagnostics(mu, var) -> dict[str, jnp.ndarray]:
    """The scalars of :data:`COLUMNS` for one weight matrix (jit / vmap friendly)."""
    var = jnp.maximum(var, 0.0)
    sigma = jnp.sqrt(var)
    informative = sigma > 0
    snr = jnp.where(informative, jnp.abs(mu) / jnp.where(informative, sigma, 1.0), jnp.nan)
    grad_sq = jnp.sum(mu * mu)
    noise_sq = jnp.sum(var)
    out = {"snr_mean": jnp.nanmean(snr), "snr_median": jnp.nanmedian(snr)}
    for v in VARIANTS:
        out[f"factor_{v}"] = jnp.mean(scale_factor(v, mu, var, DEFAULT_ALPHA[v]))
    out["noise_scale"] = jnp.where(grad_sq > 0, noise_sq / jnp.where(grad_sq > 0, grad_sq, 1.0),
                                   jnp.nan)
    out["grad_norm"] = jnp.sqrt(grad_sq)
    out["noise_norm"] = jnp.sqrt(noise_sq)
    return out


def network_diagnostics(mean, var) -> dict[str, jnp.ndarray]:
    """Each column of :data:`COLUMNS` as an array over layers (L,), from ``[(W, b), ...]``
    pytrees of the gradient mean and variance."""
    per_layer = [layer_diagnostics(m[0], v[0]) for m, v in zip(mean, var, strict=True)]
    return {c: jnp.stack([d[c] for d in per_layer]) for c in COLUMNS}


# ----------------------------------------------------------------------------- per-step record


def _weights(tree) -> list:
    """The weight matrix W of every layer of a ``[(W, b), ...]`` pytree."""
    return [w for w, _ in tree]


def shrink_record(spec, mean, var, alpha, batch_size: int) -> dict[str, jnp.ndarray]:
    """``factor_mean`` and ``shrink_share`` (L,) of a shrinking optimizer on this step.

    ``spec`` is the parsed optimizer name; ``alpha`` (raw) is used by sngrad variants,
    ``batch_size`` by svag.
    """
    from sngrad.optimizers import svag_factor  # optimizers imports this module's users

    def factor(m, v):
        if spec.variant is not None:
            return scale_factor(spec.variant, m, v, alpha)
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
