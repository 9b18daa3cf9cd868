"""The network a profile trains, as a list of layers: what the engine builds, the cost model
counts, the resource check sizes and the report describes. Pure Python (no jax).

A profile's ``model:`` names a kind and that kind's parameters (:data:`MODEL_KEYS`):

``mlp`` (the default when ``kind`` is left out)
    ``hidden: [d_1, ..., d_{L-1}]``: dense layers with ReLU between them, input the flattened
    example, output the class logits.
``cnn``
    ``channels: [c_1, ..., c_n]``, ``kernel: k``, ``dense: [h_1, ...]`` (may be empty): n
    blocks of a k x k convolution (stride 1, zero padding that keeps the height and width,
    ReLU) followed by a 2 x 2 max-pool of stride 2 (an odd row or column is dropped), then
    the feature map flattened, dense layers with ReLU, and a dense layer to the logits.
``fmnist_2c2d``
    DeepOBS's Fashion-MNIST network (Schneider, Balles and Hennig, 2019): the ``cnn`` with
    channels [32, 64], kernel 5 and dense [1024], on a 28 x 28 x 1 input.

Every kind takes ``init_seed``. The input is an image ``(H, W, C)``: the dataset's example
shape, ``(H, W)`` for one channel or ``(C, H, W)`` channels first (as the registry stores
CIFAR), which :func:`image_shape` turns around.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sngrad.errors import SngradError

MODEL_KINDS = ("mlp", "cnn", "fmnist_2c2d")
# the keys of each kind besides ``kind`` (optional for an MLP) and ``init_seed``
MODEL_KEYS = {"mlp": ("hidden",), "cnn": ("channels", "kernel", "dense"), "fmnist_2c2d": ()}
POOL_WINDOW = 2
FMNIST_2C2D = {"channels": (32, 64), "kernel": 5, "dense": (1024,)}
FMNIST_2C2D_INPUT = (28, 28, 1)


@dataclass(frozen=True)
class Dense:
    """``z = a W + b`` with ``W`` of shape (fan_in, fan_out), ReLU after it when ``relu``."""

    fan_in: int
    fan_out: int
    relu: bool

    @property
    def weights(self) -> int:
        return self.fan_in * self.fan_out

    @property
    def outputs(self) -> int:
        return self.fan_out


@dataclass(frozen=True)
class Conv:
    """A ``kernel x kernel`` convolution of an (height, width, in_channels) input, stride 1 and
    padding that keeps height and width, kernel of shape (k, k, in, out), then ReLU."""

    height: int
    width: int
    in_channels: int
    out_channels: int
    kernel: int

    relu = True

    @property
    def weights(self) -> int:
        return self.kernel * self.kernel * self.in_channels * self.out_channels

    @property
    def fan_out(self) -> int:
        return self.out_channels

    @property
    def outputs(self) -> int:
        return self.height * self.width * self.out_channels

    @property
    def multiply_adds(self) -> int:
        """Multiply-adds of one example's forward product: every output position times the
        kernel's taps (the padded border counted like the interior, as the product runs)."""
        return self.height * self.width * self.weights


