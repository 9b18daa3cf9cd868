"""Per-example gradient statistics: the three backends against a float64 NumPy reference.

Tolerances. Every float32 result is a sum of terms no larger (in magnitude) than the largest
entry of its leaf, so rounding errors are absolute, of order a few u * max|ref| with
u = 2^-24 ~ 6e-8. An entry counts as "not tiny" when |ref| >= 0.1 * max|ref| over its leaf;
there a relative error of 1e-5 leaves room for about 15 roundings of the largest term, which
these tiny networks stay well inside. Tiny entries (often the result of cancellation, where
no relative bound can hold) must be within 1e-5 * 0.1 * max|ref| in absolute terms. Both
cases are the single check ``|got - ref| <= 1e-5 * max(|ref|, 0.1 * max|ref|)``.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sngrad import stats
from sngrad.errors import SngradError
from sngrad.models import cross_entropy, mlp_apply

U32 = 2.0**-24  # unit roundoff of float32
RTOL = 1e-5
TINY = 0.1  # "not tiny": at least this fraction of the largest |value| in the leaf


# ----------------------------------------------------------------------------- reference


def reference_per_example(params, x, y):
    """Per-example losses and gradients in float64, by explicit backpropagation.

    Returns ``(losses (B,), [(gW (B, in, out), gb (B, out)), ...])``.
    """
    ps = [(np.asarray(w, np.float64), np.asarray(b, np.float64)) for w, b in params]
    a = np.asarray(x, np.float64)
    y = np.asarray(y)
    inputs, pre = [], []
    for i, (w, b) in enumerate(ps):
        inputs.append(a)
        z = a @ w + b
        pre.append(z)
        a = z if i == len(ps) - 1 else np.maximum(z, 0.0)
    shifted = a - a.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(y))
    losses = -logp[rows, y]
    delta = np.exp(logp)
    delta[rows, y] -= 1.0  # dl_j/dz_L = softmax - onehot
    grads = [None] * len(ps)
    for i in range(len(ps) - 1, -1, -1):
        grads[i] = (np.einsum("bi,bo->bio", inputs[i], delta), delta.copy())
        if i:
            delta = (delta @ ps[i][0].T) * (pre[i - 1] > 0)
    return losses, grads


def reference_stats(params, x, y):
    losses, grads = reference_per_example(params, x, y)
    mean = [(gw.mean(0), gb.mean(0)) for gw, gb in grads]
    var = [(gw.var(0), gb.var(0)) for gw, gb in grads]  # np.var: population, two-pass
    return losses.mean(), mean, var


def assert_close(got, ref, what):
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        g = np.asarray(g, np.float64)
        assert g.shape == r.shape, what
        scale = np.maximum(np.abs(r), TINY * np.abs(r).max())
        err = np.abs(g - r) / np.where(scale > 0, scale, 1.0)
        assert err.max() <= RTOL, f"{what}: worst scaled error {err.max():.2e}"


def random_problem(sizes, batch, seed):
    """A random MLP (He-normal weights, small random biases) and a batch, as NumPy float32.

    NumPy, not jax.random: eager JAX ops compile a kernel per new shape, which would
    dominate the run time of these tiny tests.
    """
    rng = np.random.default_rng(seed)
    params = [
        (
            (rng.standard_normal((m, n)) * np.sqrt(2.0 / m)).astype(np.float32),
            (0.1 * rng.standard_normal(n)).astype(np.float32),
        )
        for m, n in itertools.pairwise(sizes)
    ]
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch).astype(np.int32)
    return params, x, y


# ----------------------------------------------------------------------------- agreement

CASES = [
    # (sizes, batch): no hidden layer, one, two; B = 1, 2 and odd sizes
    ([6, 4], 5),
    ([5, 7, 3], 1),
    ([5, 7, 3], 2),
    ([8, 16, 12, 4], 13),
]


@pytest.mark.parametrize(("sizes", "batch"), CASES)
def test_backends_match_float64_reference(sizes, batch):
    params, x, y = random_problem(sizes, batch, seed=len(sizes) * 100 + batch)
    ref_loss, ref_mean, ref_var = reference_stats(params, x, y)
    for backend in stats.BACKENDS:
        loss, mean, var = stats.gradient_stats(params, x, y, backend=backend, chunk_size=4)
        assert jax.tree.structure(mean) == jax.tree.structure(params)
        assert jax.tree.structure(var) == jax.tree.structure(params)
        assert abs(float(loss) - ref_loss) <= RTOL * abs(ref_loss), backend
        assert_close(mean, ref_mean, f"{backend} mean")
        assert_close(var, ref_var, f"{backend} var")
        if batch == 1:
            # One example has no spread: exactly zero, not merely small.
            assert all(np.max(v) == 0.0 for v in jax.tree.leaves(var)), backend


def test_mean_is_the_gradient_of_the_mean_loss():
    params, x, y = random_problem([8, 16, 12, 4], 13, seed=7)
    loss, grad = stats.loss_and_grad(params, x, y)
    direct = jax.jit(jax.grad(lambda p: jnp.mean(cross_entropy(mlp_apply(p, x), y))))(params)
    _, ref_mean, _ = reference_stats(params, x, y)
    assert_close(grad, ref_mean, "loss_and_grad")
    for backend in stats.BACKENDS:
        b_loss, mean, _ = stats.gradient_stats(params, x, y, backend=backend, chunk_size=4)
        assert np.isclose(float(b_loss), float(loss), rtol=RTOL)
        for m, g in zip(jax.tree.leaves(mean), jax.tree.leaves(direct), strict=True):
            np.testing.assert_allclose(m, g, rtol=RTOL, atol=RTOL * TINY * np.abs(g).max())


@pytest.mark.parametrize(("batch", "chunk"), [(7, 3), (6, 3), (6, 1)])
def test_chunked_handles_any_chunk_size(batch, chunk):
    # 7 = 2 full chunks of 3 + a last one of 1; 6 = 2 full chunks, no remainder; chunks of 1.
    # B < c is covered by the agreement cases above (chunk_size=4 with B = 1 and 2).
    params, x, y = random_problem([5, 7, 3], batch, seed=batch * 10 + chunk)
    ref_loss, ref_mean, ref_var = reference_stats(params, x, y)
    loss, mean, var = stats.chunked_stats(params, x, y, chunk_size=chunk)
    assert abs(float(loss) - ref_loss) <= RTOL * abs(ref_loss)
    assert_close(mean, ref_mean, f"chunked B={batch} c={chunk} mean")
    assert_close(var, ref_var, f"chunked B={batch} c={chunk} var")


# ----------------------------------------------------------------------------- high SNR


def second_moment(mean, var):
    return [
        np.asarray(m, np.float64) ** 2 + np.asarray(v, np.float64)
        for m, v in zip(mean, var, strict=True)
    ]


def test_identical_examples_have_no_variance():
    """All B examples equal: every g_j is the same, the true variance is 0.

    dense computes E[g^2] - mean^2 and may leave rounding residue of order u * mean^2; the
    clamp keeps it non-negative. The two-pass backends subtract equal numbers.
    """
    params, x, y = random_problem([6, 9, 4], 1, seed=3)
    xb, yb = np.tile(x, (16, 1)), np.tile(y, 16)
    for backend in stats.BACKENDS:
        _, mean, var = stats.gradient_stats(params, xb, yb, backend=backend, chunk_size=4)
        for m, v in zip(jax.tree.leaves(mean), jax.tree.leaves(var), strict=True):
            m, v = np.asarray(m, np.float64), np.asarray(v, np.float64)
            assert (v >= 0).all(), backend
            # 16 u mean^2 = 4 sqrt(B) u mean^2, the error model of dense_stats (about 8 u
            # measured): sigma / |mean| <= 4 sqrt(u) ~ 1e-3, an SNR of at least 1e6.
            assert (v <= 16 * U32 * m**2).all(), backend
            assert (m != 0).any(), backend


def test_shared_component_plus_small_noise():
    """x_j = x_0 + 1e-3 noise_j: per-example gradients differ by ~1e-3 of their size.

    The true var / mean^2 is then ~1e-6, close to what float32 can resolve from E[g^2] -
    mean^2. dense's error is bounded by c u E[g^2] (see ``dense_stats``); 4 u sqrt(B) E[g^2]
    covers it. The two-pass backends subtract before squaring, so their error is relative to
    the variance itself (limited by the float32 per-example gradients, whose own rounding
    error is ~u |g|, i.e. ~1e-4 of the 1e-3 deviations: 1e-3 relative on var is generous).
    """
    batch = 16
    params, x, y = random_problem([6, 9, 4], batch, seed=11)
    x = x[:1] + 1e-3 * x
    y = np.full(batch, y[0], np.int32)
    _, ref_mean, ref_var = reference_stats(params, x, y)
    ref_m2 = second_moment(jax.tree.leaves(ref_mean), jax.tree.leaves(ref_var))
    ratio = max(v.sum() / m2.sum() for v, m2 in zip(jax.tree.leaves(ref_var), ref_m2, strict=True))
    assert ratio < 1e-4  # the case is high-SNR indeed (overall var / E[g^2] per leaf)
    results = {b: stats.gradient_stats(params, x, y, b, chunk_size=4) for b in stats.BACKENDS}
    dense_var = jax.tree.leaves(results["dense"][2])
    for got, ref, m2 in zip(dense_var, jax.tree.leaves(ref_var), ref_m2, strict=True):
        assert (np.abs(np.asarray(got, np.float64) - ref) <= 4 * U32 * np.sqrt(batch) * m2).all()
    for backend in ("vmap", "chunked"):
        for got, ref in zip(
            jax.tree.leaves(results[backend][2]), jax.tree.leaves(ref_var), strict=True
        ):
            np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * ref.max(), err_msg=backend)


# ----------------------------------------------------------------------------- memory


def test_memory_does_not_scale_with_batch_times_parameters():
    """Compiled scratch memory: dense and chunked stay far below B * P floats; chunked does
    not grow with B at all, vmap does."""
    params, _, _ = random_problem([32, 32, 10], 1, seed=0)
    n_params = sum(leaf.size for leaf in jax.tree.leaves(params))

    def temp_bytes(fn, batch, **kw):
        x = jax.ShapeDtypeStruct((batch, 32), jnp.float32)
        y = jax.ShapeDtypeStruct((batch,), jnp.int32)
        return fn.lower(params, x, y, **kw).compile().memory_analysis().temp_size_in_bytes

    big = 256
    per_example_bytes = big * n_params * 4
    assert temp_bytes(stats.dense_stats, big) < per_example_bytes / 4
    chunk_small = temp_bytes(stats.chunked_stats, 32, chunk_size=8)
    chunk_big = temp_bytes(stats.chunked_stats, big, chunk_size=8)
    assert chunk_big == chunk_small
    assert temp_bytes(stats.vmap_stats, big) >= per_example_bytes / 2


# ----------------------------------------------------------------------------- jit use


def test_cores_run_inside_a_callers_jit():
    params, x, y = random_problem([5, 7, 3], 2, seed=5)
    eager = stats.gradient_stats(params, x, y)
    jitted = jax.jit(lambda p, a, b: stats.gradient_stats(p, a, b))(params, x, y)
    for e, j in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_array_equal(e, j)


# ----------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def small():
    return random_problem([5, 7, 3], 4, seed=0)


def test_unknown_backend_lists_valid_ones(small):
    params, x, y = small
    with pytest.raises(
        SngradError, match="unknown backend 'jacobian'; valid: dense, vmap, chunked"
    ):
        stats.gradient_stats(params, x, y, backend="jacobian")


@pytest.mark.parametrize("chunk", [0, -3, 2.5, True, "8"])
def test_bad_chunk_size(small, chunk):
    params, x, y = small
    with pytest.raises(SngradError, match="chunk_size must be an integer >= 1"):
        stats.gradient_stats(params, x, y, backend="chunked", chunk_size=chunk)


def test_length_mismatch(small):
    params, x, y = small
    with pytest.raises(SngradError, match="x has 4 examples but y has 3"):
        stats.gradient_stats(params, x, y[:3])


@pytest.mark.parametrize("bad", [-1, 3])
def test_labels_out_of_range(small, bad):
    params, x, y = small
    y = y.copy()
    y[2] = bad
    for fn in (stats.gradient_stats, stats.loss_and_grad):
        with pytest.raises(SngradError, match=rf"label {bad} is out of range; allowed: 0 <= y < 3"):
            fn(params, x, y)


def test_bad_shapes_and_dtypes(small):
    params, x, y = small
    with pytest.raises(SngradError, match=r"x has shape \(4, 4\); allowed: \(batch, 5\)"):
        stats.gradient_stats(params, x[:, :4], y)
    with pytest.raises(SngradError, match="integer labels"):
        stats.gradient_stats(params, x, y.astype(np.float32))
    with pytest.raises(SngradError, match="the batch is empty"):
        stats.gradient_stats(params, x[:0], y[:0])


# ----------------------------------------------------------------------------- control variates


def reference_cv_stats(params, snap, x, y):
    """Float64 moments at both parameter sets and their population covariance (two-pass)."""
    losses, grads = reference_per_example(params, x, y)
    _, snap_grads = reference_per_example(snap, x, y)
    g = [leaf for pair in grads for leaf in pair]
    h = [leaf for pair in snap_grads for leaf in pair]

    def per_layer(values):
        return [(values[2 * i], values[2 * i + 1]) for i in range(len(values) // 2)]

    cov = [((a - a.mean(0)) * (b - b.mean(0))).mean(0) for a, b in zip(g, h, strict=True)]
    return (
        losses.mean(),
        per_layer([a.mean(0) for a in g]),
        per_layer([a.var(0) for a in g]),
        per_layer([b.mean(0) for b in h]),
        per_layer([b.var(0) for b in h]),
        per_layer(cov),
    )


def nearby_snapshot(params, seed, step=0.3):
    """A snapshot a relative distance ``step`` away: correlated, not identical, gradients."""
    rng = np.random.default_rng(seed)
    return [
        (w + step * np.abs(w).mean() * rng.standard_normal(w.shape).astype(np.float32),
         b + step * 0.1 * rng.standard_normal(b.shape).astype(np.float32))
        for w, b in params
    ]


def assert_cauchy_schwarz(result, what):
    for c, v, v0 in zip(*(jax.tree.leaves(f) for f in (result.cov, result.var, result.snap_var)),
                        strict=True):
        c, v, v0 = (np.asarray(a, np.float64) for a in (c, v, v0))
        assert (v >= 0).all() and (v0 >= 0).all(), what
        assert (np.abs(c) <= np.sqrt(v * v0) * (1 + 4 * U32)).all(), what


def assert_cov_close(got, ref, batch, what):
    """The covariance is judged on the scale of its Cauchy-Schwarz bound sqrt(var snap_var),
    with the same "not tiny" floor as above, plus two float32 effects of dense's error model
    (see dense_stats), each at most a few u sqrt(B) E[g^2]:

    - the cancellation in E[g h] - mean snap_mean, relative to sqrt(E[g^2] E[h^2]);
    - the clamp to the bound computed from float32 variances: wherever the covariance sits at
      the bound (every coordinate when B = 2) it inherits the variances' errors e, e0, which
      move sqrt(v v0) by at most sqrt((v + e)(v0 + e0)) - sqrt((v - e)(v0 - e0)).
    """
    _, mean, var, snap_mean, snap_var, cov = (jax.tree.leaves(part) for part in ref)
    for g, r, m, v, m0, v0 in zip(jax.tree.leaves(got), cov, mean, var, snap_mean, snap_var,
                                  strict=True):
        bound = np.sqrt(v * v0)
        scale = np.maximum(bound, TINY * bound.max())
        e, e0 = (4 * U32 * np.sqrt(batch) * (a * a + b) for a, b in ((m, v), (m0, v0)))
        cancellation = np.sqrt(e * e0)
        low = np.maximum(v - e, 0) * np.maximum(v0 - e0, 0)
        clamp = np.sqrt((v + e) * (v0 + e0)) - np.sqrt(low)
        err = np.abs(np.asarray(g, np.float64) - r) - cancellation - clamp
        assert (err <= RTOL * scale).all(), f"{what}: worst error {(err / scale).max():.2e}"


@pytest.mark.parametrize(("sizes", "batch"), CASES)
def test_cv_backends_match_float64_reference(sizes, batch):
    params, x, y = random_problem(sizes, batch, seed=len(sizes) * 100 + batch + 1)
    snap = nearby_snapshot(params, seed=batch)
    ref = reference_cv_stats(params, snap, x, y)
    for backend in stats.BACKENDS:
        got = stats.gradient_stats(params, x, y, backend=backend, chunk_size=4, snapshot=snap)
        assert isinstance(got, stats.CVStats), backend
        assert abs(float(got.loss) - ref[0]) <= RTOL * abs(ref[0]), backend
        for field, expected in zip(stats.CVStats._fields[1:], ref[1:], strict=True):
            value = getattr(got, field)
            assert jax.tree.structure(value) == jax.tree.structure(params), (backend, field)
            if field == "cov":
                assert_cov_close(value, ref, batch, f"{backend} cov")
            else:
                assert_close(value, expected, f"{backend} {field}")
        assert_cauchy_schwarz(got, backend)
        if batch == 1:
            assert all(np.max(np.abs(c)) == 0.0 for c in jax.tree.leaves(got.cov)), backend
        # The plain moments are those of the call without a snapshot.
        _, mean, var = stats.gradient_stats(params, x, y, backend=backend, chunk_size=4)
        assert_close(got.mean, jax.tree.map(np.asarray, mean), f"{backend} mean vs plain")
        assert_close(got.var, jax.tree.map(np.asarray, var), f"{backend} var vs plain")


@pytest.mark.parametrize(("batch", "chunk"), [(7, 3), (6, 3), (5, 1)])
def test_chunked_cv_merges_co_moments_for_any_chunk_size(batch, chunk):
    params, x, y = random_problem([5, 7, 3], batch, seed=batch * 10 + chunk + 5)
    snap = nearby_snapshot(params, seed=chunk)
    ref = reference_cv_stats(params, snap, x, y)
    got = stats.chunked_cv_stats(params, snap, x, y, chunk_size=chunk)
    for field, expected in zip(("mean", "var", "snap_mean", "snap_var"), ref[1:5], strict=True):
        assert_close(getattr(got, field), expected, f"chunked c={chunk} {field}")
    assert_cov_close(got.cov, ref, batch, f"chunked c={chunk} cov")


def test_snapshot_at_the_current_point_gives_covariance_equal_to_variance():
    params, x, y = random_problem([8, 16, 12, 4], 13, seed=21)
    for backend in stats.BACKENDS:
        got = stats.gradient_stats(params, x, y, backend=backend, chunk_size=4, snapshot=params)
        for field in ("mean", "var"):
            for a, b in zip(jax.tree.leaves(getattr(got, field)),
                            jax.tree.leaves(getattr(got, "snap_" + field)), strict=True):
                np.testing.assert_array_equal(a, b, err_msg=f"{backend} {field}")
        # Equal up to the order of the float32 sums (XLA fuses cov and var separately).
        for c, v in zip(jax.tree.leaves(got.cov), jax.tree.leaves(got.var), strict=True):
            np.testing.assert_allclose(c, v, rtol=8 * U32, atol=0, err_msg=backend)
        assert any((np.asarray(v) > 0).any() for v in jax.tree.leaves(got.var))


def test_cv_memory_does_not_scale_with_batch_times_parameters():
    params, _, _ = random_problem([32, 32, 10], 1, seed=0)
    n_params = sum(leaf.size for leaf in jax.tree.leaves(params))
    x = jax.ShapeDtypeStruct((256, 32), jnp.float32)
    y = jax.ShapeDtypeStruct((256,), jnp.int32)
    compiled = stats.dense_cv_stats.lower(params, params, x, y).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 256 * n_params * 4 / 4


def test_cv_cores_run_inside_a_callers_jit():
    params, x, y = random_problem([5, 7, 3], 3, seed=8)
    snap = nearby_snapshot(params, seed=8)
    eager = stats.gradient_stats(params, x, y, snapshot=snap)
    jitted = jax.jit(lambda p, s, a, b: stats.gradient_stats(p, a, b, snapshot=s))(
        params, snap, x, y
    )
    for e, j in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_array_equal(e, j)


def test_bad_snapshot_is_rejected(small):
    params, x, y = small
    with pytest.raises(SngradError, match="snapshot has pytree structure"):
        stats.gradient_stats(params, x, y, snapshot=params[:1])
    bad = [(w[:, :2], b) if i == 0 else (w, b) for i, (w, b) in enumerate(params)]
    with pytest.raises(SngradError, match=r"snapshot leaf 0 has shape \(5, 2\); allowed: \(5, 7\)"):
        stats.gradient_stats(params, x, y, snapshot=bad)
