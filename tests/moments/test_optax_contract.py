"""noise_informed and control_variate as optax citizens: extra arguments through chains,
one compilation for many steps, dtypes kept, inject_hyperparams, gradient accumulation
(accumulate_moments vs optax.MultiSteps) and the optax.experimental.aggregating adapter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.experimental import aggregating

from sngrad.errors import SngradError
from sngrad.moments import accumulate_moments, from_aggregating
from sngrad.transforms import control_variate, noise_informed, scale_factor


def _tree(key, dtype=jnp.float32):
    k1, k2 = jax.random.split(key)
    return {"w": jax.random.normal(k1, (3, 2)).astype(dtype),
            "b": jax.random.normal(k2, (2,)).astype(dtype)}


def _cv_args(key, dtype=jnp.float32):
    ks = jax.random.split(key, 4)
    snap_mean, anchor, cov = (_tree(k, dtype) for k in ks[:3])
    snap_var = jax.tree.map(lambda a: jnp.abs(a) + 0.5, _tree(ks[3], dtype))
    return {"snap_mean": snap_mean, "snap_var": snap_var, "cov": cov, "anchor": anchor}


def test_extra_args_reach_the_transform_through_a_chain_and_unknown_ones_are_ignored():
    mean, var = _tree(jax.random.key(0)), jax.tree.map(jnp.abs, _tree(jax.random.key(1)))
    opt = optax.chain(noise_informed("I", 2.0), optax.sgd(1.0))
    updates, _ = opt.update(mean, opt.init(mean), mean, grad_var=var, unrelated=3)
    expected = jax.tree.map(lambda m, v: -m * scale_factor("I", m, v, 2.0), mean, var)
    jax.tree.map(np.testing.assert_array_equal, updates, expected)

    cv = optax.chain(control_variate(1.0), optax.sgd(1.0))
    args = _cv_args(jax.random.key(2))
    updates, _ = cv.update(mean, cv.init(mean), mean, unrelated=3, **args)
    expected = jax.tree.map(lambda m, s, a: -(m - (s - a)), mean, args["snap_mean"],
                            args["anchor"])
    jax.tree.map(np.testing.assert_array_equal, updates, expected)


def test_a_jitted_update_compiles_once_for_many_steps():
    opt = optax.chain(noise_informed("II", 1.0), optax.adam(0.1))
    cv = optax.chain(control_variate("optimal-lagged"), optax.sgd(0.1))
    params = _tree(jax.random.key(0))

    @jax.jit
    def step(p, s, c, key):
        g = _tree(key)
        v = jax.tree.map(jnp.abs, _tree(jax.random.fold_in(key, 1)))
        u, s = opt.update(g, s, p, grad_var=v)
        w, c = cv.update(g, c, p, **_cv_args(jax.random.fold_in(key, 2)))
        return optax.apply_updates(optax.apply_updates(p, u), w), s, c

    state, cv_state = opt.init(params), cv.init(params)
    for i in range(5):
        params, state, cv_state = step(params, state, cv_state, jax.random.key(i))
    assert step._cache_size() == 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_dtypes_of_updates_and_states_are_kept(dtype):
    mean = _tree(jax.random.key(0), dtype)
    var = jax.tree.map(jnp.abs, _tree(jax.random.key(1), dtype))
    for variant in ("I", "II", "III"):
        updates, _ = noise_informed(variant, 1.0).update(mean, optax.EmptyState(), None,
                                                          grad_var=var)
        assert jax.tree.map(lambda a: a.dtype, updates) == jax.tree.map(lambda a: a.dtype, mean)
    for coefficient in ("optimal", "optimal-lagged", 1.0):
        opt = control_variate(coefficient)
        state = opt.init(mean)
        updates, state = opt.update(mean, state, mean, **_cv_args(jax.random.key(3), dtype))
        assert {a.dtype for a in jax.tree.leaves((updates, state))} == {jnp.dtype(dtype)}


def test_inject_hyperparams_changes_alpha_between_steps_without_recompiling():
    opt = optax.inject_hyperparams(noise_informed, static_args=("variant",))(
        variant="I", alpha=1.0)
    mean = {"w": jnp.array([1.0, -2.0])}
    var = {"w": jnp.array([4.0, 16.0])}  # sigma = 2 and 4
    state = opt.init(mean)
    update = jax.jit(lambda s: opt.update(mean, s, None, grad_var=var))
    out, state = update(state)
    np.testing.assert_allclose(out["w"], [0.5, -0.5])
    # full_like keeps the state's exact type; a weakly typed jnp.asarray(0.25) would be a
    # different input signature and compile again
    state.hyperparams["alpha"] = jnp.full_like(state.hyperparams["alpha"], 0.25)
    out, state = update(state)
    np.testing.assert_allclose(out["w"], [1.0, -2.0])  # alpha sigma <= 1: no shrink
    assert update._cache_size() == 1


def _micro_batches(key, k, b):
    """k micro-batches of b per-example gradients of a (2, 3) parameter."""
    return jax.random.normal(key, (k, b, 2, 3)) * jnp.array([[0.1], [2.0]])


def test_accumulate_moments_gives_the_inner_update_the_moments_of_the_whole_batch():
    k, b = 3, 4
    grads = _micro_batches(jax.random.key(0), k, b)
    whole = grads.reshape(k * b, 2, 3)
    expected, _ = noise_informed("I", 1.0).update(
        whole.mean(0), optax.EmptyState(), None, grad_var=whole.var(0))

    opt = accumulate_moments(noise_informed("I", 1.0), every_k=k)
    state = opt.init(jnp.zeros((2, 3)))
    step = jax.jit(opt.update)
    outputs = []
    for g in grads:
        out, state = step(g.mean(0), state, None, grad_var=g.var(0))
        outputs.append(out)
    for out in outputs[:-1]:
        np.testing.assert_array_equal(out, 0.0)
    np.testing.assert_allclose(outputs[-1], expected, rtol=1e-5, atol=1e-7)
    assert int(state.count) == 0  # a new cycle starts


def test_optax_multisteps_would_see_only_the_last_micro_batch_variance():
    """Why accumulate_moments exists: MultiSteps averages the means but forwards the last
    call's grad_var, which is not the variance of the whole batch."""
    k, b = 2, 4
    grads = _micro_batches(jax.random.key(1), k, b)
    whole = grads.reshape(k * b, 2, 3)
    multi = optax.MultiSteps(noise_informed("I", 1.0), every_k_schedule=k)
    state = multi.init(jnp.zeros((2, 3)))
    for g in grads:
        out, state = multi.update(g.mean(0), state, None, grad_var=g.var(0))
    last, _ = noise_informed("I", 1.0).update(whole.mean(0), optax.EmptyState(), None,
                                               grad_var=grads[-1].var(0))
    right, _ = noise_informed("I", 1.0).update(whole.mean(0), optax.EmptyState(), None,
                                                grad_var=whole.var(0))
    np.testing.assert_allclose(out, last, rtol=1e-5)
    assert not np.allclose(out, right, rtol=1e-3)


def test_accumulate_moments_rejects_bad_input():
    with pytest.raises(SngradError, match="every_k"):
        accumulate_moments(optax.sgd(1.0), every_k=0)
    opt = accumulate_moments(noise_informed("I", 1.0), every_k=2)
    with pytest.raises(SngradError, match="grad_var"):
        opt.update(jnp.zeros(2), opt.init(jnp.zeros(2)), None)


def test_from_aggregating_feeds_noise_informed_the_population_variance():
    per_example = _micro_batches(jax.random.key(2), 1, 6)[0]
    agg = aggregating.get_per_element_mean_and_sum_sq_diff_grads()
    (mean, aux), _ = agg.update(per_example, agg.init(per_example[0]), None)
    mean, var = from_aggregating(mean, aux)
    np.testing.assert_allclose(mean, per_example.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var, per_example.var(0), rtol=1e-5)
