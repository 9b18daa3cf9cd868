"""Simulators and closed-form predictions for the theory sections of the report.

Many independent chains of a stochastic-gradient iteration run at once inside one jitted
``lax.scan``. Each step moves every chain by

    theta_{t+1} = theta_t - u_t,    v_t = gamma v_{t-1} + eta * f_t * mu_t,    u_t = v_t,

where mu_t is a noisy estimate of grad L(theta_t), f_t the elementwise sngrad factor of the
chosen variant (f = 1 for plain SGD, see ``sngrad.transforms.scale_factor``) and gamma the
heavy-ball momentum (0 by default). ``eta`` may differ per chain and per coordinate, which
covers a sweep over step sizes and diagonal preconditioners in one call.

Two noise models:

- additive: mu = grad L + xi with xi ~ N(0, S), the textbook setting of the SDE picture;
- per-example: each step draws B per-example gradients g_j = grad L + eps_j with
  eps_j ~ N(0, diag(std^2)); mu is their mean and the variance handed to the sngrad factor is
  their population variance (divide by B), exactly as the training code computes them.

Nothing is stored per step. After a burn-in, the scan accumulates per-chain running means of
x, x x^T, theta_i u_i, u_i^2, x_i dL/dx_i and (optionally) a histogram of every coordinate, so
memory does not grow with the number of steps. Chains are independent, so the spread of the
per-chain time averages gives an honest Monte Carlo standard error whatever the
autocorrelation within a chain.

The closed forms below the simulator are the predictions the simulations are checked against;
``z_score``, ``passes`` and ``resolves`` at the end are the rule that holds a measurement to its
own Monte Carlo standard error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cache, partial

import jax
import jax.numpy as jnp
import numpy as np

from sngrad.errors import SngradError
from sngrad.transforms import (  # the one definition of the sngrad factors and of lambda
    LAGGED_FIRST_LAMBDA,
    optimal_coefficient,
    scale_factor,
)

METHODS = ("sgd", "I", "II", "III")
PATH_METHODS = ("gd", "momentum", "adam")


# ----------------------------------------------------------------------------------- losses


@dataclass(frozen=True)
class Quadratic:
    """L(x) = x^T A x / 2 with a symmetric matrix A (nested tuples, so the loss is hashable
    and can be a static argument of ``jax.jit``)."""

    A: tuple[tuple[float, ...], ...]

    @classmethod
    def diagonal(cls, curvatures) -> Quadratic:
        return cls.from_matrix(np.diag([float(c) for c in curvatures]))

    @classmethod
    def from_matrix(cls, A) -> Quadratic:
        A = np.asarray(A, dtype=float)
        if A.ndim != 2 or A.shape[0] != A.shape[1] or not np.allclose(A, A.T):
            raise SngradError(f"A must be a symmetric square matrix, got {A!r}")
        return cls(tuple(tuple(float(a) for a in row) for row in A))

    @property
    def dim(self) -> int:
        return len(self.A)

    def matrix(self) -> np.ndarray:
        return np.asarray(self.A, dtype=float)

    def grad(self, x):
        return x @ jnp.asarray(self.A, dtype=x.dtype)  # A symmetric: row-wise A x

    def value(self, x):
        x = np.asarray(x, dtype=float)
        return 0.5 * np.einsum("...i,ij,...j->...", x, self.matrix(), x)


@dataclass(frozen=True)
class DoubleWell:
    """One-dimensional L(x) = height (x^2 - 1)^2 + tilt x.

    Minima near x = -1 and x = +1, a barrier of about ``height`` at x = 0; a positive tilt
    makes the left well the deeper one. L''(+-1) = 8 height sets the local step-size scale.
    """

    height: float
    tilt: float = 0.0

    dim = 1

    def grad(self, x):
        return 4.0 * self.height * x * (x * x - 1.0) + self.tilt

    def value(self, x):
        x = np.asarray(x, dtype=float)
        return self.height * (x * x - 1.0) ** 2 + self.tilt * x


# ------------------------------------------------------------------------------- simulator


@dataclass(frozen=True)
class Stationary:
    """Per-chain time averages over the measured steps (after the burn-in).

    Shapes: ``mean_x`` (C, d), ``mean_xx`` (C, d, d), ``mean_theta_u``, ``mean_u2`` and
    ``mean_x_grad`` (C, d); ``hist`` (C, d, bins) counts or None; ``x_final`` (C, d) is the
    last state of every chain, i.e. C independent draws from (nearly) the stationary law.
    """

    mean_x: np.ndarray
    mean_xx: np.ndarray
    mean_theta_u: np.ndarray
    mean_u2: np.ndarray
    mean_x_grad: np.ndarray
    x_final: np.ndarray
    hist: np.ndarray | None
    hist_edges: np.ndarray | None
    n_steps: int
    burn_in: int

    @property
    def n_chains(self) -> int:
        return self.mean_x.shape[0]

    def select(self, chains) -> Stationary:
        """The same statistics restricted to a subset of chains (index, slice or mask)."""
        pick = lambda a: None if a is None else a[chains]  # noqa: E731
        return Stationary(
            pick(self.mean_x), pick(self.mean_xx), pick(self.mean_theta_u), pick(self.mean_u2),
            pick(self.mean_x_grad), pick(self.x_final), pick(self.hist), self.hist_edges,
            self.n_steps, self.burn_in,
        )

    def covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """Pooled stationary covariance (d, d) and its Monte Carlo standard error.

        Each chain gives E_c[(x - m)(x - m)^T] about the grand mean m; the chains are
        independent, so the standard error is their standard deviation / sqrt(C).
        """
        m = self.mean_x.mean(axis=0)
        per_chain = (
            self.mean_xx
            - m[None, :, None] * self.mean_x[:, None, :]
            - self.mean_x[:, :, None] * m[None, None, :]
            + np.outer(m, m)[None]
        )
        return mean_and_se(per_chain)

    def variance(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-coordinate stationary variance (d,) and its standard error."""
        cov, se = self.covariance()
        return np.diagonal(cov).copy(), np.diagonal(se).copy()

    def density(self) -> np.ndarray:
        """Histogram of every coordinate pooled over chains, normalised to a density (d, bins).

        Mass outside the histogram range is counted in the normalisation, so the density
        integrates to the fraction of time spent inside the range.
        """
        if self.hist is None:
            raise SngradError("simulate(..., hist_bins=0): no histogram was accumulated")
        counts = self.hist.sum(axis=0)
        widths = np.diff(self.hist_edges)
        return counts / (self.n_chains * self.n_steps * widths[None, :])


