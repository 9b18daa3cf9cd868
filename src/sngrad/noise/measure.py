"""The gradient-noise study at fixed parameters: noise against batch size, unbiased estimators.

At each checkpoint of a reference run the parameters are held fixed and many random batches of
every batch size B are drawn from the training split, **with replacement**, so that the B
per-example gradients ``g_j`` of a batch are i.i.d. draws from the training set's empirical
distribution with mean ``G`` (the full training-split gradient) and covariance ``Sigma``
(population covariance over the N training examples). A batch gives, per coordinate i,

    mu_i = (1/B) sum_j g_ji,          v_i = (1/B) sum_j (g_ji - mu_i)^2     (population variance)

which is what the sngrad variants see (``sigma_i = sqrt(v_i)``, see :mod:`sngrad.transforms`).

Estimators (per layer, and for the network from the network's sums; biases count as weights on
a constant input 1):

* ``E[v_i] = (B - 1)/B Sigma_ii``, so ``T = B/(B - 1) sum_i v_i`` is unbiased for ``tr Sigma``.
* ``E|mu|^2 = |G|^2 + tr(Sigma)/B``, so ``S = |mu|^2 - T/B = |mu|^2 - sum_i v_i/(B - 1)`` is
  unbiased for ``|G|^2`` (the within-batch estimator; McCandlish et al. 2018, appendix A, give
  the equivalent one built from two batch sizes, which needs no variance but two batches).
* ``B_simple = tr(Sigma)/|G|^2`` is estimated as ``mean(T)/mean(S)`` over the batches (a ratio
  of unbiased means, consistent; it is not a mean of per-batch ratios, which would be dominated
  by batches where S is near 0). Its standard error is the delta-method one,
  ``se^2 = (var(T) - 2 r cov(T, S) + r^2 var(S)) / (n mean(S)^2)`` with ``r`` the ratio.
* The old same-batch estimate ``sum_i v_i / |mu|^2`` (``noise_scale_biased``, as a ratio of
  means) has expectation ``((B - 1)/B tr Sigma) / (|G|^2 + tr(Sigma)/B) = (B - 1) B_simple /
  (B + B_simple)``: it can never exceed B - 1 and says nothing about B_simple >> B.

Per-coordinate statistics (over the *informative* coordinates: those whose per-example gradient
is non-zero for at least one training example; a weight on a pixel that is constant in the
training split, or on a ReLU that is dead for every example, has no gradient to shrink):

* ``sigma_median`` (and quartiles) of the per-example ``sigma_i``; ``mean_noise =
  sigma_median / sqrt(B)``, the noise of the batch mean; ``mean_error``: the median over the
  coordinates of the measured root-mean-square error ``sqrt(mean_batches (mu_i - G_i)^2)``
  of the batch mean against the full gradient (its expectation is ``sqrt(Sigma_ii / B)``).
* The batch signal-to-noise ratio ``sqrt(B) |mu_i| / sigma_i`` (median over the coordinates
  with ``sigma_i > 0`` in the batch) and its pure-noise reference, measured on the same batch
  with every example's gradient multiplied by an independent random sign (``mu'`` from one extra
  matrix product; ``E[g^2]`` is unchanged by the flip, so ``v' = v + mu^2 - mu'^2``). The flip
  removes the signal and keeps the sparsity pattern: a weight whose gradient is non-zero for a
  single example has ``sqrt(B)|mu|/sigma = sqrt(B/(B - 1))`` with or without signal. For
  Gaussian noise the reference would be ``sqrt(B/(B - 1)) t_{B-1}(0.75)`` (``snr_gaussian_null``,
  about 0.674). ``snr_above_share`` is the share of coordinates above the flipped median (0.5
  under pure noise).
* ``sparse_share``: share of coordinates whose per-example gradient ``a_j d_j`` (layer input
  times loss cotangent of the layer's output) is non-zero for at most one example of the batch,
  counted exactly as ``(A != 0)^T (D != 0)``; ``single_share``: exactly one.
* For each variant at its tuned alpha and at alpha = 1: the mean factor ``f`` and the share of
  coordinates with ``f < 1``. A tuned alpha is read as its run reads it (:class:`TunedAlpha`,
  ``alpha_reference`` in best.json): ``"absolute"`` as given; ``"rms"`` (tuned I and III) as
  ``alpha / s_b`` on batch b, ``s_b = sqrt(sum_i v_i / P)`` the root-mean-square sigma over
  *all* P coordinates of the batch's gradient (every layer's weights and biases, informative or
  not, as the transform sees them; :func:`sngrad.transforms.step_alpha`). The alpha = 1
  columns are the prototype's untuned alpha, always absolute. Variant II's tuned alpha is read
  as the protocol sets it at every batch size, ``alpha_scaled / B`` (``per_batch_size``: its
  best.json gives ``alpha_scaled``), so it relaxes with B as the SVAG factor does; a run tuned
  at one B is then measured at the alpha it would have been given at each other B.
  ``alpha_<v>_tuned`` is the alpha of best.json as written (relative to s_b for an "rms" run,
  raw at the tuning batch size for II).

The batches (and signs) of a batch size depend only on the seed and B, so every checkpoint is
measured on the same examples. Every per-batch scalar is averaged over the batches with its
standard error ``std / sqrt(n)``. For the summary, the unbiased parts of all batch sizes are
pooled before the ratio is taken (:func:`sngrad.analysis.noise_summary.pooled_noise_scale`).
The exact ``G``, ``tr Sigma`` and per-coordinate ``Sigma_ii`` over the whole training split
are computed too (``*_exact``), in chunks, so the estimators can be checked.

Its command line (the workflow's noise rule) is :mod:`sngrad.noise.command`::

    python -m sngrad noise --data D.npz --reference-dir DIR --tuned sgd+sngrad1=best.json ...
        --batch-sizes 8,16,...,4096 --batches 32 --seed 0 --out results/<p>/noise/<dataset>.csv
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sngrad.errors import SngradError
from sngrad.models import Params, cross_entropy
from sngrad.names import VARIANTS
from sngrad.transforms import scale_factor, step_alpha

DEFAULT_BATCH_SIZES = tuple(2**k for k in range(3, 13))  # 8 ... 4096
DEFAULT_BATCHES = 32
# Batches of at most this many examples get the full --batches draws; above, the number of
# batches shrinks in proportion to 1/B (never below MIN_BATCHES): the statistics of a large
# batch fluctuate less, and the cost of a batch size stays at most that of 512 x --batches.
FULL_DRAWS_UP_TO = 512
MIN_BATCHES = 8
EXACT_CHUNK = 2048
# Batches per call of the compiled program: at most this many coordinates x batches (4 float32
# arrays of it come back to the host), so that a wide network does not exhaust the memory.
CHUNK_ELEMENTS = 1 << 23
ALL = "all"

# Per-batch scalars of one group of coordinates (a layer or the network), in CSV order.
_COORDINATE_STATS = (
    "sigma_median",
    "sigma_q25",
    "sigma_q75",
    "mean_noise",
    "snr_batch_median",
    "snr_pure_noise",
    "snr_above_share",
    "sparse_share",
    "single_share",
)


def factor_columns() -> list[str]:
    """``factor_mean_<v>_<setting>`` and ``shrink_share_<v>_<setting>`` for every variant."""
    return [
        f"{kind}_{v}_{setting}"
        for setting in ("tuned", "alpha1")
        for v in VARIANTS
        for kind in ("factor_mean", "shrink_share")
    ]


def csv_columns() -> list[str]:
    """The columns of ``results/<profile>/noise/<dataset>.csv``."""
    per_batch = [*_COORDINATE_STATS, *factor_columns()]
    return [
        "checkpoint",
        "epoch",
        "batch_size",
        "layer",
        "n_batches",
        "n_coordinates",
        "noise_scale",
        "noise_scale_se",
        "noise_scale_resolved",
        "g2_unbiased",
        "g2_unbiased_se",
        "trace_sigma",
        "trace_sigma_se",
        "noise_scale_biased",
        "noise_scale_biased_se",
        "g2_trace_cov",
        "noise_scale_exact",
        "g2_exact",
        "trace_sigma_exact",
        *[c for name in per_batch for c in (name, f"{name}_se")],
        "sigma_median_exact",
        "mean_error",
        "snr_gaussian_null",
        *[f"alpha_{v}_tuned" for v in VARIANTS],
    ]


# ----------------------------------------------------------------------------- estimators


def mean_and_se(values) -> tuple[float, float]:
    """Mean over the batches and its standard error ``std(ddof=1)/sqrt(n)`` (NaN if n < 2)."""
    x = np.asarray(values, np.float64)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan, math.nan
    se = float(np.std(x, ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(np.mean(x)), se


def ratio_of_means(numerator, denominator) -> tuple[float, float]:
    """``mean(T)/mean(S)`` over paired per-batch values and its delta-method standard error."""
    t = np.asarray(numerator, np.float64)
    s = np.asarray(denominator, np.float64)
    n = t.size
    mt, ms = float(np.mean(t)), float(np.mean(s))
    if ms == 0:
        return math.nan, math.nan
    r = mt / ms
    if n < 2:
        return r, math.nan
    cov = np.cov(t, s, ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * ms * ms)
    return r, float(math.sqrt(max(var, 0.0)))


def unbiased_norms(mean_sq, var_sum, batch_size: int):
    """Per batch: ``(S, T)``, unbiased estimates of ``|G|^2`` and ``tr Sigma``.

    ``mean_sq = |mu|^2`` and ``var_sum = sum_i v_i`` (population variances) of a batch of
    ``batch_size >= 2`` i.i.d. examples: ``T = B/(B - 1) var_sum``, ``S = mean_sq - T/B``.
    """
    if batch_size < 2:
        raise SngradError(f"batch size {batch_size} has no variance; allowed: >= 2")
    trace = np.asarray(var_sum, np.float64) * (batch_size / (batch_size - 1))
    return np.asarray(mean_sq, np.float64) - trace / batch_size, trace


# |G|^2 counts as resolved when its unbiased estimate lies more than this many standard errors
# above zero; below that the ratio tr(Sigma) / |G|^2 divides by noise and can come out negative
# or arbitrarily large, so the CSV and the report say "not resolved" instead of a number.
RESOLVED_Z = 2.0


def is_resolved(g2: float, g2_se: float) -> bool:
    """Whether an estimate of ``|G|^2`` is resolved: ``g2 > RESOLVED_Z * g2_se`` (finite)."""
    return bool(math.isfinite(g2) and math.isfinite(g2_se) and g2 > RESOLVED_Z * g2_se)


def noise_scale_estimates(mean_sq, var_sum, batch_size: int) -> dict[str, float]:
    """B_simple and its parts from per-batch ``|mu|^2`` and ``sum v`` (arrays over batches).

    Returns ``noise_scale`` (``mean T / mean S``; NaN unless ``noise_scale_resolved``, see
    :func:`is_resolved`), ``g2_unbiased``, ``trace_sigma`` (means
    of S and T) and ``noise_scale_biased`` (``mean(sum v) / mean |mu|^2``), each with ``_se``,
    and ``g2_trace_cov``, the covariance of the two means (``cov(S, T) / n``), so that the
    parts of several batch sizes can be pooled
    (:func:`sngrad.analysis.noise_summary.pooled_noise_scale`).
    """
    g2, trace = unbiased_norms(mean_sq, var_sum, batch_size)
    out = {}
    out["g2_trace_cov"] = float(np.cov(g2, trace)[0, 1] / g2.size) if g2.size > 1 else math.nan
    out["noise_scale"], out["noise_scale_se"] = ratio_of_means(trace, g2)
    out["g2_unbiased"], out["g2_unbiased_se"] = mean_and_se(g2)
    out["trace_sigma"], out["trace_sigma_se"] = mean_and_se(trace)
    out["noise_scale_resolved"] = is_resolved(out["g2_unbiased"], out["g2_unbiased_se"])
    if not out["noise_scale_resolved"]:
        out["noise_scale"] = out["noise_scale_se"] = math.nan
    out["noise_scale_biased"], out["noise_scale_biased_se"] = ratio_of_means(var_sum, mean_sq)
    return out


def biased_expectation(noise_scale: float, batch_size: int) -> float:
    """What the same-batch estimate converges to: ``(B - 1) B_simple / (B + B_simple)``."""
    return (batch_size - 1) * noise_scale / (batch_size + noise_scale)


def gaussian_snr_null(batch_size: int) -> float:
    """Median of ``sqrt(B)|mu|/sigma`` for i.i.d. Gaussian gradients with mean 0.

    ``sqrt(B - 1) mu / sigma`` (population sigma) is Student-t with B - 1 degrees of freedom,
    so the median of the absolute value is ``sqrt(B/(B - 1)) t_{B-1}(0.75)``.
    """
    from scipy.stats import t as student_t

    return float(math.sqrt(batch_size / (batch_size - 1)) * student_t.ppf(0.75, batch_size - 1))


def fit_loglog_slope(batch_sizes, values) -> tuple[float, float]:
    """Least-squares slope of ``log y`` against ``log B`` and its standard error.

    The standard error is the ordinary one from the residual scatter,
    ``sqrt(RSS/(n - 2) / sum (log B - mean)^2)``; NaN for fewer than 3 finite positive points.
    """
    b = np.asarray(batch_sizes, np.float64)
    y = np.asarray(values, np.float64)
    ok = np.isfinite(y) & (y > 0) & (b > 0)
    if ok.sum() < 3:
        return math.nan, math.nan
    lx, ly = np.log(b[ok]), np.log(y[ok])
    dx = lx - lx.mean()
    sxx = float(dx @ dx)
    slope = float(dx @ (ly - ly.mean()) / sxx)
    resid = ly - ly.mean() - slope * dx
    return slope, float(math.sqrt(float(resid @ resid) / (ok.sum() - 2) / sxx))


def _nanmedian_rows(a: np.ndarray) -> np.ndarray:
    """Median of every row over its non-NaN entries (NaN for a row without any)."""
    out = np.full(a.shape[0], np.nan)
    for i, row in enumerate(a):
        row = row[~np.isnan(row)]
        if row.size:
            out[i] = np.median(row)
    return out


def coordinate_summary(mean, var, flip_mean, nonzero, informative, batch_size, factors):
    """Per-batch scalars over the informative coordinates of one group of coordinates.

    Args:
      mean, var: (n_batches, P) batch mean and population variance of each coordinate's
        per-example gradient.
      flip_mean: (n_batches, P) the batch mean with every example's gradient multiplied by a
        random sign.
      nonzero: (n_batches, P) number of examples of the batch whose gradient of the
        coordinate is non-zero.
      informative: (P,) bool, the coordinates taken into account.
      batch_size: B.
      factors: ``((column_suffix, variant, alpha), ...)``; ``alpha`` a number for every batch,
        or (n_batches,) numbers, one per batch (:func:`batch_alphas`).

    Returns a dict of (n_batches,) float64 arrays named as in the CSV (module docstring).
    Medians and quartiles are taken here with numpy's selection algorithm: an XLA sort of the
    coordinates on the CPU costs tens of milliseconds per batch, more than the whole forward
    and backward pass.
    """
    informative = np.asarray(informative, bool)
    mean, var, flip, nonzero = (
        np.asarray(a, np.float64)[:, informative] for a in (mean, var, flip_mean, nonzero)
    )
    n = mean.shape[0]
    names = [*_COORDINATE_STATS] + [
        f"{kind}_{suffix}" for suffix, _, _ in factors for kind in ("factor_mean", "shrink_share")
    ]
    if mean.shape[1] == 0:
        return {name: np.full(n, np.nan) for name in names}
    var = np.maximum(var, 0.0)
    sigma = np.sqrt(var)
    q25, med, q75 = np.quantile(sigma, [0.25, 0.5, 0.75], axis=1)
    root_b = math.sqrt(batch_size)
    spread = sigma > 0
    flip_var = np.maximum(var + mean * mean - flip * flip, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(spread, root_b * np.abs(mean) / sigma, np.nan)
        flip_snr = np.where(flip_var > 0, root_b * np.abs(flip) / np.sqrt(flip_var), np.nan)
    null = _nanmedian_rows(flip_snr)
    out = {
        "sigma_median": med,
        "sigma_q25": q25,
        "sigma_q75": q75,
        "mean_noise": med / root_b,
        "snr_batch_median": _nanmedian_rows(snr),
        "snr_pure_noise": null,
        "snr_above_share": np.sum(spread & (snr > null[:, None]), axis=1)
        / np.maximum(np.sum(spread, axis=1), 1),
        "sparse_share": np.mean(nonzero <= 1, axis=1),
        "single_share": np.mean(nonzero == 1, axis=1),
    }
    for suffix, variant, alpha in factors:
        if np.ndim(alpha) == 0:
            f = np.asarray(scale_factor(variant, mean, var, alpha))
        else:  # scale_factor takes one alpha: map it over the batches, row by row
            per_batch = jax.vmap(functools.partial(scale_factor, variant))
            f = np.asarray(per_batch(mean, var, jnp.asarray(alpha)))
        out[f"factor_mean_{suffix}"] = f.mean(axis=1)
        out[f"shrink_share_{suffix}"] = np.mean(f < 1.0, axis=1)
    return out


# ----------------------------------------------------------------------------- the network


def _layer_factors(params: Params, x: jax.Array, y: jax.Array):
    """Per layer: the input ``A_l`` with a column of ones appended (the bias is a weight on a
    constant input) and the per-example loss cotangent ``D_l = dl_j/dz_l[j]``.

    A zero tap added to every pre-activation is differentiated instead of the weights, so that
    the backward pass yields D directly; the per-example gradient of the layer's (W; b) is the
    outer product ``a_j d_j^T``.
    """
    taps = [jnp.zeros((x.shape[0], w.shape[1]), x.dtype) for w, _ in params]

    def total(taps):
        inputs, a = [], x
        for i, ((w, b), tap) in enumerate(zip(params, taps, strict=True)):
            inputs.append(a)
            z = a @ w + b + tap
            a = z if i == len(params) - 1 else jax.nn.relu(z)
        return jnp.sum(cross_entropy(a, y)), inputs

    loss, backward, inputs = jax.vjp(total, taps, has_aux=True)
    (cotangents,) = backward(jnp.ones_like(loss))
    ones = jnp.ones((x.shape[0], 1), x.dtype)
    return [jnp.concatenate([a, ones], axis=1) for a in inputs], cotangents


def _contract(a, d):
    """``a^T d`` over the batch axis, flattened to a vector of the layer's coordinates."""
    return jax.lax.dot_general(a, d, (((0,), (0,)), ((), ()))).reshape(-1)


