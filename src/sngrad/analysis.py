"""The statistics of the study: paired comparisons, selection on validation, summaries.

Everything the analysis notebooks and the report compute lives here, as pure functions on
pandas frames in the formats of docs/CONTRACTS.md (``tuning.csv``, ``best.json``,
``metrics.csv``, ``diagnostics.csv``, ``step_time.csv``). The notebooks only load files, call
these functions, plot and write; the report only formats what they return.

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

Selection (never on the test split). A tuning setting is scored by its mean validation
accuracy over the tuning seeds; settings with a diverged seed are excluded; ties go to the
lower mean validation loss, then to the earlier setting. The same rule picks the best and
worst alpha of the sensitivity table.

Training-length criterion. A base optimizer (sgd, momentum, adam) has trained long enough
when its mean training loss over final seeds fell, over the last quarter of the epochs
(ceil(E / 4) epochs), by at most ``FLAT_SHARE`` (10 %) of its total decrease from the first
to the last epoch: (L_{E-q} - L_E) <= 0.10 (L_1 - L_E).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from sngrad.errors import SngradError

CONFIDENCE = 0.95
SIGNIFICANCE = 0.05
FLAT_SHARE = 0.10
NEAR_BEST = 0.01  # accuracy within one point of the best counts as "near the best"
MAX_EXACT_PAIRS = 20  # 2^20 sign patterns: exact enumeration stays below a second

BASE_OPTIMIZERS = ("sgd", "momentum", "adam")
_NAMED_BASES = {
    "svag": "sgd",
    "msvag": "sgd",
    "adabelief": "adam",
    "sgd+cv": "sgd",
    "sgd+svrg": "sgd",
}
FAMILIES = ("equal_epochs", "equal_time")
VERDICTS = ("better", "worse", "inconclusive")

PAIRED_COLUMNS = [
    "dataset",
    "batch_size",
    "family",
    "run",
    "base",
    "epoch_run",
    "epoch_base",
    "cost_run",
    "cost_base",
    "n_seeds",
    "n_pairs",
    "n_diverged_run",
    "n_diverged_base",
    "run_mean",
    "base_mean",
    "diff_mean",
    "diff_std",
    "ci_low",
    "ci_high",
    "p_t",
    "p_signflip",
    "p_holm",
    "verdict",
    "note",
]


# ----------------------------------------------------------------------------- run names


def optimizer_of(run: str) -> str:
    """The registry optimizer of a run name: ``sgd+sngrad1@0.1`` -> ``sgd+sngrad1``."""
    return run.partition("@")[0]


def fixed_alpha(run: str) -> float | None:
    """The alpha fixed in a run name (``@a``), or None for a tuned alpha."""
    _, at, alpha = run.partition("@")
    return float(alpha) if at else None


def base_of(run: str) -> str | None:
    """The base run a run is paired with, or None for a base optimizer itself.

    ``X+sngradN -> X``, ``sgd+sngradN@a -> sgd``, ``svag, msvag, sgd+cv, sgd+svrg -> sgd``,
    ``adabelief -> adam``; ``sgd``, ``momentum``, ``adam`` have none.
    """
    optimizer = optimizer_of(run)
    if optimizer in _NAMED_BASES:
        return _NAMED_BASES[optimizer]
    if "+" in optimizer:
        return optimizer.partition("+")[0]
    return None


BASE_OF = base_of


def variant_of(run: str) -> str | None:
    """'I', 'II' or 'III' for a sngrad run, else None."""
    match = re.search(r"\+sngrad([123])$", optimizer_of(run))
    return {"1": "I", "2": "II", "3": "III"}[match.group(1)] if match else None


def comparisons(runs: Sequence[str]) -> list[tuple[str, str]]:
    """(run, base) pairs whose both members are among ``runs``, in ``runs`` order."""
    present = set(runs)
    return [(r, base_of(r)) for r in runs if base_of(r) in present]


# ----------------------------------------------------------------------------- loading


def read_run_tables(layout, datasets, runs, batch_sizes, name: str):
    """Concatenate one per-run CSV (e.g. ``metrics.csv``) over every (dataset, run, B).

    Returns ``(frame, missing)``: the rows with ``dataset``, ``optimizer`` (the run name) and
    ``batch_size`` set from the path, and the paths that did not exist.
    """
    frames, missing = [], []
    for dataset in datasets:
        for run in runs:
            for batch_size in batch_sizes:
                path = Path(layout.run_file(name, dataset, run, batch_size))
                if not path.exists():
                    missing.append(str(path))
                    continue
                frame = pd.read_csv(path)
                frame["dataset"] = dataset
                frame["optimizer"] = run
                frame["batch_size"] = int(batch_size)
                frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["dataset", "optimizer", "batch_size"]), missing
    return pd.concat(frames, ignore_index=True), missing


def read_best(layout, datasets, runs, batch_sizes) -> pd.DataFrame:
    """One row per existing ``best.json`` (keys as columns, plus dataset, run, batch_size)."""
    rows = []
    for dataset in datasets:
        for run in runs:
            for batch_size in batch_sizes:
                path = Path(layout.run_file("best.json", dataset, run, batch_size))
                if path.exists():
                    record = json.loads(path.read_text())
                    rows.append(
                        {**record, "dataset": dataset, "run": run, "batch_size": int(batch_size)}
                    )
    return pd.DataFrame(rows)


def _flag(series: pd.Series) -> pd.Series:
    """A CSV boolean column (True/False, 1/0, strings) as bool; missing counts as False."""
    if series.dtype == bool:
        return series
    text = series.astype(str).str.strip().str.lower()
    return text.isin(["true", "1", "1.0", "yes"])


# ----------------------------------------------------------------------------- statistics


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


# ----------------------------------------------------------------------------- per-seed values


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
    frame = metrics.assign(_diverged=_flag(metrics["diverged"]))
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


# ----------------------------------------------------------------------------- step costs


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


# ----------------------------------------------------------------------------- paired table


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


# ----------------------------------------------------------------------------- summary table

SUMMARY_COLUMNS = [
    "dataset",
    "run",
    "base",
    "batch_size",
    "learning_rate",
    "momentum",
    "alpha",
    "alpha_scaled",
    "sigma_ref",
    "val_accuracy",
    "all_diverged",
    "at_bound",
    "epochs",
    "n_seeds",
    "n_diverged",
    "test_accuracy_mean",
    "test_accuracy_std",
    "val_accuracy_final",
]


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
                    "base": base_of(run) or "",
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


# ----------------------------------------------------------------------------- tuning


def tuning_settings(tuning: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, optimizer, batch_size, setting), seeds averaged.

    ``val_accuracy``, ``val_loss``, ``train_loss``: means over tuning seeds; ``diverged``:
    any seed diverged; ``order``: position of the setting's first row (grid order).
    """
    keys = [k for k in ("dataset", "optimizer", "batch_size") if k in tuning.columns]
    if tuning.empty:
        return pd.DataFrame(
            columns=[
                *keys,
                "setting",
                "learning_rate",
                "momentum",
                "alpha",
                "alpha_scaled",
                "round",
                "val_accuracy",
                "val_loss",
                "train_loss",
                "diverged",
                "chosen",
                "n_seeds",
                "order",
            ]
        )
    frame = tuning.assign(
        diverged=_flag(tuning["diverged"]),
        chosen=_flag(tuning["chosen"]) if "chosen" in tuning else False,
        order=np.arange(len(tuning)),
    )
    for column in ("momentum", "alpha", "alpha_scaled", "round"):
        if column not in frame:
            frame[column] = math.nan
    return (
        frame.groupby([*keys, "setting"], sort=False, dropna=False)
        .agg(
            learning_rate=("learning_rate", "first"),
            momentum=("momentum", "first"),
            alpha=("alpha", "first"),
            alpha_scaled=("alpha_scaled", "first"),
            round=("round", "first"),
            val_accuracy=("val_accuracy", "mean"),
            val_loss=("val_loss", "mean"),
            train_loss=("train_loss", "mean"),
            diverged=("diverged", "any"),
            chosen=("chosen", "any"),
            n_seeds=("seed", "nunique"),
            order=("order", "min"),
        )
        .reset_index()
    )


