"""The tuning protocol: run names, trial grids, the search's extension, alpha units, selection.

Run names
    A run is a registry optimizer, optionally followed by ``@<alpha>`` for a sngrad optimizer
    whose alpha is fixed in raw units instead of tuned: ``sgd+sngrad1@0.1``. The grammar is
    :mod:`sngrad.names` (:func:`sngrad.names.parse_run` splits a name into a
    :class:`~sngrad.names.RunName`); :func:`second_axis` says what the run tunes.

Axes
    Every run tunes the learning rate. Its second axis is

    - ``momentum`` for ``momentum`` (1 - m log-spaced over ``tune.one_minus_momentum``);
    - ``alpha`` for a sngrad optimizer with a tuned alpha (scale-free alpha log-spaced over
      ``tune.alpha[variant]``); ``momentum+sngradN`` keeps the momentum at
      :data:`SNGRAD_MOMENTUM` and tunes (learning rate, alpha);
    - none for every other run (sgd, adam, adabelief, svag, msvag, +cv, +svrg, ``@alpha``).

Trials (the same number for every run of a cell)
    With ``r = 10^(1 / lr_per_decade)`` and ``n_lr = floor(log_r(lr_max / lr_min)) + 1``, a
    two-parameter run tries the ``n_lr`` learning rates ``lr_min r^k`` times the
    ``second_points`` values of its second axis. A one-parameter run tries
    ``n = n_lr * second_points`` learning rates ``lr_min rho^k``, k = 0..n-1, with
    ``rho = (lr_min r^(n_lr - 1) / lr_min)^(1 / (n - 1))``: the same range, finer.

Extension
    After each round the best setting (selection below) is looked up. While its learning rate
    is the smallest or the largest tried, one more round is trained past that end at the
    run's own spacing: one learning rate (r) times every second-axis value for two-parameter
    runs, ``second_points`` further learning rates (rho) for one-parameter runs, so that every
    round costs every run the same number of trials. It stops when the best is interior, when
    the next learning rate would leave ``tune.lr_bounds`` (``at_bound``). When every setting
    tried so far diverged there is no best, and the search goes downward (a smaller learning
    rate is the one direction that can cure divergence) until a setting converges or the
    lower bound stops it (``at_bound`` and ``all_diverged`` both true).

Alpha units
    The transforms take a raw alpha. The protocol searches a scale-free ``alpha_scaled``:

    - II: ``alpha = alpha_scaled / B``. Where a coordinate's gradient is pure noise,
      mu^2 / sigma^2 is about 1 / B, so alpha_scaled = 1 shrinks like the SVAG factor
      mu^2 / (mu^2 + sigma^2 / B) does, and alpha_scaled >> 1 shrinks most coordinates.
    - I and III: ``alpha = alpha_scaled / sigma_ref``. ``sigma_ref`` is the median, over every
      weight coordinate of every layer (biases left out) whose sigma is not zero, of the
      per-example gradient standard deviation sigma (population, over the examples) at the
      initial parameters ``mlp_init(PRNGKey(init_seed))``, on :data:`SIGMA_REF_EXAMPLES`
      training examples (all of them if the split is smaller) drawn without replacement by
      ``numpy.random.default_rng(SIGMA_REF_SEED)`` and sorted. It does not depend on the batch
      size or the optimizer, so every run of a dataset shares it. At alpha_scaled = 1
      variant I starts by shrinking about half of the weights (those with sigma > sigma_ref)
      and variant III zeroes them. If every sigma is zero, sigma_ref = 1.

Selection (never the test split)
    A setting's score is its validation accuracy after the last epoch, averaged over the
    tuning seeds; ties go to the lower mean validation loss, then to the earlier setting
    (grid order, initial round first). A setting with any diverged seed, or a non-finite mean,
    is excluded; if none is left, best.json says ``"all_diverged": true``.

Seeds
    Tuning seed s trains every setting from ``mlp_init(PRNGKey(init_seed))`` with the batch
    order of ``shuffle_key(s)`` (see :mod:`sngrad.train.engine`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sngrad.names import MOMENTUM_BASES, RunName
from sngrad.spec import TuneSpec

SNGRAD_MOMENTUM = 0.9  # momentum of momentum+sngradN, whose second axis is alpha
SIGMA_REF_EXAMPLES = 1024
SIGMA_REF_SEED = 0
_REL_TOL = 1e-9  # float slack when comparing grid points with lr_max and lr_bounds


# ============================================================================ run names


def second_axis(run: RunName) -> str | None:
    """The run's second tuning axis: ``"momentum"``, ``"alpha"`` or None (one-parameter run)."""
    if run.variant is not None:
        return "alpha" if run.fixed_alpha is None else None
    return "momentum" if run.base in MOMENTUM_BASES else None