def mean_and_se(per_chain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the leading (chain) axis and its standard error std / sqrt(C)."""
    per_chain = np.asarray(per_chain, dtype=float)
    n = per_chain.shape[0]
    if n < 2:
        return per_chain.mean(axis=0), np.full(per_chain.shape[1:], np.nan)
    return per_chain.mean(axis=0), per_chain.std(axis=0, ddof=1) / math.sqrt(n)


def simulate(
    key,
    loss,
    *,
    n_chains: int,
    burn_in: int,
    n_steps: int,
    eta,
    method: str = "sgd",
    alpha: float = 1.0,
    momentum: float = 0.0,
    noise_cov=None,
    per_example_std=None,
    batch_size: int | None = None,
    x0=None,
    hist_range: tuple[float, float] = (-1.0, 1.0),
    hist_bins: int = 0,
) -> Stationary:
    """Run ``n_chains`` independent chains and return their stationary statistics.

    Args:
      key: a ``jax.random`` key; the same key gives the same result.
      loss: a ``Quadratic`` or ``DoubleWell`` (anything hashable with ``grad`` and ``dim``).
      n_chains, burn_in, n_steps: chains, discarded steps, measured steps.
      eta: step size, broadcastable to (n_chains, d): a scalar, a per-coordinate vector
        (diagonal preconditioner) or a per-chain array (a sweep).
      method: "sgd" or an sngrad variant "I", "II", "III" (needs per-example noise).
      alpha: the sngrad constant of the variant.
      momentum: heavy-ball gamma; the update is v = gamma v + eta f mu, theta -= v.
      noise_cov: (d, d) covariance S of additive gradient noise.
      per_example_std: (d,) standard deviation of one example's gradient noise; with
        ``batch_size`` B every step draws B per-example gradients.
      x0: start, broadcastable to (n_chains, d); zeros by default.
      hist_range, hist_bins: per-coordinate histogram accumulated when hist_bins > 0.
    """
    if method not in METHODS:
        raise SngradError(f"method must be one of {METHODS}, got {method!r}")
    if (noise_cov is None) == (per_example_std is None):
        raise SngradError("give exactly one of noise_cov (additive) or per_example_std")
    if method != "sgd" and per_example_std is None:
        raise SngradError(f"variant {method} needs per-example noise (per_example_std, batch_size)")
    if per_example_std is not None and (batch_size is None or batch_size < 1):
        raise SngradError(f"per-example noise needs batch_size >= 1, got {batch_size!r}")
    if method != "sgd" and batch_size < 2:
        raise SngradError("an sngrad variant needs batch_size >= 2 to estimate a variance")
    if min(n_chains, n_steps) < 1 or burn_in < 0:
        raise SngradError("need n_chains >= 1, n_steps >= 1, burn_in >= 0")
    d = loss.dim
    shape = (n_chains, d)
    eta = jnp.broadcast_to(jnp.asarray(eta, jnp.float32), shape)
    x0 = jnp.broadcast_to(jnp.asarray(0.0 if x0 is None else x0, jnp.float32), shape)
    if noise_cov is not None:
        cov = np.atleast_2d(np.asarray(noise_cov, dtype=float))
        noise = jnp.asarray(np.linalg.cholesky(cov), jnp.float32)
        batch_size = 0
    else:
        noise = jnp.broadcast_to(jnp.asarray(per_example_std, jnp.float32), (d,))
    out = _simulate(
        key, x0, eta, noise, jnp.float32(alpha), jnp.float32(momentum),
        jnp.float32(hist_range[0]), jnp.float32(hist_range[1]),
        loss=loss, method=method, batch_size=int(batch_size), burn_in=int(burn_in),
        n_steps=int(n_steps), hist_bins=int(hist_bins),
    )
    out = jax.tree.map(np.asarray, out)
    sums, x_final = out
    n = float(n_steps)
    return Stationary(
        mean_x=sums["x"] / n,
        mean_xx=sums["xx"] / n,
        mean_theta_u=sums["theta_u"] / n,
        mean_u2=sums["u2"] / n,
        mean_x_grad=sums["x_grad"] / n,
        x_final=x_final,
        hist=sums["hist"] if hist_bins else None,
        hist_edges=np.linspace(hist_range[0], hist_range[1], hist_bins + 1) if hist_bins else None,
        n_steps=int(n_steps),
        burn_in=int(burn_in),
    )


_STATIC = ("loss", "method", "batch_size", "burn_in", "n_steps", "hist_bins")


@partial(jax.jit, static_argnames=_STATIC)
def _simulate(key, x0, eta, noise, alpha, momentum, lo, hi, *, loss, method, batch_size, burn_in,
              n_steps, hist_bins):
    n_chains, d = x0.shape

    def step(x, v, t):
        k = jax.random.fold_in(key, t)
        grad = loss.grad(x)
        if batch_size:
            per_example = grad[None] + noise * jax.random.normal(k, (batch_size, n_chains, d))
            mu, var = per_example.mean(axis=0), per_example.var(axis=0)
        else:
            mu, var = grad + jax.random.normal(k, (n_chains, d)) @ noise.T, None
        if method == "sgd":
            direction = mu
        else:
            direction = mu * scale_factor(method, mu, var, alpha)
        v = momentum * v + eta * direction
        return x - v, v, grad

    def burn(carry, t):
        x, v = carry
        x, v, _ = step(x, v, t)
        return (x, v), None

    zeros = jnp.zeros_like(x0)
    (x, v), _ = jax.lax.scan(burn, (x0, zeros), jnp.arange(burn_in))

    width = (hi - lo) / max(hist_bins, 1)
    rows = jnp.arange(n_chains)[:, None]
    cols = jnp.arange(d)[None, :]

    def measure(carry, t):
        x, v, sums = carry
        x_new, v_new, grad = step(x, v, t)
        u = x - x_new
        sums = {
            "x": sums["x"] + x,
            "xx": sums["xx"] + x[:, :, None] * x[:, None, :],
            "theta_u": sums["theta_u"] + x * u,
            "u2": sums["u2"] + u * u,
            "x_grad": sums["x_grad"] + x * grad,
            "hist": sums["hist"],
        }
        if hist_bins:
            pos = jnp.floor((x - lo) / width)
            inside = (pos >= 0) & (pos < hist_bins)
            idx = jnp.clip(pos, 0, hist_bins - 1).astype(jnp.int32)
            sums["hist"] = sums["hist"].at[rows, cols, idx].add(inside.astype(jnp.float32))
        return (x_new, v_new, sums), None

    sums0 = {
        "x": zeros, "xx": jnp.zeros((n_chains, d, d)), "theta_u": zeros, "u2": zeros,
        "x_grad": zeros, "hist": jnp.zeros((n_chains, d, hist_bins) if hist_bins else (0,)),
    }
    (x, _, sums), _ = jax.lax.scan(measure, (x, v, sums0), burn_in + jnp.arange(n_steps))
    return sums, x


# --------------------------------------------------------------- deterministic paths (f)


def descent_path(loss, x0, *, method: str, eta: float, steps: int, momentum: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> np.ndarray:
    """Noise-free trajectory (steps + 1, d) of gradient descent, heavy-ball momentum or Adam.

    gd:       x <- x - eta grad L(x)
    momentum: v <- gamma v + eta grad L(x);  x <- x - v          (gamma = ``momentum``)
    adam:     m, s <- EMAs of g and g^2 (betas), bias-corrected; x <- x - eta m / (sqrt(s) + eps)
    """
    if method not in PATH_METHODS:
        raise SngradError(f"method must be one of {PATH_METHODS}, got {method!r}")
    x0 = jnp.asarray(x0, jnp.float32)
    path = _descent_path(x0, jnp.float32(eta), jnp.float32(momentum), jnp.float32(betas[0]),
                         jnp.float32(betas[1]), jnp.float32(eps), loss=loss, method=method,
                         steps=int(steps))
    return np.asarray(path)


@partial(jax.jit, static_argnames=("loss", "method", "steps"))
def _descent_path(x0, eta, gamma, b1, b2, eps, *, loss, method, steps):
    def body(carry, t):
        x, m, s = carry
        g = loss.grad(x[None])[0]
        if method == "gd":
            x = x - eta * g
        elif method == "momentum":
            m = gamma * m + eta * g
            x = x - m
        else:
            m = b1 * m + (1 - b1) * g
            s = b2 * s + (1 - b2) * g * g
            m_hat, s_hat = m / (1 - b1 ** (t + 1)), s / (1 - b2 ** (t + 1))
            x = x - eta * m_hat / (jnp.sqrt(s_hat) + eps)
        return (x, m, s), x

    zeros = jnp.zeros_like(x0)
    _, xs = jax.lax.scan(body, (x0, zeros, zeros), jnp.arange(steps, dtype=jnp.float32))
    return jnp.concatenate([x0[None], xs])


# ------------------------------------------------------------------------------ predictions


def discrete_variance(eta, k, noise_var):
    """Exact stationary variance of x' = x - eta (k x + xi), Var xi = noise_var:
    V = (1 - eta k)^2 V + eta^2 s^2, so V = eta s^2 / (k (2 - eta k)); needs 0 < eta k < 2."""
    eta, k = np.asarray(eta, float), np.asarray(k, float)
    return eta * noise_var / (k * (2.0 - eta * k))


def sde_variance(eta, k, noise_var):
    """Stationary variance of the continuous-time model dX = -k X dt + sqrt(eta) s dW (an
    Ornstein-Uhlenbeck process): eta s^2 / (2 k), the eta k -> 0 limit of the discrete one."""
    return np.asarray(eta, float) * noise_var / (2.0 * np.asarray(k, float))


def random_gain_variance(k, noise_var, gain_mean, gain_sq_mean):
    """Stationary variance of x' = x - a (k x + xi) with a random gain a drawn afresh each step,
    independent of x and of the zero-mean noise xi (Var xi = noise_var):
    V = E[a^2] s^2 / (k (2 E[a] - k E[a^2])). With a = eta fixed this is ``discrete_variance``."""
    return gain_sq_mean * noise_var / (k * (2.0 * gain_mean - k * gain_sq_mean))


def batch_std_expectation(fn, sigma: float, batch_size: int, n_grid: int = 4001) -> float:
    """E[fn(sigma_hat)] for the population standard deviation sigma_hat of B Gaussian samples.

    B sigma_hat^2 / sigma^2 follows a chi-square law with B - 1 degrees of freedom; the
    expectation is a quadrature over q = log(chi-square), where the density is smooth.
    """
    if batch_size < 4:
        raise SngradError("batch_size >= 4 keeps the quadrature accurate")
    n = batch_size - 1
    spread = 12.0 * math.sqrt(2.0 / n) + 2.0
    q = np.linspace(math.log(n) - 2.0 * spread, math.log(n) + spread, n_grid)
    chi2 = np.exp(q)
    log_pdf = (n / 2 - 1) * q - chi2 / 2 - (n / 2) * math.log(2) - math.lgamma(n / 2)
    weight = np.exp(log_pdf + q)  # density of q = density of chi2 times d chi2 / d q
    values = fn(sigma * np.sqrt(chi2 / batch_size))
    return float(np.trapezoid(values * weight, q) / np.trapezoid(weight, q))


def sngrad_gain_moments(variant: str, sigma: float, batch_size: int, alpha: float, eta: float):
    """(E[a], E[a^2]) of the per-step gain a = eta f of an sngrad variant on one coordinate.

    For I and III the factor depends on the batch only through sigma_hat, which for Gaussian
    per-example gradients is independent of the batch mean; the step is then linear in the
    gradient with the random gain a and ``random_gain_variance`` is exact. For II the factor
    is mu^2 / (alpha sigma_hat^2) near the minimum, where |mu| << sigma_hat; the moments
    returned are those of eta / (alpha sigma_hat^2), used by ``variant_ii_variance``.
    """
    factors = {
        "I": lambda s: 1.0 / np.maximum(alpha * s, 1.0),
        "II": lambda s: 1.0 / (alpha * s * s),
        "III": lambda s: 1.0 - np.minimum(alpha * s, 1.0),
    }
    f = factors[variant]
    m1 = batch_std_expectation(lambda s: eta * f(s), sigma, batch_size)
    m2 = batch_std_expectation(lambda s: (eta * f(s)) ** 2, sigma, batch_size)
    return m1, m2


def variant_ii_variance(k, sigma, batch_size, alpha, eta):
    """Stationary variance of the *truncated* variant II map on L = k x^2 / 2 (exact there).

    Setting. Where the clip of variant II is inactive (``variant_ii_clip_share``) the step is
    u = c mu^3 with c = eta / (alpha sigma_hat^2) and the batch mean mu = k x + xi,
    Var xi = s^2 = sigma^2 / B. For Gaussian per-example gradients sigma_hat is independent of
    xi, and both are independent of x. The truncated map keeps the part of the cubic of order
    x^0 and x^1,

        x' = x - c (xi^3 + 3 k x xi^2).

    Stationarity, E[x'^2] = E[x^2], gives 2 E[x u] = E[u^2]; with E xi^4 = 3 s^4 and
    E xi^6 = 15 s^6, E[x u] = 3 k E[c] s^2 V and E[u^2] = E[c^2] (15 s^6 + 27 k^2 s^4 V), so

        V = 15 E[c^2] s^6 / (6 k E[c] s^2 - 27 k^2 E[c^2] s^4)

    with nothing dropped: for this map the formula is exact (tests/test_verdict_pins.py).

    The real step u = c (k x + xi)^3 is a different map, and for it the 27 is not the right
    constant. Write gamma = k s^2 E[c^2] / E[c] (``variant_ii_gamma``; gamma = k eta /
    (alpha (B - 5)) for Gaussian examples) and V0 = 15 E[c^2] s^4 / (6 k E[c]), the common
    leading term, so the formula above is V0 / (1 - 4.5 gamma). In E[u^2] the real map has
    E[c^2] E[(k x + xi)^6] = E[c^2] (15 s^6 + 45 k^2 s^4 V + ...): the cross term of xi^3
    with 3 k^2 x^2 xi adds 18 to the 27, which gives the "45" of a naive full expansion. But
    E[x u] gains E[c] k^3 E[x^4] as well, and since x is Gaussian to leading order,
    k^3 E[x^4] = 3 k^3 V^2 = 7.5 gamma k s^2 V (1 + O(gamma)): the same order as the 18. Keeping
    both, 6 k E[c] s^2 V = E[c^2] (15 s^6 + 30 k^2 s^4 V) + O(gamma^2): the real map's first
    correction has the constant 30 (45 - 15), i.e.

        V = V0 (1 + 5 gamma + O(gamma^2)),

    against V0 (1 + 4.5 gamma) for 27 and V0 (1 + 7.5 gamma) for 45. The higher terms are
    ``variant_ii_series``. For the real map this formula is therefore a leading-order
    prediction; its error is |1 / (1 - 4.5 gamma) - series / V0|, 0.07 % at gamma = 0.002.

    Validity: the clip must be inactive, which needs alpha B >> 1 (the batch SNR mu^2 /
    sigma_hat^2 of a coordinate at its minimum is about 1 / B, and the clip acts once it
    exceeds alpha). The few clipped batches are those with the largest cubic steps, so their
    share of E[u^2] (``variant_ii_clip_share``) sets the error: 5e-3 at alpha B = 32, 4e-5 at
    alpha B = 64. The restoring force is cubic in the gradient, so this is not a Gibbs law
    of L; the temperature k V is about 5 eta s^2 / (2 alpha B), i.e. 5 / (alpha B) times that
    of plain SGD.
    """
    c1, c2 = sngrad_gain_moments("II", sigma, batch_size, alpha, eta)
    s2 = sigma * sigma / batch_size
    return 15.0 * c2 * s2**3 / (6.0 * k * c1 * s2 - 27.0 * k * k * c2 * s2 * s2)


def variant_ii_gamma(k, sigma, batch_size, alpha, eta) -> float:
    """The small parameter of variant II's stationary law, gamma = k s^2 E[c^2] / E[c] with
    c = eta / (alpha sigma_hat^2) and s^2 = sigma^2 / B. B sigma_hat^2 / sigma^2 is chi-square
    with n = B - 1 degrees of freedom, so gamma = k eta / (alpha (B - 5)), whatever sigma."""
    c1, c2 = sngrad_gain_moments("II", sigma, batch_size, alpha, eta)
    return float(k * sigma * sigma / batch_size * c2 / c1)


def _normal_moment(order: int) -> int:
    """E z^order for z ~ N(0, 1): (order - 1)!! for even orders, 0 for odd ones."""
    return 0 if order % 2 else math.prod(range(order - 1, 0, -2))


@cache
def _variant_ii_coefficients(n_terms: int, dof: int) -> tuple[Fraction, ...]:
    """Exact coefficients b_p of E[y^2] = sum_p b_p gamma^p, p = 1..n_terms, for the map
    y' = y - g (y + z)^3 with z ~ N(0, 1) and g = a / Q, Q ~ chi-square(dof) (see
    ``variant_ii_series``). Moments m_{2j} = E[y^{2j}] are O(gamma^j); the stationarity
    condition of m_{2J} at order gamma^p fixes the coefficient m_{2J}[p] once the lower orders
    and m_{2J+2}[p] are known, so each order is solved from J = p down to J = 1."""

    def gain_ratio(i: int) -> Fraction:  # E[g^i] / (E[g] gamma^(i-1)), gamma = E[g^2] / E[g]
        inverse = [Fraction(1, math.prod(dof - 2 * j for j in range(1, m + 1)))
                   for m in range(1, max(i, 2) + 1)]  # E[Q^-m], m = 1, 2, ...
        return inverse[i - 1] / (inverse[0] * (inverse[1] / inverse[0]) ** (i - 1))

    moments: dict[int, dict[int, Fraction]] = {0: {0: Fraction(1)}}

    def m(order: int, p: int) -> Fraction:
        return moments.get(order, {}).get(p, Fraction(0))

    def mixed(y_power: int, w_power: int, p: int) -> Fraction:  # [gamma^p] E[y^a (y + z)^b]
        return sum((math.comb(w_power, j) * _normal_moment(w_power - j) * m(y_power + j, p)
                    for j in range(w_power + 1) if _normal_moment(w_power - j)), Fraction(0))

    for p in range(1, n_terms + 1):
        for J in range(p, 0, -1):
            moments.setdefault(2 * J, {})
            # E[(y - u)^{2J}] - E[y^{2J}] = sum_i C(2J, i) (-1)^i E[g^i] E[y^{2J-i} w^{3i}] = 0;
            # divided by E[g], the i = 1 term holds -6 J m_{2J}, still unset (0) here
            rest = sum((math.comb(2 * J, i) * (-1) ** i * gain_ratio(i)
                        * mixed(2 * J - i, 3 * i, p - i + 1) for i in range(1, 2 * J + 1)
                        if p - i + 1 >= 0), Fraction(0))
            moments[2 * J][p] = rest / (6 * J)
    return tuple(moments[2][p] for p in range(1, n_terms + 1))


def variant_ii_coefficients(batch_size: int, n_terms: int = 4) -> np.ndarray:
    """a_0 .. a_{n_terms - 1} of the real variant II step's series (``variant_ii_series``),
    Var x = V0 (a_0 + a_1 gamma + a_2 gamma^2 + ...): 1, 5, -35.1, -1275 at B = 32.
    They depend on B alone, through the inverse chi-square moments of the gain."""
    n = int(batch_size) - 1
    if n <= 4 * n_terms:  # order p needs E[g^{2p}], i.e. the moment E[Q^-2p] of the chi-square
        raise SngradError(f"{n_terms} terms need batch_size > {4 * n_terms + 1}")
    b = _variant_ii_coefficients(int(n_terms), n)
    return np.array([float(c / b[0]) for c in b])


def variant_ii_series(k, sigma, batch_size, alpha, eta, n_terms: int = 4) -> np.ndarray:
    """Terms of the small-gamma series of the stationary variance of the *real* variant II
    step, x' = x - c (k x + xi)^3 (clip inactive), on L = k x^2 / 2.

    In y = k x / s the map is y' = y - g (y + z)^3 with z ~ N(0, 1) and g = k s^2 c =
    (k eta / alpha) / Q, Q = B sigma_hat^2 / sigma^2 ~ chi-square(B - 1), independent of y and
    z. Expanding E[y'^{2J}] = E[y^{2J}] for J = 1, 2, ... in powers of gamma = E[g^2] / E[g]
    gives a hierarchy that is triangular order by order (``_variant_ii_coefficients``), and

        Var x = V0 (1 + 5 gamma + a_2 gamma^2 + a_3 gamma^3 + ...),  V0 = 2.5 gamma s^2 / k^2,

    whose first correction carries the constant 30 of ``variant_ii_variance``'s docstring;
    a_2 = -151/12 for a constant gain and -35.1 at B = 32, where the randomness of sigma_hat
    adds to it (``variant_ii_coefficients``). The series is asymptotic, its coefficients grow
    fast (a_3 = -1275, a_4 = +84900 at B = 32): use it where its terms still fall, gamma up to
    about 0.01, and read the first term left out as its error. Checked against the simulator
    at gamma = 0.01, alpha B = 64: 1.0457 +- 0.0012 V0 measured over 72 million chain-steps,
    1.0465 from three terms, 1.0452 from four.

    Returns the n_terms terms V0 a_p gamma^p (units of x^2), leading term first; the
    prediction to a given order is the sum of the first terms.
    """
    gamma = variant_ii_gamma(k, sigma, batch_size, alpha, eta)
    v0 = 2.5 * gamma * sigma * sigma / batch_size / k**2  # = 15 E[c^2] s^4 / (6 k E[c])
    return v0 * variant_ii_coefficients(batch_size, n_terms) * gamma ** np.arange(n_terms)


def variant_ii_clip_share(alpha: float, batch_size: int, n_grid: int = 4001) -> float:
    """Share of E[u^2] that variant II's unclipped cubic step puts on the batches where its clip
    acts, at the minimum: E[Q^-2 z^6 ; z^2 > alpha Q] / E[Q^-2 z^6], z ~ N(0, 1) the batch mean
    in units of s, Q ~ chi-square(B - 1) (B sigma_hat^2 / sigma^2).

    The clip acts when mu^2 > alpha sigma_hat^2, i.e. z^2 > alpha Q, and then replaces
    c mu^3 by the smaller eta mu; the formulas for the unclipped step are off by about this
    share. It is small only for alpha B >> 1: about 5e-3 at alpha B = 32 (alpha = 1, B = 32),
    4e-5 at alpha B = 64 (alpha = 2), 0.24 at alpha B = 16 (alpha = 1, B = 16). Quadrature
    over q = log Q as in ``batch_std_expectation``, with the closed-form Gaussian tail
    E[z^6 ; |z| > t] = 2 (phi(t) (t^5 + 5 t^3 + 15 t) + 15 Phi(-t)).
    """
    n = int(batch_size) - 1
    if n <= 4:
        raise SngradError("E[Q^-2] needs batch_size > 5")
    spread = 12.0 * math.sqrt(2.0 / n) + 2.0
    q = np.linspace(math.log(n) - 2.0 * spread, math.log(n) + spread, n_grid)
    chi2 = np.exp(q)
    log_pdf = (n / 2 - 1) * q - chi2 / 2 - (n / 2) * math.log(2) - math.lgamma(n / 2)
    weight = np.exp(log_pdf + q) / chi2**2  # density of q, times Q^-2
    t = np.sqrt(alpha * chi2)
    upper = np.array([0.5 * math.erfc(v / math.sqrt(2.0)) for v in t])
    tail = 2.0 * (np.exp(-t * t / 2) / math.sqrt(2 * math.pi) * (t**5 + 5 * t**3 + 15 * t)
                  + 15.0 * upper)
    return float(np.trapezoid(tail * weight, q) / (15.0 * np.trapezoid(weight, q)))


def simulate_truncated_variant_ii(key, *, curvature: float, sigma: float, batch_size: int,
                                  alpha: float, eta: float, n_chains: int, burn_in: int,
                                  n_steps: int) -> tuple[float, float]:
    """E[x^2] of the truncated variant II map of ``variant_ii_variance`` and its standard error.

    Every step draws B per-example gradient noises per chain, as ``simulate`` does, and moves
    by u = c (xi^3 + 3 k x xi^2) with xi their mean and c = eta / (alpha sigma_hat^2), sigma_hat^2
    their population variance. Chains are independent, so the spread of their time averages
    gives the standard error.
    """
    if batch_size < 6:
        raise SngradError("E[c^2] is finite for batch_size >= 6")
    per_chain = _simulate_truncated_ii(
        key, jnp.float32(curvature), jnp.float32(sigma), jnp.float32(alpha), jnp.float32(eta),
        batch_size=int(batch_size), n_chains=int(n_chains), burn_in=int(burn_in),
        n_steps=int(n_steps))
    mean, se = mean_and_se(np.asarray(per_chain, float) / n_steps)
    return float(mean), float(se)


@partial(jax.jit, static_argnames=("batch_size", "n_chains", "burn_in", "n_steps"))
def _simulate_truncated_ii(key, k, sigma, alpha, eta, *, batch_size, n_chains, burn_in, n_steps):
    def step(x, t):
        noise = sigma * jax.random.normal(jax.random.fold_in(key, t), (batch_size, n_chains))
        xi, var = noise.mean(axis=0), noise.var(axis=0)
        return x - eta / (alpha * var) * (xi**3 + 3.0 * k * x * xi**2)

    x = jax.lax.fori_loop(0, burn_in, lambda t, x: step(x, t), jnp.zeros(n_chains))

    def measure(t, carry):
        x, total = carry
        return step(x, burn_in + t), total + x * x

    _, total = jax.lax.fori_loop(0, n_steps, measure, (x, jnp.zeros(n_chains)))
    return total


def heavy_ball_rate(eta: float, curvature: float, gamma: float) -> float:
    """Asymptotic contraction factor per step of noise-free heavy-ball momentum on k x^2 / 2:
    the spectral radius of [[1 + gamma - eta k, -gamma], [1, 0]] (gamma = 0 gives |1 - eta k|)."""
    roots = np.roots([1.0, -(1.0 + gamma - eta * curvature), gamma])
    return float(np.max(np.abs(roots)))


# ------------------------------------------------------------------------ control variates
#
# Per-example gradient pairs (g_j, h_j): g at the current parameters, h at a snapshot, drawn
# independently per example and per coordinate. The estimators of E[g] from a batch of B,
# with mu, nu the batch means and G_snap = E[h] known, are mu - lam (nu - G_snap) for
#
#   raw          lam = 0
#   optimal      lam = lam* = Cov(g, h) / Var h           (the true value)
#   same_batch   lam = cov_hat / var_hat from this batch   (unclipped)
#   clipped      the same, clipped to transforms.LAMBDA_RANGE (what training uses)
#   lagged       lam = the previous batch's same_batch lam (LAGGED_FIRST_LAMBDA first)
#   svrg         lam = 1

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


# ------------------------------------------------------------------ pass rule of the checks
#
# A measurement of an exact prediction is held to its own Monte Carlo error, not to a flat
# relative tolerance: a flat 5 % lets a constant that is wrong by a few percent pass whenever
# the simulation is a hundred times more precise than that.

# FLOOR: the relative error that the Monte Carlo standard error does not see. The exact
# predictions are closed forms or quadratures good to 1e-6, but the simulations run in float32,
# sum up to 40,000 steps per chain, and the momentum rates of the theory notebook are slopes
# fitted over a window in which the error oscillates (0.09 % off at momentum 0.9). 0.2 % covers
# these with room, and Z_BOUND * FLOOR = 0.8 % stays far below the few percent at which a wrong
# constant must fail.
FLOOR = 0.002
# Z_BOUND: the theory notebook has about 130 exact checks. At |z| <= 3 a correct formula would
# fail somewhere in about one run in three (P(|z| > 3) = 0.27 % per check); at 4 the chance is
# 6e-5 per check, under 1 % per run, while a prediction 3 % off still fails once its relative
# standard error is below 0.7 %.
Z_BOUND = 4.0


def _reference(predicted, scale):
    return np.abs(np.asarray(predicted if scale is None else scale, float))


def z_score(predicted, measured, mc_se, floor, scale=None):
    """Standardised deviation of a measurement from a prediction:

        z = (measured - predicted) / sqrt(mc_se^2 + (floor * ref)^2),

    ref = |predicted|, or ``scale`` for a claim whose prediction is 0 (the scale names the size
    of the effect that should be absent). ``mc_se`` is the Monte Carlo standard error of
    measured - predicted, ``floor`` a relative error allowed for what the Monte Carlo error does
    not see (float32 sums, quadrature, a rate fitted over a finite window). Broadcasts; a zero
    denominator gives +-inf (nan for 0 / 0); scalars in, a float out.
    """
    predicted, measured, mc_se = (np.asarray(a, float) for a in (predicted, measured, mc_se))
    spread = np.hypot(mc_se, floor * _reference(predicted, scale))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (measured - predicted) / spread
    return float(z) if np.ndim(z) == 0 else z


def passes(predicted, measured, mc_se, floor, z_bound, scale=None):
    """|z_score| <= z_bound; a nan z fails."""
    ok = np.abs(z_score(predicted, measured, mc_se, floor, scale)) <= z_bound
    return bool(ok) if np.ndim(ok) == 0 else ok


def resolves(predicted, alternative, mc_se, floor, z_bound, scale=None):
    """Whether a check can tell ``predicted`` from a stated ``alternative`` value: no
    measurement passes both, i.e. |predicted - alternative| > z_bound (d_p + d_a), with
    d_v = sqrt(mc_se^2 + (floor * |v|)^2) the denominator of ``z_score`` for the value v (or
    ``scale`` for both, if given)."""
    predicted, alternative, mc_se = (np.asarray(a, float) for a in (predicted, alternative, mc_se))
    d_p = np.hypot(mc_se, floor * _reference(predicted, scale))
    d_a = np.hypot(mc_se, floor * _reference(alternative, scale))
    ok = np.abs(predicted - alternative) > z_bound * (d_p + d_a)
    return bool(ok) if np.ndim(ok) == 0 else ok
