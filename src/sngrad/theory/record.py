"""The theory notebook's table of checks: one row per quantitative claim, with its verdict.

Every claim is a prediction p, a measurement m and the Monte Carlo standard error delta of
m - p. Its relative error is |m - p| / |p|, or |m - p| / scale for a claim whose prediction is
0 (the scale names the size of the effect that should be absent), and its standardised
deviation is ``pass_rule.z_score`` with the record's floor.

Two kinds of claim:

- ``exact``: the prediction is exact for the simulated process, so only Monte Carlo error
  separates it from the measurement; it passes when |z| <= z_bound. A check that names a wrong
  ``alternative`` counts only where its error bar separates the two (``pass_rule.resolves``);
  otherwise its verdict is None (not resolved at this scale).
- ``leading-order``: the prediction drops terms on purpose (the SDE limit, a small-noise
  expansion) and states ``expected_error``, the relative size of what it drops; its z is shown
  but it is neither a pass nor a failure.
"""

from __future__ import annotations

import math

from sngrad.theory.pass_rule import FLOOR, Z_BOUND, resolves, z_score

KINDS = ("exact", "leading-order")


class CheckRecord:
    """The checks recorded so far, in order (``rows``: one dict per check, the columns of
    the notebook's checks.csv)."""

    def __init__(self, floor: float = FLOOR, z_bound: float = Z_BOUND):
        self.floor, self.z_bound = floor, z_bound
        self.rows: list[dict] = []

    def check(self, name, section, claim, predicted, measured, mc_se, *, kind="exact",
              expected_error=None, scale=None, alternative=None, eta=None, k=None,
              noise_var=None, batch_size=None) -> None:
        """Record one claim (module docstring); ``eta``, ``k``, ``noise_var`` and
        ``batch_size`` only describe its setting."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if (kind == "leading-order") != (expected_error is not None):
            raise ValueError(
                f"{name}: a leading-order check needs expected_error, an exact one none")
        floor, bound = self.floor, self.z_bound
        predicted, measured, mc_se = float(predicted), float(measured), float(mc_se)
        rel = abs(measured - predicted) / (abs(predicted) if scale is None else float(scale))
        z = z_score(predicted, measured, mc_se, floor, scale)
        resolved = alternative is None or resolves(predicted, alternative, mc_se, floor, bound,
                                                   scale)
        self.rows.append({
            "name": name, "section": section, "kind": kind, "claim": claim,
            "predicted": predicted, "measured": measured, "rel_error": rel, "mc_se": mc_se,
            "expected_error": math.nan if expected_error is None else abs(float(expected_error)),
            "scale": math.nan if scale is None else float(scale),
            "z": z, "z_bound": bound, "floor": floor,
            "passed": bool(abs(z) <= bound) if kind == "exact" and resolved else None,
            "alternative": math.nan if alternative is None else float(alternative),
            "z_alternative": math.nan if alternative is None else z_score(
                alternative, measured, mc_se, floor, scale),
            "resolved": bool(resolved), "eta": eta, "k": k, "noise_var": noise_var,
            "batch_size": batch_size,
        })

    def z_of(self, name: str):
        """The z of a recorded check, or None if there is no check of that name."""
        return next((c["z"] for c in self.rows if c["name"] == name), None)

    def n_passed(self, prefix: str = "", section: str | None = None) -> int:
        """How many exact checks named ``prefix``... (of ``section``, if given) passed."""
        return sum(c["passed"] is True for c in self.rows
                   if c["name"].startswith(prefix) and section in (None, c["section"]))

    def named(self, prefix: str) -> list[dict]:
        """The rows whose name starts with ``prefix``, in order."""
        return [c for c in self.rows if c["name"].startswith(prefix)]


def tag(x: float) -> str:
    """A number as a check-name fragment: 0.01 -> '0p01', -0.5 -> 'm0p5'."""
    return f"{x:g}".replace(".", "p").replace("-", "m")
