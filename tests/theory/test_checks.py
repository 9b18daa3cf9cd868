"""The theory notebook's checks, defined in ``sngrad.theory``: the record's rows and verdicts,
and the section functions at small sizes (what the notebook plots and writes)."""

import math

import jax
import numpy as np
import pytest

from sngrad.theory import checks_control_variates, checks_descent, checks_quadratic
from sngrad.theory.pass_rule import FLOOR, Z_BOUND
from sngrad.theory.record import CheckRecord, tag

# the columns of results/<profile>/theory/checks.csv, in order
COLUMNS = ["name", "section", "kind", "claim", "predicted", "measured", "rel_error", "mc_se",
           "expected_error", "scale", "z", "z_bound", "floor", "passed", "alternative",
           "z_alternative", "resolved", "eta", "k", "noise_var", "batch_size"]


def test_a_record_row_holds_the_pass_rule_verdict():
    record = CheckRecord()
    record.check("x_right", "x", "claim", 1.0, 1.01, 0.005)
    record.check("x_wrong", "x", "claim", 1.0, 1.1, 0.005)
    record.check("x_leading", "x", "claim", 1.0, 1.1, 0.005, kind="leading-order",
                 expected_error=0.1)
    record.check("x_zero", "x", "claim", 0.0, 0.01, 0.01, scale=0.5)
    rows = {r["name"]: r for r in record.rows}
    assert list(record.rows[0]) == COLUMNS
    assert rows["x_right"]["passed"] is True and rows["x_wrong"]["passed"] is False
    assert rows["x_leading"]["passed"] is None  # leading order: neither a pass nor a failure
    assert rows["x_right"]["z"] == pytest.approx(0.01 / math.hypot(0.005, FLOOR))
    assert rows["x_zero"]["rel_error"] == pytest.approx(0.02)  # in units of the scale
    assert (rows["x_right"]["floor"], rows["x_right"]["z_bound"]) == (FLOOR, Z_BOUND)
    assert record.n_passed("x_") == 2 and record.n_passed(section="y") == 0
    assert record.z_of("x_wrong") == rows["x_wrong"]["z"] and record.z_of("nope") is None
    assert [r["name"] for r in record.named("x_w")] == ["x_wrong"]


def test_an_unresolved_alternative_is_neither_passed_nor_failed():
    record = CheckRecord()
    record.check("wide", "g", "claim", 1.2, 1.19, 0.05, alternative=1.167)
    record.check("narrow", "g", "claim", 1.2, 1.201, 0.001, alternative=1.167)
    wide, narrow = record.rows
    assert (wide["resolved"], wide["passed"]) == (False, None)
    assert (narrow["resolved"], narrow["passed"]) == (True, True)
    assert narrow["z_alternative"] > Z_BOUND


def test_the_record_rejects_a_malformed_check():
    record = CheckRecord()
    with pytest.raises(ValueError, match="kind"):
        record.check("a", "a", "claim", 1.0, 1.0, 0.1, kind="approximate")
    with pytest.raises(ValueError, match="expected_error"):
        record.check("a", "a", "claim", 1.0, 1.0, 0.1, kind="leading-order")
    with pytest.raises(ValueError, match="expected_error"):
        record.check("a", "a", "claim", 1.0, 1.0, 0.1, expected_error=0.1)
    assert record.rows == []
    assert (tag(0.01), tag(-0.5), tag(2.0)) == ("0p01", "m0p5", "2")


def test_the_lecture_rates_are_exact_checks_that_pass():
    """Noise-free descent: every rate check is exact, with no Monte Carlo error, and passes."""
    record = CheckRecord()
    paths, params = checks_descent.descent_paths(record)
    names = [r["name"] for r in record.rows]
    assert names == ["f_gd_rate_below", "f_gd_rate_near", "f_gd_rate_above",
                     "f_momentum_rate_0p5", "f_momentum_rate_0p9"]
    assert all(r["kind"] == "exact" and r["mc_se"] == 0.0 and r["passed"] is True
               for r in record.rows)
    assert paths["gd_below"].shape == (checks_descent.N_GD + 1, 2)
    assert paths["adam"].shape == (checks_descent.N_MOM + 1, 2)
    assert params["limit"] == pytest.approx(0.1)


def test_the_one_dimensional_section_at_a_small_size():
    record = CheckRecord()
    table, params = checks_quadratic.stationary_1d(record, jax.random.key(0), (40, 200, 400))
    n_eta = len(checks_quadratic.ETA_K)
    assert len(table) == n_eta and table["check"].iloc[0] == "a_discrete_etak_0p01"
    np.testing.assert_allclose(table.sde_error, -checks_quadratic.ETA_K / 2)
    kinds = [r["kind"] for r in record.rows]
    assert kinds == ["exact"] * n_eta + ["leading-order", "exact", "exact"]
    assert params["n_eta"] == n_eta and params["n_discrete_passed"] <= n_eta
    assert all(np.isfinite(r["z"]) for r in record.rows)


def test_the_control_variate_section_at_a_small_size():
    record = CheckRecord()
    data, params = checks_control_variates.control_variates(record, jax.random.key(1), (20, 20),
                                                            (20, 20))
    # delta = 0 has no check (g = h there); four claims at each other distance
    deltas = checks_control_variates.DELTAS_G
    n_distance = 4 * int(np.sum(deltas != 0))
    n_bias = 2 * len(checks_control_variates.BATCHES_G)
    assert len(record.rows) == n_distance + 2 + n_bias + 1
    assert record.rows[-1]["name"] == "g_bias_slope"
    assert len(data["distance"]) == len(deltas) and len(data["bias"]) == n_bias // 2
    assert [r["delta"] for r in params["distance_table"]] == deltas.tolist()
    # the exact predictions at delta = 0: the corrected estimates have no variance
    zero = int(np.flatnonzero(deltas == 0)[0])
    assert data["predicted"]["optimal"][zero] == pytest.approx(0.0, abs=1e-12)
