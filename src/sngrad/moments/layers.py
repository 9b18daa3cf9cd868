"""Per-example moments of one linear layer from its inputs and output cotangents.

A layer computes ``z = op(a, W) (+ b)`` with ``op`` linear in the kernel ``W`` (a dense
product or a convolution) and example j's loss depending only on row j of ``a`` and ``z``.
From one forward pass (the inputs ``A``) and one backward pass (the cotangents ``D_j =
dl_j / dz_j``, here received pre-scaled as ``S = D / B``) the per-example kernel gradient is
the vector-Jacobian product of ``op`` with respect to ``W`` at ``(a_j, D_j)``, and the bias
gradient is ``D_j`` summed over every axis but the feature axis.

``outer_product_moments``
    A dense layer on a plain ``(B, m)`` input: ``g_j = a_j d_j^T``, so ``sum_j g_j = A^T D``
    and ``sum_j g_j^2 = (A*A)^T (D*D)``; no per-example gradient is formed (memory O(B m +
    B n)). ``var = max(E[g^2] - mean^2, 0)`` cancels where the signal-to-noise ratio
    approaches 1/u (see ``sngrad.stats.dense_stats`` for the error bound).
``per_example_kernel_grads``
    Any other case (dense layers on inputs with extra axes such as sequence positions,
    convolutions with any stride, padding, dilation or feature groups): the B per-example
    kernel gradients are formed by ``vmap`` of the ``op``'s transpose, memory B x the kernel's
    size, and reduced in two passes (no cancellation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from sngrad.moments.generic import two_pass_co_moments, two_pass_moments

# dot_general dimension numbers for A^T S with A (B, m) and S (B, n): contract the batch
# axis of both operands directly, so XLA emits one GEMM with a transposed-operand flag
# instead of materialising A^T.
BATCH_CONTRACT = (((0,), (0,)), ((), ()))


def outer_product_moments(a: jax.Array, s: jax.Array):
    """Mean and population variance of a 2-D dense layer's (W, b) gradients from A and D / B.

    ``mean_W = A^T S``, ``E[g_W^2] = (A*A)^T (S * B S)``, ``var_W = max(E[g^2] - mean^2, 0)``
    (exactly 0 for B = 1, where ``a^2 d^2`` and ``(a d)^2`` would round differently);
    the bias moments are two-pass over the rows of ``B S``.
    """
    batch = a.shape[0]
    mean_w = lax.dot_general(a, s, BATCH_CONTRACT)
    # E[g^2] = (1/B) sum_j a_j^2 d_j^2 = sum_j a_j^2 (s_j * B s_j).
    sq_w = lax.dot_general(jnp.square(a), s * (batch * s), BATCH_CONTRACT)
    var_w = jnp.maximum(sq_w - mean_w * mean_w, 0.0)
    if batch == 1:
        var_w = jnp.zeros_like(var_w)
    mean_b = jnp.sum(s, axis=0)
    var_b = jnp.mean(jnp.square(batch * s - mean_b), axis=0)
    return (mean_w, mean_b), (var_w, var_b)


def outer_product_cross(a, s, a0, s0, mean, snap_mean):
    """Population covariance of a 2-D dense layer's (W, b) gradients at two parameter sets.

    ``E[g h]_W = ((A * A0)^T (S * B S0))`` since ``g_j h_j = (a_j a0_j)(d_j d0_j)^T``
    elementwise; ``cov_W = E[g h] - mean snap_mean`` (0 for B = 1), ``cov_b`` two-pass.
    """
    batch = a.shape[0]
    (m_w, m_b), (m0_w, m0_b) = mean, snap_mean
    cross_w = lax.dot_general(a * a0, s * (batch * s0), BATCH_CONTRACT)
    c_w = cross_w - m_w * m0_w
    if batch == 1:
        c_w = jnp.zeros_like(c_w)
    c_b = jnp.mean((batch * s - m_b) * (batch * s0 - m0_b), axis=0)
    return c_w, c_b


def per_example_kernel_grads(op, a: jax.Array, kernel: jax.Array, d: jax.Array) -> jax.Array:
    """``(B, *kernel.shape)``: example j's gradient of ``<d_j, op(a_j, W)>`` at ``W = kernel``.

    ``op(lhs, kernel)`` is the layer's own call with the example axis first; each example is
    passed as a batch of one, so strides, padding, dilation and feature groups are the
    layer's. The transpose of ``op`` with respect to its kernel, batched by ``vmap``, is one
    grouped product per layer (XLA folds the example axis into the feature groups).
    """

    def one(aj, dj):
        _, transpose = jax.vjp(lambda w: op(aj[None], w), kernel)
        return transpose(dj[None])[0]

    return jax.vmap(one)(a, d)


def per_example_bias_grads(d: jax.Array) -> jax.Array:
    """``(B, features)``: each example's cotangent summed over every axis but the first and
    the last (positions of a sequence, pixels of a feature map)."""
    return jnp.sum(d, axis=tuple(range(1, d.ndim - 1))) if d.ndim > 2 else d


def stacked_moments(grads):
    """Mean and population variance over axis 0 of a pytree of per-example gradients."""
    mean, m2 = two_pass_moments(grads)
    n = jax.tree.leaves(grads)[0].shape[0]
    return mean, jax.tree.map(lambda q: q / n, m2)


def stacked_co_moments(grads, snap_grads):
    """``(mean, var, snap_mean, snap_var, cov)`` over axis 0 of two stacks (cov unbounded)."""
    mean, m2, snap_mean, snap_m2, c2 = two_pass_co_moments(grads, snap_grads)
    n = jax.tree.leaves(grads)[0].shape[0]
    scale = lambda t: jax.tree.map(lambda q: q / n, t)  # noqa: E731
    return mean, scale(m2), snap_mean, scale(snap_m2), scale(c2)
