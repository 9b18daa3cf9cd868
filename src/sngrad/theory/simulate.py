"""Many independent chains of a stochastic-gradient iteration, in one jitted ``lax.scan``.

Each step moves every chain by

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
memory does not grow with the number of steps (``sngrad.theory.processes.Stationary``).

``descent_path`` is the noise-free counterpart: one trajectory of gradient descent, heavy-ball
momentum or Adam, for the lecture-note pictures.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from sngrad.errors import SngradError
from sngrad.theory.processes import Stationary
from sngrad.transforms import scale_factor  # the one definition of the sngrad factors

METHODS = ("sgd", "I", "II", "III")
PATH_METHODS = ("gd", "momentum", "adam")


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