def layer_moments(params: Params, x: jax.Array, y: jax.Array, signs: jax.Array):
    """Per layer: flat ``(mean, var, flip_mean, nonzero)`` over the batch (see module doc)."""
    inputs, cotangents = _layer_factors(params, x, y)
    inv_b = 1.0 / x.shape[0]
    out = []
    for a, d in zip(inputs, cotangents, strict=True):
        mean = _contract(a, d) * inv_b
        second = _contract(a * a, d * d) * inv_b
        flip = _contract(a, d * signs[:, None]) * inv_b
        nonzero = _contract((a != 0).astype(a.dtype), (d != 0).astype(d.dtype))
        out.append((mean, jnp.maximum(second - mean * mean, 0.0), flip, nonzero))
    return out


@jax.jit
def _chunk_sums(params: Params, x, y, weight):
    """Per layer ``(sum_j g_j, sum_j g_j^2, count_j[g_j != 0])`` with example weights 0 or 1."""
    inputs, cotangents = _layer_factors(params, x, y)
    out = []
    for a, d in zip(inputs, cotangents, strict=True):
        d = d * weight[:, None]
        nonzero = _contract((a != 0).astype(a.dtype), (d != 0).astype(d.dtype))
        out.append((_contract(a, d), _contract(a * a, d * d), nonzero))
    return out


