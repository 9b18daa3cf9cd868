"""Paired statistics: every run against its base, at equal epochs and at equal counted compute.

Paired comparison of a run R with its base b (:func:`base_of`) on one dataset and batch size.
Every final seed s trains R and b from the same initial weights on the same batches, so the
accuracies pair by seed: d_s = acc_R(s) - acc_b(s) at the compared epoch, test split. With
n pairs, mean dbar and standard deviation s_d (ddof 1):

    95 % interval       dbar -+ t_{0.975, n-1} s_d / sqrt(n)          (paired Student t)
    sign-flip p-value   p = #{eps in {-1,+1}^n : |mean(eps * d)| >= |dbar|} / 2^n

The sign-flip test is exact under the null that each d_s is symmetric about zero (R and b
exchangeable within a seed); all 2^n patterns are enumerated (n = 10: 1024), so p is a
multiple of 2^-n and never below 2 / 2^n.

Diverged seeds (the rule). A seed whose run or base diverged (``diverged`` set at or before
the compared epoch, a missing row, or a non-finite accuracy) has no accuracy to difference;
such pairs are left out of the interval and the test and counted in ``n_diverged_run`` and
``n_diverged_base``. Leaving them out would flatter an optimizer that diverges, so a run that
diverged on more seeds than its base is never called better: its verdict is at best
"inconclusive", with the reason in ``note``.

Families and Holm's correction. Per dataset there are two declared families: every run
against its base at equal epochs (``family = "equal_epochs"``, all batch sizes), and the same
at equal counted compute (``"equal_compute"``). Within a family the sign-flip p-values of the
testable comparisons (at least 2 pairs) get Holm's step-down adjustment

    p_(i)^Holm = max_{j <= i} min(1, (m - j + 1) p_(j)),     p_(1) <= ... <= p_(m),

which controls the family-wise error rate at any dependence between the tests. Verdict:
"better" / "worse" when p^Holm < 0.05 and the mean difference is positive / negative,
otherwise "inconclusive".

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
from sngrad.names import paired_base
from sngrad.tables import (
    PAIRED_COLUMNS,
    SIGNIFICANCE,
    SUMMARY_COLUMNS,
)

CONFIDENCE = 0.95




MAX_EXACT_PAIRS = 20  # 2^20 sign patterns: exact enumeration stays below a second








def comparisons(runs: Sequence[str]) -> list[tuple[str, str]]:
    """(run, base) pairs whose both members are among ``runs``, in ``runs`` order."""
    present = set(runs)
    return [(r, paired_base(r)) for r in runs if paired_base(r) in present]


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
    bits = np.arange(n)
    count, total, chunk = 0, 1 << n, 1 << 16
    for start in range(0, total, chunk):
        codes = np.arange(start, min(total, start + chunk))
        signs = 1.0 - 2.0 * ((codes[:, None] >> bits) & 1)
        count += int(np.count_nonzero(np.abs(signs @ d) >= threshold))
    return count / total


def paired_t(differences: Iterable[float], confidence: float = CONFIDENCE) -> dict:
    """Mean, std (ddof 1), paired-t interval and two-sided t p-value of the differences.

    Fewer than 2 differences: interval and p are NaN. Zero spread: the interval is the point
    and p is 0 (mean not zero) or 1 (mean zero), the limits of the t statistic.
    """
    d = np.asarray(list(differences), dtype=float)
    n = d.size
    mean = float(d.mean()) if n else math.nan
    out = {"n": n, "mean": mean, "std": math.nan, "low": math.nan, "high": math.nan, "p": math.nan}
    if n < 2:
        return out
    std = float(d.std(ddof=1))
    se = std / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    if se == 0.0:
        p = 0.0 if mean != 0.0 else 1.0
    else:
        p = float(2.0 * stats.t.sf(abs(mean) / se, n - 1))
    out.update(std=std, low=mean - half, high=mean + half, p=p)
    return out


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN entries stay NaN and are not counted in m."""
    p = np.asarray(list(pvalues), dtype=float)
    adjusted = np.full(p.shape, math.nan)
    testable = np.flatnonzero(np.isfinite(p))
    m = testable.size
    order = testable[np.argsort(p[testable], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def verdict(diff_mean: float, p_adjusted: float, level: float = SIGNIFICANCE) -> str:
    """'better' / 'worse' when the adjusted p is below ``level``, else 'inconclusive'."""
    if not (np.isfinite(p_adjusted) and p_adjusted < level and np.isfinite(diff_mean)):
        return "inconclusive"
    if diff_mean > 0:
        return "better"
    return "worse" if diff_mean < 0 else "inconclusive"


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
        "ci_low": t["low"],
        "ci_high": t["high"],
        "p_t": t["p"],
        "p_signflip": sign_flip_p(diff) if t["n"] >= 2 else math.nan,
        "note": "; ".join(notes),
    }


def apply_holm(paired: pd.DataFrame, level: float = SIGNIFICANCE) -> pd.DataFrame:
    """Holm-adjust ``p_signflip`` within each (dataset, family) and set the verdicts."""
    out = paired.copy()
    out["p_holm"] = math.nan
    for _, index in out.groupby(["dataset", "family"]).groups.items():
        out.loc[index, "p_holm"] = holm(out.loc[index, "p_signflip"])
    verdicts = [verdict(d, p, level) for d, p in zip(out["diff_mean"], out["p_holm"], strict=True)]
    # a run that diverged more often than its base is never called better (module docstring)
    more = (out["n_diverged_run"] > out["n_diverged_base"]).to_numpy()
    for i, v in enumerate(verdicts):
        if v == "better" and more[i]:
            verdicts[i] = "inconclusive"
            note = out.iloc[i]["note"]
            out.iloc[i, out.columns.get_loc("note")] = (
                f"{note}; " if note else ""
            ) + "diverged on more seeds than its base: not called better"
    out["verdict"] = verdicts
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
    runs: Sequence[str],
    batch_sizes: Sequence[int],
    *,
    dataset: str,
    budget: pd.DataFrame | None = None,
    epochs: int | None = None,
    column: str = "test_accuracy",
) -> pd.DataFrame:
    """Every run against its base at equal epochs and at equal counted compute, Holm-adjusted.

    ``metrics``: one dataset's ``metrics.csv`` rows of all runs; ``budget``: its
    ``budget.csv`` rows (the evaluation after each run's budget step). Runs whose base is not
    in ``runs`` are not compared; a (run, base) whose files are missing gets a row with no pairs
    and a note.
    """
    epochs = final_epoch(metrics) if epochs is None else int(epochs)
    rows = []
    at_end = seed_values(metrics, epochs, column)
    at_budget = (budget_values(budget, column) if budget is not None and len(budget)
                 else None)
    for batch_size in batch_sizes:
        for run, base in comparisons(runs):
            key = {"dataset": dataset, "batch_size": int(batch_size), "run": run, "base": base}
            run_vals = _select(at_end, run, batch_size)
            base_vals = _select(at_end, base, batch_size)
            rows.append(
                {
                    **key,
                    **_family_row(
                        "equal_epochs", run_vals, base_vals, epochs, epochs,
                        math.nan, math.nan,
                    ),
                }
            )
            if at_budget is None:
                spent = at_end.iloc[:0].assign(epochs=[], cost=[])
            else:
                spent = at_budget[(at_budget["optimizer"] == run)
                                  & (at_budget["batch_size"] == int(batch_size))]
            e_run = float(spent["epochs"].iloc[0]) if len(spent) else math.nan
            c_run = float(spent["cost"].iloc[0]) if len(spent) else math.nan
            row = _family_row("equal_compute", spent[["seed", "value", "diverged"]], base_vals,
                              e_run, epochs, c_run, 1.0)
            rows.append({**key, **row})
    table = pd.DataFrame(rows, columns=[c for c in PAIRED_COLUMNS if c != "p_holm"])
    if table.empty:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    return apply_holm(table)[PAIRED_COLUMNS]


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
    runs,
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
    for run in runs:
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
                    "base": paired_base(run) or "",
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


def winners(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, batch_size): the run with the highest final validation accuracy.

    Validation, not test: the summary's "best optimizer" is a selection like any other. Ties
    go to the run listed first. Cells where every run diverged have no winner.
    """
    rows = []
    for _, cell in summary.groupby(["dataset", "batch_size"], sort=True):
        scored = cell[np.isfinite(pd.to_numeric(cell["val_accuracy_final"], errors="coerce"))]
        if scored.empty:
            continue
        top = scored["val_accuracy_final"].max()
        rows.append(scored[scored["val_accuracy_final"] == top].iloc[0])
    return pd.DataFrame(rows).reset_index(drop=True) if rows else summary.iloc[:0]
