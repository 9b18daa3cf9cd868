"""The MLP: He-normal initialisation, forward pass, cross-entropy, size validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sngrad.errors import SngradError
from sngrad.models import cross_entropy, mlp_apply, mlp_init

SIZES = [400, 300, 300, 10]


@pytest.fixture(scope="module")
def params():
    return mlp_init(jax.random.PRNGKey(0), SIZES)


def test_shapes_dtypes_and_zero_biases(params):
    assert len(params) == len(SIZES) - 1
    for (w, b), fan_in, fan_out in zip(params, SIZES[:-1], SIZES[1:], strict=True):
        assert w.shape == (fan_in, fan_out) and w.dtype == jnp.float32
        assert b.shape == (fan_out,) and b.dtype == jnp.float32
        assert not np.any(np.asarray(b))


def test_he_normal_statistics(params):
    # Each W has >= 3000 entries; the sample std of n normal draws has relative standard
    # error 1/sqrt(2n) <= 1.3%, so 5% is about 4 standard errors. Same for the mean, whose
    # standard error is std / sqrt(n) <= 1.8% of std.
    for (w, _), fan_in in zip(params, SIZES[:-1], strict=True):
        w = np.asarray(w, np.float64)
        target = np.sqrt(2.0 / fan_in)
        assert abs(w.std() / target - 1.0) < 0.05
        assert abs(w.mean()) < 0.08 * target


def test_same_key_same_weights_and_layers_independent(params):
    again = mlp_init(jax.random.PRNGKey(0), SIZES)
    for (w1, b1), (w2, b2) in zip(params, again, strict=True):
        np.testing.assert_array_equal(w1, w2)
        np.testing.assert_array_equal(b1, b2)
    other = mlp_init(jax.random.PRNGKey(1), SIZES)
    assert not np.array_equal(params[0][0], other[0][0])
    # The two 300x300 layers draw from different subkeys.
    corr = np.corrcoef(np.ravel(params[1][0])[:2000], np.ravel(params[2][0])[:2000])[0, 1]
    assert abs(corr) < 0.1


def test_forward_matches_numpy(params):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, SIZES[0])).astype(np.float32)
    # Non-zero biases, so that their placement is checked too.
    params = [(w, jnp.full(b.shape, 0.1 * (i + 1), jnp.float32)) for i, (w, b) in enumerate(params)]
    a = x.astype(np.float64)
    for i, (w, b) in enumerate(params):
        a = a @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
        if i < len(params) - 1:
            a = np.maximum(a, 0.0)
    logits = np.asarray(jax.jit(mlp_apply)(params, x), np.float64)
    assert (logits < 0).any()  # no ReLU after the last layer
    np.testing.assert_allclose(logits, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())


def test_cross_entropy_matches_float64_and_is_stable():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0], [1e4, -1e4, 0.0], [-50.0, 60.0, 55.0]])
    y = np.array([0, 2, 1, 2], np.int32)
    shifted = logits - logits.max(axis=1, keepdims=True)
    expected = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(4), y]
    got = np.asarray(cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(y)))
    assert got.shape == (4,)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert got[2] == pytest.approx(2e4)  # the huge-logit row did not overflow


@pytest.mark.parametrize("sizes", [[], [5], [5, 0], [5, -2, 3], [5, 2.5], [True, 3], "53"])
def test_bad_sizes(sizes):
    with pytest.raises(SngradError, match="at least 2 positive integers"):
        mlp_init(jax.random.PRNGKey(0), sizes)
