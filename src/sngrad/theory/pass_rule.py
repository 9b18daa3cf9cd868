"""The rule that holds a theory measurement to its own Monte Carlo standard error.

A measurement of an exact prediction is held to its own Monte Carlo error, not to a flat
relative tolerance: a flat 5 % lets a constant that is wrong by a few percent pass whenever
the simulation is a hundred times more precise than that.
"""

from __future__ import annotations

import numpy as np

# FLOOR: the relative error that the Monte Carlo standard error does not see. The exact
# predictions are closed forms or quadratures good to 1e-6, but the simulations run in float32,
# sum up to 40,000 steps per chain, and the momentum rates of the theory notebook are slopes
# fitted over a window in which the error oscillates (0.09 % off at momentum 0.9). 0.2 % covers
# these with room, and Z_BOUND * FLOOR = 0.8 % stays far below the few percent at which a wrong
# constant must fail.
FLOOR = 0.002
# Z_BOUND: the theory notebook has about 130 exact checks. At |z| <= 3 a correct formula would
# fail somewhere in about one run in three (P(|z| > 3) = 0.27 % per check); at 4 the chance is
# 6e-5 per check, under 1 % per run, while a prediction 3 % off still fails once its relative
# standard error is below 0.7 %.
Z_BOUND = 4.0


def _reference(predicted, scale):
    return np.abs(np.asarray(predicted if scale is None else scale, float))


def z_score(predicted, measured, mc_se, floor, scale=None):
    """Standardised deviation of a measurement from a prediction:

        z = (measured - predicted) / sqrt(mc_se^2 + (floor * ref)^2),

    ref = |predicted|, or ``scale`` for a claim whose prediction is 0 (the scale names the size
    of the effect that should be absent). ``mc_se`` is the Monte Carlo standard error of
    measured - predicted, ``floor`` a relative error allowed for what the Monte Carlo error does
    not see (float32 sums, quadrature, a rate fitted over a finite window). Broadcasts; a zero
    denominator gives +-inf (nan for 0 / 0); scalars in, a float out.
    """
    predicted, measured, mc_se = (np.asarray(a, float) for a in (predicted, measured, mc_se))
    spread = np.hypot(mc_se, floor * _reference(predicted, scale))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (measured - predicted) / spread
    return float(z) if np.ndim(z) == 0 else z


def passes(predicted, measured, mc_se, floor, z_bound, scale=None):
    """|z_score| <= z_bound; a nan z fails."""
    ok = np.abs(z_score(predicted, measured, mc_se, floor, scale)) <= z_bound
    return bool(ok) if np.ndim(ok) == 0 else ok


def resolves(predicted, alternative, mc_se, floor, z_bound, scale=None):
    """Whether a check can tell ``predicted`` from a stated ``alternative`` value: no
    measurement passes both, i.e. |predicted - alternative| > z_bound (d_p + d_a), with
    d_v = sqrt(mc_se^2 + (floor * |v|)^2) the denominator of ``z_score`` for the value v (or
    ``scale`` for both, if given)."""
    predicted, alternative, mc_se = (np.asarray(a, float) for a in (predicted, alternative, mc_se))
    d_p = np.hypot(mc_se, floor * _reference(predicted, scale))
    d_a = np.hypot(mc_se, floor * _reference(alternative, scale))
    ok = np.abs(predicted - alternative) > z_bound * (d_p + d_a)
    return bool(ok) if np.ndim(ok) == 0 else ok
