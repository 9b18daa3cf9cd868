"""Optimizer registry: every optimizer of the study built from its name.

A name is a base optimizer, optionally followed by a noise-informed variant that is chained in
front of it: ``"adam"``, ``"adam+sngrad2"`` (= ``optax.chain(noise_informed("II"), adam)``).
The bases and the optax settings they use (step t, gradient g, learning rate lr):

- ``sgd``: theta -= lr g.
- ``momentum`` (heavy ball, ``optax.sgd(lr, momentum=m)``): b = m b + g; theta -= lr b.
- ``nesterov`` (``optax.sgd(lr, momentum=m, nesterov=True)``): b = m b + g;
  theta -= lr (g + m b).
- ``adam`` (``optax.adam``: b1 = 0.9, b2 = 0.999, eps = 1e-8): bias-corrected EMAs m, v of g
  and g^2; theta -= lr m / (sqrt(v) + eps).
- ``rmsprop`` (``optax.rmsprop``: decay = 0.9, eps = 1e-8 inside the root, no momentum, not
  centred): v = 0.9 v + 0.1 g^2; theta -= lr g / sqrt(v + eps).
- ``adadelta`` (``optax.adadelta``: rho = 0.9, eps = 1e-6): the AdaDelta step
  -sqrt(E[dx^2] + eps) / sqrt(E[g^2] + eps) g, multiplied by lr. Zeiler's original method has
  no learning rate; lr = 1 recovers it.
- ``msvag``: M-SVAG, see :func:`msvag`. It estimates the gradient variance over time itself,
  so it takes no sngrad variant.

Every optimizer returned by :func:`build_optimizer` has the same call shape,
``opt.update(grad, state, params, **extra)``; the ``+sngradN`` ones need the keyword
``grad_var`` (the per-example gradient variance), the others ignore extra keywords.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sngrad.errors import SngradError
from sngrad.transforms import DEFAULT_ALPHA, noise_informed

BASE_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "rmsprop", "adadelta", "msvag")

_SUFFIX_TO_VARIANT = {"sngrad1": "I", "sngrad2": "II", "sngrad3": "III"}
_MOMENTUM_BASES = ("momentum", "nesterov")
_DEFAULT_MOMENTUM = 0.9

OPTIMIZERS = tuple(
    name
    for base in BASE_OPTIMIZERS
    for name in [base, *(f"{base}+{s}" for s in _SUFFIX_TO_VARIANT if base != "msvag")]
)


class OptimizerSpec(NamedTuple):
    """A parsed optimizer name: the base optimizer and the sngrad variant in front (or None)."""

    base: str
    variant: str | None


def parse_optimizer(name: str) -> OptimizerSpec:
    """Split ``"base"`` or ``"base+sngradN"`` into an :class:`OptimizerSpec`."""
    if not isinstance(name, str):
        raise SngradError(f"optimizer name must be a string, got {name!r}")
    base, plus, suffix = name.partition("+")
    if base not in BASE_OPTIMIZERS:
        raise SngradError(
            f"unknown optimizer {name!r}: the base must be one of {', '.join(BASE_OPTIMIZERS)}, "
            f"optionally followed by +{', +'.join(_SUFFIX_TO_VARIANT)}"
        )
    if not plus:
        return OptimizerSpec(base, None)
    if suffix not in _SUFFIX_TO_VARIANT:
        raise SngradError(
            f"unknown sngrad suffix {suffix!r} in optimizer {name!r}; "
            f"valid: {', '.join(_SUFFIX_TO_VARIANT)}"
        )
    if base == "msvag":
        raise SngradError(
            f"optimizer {name!r} is not allowed: msvag estimates the gradient variance itself "
            "and does not combine with sngrad; use 'msvag' alone"
        )
    return OptimizerSpec(base, _SUFFIX_TO_VARIANT[suffix])


def needs_variance(name: str) -> bool:
    """Whether ``opt.update`` must be given ``grad_var`` (the name has a +sngrad variant)."""
    return parse_optimizer(name).variant is not None


def has_momentum(name: str) -> bool:
    """Whether the optimizer takes a momentum coefficient (momentum, nesterov and their +sngrad)."""
    return parse_optimizer(name).base in _MOMENTUM_BASES


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


def _base_optimizer(base: str, learning_rate, momentum) -> optax.GradientTransformation:
    if base == "sgd":
        return optax.sgd(learning_rate)
    if base == "momentum":
        return optax.sgd(learning_rate, momentum=momentum)
    if base == "nesterov":
        return optax.sgd(learning_rate, momentum=momentum, nesterov=True)
    if base == "adam":
        return optax.adam(learning_rate)
    if base == "rmsprop":
        return optax.rmsprop(learning_rate)
    if base == "adadelta":
        return optax.adadelta(learning_rate)
    return msvag(learning_rate)


def build_optimizer(
    name: str,
    learning_rate: float | Callable,
    *,
    momentum: float | None = None,
    alpha: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Build the optimizer called ``name`` (one of :data:`OPTIMIZERS`).

    Args:
      name: ``base`` or ``base+sngrad1|2|3``.
      learning_rate: finite and > 0 (or an optax schedule).
      momentum: in [0, 1), only for momentum / nesterov (default 0.9); giving it for another
        optimizer is an error rather than silently ignored, so a tuned value is never lost.
      alpha: the sngrad noise sensitivity, only for +sngrad names (default
        ``DEFAULT_ALPHA[variant]``); likewise an error for the others.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; call
      ``opt.update(grad, state, params, grad_var=var)`` when :func:`needs_variance`, else
      ``opt.update(grad, state, params)``.
    """
    base, variant = parse_optimizer(name)
    _check_learning_rate(learning_rate)
    if base in _MOMENTUM_BASES:
        momentum = _DEFAULT_MOMENTUM if momentum is None else momentum
        _check_momentum(momentum)
    elif momentum is not None:
        raise SngradError(
            f"momentum is only used by {', '.join(_MOMENTUM_BASES)}; "
            f"got momentum={momentum!r} for {name!r}"
        )
    if variant is None and alpha is not None:
        raise SngradError(
            f"alpha is only used by +sngrad optimizers; got alpha={alpha!r} for {name!r}"
        )

    opt = _base_optimizer(base, learning_rate, momentum)
    if variant is None:
        return optax.with_extra_args_support(opt)
    alpha = DEFAULT_ALPHA[variant] if alpha is None else alpha
    return optax.chain(noise_informed(variant, alpha), opt)
