"""Property tests of sngrad.moments.flax_moments against vmap(grad) per-example gradients.

Three model families (an MLP with a dense layer on a sequence axis, a CNN with strides,
padding, dilation and feature groups, a model with LayerNorm and Embed), every backend,
batch size 1 and batches of one repeated example included.

Tolerance. Every backend sums the same per-example quantities in a different order, and the
fast path's dense variance is a one-pass difference ``E[g^2] - mean^2`` whose float32 error
is bounded by a small multiple of ``u * E[g^2]`` (u = 2^-24, see sngrad.stats.dense_stats).
Errors are therefore measured against the leaf's scale: ``max|mean|`` for first moments and
``max(mean^2 + var)`` (i.e. ``E[g^2]``) for variances and covariances, with a factor 1e-4,
far above the few hundred u that B <= 5 examples and these depths produce.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from sngrad.errors import SngradError
from sngrad.models import cross_entropy
from sngrad.moments import fast_path_plan, flax_grad_norms, flax_moments

TOL = 1e-4
SETTINGS = settings(max_examples=3, deadline=None, derandomize=True)


class SeqMLP(nnx.Module):
    """Dense layers on (B, features) and on (B, positions, features) inputs."""

    def __init__(self, rngs):
        self.inp = nnx.Linear(5, 8, rngs=rngs)
        self.pos = nnx.Linear(4, 4, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)
        self.nobias = nnx.Linear(3, 3, use_bias=False, rngs=rngs)

    def __call__(self, x):
        h = jnp.tanh(self.inp(x))                        # (B, 8)
        h = self.pos(h.reshape(h.shape[0], 2, 4))        # (B, 2, 4): a dense layer per position
        return self.nobias(self.out(jnp.tanh(h).reshape(h.shape[0], 8)))


class CNN(nnx.Module):
    def __init__(self, rngs):
        self.c1 = nnx.Conv(2, 4, (3, 3), strides=(2, 1), padding=((1, 0), (2, 1)),
                           kernel_dilation=(1, 2), rngs=rngs)
        self.c2 = nnx.Conv(4, 6, (2, 2), feature_group_count=2, padding="VALID", rngs=rngs)
        self.c3 = nnx.Conv(6, 3, (2, 2), strides=2, padding="SAME", rngs=rngs)
        self.out = nnx.Linear(3, 3, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.c1(x))
        h = jnp.tanh(self.c2(h))
        h = self.c3(h).mean(axis=(1, 2))
        return self.out(h)


class NormEmbed(nnx.Module):
    def __init__(self, rngs):
        self.emb = nnx.Embed(7, 4, rngs=rngs)
        self.norm = nnx.LayerNorm(4, rngs=rngs)
        self.mix = nnx.Linear(4, 4, rngs=rngs)
        self.out = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        tokens, features = x
        h = self.emb(tokens) + features                  # (B, 3, 4)
        h = nnx.relu(self.mix(self.norm(h))).mean(axis=1)
        return self.out(h)


def _images(key, n):
    return jax.random.normal(key, (n, 7, 6, 2))


def _mlp_inputs(key, n):
    return jax.random.normal(key, (n, 5))


def _norm_inputs(key, n):
    k1, k2 = jax.random.split(key)
    return jax.random.randint(k1, (n, 3), 0, 7), jax.random.normal(k2, (n, 3, 4))


FAMILIES = {"mlp": (SeqMLP, _mlp_inputs), "cnn": (CNN, _images),
            "norm_embed": (NormEmbed, _norm_inputs)}


def loss_fn(model, batch):
    x, y = batch
    return cross_entropy(model(x), y)


def _batch(family, seed, n, repeated):
    inputs = FAMILIES[family][1]
    k1, k2 = jax.random.split(jax.random.key(seed))
    x = inputs(k1, 1 if repeated else n)
    y = jax.random.randint(k2, (1 if repeated else n,), 0, 3)
    if repeated:
        x = jax.tree.map(lambda a: jnp.repeat(a, n, axis=0), x)
        y = jnp.repeat(y, n)
    return x, y


def _reference(model, batch, snapshot=None):
    """Moments straight from the B per-example gradients of nnx.grad, two-pass in float64."""

    def per_example(m):
        graphdef, params, rest = nnx.split(m, nnx.Param, ...)

        def one(p, x, y):
            example = (jax.tree.map(lambda a: a[None], x), y[None])
            return loss_fn(nnx.merge(graphdef, p, rest), example)[0]

        return jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, *batch)

    g = [np.asarray(a, np.float64) for a in jax.tree.leaves(per_example(model))]
    mean = [a.mean(0) for a in g]
    var = [((a - m) ** 2).mean(0) for a, m in zip(g, mean, strict=True)]
    if snapshot is None:
        return mean, var
    h = [np.asarray(a, np.float64) for a in jax.tree.leaves(per_example(snapshot))]
    snap_mean = [a.mean(0) for a in h]
    snap_var = [((a - m) ** 2).mean(0) for a, m in zip(h, snap_mean, strict=True)]
    cov = [((a - m) * (b - n)).mean(0) for a, m, b, n in zip(g, mean, h, snap_mean, strict=True)]
    return mean, var, snap_mean, snap_var, cov


def _close(got, ref, scale):
    for a, r, s in zip(jax.tree.leaves(got), ref, scale, strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float64), r, rtol=0,
                                   atol=TOL * float(np.max(s)) + 1e-30)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@SETTINGS
@given(seed=st.integers(0, 2**16), n=st.sampled_from([1, 4]), repeated=st.booleans())
def test_every_backend_matches_per_example_gradients(family, seed, n, repeated):
    model = FAMILIES[family][0](nnx.Rngs(seed))
    batch = _batch(family, seed + 1, n, repeated)
    mean, var = _reference(model, batch)
    second = [m * m + v for m, v in zip(mean, var, strict=True)]
    first = [np.abs(m) for m in mean]
    for backend in ("auto", "vmap", "chunked"):
        got = flax_moments(model, loss_fn, batch, backend=backend, chunk_size=2)
        _close(got.mean, mean, first)
        _close(got.var, var, second)
        assert all(bool(jnp.all(v >= 0)) for v in jax.tree.leaves(got.var))
        if repeated or n == 1:
            # identical examples: no spread, up to the rounding of E[g^2] - mean^2
            for v, s in zip(jax.tree.leaves(got.var), second, strict=True):
                assert float(jnp.max(v)) <= 1e-5 * float(np.max(s)) + 1e-30
        expected_loss = float(jnp.mean(loss_fn(model, batch)))
        assert float(got.loss) == pytest.approx(expected_loss, rel=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@SETTINGS
@given(seed=st.integers(0, 2**16), n=st.sampled_from([1, 5]))
def test_control_variate_moments_match_per_example_gradients(family, seed, n):
    model = FAMILIES[family][0](nnx.Rngs(seed))
    snapshot = FAMILIES[family][0](nnx.Rngs(seed + 7))
    batch = _batch(family, seed + 1, n, False)
    mean, var, snap_mean, snap_var, cov = _reference(model, batch, snapshot)
    second = [m * m + v for m, v in zip(mean, var, strict=True)]
    snap_second = [m * m + v for m, v in zip(snap_mean, snap_var, strict=True)]
    cross = [np.sqrt(a * b) for a, b in zip(second, snap_second, strict=True)]
    for backend in ("auto", "vmap", "chunked"):
        got = flax_moments(model, loss_fn, batch, backend=backend, chunk_size=3,
                           snapshot=snapshot)
        _close(got.mean, mean, [np.abs(m) for m in mean])
        _close(got.var, var, second)
        _close(got.snap_mean, snap_mean, [np.abs(m) for m in snap_mean])
        _close(got.snap_var, snap_var, snap_second)
        _close(got.cov, cov, cross)


def test_plan_names_the_fast_layers_and_the_fallback_parameters():
    model = NormEmbed(nnx.Rngs(0))
    plan = fast_path_plan(model, loss_fn, _batch("norm_embed", 0, 3, False))
    assert plan.fast == ("mix", "out")
    assert plan.fallback == (("emb/embedding", "Embed"), ("norm/bias", "LayerNorm"),
                             ("norm/scale", "LayerNorm"))
    cnn = fast_path_plan(CNN(nnx.Rngs(0)), loss_fn, _batch("cnn", 0, 2, False))
    assert cnn == (("c1", "c2", "c3", "out"), ())


def test_a_layer_called_twice_falls_back_and_stays_exact():
    class Shared(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(3, 3, rngs=rngs)
            self.b = nnx.Linear(3, 3, rngs=rngs)

        def __call__(self, x):
            return self.b(jnp.tanh(self.a(jnp.tanh(self.a(x)))))

    model = Shared(nnx.Rngs(1))
    batch = (jax.random.normal(jax.random.key(2), (4, 3)), jnp.array([0, 1, 2, 1]))
    plan = fast_path_plan(model, loss_fn, batch)
    assert plan.fast == ("b",)
    assert [name for name, _ in plan.fallback] == ["a/bias", "a/kernel"]
    assert "called 2 times" in plan.fallback[0][1]
    mean, var = _reference(model, batch)
    got = flax_moments(model, loss_fn, batch)
    _close(got.mean, mean, [np.abs(m) for m in mean])
    _close(got.var, var, [m * m + v for m, v in zip(mean, var, strict=True)])


def test_backend_fast_refuses_models_with_fallback_parameters():
    model = NormEmbed(nnx.Rngs(0))
    with pytest.raises(SngradError, match="norm/scale"):
        flax_moments(model, loss_fn, _batch("norm_embed", 0, 3, False), backend="fast")
    with pytest.raises(SngradError, match="backend"):
        flax_moments(model, loss_fn, _batch("norm_embed", 0, 3, False), backend="dense")


def test_the_users_model_is_left_untouched():
    model = SeqMLP(nnx.Rngs(0))
    batch = _batch("mlp", 0, 3, False)
    before = model(batch[0])
    flax_moments(model, loss_fn, batch)
    assert model.inp.dot_general is None or model.inp.dot_general is jax.lax.dot_general
    np.testing.assert_array_equal(model(batch[0]), before)


@pytest.mark.parametrize("backend", ["auto", "fast", "vmap", "chunked"])
@pytest.mark.parametrize(("reduce", "received"), [
    (jnp.mean, "a scalar"),
    (lambda losses: losses[:, None], "shape (4, 1)"),
    (lambda losses: losses[:2], "shape (2,)"),
    (lambda losses: (losses, losses), "a tuple"),
])
def test_a_loss_that_is_not_one_per_example_is_one_line_naming_its_shape(backend, reduce,
                                                                        received):
    """A batch-mean loss gave the fast path wrong moments silently and the per-example
    backends an IndexError; a (B, 1) loss failed under vmap with a TypeError."""
    model, batch = SeqMLP(nnx.Rngs(0)), _batch("mlp", 0, 4, False)

    def bad_loss(model, batch):
        return reduce(loss_fn(model, batch))

    with pytest.raises(SngradError) as err:
        flax_moments(model, bad_loss, batch, backend=backend)
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(f"loss_fn returned {received}; expected the per-example losses, "
                           "shape (4,) for this batch of 4")
    with pytest.raises(SngradError, match=re.escape(f"loss_fn returned {received}")):
        fast_path_plan(model, bad_loss, batch)


def test_a_new_but_equal_loss_per_call_does_not_compile_again():
    """A loss written inline (a new lambda, a new partial) on every call used to recompile
    every call; one capturing a different object is a different program."""
    import functools

    from sngrad.moments import flax_nnx

    def inline():
        return lambda m, b: loss_fn(m, b)  # a new function object per call, the same code

    model, batch = SeqMLP(nnx.Rngs(0)), _batch("mlp", 0, 4, False)
    first = flax_moments(model, inline(), batch)
    flax_moments(model, functools.partial(loss_fn), batch)
    size = flax_nnx._moments_core._cache_size()
    for _ in range(3):
        again = flax_moments(model, inline(), batch)
        flax_moments(model, functools.partial(loss_fn), batch)
    assert flax_nnx._moments_core._cache_size() == size
    np.testing.assert_array_equal(jax.tree.leaves(first.var)[0], jax.tree.leaves(again.var)[0])

    def scaled(factor):
        return lambda m, b: factor * loss_fn(m, b)

    twice = flax_moments(model, scaled(jnp.float32(2.0)), batch)
    size = flax_nnx._moments_core._cache_size()
    thrice = flax_moments(model, scaled(jnp.float32(3.0)), batch)
    assert flax_nnx._moments_core._cache_size() > size  # a captured value is a new loss
    np.testing.assert_allclose(jax.tree.leaves(thrice.mean)[0],
                               1.5 * jax.tree.leaves(twice.mean)[0], rtol=1e-5)


class Stateful(nnx.Module):
    """Dropout and BatchNorm between two dense layers."""

    def __init__(self, rngs, dropout=True, norm=True):
        self.inp = nnx.Linear(5, 8, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs) if dropout else None
        self.norm = nnx.BatchNorm(8, rngs=rngs) if norm else None
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        h = self.inp(x)
        if self.drop is not None:
            h = self.drop(h)
        if self.norm is not None:
            h = self.norm(h)
        return self.out(h)


@pytest.mark.parametrize("backend", ["auto", "vmap"])
@pytest.mark.parametrize(("dropout", "norm", "named"), [
    (True, False, "drop (Dropout)"), (False, True, "norm (BatchNorm)"),
    (True, True, "drop (Dropout), norm (BatchNorm)"),
])
def test_dropout_or_batchnorm_in_training_mode_is_one_line_saying_call_eval(backend, dropout,
                                                                           norm, named):
    """They failed on every backend with flax's trace-level error and no word from sngrad;
    in eval mode the moments are those of vmap(grad), as for any model."""
    model = Stateful(nnx.Rngs(0), dropout, norm)
    x = jax.random.normal(jax.random.key(1), (4, 5))
    batch = (x, jnp.array([0, 1, 2, 0]))
    with pytest.raises(SngradError) as err:
        flax_moments(model, loss_fn, batch, backend=backend)
    line = str(err.value)
    assert "\n" not in line
    assert f"(layers in training mode: {named})" in line and "call model.eval()" in line
    with pytest.raises(SngradError, match=re.escape("call model.eval()")):
        fast_path_plan(model, loss_fn, batch)
    model.eval()
    got = flax_moments(model, loss_fn, batch, backend=backend)
    ref = flax_moments(model, loss_fn, batch, backend="vmap")
    for a, b in zip(jax.tree.leaves(got.var), jax.tree.leaves(ref.var), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


class Tied(nnx.Module):
    """An autoencoder whose decoder reads the encoder's kernel outside the encoder."""

    def __init__(self, rngs):
        self.enc = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        return jnp.tanh(self.enc(x)) @ self.enc.kernel[...].T


