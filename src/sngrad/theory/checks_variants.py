"""Theory checks of the sngrad variants with per-example noise: sections (e) and (e').

(e) A separable quadratic; each step draws B per-example gradients, so every variant sees a
batch mean mu and a batch standard deviation sigma_hat. For I and III the factor depends on the
batch only through sigma_hat, independent of mu for Gaussian per-example gradients: the step is
linear in the gradient with a random gain a, and Var x = E[a^2] s^2 / (k (2 E[a] - k E[a^2]))
exactly (``closed_forms.random_gain_variance``). Where I's clip is active (alpha sigma > 1) its
leading-order picture is RMSProp-like, T = eta sigma / (2 alpha B). Variant II moves by c mu^3,
c = eta / (alpha sigma_hat^2), wherever its clip is inactive, which takes alpha B >> 1; its
stationary variance is the small-gamma series ``variant_maps.variant_ii_series``,
gamma = k eta / (alpha (B - 5)). The identity E[theta_i u_i] = E[u_i^2] / 2 is checked for
every method.

(e') Which map the constant 27 of ``variant_maps.variant_ii_variance`` is exact for: the
truncated map u = c (xi^3 + 3 k x xi^2), where the 27-term is 30 % of the denominator (an exact
check), and the real step at gamma = 0.01 against the series, with the constants 27 and 45
beside it (the real step's first correction has the constant 30).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from sngrad.theory.checks_quadratic import identity
from sngrad.theory.closed_forms import discrete_variance, random_gain_variance
from sngrad.theory.pass_rule import z_score
from sngrad.theory.processes import Quadratic
from sngrad.theory.record import CheckRecord
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

SIGMA_E = np.array([0.5, 4.0])  # per-example gradient noise std of the two coordinates
K_E = np.array([1.0, 1.0])
B_E, ETA_E = 32, 0.1
ALPHA_E = {"sgd": 1.0, "I": 1.0, "II": 2.0, "III": 0.2}

# (e'): the truncated map of tests/analysis/test_verdict_pins.py, and the real step at gamma = 0.01
MAP_TRUNC = {"k": 1.0, "sigma": 1.0, "batch_size": 32, "alpha": 1.0, "eta": 1.8}
GAMMA_REAL = 0.01
MAP_REAL = {"k": 1.0, "sigma": 1.0, "batch_size": B_E, "alpha": ALPHA_E["II"]}
MAP_REAL["eta"] = GAMMA_REAL * MAP_REAL["alpha"] * (MAP_REAL["batch_size"] - 5) / MAP_REAL["k"]
CONSTANTS = (27, 30, 45)


def require_clip_inactive(share: float, floor: float, what: str) -> None:
    """Variant II's formulas need its clip inactive (alpha B >> 1): the clipped batches' share
    of E[u^2] is about the relative error it causes, so hold it to a tenth of the floor."""
    if not share < floor / 10:
        raise ValueError(f"{what} is outside variant II's validity: clip share {share:.2g} "
                         f">= {floor / 10:g}")


def sngrad_variants(record: CheckRecord, key, sizes) -> tuple[dict, dict]:
    """Section (e). ``sizes``: (chains, burn-in steps, measured steps) per method.

    Returns per method the measured temperatures T = k Var x with their standard errors, the
    predictions and both sides of the identity (``results[method]``), the RMSProp-like T of
    the clipped coordinate, and the report's settings.
    """
    clip_share = variant_ii_clip_share(ALPHA_E["II"], B_E)
    require_clip_inactive(clip_share, record.floor,
                          f"variant II at alpha B = {ALPHA_E['II'] * B_E:g}")
    n_chains, burn, steps = sizes
    loss = Quadratic.diagonal(K_E)
    s2 = SIGMA_E**2 / B_E
    results = {}
    for m_i, (method, alpha) in enumerate(ALPHA_E.items()):
        run = simulate(jax.random.fold_in(key, m_i), loss, n_chains=n_chains, burn_in=burn,
                       n_steps=steps, eta=ETA_E, method=method, alpha=alpha,
                       per_example_std=SIGMA_E, batch_size=B_E)
        v, se = run.variance()
        pred = np.empty(2)
        for i in range(2):
            order = {}
            if method == "sgd":
                pred[i] = discrete_variance(ETA_E, K_E[i], s2[i])
                claim = "plain SGD: Var = eta s^2 / (k (2 - eta k)), s^2 = sigma^2 / B"
            elif method == "II":
                terms = variant_ii_series(K_E[i], SIGMA_E[i], B_E, alpha, ETA_E)
                pred[i] = terms[:3].sum()
                claim = ("variant II: series V0 (1 + 5 gamma + a_2 gamma^2) of the cubic step "
                         "(derived here)")
                # a truncated asymptotic series: its error is the first term left out, plus
                # the clip's share; the other predictions are exact for Gaussian noise
                order = dict(kind="leading-order",
                             expected_error=abs(terms[3]) / pred[i] + clip_share)
            else:
                m1, m2 = sngrad_gain_moments(method, SIGMA_E[i], B_E, alpha, ETA_E)
                pred[i] = random_gain_variance(K_E[i], s2[i], m1, m2)
                claim = f"variant {method}: exact random-gain variance"
            record.check(f"e_{method}_x{i + 1}", "e", claim, pred[i], v[i], se[i], eta=ETA_E,
                         k=float(K_E[i]), noise_var=float(s2[i]), batch_size=B_E, **order)
            identity(record, f"e_identity_{method}_x{i + 1}", method, run, i, eta=ETA_E,
                     k=float(K_E[i]), noise_var=float(s2[i]), batch_size=B_E)
        results[method] = {"T": K_E * v, "T_se": K_E * se, "T_pred": K_E * pred,
                           "theta_u": run.mean_theta_u.mean(0),
                           "half_u2": run.mean_u2.mean(0) / 2}

    # Variant I where its clip is active (alpha sigma_2 > 1): the RMSProp-like leading order
    # treats sigma_hat as the true sigma and ignores the discrete factor.
    clip_i = int(np.argmax(ALPHA_E["I"] * SIGMA_E))
    rms_t = ETA_E * SIGMA_E[clip_i] / (2 * ALPHA_E["I"] * B_E)
    exact_i = results["I"]["T_pred"][clip_i]
    record.check(f"e_I_rmsprop_x{clip_i + 1}", "e",
                 "variant I, clip active: RMSProp-like T = eta sigma / (2 alpha B) (leading order)",
                 rms_t, results["I"]["T"][clip_i], results["I"]["T_se"][clip_i],
                 kind="leading-order", expected_error=exact_i / rms_t - 1, eta=ETA_E,
                 k=float(K_E[clip_i]), noise_var=float(s2[clip_i]), batch_size=B_E)
    # Split the gap between the plug-in and the exact prediction into its two causes: sigma_hat
    # is random (SDE limit with the random gain) and the steps are finite (the rest).
    m1, m2 = sngrad_gain_moments("I", SIGMA_E[clip_i], B_E, ALPHA_E["I"], ETA_E)
    random_gain_sde_t = m2 * s2[clip_i] / (2 * m1)
    ii_args = (K_E[0], SIGMA_E[0], B_E, ALPHA_E["II"], ETA_E)
    params = {"sigma": SIGMA_E.tolist(), "k": K_E.tolist(), "batch_size": B_E, "eta": ETA_E,
              "alpha": ALPHA_E, "clip_coordinate": clip_i + 1, "rmsprop_T": rms_t,
              "I_exact_over_rmsprop": float(exact_i / rms_t),
              "I_batch_sigma_factor": float(random_gain_sde_t / rms_t),
              "I_discrete_factor": float(exact_i / random_gain_sde_t),
              "II_over_sgd": (results["II"]["T"] / results["sgd"]["T"]).tolist(),
              "II_leading_ratio": 5 / (ALPHA_E["II"] * B_E),
              "II_alpha_B": ALPHA_E["II"] * B_E, "II_clip_share": clip_share,
              "II_clip_share_alpha_1": variant_ii_clip_share(1.0, B_E),
              # a_p of Var x = V0 sum_p a_p gamma^p: 1, 5, a_2, a_3
              "II_series_coefficients": variant_ii_coefficients(B_E).tolist(),
              "II_gamma": variant_ii_gamma(*ii_args),
              # the closed form with 27 against the real step's series, relative
              "II_formula27_error": float(variant_ii_variance(*ii_args)
                                          / variant_ii_series(*ii_args)[:3].sum() - 1),
              # T_2 / T_1 per method: how far each is from a single temperature
              "temperature_ratio": {m: float(r["T"][1] / r["T"][0])
                                    for m, r in results.items()}}
    return {"results": results, "clip_coordinate": clip_i, "rmsprop_T": rms_t}, params


def closed_form(const, k, sigma, batch_size, alpha, eta):
    """``variant_maps.variant_ii_variance`` with its constant 27 replaced by ``const``:
    15 E[c^2] s^6 / (6 k E[c] s^2 - const k^2 E[c^2] s^4)."""
    c1, c2 = sngrad_gain_moments("II", sigma, batch_size, alpha, eta)
    s2 = sigma**2 / batch_size
    return 15 * c2 * s2**3 / (6 * k * c1 * s2 - const * k * k * c2 * s2 * s2)


def relaxation_burn_in(m, relaxations=10):
    """Steps for x^2 to forget the start x = 0: the step's linear restoring rate is
    r = 3 k E[c] s^2, so after n steps what is left of the start is exp(-2 r n)."""
    c1, _ = sngrad_gain_moments("II", m["sigma"], m["batch_size"], m["alpha"], m["eta"])
    return math.ceil(relaxations / (3 * m["k"] * c1 * m["sigma"] ** 2 / m["batch_size"]))


def map_summary(m, measured, se, floor):
    """Predictions over the common leading term V0, and the z of the measurement against each
    closed form (constants 27, 30, 45)."""
    v0 = variant_ii_series(**m, n_terms=1)[0]
    forms = {str(c): closed_form(c, **m) for c in CONSTANTS}
    return {**m, "gamma": variant_ii_gamma(**m), "measured_over_v0": measured / v0,
            "se_over_v0": se / v0, "formula_over_v0": {c: f / v0 for c, f in forms.items()},
            "z_formula": {c: z_score(f, measured, se, floor) for c, f in forms.items()}}


def variant_ii_maps(record: CheckRecord, key, sizes) -> dict:
    """Section (e'). ``key`` is section (e)'s; ``sizes``: (chains, steps of the truncated map,
    steps of the real one), the burn-ins follow from the relaxation rate. Returns the report's
    settings (``truncated`` and ``real``: the map, the measurement and every prediction over
    V0, with their z)."""
    n_chains, steps_trunc, steps_real = sizes
    v_trunc, se_trunc = simulate_truncated_variant_ii(
        jax.random.fold_in(key, 10), curvature=MAP_TRUNC["k"], sigma=MAP_TRUNC["sigma"],
        batch_size=MAP_TRUNC["batch_size"], alpha=MAP_TRUNC["alpha"], eta=MAP_TRUNC["eta"],
        n_chains=n_chains, burn_in=relaxation_burn_in(MAP_TRUNC), n_steps=steps_trunc)
    s2_trunc = MAP_TRUNC["sigma"] ** 2 / MAP_TRUNC["batch_size"]
    record.check("e_II_truncated_map", "e",
                 "truncated variant II map x' = x - c (xi^3 + 3 k x xi^2): Var x = 15 E[c^2] "
                 "s^6 / (6 k E[c] s^2 - 27 k^2 E[c^2] s^4), exact",
                 variant_ii_variance(**MAP_TRUNC), v_trunc, se_trunc, eta=MAP_TRUNC["eta"],
                 k=MAP_TRUNC["k"], noise_var=s2_trunc, batch_size=MAP_TRUNC["batch_size"])

    clip_share = variant_ii_clip_share(MAP_REAL["alpha"], MAP_REAL["batch_size"])
    require_clip_inactive(clip_share, record.floor, "the real-map run")
    run = simulate(jax.random.fold_in(key, 11), Quadratic.diagonal([MAP_REAL["k"]]),
                   n_chains=n_chains, burn_in=relaxation_burn_in(MAP_REAL), n_steps=steps_real,
                   eta=MAP_REAL["eta"], method="II", alpha=MAP_REAL["alpha"],
                   per_example_std=[MAP_REAL["sigma"]], batch_size=MAP_REAL["batch_size"])
    v_real, se_real = (float(a[0]) for a in run.variance())
    terms = variant_ii_series(**MAP_REAL)
    s2_real = MAP_REAL["sigma"] ** 2 / MAP_REAL["batch_size"]
    record.check("e_II_real_map", "e",
                 f"real variant II step at gamma = {GAMMA_REAL:g}: series V0 (1 + 5 gamma + "
                 "a_2 gamma^2)", terms[:3].sum(), v_real, se_real, kind="leading-order",
                 expected_error=abs(terms[3]) / terms[:3].sum() + clip_share,
                 eta=MAP_REAL["eta"], k=MAP_REAL["k"], noise_var=s2_real,
                 batch_size=MAP_REAL["batch_size"])
    return {
        "truncated": {**map_summary(MAP_TRUNC, v_trunc, se_trunc, record.floor),
                      # the 27-term's share of the closed form's denominator
                      "share_27": 27 * variant_ii_gamma(**MAP_TRUNC) / 6},
        "real": {**map_summary(MAP_REAL, v_real, se_real, record.floor),
                 "clip_share": clip_share, "alpha_b": MAP_REAL["alpha"] * MAP_REAL["batch_size"],
                 # the series to 1, 2, 3, 4 terms, over V0
                 "series_over_v0": (np.cumsum(terms) / terms[0]).tolist(),
                 "z_series": z_score(terms[:3].sum(), v_real, se_real, record.floor)},
    }