def exact_moments(params: Params, x: np.ndarray, y: np.ndarray, chunk: int = EXACT_CHUNK):
    """Per layer ``(G, Sigma_diag, count)`` over the whole of ``x``: full-data mean, population
    variance and number of examples with a non-zero gradient, per coordinate (float64).

    Chunks of a fixed size (the last one padded with zero-weight examples) keep it to one
    compiled program; the sums are accumulated in float64.
    """
    n = len(x)
    chunk = min(chunk, n)
    sums = None
    for start in range(0, n, chunk):
        xs, ys = x[start : start + chunk], y[start : start + chunk]
        weight = np.ones(chunk, np.float32)
        if len(xs) < chunk:
            pad = chunk - len(xs)
            weight[len(xs) :] = 0.0
            xs = np.concatenate([xs, np.zeros((pad, x.shape[1]), x.dtype)])
            ys = np.concatenate([ys, np.zeros(pad, y.dtype)])
        part = [
            [np.asarray(t, np.float64) for t in layer]
            for layer in _chunk_sums(params, xs, ys, weight)
        ]
        sums = (
            part
            if sums is None
            else [
                [s + p for s, p in zip(sl, pl, strict=True)]
                for sl, pl in zip(sums, part, strict=True)
            ]
        )
    out = []
    for s1, s2, count in sums:
        g = s1 / n
        out.append((g, np.maximum(s2 / n - g * g, 0.0), count))
    return out