@dataclass(frozen=True)
class MaxPool:
    """Max over ``window x window`` tiles of stride ``window`` of a (height, width, channels)
    input; no parameters."""

    height: int
    width: int
    channels: int
    window: int

    @property
    def outputs(self) -> int:
        return (self.height // self.window) * (self.width // self.window) * self.channels


Layer = Dense | Conv | MaxPool


@dataclass(frozen=True)
class Architecture:
    """A network: its kind, input shape ``(H, W, C)`` (an MLP's ``(d_0,)``), classes and
    layers in order. Hashable: the engine compiles one program per architecture."""

    kind: str
    input_shape: tuple[int, ...]
    classes: int
    layers: tuple[Layer, ...]

    @property
    def parametrised(self) -> tuple[Dense | Conv, ...]:
        """The layers with a (kernel, bias) pair, in order: the engine's parameter list."""
        return tuple(la for la in self.layers if not isinstance(la, MaxPool))

    @property
    def widths(self) -> tuple[int, ...]:
        """An MLP's ``(d_0, ..., d_L)``; an error for a convolutional network."""
        if self.kind != "mlp":
            raise SngradError(f"a {self.kind} network has no MLP widths")
        return (self.layers[0].fan_in, *(la.fan_out for la in self.layers))

    def weight_count(self) -> int:
        return sum(la.weights for la in self.parametrised)

    def parameter_count(self) -> int:
        return sum(la.weights + la.fan_out for la in self.parametrised)

    def unit_count(self) -> int:
        """Activations of one example over all layers' outputs (what a pass keeps)."""
        return sum(la.outputs for la in self.layers)

    def describe(self) -> str:
        """``64-16-10`` for an MLP; ``8x8x1 conv3x3x4 pool2 dense16 dense10`` otherwise."""
        if self.kind == "mlp":
            return "-".join(map(str, self.widths))
        parts = ["x".join(map(str, self.input_shape))]
        for la in self.layers:
            if isinstance(la, Conv):
                parts.append(f"conv{la.kernel}x{la.kernel}x{la.out_channels}")
            elif isinstance(la, MaxPool):
                parts.append(f"pool{la.window}")
            else:
                parts.append(f"dense{la.fan_out}")
        return " ".join(parts)


def image_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """``(H, W, C)`` of a dataset's example shape: ``(H, W)`` or channels-first ``(C, H, W)``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return (*shape, 1)
    if len(shape) == 3:
        return (shape[1], shape[2], shape[0])
    raise SngradError(f"a convolutional network needs image examples; got shape {shape}")


def model_kind(model: Mapping) -> str:
    return model.get("kind", "mlp")


def check_model(model: Mapping) -> str | None:
    """A one-line problem with a profile's ``model:`` section, or None."""
    if not isinstance(model, Mapping):
        return f"model must be a mapping with a kind; allowed kinds: {', '.join(MODEL_KINDS)}"
    kind = model_kind(model)
    if kind not in MODEL_KINDS:
        return f"model.kind {kind!r} is not allowed; allowed: {', '.join(MODEL_KINDS)}"
    allowed = {"kind", "init_seed", *MODEL_KEYS[kind]}
    unknown = sorted(set(model) - allowed)
    if unknown:
        return (f"model.{unknown[0]} is not a key of a {kind} model; allowed: "
                f"{', '.join(sorted(allowed))}")
    # init_seed draws the weights, not the shapes: the schema and the spec require it
    missing = [k for k in MODEL_KEYS[kind] if k not in model]
    if missing:
        return f"model.{missing[0]} is missing; a {kind} model needs {', '.join(sorted(allowed))}"

    def widths(key, empty_ok):
        values = model[key]
        if (not isinstance(values, list) or (not values and not empty_ok)
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values)):
            need = "a list" if empty_ok else "a non-empty list"
            return f"model.{key} is {values!r}; allowed: {need} of integers >= 1"
        return None

    if kind == "mlp":
        return widths("hidden", False)
    if kind == "cnn":
        kernel = model["kernel"]
        if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1:
            return f"model.kernel is {kernel!r}; allowed: an integer >= 1"
        return widths("channels", False) or widths("dense", True)
    return None


def build(model: Mapping, shape: Sequence[int], classes: int) -> Architecture:
    """The architecture of a checked ``model:`` section on examples of ``shape``."""
    problem = check_model(model)
    if problem:
        raise SngradError(problem)
    kind = model_kind(model)
    if kind == "mlp":
        return mlp([math.prod(shape), *model["hidden"], classes])
    image = image_shape(shape)
    values = FMNIST_2C2D if kind == "fmnist_2c2d" else model
    if kind == "fmnist_2c2d" and image != FMNIST_2C2D_INPUT:
        raise SngradError(f"model.kind fmnist_2c2d needs 28x28 one-channel images; the "
                          f"dataset's are {'x'.join(map(str, image))}; allowed: fashion-mnist, "
                          "mnist, or model.kind cnn")
    height, width, channels = image
    layers: list[Layer] = []
    for out in values["channels"]:
        if height < POOL_WINDOW or width < POOL_WINDOW:
            raise SngradError(f"model.channels: {len(values['channels'])} pooled blocks shrink "
                              f"a {'x'.join(map(str, image))} image below "
                              f"{POOL_WINDOW}x{POOL_WINDOW}; allowed: fewer channels entries")
        layers.append(Conv(height, width, channels, int(out), int(values["kernel"])))
        layers.append(MaxPool(height, width, int(out), POOL_WINDOW))
        height, width, channels = height // POOL_WINDOW, width // POOL_WINDOW, int(out)
    fan_in = height * width * channels
    for hidden in values["dense"]:
        layers.append(Dense(fan_in, int(hidden), relu=True))
        fan_in = int(hidden)
    layers.append(Dense(fan_in, classes, relu=False))
    return Architecture(kind, image, classes, tuple(layers))


def mlp(widths: Sequence[int]) -> Architecture:
    """The MLP of widths ``[d_0, ..., d_L]``: L dense layers, ReLU after all but the last."""
    widths = list(widths)
    if len(widths) < 2 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1
                              for w in widths):
        raise SngradError(f"widths must be >= 2 positive integers [d0, ..., dL]; got {widths!r}")
    last = len(widths) - 2
    layers = tuple(Dense(a, b, relu=i < last)
                   for i, (a, b) in enumerate(itertools.pairwise(widths)))
    return Architecture("mlp", (widths[0],), widths[-1], layers)


def as_architecture(network: Architecture | Sequence[int]) -> Architecture:
    """An Architecture, or the MLP of a widths sequence (how tests and benchmarks name one)."""
    return network if isinstance(network, Architecture) else mlp(network)
