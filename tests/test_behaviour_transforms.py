"""Behaviour of the control-variate transform at the edge of the float range.

``control_variate`` promises a finite output for every finite input: ``mu - lam (nu - G)``
is saturated to the largest finite float of its dtype. The property test of
tests/test_control_variate.py draws mostly moderate numbers; here both ends are hit on
purpose, with a correction that overflows each way.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from sngrad.transforms import control_variate


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