# ============================================================================ trials


@dataclass(frozen=True)
class Trial:
    """One setting: a learning-rate grid index, its value, the second-axis value, the round."""

    lr_index: int
    learning_rate: float
    momentum: float | None
    alpha: float | None  # raw
    alpha_scaled: float | None
    round: int


def alpha_unit(variant: str, batch_size: int, sigma_ref: float) -> float:
    """Raw alpha per unit of scale-free alpha: 1 / B for II, 1 / sigma_ref for I and III."""
    return 1.0 / batch_size if variant == "II" else 1.0 / sigma_ref


def lr_count(tune: TuneSpec) -> int:
    """n_lr: grid points lr_min r^k, r = 10^(1 / lr_per_decade), not above lr_max."""
    decades = math.log10(tune.lr_max / tune.lr_min)
    return math.floor(tune.lr_per_decade * decades + _REL_TOL) + 1


def trials_per_round(tune: TuneSpec) -> tuple[int, int]:
    """(trials of the initial grid, trials of each extension round), the same for every run."""
    return lr_count(tune) * tune.second_points, tune.second_points


def lr_ratio(run: RunName, tune: TuneSpec) -> float:
    """The ratio between neighbouring learning rates of ``run``'s grid (r or rho)."""
    coarse = 10.0 ** (1.0 / tune.lr_per_decade)
    if second_axis(run) is not None:
        return coarse
    n_lr, n = lr_count(tune), lr_count(tune) * tune.second_points
    if n == 1:
        return coarse
    return coarse ** ((n_lr - 1) / (n - 1))


def _second_values(run: RunName, tune: TuneSpec, batch_size: int, sigma_ref: float):
    """[(momentum, alpha_raw, alpha_scaled)] along the second axis (one entry if none)."""
    axis, variant = second_axis(run), run.variant
    if axis == "momentum":
        lo, hi = tune.one_minus_momentum
        return [(float(1.0 - v), None, None) for v in np.geomspace(lo, hi, tune.second_points)]
    momentum = SNGRAD_MOMENTUM if run.base in MOMENTUM_BASES else None
    if axis == "alpha":
        lo, hi = tune.alpha[variant]
        unit = alpha_unit(variant, batch_size, sigma_ref)
        return [(momentum, float(a * unit), float(a))
                for a in np.geomspace(lo, hi, tune.second_points)]
    if run.fixed_alpha is not None:
        unit = alpha_unit(variant, batch_size, sigma_ref)
        return [(momentum, run.fixed_alpha, run.fixed_alpha / unit)]
    return [(momentum, None, None)]


def _lr_indices_per_round(run: RunName, tune: TuneSpec) -> int:
    return 1 if second_axis(run) is not None else tune.second_points


def _trials_at(run, tune, batch_size, sigma_ref, indices, round_) -> list[Trial]:
    ratio = lr_ratio(run, tune)
    second = _second_values(run, tune, batch_size, sigma_ref)
    return [
        Trial(k, float(tune.lr_min * ratio**k), m, a, a_s, round_)
        for k in indices
        for m, a, a_s in second
    ]


