"""The report's one vocabulary for numbers: every value reaches a template as text from here.

Missing values (None, "", NaN) read "n/a", never "nan". Accuracies and other shares of the
results tables are printed as bare percentages with fixed decimals (:func:`pct`: 0.9734 ->
"97.34"; differences :func:`signed_points`); the gradient-noise section prints shares with a
unit (:func:`percent`: "97.3 %") and its numbers with a standard error (:func:`plus_minus`).
Other numbers: :func:`fmt` or :func:`number` (significant digits), :func:`fixed` (fixed decimals),
:func:`signed` (a difference with its sign), :func:`count` (an exact count, 2,913,290) and
:func:`array` (a vector or matrix of settings, each entry through :func:`fmt`)."""

from __future__ import annotations

import math

NA = "n/a"


def missing(x) -> bool:
    if x is None or x == "":
        return True
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return False


def fmt(x, digits: int = 3) -> str:
    """``digits`` significant digits; missing values read "n/a" (never "nan")."""
    if missing(x):
        return NA
    if isinstance(x, str):
        try:
            x = float(x)
        except ValueError:
            return x
    return f"{float(x):.{digits}g}"


def pct(x, decimals: int = 2) -> str:
    """A fraction as a percentage with fixed decimals (0.9734 -> 97.34)."""
    return NA if missing(x) else f"{100 * float(x):.{decimals}f}"


def signed_points(x, decimals: int = 2) -> str:
    """A difference of fractions in percentage points with its sign (+0.12)."""
    return NA if missing(x) else f"{100 * float(x):+.{decimals}f}"


def signed(x, decimals: int = 4) -> str:
    """A difference with its sign and fixed decimals (-0.01234 -> -0.0123)."""
    return NA if missing(x) else f"{float(x):+.{decimals}f}"


def count(n) -> str:
    """An exact count with thousands separators (2913290 -> 2,913,290)."""
    return NA if missing(n) else f"{int(n):,}"


def array(x, digits: int = 3) -> str:
    """A vector or matrix (nested lists) with every entry through :func:`fmt`:
    [[1.0, 0.6], [0.6, 0.8]] -> [[1, 0.6], [0.6, 0.8]]."""
    if isinstance(x, list | tuple):
        return "[" + ", ".join(array(v, digits) for v in x) + "]"
    return fmt(x, digits)


def pvalue(p) -> str:
    if missing(p):
        return NA
    return "< 0.001" if float(p) < 0.001 else f"{float(p):.3f}"


def mean_std(mean, std) -> str:
    if missing(mean):
        return NA
    return f"{pct(mean)} ± {pct(std)}" if not missing(std) else f"{pct(mean)}"


def fixed(x, decimals: int = 1) -> str:
    """``decimals`` places after the point (12.345 -> 12.3); missing values read "n/a"."""
    return NA if missing(x) else f"{float(x):.{decimals}f}"


def minutes(seconds) -> str:
    return NA if missing(seconds) else f"{float(seconds) / 60:.1f} min"


def number(x, digits: int = 3) -> str:
    """``digits`` significant digits; plain integers from 1000 to 10^7 (7590, not 7.59e+03)."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    x = float(x)
    if 1e3 <= abs(x) < 1e7:
        return f"{round(x, digits - 1 - math.floor(math.log10(abs(x)))):.0f}"
    return f"{x:.{digits}g}"


def plus_minus(x, se, digits: int = 3) -> str:
    """A value with its standard error, "x ± se" (the error to two digits)."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    if se is None or not math.isfinite(float(se)):
        return number(x, digits)
    return f"{number(x, digits)} ± {number(se, 2)}"


def percent(x) -> str:
    """A share as a percentage: one decimal, or two significant digits below 1 %."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    value = 100 * float(x)
    return f"{value:.2g} %" if 0 < value < 1 else f"{value:.1f} %"
