"""The losses the theory simulations run on, and the stationary statistics they return.

``Quadratic`` and ``DoubleWell`` are frozen dataclasses, so a loss is hashable and can be a static
argument of ``jax.jit`` (``sngrad.theory.simulate``). ``Stationary`` holds per-chain time
averages; chains are independent, so the spread of those averages over chains gives an honest
Monte Carlo standard error whatever the autocorrelation within a chain (``mean_and_se``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from sngrad.errors import SngradError


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
