"""Behaviour of the control-variate transform at the edge of the float range.

``control_variate`` promises a finite output for every finite input: ``mu - lam (nu - G)``
is saturated to the largest finite float of its dtype. The property test of
tests/test_control_variate.py draws mostly moderate numbers; here both ends are hit on
purpose, with a correction that overflows each way.
"""

import jax.numpy as jnp
import numpy as np

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
