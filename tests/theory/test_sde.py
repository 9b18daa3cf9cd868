"""The theory simulators reproduce the closed-form stationary laws they are checked against.

Tolerances are stated as a number of Monte Carlo standard errors (4 SE: a false alarm about
once in 16 000 runs) plus a relative bound that the sizes below make comfortable.
"""

import jax
import numpy as np
import pytest
from scipy import linalg

from sngrad.errors import SngradError
from sngrad.theory.closed_forms import (
    batch_std_expectation,
    discrete_variance,
    heavy_ball_rate,
    random_gain_variance,
    sde_variance,
)
from sngrad.theory.control_variates import (
    NoisyQuadratic,
    SkewedPairs,
    cv_correlation_squared,
    cv_same_batch_bias,
    cv_same_batch_variance,
    cv_variance,
    simulate_control_variates,
)
from sngrad.theory.processes import DoubleWell, Quadratic, mean_and_se
from sngrad.theory.simulate import descent_path, simulate
from sngrad.theory.variant_maps import sngrad_gain_moments


def assert_agrees(measured, se, predicted, rel=0.04):
    measured, se, predicted = map(np.asarray, (measured, se, predicted))
    assert np.all(np.abs(measured - predicted) <= 4 * se + 1e-12), (measured, se, predicted)
    assert np.all(np.abs(measured / predicted - 1) <= rel), (measured, predicted)


@pytest.mark.parametrize("eta_k", [0.3, 1.5])
def test_one_dimensional_variance_matches_the_discrete_formula(eta_k):
    run = simulate(jax.random.key(1), Quadratic.diagonal([2.0]), n_chains=400,
                   burn_in=200, n_steps=1500, eta=eta_k / 2.0, noise_cov=[[0.5]])
    v, se = run.variance()
    assert_agrees(v, se, discrete_variance(eta_k / 2.0, 2.0, 0.5))
    # At eta k = 1.5 the continuous-time value is four times too small: the SDE is not the
    # discrete recursion there, which is why the report checks the discrete formula.
    if eta_k == 1.5:
        assert v[0] / sde_variance(eta_k / 2.0, 2.0, 0.5) == pytest.approx(4.0, rel=0.04)


def test_per_example_batches_divide_the_noise_by_batch_size():
    variances = {}
    for B in (2, 8):
        run = simulate(jax.random.key(2), Quadratic.diagonal([1.0]), n_chains=400,
                       burn_in=200, n_steps=1500, eta=0.2, per_example_std=[1.0], batch_size=B)
        v, se = run.variance()
        assert_agrees(v, se, discrete_variance(0.2, 1.0, 1.0 / B))
        variances[B] = v[0]
    assert variances[2] / variances[8] == pytest.approx(4.0, rel=0.06)


@pytest.mark.parametrize("method", ["sgd", "I", "II", "III"])
def test_fluctuation_identity_holds_for_every_method(method):
    # E[theta u] = E[u^2] / 2 at stationarity: per chain the time average of 2 theta u - u^2
    # telescopes to (theta_first^2 - theta_last^2) / n, so only boundary terms remain. It holds
    # for any update rule: it checks the accumulators, not a method's law (variant II's law:
    # tests/theory/test_variant_ii.py; I and III: the random-gain test below).
    run = simulate(jax.random.key(3), Quadratic.diagonal([1.0, 1.0]), n_chains=200,
                   burn_in=300, n_steps=1000, eta=0.2, method=method, alpha=0.5,
                   per_example_std=[0.5, 3.0], batch_size=8)
    diff_mean, diff_se = mean_and_se(run.mean_theta_u - run.mean_u2 / 2)
    half_u2 = run.mean_u2.mean(axis=0) / 2
    assert np.all(np.abs(diff_mean) <= 4 * diff_se + 1e-9)
    assert np.all(np.abs(diff_mean) / half_u2 < 0.01)