@jax.jit
def _batch_program(params, x_all, y_all, index, signs, full_mean):
    """Scan over a chunk of batches of one batch size (one compiled program per batch size).

    Returns the running sum of ``(mu - G)^2`` per coordinate and, per batch, the flat
    ``(mean, var, flip_mean, nonzero)`` of all coordinates (layers concatenated in order).
    """

    def step(sq_error, draw):
        idx, sign = draw
        moments = layer_moments(params, x_all[idx], y_all[idx], sign)
        flat = tuple(jnp.concatenate(c) for c in zip(*moments, strict=True))
        return sq_error + jnp.square(flat[0] - full_mean), flat

    return jax.lax.scan(step, jnp.zeros_like(full_mean), (index, signs))


def n_batches_for(batch_size: int, batches: int) -> int:
    """``batches`` up to :data:`FULL_DRAWS_UP_TO` examples, then in proportion to 1/B."""
    if batch_size <= FULL_DRAWS_UP_TO:
        return batches
    return max(min(batches, MIN_BATCHES), batches * FULL_DRAWS_UP_TO // batch_size)


class TunedAlpha(NamedTuple):
    """A variant's tuned alpha as its best.json gives it: ``alpha`` (None when every setting
    diverged) and how the run reads it, ``reference`` (``sngrad.transforms.REFERENCES``);
    with ``per_batch_size`` the alpha is scale-free and batch size B takes ``alpha / B``
    (variant II, as the tuning protocol converts it)."""

    alpha: float | None
    reference: str = "absolute"
    per_batch_size: bool = False


def _tuned_alpha(value) -> TunedAlpha:
    """A ``tuned`` entry: a :class:`TunedAlpha`, or a bare alpha (a number or None), which is
    read as absolute."""
    if isinstance(value, TunedAlpha):
        return value
    return TunedAlpha(None if value is None else float(value))


def _factor_settings(tuned: Mapping[str, TunedAlpha | float | None]):
    """``((suffix, variant, alpha, reference, per_batch_size), ...)``; variants without a
    tuned alpha left out."""
    settings = [(f"{v}_alpha1", v, 1.0, "absolute", False) for v in VARIANTS]
    for v in VARIANTS:
        alpha, reference, per_batch_size = _tuned_alpha(tuned.get(v))
        if alpha is not None:
            settings.append((f"{v}_tuned", v, alpha, reference, per_batch_size))
    return tuple(settings)


def batch_alphas(variant: str, alpha: float, reference: str, var):
    """The alpha the transform takes on each batch (:func:`sngrad.transforms.step_alpha`).

    ``var`` is (n_batches, P): each row all P coordinates of one batch's gradient (every
    layer's weights and biases). ``"absolute"`` gives ``alpha`` itself; ``"rms"`` an
    (n_batches,) array, ``alpha / s_b`` with ``s_b`` the RMS sigma of row b (the one alpha of
    II under either reference, broadcast).
    """
    if reference == "absolute":
        return alpha
    per_batch = jax.vmap(lambda v: step_alpha(variant, alpha, reference, v))
    return np.asarray(per_batch(jnp.asarray(var, jnp.float32)), np.float64)


def study_checkpoint(
    params: Params,
    x: np.ndarray,
    y: np.ndarray,
    batch_sizes: Sequence[int],
    batches: int,
    seed: int,
    tuned: Mapping[str, TunedAlpha | float | None],
) -> list[dict]:
    """Rows (without checkpoint/epoch) for every batch size and group at fixed ``params``.

    ``tuned`` maps a variant to its :class:`TunedAlpha` (a bare number is an absolute alpha;
    a variant left out or None has no tuned columns). The batches of a batch size depend only
    on (seed, B): every checkpoint sees the same examples, so differences over training are
    not sampling differences.
    """
    exact = exact_moments(params, x, y)
    sizes = [len(g) for g, _, _ in exact]
    ends = np.cumsum(sizes)
    slices = [slice(e - s, e) for s, e in zip(sizes, ends, strict=True)]
    slices.append(slice(0, int(ends[-1])))
    groups = [*(str(i) for i in range(len(params))), ALL]
    g_all, sigma2_all, count_all = (np.concatenate(c) for c in zip(*exact, strict=True))
    informative = count_all > 0
    full_mean = jnp.asarray(g_all, jnp.float32)
    factors = _factor_settings(tuned)
    chunk = max(1, CHUNK_ELEMENTS // len(g_all))
    x_dev, y_dev = jnp.asarray(x), jnp.asarray(y)
    rows = []
    for batch in batch_sizes:
        n = n_batches_for(batch, batches)
        rng = np.random.default_rng([seed, batch])
        index = rng.integers(0, len(x), size=(n, batch), dtype=np.int32)
        signs = rng.choice(np.array([-1.0, 1.0], np.float32), size=(n, batch))
        sq_error = np.zeros(len(g_all))
        per_batch: list[list[dict]] = [[] for _ in groups]
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            sq, (mean, var, flip, nonzero) = _batch_program(
                params, x_dev, y_dev, index[part], signs[part], full_mean
            )
            sq_error += np.asarray(sq, np.float64)
            # the reference of an "rms" alpha is each batch's RMS sigma over all coordinates,
            # not over a layer or the informative ones: what the transform divides by
            resolved = tuple(
                (suffix, variant,
                 batch_alphas(variant, alpha / batch if per_b else alpha, reference, var))
                for suffix, variant, alpha, reference, per_b in factors)
            mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
            flip, nonzero = np.asarray(flip), np.asarray(nonzero)
            for gi, cut in enumerate(slices):
                stats = coordinate_summary(
                    mean[:, cut],
                    var[:, cut],
                    flip[:, cut],
                    nonzero[:, cut],
                    informative[cut],
                    batch,
                    resolved,
                )
                stats["mean_sq"] = np.sum(mean[:, cut] ** 2, axis=1)
                stats["var_sum"] = np.sum(var[:, cut], axis=1)
                per_batch[gi].append(stats)
        null = gaussian_snr_null(batch)
        for gi, (name, cut) in enumerate(zip(groups, slices, strict=True)):
            values = {k: np.concatenate([s[k] for s in per_batch[gi]]) for k in per_batch[gi][0]}
            g, sigma2, mask = g_all[cut], sigma2_all[cut], informative[cut]
            g2_exact, trace_exact = float(g @ g), float(sigma2.sum())
            row = {
                "batch_size": batch,
                "layer": name,
                "n_batches": n,
                "n_coordinates": int(mask.sum()),
                **noise_scale_estimates(values["mean_sq"], values["var_sum"], batch),
                "noise_scale_exact": trace_exact / g2_exact if g2_exact > 0 else math.nan,
                "g2_exact": g2_exact,
                "trace_sigma_exact": trace_exact,
                "sigma_median_exact": _masked_median(np.sqrt(sigma2), mask),
                "mean_error": _masked_median(np.sqrt(sq_error[cut] / n), mask),
                "snr_gaussian_null": null,
            }
            for key in [*_COORDINATE_STATS, *factor_columns()]:
                if key in values:
                    row[key], row[f"{key}_se"] = mean_and_se(values[key])
                else:  # a variant without a tuned alpha
                    row[key], row[f"{key}_se"] = math.nan, math.nan
            for v in VARIANTS:
                alpha = _tuned_alpha(tuned.get(v)).alpha
                row[f"alpha_{v}_tuned"] = math.nan if alpha is None else float(alpha)
            rows.append(row)
    return rows


def _masked_median(values: np.ndarray, mask: np.ndarray) -> float:
    return float(np.median(values[mask])) if mask.any() else math.nan
