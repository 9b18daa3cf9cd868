"""Optimizer registry: every optimizer of the study built from its name.

A name is a base optimizer, optionally followed by a modifier of the gradient that is chained
in front of it: ``"adam+sngrad2"`` (= ``optax.chain(noise_informed("II", alpha), adam)``),
``"sgd+cv"`` (= ``optax.chain(control_variate("optimal"), sgd)``). The bases (step t,
gradient g, learning rate lr, all optax defaults otherwise):

- ``sgd``: theta -= lr g.
- ``momentum`` (heavy ball, ``optax.sgd(lr, momentum=m)``): b = m b + g; theta -= lr b.
- ``adam`` (``optax.adam``: b1 = 0.9, b2 = 0.999, eps = 1e-8).
- ``adabelief`` (``optax.adabelief``: b1 = 0.9, b2 = 0.999, eps = 1e-16, eps_root = 1e-16):
  Adam with the EMA of (g - m)^2 in place of that of g^2.
- ``msvag``: M-SVAG, see :func:`scale_by_msvag` (variance estimated over time).
- ``svag``: SGD on the within-batch SVAG direction of :func:`scale_by_svag`,
  mu * mu^2 / (mu^2 + sigma^2 / B) (variance estimated over the batch's examples).

The names and their grammar are :mod:`sngrad.names`. Modifiers: ``+sngrad1|2|3`` (variants
I, II, III of :mod:`sngrad.transforms`) on sgd, momentum and adam; ``+cv`` (per-coordinate
optimal control-variate coefficient) and ``+svrg`` (coefficient 1) on sgd.

Every optimizer returned by :func:`build_optimizer` has the same call shape,
``opt.update(grad, state, params, **extra)``: those whose parsed name
(:class:`sngrad.names.RunName`) ``needs_variance`` take ``grad_var`` (the per-example
gradient variance), those that ``needs_snapshot`` take ``snap_mean, snap_var, cov, anchor``;
each ignores the keywords it does not use.

The pipeline parses a run name once where it enters and hands the parsed value on;
:func:`build_optimizer` also takes the registry name as a string for library users (parsed
there, once), and :func:`needs_variance`, :func:`needs_snapshot`, :func:`has_momentum` are
the same questions for a name string, for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sngrad.errors import SngradError
from sngrad.names import MOMENTUM_BASES, RunName, parse_optimizer
from sngrad.transforms import DEFAULT_ALPHA, noise_informed

_DEFAULT_MOMENTUM = 0.9


def needs_variance(name: str) -> bool:
    """Whether ``opt.update`` must be given ``grad_var`` (+sngrad variants and svag); for
    library users, :attr:`sngrad.names.RunName.needs_variance` of the parsed name."""
    return parse_optimizer(name).needs_variance


def needs_snapshot(name: str) -> bool:
    """Whether ``opt.update`` must be given the snapshot statistics (+cv, +svrg); for library
    users, :attr:`sngrad.names.RunName.needs_snapshot` of the parsed name."""
    return parse_optimizer(name).needs_snapshot


def has_momentum(name: str) -> bool:
    """Whether the optimizer takes a momentum coefficient (momentum and its +sngrad); for
    library users, :attr:`sngrad.names.RunName.has_momentum` of the parsed name."""
    return parse_optimizer(name).has_momentum


def _concrete(value: Any, what: str) -> float | None:
    """``value`` as a float, or None when it is traced (under jit / vmap it cannot be checked)."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SngradError(f"{what} must be a real number, got {value!r}") from None


def _check_learning_rate(learning_rate: Any) -> None:
    if callable(learning_rate):  # an optax schedule: its values are the caller's business
        return
    value = _concrete(learning_rate, "learning_rate")
    if value is not None and not (math.isfinite(value) and value > 0):
        raise SngradError(f"learning_rate must be finite and > 0, got {value}")


def _check_momentum(momentum: Any) -> None:
    value = _concrete(momentum, "momentum")
    if value is not None and not 0 <= value < 1:
        raise SngradError(f"momentum must be in [0, 1), got {value}")


