"""Control variates with an SVRG snapshot: pair models, their simulator and closed forms.

Per-example gradient pairs (g_j, h_j): g at the current parameters, h at a snapshot, drawn
independently per example and per coordinate. The estimators of E[g] from a batch of B,
with mu, nu the batch means and G_snap = E[h] known, are mu - lam (nu - G_snap) for

  raw          lam = 0
  optimal      lam = lam* = Cov(g, h) / Var h           (the true value)
  same_batch   lam = cov_hat / var_hat from this batch   (unclipped)
  clipped      the same, clipped to transforms.LAMBDA_RANGE (what training uses)
  lagged       lam = the previous batch's same_batch lam (LAGGED_FIRST_LAMBDA first)
  svrg         lam = 1
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from sngrad.errors import SngradError
from sngrad.theory.processes import mean_and_se
from sngrad.transforms import LAGGED_FIRST_LAMBDA, optimal_coefficient

CV_ESTIMATORS = ("raw", "optimal", "same_batch", "clipped", "lagged", "svrg")


@dataclass(frozen=True)
class SkewedPairs:
    """h = s_h z,  g = slope s_h z + skew (z^2 - 1) + noise e,  z, e ~ N(0, 1) independent.

    Per coordinate (tuples of equal length). E g = E h = 0, Var h = s_h^2, Cov = slope s_h^2,
    lam* = slope. The residual r = g - lam* h = skew (z^2 - 1) + noise e is uncorrelated with
    h but not independent of it: E[r h^2] = 2 skew s_h^2, which is what biases a coefficient
    estimated on the same batch (``cv_same_batch_bias``). skew = 0 makes (g, h) Gaussian.
    """

    snap_std: tuple[float, ...]
    slope: tuple[float, ...]
    skew: tuple[float, ...]
    noise: tuple[float, ...]

    @property
    def dim(self) -> int:
        return len(self.slope)

    def draw(self, key, shape):
        kz, ke = jax.random.split(key)
        z = jax.random.normal(kz, (*shape, self.dim))
        e = jax.random.normal(ke, (*shape, self.dim))
        s_h, slope, skew, noise = (jnp.asarray(v, jnp.float32) for v in
                                   (self.snap_std, self.slope, self.skew, self.noise))
        h = s_h * z
        return slope * h + skew * (z * z - 1.0) + noise * e, h

    def moments(self) -> dict[str, np.ndarray]:
        s_h, slope, skew, noise = (np.asarray(v, float) for v in
                                   (self.snap_std, self.slope, self.skew, self.noise))
        zero = np.zeros_like(s_h)
        return {"mean_g": zero, "mean_h": zero, "var_h": s_h**2, "cov": slope * s_h**2,
                "var_g": slope**2 * s_h**2 + 2.0 * skew**2 + noise**2,
                "third": 2.0 * skew * s_h**2}


@dataclass(frozen=True)
class NoisyQuadratic:
    """Per-example losses l_j(theta) = a_j theta^2 / 2 - b_j theta, one coordinate each.

    a_j ~ N(k, s_a^2) (curvature noise) and b_j ~ N(beta, s_b^2) (target noise), independent,
    so the population loss is k theta^2 / 2 - beta theta. The pair is example j's gradient
    at ``theta`` and at the snapshot ``theta_snap``: g = a theta - b, h = a theta_snap - b,
    jointly Gaussian with

        Var g = theta^2 s_a^2 + s_b^2,  Var h = theta_snap^2 s_a^2 + s_b^2,
        Cov = theta theta_snap s_a^2 + s_b^2.
    """

    theta: tuple[float, ...]
    theta_snap: float
    curvature: float
    target: float
    curvature_std: float
    target_std: float

    @property
    def dim(self) -> int:
        return len(self.theta)

    def draw(self, key, shape):
        ka, kb = jax.random.split(key)
        a = self.curvature + self.curvature_std * jax.random.normal(ka, (*shape, self.dim))
        b = self.target + self.target_std * jax.random.normal(kb, (*shape, self.dim))
        theta = jnp.asarray(self.theta, jnp.float32)
        return a * theta - b, a * self.theta_snap - b

    def moments(self) -> dict[str, np.ndarray]:
        theta, ts = np.asarray(self.theta, float), float(self.theta_snap)
        sa2, sb2 = self.curvature_std**2, self.target_std**2
        return {"mean_g": self.curvature * theta - self.target,
                "mean_h": np.full_like(theta, self.curvature * ts - self.target),
                "var_g": theta**2 * sa2 + sb2, "var_h": np.full_like(theta, ts**2 * sa2 + sb2),
                "cov": theta * ts * sa2 + sb2, "third": np.zeros_like(theta)}


@dataclass(frozen=True)
class CVEstimates:
    """Per-chain averages over the batches of each chain, arrays (C, d) keyed by estimator.

    ``sq_error[name]``: mean of (estimate - E g)^2; ``error[name]``: mean of estimate - E g;
    ``paired[name]``: mean of (estimate - optimal estimate) on the same batch, which has the
    bias of ``name`` as its mean (the optimal one is unbiased) and, because both share the
    batch, a far smaller spread than ``error``. Batches are independent, so the chains only
    group them for standard errors.
    """

    sq_error: dict[str, np.ndarray]
    error: dict[str, np.ndarray]
    paired: dict[str, np.ndarray]
    batch_size: int
    n_batches: int

    def mse(self, name: str):
        """Mean squared error of the batch estimate (its variance when unbiased), with SE."""
        return mean_and_se(self.sq_error[name])

    def bias(self, name: str):
        """Bias of the batch estimate and its standard error (paired with ``optimal``)."""
        return mean_and_se(self.paired[name])


def simulate_control_variates(key, pairs, *, batch_sizes, n_chains: int,
                              n_batches: int) -> dict[int, CVEstimates]:
    """Draw ``n_chains * n_batches`` batches and average every estimator's error, per B.

    Each step draws max(B) pairs per chain; the batch of size B is its first B pairs, so one
    compiled scan serves every batch size (estimates for different B share draws, each is
    exact on its own). The coefficients come from ``sngrad.transforms.optimal_coefficient``
    (the one definition of the zero-variance rule and of the clip), unclipped for
    ``same_batch`` and ``lagged``. One extra batch per chain runs first and is not counted,
    so that every counted ``lagged`` estimate uses a coefficient from a previous batch (not
    the first-step rule). Returns ``{B: CVEstimates}``.
    """
    batch_sizes = tuple(int(b) for b in np.atleast_1d(batch_sizes))
    if min(batch_sizes) < 2 or min(n_chains, n_batches) < 1:
        raise SngradError("need every batch size >= 2, n_chains >= 1, n_batches >= 1")
    out = _simulate_cv(key, pairs=pairs, batch_sizes=batch_sizes, n_chains=int(n_chains),
                       n_batches=int(n_batches))
    out = jax.tree.map(lambda a: np.asarray(a, float) / n_batches, out)
    return {b: CVEstimates(out[i]["sq"], out[i]["err"], out[i]["paired"], b, int(n_batches))
            for i, b in enumerate(batch_sizes)}


@partial(jax.jit, static_argnames=("pairs", "batch_sizes", "n_chains", "n_batches"))
def _simulate_cv(key, *, pairs, batch_sizes, n_chains, n_batches):
    m = pairs.moments()
    mean_g, mean_h = (jnp.asarray(m[k], jnp.float32) for k in ("mean_g", "mean_h"))
    lam_star = jnp.asarray(m["cov"] / m["var_h"], jnp.float32)
    shape = (n_chains, pairs.dim)

    def estimates(g, h, lam_prev):
        mu, nu = g.mean(axis=0), h.mean(axis=0)
        var_h = h.var(axis=0)
        cov = ((g - mu) * (h - nu)).mean(axis=0)
        lam_hat = optimal_coefficient(cov, var_h, -jnp.inf, jnp.inf)
        lams = {"raw": 0.0, "optimal": lam_star, "same_batch": lam_hat,
                "clipped": optimal_coefficient(cov, var_h), "lagged": lam_prev, "svrg": 1.0}
        dev = nu - mean_h
        return {name: mu - lam * dev for name, lam in lams.items()}, lam_hat

    def step(carry, t):
        lam_prev, sums = carry
        g, h = pairs.draw(jax.random.fold_in(key, t), (max(batch_sizes), n_chains))
        count = jnp.where(t > 0, 1.0, 0.0)  # batch 0 only provides the first lagged lambda
        new_lam, new_sums = [], []
        for b, lam_b, acc in zip(batch_sizes, lam_prev, sums, strict=True):
            est, lam_hat = estimates(g[:b], h[:b], lam_b)
            new_lam.append(lam_hat)
            new_sums.append({
                "sq": {n: acc["sq"][n] + count * jnp.square(e - mean_g) for n, e in est.items()},
                "err": {n: acc["err"][n] + count * (e - mean_g) for n, e in est.items()},
                "paired": {n: acc["paired"][n] + count * (e - est["optimal"])
                           for n, e in est.items()},
            })
        return (tuple(new_lam), tuple(new_sums)), None

    zeros = {n: jnp.zeros(shape) for n in CV_ESTIMATORS}
    sums0 = tuple({"sq": zeros, "err": zeros, "paired": zeros} for _ in batch_sizes)
    lam0 = tuple(jnp.full(shape, LAGGED_FIRST_LAMBDA) for _ in batch_sizes)
    (_, sums), _ = jax.lax.scan(step, (lam0, sums0), jnp.arange(n_batches + 1))
    return sums


def cv_variance(pairs, batch_size: int, lam) -> np.ndarray:
    """Variance of mu - lam (nu - G_snap) for a fixed lam: (Var g + lam^2 Var h - 2 lam Cov) / B.
    At lam* = Cov / Var h it is (1 - rho^2) Var g / B."""
    m = pairs.moments()
    lam = np.asarray(lam, float)
    return (m["var_g"] + lam**2 * m["var_h"] - 2.0 * lam * m["cov"]) / batch_size


def cv_correlation_squared(pairs) -> np.ndarray:
    """rho^2 = Cov^2 / (Var g Var h) per coordinate."""
    m = pairs.moments()
    return m["cov"] ** 2 / (m["var_g"] * m["var_h"])


def cv_same_batch_variance(pairs, batch_size: int) -> np.ndarray:
    """Variance with lam estimated on the same batch, for Gaussian pairs (exact):
    (B - 2) / (B - 3) (1 - rho^2) Var g / B (Lavenberg, Moeller and Welch 1982, one control).

    Given the h's, mu - lam_hat (nu - G) has mean E g and variance
    Var(r) (1/B + (nu - G)^2 / S_hh), S_hh = sum_j (h_j - nu)^2, with r the residual; the second
    term averages to Var(r) / (B (B - 3)) because S_hh / Var h is chi-square with B - 1 degrees
    of freedom, independent of nu. A lam from an earlier, independent batch has the same
    variance: (Var g - 2 E[lam] Cov + E[lam^2] Var h) / B with E[lam] = lam* and
    Var lam_hat = Var r / (Var h (B - 3)).
    """
    if batch_size < 4:
        raise SngradError("the variance is finite for batch_size >= 4")
    m = pairs.moments()
    residual = m["var_g"] - m["cov"] ** 2 / m["var_h"]
    return residual / batch_size * (batch_size - 2) / (batch_size - 3)


def cv_same_batch_bias(pairs, batch_size: int) -> np.ndarray:
    """Bias of mu - lam_hat (nu - G_snap) with lam_hat from the same batch.

    Write g = E g + lam* (h - E h) + r. Then lam_hat - lam* = cov_hat(r, h) / var_hat(h), and
    the bias is -E[(lam_hat - lam*)(nu - E h)]. For ``SkewedPairs`` (Gaussian h, r = skew
    (z^2 - 1) + noise e) split z_j = zbar + w_j, with the deviations w independent of zbar:
    cov_hat(z^2, z) = 2 zbar var_hat(z) + mean(w^3), so the ratio times zbar averages to
    2 E[zbar^2] = 2 / B exactly, and the bias is -2 skew / B for every B (the noise e averages
    out). In general the leading order is -E[r (h - E h)^2] / (B Var h) + O(1/B^2), which is
    the same expression: ``third`` / ``var_h`` / B.
    """
    m = pairs.moments()
    return -m["third"] / m["var_h"] / batch_size
