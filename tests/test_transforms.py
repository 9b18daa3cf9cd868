"""Noise-informed transforms: formulas, edge cases, properties and the optax chain."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sngrad.errors import SngradError
from sngrad.transforms import DEFAULT_ALPHA, VARIANTS, noise_informed, scale_factor

# Hand-computed cases (alpha = 2): mu, sigma^2, then the factor of I, II, III.
#   I:   min(1 / (2 sigma), 1)   II: min(mu^2 / (2 sigma^2), 1)   III: 1 - min(2 sigma, 1)
HAND_CASES = [
    # mu,   var,    I,     II,     III       what it exercises
    (3.0, 0.0, 1.0, 1.0, 1.0),  # sigma = 0, mu != 0
    (0.0, 0.0, 1.0, 1.0, 1.0),  # mu = sigma = 0 (II: documented choice 1)
    (0.0, 4.0, 0.25, 0.0, 0.0),  # mu = 0 with noise
    (-1.5, 0.0625, 1.0, 1.0, 0.5),  # sigma = 0.25: I and II inactive, III linear
    (2.0, 1.0, 0.5, 1.0, 0.0),  # sigma = 1: I active, II at SNR^2 = 4 > 2, III frozen
    (1.0, 1.0, 0.5, 0.5, 0.0),  # II active: 1 / 2
    (-0.5, 0.25, 1.0, 0.5, 0.0),  # 2 sigma = 1 exactly: I at the kink
]
VARIANT_COLUMN = {"I": 2, "II": 3, "III": 4}


@pytest.mark.parametrize("variant", VARIANTS)
def test_factor_matches_hand_computed_values(variant):
    cases = np.array(HAND_CASES)
    mu, var, expected = cases[:, 0], cases[:, 1], cases[:, VARIANT_COLUMN[variant]]
    factor = scale_factor(variant, jnp.asarray(mu), jnp.asarray(var), 2.0)
    np.testing.assert_allclose(np.asarray(factor), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_factor_matches_float64_formula_on_random_inputs(variant):
    rng = np.random.default_rng(0)
    mu = rng.normal(size=200) * 10.0 ** rng.uniform(-3, 3, size=200)
    sigma = np.abs(rng.normal(size=200)) * 10.0 ** rng.uniform(-3, 3, size=200)
    alpha = 0.7
    reference = {
        "I": np.minimum(1 / (alpha * sigma), 1),
        "II": np.minimum(mu**2 / (alpha * sigma**2), 1),
        "III": 1 - np.minimum(alpha * sigma, 1),
    }[variant]
    factor = scale_factor(variant, jnp.float32(mu), jnp.float32(sigma**2), alpha)
    # float32 inputs: a few ulps of rounding in sigma^2, sqrt and the division.
    np.testing.assert_allclose(np.asarray(factor), reference, rtol=2e-6, atol=1e-6)


def test_negative_variance_round_off_reads_as_zero():
    for variant in VARIANTS:
        factor = scale_factor(variant, jnp.array([1.0, 0.0]), jnp.array([-1e-9, -1e-9]), 1.0)
        np.testing.assert_array_equal(np.asarray(factor), [1.0, 1.0])


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_are_finite_at_zero_variance(variant):
    mu = jnp.array([0.0, 1.0, -2.0, 0.0])
    var = jnp.array([0.0, 0.0, 0.0, 1e-30])
    d_mu, d_var = jax.grad(lambda m, v: scale_factor(variant, m, v, 1.0).sum(), (0, 1))(mu, var)
    assert np.isfinite(np.asarray(d_mu)).all() and np.isfinite(np.asarray(d_var)).all()
    # Also through the transformed gradient mu * f, which is what a meta-gradient would see.
    d_mu, d_var = jax.grad(lambda m, v: (m * scale_factor(variant, m, v, 1.0)).sum(), (0, 1))(
        mu, var
    )
    assert np.isfinite(np.asarray(d_mu)).all() and np.isfinite(np.asarray(d_var)).all()
    np.testing.assert_array_equal(np.asarray(d_mu)[:3], [1.0, 1.0, 1.0])  # f = 1 locally


def _values_and_grads(variant):
    def run(mu, var, alpha):
        factor = scale_factor(variant, mu, var, alpha)
        grads = jax.grad(lambda m, v: (m * scale_factor(variant, m, v, alpha)).sum(), (0, 1))
        return factor, grads(mu, var)

    return jax.jit(run)  # alpha is traced: one compilation per variant for all examples


_COMPILED = {variant: _values_and_grads(variant) for variant in VARIANTS}

# Every finite float32, including 0, subnormals and the largest magnitudes.
# Subnormals are kept on purpose: XLA flushes them to zero, and no assertion below compares an
# output exactly with a subnormal input (checked for the flush hazard of issue 24).
_F32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
_VEC = hnp.arrays(np.float32, 6, elements=_F32)
_VAR = hnp.arrays(np.float32, 6, elements=st.floats(min_value=0, width=32, allow_infinity=False))
_ALPHA = st.one_of(st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e30]), st.floats(1e-6, 1e6))


_TINY = np.full(6, np.finfo(np.float32).tiny, np.float32)


@settings(max_examples=60, deadline=None)
@given(variant=st.sampled_from(VARIANTS), mu=_VEC, var=_VAR, alpha=_ALPHA)
# Found by Hypothesis: with mu = var = the smallest normal float32 and a tiny alpha, the slope of
# variant II's mu / s met an underflowed cotangent (0 * inf = NaN in d var).
@example(variant="II", mu=_TINY, var=_TINY, alpha=1e-30)
@example(variant="II", mu=_TINY, var=_TINY, alpha=1e-6)
def test_output_is_finite_bounded_and_differentiable(variant, mu, var, alpha):
    factor, (d_mu, d_var) = _COMPILED[variant](mu, var, np.float32(alpha))
    factor = np.asarray(factor)
    assert np.isfinite(factor).all()
    assert ((factor >= 0) & (factor <= 1)).all()
    out = mu * factor
    assert np.isfinite(out).all()
    assert (np.abs(out) <= np.abs(mu)).all()
    # No NaN in the backward pass anywhere (infinite slopes of the exact maths would be
    # overflow, not NaN, but the guarded branches must not produce NaN from 0 / 0 or 0 * inf).
    assert not np.isnan(np.asarray(d_mu)).any()
    assert not np.isnan(np.asarray(d_var)).any()


def test_variant_three_accepts_alpha_zero_and_is_the_identity():
    mu = jnp.array([1.0, -3.0, 0.0])
    factor = scale_factor("III", mu, jnp.array([0.0, 1e6, 5.0]), 0.0)
    np.testing.assert_array_equal(np.asarray(factor), [1.0, 1.0, 1.0])


def _least_squares_problem():
    """Per-example gradients of 0.5 (x . w - y)^2 on 8 fixed examples."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
    y = jnp.asarray(rng.normal(size=8), jnp.float32)

    def per_example_grads(params):
        def loss(p, xi, yi):
            return 0.5 * (xi @ p["w"] + p["b"] - yi) ** 2

        return jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(params, x, y)

    def stats(params):
        grads = per_example_grads(params)
        return jax.tree.map(lambda g: g.mean(0), grads), jax.tree.map(lambda g: g.var(0), grads)

    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    return params, stats


