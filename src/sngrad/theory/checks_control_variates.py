"""Theory checks of control variates with an SVRG snapshot: section (g).

g_j is example j's gradient at the current parameters, h_j at a snapshot, and the full-data mean
G_snap = E[h] is known. With batch means mu, nu the estimate mu - lambda (nu - G_snap) is
unbiased for any lambda fixed before the batch, with variance
(Var g + lambda^2 Var h - 2 lambda Cov) / B, smallest at lambda* = Cov / Var h where it is
(1 - rho^2) Var g / B.

Distance from the snapshot: per-example losses a_j theta^2 / 2 - b_j theta with Gaussian
curvature and target noise give jointly Gaussian pairs whose covariance is known at every
distance delta = theta - theta_snap (``control_variates.NoisyQuadratic``). Checked: the variance
at lambda*, at SVRG's lambda = 1, and with lambda estimated on the same batch, which for
Gaussian pairs costs exactly the factor (B - 2) / (B - 3). At B = 16 that factor is within
0.5 % of the wrong (B - 1) / (B - 2); a separate run at B = 8, where the two differ by 2.8 %,
measures the factor itself, paired against the lambda* estimate on the same batches, and counts
only if its error bar separates them.

Bias of the estimated coefficient: with h = z, g = z + c (z^2 - 1) + noise
(``control_variates.SkewedPairs``) lambda estimated on the same batch biases the estimate by
exactly -2 c / B (``control_variates.cv_same_batch_bias``); a lambda from the previous batch
does not bias it at all. Biases are measured paired against the lambda* estimate on the same
batches, which is unbiased and shares most of the noise.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pandas as pd

from sngrad.theory.control_variates import (
    NoisyQuadratic,
    SkewedPairs,
    cv_correlation_squared,
    cv_same_batch_bias,
    cv_same_batch_variance,
    cv_variance,
    simulate_control_variates,
)
from sngrad.theory.processes import mean_and_se
from sngrad.theory.record import CheckRecord, tag
from sngrad.transforms import LAGGED_FIRST_LAMBDA, LAMBDA_RANGE

B_G = 16
THETA_SNAP_G, SA_G, SB_G = 1.0, 1.0, 1.0
DELTAS_G = np.array([-2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 1.0, 2.0])
B_FACTOR = 8  # where (B-2)/(B-3) and the wrong (B-1)/(B-2) differ by 2.8 %
BATCHES_G = (16, 32, 64, 128, 256)
SKEW_G = 0.5
NOISE_G = 0.5
CLAIMS_G = {
    "optimal": "variance at lambda* = (1 - rho^2) Var g / B",
    "svrg": "variance at lambda = 1 (SVRG) = (Var g + Var h - 2 Cov) / B",
    "same_batch": "lambda from the same batch, Gaussian pairs: (B-2)/(B-3) (1 - rho^2) Var g / B",
    "lagged": "lambda from the previous batch, Gaussian pairs: the same (B-2)/(B-3) factor",
}


def noisy_quadratic(deltas) -> NoisyQuadratic:
    """The section's pair model at distances ``deltas`` from the snapshot, one per coordinate."""
    return NoisyQuadratic(theta=tuple(float(THETA_SNAP_G + d) for d in deltas),
                          theta_snap=THETA_SNAP_G, curvature=1.0, target=0.0,
                          curvature_std=SA_G, target_std=SB_G)


def predicted_variances(pairs, batch_size: int) -> dict[str, np.ndarray]:
    """Each estimator's exact variance per coordinate (Gaussian pairs for the estimated
    coefficients, which have the same-batch factor whether from this batch or the last)."""
    m = pairs.moments()
    return {
        "raw": cv_variance(pairs, batch_size, 0.0),
        "optimal": cv_variance(pairs, batch_size, m["cov"] / m["var_h"]),
        "svrg": cv_variance(pairs, batch_size, 1.0),
        "same_batch": cv_same_batch_variance(pairs, batch_size),
        "lagged": cv_same_batch_variance(pairs, batch_size),
    }


