"""Per-example gradient moments of a flax NNX model, exact, at a small multiple of an SGD step.

The user gives an ``nnx.Module`` and ``loss_fn(model, batch)``, which returns the B
per-example losses of a batch (a pytree whose leaves share the leading example axis), shape
(B,): any other shape, a batch mean above all, is a one-line error on every backend. The
moments are those of :mod:`sngrad.moments.generic` over the model's ``nnx.Param`` state, and
come back as ``nnx.State`` objects shaped like ``nnx.state(model, nnx.Param)``, the structure
``nnx.grad`` returns, so they feed an optax optimizer directly.

Fast path. Every ``nnx.Linear`` and ``nnx.Conv`` layer lets its product be replaced per
instance (its ``dot_general`` / ``conv_general_dilated`` attribute). On a private copy of the
model (``nnx.split`` / ``nnx.merge``; the user's model is never touched) each such product is
wrapped so that it records its input ``A`` and kernel and adds a zero "tap" to its output.
One ``jax.vjp`` of the summed loss with respect to the taps, seeded with 1/B, gives every
layer's scaled output cotangents ``D / B`` (one forward and one backward pass; no parameter
gradient is computed), and :mod:`sngrad.moments.layers` turns ``(A, D)`` into the moments:
outer products for a dense layer on a ``(B, features)`` input, per-example kernel gradients
(B x kernel) for a dense layer with extra leading axes and for convolutions with any stride,
padding, dilation and feature groups. Per-example gradients of the whole model never exist.

A Linear or Conv layer stays off the fast path, and its parameters fall back, when it is
called more than once per forward pass (shared weights), when its product does not see the
example axis first (``Conv`` flattens extra batch axes into one), when it uses
``dot_general_cls``, or when its fast moments differ from exact ``vmap(grad)`` ones on a check
batch the first time a (model, loss, shapes) is seen (:func:`_verified`: a kernel read outside
its layer, a masked kernel, an example axis matched by length alone). All other parameters
(``LayerNorm``, ``Embed``, anything custom) fall back too. Fallback: exact moments of the
fallback leaves only, from ``vmap(grad)`` over chunks of examples
(:func:`sngrad.moments.generic.chunked_moments`), memory O(chunk x fallback parameters), at
the cost of one more forward and backward pass per chunk.
:func:`fast_path_plan` says which layers take the fast path and which parameters fall back.

Assumption shared by every backend: example j's loss depends on example j only (no batch
statistics such as ``BatchNorm`` in training mode; a layer that changes the model's state
while traced, ``Dropout`` or ``BatchNorm`` in training mode, is a one-line error that says to
call ``model.eval()`` first); the fast path additionally assumes that
a layer's kernel is used by that layer alone. Linen models are supported by the generic
backends (:func:`sngrad.moments.per_example_moments` with ``model.apply``), not by this fast path.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from sngrad.errors import SngradError, choice_error
from sngrad.moments import layers
from sngrad.moments.flax_checks import SameLoss, check_losses
from sngrad.moments.generic import (
    CVStats,
    Moments,
    batch_size,
    bounded_covariance,
    chunked_cv_moments,
    chunked_moments,
    vmap_cv_moments,
    vmap_moments,
)
from sngrad.names import FLAX_BACKENDS

# The layer types whose parameters get the fast path.
FAST_LAYERS = (nnx.Linear, nnx.Conv)


class FastPathPlan(NamedTuple):
    """Which layers the fast path covers, and which parameters fall back, and why.

    ``fast``: module paths (``"layers/0"``) of the Linear and Conv layers on the fast path.
    ``fallback``: ``(parameter path, reason)`` pairs, e.g. ``("norm/scale", "LayerNorm")``.
    """

    fast: tuple[str, ...]
    fallback: tuple[tuple[str, str], ...]


def _name(path) -> str:
    return "/".join(str(k) for k in path)


def _key_path(key_path) -> tuple:
    """An nnx parameter path from a jax key path (dict keys; the Variable's own key dropped)."""
    return tuple(k.key for k in key_path if isinstance(k, jax.tree_util.DictKey))


def _module_at(model, path):
    node = model
    for key in path:
        node = node[key] if isinstance(key, int) else getattr(node, key)
    return node


def _is_candidate(module) -> bool:
    if type(module) not in FAST_LAYERS:
        return False
    return getattr(module, "dot_general_cls", None) is None


def _intercept(module, path, calls: dict, taps) -> None:
    """Replace the layer's product by one that records (input, kernel, op) and adds a tap."""
    if isinstance(module, nnx.Conv):
        attr, original = "conv_general_dilated", module.conv_general_dilated
    else:
        attr, original = "dot_general", module.dot_general or lax.dot_general

    def tapped(lhs, rhs, *args, **kwargs):
        out = original(lhs, rhs, *args, **kwargs)
        op = functools.partial(_apply_op, original, args, kwargs)
        calls[path].append((lhs, rhs, op, out.shape, out.dtype))
        return out if taps is None else out + taps[path]

    setattr(module, attr, tapped)


def _apply_op(original, args, kwargs, lhs, rhs):
    return original(lhs, rhs, *args, **kwargs)


def _forward(graphdef, params, rest, loss_fn, batch, paths, taps):
    """Per-example losses of a private copy of the model with ``paths`` intercepted."""
    model = nnx.merge(graphdef, params, rest)
    calls = {path: [] for path in paths}
    for path in paths:
        _intercept(_module_at(model, path), path, calls, taps)
    return loss_fn(model, batch), calls


def _plan(graphdef, params, rest, loss_fn, batch, refused=()):
    """``(fast layer paths, their tap shapes, FastPathPlan)`` from one abstract forward pass;
    ``refused``: ``(layer path, reason)`` pairs kept off the fast path (:func:`_verified`)."""
    model = nnx.merge(graphdef, params, rest)
    candidates = tuple(path for path, m in nnx.iter_modules(model) if _is_candidate(m))
    seen = {}

    def probe(p, b):
        _, calls = _forward(graphdef, p, rest, loss_fn, b, candidates, None)
        seen.update({path: [(c[0].shape, c[3], c[4]) for c in calls[path]] for path in calls})
        return 0.0

    jax.eval_shape(probe, params, batch)
    n = batch_size(batch)
    owner = {path: type(m).__name__ for path, m in nnx.iter_modules(model)}
    leaf_paths = [_key_path(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    fast, shapes, reasons = [], {}, {}
    refused = dict(refused)
    for path in candidates:
        uses = seen.get(path, [])
        if path in refused:
            reason = f"{owner[path]} {refused[path]}"
        elif len(uses) != 1:
            reason = f"{owner[path]} called {len(uses)} times per forward pass"
        elif uses[0][0][0] != n or uses[0][1][0] != n:
            reason = f"{owner[path]} whose product does not see the example axis first"
        else:
            fast.append(path)
            shapes[path] = (uses[0][1], uses[0][2])
            continue
        for leaf in leaf_paths:
            if leaf[: len(path)] == path:
                reasons[leaf] = reason
    covered = {(*path, name) for path in fast for name in ("kernel", "bias")}
    fallback = []
    for leaf in leaf_paths:
        if leaf in covered:
            continue
        # the innermost module that owns the parameter names the reason
        reason = reasons.get(leaf) or owner.get(leaf[:-1], "custom parameter")
        fallback.append((_name(leaf), reason))
    plan = FastPathPlan(tuple(_name(p) for p in fast), tuple(fallback))
    return tuple(fast), shapes, plan


def _taps_pass(graphdef, params, rest, loss_fn, batch, fast, shapes):
    """``(mean loss, {path: (A, kernel, op)}, {path: D / B})``: one forward, one backward."""
    n = batch_size(batch)
    taps = {path: jnp.zeros(shape, dtype) for path, (shape, dtype) in shapes.items()}
    ops = {}

    def total(t):
        losses, calls = _forward(graphdef, params, rest, loss_fn, batch, fast, t)
        ops.update({path: calls[path][0][2] for path in fast})
        return jnp.sum(losses), {path: calls[path][0][:2] for path in fast}

    value, backward, recorded = jax.vjp(total, taps, has_aux=True)
    (scaled,) = backward(jnp.full_like(value, 1.0 / n))
    inputs = {path: (*recorded[path], ops[path]) for path in fast}
    return value / n, inputs, scaled


def _is_plain_dense(op, a) -> bool:
    """A dense product of a (B, features) input: the outer-product formulas apply."""
    return op.args[0] is lax.dot_general and a.ndim == 2


def _has_bias(leaf_index, path) -> bool:
    return (*path, "bias") in leaf_index


def _layer_grads(a, kernel, op, scaled, with_bias):
    """Per-example (kernel, bias) gradients of a layer, stacked on axis 0."""
    d = scaled * a.shape[0]
    grads = [layers.per_example_kernel_grads(op, a, kernel, d)]
    if with_bias:
        grads.append(layers.per_example_bias_grads(d))
    return grads


def _fast_layer_moments(inputs, scaled, fast, leaf_index):
    """``{leaf path: (mean, var)}`` for every parameter of the fast layers."""
    out = {}
    for path in fast:
        a, kernel, op = inputs[path]
        s = scaled[path]
        with_bias = _has_bias(leaf_index, path)
        if _is_plain_dense(op, a):
            (m_w, m_b), (v_w, v_b) = layers.outer_product_moments(a, s)
            moments = [(m_w, v_w), (m_b, v_b)]
        else:
            mean, var = layers.stacked_moments(_layer_grads(a, kernel, op, s, with_bias))
            moments = list(zip(mean, var, strict=True))
        out[(*path, "kernel")] = moments[0]
        if with_bias:
            out[(*path, "bias")] = moments[1]
    return out


def _fast_layer_co_moments(inputs, scaled, snap_inputs, snap_scaled, fast, leaf_index):
    """``{leaf path: (mean, var, snap_mean, snap_var, cov)}`` for the fast layers."""
    out = {}
    for path in fast:
        (a, kernel, op), s = inputs[path], scaled[path]
        (a0, kernel0, _), s0 = snap_inputs[path], snap_scaled[path]
        with_bias = _has_bias(leaf_index, path)
        if _is_plain_dense(op, a):
            mean, var = layers.outer_product_moments(a, s)
            snap_mean, snap_var = layers.outer_product_moments(a0, s0)
            cov = layers.outer_product_cross(a, s, a0, s0, mean, snap_mean)
            fields = list(zip(mean, var, snap_mean, snap_var, cov, strict=True))
        else:
            g = _layer_grads(a, kernel, op, s, with_bias)
            h = _layer_grads(a0, kernel0, op, s0, with_bias)
            fields = list(zip(*layers.stacked_co_moments(g, h), strict=True))
        out[(*path, "kernel")] = fields[0]
        if with_bias:
            out[(*path, "bias")] = fields[1]
    return out


def _example_loss(graphdef, rest, loss_fn):
    def example_loss(params, example):
        model = nnx.merge(graphdef, params, rest)
        return loss_fn(model, jax.tree.map(lambda a: a[None], example))[0]

    return example_loss


def _fallback_example_loss(graphdef, rest, loss_fn, treedef, leaves, positions):
    """Per-example loss as a function of the fallback leaves only (the others held fixed)."""

    def example_loss(sub, example):
        full = list(leaves)
        for i, leaf in zip(positions, sub, strict=True):
            full[i] = leaf
        params = jax.tree_util.tree_unflatten(treedef, full)
        model = nnx.merge(graphdef, params, rest)
        return loss_fn(model, jax.tree.map(lambda a: a[None], example))[0]

    return example_loss


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "loss_fn", "backend", "chunk_size", "fallback", "refused"),
)
def _moments_core(graphdef, params, rest, batch, snap, *, loss_fn, backend, chunk_size,
                  fallback, refused=()):
    check_losses(graphdef, params, rest, loss_fn, batch)
    if backend in ("vmap", "chunked"):
        example_loss = _example_loss(graphdef, rest, loss_fn)
        if snap is None:
            if backend == "vmap":
                return vmap_moments(example_loss, params, batch)
            return chunked_moments(example_loss, params, batch, chunk_size)
        if backend == "vmap":
            return vmap_cv_moments(example_loss, params, snap, batch)
        return chunked_cv_moments(example_loss, params, snap, batch, chunk_size)

    fast, shapes, plan = _plan(graphdef, params, rest, loss_fn, batch, refused)
    if backend == "fast" and plan.fallback:
        names = ", ".join(f"{name} ({why})" for name, why in plan.fallback)
        raise SngradError(
            f"backend 'fast' covers only Linear and Conv layers, but these parameters would "
            f"fall back: {names}; allowed: backend='auto' (exact fallback for them)"
        )
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [_key_path(kp) for kp, _ in flat]
    leaves = [leaf for _, leaf in flat]
    leaf_index = set(paths)
    loss, inputs, scaled = _taps_pass(graphdef, params, rest, loss_fn, batch, fast, shapes)
    if snap is None:
        per_leaf = _fast_layer_moments(inputs, scaled, fast, leaf_index)
    else:
        snap_loss_inputs = _taps_pass(graphdef, snap, rest, loss_fn, batch, fast, shapes)
        per_leaf = _fast_layer_co_moments(inputs, scaled, snap_loss_inputs[1],
                                          snap_loss_inputs[2], fast, leaf_index)

    positions = [i for i, p in enumerate(paths) if p not in per_leaf]
    if positions:
        sub = [leaves[i] for i in positions]
        run = chunked_moments if fallback == "chunked" else vmap_moments
        run_cv = chunked_cv_moments if fallback == "chunked" else vmap_cv_moments
        size = {"chunk_size": chunk_size} if fallback == "chunked" else {}
        example_loss = _fallback_example_loss(graphdef, rest, loss_fn, treedef, leaves,
                                              positions)
        if snap is None:
            fb = run(example_loss, sub, batch, **size)
            fb_fields = list(zip(fb.mean, fb.var, strict=True))
        else:
            snap_leaves = jax.tree.leaves(snap)
            # the leaves held fixed differ between the two points: a second closure
            snap_loss = _fallback_example_loss(graphdef, rest, loss_fn, treedef, snap_leaves,
                                               positions)
            fb = run_cv(example_loss, sub, [snap_leaves[i] for i in positions], batch,
                        snap_loss=snap_loss, **size)
            fb_fields = list(zip(fb.mean, fb.var, fb.snap_mean, fb.snap_var, fb.cov,
                                 strict=True))
        for i, fields in zip(positions, fb_fields, strict=True):
            per_leaf[paths[i]] = fields

    def tree(k):
        return jax.tree_util.tree_unflatten(treedef, [per_leaf[p][k] for p in paths])

    if snap is None:
        return Moments(loss, tree(0), tree(1))
    var, snap_var = tree(1), tree(3)
    cov = jax.tree.map(bounded_covariance, tree(4), var, snap_var)
    return CVStats(loss, tree(0), var, tree(2), snap_var, cov)


FALLBACKS = ("chunked", "vmap")
VERIFY_TOLERANCE = 1e-3  # relative to a leaf's scale; the faults it exists for are 50-100 %
_VERIFIED: dict = {}  # (graphdef, loss, shapes) -> refused layers: one check per structure


def _check_batch(batch):
    """The batch with example 1 replaced by a copy of example 0 (same shape, so the same plan):
    a duplicated pair is where a product that mixes the example axis with another shows."""
    if batch_size(batch) < 2:
        return batch
    return jax.tree.map(lambda a: a.at[1].set(a[0]), batch)


def _signature(tree) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((jnp.shape(a), jnp.result_type(a)) for a in leaves)


def _verified(graphdef, params, rest, loss_fn, batch, chunk_size) -> tuple:
    """The Linear and Conv layers whose fast moments are wrong for this model and input shape:
    ``((layer path, reason), ...)``, empty when the fast path is exact.

    A layer's product can be intercepted and still not carry the layer's whole gradient: a
    kernel also read outside its layer (tied weights), an example axis found by a shape match
    that is not the example axis (a time-major input with T == B), a kernel masked inside the
    layer. So on the first call for a (model structure, loss, batch and parameter shapes) the
    fast moments of a check batch (:func:`_check_batch`, the real shape) are compared with
    exact ``vmap(grad)`` moments over chunks at the same precision; a layer whose mean or
    variance differs by more than :data:`VERIFY_TOLERANCE` of the leaf's scale (max |mean|,
    max E[g^2]) leaves the fast path with that reason. Cost: one fast and one chunked
    per-example pass over one batch, once per key (cached for the process)."""
    key = (graphdef, loss_fn, _signature(batch), _signature(params))
    if key in _VERIFIED:
        return _VERIFIED[key]
    with jax.ensure_compile_time_eval():
        refused = _compare_on_check_batch(graphdef, *_concrete(params, rest, batch), loss_fn,
                                          chunk_size)
    _VERIFIED[key] = refused
    return refused


def _concrete(params, rest, batch):
    """``(params, rest, batch)``, with stand-ins of the same shapes and dtypes where they are
    traced (``flax_moments`` called inside the user's ``jit``): the faults the check looks for
    are structural, so random weights and inputs show them as well as the real ones
    (floating leaves normal x 0.1, integer leaves zero: a valid label and index)."""
    if not any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves((params, rest, batch))):
        return params, rest, batch
    keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves((params, batch))) + 1))

    def stand_in(a):
        if not isinstance(a, jax.core.Tracer):
            return a
        if jnp.issubdtype(a.dtype, jnp.floating):
            return 0.1 * jax.random.normal(next(keys), a.shape, a.dtype)
        return jnp.zeros(a.shape, a.dtype)

    return tuple(jax.tree.map(stand_in, tree) for tree in (params, rest, batch))


