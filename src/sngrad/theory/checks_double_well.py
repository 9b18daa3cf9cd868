"""Theory checks on a double well against the Gibbs density: section (c).

For dX = -L'(X) dt + sqrt(eta) s dW (time = steps x eta, Li, Tai, E) the zero-flux stationary
density is proportional to exp(-L / T) with T = c eta s^2 and c = 1/2. Two independent
estimates of c: the equipartition identity E[x L'(x)] = T, which holds for every Gibbs law
(integrate by parts), and a maximum-likelihood fit of the histogram. The Gibbs law is the SDE
limit, so these checks are leading-order: the discrete chain is hotter by the factor
2 c = 1 + eta E[L''] / 2 to leading order, which sets each check's expected error.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

from sngrad.theory.processes import DoubleWell, mean_and_se
from sngrad.theory.record import CheckRecord
from sngrad.theory.simulate import simulate

WELL = DoubleWell(height=1.0, tilt=0.25)
T_WELL, ETA_WELL = 0.5, 0.005
S2_WELL = 2 * T_WELL / ETA_WELL  # noise variance that gives T = eta s^2 / 2
LECTURE_ALPHA = 0.1  # the lecture notes' constant in T = alpha eta s^2, drawn for comparison
EDGES = np.linspace(-2.2, 2.2, 89)
N_GROUPS = 10  # disjoint groups of chains whose refits give the histogram fit's error bar


def gibbs_bin_probs(temperature, edges=EDGES, well=WELL, fine=20):
    """Probability of each histogram bin under exp(-L / T), normalised over the range
    (trapezoids on ``fine`` points per bin)."""
    xs = np.linspace(edges[0], edges[-1], (len(edges) - 1) * fine + 1)
    w = np.exp(-(well.value(xs) - well.value(xs).min()) / temperature)
    cum = np.concatenate([[0.0], np.cumsum((w[1:] + w[:-1]) / 2 * np.diff(xs))])
    mass = np.diff(cum[::fine])
    return mass / mass.sum()


def gibbs_moment(fn, temperature, edges=EDGES, well=WELL):
    """E[fn(x)] under the normalised density exp(-L / T) on the histogram range."""
    xs = np.linspace(edges[0], edges[-1], 20001)
    w = np.exp(-(well.value(xs) - well.value(xs).min()) / temperature)
    return float(np.trapezoid(fn(xs) * w, xs) / np.trapezoid(w, xs))


def fit_constant(counts, edges=EDGES, well=WELL, eta=ETA_WELL, noise_var=S2_WELL):
    """Maximum-likelihood c in T = c eta s^2 from histogram counts."""
    def nll(c):
        return -np.sum(counts * np.log(gibbs_bin_probs(c * eta * noise_var, edges, well)
                                       + 1e-300))
    return optimize.minimize_scalar(nll, bounds=(0.05, 2.0), method="bounded").x


def double_well(record: CheckRecord, key, sizes) -> tuple[dict, dict]:
    """Section (c). ``sizes``: (chains, burn-in steps, measured steps); half the chains start
    in each well, so the start holds no hint of the predicted law.

    Returns the plot's data (the measured and the Gibbs density per bin, the fitted c with its
    standard error, the lecture constant's temperature) and the report's settings.
    """
    n_chains, burn, steps = sizes
    x0 = np.where(np.arange(n_chains) % 2 == 0, -1.0, 1.0)[:, None]
    run = simulate(key, WELL, n_chains=n_chains, burn_in=burn, n_steps=steps, eta=ETA_WELL,
                   noise_cov=[[S2_WELL]], x0=x0, hist_range=(EDGES[0], EDGES[-1]),
                   hist_bins=len(EDGES) - 1)

    def curvature(x):  # L''(x)
        return 12 * WELL.height * x * x - 4 * WELL.height

    t_discrete = T_WELL * (1 + ETA_WELL / 2 * gibbs_moment(curvature, T_WELL))
    c_expected = t_discrete / T_WELL - 1

    # Equipartition: T = E[x L'(x)], per chain, so the chains give the standard error.
    c_equi, c_equi_se = mean_and_se(run.mean_x_grad[:, 0] / (ETA_WELL * S2_WELL))
    record.check("c_constant_equipartition", "c",
                 "T = c eta s^2 with c = 1/2 (from E[x L'(x)] = T)", 0.5, c_equi, c_equi_se,
                 kind="leading-order", expected_error=c_expected, eta=ETA_WELL,
                 noise_var=S2_WELL)
    group_counts = run.hist[:, 0, :].reshape(N_GROUPS, -1, len(EDGES) - 1).sum(axis=1)
    c_groups = np.array([fit_constant(cnt) for cnt in group_counts])
    c_fit = fit_constant(group_counts.sum(axis=0))
    c_fit_se = c_groups.std(ddof=1) / np.sqrt(N_GROUPS)
    record.check("c_constant_histogram_fit", "c",
                 "T = c eta s^2 with c = 1/2 (maximum-likelihood fit)", 0.5, c_fit, c_fit_se,
                 kind="leading-order", expected_error=c_expected, eta=ETA_WELL,
                 noise_var=S2_WELL)
    # Occupancy of the deeper (left) well and E[x^2] under the Gibbs law with c = 1/2.
    left = EDGES[1:] <= 0
    left_per_chain = run.hist[:, 0, left].sum(axis=1) / run.hist[:, 0, :].sum(axis=1)
    left_meas, left_se = mean_and_se(left_per_chain)
    left_pred = gibbs_bin_probs(T_WELL)[left].sum()
    record.check("c_left_well", "c",
                 "fraction of time in the deeper well, Gibbs law with T = eta s^2 / 2",
                 left_pred, left_meas, left_se, kind="leading-order",
                 expected_error=gibbs_bin_probs(t_discrete)[left].sum() / left_pred - 1,
                 eta=ETA_WELL, noise_var=S2_WELL)
    x2_meas, x2_se = mean_and_se(run.mean_xx[:, 0, 0])
    record.check("c_second_moment", "c", "E[x^2] under the Gibbs law with T = eta s^2 / 2",
                 gibbs_moment(lambda x: x * x, T_WELL), x2_meas, x2_se, kind="leading-order",
                 expected_error=gibbs_moment(lambda x: x * x, t_discrete)
                 / gibbs_moment(lambda x: x * x, T_WELL) - 1, eta=ETA_WELL, noise_var=S2_WELL)
    density = run.density()[0]
    gibbs_density = gibbs_bin_probs(T_WELL) / np.diff(EDGES)
    tv_distance = 0.5 * np.sum(np.abs(density - gibbs_density) * np.diff(EDGES))
    lecture_t = LECTURE_ALPHA * ETA_WELL * S2_WELL
    data = {"density": density, "gibbs_density": gibbs_density, "c_fit": c_fit,
            "c_fit_se": c_fit_se, "lecture_temperature": lecture_t}
    params = {"height": WELL.height, "tilt": WELL.tilt, "eta": ETA_WELL, "noise_var": S2_WELL,
              "temperature": T_WELL, "eta_curvature": ETA_WELL * 8 * WELL.height,
              "lecture_alpha": LECTURE_ALPHA, "lecture_temperature": lecture_t,
              "lecture_left_well": float(gibbs_bin_probs(lecture_t)[left].sum()),
              "tv_distance": float(tv_distance), "n_groups": N_GROUPS,
              # leading discrete correction: c = (1 + eta E[L''] / 2) / 2 under the Gibbs law
              "c_discrete_estimate": 0.5 * (1 + ETA_WELL / 2 * gibbs_moment(curvature, T_WELL))}
    return data, params
