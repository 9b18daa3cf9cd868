"""The tuning protocol: which axes a run tunes, their grids, the extension past an edge, the
refinement, the tie rule and the alpha units.

Run names
    A run is a registry optimizer, optionally followed by ``@<alpha>`` for a sngrad optimizer
    whose alpha is fixed in raw units instead of tuned: ``sgd+sngrad1@0.1``. The grammar is
    :mod:`sngrad.names`; :func:`tuned_axes` says what a run tunes.

Axes (:func:`tuned_axes`, in this order; every run of a family searches the same ones)
    ``learning_rate`` or ``step``
        Every run tunes its step size. A sngrad run of variant I or II with a tuned alpha
        tunes ``step = eta / alpha_scaled`` instead of eta (the optimizer gets
        ``eta = step * alpha_scaled``). Both factors have the form min(1, r_i / alpha) (I:
        r_i = s / sigma_i, II: r_i = B mu_i^2 / sigma_i^2), so a shrunk coordinate moves by
        eta mu_i r_i / alpha: once alpha shrinks most coordinates only eta / alpha matters,
        and on an (eta, alpha) grid the optimum runs along the diagonal eta ~ alpha (the
        published run picked the top alpha with 4.5x SGD's rate). On a (step, alpha) grid the
        same region is flat in alpha at a fixed step, which the tie rule below resolves to
        the middle of the flat part. Variant III's factor 1 - min(alpha sigma / s, 1) sends
        shrunk coordinates towards 0 without a 1 / alpha, so eta and alpha do not trade and
        III tunes eta.
    ``alpha``
        Every sngrad run without ``@alpha`` (scale-free alpha, units below).
    ``momentum``
        Every run on a momentum base (``momentum``, ``momentum+sngradN``) when
        ``tune.one_minus_momentum`` is a range; as a number it fixes m = 1 - value for all of
        them alike.

Grids
    ``learning_rate``/``step``: ``lr_min r^k``, ``r = 10^(1 / lr_per_decade)``, k = 0 ..
    n_lr - 1 with ``n_lr = floor(log_r(lr_max / lr_min)) + 1``; hard bounds ``lr_bounds``.
    ``alpha``: ``lo q^k`` with ``q = (hi / lo)^(1 / (axis_points - 1))`` over
    ``tune.alpha[variant] = [lo, hi]``; hard bounds ``tune.alpha_bounds[variant]``.
    ``momentum``: ``1 - m = lo q^k`` over ``tune.one_minus_momentum`` alike; hard bounds
    ``tune.one_minus_momentum_bounds``. Round 0 trains the product of the grids (first axis
    major).

Extension (every tuned axis, until the pick is interior)
    After each round the pick (selection below) is looked up and the axes are visited in
    order. The first axis on which the pick sits at the smallest or largest index tried gets
    one index past that end at its own spacing, crossed with every index tried on the other
    axes, and that slab is the next round. An axis whose next index would leave its hard
    bounds is ``"bound"`` and the next axis is visited; one whose pick has tried neighbours on
    both sides is ``"interior"``. The search ends when no axis can be extended, so every axis
    of the pick is interior or stopped by a bound. When every setting tried so far diverged
    there is no pick, and the first axis goes downward (a smaller step is the one direction
    that can cure divergence) until a setting converges or its lower bound stops it.

Refinement (the same for every run)
    One last round trains the pick at the first-axis values ``v r^(-1/2)`` and ``v r^(1/2)``
    (those within ``lr_bounds``), and the tie rule chooses among the pick and these two. Every
    run therefore ends with the step size resolved to half a grid step, ``r^(1/2)``, whatever
    its number of axes; the other axes keep their grid spacing ``q``.

Selection (never the test split)
    A setting's score is its validation accuracy after the last epoch, averaged over the
    tuning seeds; a setting with any diverged seed or a non-finite mean is excluded. The
    *margin* is one standard error of the difference of two settings' means,
    ``sqrt(2 v / n)``, with v the median of the variance over the n seeds of the
    :data:`NOISE_SETTINGS` valid settings of highest mean (all valid ones if fewer): the
    tuning noise among the candidates, as the one-standard-error rule of Breiman et al.
    (1984) and Hastie, Tibshirani & Friedman (ESL, section 7.10) measure it. Settings far from
    the best understate it (a tiny learning rate trains alike whatever the batch order: on
    MNIST their median seed variance was 70x below that of the five best). Settings
    whose mean is within the margin of the best are *tied*; the pick is the tied setting
    closest (in grid steps, over all tuned axes) to the mean grid position of the tied set,
    further ties going to the higher accuracy, the lower validation loss and the earlier
    setting. A float-rounding change of one score moves the best, not the tied set's middle,
    so the pick no longer flips between two settings the noise cannot tell apart. With no
    valid setting, best.json says ``"all_diverged": true``.

Alpha units (:func:`alpha_unit`)
    The optimizers take a raw alpha; the protocol searches a scale-free ``alpha_scaled``.

    - II: ``alpha = alpha_scaled / B``. Where a coordinate's gradient is pure noise,
      mu^2 / sigma^2 is about 1 / B, so alpha_scaled = 1 shrinks like the SVAG factor
      mu^2 / (mu^2 + sigma^2 / B) does, and alpha_scaled >> 1 shrinks most coordinates.
    - I and III: ``alpha = alpha_scaled``, read by the optimizer relative to the step's
      root-mean-square per-example sigma s (``RunName.alpha_reference == "rms"``,
      :func:`sngrad.transforms.step_alpha`): a coordinate is shrunk when alpha_scaled
      sigma_i > s. A reference fixed at initialisation drifts as sigma falls: on the default
      profile's MNIST network (sgd at its tuned rate, B = 128) the median weight sigma falls
      71x over the 10 epochs, and alpha = 1 in units of the initial median shrinks 43 % of
      the weights at initialisation, 2 % after one epoch and none at the end; relative to s,
      alpha_scaled = 1 shrinks 26 % at initialisation and 17-19 % from the first epoch on,
      alpha_scaled = 3.16 between 44 and 58 % (``tools/alpha_drift.py``).
    - A fixed ``@alpha`` is raw and absolute (the prototype's units) for every variant.

Seeds
    Tuning seed s trains every setting from ``mlp_init(PRNGKey(init_seed))`` with the batch
    order of ``shuffle_key(s)`` (see :mod:`sngrad.train.engine`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from sngrad.names import RunName
from sngrad.spec import TuneSpec

# status of a tuned axis in best.json: the pick has tried values on both sides, or sits at an
# end that the axis's hard bound stops; "none" when every setting diverged
INTERIOR, BOUND, NO_PICK = "interior", "bound", "none"
NOISE_SETTINGS = 5  # the best settings whose seed variance measures the tuning noise
STEP_VARIANTS = ("I", "II")  # variants whose first axis is eta / alpha_scaled (docstring)
_REL_TOL = 1e-9  # float slack when comparing grid points with lr_max and the bounds


# ============================================================================ axes


def tuned_axes(run: RunName, tune: TuneSpec) -> tuple[str, ...]:
    """The axes ``run`` tunes, first axis first (module docstring)."""
    tunes_alpha = run.variant is not None and run.fixed_alpha is None
    first = "step" if tunes_alpha and run.variant in STEP_VARIANTS else "learning_rate"
    axes = [first]
    if tunes_alpha:
        axes.append("alpha")
    if run.has_momentum and isinstance(tune.one_minus_momentum, tuple):
        axes.append("momentum")
    return tuple(axes)


def fixed_momentum(run: RunName, tune: TuneSpec) -> float | None:
    """The momentum of a momentum-base run whose momentum is not tuned; None otherwise."""
    if not run.has_momentum or isinstance(tune.one_minus_momentum, tuple):
        return None
    return float(1.0 - tune.one_minus_momentum)


def lr_count(tune: TuneSpec) -> int:
    """n_lr: grid points lr_min r^k, r = 10^(1 / lr_per_decade), not above lr_max."""
    decades = math.log10(tune.lr_max / tune.lr_min)
    return math.floor(tune.lr_per_decade * decades + _REL_TOL) + 1


def lr_ratio(tune: TuneSpec) -> float:
    """r, the ratio between neighbouring values of the first axis."""
    return 10.0 ** (1.0 / tune.lr_per_decade)


def axis_grid(axis: str, run: RunName, tune: TuneSpec):
    """(first value, ratio, initial points, (low bound, high bound)) of an axis's grid."""
    if axis in ("learning_rate", "step"):
        return tune.lr_min, lr_ratio(tune), lr_count(tune), tune.lr_bounds
    if axis == "alpha":
        (lo, hi), bounds = tune.alpha[run.variant], tune.alpha_bounds[run.variant]
    else:
        (lo, hi), bounds = tune.one_minus_momentum, tune.one_minus_momentum_bounds
    return lo, (hi / lo) ** (1.0 / (tune.axis_points - 1)), tune.axis_points, bounds


