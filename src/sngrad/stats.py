"""Per-example gradient statistics: batch mean and population variance of each parameter.

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
    The generic reference (``vmap_stats``): all B per-example gradients by ``vmap(grad)``,
    then a two-pass mean and variance. Memory O(B * P).
``chunked``
    Any model, bounded memory (``chunked_stats``): ``vmap(grad)`` over micro-batches of c
    examples inside a ``lax.scan``; the chunk moments are merged with the parallel update of
    Chan, Golub and LeVeque (1979). Memory O(c * P).

``gradient_stats`` and ``loss_and_grad`` are the checked entry points: they validate their
arguments (raising :class:`SngradError`) and then call a jitted core. The cores
``dense_stats``, ``vmap_stats``, ``chunked_stats`` and ``loss_and_grad_core`` do no checks
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

BACKENDS = ("dense", "vmap", "chunked")

# dot_general dimension numbers for A^T D with A (B, m) and D (B, n): contract the batch
# axis of both operands directly, so XLA emits one GEMM with a transposed-operand flag
# instead of materialising A^T.
_BATCH_CONTRACT = (((0,), (0,)), ((), ()))


def _mean_loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(cross_entropy(mlp_apply(params, x), y))


def _example_loss(params: Params, x1: jax.Array, y1: jax.Array) -> jax.Array:
    """Loss of one example (``x1`` of shape (D,), scalar ``y1``).

    Written on vectors, not as a batch of one: under ``vmap`` the weight gradient is then
    a broadcast outer product, where a (1, D) batch would give B matrix products with an
    inner dimension of 1, which XLA's CPU backend runs dozens of times slower.
    """
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
    batch = x.shape[0]
    taps = [jnp.zeros((batch, w.shape[1]), x.dtype) for w, _ in params]
    total, backward, inputs = jax.vjp(
        lambda t: _forward_with_taps(params, x, y, t), taps, has_aux=True
    )
    # Seeding the backward pass with 1/B (the cotangent of the mean loss, as plain SGD does)
    # yields D / B, so that A^T (D / B) is already the mean and needs no extra pass.
    inv_b = 1.0 / batch
    (scaled,) = backward(jnp.full_like(total, inv_b))
    mean, var = [], []
    for a, s in zip(inputs, scaled, strict=True):
        # Contracting the batch axes directly lets XLA pick a GEMM with a transposed
        # operand instead of materialising A^T.
        mean_w = lax.dot_general(a, s, _BATCH_CONTRACT)
        # E[g^2] = (1/B) sum_j a_j^2 d_j^2 = sum_j a_j^2 (s_j * B s_j).
        sq_w = lax.dot_general(jnp.square(a), s * (batch * s), _BATCH_CONTRACT)
        var_w = jnp.maximum(sq_w - mean_w * mean_w, 0.0)
        if batch == 1:
            # a^2 d^2 and (a d)^2 round differently; one example has exactly no spread.
            var_w = jnp.zeros_like(var_w)
        mean_b = jnp.sum(s, axis=0)
        var_b = jnp.mean(jnp.square(batch * s - mean_b), axis=0)
        mean.append((mean_w, mean_b))
        var.append((var_w, var_b))
    return total * inv_b, mean, var


# ----------------------------------------------------------------------------- vmap

_per_example_value_and_grad = jax.vmap(jax.value_and_grad(_example_loss), in_axes=(None, 0, 0))


def _two_pass_moments(grads):
    """Mean and sum of squared deviations over axis 0 of every leaf (two passes).

    Both sums over the examples are written as matrix-vector products with a vector of
    weights: XLA's CPU backend reduces over the leading axis of a large array about a
    hundred times more slowly than it runs the equivalent GEMV.
    """

    def moments(g):
        flat = g.reshape(g.shape[0], -1)
        ones = jnp.ones((g.shape[0],), g.dtype)
        mean = (ones @ flat) * (1.0 / g.shape[0])
        m2 = ones @ jnp.square(flat - mean)
        return mean.reshape(g.shape[1:]), m2.reshape(g.shape[1:])

    pairs = [moments(g) for g in jax.tree.leaves(grads)]
    treedef = jax.tree.structure(grads)
    return (
        jax.tree.unflatten(treedef, [m for m, _ in pairs]),
        jax.tree.unflatten(treedef, [q for _, q in pairs]),
    )


@jax.jit
def vmap_stats(params: Params, x: jax.Array, y: jax.Array):
    """``(loss, mean, var)`` from all B per-example gradients (``vmap(grad)``), two-pass.

    Works for any differentiable per-example loss; holds B copies of the parameters.
    """
    losses, grads = _per_example_value_and_grad(params, x, y)
    mean, m2 = _two_pass_moments(grads)
    var = jax.tree.map(lambda s: s / x.shape[0], m2)
    return jnp.mean(losses), mean, var


# ----------------------------------------------------------------------------- chunked


def _chan_merge(left, right):
    """Merge ``(n, loss_sum, mean, m2)`` of two disjoint groups of examples.

    With ``delta = mean_R - mean_L`` and ``n = n_L + n_R`` (Chan, Golub, LeVeque 1979):
    ``mean = mean_L + delta n_R / n`` and ``m2 = m2_L + m2_R + delta^2 n_L n_R / n``,
    where m2 is the sum of squared deviations from the group's mean. ``n_L = 0`` is allowed.
    """
    n_l, loss_l, mean_l, m2_l = left
    n_r, loss_r, mean_r, m2_r = right
    n = n_l + n_r
    w_r = n_r / n
    w_cross = n_l * n_r / n

    delta = jax.tree.map(jnp.subtract, mean_r, mean_l)
    mean = jax.tree.map(lambda m, d: m + d * w_r, mean_l, delta)
    m2 = jax.tree.map(lambda a, b, d: a + b + jnp.square(d) * w_cross, m2_l, m2_r, delta)
    return n, loss_l + loss_r, mean, m2


def _chunk_moments(params: Params, xc: jax.Array, yc: jax.Array):
    losses, grads = _per_example_value_and_grad(params, xc, yc)
    mean, m2 = _two_pass_moments(grads)
    return jnp.asarray(xc.shape[0], jnp.float32), jnp.sum(losses), mean, m2


@functools.partial(jax.jit, static_argnames="chunk_size")
def chunked_stats(params: Params, x: jax.Array, y: jax.Array, chunk_size: int = 32):
    """``(loss, mean, var)`` from per-example gradients of ``chunk_size`` examples at a time.

    The ``B // c`` full chunks run in a ``lax.scan`` whose carry is the running
    ``(count, loss sum, mean, m2)``; a last partial chunk of ``B mod c`` examples (static
    shapes, so it is a separate call) is merged after the scan. ``B < c`` is one chunk of B.
    Memory is O(c * P) for the per-example gradients of one chunk.
    """
    batch = x.shape[0]
    c = min(chunk_size, batch)
    n_full = batch // c
    rest = batch - n_full * c
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = (jnp.float32(0.0), jnp.float32(0.0), zeros, zeros)

    def step(carry, chunk):
        return _chan_merge(carry, _chunk_moments(params, *chunk)), None

    xs = x[: n_full * c].reshape(n_full, c, *x.shape[1:])
    ys = y[: n_full * c].reshape(n_full, c)
    state, _ = lax.scan(step, state, (xs, ys))
    if rest:
        state = _chan_merge(state, _chunk_moments(params, x[n_full * c :], y[n_full * c :]))
    _, loss_sum, mean, m2 = state
    var = jax.tree.map(lambda s: s / batch, m2)
    return loss_sum / batch, mean, var


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


def gradient_stats(
    params: Params, x: jax.Array, y: jax.Array, backend: str = "dense", chunk_size: int = 32
):
    """``(loss, mean, var)``: mean loss, and the mean and population variance (divide by B)
    of the per-example gradients, each shaped like ``params``.

    ``backend`` is one of :data:`BACKENDS`; ``chunk_size`` (an integer >= 1) only affects
    ``chunked``. Raises :class:`SngradError` for an unknown backend, a bad chunk size, x and
    y of different lengths, a feature width that does not match the first layer, or labels
    outside ``[0, num_classes)`` (checked when ``y`` is a concrete array).
    """
    if backend not in BACKENDS:
        raise choice_error("backend", backend, BACKENDS)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer):
        raise SngradError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    if chunk_size < 1:
        raise SngradError(f"chunk_size must be an integer >= 1, got {chunk_size}")
    _validate(params, x, y)
    if backend == "dense":
        return dense_stats(params, x, y)
    if backend == "vmap":
        return vmap_stats(params, x, y)
    return chunked_stats(params, x, y, chunk_size=int(chunk_size))
