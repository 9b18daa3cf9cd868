"""Theory checks of the lecture-note pictures, noise-free descent: section (f).

An ill-conditioned, rotated 2-D quadratic with eigenvalues lambda_min, lambda_max. Plain gradient
descent contracts the stiff direction by |1 - eta lambda_max| per step: it oscillates for
eta > 1 / lambda_max and diverges beyond 2 / lambda_max. Heavy-ball momentum converges at the
spectral radius of its 2 x 2 iteration matrix (``closed_forms.heavy_ball_rate``); Adam rescales
each coordinate.
"""

from __future__ import annotations

import numpy as np

from sngrad.theory.closed_forms import heavy_ball_rate
from sngrad.theory.processes import Quadratic
from sngrad.theory.record import CheckRecord, tag
from sngrad.theory.simulate import descent_path

LAMBDAS = np.array([1.0, 20.0])
ROTATION_DEG = 30.0
ROT = np.deg2rad(ROTATION_DEG)
R = np.array([[np.cos(ROT), -np.sin(ROT)], [np.sin(ROT), np.cos(ROT)]])
LOSS = Quadratic.from_matrix(R @ np.diag(LAMBDAS) @ R.T)
X0 = np.array([-4.0, 2.5])
LIMIT = 2 / LAMBDAS.max()  # gradient descent's edge of stability
GD_ETAS = {"below": 0.6 * LIMIT, "near": 0.95 * LIMIT, "above": 1.05 * LIMIT}
ETA_MOM = 0.02
GAMMAS = [0.0, 0.5, 0.9]
ETA_ADAM = 0.1
N_GD, N_MOM = 60, 200
# few steps: at |1 - eta lambda| = 0.2 float32 round-off would soon dominate the stiff component
N_RATE = 4


def descent_paths(record: CheckRecord) -> tuple[dict, dict]:
    """Section (f); deterministic, so no key and no sizes. Returns the paths (name -> (steps +
    1, 2) array: ``gd_<below|near|above>``, ``momentum_<gamma>``, ``adam``) and the report's
    settings. The rates have no Monte Carlo error (SE 0): only the floor bounds them."""
    paths = {f"gd_{k}": descent_path(LOSS, X0, method="gd", eta=e, steps=N_GD)
             for k, e in GD_ETAS.items()}
    paths |= {f"momentum_{g:g}": descent_path(LOSS, X0, method="momentum", eta=ETA_MOM,
                                              momentum=g, steps=N_MOM) for g in GAMMAS}
    paths["adam"] = descent_path(LOSS, X0, method="adam", eta=ETA_ADAM, steps=N_MOM)
    stiff = R[:, int(np.argmax(LAMBDAS))]
    for name, eta in GD_ETAS.items():
        z = paths[f"gd_{name}"] @ stiff
        measured = (abs(z[N_RATE]) / abs(z[0])) ** (1 / N_RATE)
        record.check(f"f_gd_rate_{name}", "f",
                     f"GD at eta = {eta / LIMIT:.2f} x 2/lambda_max: stiff component scales by "
                     "|1 - eta lambda_max| per step",
                     abs(1 - eta * LAMBDAS.max()), measured, 0.0, eta=eta,
                     k=float(LAMBDAS.max()))
    # the rate of heavy ball is the slope of log |x| over the second half, after the transient
    window = np.arange(N_MOM // 2, N_MOM + 1)
    for g in GAMMAS[1:]:
        norms = np.linalg.norm(paths[f"momentum_{g:g}"], axis=1)
        slope = np.polyfit(window, np.log(norms[window]), 1)[0]
        predicted = max(heavy_ball_rate(ETA_MOM, lam, g) for lam in LAMBDAS)
        record.check(f"f_momentum_rate_{tag(g)}", "f",
                     f"heavy ball, gamma = {g:g}: error shrinks at the spectral radius of the "
                     "iteration", predicted, np.exp(slope), 0.0, eta=ETA_MOM)
    params = {"lambdas": LAMBDAS.tolist(), "rotation_deg": ROTATION_DEG, "limit": LIMIT,
              "gd_etas": GD_ETAS, "eta_momentum": ETA_MOM, "gammas": GAMMAS,
              "eta_adam": ETA_ADAM, "x0": X0.tolist()}
    return paths, params
