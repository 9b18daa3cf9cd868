"""The control-variate transformation: SVRG and SGD as special cases, the optimal coefficient,
finite output (also at both ends of the float range), the bias of a coefficient estimated on
the same batch, and the state's structure."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sngrad import control_variate, gradient_stats
from sngrad.errors import SngradError
from sngrad.transforms import (
    LAGGED_FIRST_LAMBDA,
    LAMBDA_RANGE,
    ControlVariateState,
    corrected_variance,
    optimal_coefficient,
)

# ----------------------------------------------------------------------------- a tiny problem

# Hand-made softmax regression (an MLP without hidden layer): 6 examples, 3 features, 2 classes.
X = np.array([[1.0, 0.5, -1.0], [0.2, -0.3, 0.8], [-1.0, 1.0, 0.1],
              [0.7, 0.7, 0.7], [-0.4, 0.9, -0.6], [0.3, -1.2, 0.5]], np.float32)
Y = np.array([0, 1, 1, 0, 1, 0], np.int32)
W0 = [(np.array([[0.1, -0.2], [0.3, 0.0], [-0.1, 0.2]], np.float32),
       np.array([0.05, -0.05], np.float32))]
BATCHES = [np.array([0, 2, 4]), np.array([1, 3, 5]), np.array([5, 0, 3])]
ETA = 0.5


def numpy_example_grads(params, idx):
    """Float64 per-example gradients (W, b) of the cross-entropy of a softmax regression."""
    w, b = (np.asarray(a, np.float64) for a in params[0])
    z = X[idx].astype(np.float64) @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(idx)), Y[idx]] -= 1.0
    return np.einsum("bi,bo->bio", X[idx], p), p


def full_gradient(params):
    gw, gb = numpy_example_grads(params, np.arange(len(X)))
    return [(gw.mean(0).astype(np.float32), gb.mean(0).astype(np.float32))]


def run_chain(opt, params, snap, steps):
    """Train on BATCHES with the statistics of gradient_stats (dense) and the transform."""
    anchor = full_gradient(snap)
    state = opt.init(params)
    path = []
    for idx in BATCHES[:steps]:
        s = gradient_stats(params, X[idx], Y[idx], snapshot=snap)
        updates, state = opt.update(s.mean, state, params, snap_mean=s.snap_mean,
                                    snap_var=s.snap_var, cov=s.cov, anchor=anchor)
        params = optax.apply_updates(params, updates)
        path.append(params)
    return path, state


# ----------------------------------------------------------------------------- special cases


def test_coefficient_one_is_svrg():
    # SVRG (Johnson and Zhang 2013), inner loop with a mini-batch, written out directly:
    #   v = mean_{j in batch} (grad_j(w) - grad_j(w_snap)) + full_grad(w_snap);  w <- w - eta v
    snap = [(W0[0][0] + 0.3, W0[0][1] - 0.2)]
    path, _ = run_chain(optax.chain(control_variate(1.0), optax.sgd(ETA)), W0, snap, 3)
    mu_w, mu_b = (np.asarray(a, np.float64) for a in full_gradient(snap)[0])
    w, b = (np.asarray(a, np.float64) for a in W0[0])
    for idx, ours in zip(BATCHES, path, strict=True):
        gw, gb = numpy_example_grads([(w, b)], idx)
        hw, hb = numpy_example_grads(snap, idx)
        w = w - ETA * ((gw - hw).mean(0) + mu_w)
        b = b - ETA * ((gb - hb).mean(0) + mu_b)
        np.testing.assert_allclose(ours[0][0], w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours[0][1], b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(path[-1][0][0], W0[0][0])


def test_coefficient_zero_is_the_plain_optimizer_step_for_step():
    snap = [(W0[0][0] - 0.4, W0[0][1] + 0.1)]
    chained, _ = run_chain(optax.chain(control_variate(0.0), optax.sgd(ETA)), W0, snap, 3)
    params, plain = W0, []
    sgd = optax.sgd(ETA)
    state = sgd.init(params)
    for idx in BATCHES:
        _, mean, _ = gradient_stats(params, X[idx], Y[idx])
        updates, state = sgd.update(mean, state, params)
        params = optax.apply_updates(params, updates)
        plain.append(params)
    for ours, reference in zip(chained, plain, strict=True):
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_snapshot_at_the_current_point_gives_lambda_one_and_the_full_gradient():
    idx = np.arange(5)
    s = gradient_stats(W0, X[idx], Y[idx], snapshot=W0)
    anchor = full_gradient(W0)
    opt = control_variate("optimal")
    updates, state = opt.update(s.mean, opt.init(W0), W0, snap_mean=s.snap_mean,
                                snap_var=s.snap_var, cov=s.cov, anchor=anchor)
    for lam, var in zip(jax.tree.leaves(state.lam), jax.tree.leaves(s.snap_var), strict=True):
        lam, var = np.asarray(lam), np.asarray(var)
        assert (var > 0).any()
        np.testing.assert_allclose(lam[var > 0], 1.0, rtol=1e-6)
        np.testing.assert_array_equal(lam[var == 0], 0.0)
    # g_j = h_j, so mu - 1 (mu - G) is the full-data gradient where lambda is 1.
    for u, a in zip(jax.tree.leaves(updates), jax.tree.leaves(anchor), strict=True):
        np.testing.assert_allclose(u, a, rtol=1e-5, atol=1e-6)


def test_optimal_coefficient_rule_and_range():
    cov = jnp.array([0.5, -0.5, 3.0, 0.7, 1.0, 0.0])
    var = jnp.array([1.0, 1.0, 1.0, 0.0, -1e-12, 2.0])
    np.testing.assert_array_equal(optimal_coefficient(cov, var), [0.5, 0.0, 2.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(
        optimal_coefficient(cov, var, -np.inf, np.inf), [0.5, -0.5, 3.0, 0.0, 0.0, 0.0])
    # (1 - rho^2) Var g at lambda*: Var g = 4, Var h = 1, Cov = 1.5 -> rho^2 = 9/16.
    np.testing.assert_allclose(corrected_variance(4.0, 1.0, 1.5, 1.5), 4.0 * (1 - 9 / 16))


def test_lagged_uses_the_previous_estimate_and_one_first():
    opt = control_variate("optimal-lagged")
    params = {"w": jnp.zeros(3)}
    state = opt.init(params)
    assert isinstance(state, ControlVariateState)
    mean = {"w": jnp.array([1.0, 2.0, 3.0])}
    extra = dict(snap_mean={"w": jnp.array([0.5, 0.5, 0.5])}, anchor={"w": jnp.zeros(3)},
                 snap_var={"w": jnp.array([1.0, 2.0, 0.0])},
                 cov={"w": jnp.array([0.25, 1.0, 0.0])})
    first, state = opt.update(mean, state, params, **extra)
    np.testing.assert_array_equal(state.lam["w"], [LAGGED_FIRST_LAMBDA] * 3)
    np.testing.assert_allclose(first["w"], [0.5, 1.5, 2.5])
    np.testing.assert_array_equal(state.lam_estimate["w"], [0.25, 0.5, 0.0])
    second, state = opt.update(mean, state, params, **extra)
    np.testing.assert_array_equal(state.lam["w"], [0.25, 0.5, 0.0])
    np.testing.assert_allclose(second["w"], [1.0 - 0.125, 2.0 - 0.25, 3.0])


def test_chain_in_a_jitted_step_with_adam():
    opt = optax.chain(control_variate("optimal"), optax.adam(0.1))
    params = {"a": jnp.array([1.0, -1.0])}
    stats = dict(snap_mean={"a": jnp.array([0.5, 0.0])}, snap_var={"a": jnp.array([1.0, 0.0])},
                 cov={"a": jnp.array([0.5, 0.0])}, anchor={"a": jnp.array([0.25, 0.0])})

    @jax.jit
    def step(params, state):
        updates, state = opt.update({"a": jnp.array([1.0, 2.0])}, state, params, **stats)
        return optax.apply_updates(params, updates), state

    new, state = step(params, opt.init(params))
    np.testing.assert_array_equal(state[0].lam["a"], [0.5, 0.0])
    assert np.isfinite(np.asarray(new["a"])).all()


# ----------------------------------------------------------------------------- finite output

_F32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
_VEC = hnp.arrays(np.float32, 5, elements=_F32)
_COEF = st.one_of(st.sampled_from(["optimal", "optimal-lagged", 0.0, 1.0]),
                  _F32)


def _jitted_update(name):
    opt = control_variate(name)
    return jax.jit(lambda m, state, sm, sv, c, a: opt.update(
        m, state, None, snap_mean=sm, snap_var=sv, cov=c, anchor=a))


_UPDATES = {name: _jitted_update(name) for name in ("optimal", "optimal-lagged")}


@settings(max_examples=80, deadline=None)
@given(coef=_COEF, mean=_VEC, snap_mean=_VEC, snap_var=_VEC, cov=_VEC, anchor=_VEC, lag=_VEC)
def test_output_is_finite_for_every_finite_input(coef, mean, snap_mean, snap_var, cov, anchor,
                                                 lag):
    opt = control_variate(coef)
    state = opt.init(jnp.zeros(5))
    if coef == "optimal-lagged":
        state = ControlVariateState(state.lam, jnp.asarray(lag))
    extra = dict(snap_mean=snap_mean, snap_var=snap_var, cov=cov, anchor=anchor)
    if isinstance(coef, str):
        out, new = _UPDATES[coef](mean, state, snap_mean, snap_var, cov, anchor)
    else:
        out, new = opt.update(mean, state, None, **extra)
    assert np.isfinite(np.asarray(out)).all()
    assert np.isfinite(np.asarray(new.lam_estimate)).all()
    est = np.asarray(new.lam_estimate)
    assert ((est >= LAMBDA_RANGE[0]) & (est <= LAMBDA_RANGE[1])).all()
    if coef == 0.0:
        # XLA on the CPU flushes subnormal float32 values to zero (FTZ/DAZ): a subnormal mean
        # comes out as 0. The strategy keeps subnormals (finiteness on them is worth checking),
        # so the exact comparison is against the mean as the compiled program represents it.
        flushed = np.where(np.abs(mean) < np.finfo(np.float32).tiny, np.float32(0), mean)
        np.testing.assert_array_equal(np.asarray(out), flushed)


# ----------------------------------------------------------------------------- bias


def test_same_batch_lambda_is_biased_by_order_one_over_b_and_lagged_is_not():
    """Per-example pairs h = z, g = z + c (z^2 - 1) + e (z, e standard normal): E g = E h = 0,
    lam* = 1, and the same-batch estimate's bias is exactly -2 c / B for the unclipped
    coefficient (see sngrad.theory.control_variates.cv_same_batch_bias). Each coordinate of one
    update is an independent batch; the bias is measured against lam = 1 on the same batches,
    which is unbiased and shares most of the noise."""
    c, batch, n = 0.5, 32, 200_000
    rng = np.random.default_rng(0)

    def draw():
        z = rng.standard_normal((batch, n))
        g = z + c * (z * z - 1) + 0.5 * rng.standard_normal((batch, n))
        cov = ((g - g.mean(0)) * (z - z.mean(0))).mean(0)
        return [jnp.asarray(a, jnp.float32) for a in (g.mean(0), z.mean(0), z.var(0), cov)]

    anchor = jnp.zeros(n)
    results = {}
    for name in ("optimal", "optimal-lagged", 1.0):
        opt = control_variate(name)
        state = opt.init(anchor)
        for _ in range(2):  # the lagged coefficient of the second update is the first batch's
            mu, nu, var, cov = draw()
            out, state = opt.update(mu, state, None, snap_mean=nu, snap_var=var, cov=cov,
                                    anchor=anchor)
        results[name] = (np.asarray(out, np.float64), np.asarray(mu), np.asarray(nu))
    for name in ("optimal", "optimal-lagged"):
        out, mu, nu = results[name]
        diff = out - (mu - nu)  # minus the lam = 1 estimate on the same batches
        bias, se = diff.mean(), diff.std() / np.sqrt(n)
        if name == "optimal":
            # clipping to [0, 2] trims a little of the tails at B = 32: about -2c/B still.
            assert bias < -10 * se
            assert bias == pytest.approx(-2 * c / batch, rel=0.15)
        else:
            assert abs(bias) < 4 * se
            assert se < 0.1 * 2 * c / batch


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("coefficient", "match"),
    [("svrg", "unknown control-variate coefficient 'svrg'; allowed: optimal, optimal-lagged"),
     (float("nan"), "must be finite"), (1e300, "must be finite"), (True, "must be a number"),
     ([1.0], "finite number")],
)
def test_bad_coefficient_is_rejected(coefficient, match):
    with pytest.raises(SngradError, match=match):
        control_variate(coefficient)


def test_missing_or_mismatched_extra_arguments_are_rejected():
    opt = control_variate("optimal")
    params = {"w": jnp.zeros(2)}
    state = opt.init(params)
    full = dict(snap_mean=params, snap_var=params, cov=params, anchor=params)
    for name in full:
        with pytest.raises(SngradError, match=f"control_variate needs {name}"):
            opt.update(params, state, params, **{k: v for k, v in full.items() if k != name})
    with pytest.raises(SngradError, match="cov must have the same pytree structure"):
        opt.update(params, state, params, **(full | {"cov": {"v": jnp.zeros(2)}}))
    # A fixed coefficient needs only the snapshot mean and the anchor.
    svrg = control_variate(1.0)
    out, _ = svrg.update({"w": jnp.ones(2)}, svrg.init(params), params,
                         snap_mean={"w": jnp.ones(2)}, anchor={"w": jnp.zeros(2)})
    np.testing.assert_array_equal(out["w"], [0.0, 0.0])


# ----------------------------------------------------------------------------- float range
# Behaviour of the control-variate transform at the edge of the float range.
#
# ``control_variate`` promises a finite output for every finite input: ``mu - lam (nu - G)``
# is saturated to the largest finite float of its dtype. The property test of
# this file draws mostly moderate numbers; here both ends are hit on
# purpose, with a correction that overflows each way.

def test_svrg_correction_saturates_at_both_ends_of_the_float_range():
    """Catches the overflow guard dropped or weakened at either end (an output of -inf or
    +inf where the exact value -2 max or +2 max must saturate to -max or +max), and a
    saturation that clips ordinary values."""
    big = float(np.finfo(np.float32).max)
    mean = jnp.array([-big, big, 1.5], jnp.float32)
    # snap_mean - anchor = (+max, -max, 0.5): the exact results are -2 max, +2 max and 1.0
    snap_mean = jnp.array([big / 2, -big / 2, 0.25], jnp.float32)
    anchor = jnp.array([-big / 2, big / 2, -0.25], jnp.float32)
    opt = control_variate(1.0)
    out, _ = opt.update(mean, opt.init(mean), snap_mean=snap_mean, anchor=anchor)
    np.testing.assert_array_equal(np.asarray(out), np.array([-big, big, 1.0], np.float32))


def test_control_variate_state_keeps_its_structure_and_starts_at_its_rule():
    """The optax contract that lets the engine carry the state through ``lax.scan`` and a
    checkpoint: the state after an update has the structure, shapes and dtypes of the initial
    one. The initial ``lam`` of a fixed coefficient is that coefficient (the diagnostic read
    before any step). Catches a state initialised with placeholders (None or another shape),
    which only the engine's scan would trip over."""
    import jax

    params = {"w": jnp.ones((2, 3), jnp.float32), "b": jnp.zeros((3,), jnp.float32)}
    stats = {k: jax.tree.map(lambda p, s=s: jnp.full_like(p, s), params)
             for k, s in (("snap_mean", 0.5), ("snap_var", 2.0), ("cov", 1.0), ("anchor", 0.25))}
    for rule in ("optimal", "optimal-lagged", 1.0, 0.0):
        opt = control_variate(rule)
        state = opt.init(params)
        _, new = opt.update(params, state, **stats)
        shapes = [(a.shape, a.dtype) for a in jax.tree.leaves(state)]
        assert jax.tree.structure(new) == jax.tree.structure(state), rule
        assert [(a.shape, a.dtype) for a in jax.tree.leaves(new)] == shapes, rule
        if isinstance(rule, float):
            assert all(np.all(np.asarray(a) == rule) for a in jax.tree.leaves(state.lam))


def test_coefficient_accepts_every_float32_number_and_nothing_beyond():
    """"Finite (in float32)": the largest float32 is a valid coefficient, the next larger
    double is not. Catches the bound checked with >= (rejecting float32's max) or not at
    all (a coefficient that overflows to inf once cast)."""
    from sngrad.errors import SngradError

    big = float(np.finfo(np.float32).max)
    for value in (big, -big):
        control_variate(value)
    for value in (big * (1 + 1e-7), -big * (1 + 1e-7), float("inf")):
        with pytest.raises(SngradError, match="finite"):
            control_variate(value)
