"""The study's convolutional networks as flax NNX modules (:mod:`sngrad.architecture`'s ``cnn``
and ``fmnist_2c2d`` kinds), and their parameters in the engine's form.

The engine, the optimizers and the diagnostics hold a network's parameters as a list of
``(kernel, bias)`` pairs, one per layer with parameters (the MLP's ``[(W, b), ...]`` of
:mod:`sngrad.models`): a convolution's kernel has shape (k, k, in, out), a dense layer's
(fan_in, fan_out). :class:`ConvNet` is the ``nnx.Module`` those pairs are the state of;
:func:`to_pairs` and :func:`from_pairs` convert between the two, so a step can merge the pairs
into a module and hand it to :func:`sngrad.moments.flax_moments`, whose fast path gives the
exact per-example moments of ``nnx.Conv`` and ``nnx.Linear`` layers.

Forward pass: the flat example (as the splits store it) is reshaped to the dataset's
``(C, H, W)`` and moved to ``(H, W, C)``; each ``Conv`` block is ``relu(conv(x) + b)`` with
zero padding that keeps height and width, each ``MaxPool`` a max over 2 x 2 tiles of stride 2
(an odd row or column dropped), then the map is flattened row-major over (H, W, C) and the
dense layers follow (ReLU between them, none after the last, which gives the logits).

Initialisation as the MLP's (He et al., 2015): every kernel entry drawn from
``N(0, 2 / fan_in)`` with fan_in = k * k * in for a convolution, biases zero.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from sngrad.architecture import Architecture, Conv, Dense, MaxPool
from sngrad.models import cross_entropy

HE_NORMAL = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")


def patch_product(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                  dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """``lax.conv_general_dilated`` as the input's image patches times the kernel (im2col):
    ``y[b, i, j, o] = sum_{c, u, v} x[b, i + u, j + v, c] W[u, v, c, o]`` (zero padding), the
    same sums in another order.

    Why: inside a loop (the engine scans a whole epoch of steps) XLA's CPU backend runs a
    convolution's kernel gradient about ten times slower than the same product outside one
    (measured on fmnist_2c2d's second layer, B = 128); as a matrix product of the patches the
    gradient keeps its speed. The patches take k^2 times the input's memory."""
    if feature_group_count != 1 or kwargs.get("preferred_element_type") is not None:
        raise ValueError("patch_product: grouped or mixed-precision convolutions are not "
                         "supported; allowed: feature_group_count=1")
    patches = lax.conv_general_dilated_patches(
        lhs, rhs.shape[:-2], window_strides, padding, lhs_dilation, rhs_dilation,
        dimension_numbers, precision)
    # the patches' features run over (in channel, kernel row, kernel column)
    kernel = jnp.moveaxis(rhs, -2, 0).reshape(-1, rhs.shape[-1])
    return jnp.dot(patches, kernel, precision=precision)


class ConvNet(nnx.Module):
    """An :class:`~sngrad.architecture.Architecture` of Conv, MaxPool and Dense layers."""

    def __init__(self, arch: Architecture, *, rngs: nnx.Rngs):
        self.arch = arch
        layers = []
        for layer in arch.parametrised:
            if isinstance(layer, Conv):
                k = layer.kernel
                layers.append(nnx.Conv(layer.in_channels, layer.out_channels, (k, k),
                                       padding="SAME", kernel_init=HE_NORMAL,
                                       conv_general_dilated=patch_product, rngs=rngs))
            else:
                layers.append(nnx.Linear(layer.fan_in, layer.fan_out, kernel_init=HE_NORMAL,
                                         rngs=rngs))
        self.layers = nnx.List(layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        height, width, channels = self.arch.input_shape
        a = jnp.reshape(x, (*x.shape[:-1], channels, height, width))
        a = jnp.moveaxis(a, -3, -1)
        modules = iter(self.layers)
        for layer in self.arch.layers:
            if isinstance(layer, MaxPool):
                w = layer.window
                a = lax.reduce_window(a, -jnp.inf, lax.max, (*(1,) * (a.ndim - 3), w, w, 1),
                                      (*(1,) * (a.ndim - 3), w, w, 1), "VALID")
                continue
            if isinstance(layer, Dense) and a.ndim > 2:
                a = jnp.reshape(a, (*a.shape[:-3], -1))
            a = next(modules)(a)
            if layer.relu:
                a = jax.nn.relu(a)
        return a


@functools.lru_cache(maxsize=16)
def _structure(arch: Architecture):
    """(graphdef, parameter treedef, leaf position of each pair's kernel and bias)."""
    model = nnx.eval_shape(lambda: ConvNet(arch, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model, nnx.Param)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    # dict keys name the parameter; the Variable's own attribute key is left out
    where = {tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey)): i
             for i, (path, _) in enumerate(flat)}
    positions = tuple((where[("layers", i, "kernel")], where[("layers", i, "bias")])
                      for i in range(len(arch.parametrised)))
    return graphdef, treedef, positions


def to_pairs(arch: Architecture, params) -> list[tuple[jax.Array, jax.Array]]:
    """The ``[(kernel, bias), ...]`` list of an ``nnx.State`` of :class:`ConvNet`'s parameters
    (or of any tree of that structure: moments, per-example statistics)."""
    leaves = jax.tree.leaves(params)
    return [(leaves[k], leaves[b]) for k, b in _structure(arch)[2]]


def from_pairs(arch: Architecture, pairs):
    """The ``nnx.State`` of the parameters whose pairs are ``pairs``."""
    _, treedef, positions = _structure(arch)
    leaves = [None] * (2 * len(positions))
    for (k, b), (kernel, bias) in zip(positions, pairs, strict=True):
        leaves[k], leaves[b] = kernel, bias
    return jax.tree_util.tree_unflatten(treedef, leaves)


def module(arch: Architecture, pairs) -> ConvNet:
    """The :class:`ConvNet` whose parameters are ``pairs`` (inside a trace, too)."""
    return nnx.merge(_structure(arch)[0], from_pairs(arch, pairs))


@functools.partial(jax.jit, static_argnums=1)
def init(key: jax.Array, arch: Architecture):
    """He-normal kernels and zero biases of ``arch``, as pairs; the same key, the same
    weights. One compiled program per architecture, as :func:`sngrad.models.mlp_init`."""
    model = ConvNet(arch, rngs=nnx.Rngs(params=key))
    return to_pairs(arch, nnx.state(model, nnx.Param))


def apply(arch: Architecture, pairs, x: jax.Array) -> jax.Array:
    """Logits of a batch ``(B, H * W * C)`` (or one example ``(H * W * C,)``)."""
    if x.ndim == 1:
        return module(arch, pairs)(x[None])[0]
    return module(arch, pairs)(x)


def example_losses(model: ConvNet, batch) -> jax.Array:
    """The B per-example cross-entropies of ``batch = (x, y)``: the loss the moments take."""
    x, y = batch
    return cross_entropy(model(x), y)