@pytest.mark.parametrize(("variant", "alpha"), [("I", 1.0), ("III", 0.2)])
def test_variants_with_a_sigma_only_factor_follow_the_random_gain_formula(variant, alpha):
    sigma, B, eta = np.array([0.5, 4.0]), 16, 0.2
    run = simulate(jax.random.key(4), Quadratic.diagonal([1.0, 1.0]), n_chains=400,
                   burn_in=300, n_steps=1500, eta=eta, method=variant, alpha=alpha,
                   per_example_std=sigma, batch_size=B)
    v, se = run.variance()
    predicted = []
    for s in sigma:
        m1, m2 = sngrad_gain_moments(variant, s, B, alpha, eta)
        predicted.append(random_gain_variance(1.0, s * s / B, m1, m2))
    assert_agrees(v, se, predicted)


def test_coupled_quadratic_matches_the_discrete_lyapunov_solution():
    A = np.array([[1.0, 0.6], [0.6, 0.8]])
    h = np.array([0.2, 0.1])
    S = np.array([[1.0, 0.5], [0.5, 4.0]])
    H = np.diag(h)
    expected = linalg.solve_discrete_lyapunov(np.eye(2) - H @ A, H @ S @ H)
    run = simulate(jax.random.key(5), Quadratic.from_matrix(A), n_chains=400,
                   burn_in=400, n_steps=2000, eta=h, noise_cov=S)
    cov, se = run.covariance()
    assert_agrees(cov, se, expected, rel=0.05)


def test_double_well_matches_the_gibbs_density_at_temperature_eta_s2_over_2():
    well = DoubleWell(height=0.5, tilt=0.0)
    eta, noise_var = 0.01, 40.0  # T = eta s^2 / 2 = 0.2; eta L''(+-1) = 0.04 keeps the steps small
    run = simulate(jax.random.key(6), well, n_chains=300, burn_in=500, n_steps=2000,
                   eta=eta, noise_cov=[[noise_var]], x0=1.0, hist_range=(-2, 2),
                   hist_bins=40)
    xs = np.linspace(-2.5, 2.5, 20001)
    gibbs = np.exp(-well.value(xs) / (eta * noise_var / 2))
    x2_gibbs = np.trapezoid(xs**2 * gibbs, xs) / np.trapezoid(gibbs, xs)
    x2, x2_se = mean_and_se(run.mean_xx[:, 0, 0])
    # The discrete chain is a little hotter than its SDE (relative excess ~ eta E[L''] / 4).
    assert abs(x2 - x2_gibbs) <= 4 * x2_se + 0.01 * x2_gibbs
    # A lecture-note constant alpha = 1/10 would put E[x^2] much closer to the minima at +-1.
    cold = np.exp(-well.value(xs) / (0.1 * eta * noise_var))
    assert abs(np.trapezoid(xs**2 * cold, xs) / np.trapezoid(cold, xs) - x2) > 10 * x2_se
    density = run.density()[0]
    assert np.sum(density * np.diff(run.hist_edges)) == pytest.approx(1.0, abs=1e-3)


def test_same_key_same_numbers_other_key_other_numbers():
    kwargs = dict(n_chains=16, burn_in=10, n_steps=50, eta=0.3, method="II", alpha=1.0,
                  per_example_std=[1.0, 2.0], batch_size=4, hist_bins=8)
    loss = Quadratic.diagonal([1.0, 2.0])
    a = simulate(jax.random.key(7), loss, **kwargs)
    b = simulate(jax.random.key(7), loss, **kwargs)
    c = simulate(jax.random.key(8), loss, **kwargs)
    for field in ("mean_xx", "mean_theta_u", "x_final", "hist"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x_final, c.x_final)


def test_batch_std_expectation_matches_closed_form_moments():
    # B sigma_hat^2 / sigma^2 ~ chi-square(B - 1): E[1 / sigma_hat^2] = B / (sigma^2 (B - 3)).
    sigma, B = 2.0, 12
    got = batch_std_expectation(lambda s: 1 / s**2, sigma, B)
    assert got == pytest.approx(B / (sigma**2 * (B - 3)), rel=1e-6)
    assert batch_std_expectation(lambda s: s**2, sigma, B) == pytest.approx(
        sigma**2 * (B - 1) / B, rel=1e-6)


