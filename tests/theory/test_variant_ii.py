"""Which map variant II's closed form is exact for, and what the real step obeys instead.

``variant_ii_variance`` (constant 27) is exact for the truncated map
x' = x - c (xi^3 + 3 k x xi^2); the real step x' = x - c (k x + xi)^3 has the first correction
V0 (1 + 5 gamma), i.e. the constant 30, and higher terms from ``variant_ii_series``. Its
formulas hold while the clip is inactive, alpha B >> 1 (``variant_ii_clip_share``). Last, the
simulator's stationary variance against ``variant_ii_variance`` within its stated error.
"""

from fractions import Fraction

import jax
import numpy as np
import pytest
from scipy import stats

from sngrad.theory.closed_forms import discrete_variance
from sngrad.theory.pass_rule import FLOOR, Z_BOUND, passes
from sngrad.theory.processes import Quadratic
from sngrad.theory.simulate import simulate
from sngrad.theory.variant_maps import (
    simulate_truncated_variant_ii,
    sngrad_gain_moments,
    variant_ii_clip_share,
    variant_ii_coefficients,
    variant_ii_gamma,
    variant_ii_series,
    variant_ii_variance,
)


def test_the_first_correction_of_the_real_step_has_the_constant_30():
    """a_1 = 5 for every B (45 in E[u^2] less 15 from k^3 E[x^4] in E[x u]), while the closed
    form expands as V0 / (1 - 4.5 gamma)."""
    for B in (24, 32, 64, 1001):
        assert variant_ii_coefficients(B)[:2].tolist() == [1.0, 5.0]
    k, sigma, B, alpha, eta = 1.0, 0.7, 32, 2.0, 0.3
    gamma = variant_ii_gamma(k, sigma, B, alpha, eta)
    assert gamma == pytest.approx(k * eta / (alpha * (B - 5)))
    v0 = variant_ii_series(k, sigma, B, alpha, eta, n_terms=1)[0]
    assert variant_ii_variance(k, sigma, B, alpha, eta) == pytest.approx(
        v0 / (1 - 4.5 * gamma))


def test_the_second_correction_matches_the_hand_expansion():
    """The gamma^2 coefficient from the fourth-moment equation worked by hand:
    E[y^4] at order gamma^3 is (5250 - 9450 r3 + 10395 r4) / 12 with r3, r4 ratios of inverse
    chi-square moments, and a_2 = (843.75 - 2 E[y^4]_3) / 15; -151/12 for a constant gain."""
    for B in (24, 32, 64):
        n = B - 1
        r3, r4 = Fraction(n - 4, n - 6), Fraction((n - 4) ** 2, (n - 6) * (n - 8))
        m4 = (5250 - 9450 * r3 + 10395 * r4) / 12
        a2 = (Fraction(3375, 4) - 2 * m4) / 15
        assert variant_ii_coefficients(B)[2] == pytest.approx(float(a2), rel=1e-12)
    assert variant_ii_coefficients(200_001, 3)[2] == pytest.approx(-151 / 12, rel=1e-3)


@pytest.mark.parametrize("alpha, batch_size", [(1.0, 32), (2.0, 32), (1.0, 16)])
def test_clip_share_matches_a_direct_quadrature(alpha, batch_size):
    n = batch_size - 1
    q = np.linspace(1e-6, n + 60 * np.sqrt(2 * n), 400_001)
    t = np.sqrt(alpha * q)
    tail = 2 * (stats.norm.pdf(t) * (t**5 + 5 * t**3 + 15 * t) + 15 * stats.norm.sf(t))
    weight = stats.chi2.pdf(q, n) / q**2
    direct = np.trapezoid(tail * weight, q) / (15 * np.trapezoid(weight, q))
    assert variant_ii_clip_share(alpha, batch_size) == pytest.approx(direct, rel=1e-4)


def test_truncated_map_obeys_27_and_not_30():
    """At gamma = 0.067 (the 27-term 30 % of the denominator) the truncated map passes the
    closed form and fails it with 30 in place of 27."""
    m = {"k": 1.0, "sigma": 1.0, "batch_size": 32, "alpha": 1.0, "eta": 1.8}
    measured, se = simulate_truncated_variant_ii(
        jax.random.key(27), curvature=m["k"], sigma=m["sigma"], batch_size=m["batch_size"],
        alpha=m["alpha"], eta=m["eta"], n_chains=2000, burn_in=60, n_steps=1500)
    c1, c2 = sngrad_gain_moments("II", m["sigma"], m["batch_size"], m["alpha"], m["eta"])
    s2 = m["sigma"] ** 2 / m["batch_size"]
    with_30 = 15 * c2 * s2**3 / (6 * m["k"] * c1 * s2 - 30 * m["k"] ** 2 * c2 * s2**2)
    right = variant_ii_variance(**m)
    assert passes(right, measured, se, FLOOR, Z_BOUND), (measured, se, right)
    assert not passes(with_30, measured, se, FLOOR, Z_BOUND), (measured, with_30)