def axis_value(axis: str, k: float, run: RunName, tune: TuneSpec) -> float:
    """The value at grid index k (fractional for refinement points)."""
    first, ratio, _, _ = axis_grid(axis, run, tune)
    return float(first * ratio**k)


def in_bounds(axis: str, k: float, run: RunName, tune: TuneSpec) -> bool:
    """Whether index k of ``axis`` lies within the axis's hard bounds."""
    lo, hi = axis_grid(axis, run, tune)[3]
    return lo * (1 - _REL_TOL) <= axis_value(axis, k, run, tune) <= hi * (1 + _REL_TOL)


def alpha_unit(variant: str, batch_size: int) -> float:
    """Raw alpha per unit of scale-free alpha: 1 / B for II, 1 for I and III (module
    docstring: their raw alpha is read relative to the step's RMS sigma)."""
    return 1.0 / batch_size if variant == "II" else 1.0


# ============================================================================ trials


@dataclass(frozen=True)
class Trial:
    """One setting: the optimizer's values, the grid position on each tuned axis (axis ->
    index, fractional for refinement points) and the round that trained it."""

    learning_rate: float
    momentum: float | None
    alpha: float | None  # raw
    alpha_scaled: float | None
    step: float | None  # eta / alpha_scaled where that is the first axis, else None
    round: int
    position: dict[str, float]
    refine: bool = False

    def to_json(self) -> dict:
        return dict(self.__dict__, position=dict(self.position))


