"""The sngrad variants as random maps on a quadratic: gain moments and variant II's law.

For variants I and III the factor depends on the batch only through its standard deviation, so
the step is linear with a random gain (``sngrad_gain_moments`` feeds
``closed_forms.random_gain_variance``). Variant II moves by a cubic in the batch mean; its
stationary variance is a closed form for a truncated map (``variant_ii_variance``, exact there)
and a small-gamma series for the real one (``variant_ii_series``), valid while its clip is
inactive (``variant_ii_clip_share``). ``simulate_truncated_variant_ii`` simulates the truncated
map, which ``sngrad.theory.simulate`` does not cover.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import cache, partial

import jax
import jax.numpy as jnp
import numpy as np

from sngrad.errors import SngradError
from sngrad.theory.closed_forms import batch_std_expectation
from sngrad.theory.processes import mean_and_se


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

    with nothing dropped: for this map the formula is exact (tests/analysis/test_verdict_pins.py).

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