def test_real_step_follows_its_series_and_not_the_45_closed_form():
    """The simulator's variant II at gamma = 0.01 with alpha B = 64: within its Monte Carlo
    error and the series' first dropped term of the three-term series; the closed form with
    45 (what a naive expansion gives) is 3.3 % off and fails."""
    k, sigma, B, alpha = 1.0, 1.0, 32, 2.0
    eta = 0.01 * alpha * (B - 5) / k
    assert variant_ii_clip_share(alpha, B) < 1e-4
    run = simulate(jax.random.key(45), Quadratic.diagonal([k]), n_chains=2000,
                   burn_in=400, n_steps=2500, eta=eta, method="II", alpha=alpha,
                   per_example_std=[sigma], batch_size=B)
    v, se = (float(a[0]) for a in run.variance())
    terms = variant_ii_series(k, sigma, B, alpha, eta)
    series = terms[:3].sum()
    assert abs(v - series) <= Z_BOUND * se + abs(terms[3]), (v, se, series)
    c1, c2 = sngrad_gain_moments("II", sigma, B, alpha, eta)
    s2 = sigma**2 / B
    with_45 = 15 * c2 * s2**3 / (6 * k * c1 * s2 - 45 * k**2 * c2 * s2**2)
    assert not passes(with_45, v, se, FLOOR, Z_BOUND), (v, se, with_45)


# ----------------------------------------------------------------------------- simulated law
# Variant II's stationary law: the simulator against ``variant_ii_variance``.
#
# Variant II moves by ``eta f mu`` with ``f = min(mu^2 / (alpha sigma_hat^2), 1)``: near the
# minimum of ``L = k x^2 / 2`` the step is cubic in the batch mean, and the small-noise expansion
# of ``variant_ii_variance`` predicts the stationary variance up to dropped terms of
# relative order ``k^2 V / s^2`` (``s^2 = sigma^2 / B``). The fluctuation identity
# ``E[theta u] = E[u^2] / 2`` of tests/theory/test_sde.py holds for any update rule, so it
# cannot tell a wrong variant II from the right one; this test can.

# the small-noise regime of the expansion: k^2 V / s^2 is about 2 % here
K, SIGMA, B, ALPHA, ETA = 1.0, np.array([0.5, 2.0]), 32, 1.0, 0.2
ORDER_FACTOR = 3.0  # "terms of relative order e" read as at most 3 e


def test_variant_ii_variance_matches_simulation_within_its_stated_error():
    """Catches a wrong variant II in the simulator (e.g. the factor |mu| / s instead of
    (mu / s)^2, or plain SGD's step) and a wrong constant in ``variant_ii_variance``
    (e.g. 15 -> 9 or 27 -> 9 in its numerator or denominator); the fluctuation identity
    passes for all of these."""
    run = simulate(jax.random.key(11), Quadratic.diagonal([K, K]), n_chains=300,
                   burn_in=600, n_steps=2000, eta=ETA, method="II", alpha=ALPHA,
                   per_example_std=SIGMA, batch_size=B)
    measured, se = run.variance()
    predicted = np.array([variant_ii_variance(K, s, B, ALPHA, ETA) for s in SIGMA])
    stated = K**2 * predicted / (SIGMA**2 / B)  # the expansion's own error estimate
    assert np.all(stated < 0.05), stated  # else the test would not be in the expansion's regime
    slack = 4 * se + ORDER_FACTOR * stated * predicted
    assert np.all(np.abs(measured - predicted) <= slack), (measured, predicted, se, stated)
    # and the prediction is far from plain SGD's at the same eta and B (the leading ratio
    # is 5 / (alpha B)), so agreeing with it is not agreeing with any stable step rule
    sgd = discrete_variance(ETA, K, SIGMA**2 / B)
    assert np.all(measured < 0.5 * sgd), (measured, sgd)
    np.testing.assert_allclose(predicted / sgd, 5 / (ALPHA * B), rtol=0.25)
