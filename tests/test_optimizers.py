"""Optimizer registry: names, building and running every optimizer, M-SVAG, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sngrad.errors import SngradError
from sngrad.names import OPTIMIZERS, parse_optimizer
from sngrad.optimizers import (
    build_optimizer,
    has_momentum,
    msvag,
    needs_snapshot,
    needs_variance,
    svag_factor,
)


def test_what_each_optimizer_is_given():
    assert needs_variance("sgd+sngrad3") and needs_variance("svag") and not needs_variance("sgd")
    assert not needs_variance("msvag") and not needs_variance("sgd+cv")
    assert needs_snapshot("sgd+svrg") and not needs_snapshot("sgd+sngrad1")
    assert has_momentum("momentum") and has_momentum("momentum+sngrad1")
    assert not has_momentum("sgd") and not has_momentum("adam+sngrad2")


# Step sizes that make every base descend on the quadratic below within 30 steps.
LEARNING_RATES = {
    "sgd": 0.1,
    "momentum": 0.05,
    "adam": 0.05,
    "adabelief": 0.05,
    "msvag": 0.1,
    "svag": 0.1,
}
CURVATURE = jnp.array([1.0, 2.0, 0.5])
# Per-example offsets with zero mean: per-example gradients A (x - c_j) have mean A x and
# variance A^2 * 0.01, small enough that no sngrad variant freezes a coordinate at alpha = 1.
OFFSETS = 0.1 * jnp.array(
    [[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]]
)
START = jnp.array([1.0, -1.0, 2.0])


def _quadratic(x):
    return 0.5 * jnp.sum(CURVATURE * x**2)


def _descend(name, steps=30):
    spec = parse_optimizer(name)
    opt = build_optimizer(name, LEARNING_RATES[spec.base],
                          batch_size=4 if spec.base == "svag" else None)

    @jax.jit
    def run(x):
        def step(carry, _):
            x, state = carry
            per_example = CURVATURE * (x - OFFSETS)
            mean, var = per_example.mean(0), per_example.var(0)
            extra = {}
            if needs_variance(name):
                extra["grad_var"] = var
            if needs_snapshot(name):
                # snapshot at the start: h_j = A (x0 - c_j), anchor = A x0
                snap = CURVATURE * (START - OFFSETS)
                cov = ((per_example - mean) * (snap - snap.mean(0))).mean(0)
                extra.update(snap_mean=snap.mean(0), snap_var=snap.var(0), cov=cov,
                             anchor=CURVATURE * START)
            updates, state = opt.update(mean, state, x, **extra)
            return (optax.apply_updates(x, updates), state), None

        (x, _), _ = jax.lax.scan(step, (x, opt.init(x)), None, length=steps)
        return x

    return run(START)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds_and_descends_a_quadratic(name):
    x = _descend(name)
    assert np.isfinite(np.asarray(x)).all()
    assert float(_quadratic(x)) < 0.75 * float(_quadratic(START))


def test_svag_scales_the_mean_by_its_factor():
    mean = jnp.array([1.0, 0.1, 0.0, 2.0])
    var = jnp.array([4.0, 4.0, 1.0, 0.0])
    opt = build_optimizer("svag", 1.0, batch_size=8)
    updates, _ = opt.update(mean, opt.init(mean), mean, grad_var=var)
    # f = mu^2 / (mu^2 + var / B): 1 / (1 + 0.5), 0.01 / (0.01 + 0.5), 0 (mu = 0), 1 (var = 0)
    expected = -mean * np.array([1 / 1.5, 0.01 / 0.51, 1.0, 1.0])
    np.testing.assert_allclose(np.asarray(updates), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(svag_factor(mean, var, 8)),
                               [1 / 1.5, 0.01 / 0.51, 0.0, 1.0], rtol=1e-6)
    with pytest.raises(SngradError, match="svag needs the batch size"):
        build_optimizer("svag", 1.0)
    with pytest.raises(SngradError, match="batch_size is only used by svag"):
        build_optimizer("sgd", 1.0, batch_size=8)


def test_svrg_applies_the_snapshot_correction_with_coefficient_one():
    mean, snap_mean, anchor = jnp.array([1.0, 2.0]), jnp.array([0.5, 1.0]), jnp.array([0.2, 0.4])
    opt = build_optimizer("sgd+svrg", 0.1)
    updates, _ = opt.update(mean, opt.init(mean), mean, snap_mean=snap_mean,
                            snap_var=jnp.ones(2), cov=jnp.ones(2), anchor=anchor)
    np.testing.assert_allclose(np.asarray(updates), -0.1 * (mean - (snap_mean - anchor)),
                               rtol=1e-6)


def test_momentum_follows_its_update_rule():
    g1, g2 = jnp.array([1.0, -2.0]), jnp.array([0.5, 4.0])
    params = jnp.zeros(2)
    lr, m = 0.1, 0.5

    def two_updates(opt):
        state = opt.init(params)
        u1, state = opt.update(g1, state, params)
        u2, _ = opt.update(g2, state, params)
        return np.asarray(u1), np.asarray(u2)

    heavy = two_updates(build_optimizer("momentum", lr, momentum=m))
    np.testing.assert_allclose(heavy[0], -lr * g1, rtol=1e-6)
    np.testing.assert_allclose(heavy[1], -lr * (m * g1 + g2), rtol=1e-6)

    default = two_updates(build_optimizer("momentum", lr))
    explicit = two_updates(build_optimizer("momentum", lr, momentum=0.9))
    np.testing.assert_array_equal(default[1], explicit[1])


def test_hyperparameters_may_be_traced_for_vmapped_sweeps():
    """The training engine may vmap over (lr, momentum, alpha): tracers skip the checks."""

    def first_update(lr, momentum, alpha):
        opt = build_optimizer("momentum+sngrad3", lr, momentum=momentum, alpha=alpha)
        x = jnp.ones(2)
        updates, _ = opt.update(jnp.ones(2), opt.init(x), x, grad_var=jnp.full(2, 0.25))
        return updates

    lrs, moms, alphas = jnp.array([0.1, 0.2]), jnp.array([0.0, 0.5]), jnp.array([0.0, 1.0])
    updates = jax.vmap(first_update)(lrs, moms, alphas)
    # first heavy-ball step = -lr * (1 - min(alpha * 0.5, 1))
    np.testing.assert_allclose(np.asarray(updates[:, 0]), [-0.1, -0.2 * 0.5], rtol=1e-6)


def _msvag_reference(grads, lr, beta):
    """M-SVAG in float64 NumPy, written from the weighted-sample view of the EMAs.

    After t steps the bias-corrected EMAs are weighted means with weights
    w_i = (1 - beta) beta^(t - i) / (1 - beta^t); rho = sum w_i^2 and the unbiased weighted
    variance is (v^ - m^2) / (1 - rho). Summing explicitly checks the closed-form rho.
    """
    grads = np.asarray(grads, np.float64)
    updates = []
    for t in range(1, len(grads) + 1):
        w = (1 - beta) * beta ** (t - 1 - np.arange(t)) / (1 - beta**t)
        m = w @ grads[:t]
        v = w @ grads[:t] ** 2
        rho = np.sum(w**2)
        if t == 1:
            gamma = np.ones_like(m)  # one sample: no variance estimate, documented gamma = 1
        else:
            s = (v - m**2) / (1 - rho)
            den = m**2 + rho * s
            safe = np.where(den > 0, den, 1.0)
            gamma = np.clip(np.where(den > 0, m**2 / safe, 1.0), 0, 1)
        updates.append(-lr * gamma * m)
    return np.array(updates)


def test_msvag_matches_a_float64_numpy_transcription():
    rng = np.random.default_rng(3)
    steps, lr, beta = 8, 0.3, 0.8
    grads = rng.normal(loc=[0.0, 1.0, -0.2, 0.0, 2.0], scale=[1.0, 0.5, 1.0, 0.0, 0.0], size=(8, 5))
    opt = msvag(lr, beta=beta)
    step = jax.jit(opt.update)
    state = opt.init(jnp.zeros(5))
    ours = []
    for g in grads:
        update, state = step(jnp.float32(g), state)
        ours.append(np.asarray(update))
    expected = _msvag_reference(grads, lr, beta)
    np.testing.assert_allclose(ours[0], -lr * grads[0], rtol=1e-6)  # t = 1: plain step
    # float32 against float64; (v - m^2) cancels a few digits, hence 1e-4 and not 1e-6.
    np.testing.assert_allclose(np.array(ours), expected, rtol=1e-4, atol=1e-6)
    assert (np.array(ours)[:, 3] == 0).all()  # m = s = 0: a finite zero step
    np.testing.assert_allclose(np.array(ours)[:, 4], -lr * 2.0, rtol=1e-5)  # s = 0: gamma = 1
    assert int(state[0].count) == steps


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("sgdd", {}, "unknown optimizer 'sgdd'; valid: sgd, momentum, adam"),
        ("adam+sngrad4", {}, "unknown optimizer 'adam\\+sngrad4'"),
        ("msvag+sngrad2", {}, "unknown optimizer"),
        ("adam+cv", {}, "unknown optimizer"),
        (3, {}, "must be a string"),
        ("sgd", {"learning_rate": 0.0}, "learning_rate must be finite and > 0"),
        ("adam", {"learning_rate": -1e-3}, "learning_rate must be finite and > 0"),
        ("sgd+sngrad1", {"learning_rate": float("inf")}, "learning_rate must be finite"),
        ("msvag", {"learning_rate": float("nan")}, "learning_rate must be finite"),
        ("sgd", {"learning_rate": "fast"}, "learning_rate must be a real number"),
        ("adam", {"momentum": 0.9}, "momentum is only used by momentum"),
        ("momentum", {"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ("sgd", {"alpha": 1.0}, "alpha is only used by \\+sngrad optimizers"),
        ("sgd+sngrad1", {"alpha": 0.0}, "alpha for variant I must be > 0"),
        ("adam+sngrad2", {"alpha": -2.0}, "alpha for variant II must be > 0"),
        ("sgd+sngrad3", {"alpha": -1.0}, "alpha for variant III must be >= 0"),
    ],
)
def test_bad_names_and_hyperparameters_are_rejected(name, kwargs, match):
    kwargs = {"learning_rate": 0.1, **kwargs}
    lr = kwargs.pop("learning_rate")
    with pytest.raises(SngradError, match=match):
        build_optimizer(name, lr, **kwargs)


def test_msvag_rejects_bad_beta():
    with pytest.raises(SngradError, match=r"beta must be in \(0, 1\)"):
        msvag(0.1, beta=1.0)
