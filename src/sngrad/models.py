"""The multilayer perceptron that every experiment trains.

Parameters are a list of ``(W, b)`` pairs, one per dense layer, with ``W`` of shape
``(fan_in, fan_out)`` so that a layer maps a batch ``A`` of shape ``(B, fan_in)`` to
``z = A @ W + b``. Hidden layers apply ReLU, the last layer returns raw logits.

Initialisation follows He et al. (2015) for ReLU networks: ``W ~ N(0, 2 / fan_in)``
elementwise and ``b = 0``, which keeps the second moment of the pre-activations roughly
constant from layer to layer.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from sngrad.errors import SngradError

Params = list[tuple[jax.Array, jax.Array]]


def _check_sizes(sizes) -> list[int]:
    if isinstance(sizes, str | bytes) or not isinstance(sizes, Sequence):
        raise SngradError(
            f"MLP sizes must be a sequence of layer widths, got {type(sizes).__name__}; "
            "allowed: at least 2 positive integers, e.g. [784, 1024, 10]"
        )
    # bool is an int subclass, but a width of True is surely a mistake.
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int) or s <= 0]
    if len(sizes) < 2 or bad:
        raise SngradError(
            f"invalid MLP sizes {list(sizes)!r}; allowed: at least 2 positive integers "
            "(input width, hidden widths..., number of classes)"
        )
    return [int(s) for s in sizes]


def mlp_init(key: jax.Array, sizes: Sequence[int]) -> Params:
    """He-normal weights and zero biases for an MLP with layer widths ``sizes``.

    ``sizes = [d_0, d_1, ..., d_L]`` gives L layers; layer l has ``W_l`` of shape
    ``(d_{l-1}, d_l)`` with entries drawn i.i.d. from ``N(0, 2 / d_{l-1})`` and ``b_l = 0``.
    The same ``key`` always gives the same weights (one subkey per layer via ``split``).
    """
    return _init(key, tuple(_check_sizes(sizes)))


# One compiled program per architecture: run eagerly, every draw and scale of every new
# layer shape would be compiled as a kernel of its own.
@functools.partial(jax.jit, static_argnums=1)
def _init(key: jax.Array, sizes: tuple[int, ...]) -> Params:
    keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for k, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:], strict=True):
        w = jax.random.normal(k, (fan_in, fan_out), jnp.float32) * math.sqrt(2.0 / fan_in)
        params.append((w, jnp.zeros((fan_out,), jnp.float32)))
    return params


def mlp_apply(params: Params, x: jax.Array) -> jax.Array:
    """Logits ``z_L`` of the MLP: ``a_0 = x``, ``z_l = a_{l-1} W_l + b_l``,
    ``a_l = relu(z_l)`` for hidden layers, no activation after the last layer.

    ``x`` is a batch ``(B, d_0)`` or a single example ``(d_0,)`` (logits ``(d_L,)``)."""
    a = x
    for w, b in params[:-1]:
        a = jax.nn.relu(a @ w + b)
    w, b = params[-1]
    return a @ w + b


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example cross-entropy ``-log softmax(logits)[y]``: logits (..., K), labels (...),
    result (...), e.g. ``(B,)`` for a batch.

    ``log softmax`` subtracts the row maximum before exponentiating, so large logits do not
    overflow. The label is picked with a one-hot mask rather than a gather: its gradient is
    then an elementwise product instead of a scatter. Labels outside ``[0, K)`` select
    nothing (the loss becomes ``logsumexp``); callers validate labels beforehand.
    """
    logp = jax.nn.log_softmax(logits, axis=-1)
    onehot = y[..., None] == jnp.arange(logits.shape[-1], dtype=y.dtype)
    return -jnp.sum(jnp.where(onehot, logp, 0.0), axis=-1)
