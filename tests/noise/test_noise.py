"""The noise study: unbiased estimators against closed forms, the network moments, the command.

Linear regression with Gaussian inputs and label noise (the estimator-level tests):

    x ~ N(0, I_d),  y = x^T w* + eps,  eps ~ N(0, s^2),  l(w) = (x^T w - y)^2 / 2,
    g = x (x^T D - eps)  with  D = w - w*.

Then G = E[g] = E[x x^T] D = D, and by Isserlis' theorem
E[g g^T] = E[x x^T (x^T D)^2] + s^2 I = |D|^2 I + 2 D D^T + s^2 I, so

    Sigma = (|D|^2 + s^2) I + D D^T,     Sigma_ii = |D|^2 + s^2 + D_i^2,
    |G|^2 = |D|^2,   tr Sigma = d (|D|^2 + s^2) + |D|^2,   B_simple = tr Sigma / |D|^2,

and the batch mean of B i.i.d. examples has E (mu_i - G_i)^2 = Sigma_ii / B: the noise of the
mean falls as B^(-1/2).
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from sngrad import stats
from sngrad.analysis import noise_summary
from sngrad.data import Splits, save_splits
from sngrad.errors import SngradError
from sngrad.layout import NOISE_SUMMARY, Layout
from sngrad.models import cross_entropy, mlp_apply, mlp_init
from sngrad.noise import command, measure
from sngrad.report import noise as noise_section

DIM = 20
LABEL_NOISE = 1.0
BATCH_SIZES = (4, 16, 64, 256)


def _delta(scale: float) -> np.ndarray:
    d = np.linspace(-1.0, 1.0, DIM)
    return scale * d / np.linalg.norm(d)


def _closed_form(delta: np.ndarray) -> dict:
    g2 = float(delta @ delta)
    trace = DIM * (g2 + LABEL_NOISE**2) + g2
    return {
        "g2": g2,
        "trace": trace,
        "noise_scale": trace / g2 if g2 > 0 else math.inf,
        "sigma_diag": g2 + LABEL_NOISE**2 + delta**2,
    }


def _batches(delta, batch_size, n_batches, seed):
    """Per-example gradients (n_batches, B, d) of the linear regression problem."""
    rng = np.random.default_rng([seed, batch_size])
    x = rng.standard_normal((n_batches, batch_size, DIM))
    eps = LABEL_NOISE * rng.standard_normal((n_batches, batch_size))
    return x * (x @ delta - eps)[..., None]


def _moments(grads):
    mean = grads.mean(axis=1)
    return mean, grads.var(axis=1)  # population variance, as the network code computes it


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_unbiased_estimators_match_closed_forms(batch_size):
    delta = _delta(1.0)
    truth = _closed_form(delta)
    mean, var = _moments(_batches(delta, batch_size, 400, seed=1))
    est = measure.noise_scale_estimates((mean**2).sum(1), var.sum(1), batch_size)
    # the standard errors are small against the quantities, so agreement is informative
    assert est["trace_sigma_se"] < 0.1 * truth["trace"]
    assert abs(est["trace_sigma"] - truth["trace"]) < 3 * est["trace_sigma_se"]
    assert abs(est["g2_unbiased"] - truth["g2"]) < 3 * est["g2_unbiased_se"]
    assert abs(est["noise_scale"] - truth["noise_scale"]) < 3 * est["noise_scale_se"]
    # the same-batch estimate is biased towards (B - 1) B_simple / (B + B_simple) < B
    biased = est["noise_scale_biased"]
    expected = measure.biased_expectation(truth["noise_scale"], batch_size)
    assert abs(biased - expected) < 3 * est["noise_scale_biased_se"]
    assert biased < batch_size
    assert truth["noise_scale"] - biased > 5 * est["noise_scale_biased_se"]


def test_noise_of_the_mean_falls_as_inverse_root_batch():
    delta = _delta(1.0)
    truth = _closed_form(delta)
    errors, noise_of_mean = [], []
    for batch_size in BATCH_SIZES:
        grads = _batches(delta, batch_size, 200, seed=2)
        mean, var = _moments(grads)
        sq_error = ((mean - delta) ** 2).sum(0)
        errors.append(float(np.median(np.sqrt(sq_error / len(mean)))))
        signs = np.random.default_rng(batch_size).choice([-1.0, 1.0], size=grads.shape[:2])
        flip = (grads * signs[..., None]).mean(1)
        nonzero = np.full(mean.shape, batch_size)
        summary = measure.coordinate_summary(
            mean, var, flip, nonzero, np.ones(DIM, bool), batch_size, ()
        )
        noise_of_mean.append(measure.mean_and_se(summary["mean_noise"])[0])
        # E (mu_i - G_i)^2 = Sigma_ii / B
        expected = float(np.median(np.sqrt(truth["sigma_diag"] / batch_size)))
        assert errors[-1] == pytest.approx(expected, rel=0.15)
    slope, se = measure.fit_loglog_slope(BATCH_SIZES, errors)
    assert se < 0.05
    assert abs(slope + 0.5) < 3 * se + 1e-3
    # median sigma / sqrt(B): sigma is biased low by sqrt((B - 1)/B) at small B only
    slope, se = measure.fit_loglog_slope(BATCH_SIZES[1:], noise_of_mean[1:])
    assert se < 0.05
    assert abs(slope + 0.5) < 3 * se + 0.01


def test_pure_noise_reference_tells_signal_from_noise():
    """Without signal (D = 0) half the coordinates exceed the sign-flipped median; with a
    strong signal most do."""
    batch_size = 64
    shares = {}
    for scale in (0.0, 4.0):
        grads = _batches(_delta(scale), batch_size, 100, seed=3)
        mean, var = _moments(grads)
        signs = np.random.default_rng(3).choice([-1.0, 1.0], size=grads.shape[:2])
        flip = (grads * signs[..., None]).mean(1)
        summary = measure.coordinate_summary(
            mean, var, flip, np.full(mean.shape, batch_size), np.ones(DIM, bool), batch_size,
            (("II_alpha1", "II", 1.0),),
        )  # fmt: skip
        shares[scale] = measure.mean_and_se(summary["snr_above_share"])
        if scale == 0.0:
            null = measure.mean_and_se(summary["snr_pure_noise"])[0]
            assert null == pytest.approx(measure.gaussian_snr_null(batch_size), rel=0.1)
    share, se = shares[0.0]
    assert abs(share - 0.5) < 3 * se
    share, se = shares[4.0]
    assert share - 0.5 > 5 * se


def test_unbiased_norms_rejects_batch_of_one():
    with pytest.raises(SngradError, match=">= 2"):
        measure.unbiased_norms([1.0], [0.0], 1)


def test_fit_loglog_slope_recovers_power_law():
    b = np.array([8, 16, 32, 64, 128])
    slope, se = measure.fit_loglog_slope(b, 3.0 * b**-0.5)
    assert slope == pytest.approx(-0.5, abs=1e-12)
    assert se < 1e-10
    rng = np.random.default_rng(0)
    slope, se = measure.fit_loglog_slope(b, 3.0 * b**0.25 * np.exp(0.05 * rng.normal(size=5)))
    assert abs(slope - 0.25) < 4 * se
    assert math.isnan(measure.fit_loglog_slope([8, 16], [1.0, 2.0])[0])


# ----------------------------------------------------------------------------- the network


def _mlp_problem(n=300, sizes=(12, 16, 4), seed=0):
    params = mlp_init(jax.random.PRNGKey(seed), list(sizes))
    rng = np.random.default_rng(seed)
    # half of the inputs exactly zero, like background pixels, and one dead input column
    x = np.maximum(rng.normal(size=(n, sizes[0])), 0).astype(np.float32)
    x[:, 0] = 0.0
    y = rng.integers(0, sizes[-1], n).astype(np.int32)
    return params, x, y


def _with_bias(w, b):
    return np.concatenate([np.asarray(w), np.asarray(b)[None]], axis=0).reshape(-1)


def test_layer_moments_match_per_example_gradients():
    params, x, y = _mlp_problem()
    xb, yb = x[:24], y[:24]
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=24).astype(np.float32)
    moments = measure.layer_moments(params, jnp.asarray(xb), jnp.asarray(yb), jnp.asarray(signs))
    _, mean_ref, var_ref = stats.dense_stats(params, xb, yb)

    def example_loss(p, x1, y1):
        return cross_entropy(mlp_apply(p, x1), y1)

    grads = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(params, xb, yb)
    for layer, (mean, var, flip, nonzero) in enumerate(moments):
        per_example = np.concatenate(
            [np.asarray(grads[layer][0]), np.asarray(grads[layer][1])[:, None]], axis=1
        ).reshape(24, -1)
        np.testing.assert_allclose(mean, _with_bias(*mean_ref[layer]), atol=1e-6)
        np.testing.assert_allclose(var, _with_bias(*var_ref[layer]), atol=1e-6)
        np.testing.assert_allclose(flip, (signs[:, None] * per_example).mean(0), atol=1e-6)
        np.testing.assert_array_equal(nonzero, (per_example != 0).sum(0))
    # the dead input column gives weights with no gradient for any example
    assert np.all(np.asarray(moments[0][3]).reshape(13, 16)[0] == 0)


def test_exact_moments_over_padded_chunks():
    params, x, y = _mlp_problem(n=250)
    exact = measure.exact_moments(params, x, y, chunk=64)  # 250 = 3 * 64 + 58: one padded chunk
    _, mean_ref, var_ref = stats.dense_stats(params, x, y)
    for layer, (g, sigma2, count) in enumerate(exact):
        np.testing.assert_allclose(g, _with_bias(*mean_ref[layer]), atol=1e-6)
        np.testing.assert_allclose(sigma2, _with_bias(*var_ref[layer]), atol=1e-6)
        assert count.max() <= 250


def test_network_estimates_agree_with_the_full_training_split():
    params, x, y = _mlp_problem(n=400)
    rows = measure.study_checkpoint(params, x, y, [8, 64], 48, 0, {"I": 0.5, "III": None})
    assert [r["layer"] for r in rows] == ["0", "1", "all"] * 2
    for r in rows:
        assert abs(r["noise_scale"] - r["noise_scale_exact"]) < 3.5 * r["noise_scale_se"]
        assert abs(r["trace_sigma"] - r["trace_sigma_exact"]) < 3.5 * r["trace_sigma_se"]
        assert r["noise_scale_biased"] < r["batch_size"]
        assert math.isnan(r["factor_mean_III_tuned"]) and math.isnan(r["factor_mean_II_tuned"])
        assert 0 <= r["shrink_share_I_tuned"] <= 1
        assert r["alpha_I_tuned"] == 0.5
    net = [r for r in rows if r["layer"] == "all"]
    parts = [r for r in rows if r["layer"] != "all" and r["batch_size"] == 8]
    # the network's value comes from network sums, not from the layers' ratios
    assert net[0]["trace_sigma_exact"] == pytest.approx(
        sum(r["trace_sigma_exact"] for r in parts), rel=1e-9
    )
    # at B = 8 the biased estimate is far below the exact noise scale
    assert net[0]["noise_scale_exact"] - net[0]["noise_scale_biased"] > 5 * net[0][
        "noise_scale_biased_se"
    ]
    # sparse and single shares are consistent and fall with the batch size
    assert net[0]["single_share"] <= net[0]["sparse_share"]
    assert net[1]["sparse_share"] < net[0]["sparse_share"]


# ----------------------------------------------------------------------------- command


def _write_inputs(tmp_path, n_train=200, sizes=(12, 16, 4)):
    _, x, y = _mlp_problem(n=n_train, sizes=sizes)
    rng = np.random.default_rng(5)
    splits = Splits(
        x_train=x, y_train=y,
        x_val=rng.normal(size=(20, sizes[0])).astype(np.float32),
        y_val=rng.integers(0, sizes[-1], 20).astype(np.int32),
        x_test=rng.normal(size=(20, sizes[0])).astype(np.float32),
        y_test=rng.integers(0, sizes[-1], 20).astype(np.int32),
        num_classes=sizes[-1], name="toy",
    )  # fmt: skip
    data = save_splits(splits, tmp_path / "toy.npz")
    ref = tmp_path / "reference"
    ref.mkdir()
    checkpoints = {"init": 0, "p100": 3}
    for i, name in enumerate(checkpoints):
        p = mlp_init(jax.random.PRNGKey(i), list(sizes))
        leaves = {}
        for layer, (w, b) in enumerate(p):
            leaves[f"w{layer}"], leaves[f"b{layer}"] = np.asarray(w), np.asarray(b)
        np.savez(ref / f"{name}.npz", **leaves)
    (ref / "reference.json").write_text(
        json.dumps({"checkpoints": checkpoints, "seed": 1, "learning_rate": 0.1, "batch_size": 8})
    )
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"alpha": 0.2}))
    return data, ref, best


def test_cli_writes_one_row_per_checkpoint_batch_size_and_layer(tmp_path):
    data, ref, best = _write_inputs(tmp_path)
    layout = Layout("toy", root=str(tmp_path / "results"))
    out = layout.noise("toy")
    argv = [
        "--data", str(data), "--reference-dir", str(ref), "--tuned", f"sgd+sngrad2={best}",
        "--batch-sizes", "8,16,256", "--batches", "4", "--out", out,
    ]  # fmt: skip
    assert command.cli(argv) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == measure.csv_columns()
    # 256 > 200 training examples is dropped; 2 checkpoints x 2 sizes x (2 layers + all)
    assert len(frame) == 12
    assert set(frame["batch_size"]) == {8, 16}
    assert list(frame["checkpoint"].unique()) == ["init", "p100"]
    assert frame["factor_mean_II_tuned"].notna().all()
    assert frame["factor_mean_I_tuned"].isna().all()

    summary = noise_summary.summary_table(layout, ["toy", "absent"])
    assert list(summary["checkpoint"]) == ["init", "p100"]
    assert (summary["summary_batch_size"] == 16).all()
    assert {"b_simple", "mean_noise_slope", "sparse_share_layer0"} <= set(summary.columns)
    from sngrad.io import write_frame

    write_frame(layout.analysis(NOISE_SUMMARY), summary)
    context = noise_section.report_context(layout, ["toy", "absent"])
    assert context["available"] and context["missing"] == ["absent"]
    toy = context["datasets"][0]
    assert toy["first"]["checkpoint"] == "init" and toy["last"]["epoch"] == "3"
    assert "±" in toy["first"]["b_simple"]
    assert set(toy["last"]["shrink_share_tuned"]) == {"I", "II", "III"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tuned": ["adam=best"]}, "RUN=PATH"),
        ({"batch_sizes": "300,400"}, "exceeds"),
        ({"batch_sizes": "1,8"}, ">= 2"),
        ({"batches": "1"}, "--batches"),
        ({"no_reference": True}, "reference.json"),
    ],
)
def test_cli_rejects_bad_input_before_writing(tmp_path, change, message):
    data, ref, best = _write_inputs(tmp_path)
    if change.get("no_reference"):
        (ref / "reference.json").unlink()
    out = tmp_path / "noise.csv"
    argv = [
        "--data", str(data), "--reference-dir", str(ref),
        "--tuned", *change.get("tuned", [f"sgd+sngrad1={best}"]),
        "--batch-sizes", change.get("batch_sizes", "8"),
        "--batches", change.get("batches", "4"), "--out", str(out),
    ]  # fmt: skip
    with pytest.raises(SngradError, match=message):
        command.cli(argv)
    assert not out.exists()


def test_report_context_without_summary(tmp_path):
    context = noise_section.report_context(Layout("none", root=str(tmp_path)), ["mnist"])
    assert context["available"] is False and context["missing"] == ["mnist"]


def _render_section(context: dict) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader("paper/templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    figures = {
        name: {"markdown": f"![{name}](figures/{name}.png)"}
        for name in ("noise_vs_batch", "snr_vs_batch", "noise_scale_over_training",
                     "shrink_vs_batch")
    }  # fmt: skip
    return env.get_template("noise.md.j2").render(noise=context, figures=figures)


def test_template_renders_the_numbers_of_the_summary(tmp_path):
    data, ref, best = _write_inputs(tmp_path)
    layout = Layout("toy", root=str(tmp_path / "results"))
    argv = [
        "--data", str(data), "--reference-dir", str(ref), "--tuned", f"sgd+sngrad1={best}",
        "--batch-sizes", "8,16,32", "--batches", "4", "--out", layout.noise("toy"),
    ]  # fmt: skip
    assert command.cli(argv) == 0
    from sngrad.io import write_frame

    write_frame(layout.analysis(NOISE_SUMMARY), noise_summary.summary_table(layout, ["toy"]))
    context = noise_section.report_context(layout, ["toy"])
    text = _render_section(context)
    toy = context["datasets"][0]
    assert "### toy" in text
    assert toy["last"]["b_simple"] in text and toy["mean_error_slope"] in text
    assert "figures/shrink_vs_batch.png" in text
    assert "nan" not in text.lower().replace("nanmedian", "")

    empty = Layout("none", root=str(tmp_path))
    missing = _render_section(noise_section.report_context(empty, ["x"]))
    assert "has not run" in missing and "x" in missing


def test_pooling_the_parts_over_batch_sizes_stays_unbiased():
    delta = _delta(1.0)
    truth = _closed_form(delta)
    rows = []
    for batch_size in BATCH_SIZES:
        mean, var = _moments(_batches(delta, batch_size, 100, seed=4))
        rows.append(measure.noise_scale_estimates((mean**2).sum(1), var.sum(1), batch_size))
    value, se = noise_summary.pooled_noise_scale(
        [r["g2_unbiased"] for r in rows], [r["g2_unbiased_se"] for r in rows],
        [r["trace_sigma"] for r in rows], [r["trace_sigma_se"] for r in rows],
        [r["g2_trace_cov"] for r in rows], [100 * b for b in BATCH_SIZES],
    )  # fmt: skip
    assert se < 0.1 * truth["noise_scale"]
    assert abs(value - truth["noise_scale"]) < 3 * se
    # pooling is at least as precise as the best single batch size (a batch size whose |G|^2
    # is not resolved has no noise scale of its own to compare with)
    assert se <= min(r["noise_scale_se"] for r in rows if r["noise_scale_resolved"]) * 1.05


def test_unresolved_gradient_norm_gives_no_noise_scale():
    """A zero-mean problem (delta = 0: |G|^2 = 0) leaves the unbiased |G|^2 within its error of
    zero: the per-batch-size and the pooled B_simple are NaN and flagged, not a number, and the
    report prints "not resolved"; a resolved one (delta = 1) keeps its value."""
    for delta, resolved in ((_delta(0.0), False), (_delta(1.0), True)):
        rows = []
        for batch_size in BATCH_SIZES:
            mean, var = _moments(_batches(delta, batch_size, 100, seed=5))
            rows.append(measure.noise_scale_estimates((mean**2).sum(1), var.sum(1), batch_size))
        assert [r["noise_scale_resolved"] for r in rows] == [resolved] * len(rows)
        assert all(math.isnan(r["noise_scale"]) != resolved for r in rows)
        value, _ = noise_summary.pooled_noise_scale(
            [r["g2_unbiased"] for r in rows], [r["g2_unbiased_se"] for r in rows],
            [r["trace_sigma"] for r in rows], [r["trace_sigma_se"] for r in rows],
            [r["g2_trace_cov"] for r in rows], [100 * b for b in BATCH_SIZES],
        )  # fmt: skip
        assert math.isnan(value) != resolved
    # the boundary of the rule itself: resolved strictly above RESOLVED_Z standard errors
    z = measure.RESOLVED_Z
    assert not measure.is_resolved(z * 1.0, 1.0) and measure.is_resolved(z * 1.0 + 1e-9, 1.0)
    assert not measure.is_resolved(-5.0, 1.0) and not measure.is_resolved(1.0, math.nan)
    assert "noise_scale_resolved" in measure.csv_columns()


def test_report_prints_not_resolved_for_an_unresolved_noise_scale():
    row = {"b_simple": math.nan, "b_simple_se": math.nan, "b_simple_resolved": "False"}
    assert not noise_section._resolved(row)
    assert noise_section._resolved({**row, "b_simple_resolved": True})
