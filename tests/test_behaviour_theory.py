"""Variant II's stationary law: the simulator against ``variant_ii_variance``.

Variant II moves by ``eta f mu`` with ``f = min(mu^2 / (alpha sigma_hat^2), 1)``: near the
minimum of ``L = k x^2 / 2`` the step is cubic in the batch mean, and the small-noise expansion
of ``variant_ii_variance`` predicts the stationary variance up to dropped terms of
relative order ``k^2 V / s^2`` (``s^2 = sigma^2 / B``). The fluctuation identity
``E[theta u] = E[u^2] / 2`` of tests/test_sde.py holds for any update rule, so it cannot tell a
wrong variant II from the right one; this test can.
"""

import jax
import numpy as np

from sngrad.theory.closed_forms import discrete_variance
from sngrad.theory.processes import Quadratic
from sngrad.theory.simulate import simulate
from sngrad.theory.variant_maps import variant_ii_variance

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
