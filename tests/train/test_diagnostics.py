"""The per-step record: factor mean and shrink share, lambda median, variance ratio."""

import jax.numpy as jnp
import numpy as np
import pytest

from sngrad.names import parse_run
from sngrad.stats import CVStats
from sngrad.train import diagnostics


def _layer(w, b=None):
    w = jnp.asarray(w, jnp.float32)
    return (w, jnp.zeros(w.shape[-1]) if b is None else jnp.asarray(b, jnp.float32))


def test_shrink_record_of_each_variant_and_svag_on_known_statistics():
    mu = [_layer([[1.0, -2.0], [0.0, 3.0]], b=[100.0, 100.0])]  # biases are left out
    var = [_layer([[4.0, 1.0], [0.0, 9.0]], b=[1e6, 1e6])]
    # I, alpha = 1: f = 1 / max(sigma, 1) = 0.5, 1, 1, 1/3
    rec = diagnostics.shrink_record(parse_run("sgd+sngrad1@1"), mu, var, 1.0, 4)
    assert float(rec["factor_mean"][0]) == pytest.approx((0.5 + 1 + 1 + 1 / 3) / 4)
    assert float(rec["shrink_share"][0]) == pytest.approx(0.5)
    # II, alpha = 1: f = min(mu^2 / sigma^2, 1) = 0.25, 1, 1 (sigma = 0), 1
    rec = diagnostics.shrink_record(parse_run("adam+sngrad2"), mu, var, 1.0, 4)
    assert float(rec["factor_mean"][0]) == pytest.approx((0.25 + 3) / 4)
    assert float(rec["shrink_share"][0]) == pytest.approx(0.25)
    # svag, B = 4: f = mu^2 / (mu^2 + var / 4) = 1/2, 4/4.25, 1, 9/11.25
    rec = diagnostics.shrink_record(parse_run("svag"), mu, var, None, 4)
    expected = [0.5, 4 / 4.25, 1.0, 9 / 11.25]
    assert float(rec["factor_mean"][0]) == pytest.approx(np.mean(expected), rel=1e-6)
    assert float(rec["shrink_share"][0]) == pytest.approx(0.75)


def test_variance_ratio_and_lambda_median_from_control_variate_statistics():
    var = [_layer([[4.0, 1.0]]), _layer([[2.0]])]
    snap_var = [_layer([[4.0, 1.0]]), _layer([[2.0]])]
    cov = [_layer([[4.0, 0.5]]), _layer([[0.0]])]
    lam = [_layer([[1.0, 0.5]]), _layer([[0.0]])]
    zeros = [_layer([[0.0, 0.0]]), _layer([[0.0]])]
    cv = CVStats(jnp.float32(0.0), zeros, var, zeros, snap_var, cov)
    ratio = diagnostics.cv_record(cv, lam)["variance_ratio"]
    # layer 0: (4 + 4 - 8) + (1 + 0.25 - 0.5) = 0.75 over 5; layer 1: lambda 0 keeps 2 of 2
    np.testing.assert_allclose(np.asarray(ratio), [0.75 / 5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(diagnostics.lambda_median(lam)), [0.75, 0.0])


def test_complete_record_fills_what_does_not_apply_with_nan():
    rec = diagnostics.complete_record({"variance_ratio": jnp.ones(3)}, 3)
    assert set(rec) == {"factor_mean", "shrink_share", "variance_ratio"}
    assert np.isnan(np.asarray(rec["factor_mean"])).all() and rec["factor_mean"].shape == (3,)
    np.testing.assert_array_equal(np.asarray(rec["variance_ratio"]), 1.0)