def _compare_on_check_batch(graphdef, params, rest, batch, loss_fn, chunk_size) -> tuple:
    check = _check_batch(batch)
    fast_paths = _plan(graphdef, params, rest, loss_fn, check)[0]
    refused = []
    if fast_paths:
        common = {"loss_fn": loss_fn, "chunk_size": chunk_size, "fallback": "chunked"}
        got = _moments_core(graphdef, params, rest, check, None, backend="auto", **common)
        ref = _moments_core(graphdef, params, rest, check, None, backend="chunked", **common)
        flat = jax.tree_util.tree_flatten_with_path(ref.mean)[0]
        paths = [_key_path(kp) for kp, _ in flat]
        pairs = zip(paths, jax.tree.leaves(got.mean), jax.tree.leaves(ref.mean),
                    jax.tree.leaves(got.var), jax.tree.leaves(ref.var), strict=True)
        worst = {}
        for leaf, m, m_ref, v, v_ref in pairs:
            owner = next((p for p in fast_paths if leaf[: len(p)] == p), None)
            if owner is None:
                continue
            mean_scale = float(jnp.max(jnp.abs(m_ref))) + 1e-30
            var_scale = float(jnp.max(m_ref**2 + v_ref)) + 1e-30
            error = max(float(jnp.max(jnp.abs(m - m_ref))) / mean_scale,
                        float(jnp.max(jnp.abs(v - v_ref))) / var_scale)
            worst[owner] = max(worst.get(owner, 0.0), error)
        refused = [(path, f"whose fast moments differ from vmap(grad) by {error:.0%} of their "
                          "scale on a check batch (a kernel read outside its layer, a masked "
                          "kernel, or an example axis found by shape alone)")
                   for path, error in worst.items() if error > VERIFY_TOLERANCE]
    return tuple(refused)