def test_noise_free_paths_contract_at_the_predicted_rates():
    loss = Quadratic.diagonal([1.0, 20.0])
    path = descent_path(loss, [1.0, 1.0], method="gd", eta=0.09, steps=5)
    np.testing.assert_allclose(path[:, 1], (1 - 0.09 * 20) ** np.arange(6), rtol=1e-5)
    assert heavy_ball_rate(0.09, 20.0, 0.0) == pytest.approx(0.8)
    path = descent_path(loss, [1.0, 1.0], method="momentum", eta=0.02, momentum=0.5, steps=300)
    rate = (np.linalg.norm(path[300]) / np.linalg.norm(path[200])) ** (1 / 100)
    assert rate == pytest.approx(max(heavy_ball_rate(0.02, k, 0.5) for k in (1, 20)), rel=1e-3)
    adam = descent_path(loss, [1.0, 1.0], method="adam", eta=0.05, steps=200)
    assert np.linalg.norm(adam[-1]) < 0.1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(noise_cov=[[1.0]], per_example_std=[1.0], batch_size=4), "exactly one"),
        (dict(noise_cov=[[1.0]], method="I"), "per-example"),
        (dict(per_example_std=[1.0], batch_size=1, method="II"), "batch_size >= 2"),
        (dict(noise_cov=[[1.0]], method="adam"), "method"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(SngradError, match=match):
        simulate(jax.random.key(0), Quadratic.diagonal([1.0]), n_chains=2, burn_in=0,
                 n_steps=1, eta=0.1, **kwargs)


def test_control_variate_simulation_matches_variances_and_bias():
    """Gaussian pairs (skew 0): the variance at lambda*, at lambda = 1 and with lambda from the
    same batch ((B-2)/(B-3) factor) match the closed forms. Skewed pairs: the same-batch bias
    is -2 skew / B, the lagged one 0."""
    pairs = SkewedPairs(snap_std=(1.0, 2.0), slope=(0.6, 1.0), skew=(0.0, 0.5),
                        noise=(0.8, 0.5))
    runs = simulate_control_variates(jax.random.key(9), pairs, batch_sizes=(8, 32),
                                     n_chains=100, n_batches=100)
    for B, run in runs.items():
        lam_star = pairs.moments()["cov"] / pairs.moments()["var_h"]
        for name, predicted in [("raw", cv_variance(pairs, B, 0.0)),
                                ("optimal", cv_variance(pairs, B, lam_star)),
                                ("svrg", cv_variance(pairs, B, 1.0))]:
            v, se = run.mse(name)
            assert_agrees(v, se, predicted, rel=0.06)
        v, se = run.mse("same_batch")
        assert_agrees(v[0], se[0], cv_same_batch_variance(pairs, B)[0], rel=0.06)
        # (1 - rho^2) of the raw variance at lambda*
        np.testing.assert_allclose(cv_variance(pairs, B, lam_star),
                                   (1 - cv_correlation_squared(pairs))
                                   * pairs.moments()["var_g"] / B)
        bias, se = run.bias("same_batch")
        predicted = cv_same_batch_bias(pairs, B)
        assert predicted[1] == pytest.approx(-2 * 0.5 / B) and predicted[0] == 0
        assert np.all(np.abs(bias - predicted) <= 4 * se + 0.05 * np.abs(predicted))
        assert bias[1] < -8 * se[1]
        lag, lag_se = run.bias("lagged")
        assert np.all(np.abs(lag) <= 4 * lag_se)


def test_noisy_quadratic_moments_match_its_draws():
    quad = NoisyQuadratic(theta=(0.0, 2.0), theta_snap=1.0, curvature=1.5, target=0.5,
                          curvature_std=0.7, target_std=0.3)
    g, h = (np.asarray(a, float) for a in quad.draw(jax.random.key(3), (200_000,)))
    m = quad.moments()
    np.testing.assert_allclose(g.mean(0), m["mean_g"], atol=0.01)
    np.testing.assert_allclose(h.mean(0), m["mean_h"], atol=0.01)
    np.testing.assert_allclose(g.var(0), m["var_g"], rtol=0.02)
    np.testing.assert_allclose(h.var(0), m["var_h"], rtol=0.02)
    cov = ((g - g.mean(0)) * (h - h.mean(0))).mean(0)
    np.testing.assert_allclose(cov, m["cov"], rtol=0.02)
