"""What the engine and the step need of a network, for each kind of :mod:`sngrad.architecture`:
initial parameters, logits, and the gradient statistics of a batch from the spec's backend.

Parameters are a list of ``(kernel, bias)`` pairs for every kind, and every statistic is
shaped like them, so the optimizers, the diagnostics and the checkpoints see one structure.

MLP
    :mod:`sngrad.models` and the cores of :mod:`sngrad.stats` (``dense``: the moments from two
    products per layer; ``vmap`` and ``chunked``: per-example gradients).
Convolutional (``cnn``, ``fmnist_2c2d``)
    :class:`sngrad.convnet.ConvNet` and :func:`sngrad.moments.flax_moments`: backend ``dense``
    is the library's fast path (exact: the per-example kernel gradients of each ``nnx.Conv``,
    outer products for each ``nnx.Linear``, from one forward and one backward pass), ``vmap``
    and ``chunked`` are its per-example backends. Plain and SVRG steps take the gradient of the
    mean loss.

Each core is ``(params, x, y) -> (loss, mean)`` / ``(loss, mean, var)`` or, for control
variates, ``(params, snap, x, y) ->`` :class:`sngrad.moments.CVStats`; none checks its input.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from sngrad import stats
from sngrad.architecture import Architecture
from sngrad.models import cross_entropy, mlp_apply, mlp_init
from sngrad.moments.generic import CVStats

CHUNKED_STATS_SIZE = 32  # examples per micro-batch of the chunked backend
FLAX_BACKEND = {"dense": "fast", "vmap": "vmap", "chunked": "chunked"}


def init(arch: Architecture, key: jax.Array):
    """The initial parameters of one run from its init key."""
    if arch.kind == "mlp":
        return mlp_init(key, arch.widths)
    from sngrad import convnet

    return convnet.init(key, arch)


def apply(arch: Architecture, params, x: jax.Array) -> jax.Array:
    """Logits of a batch of flat examples ``(B, D)``."""
    if arch.kind == "mlp":
        return mlp_apply(params, x)
    from sngrad import convnet

    return convnet.apply(arch, params, x)


# ----------------------------------------------------------------------------- the MLP's cores


def _dense_mean(params, x, y):
    """``(loss, mean)`` exactly as :func:`sngrad.stats.dense_stats` forms them (same pass,
    same products), without the second moments: what an SVRG step needs at each point."""
    loss, inputs, scaled = stats._dense_pass(params, x, y)
    mean = [(lax.dot_general(a, s, stats._BATCH_CONTRACT), jnp.sum(s, axis=0))
            for a, s in zip(inputs, scaled, strict=True)]
    return loss, mean


def _mlp_moments(backend: str):
    if backend == "chunked":
        return functools.partial(stats.chunked_stats, chunk_size=CHUNKED_STATS_SIZE)
    return {"dense": stats.dense_stats, "vmap": stats.vmap_stats}[backend]


def _mlp_cv(backend: str):
    if backend == "chunked":
        return functools.partial(stats.chunked_cv_stats, chunk_size=CHUNKED_STATS_SIZE)
    return {"dense": stats.dense_cv_stats, "vmap": stats.vmap_cv_stats}[backend]


# ----------------------------------------------------------------------------- flax's cores


def _mean_loss(arch: Architecture):
    def mean_loss(params, x, y):
        return jnp.mean(cross_entropy(apply(arch, params, x), y))

    return mean_loss


def _flax_moments(arch: Architecture, backend: str, params, x, y, snap=None):
    from sngrad import convnet
    from sngrad.moments import flax_moments

    snapshot = None if snap is None else convnet.module(arch, snap)
    return flax_moments(convnet.module(arch, params), convnet.example_losses, (x, y),
                        backend=FLAX_BACKEND[backend], snapshot=snapshot,
                        chunk_size=CHUNKED_STATS_SIZE)


def _flax_stats(arch: Architecture, backend: str):
    from sngrad.convnet import to_pairs

    def core(params, x, y):
        m = _flax_moments(arch, backend, params, x, y)
        return m.loss, to_pairs(arch, m.mean), to_pairs(arch, m.var)

    return core


def _flax_cv(arch: Architecture, backend: str):
    from sngrad.convnet import to_pairs

    def core(params, snap, x, y):
        cv = _flax_moments(arch, backend, params, x, y, snap)
        return CVStats(cv.loss, *(to_pairs(arch, tree) for tree in cv[1:]))

    return core


# ----------------------------------------------------------------------------- by kind


def loss_and_grad(arch: Architecture):
    """``(params, x, y) -> (mean loss, its gradient)``."""
    if arch.kind == "mlp":
        return stats.loss_and_grad_core
    return jax.value_and_grad(_mean_loss(arch))


def moments(arch: Architecture, backend: str):
    """``(params, x, y) -> (loss, mean, var)`` of the per-example gradients."""
    return _mlp_moments(backend) if arch.kind == "mlp" else _flax_stats(arch, backend)


def cv_moments(arch: Architecture, backend: str):
    """``(params, snap, x, y) -> CVStats`` at the parameters and the snapshot."""
    return _mlp_cv(backend) if arch.kind == "mlp" else _flax_cv(arch, backend)


def mean(arch: Architecture, backend: str):
    """``(params, x, y) -> (loss, mean)``: the dense backend keeps the bits of the MLP's
    moment backends' mean; every other case takes the plain gradient (the others' moments
    are two-pass over the same per-example gradients)."""
    if arch.kind == "mlp" and backend == "dense":
        return _dense_mean
    return loss_and_grad(arch)
