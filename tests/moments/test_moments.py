"""sngrad.moments.per_example_moments on any parameter pytree, and the MLP API as its wrapper."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sngrad import stats
from sngrad.errors import SngradError
from sngrad.models import cross_entropy, mlp_apply, mlp_init
from sngrad.moments import per_example_moments


def linear_loss(params, batch):
    """Per-example squared error of a dict-parametrised linear model on (x, t)."""
    x, t = batch
    return 0.5 * jnp.sum(jnp.square(x @ params["w"] + params["b"]["c"] - t), axis=-1)


def _problem(seed, n=6):
    k = jax.random.split(jax.random.key(seed), 4)
    params = {"w": jax.random.normal(k[0], (3, 2)), "b": {"c": jax.random.normal(k[1], (2,))}}
    batch = (jax.random.normal(k[2], (n, 3)), jax.random.normal(k[3], (n, 2)))
    return params, batch


def test_moments_of_a_linear_model_match_the_closed_form_per_example_gradients():
    params, (x, t) = _problem(0)
    r = x @ params["w"] + params["b"]["c"] - t              # residuals, (B, 2)
    g_w = x[:, :, None] * r[:, None, :]                     # per-example dL/dW, (B, 3, 2)
    for backend in ("vmap", "chunked"):
        got = per_example_moments(linear_loss, params, (x, t), backend=backend, chunk_size=4)
        np.testing.assert_allclose(got.mean["w"], g_w.mean(0), rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(got.var["w"], g_w.var(0), rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(got.mean["b"]["c"], r.mean(0), rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(got.var["b"]["c"], r.var(0), rtol=2e-5, atol=1e-7)
        assert float(got.loss) == pytest.approx(float(jnp.mean(0.5 * jnp.sum(r * r, -1))),
                                                rel=1e-6)


def test_snapshot_moments_include_the_covariance():
    params, batch = _problem(1)
    snap, _ = _problem(2)
    x, t = batch
    g = x[:, :, None] * (x @ params["w"] + params["b"]["c"] - t)[:, None, :]
    h = x[:, :, None] * (x @ snap["w"] + snap["b"]["c"] - t)[:, None, :]
    cov = ((g - g.mean(0)) * (h - h.mean(0))).mean(0)
    for backend in ("vmap", "chunked"):
        got = per_example_moments(linear_loss, params, batch, backend=backend, chunk_size=5,
                                  snapshot=snap)
        np.testing.assert_allclose(got.cov["w"], cov, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(got.snap_var["w"], h.var(0), rtol=2e-5, atol=1e-6)


def mlp_loss(params, batch):
    x, y = batch
    return cross_entropy(mlp_apply(params, x), y)


@pytest.mark.parametrize("backend", ["vmap", "chunked"])
def test_the_mlp_api_agrees_with_the_generic_entry_point(backend):
    """stats.vmap_stats / chunked_stats wrap the same cores; the generic entry differs only
    in feeding each example as a batch of one (a (1, D) product instead of a vector one),
    which XLA may round differently: equal to float32 rounding."""
    params = mlp_init(jax.random.key(0), [6, 5, 3])
    x = jax.random.normal(jax.random.key(1), (9, 6))
    y = jnp.arange(9) % 3
    loss, mean, var = stats.gradient_stats(params, x, y, backend=backend, chunk_size=4)
    got = per_example_moments(mlp_loss, params, (x, y), backend=backend, chunk_size=4)
    assert float(got.loss) == pytest.approx(float(loss), rel=1e-6)
    for a, b in zip(jax.tree.leaves((mean, var)), jax.tree.leaves((got.mean, got.var)),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_bad_arguments_are_named():
    params, batch = _problem(0)
    with pytest.raises(SngradError, match="backend"):
        per_example_moments(linear_loss, params, batch, backend="dense")
    with pytest.raises(SngradError, match="chunk_size"):
        per_example_moments(linear_loss, params, batch, backend="chunked", chunk_size=0)
    with pytest.raises(SngradError, match="leading lengths"):
        per_example_moments(linear_loss, params, (batch[0], batch[1][:3]))
    with pytest.raises(SngradError, match="snapshot"):
        per_example_moments(linear_loss, params, batch, snapshot={"w": params["w"]})
