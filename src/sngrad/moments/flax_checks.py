"""What the flax moments ask of the user's model and loss, checked before any is computed.

- The loss returns one loss per example, shape (B,) (:func:`check_losses`): a batch mean
  would give the fast path wrong moments silently.
- No layer changes the model's state while traced (:func:`stateful_error`): Dropout and
  BatchNorm in training mode break the assumption that example j's loss depends on example j
  alone, and flax refuses the trace.
- A loss written inline (a new lambda per call) is the same static argument of the jitted
  core as its previous copies (:class:`SameLoss`), so it does not compile again.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx
from flax.errors import TraceContextError

from sngrad.errors import SngradError
from sngrad.moments.generic import batch_size


def check_losses(graphdef, params, rest, loss_fn, batch) -> None:
    """One loss per example: ``loss_fn`` must return shape (B,), or a one-line error names
    the shape it returned. Abstract evaluation only; inside the jitted core it runs when a
    (model, loss, batch shape) is first traced, so later calls pay nothing. Without it a
    batch-mean loss would give the fast path wrong moments silently (the taps would see one
    summed loss) and the per-example backends an IndexError."""
    expected = (batch_size(batch),)
    try:
        got = jax.eval_shape(lambda p: loss_fn(nnx.merge(graphdef, p, rest), batch), params)
    except TraceContextError as err:
        raise stateful_error(nnx.merge(graphdef, params, rest), err) from None
    shape = getattr(got, "shape", None)
    if shape == expected:
        return
    if shape is None:
        received, hint = f"a {type(got).__name__}", "return the array of losses alone"
    elif shape == ():
        received, hint = "a scalar", "return the losses before averaging over the batch"
    elif shape == (*expected, 1):
        received, hint = f"shape {shape}", "drop the trailing axis (e.g. losses[:, 0])"
    else:
        received, hint = f"shape {shape}", "return one loss per example of the batch"
    raise SngradError(
        f"loss_fn returned {received}; expected the per-example losses, shape {expected} "
        f"for this batch of {expected[0]}: {hint}"
    )


def training_mode_layers(model) -> list[str]:
    """``path (Dropout)`` / ``path (BatchNorm)`` of every layer left in training mode."""
    found = []
    for path, module in nnx.iter_modules(model):
        name = "/".join(map(str, path))
        if isinstance(module, nnx.Dropout) and not module.deterministic and module.rate > 0:
            found.append(f"{name} (Dropout)")
        elif isinstance(module, nnx.BatchNorm) and not module.use_running_average:
            found.append(f"{name} (BatchNorm)")
    return found


def stateful_error(model, err: TraceContextError) -> SngradError:
    """flax's trace-level error of a layer that changes the model's state while traced
    (Dropout's random stream, BatchNorm's batch statistics), as one line that says what to do.
    Such a layer also breaks what every backend assumes: example j's loss depends on example
    j alone (batch statistics mix the examples)."""
    layers = training_mode_layers(model)
    where = (f"layers in training mode: {', '.join(layers)}" if layers
             else f"flax: {str(err).splitlines()[0]}")
    return SngradError(
        "loss_fn changes the model's state while sngrad traces it (" + where + "); per-example "
        "moments need each example's loss to depend on that example alone and the model to "
        "stay as it is: call model.eval() before computing them (Dropout off, BatchNorm on its "
        "running averages), then model.train() to go on training"
    )



class SameLoss:
    """``loss_fn`` as a static argument of the jitted core that equals every other function
    made from the same code with the same captured objects, so that a loss written inline (a
    new lambda or ``functools.partial`` per call) does not compile again on every call.

    Two functions are the same loss when they share code, globals, defaults and closure cells
    holding the identical objects (captured values are compared by identity, never by value:
    the jitted program bakes them in, so a new array must mean a new program); two
    ``functools.partial`` objects when their function is the same loss and their arguments
    are identical. Anything else is compared as itself."""

    __slots__ = ("fn", "key")

    def __init__(self, fn):
        self.fn = fn
        self.key = self._key(fn)

    @classmethod
    def _key(cls, fn):
        if isinstance(fn, functools.partial):
            keywords = tuple(sorted((k, id(v)) for k, v in fn.keywords.items()))
            return ("partial", cls._key(fn.func), tuple(map(id, fn.args)), keywords)
        code = getattr(fn, "__code__", None)
        if code is None or getattr(fn, "__self__", None) is not None:
            return ("object", id(fn))
        cells = tuple(id(c.cell_contents) for c in fn.__closure__ or ())
        defaults = tuple(map(id, fn.__defaults__ or ()))
        kwdefaults = tuple(sorted((k, id(v)) for k, v in (fn.__kwdefaults__ or {}).items()))
        return ("function", code, id(fn.__globals__), cells, defaults, kwdefaults)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, SameLoss) and self.key == other.key