def initial_trials(run: RunName, tune: TuneSpec, batch_size: int, sigma_ref: float) -> list[Trial]:
    """Round 0: the grid of the module docstring, learning rate major, second axis minor."""
    n_lr = lr_count(tune)
    n = n_lr if second_axis(run) is not None else n_lr * tune.second_points
    return _trials_at(run, tune, batch_size, sigma_ref, range(n), 0)


def _in_bounds(lr: float, tune: TuneSpec) -> bool:
    lo, hi = tune.lr_bounds
    return lo * (1 - _REL_TOL) <= lr <= hi * (1 + _REL_TOL)


def extension(run: RunName, tune: TuneSpec, batch_size: int, sigma_ref: float,
              tried: list[Trial], best: int | None) -> tuple[list[Trial], bool]:
    """The next round's trials and whether the best is stopped by ``lr_bounds``.

    Returns ``([], False)`` when the best is interior, ``([], True)`` when the best is at an
    end of the tried range and the next learning rate leaves the bounds. With no best (every
    setting diverged) the next round goes below the smallest learning rate tried, and
    ``([], True)`` means the lower bound is reached. Near a bound a round may be partial
    (fewer learning rates that still fit).
    """
    indices = [t.lr_index for t in tried]
    lo, hi = min(indices), max(indices)
    k = lo if best is None else tried[best].lr_index
    if lo < k < hi:
        return [], False
    step = -1 if k == lo else 1
    end = lo if step < 0 else hi
    ratio = lr_ratio(run, tune)
    count = _lr_indices_per_round(run, tune)
    new = [end + step * (i + 1) for i in range(count)]
    new = [i for i in new if _in_bounds(tune.lr_min * ratio**i, tune)]
    if not new:
        return [], True
    round_ = max(t.round for t in tried) + 1
    return _trials_at(run, tune, batch_size, sigma_ref, new, round_), False


# ============================================================================ selection


def select_setting(val_accuracy, val_loss, diverged) -> int | None:
    """Index of the best setting from (settings, seeds) arrays, or None if none is valid.

    Highest mean validation accuracy, then lowest mean validation loss, then first index;
    settings with any diverged seed or a non-finite mean are excluded.
    """
    acc = np.mean(np.asarray(val_accuracy, float), axis=1)
    loss = np.mean(np.asarray(val_loss, float), axis=1)
    ok = ~np.any(np.asarray(diverged, bool), axis=1) & np.isfinite(acc) & np.isfinite(loss)
    candidates = [i for i in range(len(acc)) if ok[i]]
    if not candidates:
        return None
    return min(candidates, key=lambda i: (-acc[i], loss[i], i))


# ============================================================================ sigma_ref


def sigma_ref_rows(n_train: int) -> np.ndarray:
    """The training rows of sigma_ref: SIGMA_REF_EXAMPLES of them (or all), sorted."""
    count = min(SIGMA_REF_EXAMPLES, n_train)
    rng = np.random.default_rng(SIGMA_REF_SEED)
    return np.sort(rng.choice(n_train, count, replace=False))


def sigma_ref(splits, sizes, init_seed: int) -> float:
    """sigma_ref of the module docstring for a dataset's training split and a network."""
    import jax

    from sngrad.models import mlp_init
    from sngrad.stats import dense_stats

    rows = sigma_ref_rows(len(splits.y_train))
    params = mlp_init(jax.random.PRNGKey(init_seed), list(sizes))
    _, _, var = dense_stats(params, splits.x_train[rows], splits.y_train[rows])
    sigma = np.concatenate([np.sqrt(np.maximum(np.asarray(w, np.float64), 0.0)).ravel()
                            for w, _ in var])
    sigma = sigma[sigma > 0]
    return float(np.median(sigma)) if sigma.size else 1.0
