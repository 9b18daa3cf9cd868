"""Closed-form predictions for linear stochastic-gradient maps on quadratics.

On L = k x^2 / 2 a step x' = x - a (k x + xi) with zero-mean noise xi, Var xi = s^2, is linear in
x; squaring and taking expectations at stationarity gives its variance exactly, for a fixed gain
(``discrete_variance``) or a random one drawn afresh each step (``random_gain_variance``).
``sde_variance`` is the continuous-time limit, ``batch_std_expectation`` the expectation over
the batch standard deviation that the sngrad gains need, ``heavy_ball_rate`` the noise-free
contraction factor of momentum.
"""

from __future__ import annotations

import math

import numpy as np

from sngrad.errors import SngradError


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


def heavy_ball_rate(eta: float, curvature: float, gamma: float) -> float:
    """Asymptotic contraction factor per step of noise-free heavy-ball momentum on k x^2 / 2:
    the spectral radius of [[1 + gamma - eta k, -gamma], [1, 0]] (gamma = 0 gives |1 - eta k|)."""
    roots = np.roots([1.0, -(1.0 + gamma - eta * curvature), gamma])
    return float(np.max(np.abs(roots)))