class TimeMajor(nnx.Module):
    """A dense layer on a time-major (T, B, d) view of a (B, T, d) batch: with T == B the
    layer's leading axis has the batch's length but is not the example axis."""

    def __init__(self, rngs):
        self.lin = nnx.Linear(3, 4, rngs=rngs)
        self.out = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        h = jnp.swapaxes(self.lin(jnp.swapaxes(x, 0, 1)), 0, 1)  # back to (B, T, 4)
        return self.out(jnp.tanh(h).mean(axis=1))


class Masked(nnx.Module):
    """A convolution whose kernel is masked inside the layer."""

    def __init__(self, rngs):
        mask = jnp.ones((3, 3, 1, 2)).at[0].set(0.0)
        self.conv = nnx.Conv(1, 2, kernel_size=(3, 3), mask=mask, rngs=rngs)
        self.out = nnx.Linear(2 * 6 * 6, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.conv(x)).reshape(x.shape[0], -1))


def _squared_error(model, batch):
    x, _ = batch
    return jnp.sum((model(x) - x) ** 2, axis=-1)


FAULTS = {
    "tied": (Tied, lambda key: jax.random.normal(key, (4, 5)), _squared_error, "enc"),
    "time_major": (TimeMajor, lambda key: jax.random.normal(key, (4, 4, 3)), loss_fn, "lin"),
    "masked": (Masked, lambda key: jax.random.normal(key, (4, 6, 6, 1)), loss_fn, "conv"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_layer_the_fast_path_gets_wrong_is_verified_off_it(fault, monkeypatch):
    """A tied kernel, a time-major input with T == B and a masked Conv passed the plan's shape
    checks and gave moments 55-97 % off with no error; the check against vmap(grad) on the
    first call now keeps such a layer off the fast path, with the reason, so the moments are
    exact; backend='fast' refuses."""
    make, inputs, loss, layer = FAULTS[fault]
    model = make(nnx.Rngs(0))
    k1, k2 = jax.random.split(jax.random.key(3))
    batch = (inputs(k1), jax.random.randint(k2, (4,), 0, 2))
    plan = fast_path_plan(model, loss, batch)
    assert layer not in plan.fast
    reasons = dict(plan.fallback)
    assert "differ from vmap(grad)" in reasons[f"{layer}/kernel"]
    got = flax_moments(model, loss, batch)
    ref = flax_moments(model, loss, batch, backend="vmap")
    for field in ("mean", "var"):
        for a, b in zip(jax.tree.leaves(getattr(got, field)),
                        jax.tree.leaves(getattr(ref, field)), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(SngradError, match="would fall back"):
        flax_moments(model, loss, batch, backend="fast")
    # without the check the same call is silently wrong: the fault is real
    from sngrad.moments import flax_nnx

    monkeypatch.setattr(flax_nnx, "_verified", lambda *args: ())
    unchecked = flax_moments(model, loss, batch)
    assert not all(np.allclose(a, b, rtol=1e-2, atol=1e-6)
                   for a, b in zip(jax.tree.leaves(unchecked.var), jax.tree.leaves(ref.var),
                                   strict=True))


def test_verification_leaves_exact_fast_layers_on_the_fast_path():
    model, batch = SeqMLP(nnx.Rngs(0)), _batch("mlp", 0, 4, False)
    assert fast_path_plan(model, loss_fn, batch).fallback == ()


def test_verification_inside_the_users_jit_checks_stand_ins_of_the_same_shapes():
    """Called inside jit the values are traced; the check runs on random stand-ins of the same
    shapes, which show a structural fault as well."""
    model = Tied(nnx.Rngs(1))
    graphdef, state = nnx.split(model)
    x = jax.random.normal(jax.random.key(5), (4, 5))

    @jax.jit
    def moments(state, x):
        return flax_moments(nnx.merge(graphdef, state), _squared_error, (x, x))

    got = moments(state, x)
    ref = flax_moments(model, _squared_error, (x, x), backend="vmap")
    for a, b in zip(jax.tree.leaves(got.var), jax.tree.leaves(ref.var), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)



def _reference_norms(model, batch, loss=None):
    """Per-example squared norms of each parameter from nnx.grad per example, in float64."""
    loss = loss or loss_fn
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def one(p, example):
        example = jax.tree.map(lambda a: a[None], example)
        return loss(nnx.merge(graphdef, p, rest), example)[0]

    grads = jax.vmap(jax.grad(one), in_axes=(None, 0))(params, batch)
    return [np.sum(np.asarray(g, np.float64).reshape(g.shape[0], -1) ** 2, axis=1)
            for g in jax.tree.leaves(grads)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("repeated", [False, True])
def test_per_example_gradient_norms_match_per_example_gradients(family, repeated):
    """Every family (dense on (B, features) and on sequences, strided and grouped
    convolutions, LayerNorm and Embed through the fallback), distinct and repeated examples."""
    model = FAMILIES[family][0](nnx.Rngs(0))
    batch = _batch(family, 2, 5, repeated)
    got = jax.tree.leaves(flax_grad_norms(model, loss_fn, batch, chunk_size=2))
    ref = _reference_norms(model, batch)
    assert len(got) == len(ref)
    for a, b in zip(got, ref, strict=True):
        assert a.shape == (5,)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7 * max(b.max(), 1e-12))


def test_gradient_norms_of_a_verified_off_layer_are_exact():
    model = Tied(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(4), (4, 5))
    got = jax.tree.leaves(flax_grad_norms(model, _squared_error, (x, x)))
    for a, b in zip(got, _reference_norms(model, (x, x), _squared_error), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9)