def make_trial(run: RunName, tune: TuneSpec, batch_size: int, position: dict[str, float],
               round_: int, refine: bool = False) -> Trial:
    """The trial at ``position`` (tuned axis -> grid index)."""
    axes = tuned_axes(run, tune)
    momentum = fixed_momentum(run, tune)
    if "momentum" in position:
        momentum = 1.0 - axis_value("momentum", position["momentum"], run, tune)
    alpha = alpha_scaled = None
    if run.variant is not None:
        unit = alpha_unit(run.variant, batch_size)
        if run.fixed_alpha is not None:
            alpha, alpha_scaled = run.fixed_alpha, run.fixed_alpha / unit
        else:
            alpha_scaled = axis_value("alpha", position["alpha"], run, tune)
            alpha = alpha_scaled * unit
    first = axis_value(axes[0], position[axes[0]], run, tune)
    step = first if axes[0] == "step" else None
    lr = first * alpha_scaled if step is not None else first
    return Trial(float(lr), None if momentum is None else float(momentum),
                 None if alpha is None else float(alpha),
                 None if alpha_scaled is None else float(alpha_scaled),
                 step, round_, {a: float(position[a]) for a in axes}, refine)


def _product(run, tune, batch_size, per_axis: dict[str, list[float]], round_) -> list[Trial]:
    axes = tuned_axes(run, tune)
    return [make_trial(run, tune, batch_size, dict(zip(axes, combo, strict=True)), round_)
            for combo in itertools.product(*(per_axis[a] for a in axes))]


def initial_trials(run: RunName, tune: TuneSpec, batch_size: int) -> list[Trial]:
    """Round 0: the product of the initial grids, first axis major."""
    per_axis = {a: list(range(axis_grid(a, run, tune)[2])) for a in tuned_axes(run, tune)}
    return _product(run, tune, batch_size, per_axis, 0)


def _tried(trials: list[Trial], axis: str) -> list[float]:
    return sorted({t.position[axis] for t in trials if not t.refine})


def axis_status(run: RunName, tune: TuneSpec, trials: list[Trial], pick: Trial) -> dict:
    """axis -> ``"interior"``, ``"bound"`` or the index to extend to, for every tuned axis."""
    status = {}
    for axis in tuned_axes(run, tune):
        tried, k = _tried(trials, axis), pick.position[axis]
        if tried[0] < k < tried[-1]:
            status[axis] = INTERIOR
            continue
        step = -1 if k == tried[0] else 1
        status[axis] = k + step if in_bounds(axis, k + step, run, tune) else BOUND
    return status


def extension(run: RunName, tune: TuneSpec, batch_size: int, trials: list[Trial],
              pick: int | None) -> tuple[list[Trial], dict[str, str]]:
    """The next round's trials and the status of every tuned axis (module docstring).

    Returns ``([], status)`` when no axis can be extended. With no pick (every setting
    diverged) the first axis goes one index below the smallest tried, and ``([], {first:
    "bound"})`` means its lower bound is reached.
    """
    axes = tuned_axes(run, tune)
    round_ = max(t.round for t in trials) + 1
    per_axis = {a: _tried(trials, a) for a in axes}
    if pick is None:
        k = per_axis[axes[0]][0] - 1
        if not in_bounds(axes[0], k, run, tune):
            return [], {axes[0]: BOUND}
        return _product(run, tune, batch_size, {**per_axis, axes[0]: [k]}, round_), {}
    status = axis_status(run, tune, trials, trials[pick])
    for axis in axes:
        if status[axis] not in (INTERIOR, BOUND):
            return (_product(run, tune, batch_size, {**per_axis, axis: [status[axis]]}, round_),
                    status)
    return [], status


