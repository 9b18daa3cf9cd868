"""Per-example gradient statistics of this project's MLP: batch mean and population variance.

This module is the MLP case of :mod:`sngrad.moments`, which computes the same moments for any
per-example loss and any parameter pytree (and exactly, near the cost of SGD, for flax
``Linear`` and ``Conv`` layers). Here the model is fixed: ``mlp_apply`` with the
cross-entropy loss, and parameters are the list of ``(W, b)`` pairs of ``sngrad.models``.

For a batch of B examples with per-example losses ``l_j = CE(f(x_j; theta), y_j)`` and
per-example gradients ``g_j = d l_j / d theta``, every backend returns

    loss = (1/B) sum_j l_j
    mean = (1/B) sum_j g_j                     (equal to the gradient of ``loss``)
    var  = (1/B) sum_j (g_j - mean)^2          (population variance, elementwise)

with ``mean`` and ``var`` shaped like ``params``. Three backends compute the same numbers:

``dense``
    Exact for MLPs of dense layers, from one forward and one backward pass (``dense_stats``).
    For a layer ``z = A W + b`` the per-example gradient of ``W`` is the outer product
    ``g_j = a_j d_j^T`` of the layer input ``a_j`` and the loss derivative ``d_j = dl_j/dz_j``,
    so ``sum_j g_j = A^T D`` and ``sum_j g_j^2 = (A*A)^T (D*D)``: two matrix products per layer
    and no per-example gradient is ever materialised (memory O(B * width), not O(B * P)).
``vmap``
    The reference (``vmap_stats``): all B per-example gradients by ``vmap(grad)``, then a
    two-pass mean and variance. Memory O(B * P). A thin wrapper of
    :func:`sngrad.moments.vmap_moments`, which takes any per-example loss.
``chunked``
    Bounded memory (``chunked_stats``): ``vmap(grad)`` over micro-batches of c examples
    inside a ``lax.scan``; the chunk moments are merged with the parallel update of Chan,
    Golub and LeVeque (1979). Memory O(c * P). A thin wrapper of
    :func:`sngrad.moments.chunked_moments`; for another model use that function (or
    :func:`sngrad.moments.per_example_moments`) with the model's per-example loss.

Control variates. Given a second parameter set ``snap`` (an SVRG snapshot) and ``h_j`` example
j's gradient there, on the same batch, ``gradient_stats(..., snapshot=snap)`` returns
:class:`CVStats`: the moments above at both parameter sets and the population covariance

    cov = (1/B) sum_j (g_j - mean)(h_j - snap_mean)          (elementwise)

from the cores ``dense_cv_stats`` (``sum_j g_j h_j = (A * A_snap)^T (D * D_snap)`` for a dense
layer, elementwise products of the two passes' layer inputs and cotangents), ``vmap_cv_stats``
and ``chunked_cv_stats`` (co-moments merged like the second moments). Every backend returns
``var, snap_var >= 0`` and ``|cov| <= sqrt(var * snap_var)`` (Cauchy-Schwarz, which rounding
alone could break), so that ``cov / snap_var`` is a correlation-bounded coefficient.

``gradient_stats`` and ``loss_and_grad`` are the checked entry points: they validate their
arguments (raising :class:`SngradError`) and then call a jitted core. The cores
``dense_stats``, ``vmap_stats``, ``chunked_stats``, their ``*_cv_stats`` counterparts and
``loss_and_grad_core`` do no checks
and can be called inside a caller's own ``jit`` / ``scan`` / ``vmap``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sngrad.errors import SngradError, choice_error
from sngrad.models import Params, cross_entropy, mlp_apply
from sngrad.moments.generic import (
    CVStats,
    bounded_covariance,
    chunked_cv_moments,
    chunked_moments,
    vmap_cv_moments,
    vmap_moments,
)
from sngrad.moments.layers import BATCH_CONTRACT as _BATCH_CONTRACT
from sngrad.moments.layers import outer_product_moments
from sngrad.names import BACKENDS


def _mean_loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(cross_entropy(mlp_apply(params, x), y))


def _example_loss(params: Params, example) -> jax.Array:
    """Loss of one example ``(x1, y1)``: ``x1`` of shape (D,), scalar ``y1``.

    Written on vectors, not as a batch of one: under ``vmap`` the weight gradient is then
    a broadcast outer product, where a (1, D) batch would give B matrix products with an
    inner dimension of 1, which XLA's CPU backend runs dozens of times slower.
    """
    x1, y1 = example
    return cross_entropy(mlp_apply(params, x1), y1)


# ----------------------------------------------------------------------------- plain SGD


@jax.jit
def loss_and_grad_core(params: Params, x: jax.Array, y: jax.Array):
    """``(mean loss, gradient of the mean loss)``; no input checks."""
    return jax.value_and_grad(_mean_loss)(params, x, y)


# ----------------------------------------------------------------------------- dense


def _forward_with_taps(params: Params, x: jax.Array, y: jax.Array, taps):
    """Sum of per-example losses with ``taps[l]`` (zeros, (B, out_l)) added to each z_l.

    Returns the inputs ``A_l`` of every layer as auxiliary output, so that the backward pass
    and the statistics reuse this one forward pass.
    """
    inputs = []
    a = x
    last = len(params) - 1
    for i, ((w, b), tap) in enumerate(zip(params, taps, strict=True)):
        inputs.append(a)
        z = a @ w + b + tap
        a = z if i == last else jax.nn.relu(z)
    return jnp.sum(cross_entropy(a, y)), inputs


def _dense_pass(params: Params, x: jax.Array, y: jax.Array):
    """``(mean loss, layer inputs A_l, scaled cotangents D_l / B)`` from one forward and one
    backward pass (see :func:`dense_stats` for the math)."""
    batch = x.shape[0]
    taps = [jnp.zeros((batch, w.shape[1]), x.dtype) for w, _ in params]
    total, backward, inputs = jax.vjp(
        lambda t: _forward_with_taps(params, x, y, t), taps, has_aux=True
    )
    # Seeding the backward pass with 1/B (the cotangent of the mean loss, as plain SGD does)
    # yields D / B, so that A^T (D / B) is already the mean and needs no extra pass.
    inv_b = 1.0 / batch
    (scaled,) = backward(jnp.full_like(total, inv_b))
    return total * inv_b, inputs, scaled


def _dense_layer_moments(a: jax.Array, s: jax.Array):
    """Mean and population variance of one layer's (W, b) gradients from A and D / B
    (:func:`sngrad.moments.layers.outer_product_moments`)."""
    return outer_product_moments(a, s)


@jax.jit
def dense_stats(params: Params, x: jax.Array, y: jax.Array):
    """``(loss, mean, var)`` for an MLP from one forward and one backward pass.

    Math. Differentiating the SUM of per-example losses with respect to a zero perturbation
    ``eps_l`` added to the pre-activation ``z_l`` gives, row by row, ``D_l[j] = dl_j/dz_l[j]``,
    because example j's loss depends only on row j of ``z_l``. Only these cotangents are
    requested from ``jax.vjp``, so the backward pass computes no weight gradients and no
    cotangent of the input ``x``. With ``A_l`` the layer input (from the same forward pass):

        mean_W = (A^T D) / B,     E[g_W^2] = ((A*A)^T (D*D)) / B,
        var_W  = max(E[g_W^2] - mean_W^2, 0),
        mean_b = mean_j D[j],     var_b = mean_j (D[j] - mean_b)^2   (two-pass).

    Cost: the forward pass and the backward pass of plain SGD minus its weight gradients,
    plus two GEMMs per layer instead of one; no (B, P) array exists at any point.

    Cancellation. ``var_W`` is a difference of two float32 quantities of size ``E[g^2] =
    mean^2 + var``. Both are sums of B terms whose rounding error is bounded relative to
    ``E[g^2]`` (the squares are non-negative, and ``|mean| E|g| <= E[g^2]`` by
    Cauchy-Schwarz), so ``|error of var_W| <= c(B) * u * E[g_W^2]`` with u = 2^-24 the unit
    roundoff and c(B) <= 3B + O(1) in the worst case, about sqrt(B) in practice. The relative
    error of ``var_W`` is therefore about ``c u (1 + mean^2 / var)``: negligible unless the
    signal-to-noise ratio ``mean^2 / var`` approaches 1/u ~ 1.7e7. In that regime (e.g.
    identical examples, true variance 0) the result is at most a few ``u * mean^2``, and the
    clamp at 0 removes negative values, which only rounding can produce. A shifted or
    two-pass formula would need per-example outer products, which is what this backend
    avoids; the ``vmap`` and ``chunked`` backends are two-pass and do not cancel.
    """
    loss, inputs, scaled = _dense_pass(params, x, y)
    pairs = [_dense_layer_moments(a, s) for a, s in zip(inputs, scaled, strict=True)]
    return loss, [m for m, _ in pairs], [v for _, v in pairs]


@jax.jit
def dense_cv_stats(params: Params, snap: Params, x: jax.Array, y: jax.Array) -> CVStats:
    """:class:`CVStats` for an MLP from one forward and one backward pass at each parameter set.

    Math. With ``A, D`` the layer input and output cotangents at ``params`` and ``A0, D0``
    those at ``snap`` (same batch), example j's weight gradients are ``g_j = a_j d_j^T`` and
    ``h_j = a0_j d0_j^T``, so elementwise ``g_j h_j = (a_j a0_j)(d_j d0_j)^T`` and

        E[g h]_W = ((A * A0)^T (D * D0)) / B,      cov_W = E[g h]_W - mean_W snap_mean_W,
        cov_b = mean_j (D[j] - mean_b)(D0[j] - snap_mean_b)      (two-pass, biases).

    Cost: twice the passes of :func:`dense_stats` and one more GEMM per layer; no (B, P)
    array. ``cov_W`` cancels like ``var_W`` (error about ``c(B) u sqrt(E[g^2] E[h^2])``, see
    :func:`dense_stats`); the result is clipped to the Cauchy-Schwarz bound, and B = 1
    gives exactly 0 as for the variance.
    """
    batch = x.shape[0]
    loss, inputs, scaled = _dense_pass(params, x, y)
    _, snap_inputs, snap_scaled = _dense_pass(snap, x, y)
    mean, var, snap_mean, snap_var, cov = [], [], [], [], []
    for a, s, a0, s0 in zip(inputs, scaled, snap_inputs, snap_scaled, strict=True):
        (m_w, m_b), (v_w, v_b) = _dense_layer_moments(a, s)
        (m0_w, m0_b), (v0_w, v0_b) = _dense_layer_moments(a0, s0)
        # E[g h] = (1/B) sum_j (a_j a0_j)(d_j d0_j) = sum_j (a_j a0_j)(s_j * B s0_j).
        cross_w = lax.dot_general(a * a0, s * (batch * s0), _BATCH_CONTRACT)
        c_w = cross_w - m_w * m0_w
        if batch == 1:
            c_w = jnp.zeros_like(c_w)  # as for var_w: one example has no spread
        c_b = jnp.mean((batch * s - m_b) * (batch * s0 - m0_b), axis=0)
        mean.append((m_w, m_b))
        var.append((v_w, v_b))
        snap_mean.append((m0_w, m0_b))
        snap_var.append((v0_w, v0_b))
        cov.append((bounded_covariance(c_w, v_w, v0_w), bounded_covariance(c_b, v_b, v0_b)))
    return CVStats(loss, mean, var, snap_mean, snap_var, cov)


# ----------------------------------------------------------------------------- vmap, chunked


@jax.jit
def vmap_stats(params: Params, x: jax.Array, y: jax.Array):
    """``(loss, mean, var)`` from all B per-example gradients (``vmap(grad)``), two-pass.

    The MLP case of :func:`sngrad.moments.vmap_moments`; holds B copies of the parameters.
    """
    return tuple(vmap_moments(_example_loss, params, (x, y)))


@jax.jit
def vmap_cv_stats(params: Params, snap: Params, x: jax.Array, y: jax.Array) -> CVStats:
    """:class:`CVStats` from all B per-example gradients at both parameter sets, two-pass.

    The reference for :func:`dense_cv_stats` (:func:`sngrad.moments.vmap_cv_moments`):
    holds 2 B copies of the parameters.
    """
    return vmap_cv_moments(_example_loss, params, snap, (x, y))


@functools.partial(jax.jit, static_argnames="chunk_size")
def chunked_stats(params: Params, x: jax.Array, y: jax.Array, chunk_size: int = 32):
    """``(loss, mean, var)`` from per-example gradients of ``chunk_size`` examples at a time.

    The MLP case of :func:`sngrad.moments.chunked_moments`: a ``lax.scan`` over the
    ``B // c`` full chunks merged by the parallel update of Chan, Golub and LeVeque, then
    the last partial chunk. Memory is O(c * P).
    """
    return tuple(chunked_moments(_example_loss, params, (x, y), chunk_size))


@functools.partial(jax.jit, static_argnames="chunk_size")
def chunked_cv_stats(
    params: Params, snap: Params, x: jax.Array, y: jax.Array, chunk_size: int = 32
) -> CVStats:
    """:class:`CVStats` from per-example gradients of ``chunk_size`` examples at a time
    (:func:`sngrad.moments.chunked_cv_moments` on the MLP); memory O(c * P)."""
    return chunked_cv_moments(_example_loss, params, snap, (x, y), chunk_size)


# ----------------------------------------------------------------------------- checked API


def _is_concrete(a) -> bool:
    return not isinstance(a, jax.core.Tracer)


def _validate(params: Params, x, y) -> None:
    """Shape checks always (they are static); the label range only on concrete arrays."""
    if not params:
        raise SngradError("params is empty; allowed: a list of (W, b) pairs, one per layer")
    x_shape, y_shape = jnp.shape(x), jnp.shape(y)
    fan_in = params[0][0].shape[0]
    if len(x_shape) != 2 or x_shape[1] != fan_in:
        raise SngradError(
            f"x has shape {x_shape}; allowed: (batch, {fan_in}) to match the first layer"
        )
    if len(y_shape) != 1 or not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        raise SngradError(
            f"y has shape {y_shape} and dtype {jnp.result_type(y)}; allowed: integer labels "
            "of shape (batch,)"
        )
    if x_shape[0] != y_shape[0]:
        raise SngradError(
            f"x has {x_shape[0]} examples but y has {y_shape[0]}; allowed: the same length"
        )
    if x_shape[0] == 0:
        raise SngradError("the batch is empty; allowed: at least 1 example")
    num_classes = params[-1][0].shape[1]
    if _is_concrete(y):
        labels = np.asarray(y)
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise SngradError(
                f"label {bad} is out of range; allowed: 0 <= y < {num_classes} (num_classes)"
            )


def loss_and_grad(params: Params, x: jax.Array, y: jax.Array):
    """Mean cross-entropy of the batch and its gradient (the plain SGD path), checked.

    Inside a caller's ``jit`` the label range cannot be inspected and is not checked; use
    :func:`loss_and_grad_core` there to skip the checks entirely.
    """
    _validate(params, x, y)
    return loss_and_grad_core(params, x, y)


def _validate_snapshot(params: Params, snapshot) -> None:
    """The snapshot must be a parameter set of the same network: same pytree, same shapes."""
    if jax.tree.structure(snapshot) != jax.tree.structure(params):
        raise SngradError(
            f"snapshot has pytree structure {jax.tree.structure(snapshot)}; allowed: the "
            f"structure of params, {jax.tree.structure(params)}"
        )
    for i, (p, q) in enumerate(zip(jax.tree.leaves(params), jax.tree.leaves(snapshot),
                                   strict=True)):
        if jnp.shape(p) != jnp.shape(q):
            raise SngradError(
                f"snapshot leaf {i} has shape {jnp.shape(q)}; allowed: {jnp.shape(p)} as in params"
            )


def gradient_stats(
    params: Params,
    x: jax.Array,
    y: jax.Array,
    backend: str = "dense",
    chunk_size: int = 32,
    snapshot: Params | None = None,
):
    """``(loss, mean, var)``: mean loss, and the mean and population variance (divide by B)
    of the per-example gradients, each shaped like ``params``.

    With ``snapshot`` (a parameter set of the same network, e.g. SVRG's snapshot) the result
    is :class:`CVStats` ``(loss, mean, var, snap_mean, snap_var, cov)``: the same moments at
    the snapshot on the same batch, and the per-coordinate population covariance of the two
    per-example gradients.

    ``backend`` is one of :data:`BACKENDS`; ``chunk_size`` (an integer >= 1) only affects
    ``chunked``. Raises :class:`SngradError` for an unknown backend, a bad chunk size, x and
    y of different lengths, a feature width that does not match the first layer, labels
    outside ``[0, num_classes)`` (checked when ``y`` is a concrete array), or a snapshot whose
    structure or shapes differ from ``params``.
    """
    if backend not in BACKENDS:
        raise choice_error("backend", backend, BACKENDS)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer):
        raise SngradError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    if chunk_size < 1:
        raise SngradError(f"chunk_size must be an integer >= 1, got {chunk_size}")
    _validate(params, x, y)
    if snapshot is not None:
        _validate_snapshot(params, snapshot)
        if backend == "dense":
            return dense_cv_stats(params, snapshot, x, y)
        if backend == "vmap":
            return vmap_cv_stats(params, snapshot, x, y)
        return chunked_cv_stats(params, snapshot, x, y, chunk_size=int(chunk_size))
    if backend == "dense":
        return dense_stats(params, x, y)
    if backend == "vmap":
        return vmap_stats(params, x, y)
    return chunked_stats(params, x, y, chunk_size=int(chunk_size))