def _run(opt, params, stats, steps, use_var):
    @jax.jit
    def step(params, state):
        mean, var = stats(params)
        extra = {"grad_var": var} if use_var else {}
        updates, state = opt.update(mean, state, params, **extra)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    trajectory = []
    for _ in range(steps):
        params, state = step(params, state)
        trajectory.append(params)
    return trajectory


def test_variant_three_with_alpha_zero_is_plain_sgd_step_for_step():
    params, stats = _least_squares_problem()
    chained = _run(optax.chain(noise_informed("III", 0.0), optax.sgd(0.1)), params, stats, 5, True)
    plain = _run(optax.sgd(0.1), params, stats, 5, False)
    for ours, reference in zip(chained, plain, strict=True):
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(plain[0]["w"]), np.asarray(plain[-1]["w"]))


def test_variant_one_shrinks_under_noise_and_is_sgd_without_it():
    mean = {"w": jnp.array([0.5, -2.0, 1.0])}
    params = {"w": jnp.zeros(3)}
    opt = optax.chain(noise_informed("I", 1.0), optax.sgd(0.1))
    state = opt.init(params)
    sgd_step, _ = optax.sgd(0.1).update(mean, optax.sgd(0.1).init(params), params)

    quiet, _ = opt.update(mean, state, params, grad_var={"w": jnp.full(3, 1e-12)})
    np.testing.assert_array_equal(np.asarray(quiet["w"]), np.asarray(sgd_step["w"]))

    # sigma = 100: the step is 1 / (alpha sigma) = 1 / 100 of the SGD step.
    noisy, _ = opt.update(mean, state, params, grad_var={"w": jnp.full(3, 1e4)})
    np.testing.assert_allclose(np.asarray(noisy["w"]), np.asarray(sgd_step["w"]) / 100, rtol=1e-6)


