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

The alpha of I and III carries the inverse units of a gradient, and sigma falls by orders of
magnitude during training, so a fixed alpha that shrinks early stops shrinking later. Its
*reference* (:data:`REFERENCES`) says how alpha is read, per step (:func:`step_alpha`):

    absolute: alpha as given (the prototype's; the default)
    rms:      alpha / s with s = sqrt(sum_i sigma_i^2 / P), the root-mean-square sigma of the
              step over all P coordinates of the gradient (:func:`rms_sigma`)

With "rms", I shrinks the coordinates whose sigma exceeds s / alpha and III zeroes those beyond
it, whatever the scale of the gradient: multiplying every sigma by c leaves f unchanged. II's
mu^2 / sigma^2 is a ratio already, without a unit to remove, so II always reads alpha as given.

The second idea removes noise instead of shrinking it: ``control_variate`` subtracts a
multiple of the batch mean's deviation at an SVRG snapshot, ``mu - lambda (nu - G_snap)``
(see its docstring), with the per-coordinate optimal ``lambda = cov / snap_var`` from the
same statistics (``sngrad.stats.CVStats``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sngrad.errors import SngradError, choice_error
from sngrad.names import VARIANTS

# alpha = 1 for every variant. For II it is the natural scale-free choice: the gradient is left
# alone exactly while the batch signal-to-noise ratio |mu| / sigma is at least 1. For I and III
# alpha carries the inverse units of a gradient, so no value is scale-free; 1 is what the
# original prototype used untuned, and the alpha sweep of the study (0.1 ... 10) brackets it.
DEFAULT_ALPHA: dict[str, float] = {"I": 1.0, "II": 1.0, "III": 1.0}

# How alpha is read per step (module docstring); "absolute" keeps the prototype's raw alpha.
REFERENCES = ("absolute", "rms")


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


def _check_reference(reference: Any) -> str:
    if reference not in REFERENCES:
        raise choice_error("alpha reference", reference, REFERENCES)
    return reference


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
        numerator = jnp.where(divide, mean, 0.0)
        ratio = numerator / jnp.where(divide, s, 1.0)
        # The backward pass goes through the same ratio written as (mu / sigma) / sqrt(alpha):
        # with a tiny alpha, the slope of mu / s involves s^2, which underflows to 0 (flushed as
        # a subnormal) and meets a cotangent that underflowed too, 0 * inf = NaN. The value stays
        # the one above bit for bit (x - stop_gradient(x) is exactly 0 for the finite x here).
        smooth = (numerator / jnp.where(divide, sigma, 1.0)) / jnp.sqrt(alpha)
        ratio = jax.lax.stop_gradient(ratio) + (smooth - jax.lax.stop_gradient(smooth))
        return jnp.where(noisy, ratio * ratio, 1.0)
    return 1.0 - jnp.minimum(alpha * sigma, 1.0)


def rms_sigma(grad_var) -> jax.Array:
    """The root-mean-square sigma of a step: ``s = sqrt(sum_i max(var_i, 0) / P)``.

    ``grad_var`` is a pytree of per-example gradient variances; the sum runs over all P
    coordinates of every leaf (weights and biases alike, as the transforms see them), and a
    negative round-off variance counts as 0, as in :func:`scale_factor`. ``s = 0`` exactly when
    every sigma is 0 (or the pytree is empty); ``s`` is finite as long as the sum of the
    variances is. The derivative with respect to var is finite everywhere, 0 at s = 0 (the
    guarded sqrt of :func:`_safe_std`). Integer inputs are computed in the default float.
    """
    leaves = [jnp.asarray(v) for v in jax.tree.leaves(grad_var)]
    count = sum(v.size for v in leaves)
    dtype = jnp.result_type(*leaves) if leaves else jnp.result_type(float)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    if count == 0:
        return jnp.zeros((), dtype)
    total = sum(jnp.sum(jnp.maximum(v.astype(dtype), 0.0)) for v in leaves)
    return _safe_std(total / count)


def step_alpha(variant: str, alpha, reference: str, grad_var):
    """The alpha that :func:`scale_factor` takes on one step (module docstring).

    ``"absolute"``, and variant II under either reference: ``alpha`` itself, returned as given.
    ``"rms"`` for I and III: ``alpha / s`` with ``s = rms_sigma(grad_var)``, the same alpha for
    every coordinate of the pytree; at ``s = 0`` (no noise anywhere, where every factor is 1
    whatever alpha is) ``alpha`` itself. ``alpha`` may be traced; it is not validated here
    (:func:`noise_informed` does that once).

    Value and derivatives are free of NaN: the division is guarded by a double where, so that
    the branch not taken at s = 0 divides by 1. For ``0 < s < sqrt(tiny)`` (a mean variance
    below the smallest normal float of the dtype) the slope ``-alpha / s^2`` may overflow, and
    inf times a zero cotangent is NaN; there the value stays exact and its derivatives are
    reported as 0. A result beyond the float range saturates at the largest float, so that
    ``alpha * sigma`` at sigma = 0 stays 0. The result has the dtype of ``alpha / s``: with a
    Python float alpha, that of the variances.
    """
    _check_variant(variant)
    _check_reference(reference)
    if reference == "absolute" or variant == "II":
        return alpha
    s = rms_sigma(grad_var)
    positive = s > 0
    # from sqrt(tiny) up, 1 / s^2 <= 1 / tiny is finite and the slope can be taken
    sloped = s >= jnp.sqrt(jnp.finfo(s.dtype).tiny)
    exact = jax.lax.stop_gradient(alpha / jnp.where(positive, s, 1.0))
    relative = jnp.where(sloped, alpha / jnp.where(sloped, s, 1.0), exact)
    # a huge alpha over a tiny s saturates: an inf alpha would make alpha * 0 a NaN factor
    relative = jnp.minimum(relative, jnp.finfo(s.dtype).max)
    return jnp.where(positive, relative, alpha)


def noise_informed(variant: str, alpha: float,
                   reference: str = "absolute") -> optax.GradientTransformationExtraArgs:
    """Scale the mean gradient by the noise-informed factor of ``variant``.

    The transformation is stateless. Its update takes the batch mean gradient as ``updates``
    and the per-example gradient variance as the keyword ``grad_var`` (a pytree of the same
    structure) and returns ``updates * scale_factor(variant, updates, grad_var, alpha)``
    leaf by leaf. Put it first in a chain, e.g.

        opt = optax.chain(noise_informed("II", 1.0), optax.sgd(0.1))
        updates, state = opt.update(mean, state, params, grad_var=var)

    ``optax.chain`` forwards ``grad_var`` to every member that takes extra arguments, and the
    optax optimizers ignore it.

    With ``reference="rms"`` the factor of I and III takes ``alpha / s`` on each step, ``s``
    the root-mean-square sigma over the whole ``grad_var`` pytree (:func:`step_alpha`, once
    per step for every leaf): alpha is then relative to the step's typical noise and does not
    drift as sigma falls during training. II reads alpha as given under either reference.

    Args:
      variant: "I", "II" or "III".
      alpha: the noise sensitivity; > 0, or >= 0 for variant III (alpha = 0 is the identity).
      reference: one of :data:`REFERENCES`; "absolute" (the default) is alpha in inverse
        gradient units, "rms" alpha relative to the step's root-mean-square sigma.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``optax.EmptyState``.
    """
    _check_variant(variant)
    _check_alpha(variant, alpha)
    _check_reference(reference)

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
        # one alpha for the whole pytree: the reference is the step's noise, not a leaf's
        alpha_now = step_alpha(variant, alpha, reference, grad_var)
        scaled = jax.tree.map(
            lambda mu, var: mu * scale_factor(variant, mu, var, alpha_now), updates, grad_var
        )
        return scaled, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------------------------- control variates

COEFFICIENTS = ("optimal", "optimal-lagged")

# The coefficient range of "optimal" and "optimal-lagged". The corrected variance
# Var g + lam^2 Var h - 2 lam Cov(g, h) is a parabola in lam that is at most Var g on
# [0, 2 lam*] and smallest at lam*. Near the snapshot, where the correction is meant to work,
# g and h are nearly the same and lam* is close to 1, so any lam in [0, 2] does no harm there
# and the window is centred on SVRG's 1: clipping at 1 instead would bias the estimate
# downwards wherever batch noise pushes it above 1. A negative estimate (snapshot gradients
# that anti-correlate with the current ones) is taken for noise and becomes 0, the raw
# gradient. The bounds also limit what a badly estimated lambda can do where snap_var is
# tiny: the correction is never more than twice SVRG's.
LAMBDA_RANGE = (0.0, 2.0)

# "optimal-lagged" on its first step has no previous batch. Right after a snapshot the
# parameters are the snapshot, g_j = h_j and lam* = 1 wherever there is noise, and lam = 1
# turns the batch mean into the exact full-data gradient G_snap; so the first step uses 1.
LAGGED_FIRST_LAMBDA = 1.0


class ControlVariateState(NamedTuple):
    """State of :func:`control_variate`, pytrees shaped like the parameters.

    lam: the coefficient the last update applied (initially what the first update of
      "optimal-lagged" applies, or the constant); what a training loop records.
    lam_estimate: ``optimal_coefficient(cov, snap_var)`` of the last update's batch, clipped
      to LAMBDA_RANGE: the coefficient "optimal-lagged" applies next.
    """

    lam: Any
    lam_estimate: Any


def optimal_coefficient(cov, snap_var, lower: float = LAMBDA_RANGE[0],
                        upper: float = LAMBDA_RANGE[1]) -> jax.Array:
    """``lam* = cov / snap_var`` per coordinate, clipped to ``[lower, upper]``.

    Where ``snap_var <= 0`` (no spread of the snapshot gradients in the batch, so no
    information on how they co-vary) the coefficient is 0: the raw gradient is kept. The
    division is guarded (double where), so its value and derivatives are finite; a finite
    ratio that overflows becomes +-inf and is clipped, so with finite bounds the result is
    finite for every finite input. ``lower = -inf, upper = inf`` gives the unclipped ratio
    (the theory simulations use it).
    """
    cov, snap_var = jnp.asarray(cov), jnp.asarray(snap_var)
    positive = snap_var > 0
    ratio = jnp.where(positive, cov, 0.0) / jnp.where(positive, snap_var, 1.0)
    return jnp.clip(ratio, lower, upper)


def corrected_variance(var, snap_var, cov, lam) -> jax.Array:
    """Per-example variance of ``g - lam h`` (elementwise): ``var + lam^2 snap_var - 2 lam cov``.

    Divided by B it is the variance of the corrected batch mean, so its ratio to ``var`` is
    the variance reduction a coefficient achieves (1 - rho^2 at lam*). Clamped at 0 against
    round-off.
    """
    return jnp.maximum(var + lam * (lam * snap_var - 2.0 * cov), 0.0)


def _check_coefficient(coefficient: Any) -> str | float:
    if isinstance(coefficient, str):
        if coefficient not in COEFFICIENTS:
            raise SngradError(
                f"unknown control-variate coefficient {coefficient!r}; allowed: "
                f"{', '.join(COEFFICIENTS)} or a finite number (1.0 is SVRG, 0.0 no correction)"
            )
        return coefficient
    if isinstance(coefficient, bool):
        raise SngradError(f"control-variate coefficient must be a number, got {coefficient!r}")
    try:
        value = float(coefficient)
    except (TypeError, ValueError):
        raise SngradError(
            f"control-variate coefficient must be {' or '.join(repr(c) for c in COEFFICIENTS)} "
            f"or a finite number, got {coefficient!r}"
        ) from None
    if not math.isfinite(value) or abs(value) > float(jnp.finfo(jnp.float32).max):
        raise SngradError(
            f"control-variate coefficient must be finite (in float32), got {value}"
        )
    return value


def _check_tree(name: str, tree, updates) -> None:
    if tree is None:
        raise SngradError(
            f"control_variate needs {name}: call update(grad, state, params, snap_mean=..., "
            "snap_var=..., cov=..., anchor=...)"
        )
    if jax.tree.structure(tree) != jax.tree.structure(updates):
        raise SngradError(
            f"{name} must have the same pytree structure as the gradient; got "
            f"{jax.tree.structure(tree)} for {jax.tree.structure(updates)}"
        )


def _apply_correction(mean, lam, snap_mean, anchor):
    """``mean - lam (snap_mean - anchor)``, saturated to the finite range of the dtype.

    The exact value leaves the float range only when the inputs are within a few times of
    the largest float, where no gradient means anything; saturating keeps the optimizer state
    downstream free of inf and NaN. ``lam = 0`` contributes exactly nothing, even where
    ``snap_mean - anchor`` overflows (0 * inf would be NaN).
    """
    correction = jnp.where(lam == 0, 0.0, lam * (snap_mean - anchor))
    out = mean - correction
    big = jnp.finfo(out.dtype).max
    return jnp.clip(out, -big, big)


def control_variate(coefficient: str | float = "optimal") -> optax.GradientTransformationExtraArgs:
    """Control-variate (SVRG-style) correction of the batch mean gradient.

    With ``g_j`` example j's gradient at the current parameters, ``h_j`` at a snapshot, ``mu``
    and ``nu`` their batch means and ``G_snap`` the full-data gradient at the snapshot
    (``anchor``), the estimate

        mu - lam (nu - G_snap)

    has the mean of ``mu`` for any lam fixed before the batch is drawn, and the per-example
    variance ``Var g + lam^2 Var h - 2 lam Cov(g, h)``, smallest at ``lam* = Cov / Var h``
    where it is ``(1 - rho^2) Var g``. ``coefficient`` picks lam per coordinate:

    - ``"optimal"``: ``optimal_coefficient(cov, snap_var)`` from this batch, clipped to
      :data:`LAMBDA_RANGE` (0 where ``snap_var`` is 0). It depends on the batch, so the
      estimate is biased by O(1/B).
    - ``"optimal-lagged"``: the previous update's clipped estimate, independent of this batch,
      so the estimate stays unbiased given the past; :data:`LAGGED_FIRST_LAMBDA` on the first
      update.
    - a number: that lam everywhere; 1.0 is SVRG, 0.0 returns ``mu`` unchanged.

    Put it first in a chain, in front of any optax optimizer::

        opt = optax.chain(control_variate("optimal"), optax.sgd(0.1))
        s = gradient_stats(params, x, y, snapshot=snap)
        updates, state = opt.update(s.mean, state, params, snap_mean=s.snap_mean,
                                    snap_var=s.snap_var, cov=s.cov, anchor=full_grad_at_snap)

    ``snap_mean`` and ``anchor`` are always required; ``snap_var`` and ``cov`` for the optimal
    coefficients (with a number they only update ``lam_estimate``, the diagnostic). Every
    finite input gives a finite output (see ``_apply_correction``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is
      :class:`ControlVariateState`.
    """
    rule = _check_coefficient(coefficient)

    def init_fn(params):
        first = jax.tree.map(lambda p: jnp.full_like(p, LAGGED_FIRST_LAMBDA), params)
        if isinstance(rule, float):
            return ControlVariateState(jax.tree.map(lambda p: jnp.full_like(p, rule), params),
                                       first)
        return ControlVariateState(first, first)

    def update_fn(updates, state, params=None, *, snap_mean=None, snap_var=None, cov=None,
                  anchor=None, **extra_args):
        del params, extra_args
        _check_tree("snap_mean", snap_mean, updates)
        _check_tree("anchor", anchor, updates)
        if isinstance(rule, str) or snap_var is not None or cov is not None:
            _check_tree("snap_var", snap_var, updates)
            _check_tree("cov", cov, updates)
            estimate = jax.tree.map(optimal_coefficient, cov, snap_var)
        else:
            estimate = state.lam_estimate
        if rule == "optimal":
            lam = estimate
        elif rule == "optimal-lagged":
            lam = state.lam_estimate
        else:
            lam = jax.tree.map(lambda u: jnp.full_like(u, rule), updates)
        corrected = jax.tree.map(_apply_correction, updates, lam, snap_mean, anchor)
        return corrected, ControlVariateState(lam, estimate)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
