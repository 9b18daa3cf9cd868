"""The engine trains a convolutional network as it trains the MLP: every step kind, exact
moments from the flax fast path, the same seeding, checkpoints and resume."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import spec_dict, toy_splits

from sngrad import architecture, convnet
from sngrad.errors import SngradError
from sngrad.models import cross_entropy
from sngrad.names import parse_run
from sngrad.spec import parse_spec
from sngrad.train import engine, network
from sngrad.train.engine import TRAIN_MODE, RunConfig, run_sweep

CNN = {"kind": "cnn", "channels": [3], "kernel": 3, "dense": [6]}
ARCH = architecture.build({**CNN, "init_seed": 0}, (8, 8), 3)


def digits_like(n_train=64):
    """Toy three-class splits of 64 features named after the 8 x 8 digits."""
    return dataclasses.replace(toy_splits(n_train=n_train, dim=64, n_eval=24), name="digits")


def cnn_spec(**over):
    raw = spec_dict(**over)
    del raw["hidden"]
    return parse_spec({**raw, "model": dict(CNN)})


def per_example_moments(params, x, y):
    """Mean and population variance of the per-example gradients by vmap(grad): the
    reference the fast path must match."""

    def loss(p, xj, yj):
        return cross_entropy(convnet.apply(ARCH, p, xj), yj)

    grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(params, x, y)
    mean = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
    var = jax.tree.map(lambda g, m: jnp.mean((g - m) ** 2, axis=0), grads, mean)
    return mean, var


def test_the_architecture_of_deepobs_fmnist_2c2d_has_its_parameter_count():
    arch = architecture.build({"kind": "fmnist_2c2d", "init_seed": 0}, (28, 28), 10)
    # conv 5x5x1x32 + 32, conv 5x5x32x64 + 64, dense 7*7*64 x 1024 + 1024, dense 1024 x 10 + 10
    assert arch.parameter_count() == 832 + 51264 + 3212288 + 10250 == 3274634
    assert arch.describe() == "28x28x1 conv5x5x32 pool2 conv5x5x64 pool2 dense1024 dense10"
    with pytest.raises(SngradError, match="fmnist_2c2d needs 28x28 one-channel images"):
        architecture.build({"kind": "fmnist_2c2d", "init_seed": 0}, (8, 8), 10)
    with pytest.raises(SngradError, match="pooled blocks shrink a 8x8x1 image"):
        architecture.build({**CNN, "channels": [2, 2, 2, 2], "init_seed": 0}, (8, 8), 10)


def test_a_channels_first_image_is_read_as_height_width_channels():
    arch = architecture.build({**CNN, "init_seed": 0}, (3, 4, 6), 2)
    assert arch.input_shape == (4, 6, 3)
    params = convnet.init(jax.random.PRNGKey(0), arch)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 3 * 4 * 6))
    image = jnp.moveaxis(x.reshape(2, 3, 4, 6), 1, -1)  # (B, H, W, C)
    kernel, bias = params[0]
    conv = jax.lax.conv_general_dilated(image, kernel, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    model = convnet.module(arch, params)
    assert np.allclose(model.layers[0](image), conv + bias, atol=1e-5)


def test_the_spec_of_a_cnn_round_trips_and_names_a_wrong_key():
    spec = cnn_spec()
    assert spec.hidden == () and spec.model == CNN
    assert parse_spec(spec.to_json()) == spec
    raw = {k: v for k, v in spec_dict().items() if k != "hidden"}
    with pytest.raises(SngradError, match=r"model\.hidden is not a key of a cnn model"):
        parse_spec({**raw, "model": {**CNN, "hidden": [3]}})
    with pytest.raises(SngradError, match="an MLP is given as 'hidden'"):
        parse_spec({**raw, "model": {"kind": "mlp", "hidden": [3]}})


@pytest.mark.parametrize("backend", ["dense", "vmap", "chunked"])
def test_the_steps_moments_of_a_cnn_are_the_exact_per_example_moments(backend):
    params = convnet.init(jax.random.PRNGKey(0), ARCH)
    splits = digits_like()
    x, y = jnp.asarray(splits.x_train[:16]), jnp.asarray(splits.y_train[:16])
    loss, mean, var = jax.jit(network.moments(ARCH, backend))(params, x, y)
    ref_mean, ref_var = per_example_moments(params, x, y)
    assert np.isclose(loss, jnp.mean(cross_entropy(convnet.apply(ARCH, params, x), y)))
    for got, ref in zip(jax.tree.leaves((mean, var)), jax.tree.leaves((ref_mean, ref_var)),
                        strict=True):
        scale = float(jnp.max(jnp.abs(ref))) + 1e-12
        assert float(jnp.max(jnp.abs(got - ref))) <= 1e-4 * scale
    _, grad = network.loss_and_grad(ARCH)(params, x, y)
    for g, m in zip(jax.tree.leaves(grad), jax.tree.leaves(mean), strict=True):
        assert np.allclose(g, m, atol=1e-6)


def test_the_control_variate_moments_of_a_cnn_match_two_vmapped_passes():
    params = convnet.init(jax.random.PRNGKey(0), ARCH)
    snap = convnet.init(jax.random.PRNGKey(1), ARCH)
    splits = digits_like()
    x, y = jnp.asarray(splits.x_train[:16]), jnp.asarray(splits.y_train[:16])
    cv = jax.jit(network.cv_moments(ARCH, "dense"))(params, snap, x, y)
    mean, var = per_example_moments(params, x, y)
    snap_mean, snap_var = per_example_moments(snap, x, y)
    for got, ref in [(cv.mean, mean), (cv.var, var), (cv.snap_mean, snap_mean),
                     (cv.snap_var, snap_var)]:
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
            assert float(jnp.max(jnp.abs(a - b))) <= 1e-4 * (float(jnp.max(jnp.abs(b))) + 1e-12)
    # Cauchy-Schwarz holds for the covariance, as for the MLP's cores
    for c, v, s in zip(jax.tree.leaves(cv.cov), jax.tree.leaves(cv.var),
                       jax.tree.leaves(cv.snap_var), strict=True):
        assert bool(jnp.all(jnp.abs(c) <= jnp.sqrt(v * s) * (1 + 1e-6) + 1e-12))


@pytest.mark.parametrize("name", ["sgd", "sgd+sngrad1", "sgd+sngrad2@0.05", "adam", "sgd+cv",
                                  "sgd+svrg"])
def test_every_step_kind_trains_a_cnn_in_one_k_run_program(name):
    run = parse_run(name)
    splits = digits_like()
    momentum = 0.9 if run.has_momentum else None
    alpha = run.fixed_alpha or (1.0 if run.variant else None)
    configs = [RunConfig(0.05, momentum, alpha, seed) for seed in (1, 2)]
    result = run_sweep(splits, run, 16, cnn_spec(epochs=2), configs, TRAIN_MODE)
    records = result.records
    assert records["train_loss"].shape == (2, 2)
    assert np.all(np.isfinite(records["train_loss"]))
    assert np.all(np.isfinite(records["val_accuracy"]))
    layers = len(ARCH.parametrised)
    assert records["factor_mean"].shape == (2, 2, layers)
    shrinks = run.variant is not None
    assert np.all(np.isfinite(records["factor_mean"])) == shrinks
    assert np.all(np.isfinite(records["variance_ratio"])) == (run.step_kind in ("cv", "svrg"))
    # the two seeds draw different weights and batches
    assert records["train_loss"][0, 0] != records["train_loss"][0, 1]


def test_optimizers_start_a_cnn_seed_from_the_same_weights():
    keys = [engine.run_keys(RunConfig(0.1, None, None, seed))[0] for seed in (1, 1, 2)]
    first, again, other = (jax.tree.leaves(engine.initial_parameters([k], ARCH))
                           for k in keys)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])


def test_a_resumed_cnn_sweep_equals_the_uninterrupted_one(tmp_path):
    run = parse_run("sgd+sngrad1")
    splits = digits_like()
    configs = [RunConfig(0.05, None, 1.0, seed) for seed in (1, 2)]
    spec = cnn_spec(epochs=3, checkpoint_every=1)
    whole = run_sweep(splits, run, 16, spec, configs, TRAIN_MODE)
    # a job killed after its second epoch leaves that epoch's checkpoint
    two = cnn_spec(epochs=2, checkpoint_every=1)
    run_sweep(splits, run, 16, two, configs, TRAIN_MODE, checkpoint_dir=tmp_path,
              fingerprint="f")
    resumed = run_sweep(splits, run, 16, spec, configs, TRAIN_MODE, checkpoint_dir=tmp_path,
                        fingerprint="f")
    assert resumed.resumed_from == 1
    for key in ("train_loss", "val_loss", "test_accuracy", "factor_mean"):
        assert np.array_equal(resumed.records[key], whole.records[key], equal_nan=True)


def test_the_reference_run_of_a_cnn_spec_is_refused_before_any_work(tmp_path):
    from sngrad.train.commands import reference

    with pytest.raises(SngradError, match="measures MLPs only; this spec trains a cnn model"):
        reference(tmp_path / "missing.npz", cnn_spec(), tmp_path / "best.json", 16,
                  tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kernel, shape", [(3, (7, 5, 2)), (5, (6, 6, 3)), (1, (4, 3, 1))])
def test_the_patch_product_is_the_convolution(kernel, shape):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, *shape))
    w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, shape[-1], 4))
    numbers = ("NHWC", "HWIO", "NHWC")
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=numbers)
    got = convnet.patch_product(x, w, (1, 1), "SAME", dimension_numbers=numbers)
    assert got.shape == ref.shape
    assert np.allclose(got, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="feature_group_count=1"):
        convnet.patch_product(x, w, (1, 1), "SAME", dimension_numbers=numbers,
                              feature_group_count=2)