def scale_by_svag(batch_size: int) -> optax.GradientTransformationExtraArgs:
    """The within-batch SVAG direction (Balles and Hennig 2018), stateless.

    With mu the batch mean of the per-example gradients and sigma^2 their population variance
    (keyword ``grad_var``), the variance of mu as an estimate of the true gradient is about
    sigma^2 / B, and the factor that minimises the expected squared error of f mu is

        f = mu^2 / (mu^2 + sigma^2 / B),        output = f mu.

    mu = sigma = 0 gives f = 1 (the output is 0 either way); the denominator is otherwise
    > 0, so the output is finite for every finite input. Variant II of sngrad is the clipped
    relative min(mu^2 / (alpha sigma^2), 1): alpha = 1 / B matches f where the noise
    dominates.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SngradError(f"svag needs the batch size, an integer >= 1; got {batch_size!r}")

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, grad_var=None, **extra):
        del params, extra
        if grad_var is None:
            raise SngradError("svag needs the gradient variance: call "
                              "update(grad, state, params, grad_var=var)")
        scaled = jax.tree.map(lambda m, v: m * svag_factor(m, v, batch_size), updates, grad_var)
        return scaled, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def svag_factor(mean: jax.Array, var: jax.Array, batch_size: int) -> jax.Array:
    """The elementwise factor f = mu^2 / (mu^2 + sigma^2 / B) of :func:`scale_by_svag`."""
    m2 = mean * mean
    den = m2 + jnp.maximum(var, 0.0) / batch_size
    has_den = den > 0  # double where: no 0 / 0 on either branch
    return jnp.where(has_den, m2 / jnp.where(has_den, den, 1.0), 1.0)


class MSVAGState(NamedTuple):
    """State of :func:`scale_by_msvag`: step count and the EMAs of g and g^2."""

    count: jax.Array
    m: optax.Updates
    v: optax.Updates


def scale_by_msvag(beta: float = 0.9) -> optax.GradientTransformation:
    """The M-SVAG direction gamma * m (Balles and Hennig 2018, "Dissecting Adam").

    At step t = 1, 2, ... with gradient g:

        m_t = beta m_{t-1} + (1 - beta) g,      v_t = beta v_{t-1} + (1 - beta) g^2
        m^ = m_t / (1 - beta^t),                 v^ = v_t / (1 - beta^t)
        rho_t = (1 - beta)^2 (1 - beta^(2t)) / ((1 - beta^t)^2 (1 - beta^2))
        s = (v^ - m^2) / (1 - rho_t)            (variance of g, unbiased over the EMA weights)
        gamma = m^2 / (m^2 + rho_t s), clipped to [0, 1]
        output = gamma m^

    rho_t is the sum of the squared normalised EMA weights, so rho_t s estimates the variance of
    m^ itself and gamma is the variance-adapted factor of the momentum estimate.

    Edge cases (all finite):

    - t = 1: rho_1 = 1 and one gradient carries no variance information (s = 0 / 0). s is set
      to 0 there, so gamma = 1 and the first step is the plain -lr g.
    - m = s = 0: gamma is taken as 1; the output gamma m is 0 either way.
    - v^ - m^2 < 0 from round-off is read as 0 (Jensen: it is >= 0 in exact arithmetic).
    """
    if not 0 < beta < 1:
        raise SngradError(f"msvag beta must be in (0, 1), got {beta}")

    def init_fn(params):
        zeros = optax.tree.zeros_like(params)
        return MSVAGState(count=jnp.zeros([], jnp.int32), m=zeros, v=zeros)

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_int32_increment(state.count)
        m = optax.tree.update_moment(updates, state.m, beta, 1)
        v = optax.tree.update_moment(updates, state.v, beta, 2)
        m_hat = optax.tree.bias_correction(m, beta, count)
        v_hat = optax.tree.bias_correction(v, beta, count)

        t = count.astype(jnp.float32)
        beta_t = beta**t
        rho = (1 - beta) ** 2 * (1 - beta_t**2) / ((1 - beta_t) ** 2 * (1 - beta**2))
        first = count <= 1
        # At t = 1, 1 - rho is 0 in exact arithmetic but may be any tiny value in floating point,
        # so the first step is decided by the count, not by testing 1 - rho.
        one_minus_rho = jnp.where(first, 1.0, 1.0 - rho)
        rho = jnp.where(first, 1.0, rho)

        def direction(mh, vh):
            m2 = mh * mh
            s = jnp.where(first, 0.0, jnp.maximum(vh - m2, 0.0) / one_minus_rho)
            den = m2 + rho * s
            has_den = den > 0
            gamma = jnp.where(has_den, m2 / jnp.where(has_den, den, 1.0), 1.0)
            return (jnp.clip(gamma, 0.0, 1.0) * mh).astype(mh.dtype)

        out = jax.tree.map(direction, m_hat, v_hat)
        return out, MSVAGState(count=count, m=m, v=v)

    return optax.GradientTransformation(init_fn, update_fn)


def msvag(
    learning_rate: float | Callable, beta: float = 0.9
) -> optax.GradientTransformationExtraArgs:
    """M-SVAG: theta -= lr * gamma * m^, see :func:`scale_by_msvag` for gamma and m^."""
    _check_learning_rate(learning_rate)
    return optax.chain(scale_by_msvag(beta), optax.scale_by_learning_rate(learning_rate))


def _base_optimizer(base: str, learning_rate, momentum, batch_size):
    if base == "sgd":
        return optax.sgd(learning_rate)
    if base == "momentum":
        return optax.sgd(learning_rate, momentum=momentum)
    if base == "adam":
        return optax.adam(learning_rate)
    if base == "adabelief":
        return optax.adabelief(learning_rate)
    if base == "svag":
        return optax.chain(scale_by_svag(batch_size), optax.sgd(learning_rate))
    return msvag(learning_rate)


def build_optimizer(
    name: str | RunName,
    learning_rate: float | Callable,
    *,
    momentum: float | None = None,
    alpha: float | None = None,
    batch_size: int | None = None,
    alpha_reference: str = "absolute",
) -> optax.GradientTransformationExtraArgs:
    """Build the optimizer called ``name`` (one of :data:`OPTIMIZERS`).

    Args:
      name: a registry name, e.g. ``sgd``, ``adam+sngrad2``, ``sgd+cv`` (parsed here, the
        library's boundary), or a parsed run (:class:`sngrad.names.RunName`, what the
        pipeline passes; only its optimizer is read, not its ``@alpha`` or ``~schedule``).
      learning_rate: finite and > 0 (or an optax schedule).
      momentum: in [0, 1), only for momentum and its +sngrad (default 0.9); giving it for
        another optimizer is an error rather than silently ignored, so a tuned value is never
        lost.
      alpha: the sngrad noise sensitivity, only for +sngrad names (default
        ``DEFAULT_ALPHA[variant]``); likewise an error for the others.
      batch_size: only for ``svag`` (its factor divides sigma^2 by B), required there.
      alpha_reference: how a +sngrad name reads ``alpha`` (``sngrad.transforms.REFERENCES``):
        ``"absolute"`` (the default) in raw units, ``"rms"`` relative to each step's
        root-mean-square sigma (variants I and III; II reads it as given either way); another
        value for a name without sngrad is an error.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; call ``opt.update(grad, state, params,
      **extra)`` with the keywords its parsed name ``needs_variance`` / ``needs_snapshot``.
    """
    run = name if isinstance(name, RunName) else parse_optimizer(name)
    name, base, variant, coefficient = run.optimizer, run.base, run.variant, run.cv
    _check_learning_rate(learning_rate)
    if run.has_momentum:
        momentum = _DEFAULT_MOMENTUM if momentum is None else momentum
        _check_momentum(momentum)
    elif momentum is not None:
        raise SngradError(
            f"momentum is only used by {', '.join(MOMENTUM_BASES)}; "
            f"got momentum={momentum!r} for {name!r}"
        )
    if variant is None and alpha is not None:
        raise SngradError(
            f"alpha is only used by +sngrad optimizers; got alpha={alpha!r} for {name!r}"
        )
    if variant is None and alpha_reference != "absolute":
        raise SngradError(f"alpha_reference is only used by +sngrad optimizers; got "
                          f"alpha_reference={alpha_reference!r} for {name!r}")
    if base != "svag" and batch_size is not None:
        raise SngradError(f"batch_size is only used by svag; got {batch_size!r} for {name!r}")

    opt = _base_optimizer(base, learning_rate, momentum, batch_size)
    if variant is not None:
        alpha = DEFAULT_ALPHA[variant] if alpha is None else alpha
        return optax.chain(noise_informed(variant, alpha, alpha_reference), opt)
    if coefficient is not None:
        from sngrad.transforms import control_variate  # added with the control variates

        return optax.chain(control_variate(coefficient), opt)
    return optax.with_extra_args_support(opt)