def fast_path_plan(model: nnx.Module, loss_fn, batch) -> FastPathPlan:
    """Which layers of ``model`` take the fast path and which parameters fall back (and why)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss_fn = SameLoss(loss_fn)
    check_losses(graphdef, params, rest, loss_fn, batch)
    refused = _verified(graphdef, params, rest, loss_fn, batch, 32)
    return _plan(graphdef, params, rest, loss_fn, batch, refused)[2]


def flax_moments(model: nnx.Module, loss_fn, batch, *, backend: str = "auto",
                 snapshot: nnx.Module | None = None, chunk_size: int = 32,
                 fallback: str = "chunked"):
    """Exact per-example gradient moments of an NNX model's parameters on ``batch``.

    ``loss_fn(model, batch)`` returns the B per-example losses. The result is
    :class:`~sngrad.moments.generic.Moments` ``(loss, mean, var)`` with ``mean`` and ``var``
    shaped like ``nnx.state(model, nnx.Param)``; with ``snapshot`` (a model of the same
    structure, e.g. an SVRG snapshot) it is :class:`~sngrad.moments.generic.CVStats`.

    ``backend``: ``"auto"`` (the fast path for Linear and Conv layers, the exact
    ``fallback`` for every other parameter; :func:`fast_path_plan` lists them), ``"fast"``
    (the same, but an error if anything would fall back), ``"vmap"`` (the reference,
    memory O(B P)) or ``"chunked"`` (``vmap`` over ``chunk_size`` examples at a time).
    """
    if backend not in FLAX_BACKENDS:
        raise choice_error("backend", backend, FLAX_BACKENDS)
    if fallback not in FALLBACKS:
        raise choice_error("fallback", fallback, FALLBACKS)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise SngradError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    if not isinstance(model, nnx.Module):
        raise SngradError(
            f"model is a {type(model).__name__}; allowed: a flax.nnx.Module (for other models "
            "use sngrad.moments.per_example_moments with a loss of (params, batch))"
        )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    snap = None
    if snapshot is not None:
        snap = nnx.state(snapshot, nnx.Param)
        if jax.tree.structure(snap) != jax.tree.structure(params) or any(
            jnp.shape(p) != jnp.shape(q)
            for p, q in zip(jax.tree.leaves(params), jax.tree.leaves(snap), strict=True)
        ):
            raise SngradError(
                "snapshot's parameters differ in structure or shape from model's; allowed: "
                "a model of the same architecture"
            )
    loss_fn = SameLoss(loss_fn)
    refused = ()
    if backend in ("auto", "fast"):
        check_losses(graphdef, params, rest, loss_fn, batch)
        refused = _verified(graphdef, params, rest, loss_fn, batch, chunk_size)
    return _moments_core(graphdef, params, rest, batch, snap, loss_fn=loss_fn,
                         backend=backend, chunk_size=chunk_size, fallback=fallback,
                         refused=refused)


def _squared_norms(grads) -> jax.Array:
    """Per-example squared norms of a stack of per-example gradients (axis 0: examples)."""
    return jnp.sum(jnp.square(grads).reshape(grads.shape[0], -1), axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef", "loss_fn", "chunk_size", "refused"))
def _norms_core(graphdef, params, rest, batch, *, loss_fn, chunk_size, refused):
    fast, shapes, _ = _plan(graphdef, params, rest, loss_fn, batch, refused)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [_key_path(kp) for kp, _ in flat]
    leaves = [leaf for _, leaf in flat]
    leaf_index = set(paths)
    _, inputs, scaled = _taps_pass(graphdef, params, rest, loss_fn, batch, fast, shapes)
    norms = {}
    for path in fast:
        a, kernel, op = inputs[path]
        d = scaled[path] * a.shape[0]
        with_bias = _has_bias(leaf_index, path)
        if _is_plain_dense(op, a):
            # example j's kernel gradient is the outer product a_j d_j^T: its squared norm is
            # |a_j|^2 |d_j|^2, and no per-example gradient is formed (Goodfellow, 2015)
            d2 = jnp.sum(jnp.square(d), axis=1)
            norms[(*path, "kernel")] = jnp.sum(jnp.square(a), axis=1) * d2
            if with_bias:
                norms[(*path, "bias")] = d2
        else:
            grads = _layer_grads(a, kernel, op, scaled[path], with_bias)
            norms[(*path, "kernel")] = _squared_norms(grads[0])
            if with_bias:
                norms[(*path, "bias")] = _squared_norms(grads[1])
    positions = [i for i, p in enumerate(paths) if p not in norms]
    if positions:
        example_loss = _fallback_example_loss(graphdef, rest, loss_fn, treedef, leaves,
                                              positions)

        def one(example):
            grads = jax.grad(example_loss)([leaves[i] for i in positions], example)
            return [jnp.sum(jnp.square(g)) for g in grads]

        per_example = lax.map(one, batch, batch_size=chunk_size)
        for i, value in zip(positions, per_example, strict=True):
            norms[paths[i]] = value
    return jax.tree_util.tree_unflatten(treedef, [norms[p] for p in paths])


def flax_grad_norms(model: nnx.Module, loss_fn, batch, *, chunk_size: int = 32):
    """Per-example squared gradient norms of every parameter of an NNX model: a tree shaped
    like ``nnx.state(model, nnx.Param)`` whose leaves are (B,) arrays, ``|g_j|^2`` of that
    parameter for each example j (sum the leaves for the whole model's norm). What DP-SGD's
    clipping and gradient-noise diagnostics read; BackPACK calls it BatchL2Grad.

    Exact, from the same one forward and one backward pass as :func:`flax_moments` on the
    fast layers (a plain dense layer never forms a per-example gradient: ``|a_j|^2 |d_j|^2``),
    and from ``vmap(grad)`` over chunks of ``chunk_size`` examples for every other parameter;
    the same checks as :func:`flax_moments` (the loss's shape, verified plans, stateful
    layers)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise SngradError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    if not isinstance(model, nnx.Module):
        raise SngradError(f"model is a {type(model).__name__}; allowed: a flax.nnx.Module")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss_fn = SameLoss(loss_fn)
    check_losses(graphdef, params, rest, loss_fn, batch)
    refused = _verified(graphdef, params, rest, loss_fn, batch, chunk_size)
    return _norms_core(graphdef, params, rest, batch, loss_fn=loss_fn, chunk_size=chunk_size,
                       refused=refused)