def control_variates(record: CheckRecord, key, sizes, sizes_factor) -> tuple[dict, dict]:
    """Section (g). ``sizes``: (chains, batches per chain) of the distance and bias runs;
    ``sizes_factor``: the same for the B = 8 factor run.

    Returns the plot's data (``distance``: per delta the measured variance and SE of every
    estimator, ``predicted``: ``predicted_variances`` per delta, ``bias``: per B the measured
    biases and SEs with the prediction) and the report's settings.
    """
    n_chains_g, n_batches_g = sizes
    quad = noisy_quadratic(DELTAS_G)
    run = simulate_control_variates(key, quad, batch_sizes=(B_G,), n_chains=n_chains_g,
                                    n_batches=n_batches_g)[B_G]
    moments = quad.moments()
    lam_star = moments["cov"] / moments["var_h"]
    rho2 = cv_correlation_squared(quad)
    predicted = predicted_variances(quad, B_G)
    rows = []
    for i, delta in enumerate(DELTAS_G):
        row = {"delta": delta, "theta": THETA_SNAP_G + delta, "rho2": rho2[i],
               "lambda_star": lam_star[i]}
        for name in ("raw", "optimal", "svrg", "same_batch", "lagged", "clipped"):
            v, se = run.mse(name)
            row[f"var_{name}"], row[f"se_{name}"] = v[i], se[i]
        rows.append(row)
        if delta == 0:
            continue  # g_j = h_j: the corrected estimates are exactly G, nothing to compare
        for name, claim in CLAIMS_G.items():
            record.check(f"g_{name}_delta_{tag(delta)}", "g", f"delta = {delta:g}: {claim}",
                         predicted[name][i], row[f"var_{name}"], row[f"se_{name}"],
                         batch_size=B_G)

    # The factor (B-2)/(B-3) itself at B = 8, against the wrong (B-1)/(B-2): the excess of the
    # same-batch (or previous-batch) squared error over the lambda* one on the same batches is
    # V* / (B - 3), V* the exact variance at lambda*; pairing removes most of the batch noise.
    pairs_factor = SkewedPairs(snap_std=(1.0,), slope=(1.0,), skew=(0.0,), noise=(NOISE_G,))
    n_chains_f, n_batches_f = sizes_factor
    run_factor = simulate_control_variates(jax.random.fold_in(key, 2), pairs_factor,
                                           batch_sizes=(B_FACTOR,), n_chains=n_chains_f,
                                           n_batches=n_batches_f)[B_FACTOR]
    v_star = float(cv_variance(pairs_factor, B_FACTOR, 1.0)[0])  # lambda* = slope = 1
    for name, which in (("same_batch", "the same batch"), ("lagged", "the previous batch")):
        excess, excess_se = mean_and_se(run_factor.sq_error[name][:, 0]
                                        - run_factor.sq_error["optimal"][:, 0])
        record.check(f"g_{name}_factor_B_{B_FACTOR}", "g",
                     f"B = {B_FACTOR}: lambda from {which} multiplies the variance at lambda* by "
                     "(B-2)/(B-3), not (B-1)/(B-2) (paired)",
                     (B_FACTOR - 2) / (B_FACTOR - 3), 1 + excess / v_star, excess_se / v_star,
                     alternative=(B_FACTOR - 1) / (B_FACTOR - 2), batch_size=B_FACTOR)

    pairs = SkewedPairs(snap_std=(1.0,), slope=(1.0,), skew=(SKEW_G,), noise=(NOISE_G,))
    runs_bias = simulate_control_variates(jax.random.fold_in(key, 1), pairs,
                                          batch_sizes=BATCHES_G, n_chains=n_chains_g,
                                          n_batches=n_batches_g)
    rows_bias = []
    for B, run_b in runs_bias.items():
        bias_pred = float(cv_same_batch_bias(pairs, B)[0])
        row = {"B": B, "predicted": bias_pred}
        for name in ("same_batch", "clipped", "lagged"):
            b, se = run_b.bias(name)
            row[name], row[f"{name}_se"] = b[0], se[0]
        rows_bias.append(row)
        record.check(f"g_bias_same_batch_B_{B}", "g",
                     f"B = {B}: lambda from the same batch biases the estimate by "
                     "-E[r h^2] / (B Var h)", bias_pred, row["same_batch"], row["same_batch_se"],
                     batch_size=B)
        record.check(f"g_bias_lagged_B_{B}", "g",
                     f"B = {B}: lambda from the previous batch leaves no bias (error in units "
                     "of the same-batch bias)", 0.0, row["lagged"], row["lagged_se"],
                     scale=abs(bias_pred), batch_size=B)
    bias = pd.DataFrame(rows_bias)
    # O(1/B): slope of log |bias| against log B, weighted by the relative standard errors.
    weights = np.abs(bias.same_batch) / bias.same_batch_se
    (slope, _), slope_cov = np.polyfit(np.log(bias.B), np.log(np.abs(bias.same_batch)), 1,
                                       w=weights, cov="unscaled")
    record.check("g_bias_slope", "g",
                 "the same-batch bias is O(1/B): slope of log |bias| against log B",
                 -1.0, slope, math.sqrt(slope_cov[0, 0]))

    svrg_worse = [float(d) for d, r in zip(DELTAS_G, predicted["svrg"] / predicted["raw"],
                                           strict=True) if r > 1]
    lagged = record.named("g_bias_lagged")
    raw = predicted["raw"]
    params = {
        "batch_size": B_G, "theta_snap": THETA_SNAP_G, "curvature_std": SA_G,
        "target_std": SB_G, "deltas": DELTAS_G.tolist(), "rho2": rho2.tolist(),
        "lambda_star": lam_star.tolist(), "same_batch_factor": (B_G - 2) / (B_G - 3),
        "svrg_worse_than_sgd_at": svrg_worse, "skew": SKEW_G, "noise": NOISE_G,
        "bias_batches": list(BATCHES_G),
        "bias_times_B": (bias.same_batch * bias.B).tolist(),
        "clipped_bias_times_B": (bias.clipped * bias.B).tolist(),
        "lambda_range": list(LAMBDA_RANGE), "lagged_first_lambda": LAGGED_FIRST_LAMBDA,
        "n_batches": n_chains_g * n_batches_g,
        "factor_batch_size": B_FACTOR, "factor_n_batches": n_chains_f * n_batches_f,
        "factor_wrong": (B_FACTOR - 1) / (B_FACTOR - 2),
        # how far (B-2)/(B-3) is from the wrong (B-1)/(B-2) at the distance table's B
        "same_batch_factor_gap": (B_G - 2) / (B_G - 3) / ((B_G - 1) / (B_G - 2)) - 1,
        # the tables of the report, as ratios to the raw mean's predicted variance
        "distance_table": [
            {"delta": r["delta"], "rho2": r["rho2"], "lambda_star": r["lambda_star"],
             **{f"{n}_pred": float(predicted[n][i] / raw[i])
                for n in ("optimal", "same_batch", "svrg", "lagged")},
             **{f"{n}_meas": float(r[f"var_{n}"] / raw[i])
                for n in ("raw", "optimal", "same_batch", "svrg", "lagged")},
             **{f"{n}_se": float(r[f"se_{n}"] / raw[i])
                for n in ("raw", "optimal", "same_batch", "svrg", "lagged")},
             **{f"{n}_z": record.z_of(f"g_{n}_delta_{tag(r['delta'])}")
                for n in ("optimal", "same_batch", "svrg", "lagged")}}
            for i, r in enumerate(rows)],
        "bias_table": [{**{k: float(v) for k, v in r.items()},
                        "same_batch_z": record.z_of(f"g_bias_same_batch_B_{r['B']}"),
                        "lagged_z": record.z_of(f"g_bias_lagged_B_{r['B']}")} for r in rows_bias],
        "lagged_max_rel_bias": max(c["rel_error"] for c in lagged),
        "lagged_max_z": max(abs(c["z"]) for c in lagged),
        # the same-batch bias against the noise the optimal correction leaves in the batch mean
        "bias_over_remaining_std": (bias.predicted.abs() / np.sqrt(
            [cv_variance(pairs, B, 1.0)[0] for B in BATCHES_G])).tolist(),
    }
    data = {"distance": pd.DataFrame(rows), "predicted": predicted, "bias": bias}
    return data, params
