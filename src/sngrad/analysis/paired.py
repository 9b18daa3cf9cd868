"""Paired statistics and step costs: every run against its base, at equal epochs and time.

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
at equal wall-clock time (``"equal_time"``). Within a family the sign-flip p-values of the
testable comparisons (at least 2 pairs) get Holm's step-down adjustment

    p_(i)^Holm = max_{j <= i} min(1, (m - j + 1) p_(j)),     p_(1) <= ... <= p_(m),

which controls the family-wise error rate at any dependence between the tests. Verdict:
"better" / "worse" when p^Holm < 0.05 and the mean difference is positive / negative,
otherwise "inconclusive".

Equal wall-clock time. The benchmark gives each optimizer's step cost c relative to an SGD
step of the same network in the same process (``ratio``). In the time the base needs for
its E epochs, the run completes E_R = floor(E c_b / c_R) epochs (at most E); the equal-time
comparison pairs the run's test accuracy after E_R epochs with the base's after E.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from sngrad.analysis.loaders import as_flag
from sngrad.errors import SngradError
from sngrad.names import optimizer_of, paired_base
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


def _layers(network) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", str(network)))


def step_costs(benchmark: pd.DataFrame | None, hidden: Sequence[int], batch_size) -> dict:
    """{optimizer: step time relative to SGD} for the study network (hidden widths) at B.

    Rows of ``step_time.csv`` whose ``network`` has these hidden widths and whose batch size
    is ``batch_size``; rows the benchmark ``flag``-ged as inconsistent are not used. SGD costs
    1 by definition when it has no row of its own.
    """
    if benchmark is None or benchmark.empty:
        return {}
    hidden = tuple(int(h) for h in hidden)
    same_network = pd.Series(
        [_layers(n)[1:-1] == hidden for n in benchmark["network"]], index=benchmark.index
    )
    same_batch = pd.to_numeric(benchmark["batch_size"], errors="coerce") == int(batch_size)
    usable = same_network & same_batch
    if "flag" in benchmark:
        usable &= benchmark["flag"].fillna("").astype(str).str.strip() == ""
    match = benchmark[usable]
    if match.empty:
        return {}
    costs = {str(m): float(r) for m, r in zip(match["method"], match["ratio"], strict=True)}
    costs.setdefault("sgd", 1.0)
    return costs


# Optimizers the benchmark does not time, and the timed one whose cost stands in for theirs:
# the per-coordinate update of momentum, Adam or AdaBelief is elementwise work that is small
# against the matrix products, so X+sngradN costs about what sgd+sngradN costs.
_COST_PROXY = {"momentum": "sgd", "adam": "sgd", "adabelief": "sgd", "msvag": "svag"}


def run_cost(costs: dict, run: str) -> tuple[float | None, str]:
    """(step cost relative to SGD, proxy name or "") of a run; None where nothing applies.

    The run's own optimizer if the benchmark timed it, else its stand-in: ``X+sngradN`` and
    ``X+cv`` by ``sgd+...``, ``momentum``, ``adam``, ``adabelief`` by ``sgd``, ``msvag`` by
    ``svag``; the stand-in is returned so that the report can say the cost was estimated.
    """
    optimizer = optimizer_of(run)
    if optimizer in costs:
        return costs[optimizer], ""
    _, plus, tail = optimizer.partition("+")
    proxy = f"sgd{plus}{tail}" if plus else _COST_PROXY.get(optimizer)
    if proxy is not None and proxy in costs:
        return costs[proxy], proxy
    return None, ""


def equal_time_epoch(epochs_base: int, cost_base: float, cost_run: float) -> int:
    """Epochs the run completes in the base's time: floor(E c_b / c_R), at most E."""
    if not (cost_base > 0 and cost_run > 0):
        raise SngradError(f"step costs must be positive; got base {cost_base}, run {cost_run}")
    return min(int(epochs_base), math.floor(epochs_base * cost_base / cost_run + 1e-9))


def paired_table(
    metrics: pd.DataFrame,
    runs: Sequence[str],
    batch_sizes: Sequence[int],
    *,
    dataset: str,
    costs: dict | None = None,
    epochs: int | None = None,
    column: str = "test_accuracy",
) -> pd.DataFrame:
    """Every run against its base at equal epochs and at equal time, Holm-adjusted.

    ``metrics``: one dataset's ``metrics.csv`` rows of all runs; ``costs``: {batch_size:
    :func:`step_costs`}. Runs whose base is not in ``runs`` are not compared; a (run, base)
    whose files are missing gets a row with no pairs and a note.
    """
    epochs = final_epoch(metrics) if epochs is None else int(epochs)
    costs = costs or {}
    rows = []
    at_end = seed_values(metrics, epochs, column)
    for batch_size in batch_sizes:
        for run, base in comparisons(runs):
            key = {"dataset": dataset, "batch_size": int(batch_size), "run": run, "base": base}
            run_vals = _select(at_end, run, batch_size)
            base_vals = _select(at_end, base, batch_size)
            rows.append(
                {
                    **key,
                    **_family_row(
                        "equal_epochs", run_vals, base_vals, epochs, epochs, math.nan, math.nan
                    ),
                }
            )
            cost = costs.get(int(batch_size), {})
            (c_run, proxy_run), (c_base, proxy_base) = run_cost(cost, run), run_cost(cost, base)
            proxies = [
                f"{optimizer_of(r)} timed as {p}"
                for r, p in [(run, proxy_run), (base, proxy_base)]
                if p
            ]
            if c_run is None or c_base is None:
                row = _family_row(
                    "equal_time",
                    base_vals.iloc[:0],
                    base_vals.iloc[:0],
                    math.nan,
                    epochs,
                    c_run,
                    c_base,
                )
                row["note"] = "no benchmark step time for this optimizer on the study network"
            else:
                e_run = equal_time_epoch(epochs, c_base, c_run)
                if e_run < 1:
                    row = _family_row(
                        "equal_time",
                        base_vals.iloc[:0],
                        base_vals.iloc[:0],
                        e_run,
                        epochs,
                        c_run,
                        c_base,
                    )
                    row["note"] = "less than one epoch in the base's time"
                else:
                    early = _select(seed_values(metrics, e_run, column), run, batch_size)
                    row = _family_row("equal_time", early, base_vals, e_run, epochs, c_run, c_base)
            if proxies:
                row["note"] = "; ".join(
                    filter(None, [row["note"], "step cost estimated: " + ", ".join(proxies)])
                )
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
                            "sigma_ref",
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
    for key in ("learning_rate", "momentum", "alpha", "alpha_scaled", "sigma_ref", "val_accuracy"):
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