def test_chain_with_sgd_in_a_jitted_step():
    opt = optax.chain(noise_informed("II", alpha=1.0), optax.sgd(0.1))
    params = {"a": jnp.array([1.0, 1.0]), "b": jnp.array(2.0)}
    mean = {"a": jnp.array([1.0, 0.5]), "b": jnp.array(-3.0)}
    var = {"a": jnp.array([0.25, 1.0]), "b": jnp.array(0.0)}

    @jax.jit
    def step(params, state, mean, var):
        updates, state = opt.update(mean, state, params, grad_var=var)
        return optax.apply_updates(params, updates), state

    new, _ = step(params, opt.init(params), mean, var)
    # a: SNR^2 = 4 (factor 1) and 0.25 (factor 0.25 -> step 0.1 * 0.5 * 0.25); b: sigma = 0.
    np.testing.assert_allclose(np.asarray(new["a"]), [0.9, 1.0 - 0.0125], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new["b"]), 2.3, rtol=1e-6)


def test_default_alpha_is_valid_for_every_variant():
    assert set(DEFAULT_ALPHA) == set(VARIANTS)
    for variant, alpha in DEFAULT_ALPHA.items():
        noise_informed(variant, alpha)


@pytest.mark.parametrize(
    ("variant", "alpha", "match"),
    [
        ("IV", 1.0, "unknown sngrad variant 'IV'; valid: I, II, III"),
        ("sngrad1", 1.0, "valid: I, II, III"),
        ("I", 0.0, "must be > 0"),
        ("II", -1.0, "must be > 0"),
        ("III", -0.1, "must be >= 0"),
        ("I", float("nan"), "must be finite"),
        ("III", float("inf"), "must be finite"),
        ("I", "big", "must be a real number"),
    ],
)
def test_bad_variant_or_alpha_is_rejected(variant, alpha, match):
    with pytest.raises(SngradError, match=match):
        noise_informed(variant, alpha)
    with pytest.raises(SngradError, match=match):
        scale_factor(variant, jnp.ones(2), jnp.ones(2), alpha)


def test_missing_or_mismatched_variance_is_rejected():
    opt = optax.chain(noise_informed("I", 1.0), optax.sgd(0.1))
    params = {"w": jnp.zeros(2)}
    state = opt.init(params)
    with pytest.raises(SngradError, match="grad_var"):
        opt.update({"w": jnp.ones(2)}, state, params)
    with pytest.raises(SngradError, match="same pytree structure"):
        opt.update({"w": jnp.ones(2)}, state, params, grad_var={"v": jnp.ones(2)})


def test_variant_ii_has_no_nan_gradient_at_zero_mean_and_tiny_noise():
    # found by hypothesis: mu = 0 with sqrt(alpha) sigma ~ 1e-24 made d/dvar 0 * inf = NaN
    grad = jax.grad(lambda v: scale_factor("II", jnp.zeros(3), v, 1e-30).sum())
    assert np.isfinite(np.asarray(grad(jnp.full(3, 5.8753245e-18, jnp.float32)))).all()
