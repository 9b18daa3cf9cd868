"""The alpha reference of variants I and III: alpha read relative to the step's RMS sigma.

With ``reference="rms"`` the factor takes ``alpha / s`` on each step, ``s = sqrt(sum_i
sigma_i^2 / P)`` over every coordinate of the gradient (weights and biases); "absolute" is the
prototype's raw alpha and stays the library's default. A tuned I or III run of the study reads
its alpha as "rms", a run with ``@alpha`` as "absolute".
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import toy_splits

from sngrad import stats
from sngrad.errors import SngradError
from sngrad.models import mlp_init
from sngrad.names import parse_run
from sngrad.noise import command, measure
from sngrad.optimizers import build_optimizer
from sngrad.spec import TrainSpec
from sngrad.train import diagnostics
from sngrad.train.engine import TRAIN_MODE, RunConfig, programs, run_sweep
from sngrad.train.step import make_step
from sngrad.transforms import REFERENCES, noise_informed, rms_sigma, scale_factor, step_alpha

# weights with sigma 2, 1, 0, 3 and biases with variance 2, 2: s^2 = (4 + 1 + 0 + 9 + 4) / 6 = 3
MU = [(jnp.array([[1.0, -2.0], [0.0, 3.0]]), jnp.array([0.5, -0.5]))]
VAR = [(jnp.array([[4.0, 1.0], [0.0, 9.0]]), jnp.array([2.0, 2.0]))]
S = math.sqrt(3.0)


def _update(variant, alpha, reference, mean, var):
    updates, _ = noise_informed(variant, alpha, reference).update(
        mean, optax.EmptyState(), None, grad_var=var)
    return updates


# ----------------------------------------------------------------------------- rms_sigma


def test_rms_sigma_is_the_root_mean_variance_over_every_leaf():
    tree = {"w": np.array([[1.0, 4.0], [-1e-7, 9.0]], np.float32),  # -1e-7: round-off, read as 0
            "b": np.array([0.25], np.float32), "c": [np.array([[2.0]], np.float32)]}
    flat = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)]).astype(np.float64)
    expected = np.sqrt(np.maximum(flat, 0.0).sum() / flat.size)  # P = 6, not the 5 positives
    assert float(rms_sigma(tree)) == pytest.approx(expected, rel=1e-6)
    assert float(rms_sigma(jax.tree.map(jnp.asarray, tree))) == pytest.approx(
        math.sqrt(16.25 / 6), rel=1e-6)
    assert float(rms_sigma(VAR)) == pytest.approx(S, rel=1e-6)


def test_rms_sigma_is_zero_only_without_any_noise():
    assert float(rms_sigma([jnp.zeros(3), jnp.full(2, -1e-9)])) == 0.0
    assert float(rms_sigma([jnp.zeros(3), jnp.array([0.0, 1e-30])])) > 0
    assert float(rms_sigma({})) == 0.0


# ----------------------------------------------------------------------------- step_alpha


@pytest.mark.parametrize("variant", ["I", "II", "III"])
def test_absolute_reference_and_variant_ii_keep_alpha_as_given(variant):
    assert step_alpha(variant, 0.7, "absolute", VAR) == 0.7
    if variant == "II":  # mu^2 / sigma^2 has no unit to remove
        assert step_alpha(variant, 0.7, "rms", VAR) == 0.7


@pytest.mark.parametrize("variant", ["I", "III"])
def test_rms_reference_divides_alpha_by_the_rms_sigma(variant):
    assert float(step_alpha(variant, 0.7, "rms", VAR)) == pytest.approx(0.7 / S, rel=1e-6)
    # s = 0: every factor is 1 whatever alpha is, and alpha comes back unchanged
    zero = jax.tree.map(jnp.zeros_like, VAR)
    assert float(step_alpha(variant, 0.7, "rms", zero)) == pytest.approx(0.7)
    traced = jax.jit(lambda a, v: step_alpha(variant, a, "rms", v))
    assert float(traced(jnp.float32(0.7), VAR)) == pytest.approx(0.7 / S, rel=1e-6)
    assert float(traced(jnp.float32(0.7), zero)) == pytest.approx(0.7)


# ----------------------------------------------------------------------------- the transform


@pytest.mark.parametrize("variant", ["I", "III"])
def test_rms_update_is_the_absolute_update_at_alpha_over_s(variant):
    alpha = 1.5
    rms = _update(variant, alpha, "rms", MU, VAR)
    by_hand = _update(variant, alpha / S, "absolute", MU, VAR)
    for a, b in zip(jax.tree.leaves(rms), jax.tree.leaves(by_hand), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    # and it is not the absolute update at alpha: the weight with sigma = 1 is left alone at
    # alpha / s = 0.87 (I) but shrunk at 1.5
    absolute = _update(variant, alpha, "absolute", MU, VAR)
    assert not np.allclose(np.asarray(rms[0][0]), np.asarray(absolute[0][0]))


def test_variant_ii_is_the_same_under_both_references():
    for a, b in zip(jax.tree.leaves(_update("II", 2.0, "rms", MU, VAR)),
                    jax.tree.leaves(_update("II", 2.0, "absolute", MU, VAR)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("variant", ["I", "III"])
def test_scaling_every_sigma_leaves_the_rms_factor_unchanged(variant):
    key = jax.random.PRNGKey(0)
    mean = [(jax.random.normal(key, (5, 4)), jnp.ones(4))]
    var = [(jnp.square(jax.random.normal(jax.random.fold_in(key, 1), (5, 4))),
            jnp.full(4, 0.3))]
    scaled = jax.tree.map(lambda v: 100.0**2 * v, var)  # every sigma times 100
    # the factor is update / mean; the mean is the same, so compare the updates
    rms, rms_scaled = (_update(variant, 1.0, "rms", mean, v) for v in (var, scaled))
    for a, b in zip(jax.tree.leaves(rms), jax.tree.leaves(rms_scaled), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    absolute, absolute_scaled = (_update(variant, 1.0, "absolute", mean, v) for v in (var, scaled))
    assert not np.allclose(np.asarray(absolute[0][0]), np.asarray(absolute_scaled[0][0]))
    # the threshold sigma = s / alpha lies inside the spread: I shrinks some weights but not
    # all, III zeroes some but not all
    f = np.asarray(rms[0][0]) / np.asarray(mean[0][0])
    assert 0 < np.mean(f < 1 - 1e-6 if variant == "I" else f == 0) < 1


@pytest.mark.parametrize("variant", ["I", "III"])
@pytest.mark.parametrize("level", [0.0, 1e-12, 1.0])
def test_no_nan_in_the_derivative_with_respect_to_the_variance(variant, level):
    mean = [(jnp.array([[1.0, -2.0]]), jnp.array([0.0]))]

    def total(v):
        return sum(jnp.sum(u) for u in jax.tree.leaves(_update(variant, 2.0, "rms", mean, v)))

    var = [(jnp.full((1, 2), level, jnp.float32), jnp.full((1,), level, jnp.float32))]
    assert np.isfinite(float(total(var)))
    for grad in (jax.grad(total)(var), jax.jit(jax.grad(total))(var)):
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grad))


def test_no_nan_where_the_slope_of_alpha_over_s_overflows():
    # float16: s = 1e-3 < sqrt(tiny) = 7.8e-3, so the slope alpha / s^2 overflows (6.5e4 is
    # the largest float16) and a plain double where gives NaN in d/dvar (observed: [nan, inf,
    # nan]). The value stays alpha / s; the derivative through sigma itself is a genuine
    # overflow here (inf), but never NaN. (float32 needs a subnormal mean variance for this,
    # which XLA's CPU backend flushes to 0.)
    mean = jnp.array([1.0, 0.0, 0.5], jnp.float16)
    var = jnp.full(3, 1e-6, jnp.float16)
    assert float(step_alpha("I", 2.0, "rms", [var])) == pytest.approx(2.0 / 1e-3, rel=1e-2)

    def total(v):
        return jnp.sum(mean * scale_factor("I", mean, v, step_alpha("I", 2.0, "rms", [v])))

    assert not np.isnan(np.asarray(jax.grad(total)(var))).any()
    assert not np.isnan(np.asarray(jax.jit(jax.grad(total))(var))).any()


def test_a_bad_reference_is_a_one_line_error_naming_the_allowed_values():
    assert REFERENCES == ("absolute", "rms")
    with pytest.raises(SngradError, match="unknown alpha reference 'median'; valid: absolute, "
                                          "rms") as err:
        noise_informed("I", 1.0, "median")
    assert "\n" not in str(err.value)
    with pytest.raises(SngradError, match="valid: absolute, rms"):
        step_alpha("III", 1.0, "RMS", VAR)
    with pytest.raises(SngradError, match="valid: absolute, rms"):
        build_optimizer("sgd+sngrad1", 0.1, alpha_reference="relative")
    with pytest.raises(SngradError, match="alpha_reference is only used by \\+sngrad"):
        build_optimizer("adam", 0.1, alpha_reference="rms")
    build_optimizer("adam", 0.1, alpha_reference="absolute")  # the default is allowed anywhere


def test_build_optimizer_passes_the_reference_to_the_transform():
    params = jax.tree.map(jnp.zeros_like, MU)
    for reference in REFERENCES:
        opt = build_optimizer("sgd+sngrad3", 0.1, alpha=1.0, alpha_reference=reference)
        updates, _ = opt.update(MU, opt.init(params), params, grad_var=VAR)
        expected = jax.tree.map(lambda u: -0.1 * u, _update("III", 1.0, reference, MU, VAR))
        for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


# ----------------------------------------------------------------------------- run names


def test_a_tuned_i_or_iii_run_reads_alpha_relative_to_the_rms_sigma():
    assert parse_run("sgd+sngrad1").alpha_reference == "rms"
    assert parse_run("adam+sngrad3").alpha_reference == "rms"
    assert parse_run("sgd+sngrad2").alpha_reference == "absolute"
    assert parse_run("sgd+sngrad3@0.1").alpha_reference == "absolute"
    assert parse_run("sgd+sngrad1@2").alpha_reference == "absolute"
    for run in ("sgd", "svag", "sgd+cv", "adam"):
        assert parse_run(run).alpha_reference == "absolute"


def test_names_stay_importable_without_jax():
    import subprocess
    import sys

    code = ("import sys; from sngrad.names import parse_run; "
            "print(parse_run('sgd+sngrad1').alpha_reference, 'jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["rms", "False"]


# ----------------------------------------------------------------------------- diagnostics


def test_shrink_record_takes_the_rms_of_weights_and_biases():
    # a tuned I reads alpha relative to the RMS sigma (the run's alpha_reference)
    # I at alpha / s = 1 / sqrt(3): f = 1 / max(sigma / sqrt(3), 1) = sqrt(3)/2, 1, 1, 1/sqrt(3)
    rec = diagnostics.shrink_record(parse_run("sgd+sngrad1"), MU, VAR, 1.0, 4)
    assert float(rec["factor_mean"][0]) == pytest.approx((S / 2 + 2 + 1 / S) / 4, rel=1e-6)
    assert float(rec["shrink_share"][0]) == pytest.approx(0.5)
    # the weights alone would give s = sqrt(14 / 4) and f = 0.935 for sigma = 2
    assert float(rec["factor_mean"][0]) != pytest.approx(
        (math.sqrt(3.5) / 2 + 2 + math.sqrt(3.5) / 3) / 4, rel=1e-3)
    # a fixed alpha is absolute, at alpha = 1: f = 1/2, 1, 1, 1/3 (test_diagnostics)
    absolute = diagnostics.shrink_record(parse_run("sgd+sngrad1@1"), MU, VAR, 1.0, 4)
    assert float(absolute["factor_mean"][0]) == pytest.approx((0.5 + 2 + 1 / 3) / 4)
    # III: f = 1 - min(sigma / sqrt(3), 1) = 0, 1 - 1/sqrt(3), 1, 0
    rec = diagnostics.shrink_record(parse_run("sgd+sngrad3"), MU, VAR, 1.0, 4)
    assert float(rec["factor_mean"][0]) == pytest.approx((2 - 1 / S) / 4, rel=1e-6)
    assert float(rec["shrink_share"][0]) == pytest.approx(0.75)


# the engine reads no tuning section
SPEC = TrainSpec(hidden=(6,), init_seed=0, epochs=2, seeds=(1, 2), backend="dense",
                 schedule="constant", checkpoint_every=0, diverge_loss=1000.0, snapshot_every=1,
                 tune=None)
B = 16


def test_the_step_update_and_its_diagnostics_take_the_same_rms_alpha():
    splits = toy_splits()
    x, y = jnp.asarray(splits.x_train[:B]), jnp.asarray(splits.y_train[:B])
    params = mlp_init(jax.random.PRNGKey(0), [5, 6, 3])
    hp = {"learning_rate": jnp.float32(0.1), "alpha": jnp.float32(1.0)}
    step = jax.jit(make_step(parse_run("sgd+sngrad1"), backend="dense", batch_size=B,
                             schedule="constant", total_steps=0))
    new, _, record = step(params, step.init(params, hp), (x, y), hp)
    _, mean, var = stats.dense_stats(params, x, y)
    leaves = [np.asarray(v, np.float64).ravel() for v in jax.tree.leaves(var)]
    s = math.sqrt(np.maximum(np.concatenate(leaves), 0).sum() / sum(v.size for v in leaves))
    for (w, b), (mw, mb), (vw, vb), (nw, nb), f_mean in zip(
            params, mean, var, new, record["factor_mean"], strict=True):
        fw = np.asarray(scale_factor("I", mw, vw, 1.0 / s))
        np.testing.assert_allclose(np.asarray(nw), np.asarray(w) - 0.1 * np.asarray(mw) * fw,
                                   rtol=1e-5, atol=1e-7)
        fb = np.asarray(scale_factor("I", mb, vb, 1.0 / s))
        np.testing.assert_allclose(np.asarray(nb), np.asarray(b) - 0.1 * np.asarray(mb) * fb,
                                   rtol=1e-5, atol=1e-7)
        assert float(f_mean) == pytest.approx(float(fw.mean()), rel=1e-5)


def test_engine_reads_alpha_as_the_run_says():
    """A tuned sgd+sngrad1 reads alpha relative to the RMS sigma, sgd+sngrad1@1 in raw
    units; with the same configs (alpha = 1) the two train differently."""
    splits = toy_splits()
    configs = [RunConfig(0.1, None, 1.0, s) for s in (1, 2)]
    tuned, fixed = parse_run("sgd+sngrad1"), parse_run("sgd+sngrad1@1")
    absolute = run_sweep(splits, fixed, B, SPEC, configs, TRAIN_MODE)
    rms = run_sweep(splits, tuned, B, SPEC, configs, TRAIN_MODE)
    # alpha = 1 in raw units is above most of this network's sigmas: at most a few weights
    # are shrunk; relative to the RMS sigma it shrinks those with sigma > s in every layer
    share, share_absolute = rms.records["shrink_share"], absolute.records["shrink_share"]
    assert share_absolute.max() < 0.1
    assert np.all((share > share_absolute) & (share > 0.1) & (share < 1))
    assert np.all(rms.records["factor_mean"] < absolute.records["factor_mean"])
    assert not np.array_equal(rms.records["train_loss"], absolute.records["train_loss"])
    key = ("dense", B, 96, (5, 6, 3), "constant", 0, True, 4, False)
    assert programs(tuned, *key) is not programs(fixed, *key)
    assert programs(tuned, *key).run.alpha_reference == "rms"


# ----------------------------------------------------------------------------- noise study


def _mlp_problem(n=200, sizes=(12, 16, 4), seed=0):
    params = mlp_init(jax.random.PRNGKey(seed), list(sizes))
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(size=(n, sizes[0])), 0).astype(np.float32)
    x[:, 0] = 0.0  # a dead input column: coordinates that are never informative
    return params, x, rng.integers(0, sizes[-1], n).astype(np.int32)


def _flat(tree) -> np.ndarray:
    """A ``[(W, b), ...]`` pytree as the noise study lays it out: per layer (W; b) flattened."""
    return np.concatenate([np.concatenate([np.asarray(w), np.asarray(b)[None]]).ravel()
                           for w, b in tree]).astype(np.float64)


def test_parse_tuned_reads_the_reference_and_old_files_as_absolute(tmp_path):
    files = {"new": {"alpha": 0.2, "alpha_reference": "rms"}, "old": {"alpha": 0.3},
             "none": {"alpha": None, "alpha_reference": None},
             "bad": {"alpha": 0.2, "alpha_reference": "median"}}
    for name, content in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    tuned = command.parse_tuned([f"sgd+sngrad1={tmp_path / 'new.json'}",
                                 f"sgd+sngrad3={tmp_path / 'old.json'}",
                                 f"sgd+sngrad2={tmp_path / 'none.json'}"])
    assert tuned == {"I": measure.TunedAlpha(0.2, "rms"),
                     "III": measure.TunedAlpha(0.3, "absolute"),
                     "II": measure.TunedAlpha(None, "absolute")}
    with pytest.raises(SngradError, match=r"alpha_reference 'median'.*allowed: absolute, rms"):
        command.parse_tuned([f"sgd+sngrad1={tmp_path / 'bad.json'}"])


def test_batch_alphas_divide_by_each_batch_rms_over_all_coordinates():
    var = np.array([[4.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_allclose(measure.batch_alphas("I", 0.5, "rms", var),
                               [0.5 / math.sqrt(1.5), 0.5, 0.5], rtol=1e-6)
    assert measure.batch_alphas("III", 0.5, "absolute", var) == 0.5
    np.testing.assert_allclose(measure.batch_alphas("II", 0.5, "rms", var), 0.5)


def test_noise_study_reads_an_rms_alpha_per_batch_over_every_coordinate():
    params, x, y = _mlp_problem()
    batch, n_batches, seed, alpha = 8, 6, 0, 0.8
    rows = measure.study_checkpoint(
        params, x, y, [batch], n_batches, seed,
        {"I": measure.TunedAlpha(alpha, "rms"), "III": measure.TunedAlpha(alpha, "rms"),
         "II": 0.5})
    absolute = measure.study_checkpoint(params, x, y, [batch], n_batches, seed,
                                        {"I": alpha, "III": measure.TunedAlpha(alpha)})
    # the study's draws (seed, B), its informative coordinates, and per batch the moments of
    # every coordinate: s_b over all of them, weights and biases, informative or not
    rng = np.random.default_rng([seed, batch])
    index = rng.integers(0, len(x), size=(n_batches, batch), dtype=np.int32)
    informative = np.concatenate([count for _, _, count in measure.exact_moments(params, x, y)]) > 0
    assert not informative.all()
    expected = {"I": [], "III": []}
    for idx in index:
        _, mean, var = stats.dense_stats(params, x[idx], y[idx])
        m_all, v_all = _flat(mean), _flat(var)
        s = math.sqrt(np.maximum(v_all, 0).mean())
        for variant in expected:
            f = np.asarray(scale_factor(variant, m_all[informative],
                                        np.maximum(v_all[informative], 0), alpha / s))
            expected[variant].append(f.mean())
    net = next(r for r in rows if r["layer"] == "all")
    for variant in expected:
        assert net[f"factor_mean_{variant}_tuned"] == pytest.approx(
            np.mean(expected[variant]), rel=2e-4)
        assert net[f"alpha_{variant}_tuned"] == alpha  # the CSV keeps best.json's alpha
    net_absolute = next(r for r in absolute if r["layer"] == "all")
    assert net["factor_mean_I_tuned"] != pytest.approx(net_absolute["factor_mean_I_tuned"])
    # II reads its alpha as given; the alpha = 1 columns are absolute whatever the tuning said
    for r, a in zip(rows, absolute, strict=True):
        assert r["factor_mean_I_alpha1"] == a["factor_mean_I_alpha1"]
        assert r["factor_mean_III_alpha1"] == a["factor_mean_III_alpha1"]
    assert math.isnan(absolute[0]["factor_mean_II_tuned"])
    assert 0 < net["factor_mean_II_tuned"] <= 1


def test_variant_two_is_measured_at_the_protocols_alpha_of_each_batch_size(tmp_path):
    """A II run's best.json with alpha_scaled is read as alpha_scaled / B at every batch size
    (the tuning protocol's unit), so the noise study's II factor at B equals the absolute
    factor at alpha_scaled / B; a best.json without alpha_scaled keeps its raw alpha."""
    path = tmp_path / "ii.json"
    path.write_text(json.dumps({"alpha": 0.25 / 16, "alpha_scaled": 0.25,
                                "alpha_reference": "absolute"}))
    (tuned,) = command.parse_tuned([f"sgd+sngrad2={path}"]).values()
    assert tuned == measure.TunedAlpha(0.25, "absolute", per_batch_size=True)
    params, x, y = _mlp_problem()
    rows = measure.study_checkpoint(params, x, y, [8, 16], 4, 0, {"II": tuned})
    for batch in (8, 16):
        fixed = measure.study_checkpoint(params, x, y, [batch], 4, 0, {"II": 0.25 / batch})
        got = next(r for r in rows if r["layer"] == "all" and r["batch_size"] == batch)
        want = next(r for r in fixed if r["layer"] == "all")
        assert got["factor_mean_II_tuned"] == want["factor_mean_II_tuned"]
    b8, b16 = (next(r for r in rows if r["layer"] == "all" and r["batch_size"] == b)
               for b in (8, 16))
    assert b8["factor_mean_II_tuned"] != b16["factor_mean_II_tuned"]
    path.write_text(json.dumps({"alpha": 0.5}))
    assert command.parse_tuned([f"sgd+sngrad2={path}"])["II"] == measure.TunedAlpha(0.5)