def refinement(run: RunName, tune: TuneSpec, batch_size: int, trials: list[Trial],
               pick: int) -> list[Trial]:
    """The refinement round: the pick at first-axis index k -+ 1/2, those within bounds."""
    chosen = trials[pick]
    first = tuned_axes(run, tune)[0]
    round_ = max(t.round for t in trials) + 1
    k = chosen.position[first]
    return [make_trial(run, tune, batch_size, {**chosen.position, first: k + half}, round_,
                       refine=True)
            for half in (-0.5, 0.5) if in_bounds(first, k + half, run, tune)]


def resolution(axis: str, run: RunName, tune: TuneSpec) -> float:
    """The final ratio between neighbouring values of an axis: r^(1/2) for the refined first
    axis, the grid ratio q for the others."""
    ratio = axis_grid(axis, run, tune)[1]
    return math.sqrt(ratio) if axis in ("learning_rate", "step") else ratio


def trial_count(run: RunName, tune: TuneSpec) -> tuple[int, int]:
    """(settings of round 0, of the refinement at most): the fixed part of every search; each
    extension adds a slab (the product of the other axes' tried values)."""
    sizes = [axis_grid(a, run, tune)[2] for a in tuned_axes(run, tune)]
    return math.prod(sizes), 2


# ============================================================================ selection


def valid_settings(val_accuracy, val_loss, diverged):
    """(mean accuracy, mean loss, valid) per setting from (settings, seeds) arrays: valid
    means no diverged seed and finite means."""
    acc = np.mean(np.asarray(val_accuracy, float), axis=1)
    loss = np.mean(np.asarray(val_loss, float), axis=1)
    ok = ~np.any(np.asarray(diverged, bool), axis=1) & np.isfinite(acc) & np.isfinite(loss)
    return acc, loss, ok


def tie_margin(val_accuracy, valid) -> float:
    """sqrt(2 v / n), the standard error of a difference of two settings' means: v the median
    accuracy variance over the n seeds (ddof 1) of the :data:`NOISE_SETTINGS` valid settings
    of highest mean (ties by index)."""
    acc = np.asarray(val_accuracy, float)[np.asarray(valid, bool)]
    n = acc.shape[1] if acc.ndim == 2 else 0
    if acc.shape[0] == 0 or n < 2:
        return 0.0
    best = np.argsort(-acc.mean(axis=1), kind="stable")[:NOISE_SETTINGS]
    return float(math.sqrt(2.0 * float(np.median(np.var(acc[best], axis=1, ddof=1))) / n))


def select(val_accuracy, val_loss, diverged, positions, among=None) -> tuple[int | None, list]:
    """(the pick, the tied settings) from (settings, seeds) arrays and each setting's grid
    position (a dict axis -> index); ``among`` restricts the candidates (indices). The margin
    is computed over every valid setting (module docstring, Selection)."""
    acc, loss, ok = valid_settings(val_accuracy, val_loss, diverged)
    margin = tie_margin(val_accuracy, ok)
    pool = [i for i in (range(len(acc)) if among is None else among) if ok[i]]
    if not pool:
        return None, []
    best = max(acc[i] for i in pool)
    tied = [i for i in pool if acc[i] >= best - margin]
    axes = sorted(positions[tied[0]])
    grid = np.array([[positions[i][a] for a in axes] for i in tied], float).reshape(len(tied), -1)
    centre = grid.mean(axis=0)
    distance = np.sum((grid - centre) ** 2, axis=1)
    order = min(range(len(tied)),
                key=lambda j: (round(float(distance[j]), 9), -acc[tied[j]], loss[tied[j]],
                               tied[j]))
    return tied[order], tied


def best_by_score(val_accuracy, val_loss, diverged) -> int | None:
    """The setting of highest mean accuracy (then lower loss, then first): the selection
    without the tie rule, kept to measure how often the two rules' picks change."""
    acc, loss, ok = valid_settings(val_accuracy, val_loss, diverged)
    candidates = [i for i in range(len(acc)) if ok[i]]
    return min(candidates, key=lambda i: (-acc[i], loss[i], i)) if candidates else None