def select_best(settings: pd.DataFrame):
    """Label of the best row of :func:`tuning_settings` (one cell), or None if all diverged.

    Highest mean validation accuracy among settings with no diverged seed; ties: lower mean
    validation loss, then earlier ``order``. Test metrics are never looked at.
    """
    valid = settings[~settings["diverged"].astype(bool)]
    valid = valid[np.isfinite(valid["val_accuracy"].astype(float))]
    if valid.empty:
        return None
    ranked = valid.assign(_loss=valid["val_loss"].astype(float).fillna(math.inf))
    ranked = ranked.sort_values(
        ["val_accuracy", "_loss", "order"], ascending=[False, True, True], kind="stable"
    )
    return ranked.index[0]


def select_worst(settings: pd.DataFrame):
    """Label of the worst non-diverged setting (lowest mean validation accuracy), or None."""
    valid = settings[~settings["diverged"].astype(bool)]
    valid = valid[np.isfinite(valid["val_accuracy"].astype(float))]
    if valid.empty:
        return None
    ranked = valid.assign(_loss=valid["val_loss"].astype(float).fillna(math.inf))
    ranked = ranked.sort_values(
        ["val_accuracy", "_loss", "order"], ascending=[True, False, True], kind="stable"
    )
    return ranked.index[0]


