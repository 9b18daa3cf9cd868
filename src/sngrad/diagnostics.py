"""Gradient-noise diagnostics of one layer's weights, from per-example gradient statistics.

Given, for the weight matrix W of a layer, the batch mean ``mu`` and population variance
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

from sngrad.transforms import DEFAULT_ALPHA, VARIANTS, scale_factor

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
