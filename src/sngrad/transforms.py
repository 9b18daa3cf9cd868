"""Noise-informed gradients as optax transformations.

For one parameter, let mu be the batch mean of its per-example gradients and sigma^2 their
population variance (divide by B). The noise-informed gradient is ``mu * f`` with an
elementwise factor ``f`` in [0, 1] that shrinks coordinates whose gradient is noisy:

    I:   f = min(1 / (alpha sigma), 1)           no shrink while alpha sigma <= 1
    II:  f = min(mu^2 / (alpha sigma^2), 1)      no shrink while the SNR mu^2 / sigma^2 >= alpha
    III: f = 1 - min(alpha sigma, 1)             linear shrink, zero once alpha sigma >= 1

Because ``0 <= f <= 1``, ``|mu f| <= |mu|``: the transforms only ever shorten a coordinate of
the gradient, never flip or lengthen it. They are meant to sit first in an ``optax.chain``, in
front of whatever optimizer consumes the (adjusted) gradient.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sngrad.errors import SngradError, choice_error

VARIANTS = ("I", "II", "III")

# alpha = 1 for every variant. For II it is the natural scale-free choice: the gradient is left
# alone exactly while the batch signal-to-noise ratio |mu| / sigma is at least 1. For I and III
# alpha carries the inverse units of a gradient, so no value is scale-free; 1 is what the
# original prototype used untuned, and the alpha sweep of the study (0.1 ... 10) brackets it.
DEFAULT_ALPHA: dict[str, float] = {"I": 1.0, "II": 1.0, "III": 1.0}


def _check_variant(variant: Any) -> str:
    if variant not in VARIANTS:
        raise choice_error("sngrad variant", variant, VARIANTS)
    return variant


def _check_alpha(variant: str, alpha: Any) -> None:
    """Reject a bad concrete alpha; a traced alpha (under jit / vmap) cannot be inspected."""
    if isinstance(alpha, jax.core.Tracer):
        return
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise SngradError(f"alpha must be a real number, got {alpha!r}") from None
    if not math.isfinite(value):
        raise SngradError(f"alpha must be finite, got {value}")
    if variant == "III":
        if value < 0:
            raise SngradError(f"alpha for variant III must be >= 0 (0 is plain SGD), got {value}")
    elif value <= 0:
        raise SngradError(f"alpha for variant {variant} must be > 0, got {value}")


def _safe_std(var: jax.Array) -> jax.Array:
    """sqrt(max(var, 0)) whose derivative is finite (zero) at var <= 0.

    A slightly negative variance is round-off of E[g^2] - mu^2 and is read as zero. The inner
    ``where`` keeps sqrt away from 0, where its derivative 1 / (2 sqrt(v)) is infinite and
    would turn into NaN in the backward pass even on the branch that is not selected.
    """
    positive = var > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)


def scale_factor(variant: str, mean: jax.Array, var: jax.Array, alpha: float) -> jax.Array:
    """The elementwise factor f in [0, 1] of a noise-informed variant (see module docstring).

    Args:
      variant: "I", "II" or "III".
      mean: batch mean mu of the per-example gradients.
      var: their population variance sigma^2, same shape as ``mean`` (negative round-off is
        treated as 0).
      alpha: > 0 (variant III also allows 0, where f = 1 everywhere).

    Edge cases, all without NaN in the value or in its derivatives:

    - sigma = 0 gives f = 1 for every variant: a noise-free gradient is passed on untouched.
    - variant II at mu = sigma = 0 also gives f = 1 (no evidence of noise); ``mu * f`` is 0
      whichever value is chosen.

    - at sigma = 0 the derivative with respect to var is reported as 0. For III the exact
      one-sided slope -alpha / (2 sigma) is infinite there; 0 keeps meta-gradients usable.

    Every division is guarded so that its denominator is at least 1 (I) or strictly larger
    than |mu| (II) on the branch where it is used, and a harmless 1 on the other branch
    ("double where"), so that no branch ever divides by zero. A traced ``alpha`` (a vmapped
    sweep) is not validated.
    """
    _check_variant(variant)
    _check_alpha(variant, alpha)
    mean, var = jnp.asarray(mean), jnp.asarray(var)
    dtype = jnp.result_type(mean, var)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)  # integer test inputs: compute in the default float
    mean = mean.astype(dtype)
    sigma = _safe_std(var.astype(dtype))
    if variant == "I":
        # min(1 / x, 1) = 1 / max(x, 1) for x >= 0, and max(x, 1) >= 1 is never zero.
        return 1.0 / jnp.maximum(alpha * sigma, 1.0)
    if variant == "II":
        # mu^2 / (alpha sigma^2) = (mu / s)^2 with s = sqrt(alpha) sigma. Comparing |mu| with s
        # instead of mu^2 with alpha sigma^2 avoids overflowing the squares for huge gradients.
        s = jnp.sqrt(alpha) * sigma
        noisy = jnp.abs(mean) < s  # only here is f < 1; s > |mu| >= 0 there, so s > 0
        # mu = 0 takes its exact value 0 apart: for a tiny s the derivative of mu / s with
        # respect to s is -mu / s^2 = 0 * inf = NaN, even though the factor itself is 0.
        divide = noisy & (mean != 0)
        ratio = jnp.where(divide, mean, 0.0) / jnp.where(divide, s, 1.0)
        return jnp.where(noisy, ratio * ratio, 1.0)
    return 1.0 - jnp.minimum(alpha * sigma, 1.0)


def noise_informed(variant: str, alpha: float) -> optax.GradientTransformationExtraArgs:
    """Scale the mean gradient by the noise-informed factor of ``variant``.

    The transformation is stateless. Its update takes the batch mean gradient as ``updates``
    and the per-example gradient variance as the keyword ``grad_var`` (a pytree of the same
    structure) and returns ``updates * scale_factor(variant, updates, grad_var, alpha)``
    leaf by leaf. Put it first in a chain, e.g.

        opt = optax.chain(noise_informed("II", 1.0), optax.sgd(0.1))
        updates, state = opt.update(mean, state, params, grad_var=var)

    ``optax.chain`` forwards ``grad_var`` to every member that takes extra arguments, and the
    optax optimizers ignore it.

    Args:
      variant: "I", "II" or "III".
      alpha: the noise sensitivity; > 0, or >= 0 for variant III (alpha = 0 is the identity).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``optax.EmptyState``.
    """
    _check_variant(variant)
    _check_alpha(variant, alpha)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, grad_var=None, **extra_args):
        del params, extra_args
        if grad_var is None:
            raise SngradError(
                f"noise_informed({variant!r}) needs the gradient variance: call "
                "update(grad, state, params, grad_var=var)"
            )
        if jax.tree.structure(grad_var) != jax.tree.structure(updates):
            raise SngradError(
                "grad_var must have the same pytree structure as the gradient; got "
                f"{jax.tree.structure(grad_var)} for {jax.tree.structure(updates)}"
            )
        scaled = jax.tree.map(
            lambda mu, var: mu * scale_factor(variant, mu, var, alpha), updates, grad_var
        )
        return scaled, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
