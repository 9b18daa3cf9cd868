"""Per-example gradient moments of any loss, for any parameter pytree.

The model enters only through ``example_loss(params, example)``: the scalar loss of ONE
example, where ``example`` is the batch pytree with its leading (example) axis removed. For a
batch of B examples with per-example gradients ``g_j = d example_loss(params, example_j) /
d params`` the cores return :class:`Moments`

    loss = (1/B) sum_j l_j
    mean = (1/B) sum_j g_j
    var  = (1/B) sum_j (g_j - mean)^2          (population variance, elementwise)

with ``mean`` and ``var`` shaped like ``params``, and with a snapshot ``snap`` (gradients
``h_j`` there, same batch) :class:`CVStats`, which adds the snapshot's moments and

    cov = (1/B) sum_j (g_j - mean)(h_j - snap_mean)          (elementwise),

clipped to the Cauchy-Schwarz bound ``|cov| <= sqrt(var snap_var)``.

``vmap_moments`` holds all B per-example gradients (memory O(B P)) and reduces them in two
passes; ``chunked_moments`` does the same over micro-batches of c examples inside a
``lax.scan`` and merges the chunks with the parallel update of Chan, Golub and LeVeque
(1979), memory O(c P). Both are exact up to float32 rounding and are traceable: they can be
called inside a caller's ``jit``, ``scan`` or ``vmap``. ``example_loss`` must be hashable
(a module-level function, or the same closure object on every call) because the jitted
entry points treat it as static.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from sngrad.errors import SngradError, choice_error
from sngrad.names import MODEL_BACKENDS


class Moments(NamedTuple):
    """Mean loss, and mean and population variance of the per-example gradients.

    ``mean`` and ``var`` are shaped like the parameters; ``var`` divides by B.
    """

    loss: Any
    mean: Any
    var: Any


class CVStats(NamedTuple):
    """Per-example gradient moments at ``params`` and at a snapshot, on the same batch.

    ``loss`` is the mean loss at ``params``; every other field is shaped like ``params``:
    ``mean``, ``var`` (at ``params``), ``snap_mean``, ``snap_var`` (at the snapshot) and
    ``cov``, the population covariance of the two per-example gradients, coordinate by
    coordinate. All variances and covariances divide by B.
    """

    loss: Any
    mean: Any
    var: Any
    snap_mean: Any
    snap_var: Any
    cov: Any


def batch_size(batch) -> int:
    """The number of examples: the common length of the leading axis of every batch leaf."""
    return jax.tree.leaves(batch)[0].shape[0]


def bounded_covariance(cov: jax.Array, var: jax.Array, snap_var: jax.Array) -> jax.Array:
    """``cov`` clipped to ``[-c, c]``, c = sqrt(var snap_var), the Cauchy-Schwarz bound.

    Only rounding can leave the bound (a one-pass backend subtracts two products of the size
    of ``E[g h]``). ``sqrt(var) * sqrt(snap_var)`` cannot overflow or underflow where
    ``sqrt(var * snap_var)`` would, but it may round a little low; ``min(var, snap_var)`` is
    never above the true bound and keeps ``cov == var`` intact when the snapshot is the
    current point (the two passes are then the same computation).
    """
    bound = jnp.maximum(jnp.sqrt(var) * jnp.sqrt(snap_var), jnp.minimum(var, snap_var))
    return jnp.clip(cov, -bound, bound)


def two_pass_moments(grads):
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


def two_pass_co_moments(grads, snap_grads):
    """Per leaf: means, sums of squared deviations and the sum of cross deviations over axis
    0 of two stacks of per-example gradients (GEMVs with a vector of ones, as above).

    Returns ``(mean, m2, snap_mean, snap_m2, c2)``, each shaped like one stack's leaves
    without the leading axis.
    """

    def moments(g, h):
        n = g.shape[0]
        fg, fh = g.reshape(n, -1), h.reshape(n, -1)
        ones = jnp.ones((n,), g.dtype)
        mg, mh = (ones @ fg) * (1.0 / n), (ones @ fh) * (1.0 / n)
        dg, dh = fg - mg, fh - mh
        shape = g.shape[1:]
        return tuple(
            t.reshape(shape) for t in (mg, ones @ (dg * dg), mh, ones @ (dh * dh), ones @ (dg * dh))
        )

    leaves = [moments(g, h) for g, h in zip(jax.tree.leaves(grads), jax.tree.leaves(snap_grads),
                                            strict=True)]
    treedef = jax.tree.structure(grads)
    return tuple(jax.tree.unflatten(treedef, [m[i] for m in leaves]) for i in range(5))


def cv_from_sums(loss, batch, mean, m2, snap_mean, snap_m2, c2) -> CVStats:
    """Divide the sums of (cross) deviations by B and bound the covariance."""
    var = jax.tree.map(lambda q: q / batch, m2)
    snap_var = jax.tree.map(lambda q: q / batch, snap_m2)
    cov = jax.tree.map(lambda c, v, v0: bounded_covariance(c / batch, v, v0), c2, var, snap_var)
    return CVStats(loss, mean, var, snap_mean, snap_var, cov)


def per_example_value_and_grad(example_loss, params, batch):
    """``(losses (B,), per-example gradients)`` by ``vmap`` of ``value_and_grad``."""
    return jax.vmap(jax.value_and_grad(example_loss), in_axes=(None, 0))(params, batch)


# ----------------------------------------------------------------------------- vmap


def vmap_moments(example_loss, params, batch) -> Moments:
    """:class:`Moments` from all B per-example gradients (``vmap(grad)``), two-pass.

    The reference backend: exact for any differentiable per-example loss; holds B copies of
    the parameters' gradients.
    """
    losses, grads = per_example_value_and_grad(example_loss, params, batch)
    mean, m2 = two_pass_moments(grads)
    var = jax.tree.map(lambda s: s / batch_size(batch), m2)
    return Moments(jnp.mean(losses), mean, var)


def vmap_cv_moments(example_loss, params, snap, batch, snap_loss=None) -> CVStats:
    """:class:`CVStats` from all B per-example gradients at both parameter sets, two-pass.

    Holds 2 B copies of the parameters' gradients. ``snap_loss`` (default ``example_loss``)
    is the per-example loss whose gradient at ``snap`` is h_j.
    """
    losses, grads = per_example_value_and_grad(example_loss, params, batch)
    _, snap_grads = per_example_value_and_grad(snap_loss or example_loss, snap, batch)
    sums = two_pass_co_moments(grads, snap_grads)
    return cv_from_sums(jnp.mean(losses), batch_size(batch), *sums)


# ----------------------------------------------------------------------------- chunked


def chan_merge(left, right):
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


def chan_merge_cv(left, right):
    """Merge ``(n, loss_sum, mean, m2, snap_mean, snap_m2, c2)`` of two disjoint groups.

    Means and m2 merge as in :func:`chan_merge`; the sum of cross deviations ``c2 =
    sum_j (g_j - mean)(h_j - snap_mean)`` merges the same way with the product of the two
    deltas: ``c2 = c2_L + c2_R + delta_g delta_h n_L n_R / n``.
    """
    n_l, loss_l, mean_l, m2_l, smean_l, sm2_l, c2_l = left
    n_r, loss_r, mean_r, m2_r, smean_r, sm2_r, c2_r = right
    n = n_l + n_r
    w_r = n_r / n
    w_cross = n_l * n_r / n

    delta = jax.tree.map(jnp.subtract, mean_r, mean_l)
    sdelta = jax.tree.map(jnp.subtract, smean_r, smean_l)
    mean = jax.tree.map(lambda m, d: m + d * w_r, mean_l, delta)
    smean = jax.tree.map(lambda m, d: m + d * w_r, smean_l, sdelta)
    m2 = jax.tree.map(lambda a, b, d: a + b + jnp.square(d) * w_cross, m2_l, m2_r, delta)
    sm2 = jax.tree.map(lambda a, b, d: a + b + jnp.square(d) * w_cross, sm2_l, sm2_r, sdelta)
    c2 = jax.tree.map(lambda a, b, d, e: a + b + d * e * w_cross, c2_l, c2_r, delta, sdelta)
    return n, loss_l + loss_r, mean, m2, smean, sm2, c2


def _split_chunks(batch, chunk_size: int):
    """``(full chunks stacked on a new leading axis, the remainder or None, B)``.

    The remainder has ``B mod c`` examples; shapes are static, so it is handled by a separate
    call after the scan. ``B < c`` is one chunk of B.
    """
    total = batch_size(batch)
    c = min(chunk_size, total)
    n_full = total // c
    rest = total - n_full * c
    full = jax.tree.map(lambda a: a[: n_full * c].reshape(n_full, c, *a.shape[1:]), batch)
    tail = jax.tree.map(lambda a: a[n_full * c :], batch) if rest else None
    return full, tail, total


def chunked_moments(example_loss, params, batch, chunk_size: int = 32) -> Moments:
    """:class:`Moments` from per-example gradients of ``chunk_size`` examples at a time.

    The ``B // c`` full chunks run in a ``lax.scan`` whose carry is the running
    ``(count, loss sum, mean, m2)``; a last partial chunk of ``B mod c`` examples is merged
    after the scan (:func:`chan_merge`). Memory O(c P) for one chunk's gradients.
    """

    def chunk_moments(chunk):
        losses, grads = per_example_value_and_grad(example_loss, params, chunk)
        mean, m2 = two_pass_moments(grads)
        return jnp.asarray(batch_size(chunk), jnp.float32), jnp.sum(losses), mean, m2

    full, tail, total = _split_chunks(batch, chunk_size)
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = (jnp.float32(0.0), jnp.float32(0.0), zeros, zeros)

    def step(carry, chunk):
        return chan_merge(carry, chunk_moments(chunk)), None

    state, _ = lax.scan(step, state, full)
    if tail is not None:
        state = chan_merge(state, chunk_moments(tail))
    _, loss_sum, mean, m2 = state
    var = jax.tree.map(lambda s: s / total, m2)
    return Moments(loss_sum / total, mean, var)


def chunked_cv_moments(example_loss, params, snap, batch, chunk_size: int = 32,
                       snap_loss=None) -> CVStats:
    """:class:`CVStats` from per-example gradients of ``chunk_size`` examples at a time.

    Same scan and last partial chunk as :func:`chunked_moments`, with the co-moments of the
    two parameter sets merged by :func:`chan_merge_cv`; memory O(c P). ``snap_loss`` as in
    :func:`vmap_cv_moments`.
    """

    def chunk_co_moments(chunk):
        losses, grads = per_example_value_and_grad(example_loss, params, chunk)
        _, snap_grads = per_example_value_and_grad(snap_loss or example_loss, snap, chunk)
        sums = two_pass_co_moments(grads, snap_grads)
        return jnp.asarray(batch_size(chunk), jnp.float32), jnp.sum(losses), *sums

    full, tail, total = _split_chunks(batch, chunk_size)
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = (jnp.float32(0.0), jnp.float32(0.0), zeros, zeros, zeros, zeros, zeros)

    def step(carry, chunk):
        return chan_merge_cv(carry, chunk_co_moments(chunk)), None

    state, _ = lax.scan(step, state, full)
    if tail is not None:
        state = chan_merge_cv(state, chunk_co_moments(tail))
    _, loss_sum, *sums = state
    return cv_from_sums(loss_sum / total, total, *sums)


# ----------------------------------------------------------------------------- checked API



def _per_example(loss_fn):
    """The loss of one example from a loss of a batch: the example as a batch of one."""

    def example_loss(params, example):
        return loss_fn(params, jax.tree.map(lambda a: a[None], example))[0]

    return example_loss


@functools.partial(jax.jit, static_argnames=("loss_fn", "backend", "chunk_size"))
def _moments_core(params, batch, snapshot, *, loss_fn, backend, chunk_size):
    example_loss = _per_example(loss_fn)
    if snapshot is None:
        if backend == "vmap":
            return vmap_moments(example_loss, params, batch)
        return chunked_moments(example_loss, params, batch, chunk_size)
    if backend == "vmap":
        return vmap_cv_moments(example_loss, params, snapshot, batch)
    return chunked_cv_moments(example_loss, params, snapshot, batch, chunk_size)


def per_example_moments(loss_fn, params, batch, *, backend: str = "vmap", chunk_size: int = 32,
            snapshot=None):
    """Exact per-example gradient moments of any model: :class:`Moments`, or with
    ``snapshot`` (a parameter pytree like ``params``) :class:`CVStats`.

    ``loss_fn(params, batch)`` returns the B per-example losses (shape ``(B,)``); ``batch``
    is a pytree whose leaves share the leading example axis. Example j's gradient is that of
    ``loss_fn`` on example j alone (a batch of one), so the loss must not mix examples.
    ``backend``: ``"vmap"`` (memory O(B P)) or ``"chunked"`` (``chunk_size`` examples at a
    time, memory O(chunk_size P)). ``loss_fn`` must be hashable (it is a static argument of
    the compiled function). For flax NNX models :func:`sngrad.moments.flax_moments` adds a
    fast path.
    """
    if backend not in MODEL_BACKENDS:
        raise choice_error("backend", backend, MODEL_BACKENDS)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise SngradError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    leaves = jax.tree.leaves(batch)
    if not leaves or any(jnp.ndim(a) == 0 for a in leaves):
        raise SngradError("batch has no leaves or a scalar leaf; allowed: a pytree of arrays "
                          "that share a leading example axis")
    lengths = {jnp.shape(a)[0] for a in leaves}
    if len(lengths) != 1 or 0 in lengths:
        raise SngradError(f"batch leaves have leading lengths {sorted(lengths)}; allowed: one "
                          "common length >= 1 (the number of examples)")
    if snapshot is not None and (
        jax.tree.structure(snapshot) != jax.tree.structure(params)
        or any(jnp.shape(p) != jnp.shape(q)
               for p, q in zip(jax.tree.leaves(params), jax.tree.leaves(snapshot), strict=True))
    ):
        raise SngradError("snapshot differs from params in pytree structure or leaf shapes; "
                          "allowed: a parameter set of the same model")
    return _moments_core(params, batch, snapshot, loss_fn=loss_fn, backend=backend,
                         chunk_size=chunk_size)
