"""Where a run's time goes: the job ledger, the shared compilation cache, the stacked
initialisation that lets every optimizer share one compiled program, and the report's table."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT

from sngrad import compile_cache, ledger
from sngrad.errors import SngradError
from sngrad.io import write_json
from sngrad.layout import Layout
from sngrad.models import mlp_init
from sngrad.profile import read_yaml
from sngrad.report import ledger as report_ledger
from sngrad.train.engine import RunConfig, initial_parameters, run_keys

# ----------------------------------------------------------------------------- initialisation


@pytest.mark.parametrize("sizes, k", [((64, 16, 10), 1), ((784, 64, 10), 10), ((8, 5, 5, 3), 7)])
def test_stacked_initialisation_is_the_vmapped_one_bit_for_bit(sizes, k):
    """K unbatched initialisations stacked equal the vmapped initialisation the engine used
    before (the results of every profile depend on these bits)."""
    keys = [run_keys(RunConfig(0.1, None, None, seed))[0] for seed in range(1, k + 1)]
    vmapped = jax.jit(jax.vmap(lambda key: mlp_init(key, sizes)))(jnp.asarray(np.stack(keys)))
    stacked = initial_parameters(keys, sizes)
    assert jax.tree.structure(vmapped) == jax.tree.structure(stacked)
    for a, b in zip(jax.tree.leaves(vmapped), jax.tree.leaves(stacked), strict=True):
        assert a.shape == b.shape == (k, *a.shape[1:])
        assert np.array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- one entry


def test_an_entry_adds_up_to_its_wall_time():
    got = ledger.entry(stage="tune", job="mnist/sgd/bs128", wall_s=30.0, cpu_s=28.5,
                       threads=1, phases_record={"compile_s": 9.25, "scan_s": 17.5},
                       finished_unix=1.0)
    assert set(ledger.COLUMNS) <= set(got)
    assert got["compile_s"] + got["scan_s"] + got["other_s"] == pytest.approx(30.0, abs=1e-12)
    assert got["other_s"] == pytest.approx(3.25)


def test_a_job_without_phases_has_them_unmeasured_and_all_its_time_other():
    got = ledger.entry(stage="notebooks", job="theory", wall_s=12.0, cpu_s=11.0, threads=1,
                       phases_record=None, finished_unix=1.0)
    assert got["compile_s"] is None and got["scan_s"] is None and got["other_s"] == 12.0


def test_bash_times_are_read_as_cpu_seconds():
    text = "0m0.012s 0m0.004s\n1m30.500s 0m2.250s\n"
    assert ledger.parse_times(text) == pytest.approx(0.016 + 90.5 + 2.25)
    assert ledger.parse_times(text.replace(".", ",")) == pytest.approx(92.766)  # a locale's comma
    with pytest.raises(SngradError, match="times"):
        ledger.parse_times("0m1.0s\n")


def test_record_writes_the_entry_named_as_the_log_and_removes_its_side_files(tmp_path,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    log = "logs/quick/train/digits/sgd+sngrad2@0.05/bs128.log"
    (tmp_path / log).parent.mkdir(parents=True)
    (tmp_path / ledger.times_file(log)).write_text("0m0.5s 0m0.5s\n0m20.0s 0m1.0s\n")
    (tmp_path / ledger.phases_file(log)).write_text(json.dumps({"compile_s": 4.0, "scan_s": 6.0}))
    started = f"{time.time() - 15.0:.6f}"
    out = ledger.record(log, started, ledger.times_file(log), threads=2)
    expected = "results/quick/ledger/train/digits/sgd+sngrad2@0.05/bs128.json"
    assert out.resolve() == tmp_path / expected
    got = json.loads(out.read_text())
    assert got["stage"] == "train" and got["job"] == "digits/sgd+sngrad2@0.05/bs128"
    assert got["cpu_s"] == pytest.approx(22.0) and got["threads"] == 2
    assert 15.0 <= got["wall_s"] < 60.0
    assert got["compile_s"] + got["scan_s"] + got["other_s"] == pytest.approx(got["wall_s"])
    assert not (tmp_path / ledger.times_file(log)).exists()
    assert not (tmp_path / ledger.phases_file(log)).exists()
    assert ledger.read_entries(Layout("quick")) == [got]


def test_the_jobs_table_lists_every_entry_in_the_order_the_jobs_finished(tmp_path):
    import csv

    layout = Layout("scale", str(tmp_path / "results"))
    late = ledger.entry(stage="train", job="mnist/sgd/bs1024", wall_s=40.0, cpu_s=39.0,
                        threads=1, phases_record={"compile_s": 5.0, "scan_s": 30.0},
                        finished_unix=20.0)
    early = ledger.entry(stage="notebooks", job="theory", wall_s=12.0, cpu_s=11.0, threads=1,
                         phases_record=None, finished_unix=10.0)
    write_json(layout.ledger("train", "mnist", "sgd", "bs1024"), late)
    write_json(layout.ledger("notebooks", "theory"), early)
    out = tmp_path / "jobs.csv"
    assert ledger.cli(["jobs", "--profile", "scale", "--results-root",
                       str(tmp_path / "results"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["job"] for r in rows] == ["theory", "mnist/sgd/bs1024"]
    assert list(rows[0]) == list(ledger.JOB_COLUMNS)
    assert float(rows[1]["wall_s"]) == 40.0 and rows[0]["scan_s"] == ""


def test_a_log_outside_the_layout_is_refused():
    with pytest.raises(ValueError, match="not a job log"):
        Layout.of_log("results/quick/train/x.log")


def test_the_command_line_never_fails_a_finished_job(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = ledger.cli(["record", "--log", "logs/p/data/x.log", "--started", "1.0",
                       "--threads", "1"])
    assert code == 0 and "no ledger entry" in capsys.readouterr().err


def test_compilation_and_scans_are_counted_in_the_process():
    ledger.watch_compilation()
    before = ledger.phases()

    @jax.jit
    def fresh_program(x):  # a new function: compiled here, whatever ran before
        return jnp.tanh(x) @ x.T + math.pi

    fresh_program(jnp.ones((17, 17))).block_until_ready()
    ledger.add_scan(1.5, 0.75)
    after = ledger.phases()
    assert after["compile_s"] > before["compile_s"]
    assert after["scan_s"] == pytest.approx(before["scan_s"] + 1.5)
    assert after["scan_cpu_s"] == pytest.approx(before["scan_cpu_s"] + 0.75)
    assert after["cpu_s"] >= before["cpu_s"]


# ----------------------------------------------------------------------------- the cache


CPU_A = "processor\t: 0\nmodel name\t: Some CPU v1\nflags\t\t: sse2 avx avx2 fma\n"
CPU_B = CPU_A.replace("avx2 fma", "avx2 fma avx512f")


def test_the_compilation_cache_has_a_folder_per_cpu_type(tmp_path, monkeypatch):
    monkeypatch.setenv(compile_cache.CACHE_ENV, str(tmp_path / "xla"))
    a, b = compile_cache.cache_dir(CPU_A), compile_cache.cache_dir(CPU_B)
    assert a.parent == b.parent == tmp_path / "xla"
    assert a != b  # another instruction set never reads this one's programs
    assert compile_cache.cache_dir(CPU_A + "processor\t: 1\n") == a  # more cores, same type
    assert compile_cache.cache_dir(CPU_A.replace("sse2 avx", "avx sse2")) == a  # flag order


def test_the_cache_lives_in_the_user_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(compile_cache.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.cache_root() == tmp_path / compile_cache.FOLDER
    assert compile_cache.SETTINGS["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"


# ----------------------------------------------------------------------------- the report


def _entry(stage, job, wall, cpu, compile_s=None, scan=None, scan_cpu=None, cores=2):
    phases = {"compile_s": compile_s, "scan_s": scan, "scan_cpu_s": scan_cpu}
    record = ledger.entry(stage=stage, job=job, wall_s=wall, cpu_s=cpu, threads=1,
                          phases_record=None if compile_s is None else phases,
                          finished_unix=0.0)
    return {**record, "machine_cores": cores}


# the scans' CPU time is below their wall time where jobs shared the cores
ENTRIES = [
    _entry("tune", "d/sgd/bs8", 60.0, 58.0, 12.0, 40.0, 21.0),
    _entry("tune", "d/adam/bs8", 90.0, 85.0, 18.0, 60.0, 33.0),
    _entry("train", "d/sgd/bs8", 30.0, 29.0, 6.0, 20.0, 11.0),
    _entry("notebooks", "theory", 120.0, 110.0),
    _entry("report", "report", 6.0, 5.0),
]


def test_stage_rows_sum_their_jobs_and_leave_the_report_out():
    rows = report_ledger.stage_rows(ENTRIES, {"tune": 3e12, "train": 1e12})
    assert [r["stage"] for r in rows] == ["tune", "train", "notebooks"]
    tune = rows[0]
    assert tune["jobs"] == 2 and tune["flops"] == 3e12
    assert tune["wall_min"] == pytest.approx(150 / 60)
    assert tune["cpu_min"] == pytest.approx(143 / 60)
    assert tune["compile_min"] == pytest.approx(30 / 60)
    assert tune["scan_min"] == pytest.approx(100 / 60)
    notebooks = rows[2]
    assert notebooks["compile_min"] is None and notebooks["scan_min"] is None


def test_efficiency_is_the_scans_cpu_time_over_the_run_on_every_core():
    got = report_ledger.efficiency(ENTRIES, training_flops=4e12, elapsed_s=300.0)
    core_seconds = 21.0 + 33.0 + 11.0  # the scans' CPU time, not their wall time
    assert got["rate_per_core"] == pytest.approx(4e12 / core_seconds)
    assert got["cores"] == 2
    assert got["ideal_min"] == pytest.approx(core_seconds / 2 / 60)
    assert got["efficiency"] == pytest.approx(core_seconds / 2 / 300.0)
    assert report_ledger.efficiency(ENTRIES[3:], 4e12, 300.0) is None  # no training scans


def test_the_report_prints_the_ledger_and_counts_the_tuning_that_ran(tmp_path):
    from test_report import render, write_tree

    layout, config = write_tree(tmp_path / "results")
    # the noise keys the fixture leaves out: counted FLOPs need a whole profile
    config = {**config, "noise": read_yaml(ROOT / "config/smoke.yaml")["noise"]}
    for record in ENTRIES:
        write_json(layout.ledger(record["stage"], *record["job"].split("/")), record)
    text = render(tmp_path, layout, config)
    block = text.split("<!-- ledger -->", 1)[1].split("<!-- /ledger -->", 1)[0]
    assert "| tune | 2 |" in block and "| notebooks | 1 | n/a |" in block
    assert "| report |" not in block
    assert "GFLOP/s per core" in block and "efficiency of" in block
    flops = report_ledger.counted_flops(layout, config)
    tuned_rows = sum(
        len(open(layout.run_file("tuning.csv", "mnist", run, 64)).readlines()) - 1
        for run in config["optimizers"])
    assert tuned_rows > 0 and flops["tune"] > 0 and flops["train"] > 0


def test_the_report_renders_with_and_without_the_benchmark(tmp_path):
    from test_report import render, write_tree

    layout, config = write_tree(tmp_path / "results")
    with_bench = render(tmp_path / "with", layout, config)
    assert "| 64-16-10 | 64 | sgd+sngrad1 |" in with_bench
    Path(layout.benchmark()).unlink()
    without = render(tmp_path / "without", layout, config)
    assert "| 64-16-10 | 64 | sgd+sngrad1 |" not in without
    assert "`make bench PROFILE=fixture`" in without
    assert "<!-- ledger -->" not in without  # no job wrote an entry in this fixture