_CELL = ["dataset", "optimizer", "batch_size"]


def lr_curve(settings: pd.DataFrame) -> pd.DataFrame:
    """Per cell and learning rate: the best mean validation accuracy over the second axis.

    ``all_diverged`` marks learning rates where every setting diverged (accuracy NaN).
    """
    rows = []
    for key, cell in settings.groupby([*_CELL, "learning_rate"], sort=True):
        ok = cell[~cell["diverged"].astype(bool)]
        rows.append(
            dict(
                zip([*_CELL, "learning_rate"], key, strict=True),
                val_accuracy=float(ok["val_accuracy"].max()) if len(ok) else math.nan,
                all_diverged=ok.empty,
                chosen=bool(cell["chosen"].any()),
            )
        )
    return pd.DataFrame(
        rows, columns=[*_CELL, "learning_rate", "val_accuracy", "all_diverged", "chosen"]
    )


LR_COLUMNS = [
    "dataset",
    "optimizer",
    "batch_size",
    "settings",
    "diverged_settings",
    "lr_low",
    "lr_high",
    "chosen_learning_rate",
    "chosen_position",
    "extension_rounds",
    "at_bound",
    "all_diverged",
    "best_val_accuracy",
    "share_near_best",
]


def lr_summary(settings: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """Per cell: how many settings were tried and diverged, the learning-rate range tried,
    where the chosen rate lies in it (low end, interior, high end), extension rounds,
    ``at_bound`` and ``all_diverged`` from ``best.json``, and the share of valid settings whose
    validation accuracy is within one point of the best (a flat optimum has a high share).
    """
    rows = []
    for key, cell in settings.groupby(_CELL, sort=True):
        record = _best_record(best, *key)
        index = select_best(cell)
        chosen = cell.loc[index] if index is not None else None
        lrs = cell["learning_rate"].astype(float)
        ok = cell[~cell["diverged"].astype(bool)]["val_accuracy"].astype(float)
        top = ok.max() if len(ok) else math.nan
        if chosen is None:
            position = "none"
        elif np.isclose(chosen["learning_rate"], lrs.min()):
            position = "low end"
        elif np.isclose(chosen["learning_rate"], lrs.max()):
            position = "high end"
        else:
            position = "interior"
        rounds = pd.to_numeric(cell["round"], errors="coerce")
        rows.append(
            {
                **dict(zip(_CELL, key, strict=True)),
                "settings": len(cell),
                "diverged_settings": int(cell["diverged"].astype(bool).sum()),
                "lr_low": float(lrs.min()),
                "lr_high": float(lrs.max()),
                "chosen_learning_rate": float(chosen["learning_rate"])
                if chosen is not None
                else math.nan,
                "chosen_position": position,
                "extension_rounds": int(rounds.max()) if rounds.notna().any() else 0,
                "at_bound": bool(record.get("at_bound", False)),
                "all_diverged": bool(record.get("all_diverged", chosen is None)),
                "best_val_accuracy": float(top),
                "share_near_best": float((ok >= top - NEAR_BEST).mean()) if len(ok) else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=LR_COLUMNS)


def _best_record(best: pd.DataFrame, dataset, run, batch_size) -> dict:
    if best is None or best.empty:
        return {}
    hit = best[
        (best["dataset"] == dataset)
        & (best["run"] == run)
        & (best["batch_size"] == int(batch_size))
    ]
    return hit.iloc[0].to_dict() if len(hit) else {}


ALPHA_COLUMNS = [
    "dataset",
    "optimizer",
    "variant",
    "batch_size",
    "learning_rate",
    "alpha_scaled",
    "alpha",
    "val_accuracy",
    "val_loss",
    "diverged",
    "chosen",
    "best",
    "worst",
]


def alpha_table(settings: pd.DataFrame) -> pd.DataFrame:
    """For each sngrad run with a tuned alpha: validation accuracy against scale-free alpha at
    the chosen setting's learning rate, with the best and worst alpha by validation flagged.
    """
    rows = []
    for key, cell in settings.groupby(_CELL, sort=True):
        run = key[1]
        if variant_of(run) is None or fixed_alpha(run) is not None:
            continue
        index = select_best(cell)
        if index is None:
            continue
        lr = float(cell.loc[index, "learning_rate"])
        line = cell[np.isclose(cell["learning_rate"].astype(float), lr)]
        line = line.sort_values("alpha_scaled")
        best_i, worst_i = select_best(line), select_worst(line)
        for i, r in line.iterrows():
            rows.append(
                {
                    **dict(zip(_CELL, key, strict=True)),
                    "variant": variant_of(run),
                    "learning_rate": lr,
                    "alpha_scaled": r["alpha_scaled"],
                    "alpha": r["alpha"],
                    "val_accuracy": r["val_accuracy"],
                    "val_loss": r["val_loss"],
                    "diverged": bool(r["diverged"]),
                    "chosen": i == index,
                    "best": i == best_i,
                    "worst": i == worst_i,
                }
            )
    return pd.DataFrame(rows, columns=ALPHA_COLUMNS)


def alpha_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per run: alphas tried, best and worst scale-free alpha (validation) and the spread."""
    rows = []
    for key, line in table.groupby(_CELL, sort=True):
        best = line[line["best"].astype(bool)]
        worst = line[line["worst"].astype(bool)]
        b = best.iloc[0] if len(best) else None
        w = worst.iloc[0] if len(worst) else None
        rows.append(
            {
                **dict(zip(_CELL, key, strict=True)),
                "variant": line["variant"].iloc[0],
                "learning_rate": line["learning_rate"].iloc[0],
                "alphas_scaled": list(line["alpha_scaled"].astype(float)),
                "diverged_alphas": int(line["diverged"].astype(bool).sum()),
                "best_alpha_scaled": math.nan if b is None else float(b["alpha_scaled"]),
                "worst_alpha_scaled": math.nan if w is None else float(w["alpha_scaled"]),
                "best_val_accuracy": math.nan if b is None else float(b["val_accuracy"]),
                "worst_val_accuracy": math.nan if w is None else float(w["val_accuracy"]),
                "spread": math.nan
                if b is None or w is None
                else float(b["val_accuracy"] - w["val_accuracy"]),
            }
        )
    return pd.DataFrame(rows)


def diverged_settings(settings: pd.DataFrame) -> pd.DataFrame:
    """The tuning settings with a diverged seed, for the report's list."""
    cols = [*_CELL, "setting", "learning_rate", "momentum", "alpha", "alpha_scaled"]
    return settings[settings["diverged"].astype(bool)][cols].reset_index(drop=True)


# ----------------------------------------------------------------------------- curves


def curves(metrics: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, std and count over non-diverged seeds of ``column`` per (run, B, epoch).

    A seed is dropped from every epoch from the one it diverged at on (whether or not it
    kept recording rows); ``n_diverged`` counts the seeds that had diverged by that epoch, so
    a plot can mark them instead of drawing zeros.
    """
    cell = ["dataset", "optimizer", "batch_size"]
    keys = [*cell, "seed"]
    frame = metrics.assign(_div=_flag(metrics["diverged"])).sort_values([*keys, "epoch"])
    frame["_div"] = frame.groupby(keys)["_div"].cummax()
    value = pd.to_numeric(frame[column], errors="coerce")
    frame["_value"] = value.where(~frame["_div"] & np.isfinite(value))
    out = (
        frame.groupby([*cell, "epoch"])
        .agg(mean=("_value", "mean"), std=("_value", "std"), n=("_value", "count"))
        .reset_index()
    )
    died = divergence_epochs(metrics)
    counts = [
        int(((died[cell] == row[cell]).all(axis=1) & (died["epoch"] <= row["epoch"])).sum())
        for _, row in out.iterrows()
    ]
    out["n_diverged"] = counts
    return out


def divergence_epochs(metrics: pd.DataFrame) -> pd.DataFrame:
    """First epoch at which each (run, B, seed) diverged (only seeds that did)."""
    frame = metrics.assign(_div=_flag(metrics["diverged"]))
    hit = frame[frame["_div"]]
    return hit.groupby(["dataset", "optimizer", "batch_size", "seed"])["epoch"].min().reset_index()


TRAINING_LENGTH_COLUMNS = [
    "dataset",
    "optimizer",
    "batch_size",
    "epochs",
    "quarter",
    "loss_first",
    "loss_quarter",
    "loss_last",
    "decrease_total",
    "decrease_last_quarter",
    "share_last_quarter",
    "criterion",
    "met",
]


def training_length(metrics: pd.DataFrame, flat_share: float = FLAT_SHARE) -> pd.DataFrame:
    """The training-length criterion (module docstring) for every base optimizer's cell."""
    base = metrics[metrics["optimizer"].isin(BASE_OPTIMIZERS)]
    rows = []
    if base.empty:
        return pd.DataFrame(columns=TRAINING_LENGTH_COLUMNS)
    loss = curves(base, "train_loss")
    for key, cell in loss.groupby(["dataset", "optimizer", "batch_size"], sort=True):
        cell = cell[cell["epoch"] >= 1].sort_values("epoch")
        epochs = int(cell["epoch"].max()) if len(cell) else 0
        quarter = max(1, math.ceil(epochs / 4))
        by_epoch = cell.set_index("epoch")["mean"]
        first = by_epoch.get(int(cell["epoch"].min()), math.nan) if len(cell) else math.nan
        last = by_epoch.get(epochs, math.nan)
        mid = by_epoch.get(epochs - quarter, math.nan)
        total, recent = first - last, mid - last
        share = recent / total if np.isfinite(total) and total > 0 else math.nan
        met = bool(np.isfinite(share) and share <= flat_share)
        rows.append(
            {
                **dict(zip(["dataset", "optimizer", "batch_size"], key, strict=True)),
                "epochs": epochs,
                "quarter": quarter,
                "loss_first": first,
                "loss_quarter": mid,
                "loss_last": last,
                "decrease_total": total,
                "decrease_last_quarter": recent,
                "share_last_quarter": share,
                "criterion": flat_share,
                "met": met,
            }
        )
    return pd.DataFrame(rows, columns=TRAINING_LENGTH_COLUMNS)


# ----------------------------------------------------------------------------- diagnostics

SHRINK_COLUMNS = [
    "dataset",
    "optimizer",
    "batch_size",
    "layer",
    "factor_mean",
    "factor_first",
    "factor_last",
    "shrink_share",
    "shrink_first",
    "shrink_last",
]

ALL_LAYERS = "all"


def layer_weights(feature_dim: int, hidden, num_classes: int) -> dict[str, int]:
    """Number of weights of each dense layer, keyed like ``diagnostics.csv``'s ``layer``."""
    sizes = [int(feature_dim), *map(int, hidden), int(num_classes)]
    return {str(i): n_in * n_out for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes))}


def shrink_summary(diagnostics: pd.DataFrame, weights: dict | None = None) -> pd.DataFrame:
    """Per (run, B, layer): mean factor f and share of coordinates with f < 1.

    Averaged over seeds and epochs (``*_first`` / ``*_last``: first and last epoch only).
    Where the file has no network-wide ``all`` layer, one is added: the mean over layers
    weighted by each layer's number of weights, ``weights[dataset][layer]``
    (:func:`layer_weights`), so that it is the share of all the network's weights; without
    ``weights`` for a dataset each layer counts once. Runs without a factor (NaN
    ``factor_mean``, e.g. sgd) are left out.
    """
    keys = ["dataset", "optimizer", "batch_size"]
    if diagnostics.empty or "factor_mean" not in diagnostics:
        return pd.DataFrame(columns=SHRINK_COLUMNS)
    frame = diagnostics.copy()
    frame["factor_mean"] = pd.to_numeric(frame["factor_mean"], errors="coerce")
    frame["shrink_share"] = pd.to_numeric(frame.get("shrink_share"), errors="coerce")
    frame = frame[np.isfinite(frame["factor_mean"])]
    if frame.empty:
        return pd.DataFrame(columns=SHRINK_COLUMNS)
    frame["layer"] = frame["layer"].astype(str)
    weights = weights or {}
    frame["_w"] = [
        float(weights.get(d, {}).get(layer, 1.0)) if weights.get(d) else 1.0
        for d, layer in zip(frame["dataset"], frame["layer"], strict=True)
    ]
    has_all = frame.groupby(keys)["layer"].transform(lambda s: (s == ALL_LAYERS).any())
    parts = frame[~has_all].assign(
        _fw=lambda f: f["factor_mean"] * f["_w"], _sw=lambda f: f["shrink_share"] * f["_w"]
    )
    sums = parts.groupby([*keys, "seed", "epoch"])[["_fw", "_sw", "_w"]].sum().reset_index()
    extra = sums.assign(
        factor_mean=sums["_fw"] / sums["_w"],
        shrink_share=sums["_sw"] / sums["_w"],
        layer=ALL_LAYERS,
    )[[*keys, "seed", "epoch", "factor_mean", "shrink_share", "layer"]]
    frame = pd.concat([frame.drop(columns="_w"), extra], ignore_index=True)
    per_epoch = frame.groupby([*keys, "layer", "epoch"])[["factor_mean", "shrink_share"]].mean()
    per_epoch = per_epoch.reset_index().sort_values("epoch")
    rows = []
    for key, cell in per_epoch.groupby([*keys, "layer"], sort=True):
        rows.append(
            {
                **dict(zip([*keys, "layer"], key, strict=True)),
                "factor_mean": cell["factor_mean"].mean(),
                "factor_first": cell["factor_mean"].iloc[0],
                "factor_last": cell["factor_mean"].iloc[-1],
                "shrink_share": cell["shrink_share"].mean(),
                "shrink_first": cell["shrink_share"].iloc[0],
                "shrink_last": cell["shrink_share"].iloc[-1],
            }
        )
    return pd.DataFrame(rows, columns=SHRINK_COLUMNS)


def shrink_curves(diagnostics: pd.DataFrame) -> pd.DataFrame:
    """factor_mean and shrink_share per (run, B, layer, epoch), mean over seeds."""
    if diagnostics.empty or "factor_mean" not in diagnostics:
        return pd.DataFrame(columns=[*_CELL, "layer", "epoch", "factor_mean", "shrink_share"])
    frame = diagnostics.copy()
    for column in ("factor_mean", "shrink_share"):
        frame[column] = pd.to_numeric(frame.get(column), errors="coerce")
    frame = frame[np.isfinite(frame["factor_mean"])]
    frame["layer"] = frame["layer"].astype(str)
    return (
        frame.groupby([*_CELL, "layer", "epoch"])[["factor_mean", "shrink_share"]]
        .mean()
        .reset_index()
    )


CV_COLUMNS = [
    "dataset",
    "optimizer",
    "batch_size",
    "lambda_median",
    "lambda_first",
    "lambda_last",
    "variance_ratio",
    "variance_ratio_first",
    "variance_ratio_last",
]


def control_variate_summary(diagnostics: pd.DataFrame) -> pd.DataFrame:
    """Per control-variate run: median lambda and achieved variance ratio (var with / var
    without the control variate), averaged over seeds and layers, over all epochs and at the
    first and last. Files without the cv columns, or runs with only NaN there, give no row.
    """
    needed = {"lambda_median", "variance_ratio"}
    if diagnostics.empty or not needed <= set(diagnostics.columns):
        return pd.DataFrame(columns=CV_COLUMNS)
    frame = diagnostics.copy()
    for column in needed:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame = frame[np.isfinite(frame["variance_ratio"]) | np.isfinite(frame["lambda_median"])]
    rows = []
    for key, cell in frame.groupby(_CELL, sort=True):
        per_epoch = cell.groupby("epoch")[["lambda_median", "variance_ratio"]].mean().sort_index()
        rows.append(
            {
                **dict(zip(_CELL, key, strict=True)),
                "lambda_median": per_epoch["lambda_median"].mean(),
                "lambda_first": per_epoch["lambda_median"].iloc[0],
                "lambda_last": per_epoch["lambda_median"].iloc[-1],
                "variance_ratio": per_epoch["variance_ratio"].mean(),
                "variance_ratio_first": per_epoch["variance_ratio"].iloc[0],
                "variance_ratio_last": per_epoch["variance_ratio"].iloc[-1],
            }
        )
    return pd.DataFrame(rows, columns=CV_COLUMNS)


def cv_curves(diagnostics: pd.DataFrame) -> pd.DataFrame:
    """lambda_median and variance_ratio per (run, B, epoch), mean over seeds and layers."""
    needed = ["lambda_median", "variance_ratio"]
    if diagnostics.empty or not set(needed) <= set(diagnostics.columns):
        return pd.DataFrame(columns=[*_CELL, "epoch", *needed])
    frame = diagnostics.copy()
    for column in needed:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame = frame[np.isfinite(frame["variance_ratio"]) | np.isfinite(frame["lambda_median"])]
    return frame.groupby([*_CELL, "epoch"])[needed].mean().reset_index()


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


# ----------------------------------------------------------------------------- notebook tables


def read_benchmark(layout) -> pd.DataFrame | None:
    """``step_time.csv`` of the profile, or None where the benchmark has not run."""
    path = Path(layout.benchmark())
    return pd.read_csv(path) if path.exists() else None


def dataset_tables(layout, dataset: str, runs, batch_sizes, config: dict):
    """(summary, paired) of one dataset: what the summary notebook writes.

    ``config`` supplies the epoch count (``train.epochs``) and the study network's hidden
    widths (``model.hidden``) that pick the benchmark rows for the equal-time family.
    """
    epochs = (config.get("train") or {}).get("epochs")
    hidden = (config.get("model") or {}).get("hidden", [])
    metrics, _ = read_run_tables(layout, [dataset], runs, batch_sizes, "metrics.csv")
    best = read_best(layout, [dataset], runs, batch_sizes)
    benchmark = read_benchmark(layout)
    costs = {int(b): step_costs(benchmark, hidden, b) for b in batch_sizes}
    if metrics.empty and epochs is None:
        summary = pd.DataFrame(columns=SUMMARY_COLUMNS)
    else:
        summary = summary_table(best, metrics, runs, batch_sizes, dataset=dataset, epochs=epochs)
    if metrics.empty:
        paired = pd.DataFrame(columns=PAIRED_COLUMNS)
    else:
        paired = paired_table(
            metrics, runs, batch_sizes, dataset=dataset, costs=costs, epochs=epochs
        )
    return summary, paired


def network_weights(layout, datasets, hidden) -> dict[str, dict[str, int]]:
    """{dataset: :func:`layer_weights`} from the data sidecars (datasets without one: none)."""
    out = {}
    for dataset in datasets:
        path = Path(layout.data_meta(dataset))
        if path.exists():
            meta = json.loads(path.read_text())
            out[dataset] = layer_weights(meta["feature_dim"], hidden, meta["num_classes"])
    return out


def performance_tables(layout, datasets, runs, batch_sizes, hidden=()) -> dict[str, pd.DataFrame]:
    """The performance notebook's tables, keyed by file name (``layout.NOTEBOOK_TABLES``);
    ``hidden``: the study network's hidden widths (weights the network-wide shrink share)."""
    metrics, _ = read_run_tables(layout, datasets, runs, batch_sizes, "metrics.csv")
    tuning, _ = read_run_tables(layout, datasets, runs, batch_sizes, "tuning.csv")
    diagnostics, _ = read_run_tables(layout, datasets, runs, batch_sizes, "diagnostics.csv")
    best = read_best(layout, datasets, runs, batch_sizes)
    settings = tuning_settings(tuning)
    return {
        "lr_sensitivity.csv": lr_summary(settings, best)
        if len(settings)
        else pd.DataFrame(columns=LR_COLUMNS),
        "alpha_sensitivity.csv": alpha_table(settings)
        if len(settings)
        else pd.DataFrame(columns=ALPHA_COLUMNS),
        "training_length.csv": training_length(metrics)
        if len(metrics)
        else pd.DataFrame(columns=TRAINING_LENGTH_COLUMNS),
        "shrink.csv": shrink_summary(diagnostics, network_weights(layout, datasets, hidden)),
        "control_variates.csv": control_variate_summary(diagnostics),
    }


def run_groups(runs: Sequence[str]) -> dict[str, list[str]]:
    """The runs split into groups small enough to read in one panel, each with its base.

    ``sgd`` with its noise-informed variants (tuned and prototype alpha); ``sgd`` with the
    established relatives (svag, msvag, control variates); ``momentum`` and ``adam`` with
    theirs (adabelief joins adam); anything else under "other runs". A base alone keeps its own
    group (sgd only once); a profile of bases only is one group, "all runs".
    """
    groups: dict[str, list[str]] = {
        "sgd and its noise-informed variants": [],
        "sgd and its relatives": [],
        "momentum and its variants": [],
        "adam and its relatives": [],
    }
    names = list(groups)
    for run in runs:
        base = base_of(run) or run
        if base == "sgd":
            key = names[0] if variant_of(run) or run == "sgd" else names[1]
        else:
            key = names[2] if base == "momentum" else names[3] if base == "adam" else None
        groups.setdefault(key or "other runs", []).append(run)
    if "sgd" in runs:
        groups[names[1]].insert(0, "sgd")
    kept = {k: v for k, v in groups.items() if v}
    # sgd alone in one of its two groups is already drawn in the other
    for mine, other in ((names[0], names[1]), (names[1], names[0])):
        if kept.get(mine) == ["sgd"] and len(kept.get(other, [])) > 1:
            del kept[mine]
    if all(len(v) == 1 for v in kept.values()):
        return {"all runs": list(runs)}
    return kept
