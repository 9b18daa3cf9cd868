"""Paired statistics: every run against its base, per outcome, at equal epochs and at equal
counted compute.

Paired comparison of a run R with its base b (:attr:`sngrad.names.RunName.paired_base`) on one
dataset and batch size. Every final seed s trains R and b from the same initial weights on
the same batches, so the outcomes pair by seed: d_s = y_R(s) - y_b(s). Two outcomes are
compared (:data:`sngrad.tables.OUTCOMES`): the test accuracy and the final training loss
(the mean batch loss of the last epoch; lower is better, so "better" means d < 0). With n
pairs, mean dbar and standard deviation s_d (ddof 1):

    sign-flip p-value   p = #{eps in {-1,+1}^n : |mean(eps * d)| >= |dbar|} / 2^n
    paired t p-value    p_t, reported beside it

The sign-flip test is exact under the null that each d_s is symmetric about zero (R and b
exchangeable within a seed); all 2^n patterns are enumerated, so p is a multiple of 2^-n and
never below 2 / 2^n.

Diverged seeds (the rule). A seed whose run or base diverged (``diverged`` set at or before
the compared epoch, a missing row, or a non-finite value) has nothing to difference; such
pairs are left out of the interval and the test and counted in ``n_diverged_run`` and
``n_diverged_base``. Leaving them out would flatter an optimizer that diverges, so a run that
diverged on more seeds than its base is never called better: its verdict is at best
"inconclusive", with the reason in ``note``.

No-op runs. A run whose mean noise-informed factor over training is at least
:data:`~sngrad.tables.NO_OP_FACTOR`, or whose final values equal its base's on every seed and
outcome, is SGD (or its base) under another name: its rows say ``no_op``, keep their
statistics, and get the verdict "no-op" instead of entering a family.

Families and Holm's correction. Per dataset, schedule and outcome the declared families are
every non-no-op run against its base at equal epochs (``family = "equal_epochs"``, all batch
sizes) and, for test accuracy, the same at equal counted compute (``"equal_compute"``). The
schedule of a row is its run's (``~constant`` arms apart from the profile's own schedule), so
the decaying runs and the constant-rate arm are separate families.
Within a family the sign-flip p-values of the testable comparisons (at least 2 pairs) get
Holm's step-down adjustment

    p_(i)^Holm = max_{j <= i} min(1, (m - j + 1) p_(j)),     p_(1) <= ... <= p_(m),

which controls the family-wise error rate at any dependence between the tests. Verdict:
"better" / "worse" when p^Holm < 0.05 and the difference favours the run / the base,
otherwise "inconclusive".

Intervals that agree with the verdicts. Each row's interval [``ci_low``, ``ci_high``] inverts
the same sign-flip test (:func:`sign_flip_interval`) at the level at which Holm's procedure
tested that row (:func:`holm_levels`), with ``ci_level`` = 1 - that level. It excludes zero
exactly when Holm rejects, so a "better" or "worse" row never has an interval across zero and
an "inconclusive" one never has an interval beside it (the divergence rule above being the one
stated exception). Each family also states ``detectable``, the smallest mean difference it
detects with power :data:`~sngrad.tables.POWER` at its first Holm step
(:func:`detectable_effect`, from the family's median s_d).

Equal compute (counted). :mod:`sngrad.costs` counts the FLOPs of every step of every optimizer;
a run's budget step k* is the last step at which its cumulative counted cost is at most its
base's total over the E epochs, and training evaluates the run exactly there
(``budget.csv``). The equal-compute comparison pairs the run's test accuracy after k* steps
(``epoch_run`` = k* / steps per epoch, fractional) with the base's after E epochs;
``cost_run`` is the run's mean counted cost per step up to k* relative to the base's
(``cost_base`` = 1). Nothing here depends on a timing, so the verdicts are the same on any
machine.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from sngrad.analysis.loaders import as_flag
from sngrad.errors import SngradError
from sngrad.names import RunName
from sngrad.tables import (
    NO_OP,
    NO_OP_FACTOR,
    OUTCOMES,
    PAIRED_COLUMNS,
    POWER,
    SIGNIFICANCE,
    SUMMARY_COLUMNS,
)

CONFIDENCE = 0.95
MAX_EXACT_PAIRS = 20  # 2^20 sign patterns: exact enumeration stays below a second
_PATTERN_CHUNK = 1 << 16


def comparisons(runs: Sequence[RunName]) -> list[tuple[RunName, RunName]]:
    """(run, base) pairs whose both members are among the parsed ``runs``, in ``runs``
    order."""
    present = set(runs)
    return [(r, r.paired_base) for r in runs if r.paired_base in present]


def sign_flip_p(differences: Iterable[float]) -> float:
    """Exact two-sided sign-flip p-value of the mean of paired differences.

    The share of the 2^n sign patterns eps whose |mean(eps * d)| is at least the observed
    |mean(d)| (ties count, with a relative tolerance of 1e-12 for rounding). NaN for n = 0.
    """
    d = np.asarray(list(differences), dtype=float)
    n = d.size
    if n == 0:
        return math.nan
    if not np.all(np.isfinite(d)):
        raise SngradError("sign_flip_p: differences must be finite")
    if n > MAX_EXACT_PAIRS:
        raise SngradError(
            f"sign_flip_p: {n} pairs; exact enumeration allows at most {MAX_EXACT_PAIRS}"
        )
    observed = abs(d.sum())
    threshold = observed - 1e-12 * max(observed, np.abs(d).sum(), 1e-300)
    count = sum(int(np.count_nonzero(np.abs(signs @ d) >= threshold))
                for signs in _sign_patterns(n))
    return count / (1 << n)


def _sign_patterns(n: int):
    """The 2^n sign vectors in {-1, +1}^n, in chunks of rows."""
    bits = np.arange(n)
    for start in range(0, 1 << n, _PATTERN_CHUNK):
        codes = np.arange(start, min(1 << n, start + _PATTERN_CHUNK))
        yield 1.0 - 2.0 * ((codes[:, None] >> bits) & 1)


def sign_flip_interval(differences: Iterable[float], level: float) -> tuple[float, float]:
    """The shifts delta at which the sign-flip test of d - delta does not reject at ``level``:
    ``{delta : p(d - delta) >= level}``, an interval around the mean (Hodges & Lehmann 1963
    invert tests so; here the test is the mean's sign-flip test of :func:`sign_flip_p`).

    Pattern eps, with a = sum eps_i d_i and b = sum eps_i, counts at delta when
    |a - b delta| >= n |dbar - delta|: for |b| < n that holds between the roots
    (a - n dbar) / (b - n) and (a + n dbar) / (b + n), an interval around dbar, and for
    eps = +-1 everywhere always. So p(delta) falls monotonically away from dbar on both sides,
    and with k = ceil(level 2^n) the interval is [k-th smallest lower root, k-th largest upper
    root]. Zero lies in it exactly when the test of d itself does not reject. Unbounded
    (-inf, inf) when even the smallest p, 2 / 2^n, is not below ``level``; NaN for fewer
    than 2 differences or a level that is not a number.
    """
    d = np.asarray(list(differences), dtype=float)
    n = d.size
    if n < 2 or not np.isfinite(level):
        return math.nan, math.nan
    if n > MAX_EXACT_PAIRS:
        raise SngradError(f"sign_flip_interval: {n} pairs; exact enumeration allows at most "
                          f"{MAX_EXACT_PAIRS}")
    needed = math.ceil(level * (1 << n) - 1e-9)
    if needed <= 2:
        return -math.inf, math.inf
    mean = float(d.mean())
    lows, highs = [], []
    for signs in _sign_patterns(n):
        a, b = signs @ d, signs.sum(axis=1)
        inner = np.abs(b) < n
        with np.errstate(divide="ignore", invalid="ignore"):
            r1 = np.where(inner, (a - n * mean) / (b - n), -np.inf)
            r2 = np.where(inner, (a + n * mean) / (b + n), np.inf)
        lows.append(np.where(inner, np.minimum(r1, r2), -np.inf))
        highs.append(np.where(inner, np.maximum(r1, r2), np.inf))
    low, high = np.concatenate(lows), np.concatenate(highs)
    ends = (float(np.partition(low, needed - 1)[needed - 1]),
            float(-np.partition(-high, needed - 1)[needed - 1]))
    # tied differences put roots exactly at zero; rounding must not move one off it, or zero
    # would leave an interval whose test does not reject (the tolerance of sign_flip_p)
    scale = 1e-12 * max(np.abs(d).sum(), 1e-300)
    return tuple(0.0 if abs(end) <= scale else end for end in ends)


def paired_t(differences: Iterable[float]) -> dict:
    """Mean, std (ddof 1) and two-sided paired-t p-value of the differences (the interval
    of a row is the sign-flip one, :func:`sign_flip_interval`).

    Fewer than 2 differences: std and p are NaN. Zero spread: p is 0 (mean not zero) or 1
    (mean zero), the limits of the t statistic.
    """
    d = np.asarray(list(differences), dtype=float)
    n = d.size
    out = {"n": n, "mean": float(d.mean()) if n else math.nan, "std": math.nan, "p": math.nan}
    if n < 2:
        return out
    std = float(d.std(ddof=1))
    se = std / math.sqrt(n)
    if se == 0.0:
        p = 0.0 if out["mean"] != 0.0 else 1.0
    else:
        p = float(2.0 * stats.t.sf(abs(out["mean"]) / se, n - 1))
    out.update(std=std, p=p)
    return out


def _ascending(pvalues: Iterable[float]):
    """(the p-values, an all-NaN array of their shape, the indices of the finite ones in
    ascending order of p, ties in input order)."""
    p = np.asarray(list(pvalues), dtype=float)
    finite = np.flatnonzero(np.isfinite(p))
    return p, np.full(p.shape, math.nan), finite[np.argsort(p[finite], kind="stable")]


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN entries stay NaN and are not counted in m."""
    p, adjusted, order = _ascending(pvalues)
    m = order.size
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def holm_levels(pvalues: Iterable[float], level: float = SIGNIFICANCE) -> np.ndarray:
    """The level at which Holm's step-down procedure tests each p-value (NaN stays NaN).

    With the m finite p-values in ascending order and r the number rejected (p_(i) <
    level / (m - i + 1) for every i <= r), the i-th is tested at level / (m - i + 1) for
    i <= r and every other at level / (m - r), where the procedure stopped. A p-value is
    rejected (its :func:`holm` value below ``level``) exactly when it is below its level,
    which is what makes an interval at this level agree with the verdict.
    """
    p, levels, order = _ascending(pvalues)
    m = order.size
    rejected = 0
    for rank, index in enumerate(order):
        if p[index] >= level / (m - rank):
            break
        rejected += 1
    for rank, index in enumerate(order):
        levels[index] = level / (m - min(rank, rejected))
    return levels


def detectable_effect(std: float, n: int, m: int, level: float = SIGNIFICANCE,
                      power: float = POWER) -> float:
    """The smallest mean paired difference a family of m comparisons detects with ``power``.

    ``(t_{1 - a/2, n-1} + t_{power, n-1}) std / sqrt(n)`` with a = level / m, the level of
    Holm's first step: the usual normal-approximation formula of a two-sided paired t-test
    with t quantiles. Infinite when even the sign-flip test's smallest p-value, 2 / 2^n, is
    not below a (no effect can be declared with n pairs); NaN without a spread or 2 pairs.
    """
    if n < 2 or m < 1 or not np.isfinite(std):
        return math.nan
    a = level / m
    if 2.0 / 2.0**n >= a:
        return math.inf
    quantiles = stats.t.ppf(1 - a / 2, n - 1) + stats.t.ppf(power, n - 1)
    return float(quantiles * std / math.sqrt(n))


def verdict(diff_mean: float, p_adjusted: float, level: float = SIGNIFICANCE,
            higher_is_better: bool = True) -> str:
    """'better' / 'worse' when the adjusted p is below ``level``, else 'inconclusive'; the
    sign of the mean difference (run - base) says which, reversed for an outcome where lower
    is better (a loss)."""
    if not (np.isfinite(p_adjusted) and p_adjusted < level and np.isfinite(diff_mean)):
        return "inconclusive"
    gain = diff_mean if higher_is_better else -diff_mean
    if gain > 0:
        return "better"
    return "worse" if gain < 0 else "inconclusive"


def final_epoch(metrics: pd.DataFrame) -> int:
    """The last epoch any run recorded (the schedule's length)."""
    if metrics.empty:
        raise SngradError("no metrics rows: no run has trained")
    return int(metrics["epoch"].max())


def seed_values(metrics: pd.DataFrame, epoch: int, column: str = "test_accuracy"):
    """Per (optimizer, batch_size, seed): ``value`` of ``column`` at ``epoch`` and ``diverged``.

    A seed counts as diverged when any of its rows up to ``epoch`` has ``diverged`` set, when
    it has no row at ``epoch``, or when the value there is not finite; its value is then NaN.
    """
    keys = ["optimizer", "batch_size", "seed"]
    if metrics.empty:
        empty = {k: pd.Series(dtype="int64") for k in ("batch_size", "seed")}
        return pd.DataFrame(
            {
                "optimizer": pd.Series(dtype=object),
                **empty,
                "value": pd.Series(dtype=float),
                "diverged": pd.Series(dtype=bool),
            }
        )
    frame = metrics.assign(_diverged=as_flag(metrics["diverged"]))
    upto = frame[frame["epoch"] <= epoch]
    seeds = frame[keys].drop_duplicates()
    flagged = upto.groupby(keys)["_diverged"].any().rename("flagged").reset_index()
    at = frame[frame["epoch"] == epoch][[*keys, column]].rename(columns={column: "value"})
    out = seeds.merge(flagged, on=keys, how="left").merge(at, on=keys, how="left")
    value = pd.to_numeric(out["value"], errors="coerce")
    diverged = out["flagged"].fillna(False).astype(bool) | ~np.isfinite(value)
    out = out.assign(value=value.where(~diverged), diverged=diverged)
    return out[[*keys, "value", "diverged"]].reset_index(drop=True)


def compare(run_values: pd.DataFrame, base_values: pd.DataFrame) -> dict:
    """Paired statistics of one run against its base; inputs are :func:`seed_values` rows.

    Seeds present for both are paired; the diverged rule of the module docstring applies.
    """
    pairs = run_values.merge(base_values, on="seed", suffixes=("_run", "_base"))
    both = pairs[~pairs["diverged_run"] & ~pairs["diverged_base"]]
    diff = (both["value_run"] - both["value_base"]).to_numpy(dtype=float)
    t = paired_t(diff)
    div_run, div_base = int(pairs["diverged_run"].sum()), int(pairs["diverged_base"].sum())
    notes = []
    if div_run or div_base:
        notes.append(f"{div_run} run and {div_base} base seeds diverged; their pairs are left out")
    if len(pairs) < len(run_values) or len(pairs) < len(base_values):
        notes.append("seeds differ between run and base; only common seeds are paired")
    if t["n"] < 2:
        notes.append("fewer than 2 pairs: no test")
    return {
        "n_seeds": len(pairs),
        "n_pairs": t["n"],
        "n_diverged_run": div_run,
        "n_diverged_base": div_base,
        "run_mean": float(both["value_run"].mean()) if len(both) else math.nan,
        "base_mean": float(both["value_base"].mean()) if len(both) else math.nan,
        "diff_mean": t["mean"],
        "diff_std": t["std"],
        "p_t": t["p"],
        "p_signflip": sign_flip_p(diff) if t["n"] >= 2 else math.nan,
        "note": "; ".join(notes),
        "_differences": diff,
    }


def apply_holm(paired: pd.DataFrame, level: float = SIGNIFICANCE) -> pd.DataFrame:
    """Holm-adjust ``p_signflip`` within each (dataset, family, schedule, outcome), leaving
    no-op rows
    out of the family; set the verdicts, each row's interval at the level Holm tested it
    (``ci_level`` = 1 - that level) and the family's smallest detectable effect."""
    out = paired.copy()
    for column in ("p_holm", "ci_low", "ci_high", "ci_level", "detectable"):
        out[column] = math.nan
    out["verdict"] = NO_OP
    no_op = out["no_op"].astype(bool).to_numpy()
    groups = out.groupby(["dataset", "family", "schedule", "outcome"]).groups
    for (_, _, _, outcome), index in groups.items():
        index = [i for i in index if not no_op[out.index.get_loc(i)]]
        if not index:
            continue
        p = out.loc[index, "p_signflip"].to_numpy(float)
        out.loc[index, "p_holm"] = holm(p)
        levels = holm_levels(p, level)
        higher = OUTCOMES[outcome]
        testable = [i for i, lv in zip(index, levels, strict=True) if np.isfinite(lv)]
        family_std = out.loc[testable, "diff_std"].median() if testable else math.nan
        family_n = int(out.loc[testable, "n_pairs"].median()) if testable else 0
        out.loc[index, "detectable"] = detectable_effect(family_std, family_n, len(testable),
                                                         level)
        for i, lv in zip(index, levels, strict=True):
            row = out.loc[i]
            v = verdict(row["diff_mean"], row["p_holm"], level, higher)
            # a run that diverged more often than its base is never called better (module
            # docstring); its interval still shows the converged pairs
            if v == "better" and row["n_diverged_run"] > row["n_diverged_base"]:
                v = "inconclusive"
                out.loc[i, "note"] = (f"{row['note']}; " if row["note"] else "") + (
                    "diverged on more seeds than its base: not called better")
            out.loc[i, "verdict"] = v
            if np.isfinite(lv):
                low, high = sign_flip_interval(row["_differences"], lv)
                out.loc[i, ["ci_low", "ci_high", "ci_level"]] = [low, high, 1.0 - lv]
    return out


def budget_values(budget: pd.DataFrame, column: str = "test_accuracy") -> pd.DataFrame:
    """Per (optimizer, batch_size, seed) of ``budget.csv`` rows: ``value`` of ``column`` after
    the budget step, ``diverged`` (flagged or not finite; the value is then NaN), the budget
    in epochs and the counted cost per step relative to the base's."""
    keys = ["optimizer", "batch_size", "seed"]
    value = pd.to_numeric(budget[column], errors="coerce")
    diverged = as_flag(budget["diverged"]) | ~np.isfinite(value)
    step = pd.to_numeric(budget["budget_step"])
    per_step_run = pd.to_numeric(budget["run_flops"]) / step.where(step > 0)
    per_step_base = pd.to_numeric(budget["budget_flops"]) / pd.to_numeric(budget["steps"])
    return budget[keys].assign(
        value=value.where(~diverged),
        diverged=diverged,
        epochs=pd.to_numeric(budget["budget_epochs"]),
        cost=per_step_run / per_step_base,
    ).reset_index(drop=True)


def paired_table(
    metrics: pd.DataFrame,
    runs: Sequence[RunName],
    batch_sizes: Sequence[int],
    *,
    dataset: str,
    budget: pd.DataFrame | None = None,
    epochs: int | None = None,
    factors: dict | None = None,
    primary: str = "constant",
) -> pd.DataFrame:
    """Every run against its base, per outcome (:data:`sngrad.tables.OUTCOMES`) at equal
    epochs and, for test accuracy, at equal counted compute; Holm-adjusted per family, and the
    families of each schedule apart (``schedule``: the run's ``~schedule`` or ``primary``, the
    profile's ``train.schedule``).

    ``metrics``: one dataset's ``metrics.csv`` rows of all runs; ``budget``: its
    ``budget.csv`` rows (the evaluation after each run's budget step; it holds no training
    loss); ``factors``: {(run, batch size): mean factor over training} of the shrinking runs.
    A run is a *no-op* (:func:`is_no_op`) when its factor is at least
    :data:`~sngrad.tables.NO_OP_FACTOR` or its final values equal its base's on every seed;
    its rows keep their statistics but leave every Holm family and get the verdict "no-op".
    Runs whose base is not in ``runs`` are not compared; a (run, base) whose files are missing
    gets a row with no pairs and a note.
    """
    epochs = final_epoch(metrics) if epochs is None else int(epochs)
    factors = factors or {}
    rows = []
    # an outcome the metrics lack (older files, hand-made tables) is not compared
    at_end = {outcome: seed_values(metrics, epochs, outcome) for outcome in OUTCOMES
              if outcome in metrics.columns}
    at_budget = (budget_values(budget, "test_accuracy") if budget is not None and len(budget)
                 else None)
    for batch_size in batch_sizes:
        for run, base in comparisons(runs):
            factor = factors.get((run.name, int(batch_size)), math.nan)
            ends = {o: (_select(v, run.name, batch_size), _select(v, base.name, batch_size))
                    for o, v in at_end.items()}
            no_op = is_no_op(factor, ends.values())
            key = {"dataset": dataset, "batch_size": int(batch_size), "run": run.name,
                   "base": base.name, "no_op": no_op, "mean_factor": factor,
                   "schedule": run.schedule_or(primary)}
            for outcome, (run_vals, base_vals) in ends.items():
                rows.append({**key, "outcome": outcome, **_family_row(
                    "equal_epochs", run_vals, base_vals, epochs, epochs, math.nan, math.nan)})
            if at_budget is None:
                spent = at_end["test_accuracy"].iloc[:0].assign(epochs=[], cost=[])
            else:
                spent = at_budget[(at_budget["optimizer"] == run.name)
                                  & (at_budget["batch_size"] == int(batch_size))]
            e_run = float(spent["epochs"].iloc[0]) if len(spent) else math.nan
            c_run = float(spent["cost"].iloc[0]) if len(spent) else math.nan
            row = _family_row("equal_compute", spent[["seed", "value", "diverged"]],
                              ends["test_accuracy"][1], e_run, epochs, c_run, 1.0)
            rows.append({**key, "outcome": "test_accuracy", **row})
    internal = [c for c in PAIRED_COLUMNS
                if c not in ("p_holm", "ci_low", "ci_high", "ci_level", "detectable", "verdict")]
    table = pd.DataFrame(rows, columns=[*internal, "_differences"])
    if table.empty:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    return apply_holm(table)[PAIRED_COLUMNS]


def is_no_op(factor: float, outcomes) -> bool:
    """Whether a run does not differ from its base: its mean factor over training is at least
    :data:`~sngrad.tables.NO_OP_FACTOR`, or on every outcome every common seed's final value
    equals the base's (both finite, at least one seed)."""
    if np.isfinite(factor) and factor >= NO_OP_FACTOR:
        return True
    for run_vals, base_vals in outcomes:
        pairs = run_vals.merge(base_vals, on="seed", suffixes=("_run", "_base"))
        if pairs.empty or not np.array_equal(pairs["value_run"].to_numpy(float),
                                             pairs["value_base"].to_numpy(float)):
            return False
    return True


def common_seed_values(values: pd.DataFrame, cells) -> list[np.ndarray]:
    """The :func:`seed_values` of each (run, batch size) cell on the seeds every cell ran and
    none diverged on, in one order: the pairing of a contrast of several trainings."""
    frames = [_select(values, run, batch_size).set_index("seed") for run, batch_size in cells]
    common = frames[0].index
    for f in frames[1:]:
        common = common.intersection(f.index)
    ok = [s for s in common if not any(bool(f.loc[s, "diverged"]) for f in frames)]
    return [f.loc[ok, "value"].to_numpy(float) for f in frames]


def _select(values: pd.DataFrame, run: str, batch_size) -> pd.DataFrame:
    mask = (values["optimizer"] == run) & (values["batch_size"] == int(batch_size))
    return values[mask][["seed", "value", "diverged"]]


def _family_row(family, run_vals, base_vals, e_run, e_base, c_run, c_base) -> dict:
    stats_ = compare(run_vals, base_vals)
    if run_vals.empty or base_vals.empty:
        stats_["note"] = "no final runs to compare (files missing)"
    return {
        "family": family,
        "epoch_run": e_run,
        "epoch_base": e_base,
        "cost_run": math.nan if c_run is None else c_run,
        "cost_base": math.nan if c_base is None else c_base,
        **stats_,
    }




def summary_table(
    best: pd.DataFrame,
    metrics: pd.DataFrame,
    runs: Sequence[RunName],
    batch_sizes,
    *,
    dataset: str,
    epochs: int | None = None,
) -> pd.DataFrame:
    """One row per (run, B): the chosen setting (validation) and test accuracy over seeds.

    Mean and std (ddof 1) of the final test accuracy over the seeds that did not diverge;
    ``n_diverged`` counts the others. A cell without files has NaN everywhere.
    """
    epochs = (final_epoch(metrics) if not metrics.empty else 0) if epochs is None else epochs
    test = seed_values(metrics, epochs, "test_accuracy")
    val = seed_values(metrics, epochs, "val_accuracy")
    rows = []
    for parsed in runs:
        run = parsed.name  # the frames' key
        for batch_size in batch_sizes:
            record = {}
            if not best.empty:
                hit = best[(best["run"] == run) & (best["batch_size"] == int(batch_size))]
                record = hit.iloc[0].to_dict() if len(hit) else {}
            t, v = _select(test, run, batch_size), _select(val, run, batch_size)
            ok = t[~t["diverged"]]["value"]
            rows.append(
                {
                    "dataset": dataset,
                    "run": run,
                    "base": parsed.paired_base.name if parsed.paired_base else "",
                    "batch_size": int(batch_size),
                    **{
                        k: record.get(k, math.nan)
                        for k in (
                            "learning_rate",
                            "momentum",
                            "alpha",
                            "alpha_scaled",
                            "val_accuracy",
                        )
                    },
                    "all_diverged": bool(record.get("all_diverged", False)),
                    "at_bound": bool(record.get("at_bound", False)),
                    "epochs": epochs,
                    "n_seeds": len(t),
                    "n_diverged": int(t["diverged"].sum()),
                    "test_accuracy_mean": float(ok.mean()) if len(ok) else math.nan,
                    "test_accuracy_std": float(ok.std(ddof=1)) if len(ok) > 1 else math.nan,
                    "val_accuracy_final": float(v[~v["diverged"]]["value"].mean())
                    if (~v["diverged"]).any()
                    else math.nan,
                }
            )
    frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    for key in ("learning_rate", "momentum", "alpha", "alpha_scaled", "val_accuracy"):
        frame[key] = pd.to_numeric(frame[key], errors="coerce")
    return frame


def winners(summary: pd.DataFrame, no_op=()) -> pd.DataFrame:
    """Per (dataset, batch_size): the run with the highest final validation accuracy, no-op
    runs (``no_op``: (run, batch size) pairs) left out.

    Validation, not test: the summary's "best optimizer" is a selection like any other. Ties
    go to the run listed first. Cells where every run diverged have no winner.
    """
    rows = []
    left_out = {(run, int(b)) for run, b in no_op}
    keep = [(r, int(b)) not in left_out for r, b in zip(summary["run"], summary["batch_size"],
                                                         strict=True)]
    for _, cell in summary[keep].groupby(["dataset", "batch_size"], sort=True):
        scored = cell[np.isfinite(pd.to_numeric(cell["val_accuracy_final"], errors="coerce"))]
        if scored.empty:
            continue
        top = scored["val_accuracy_final"].max()
        rows.append(scored[scored["val_accuracy_final"] == top].iloc[0])
    return pd.DataFrame(rows).reset_index(drop=True) if rows else summary.iloc[:0]
