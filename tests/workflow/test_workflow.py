"""The Snakemake workflow, run as a user would from a copy of the tracked files.

Dry runs check what each profile plans (and that bad configs stop before any job); the tests
marked slow run the smoke profile for real: end to end, killed and resumed, one target rebuilt.
"""

import csv
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SNAKEMAKE, copy_tree, snakemake

SMOKE = ["--configfile", "config/smoke.yaml"]
WORKFLOW_PROFILE = "Using workflow specific profile workflow/profiles/default"


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a snakemake run -> {rule: count}."""
    assert "Job stats:" in output, output[-3000:]
    counts = {}
    for line in output.split("Job stats:", 1)[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def planned_outputs(output: str) -> list[str]:
    """Every output path of every planned job (dry-run listing)."""
    paths = []
    for line in output.splitlines():
        if line.strip().startswith("output:"):
            paths += [p.strip() for p in line.split(":", 1)[1].split(",")]
    return paths


def profile(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A fresh copy of the repository (tracked files only), never run."""
    return copy_tree(tmp_path_factory.mktemp("fresh"))


def test_lint_reports_nothing():
    out = snakemake("--lint", cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Lints for" not in out.stdout + out.stderr


# ----------------------------------------------------------------------------- dry runs


@pytest.mark.parametrize("name", ["default", "quick", "paper", "scale", "smoke", "smoke-cnn"])
def test_fresh_copy_plans_every_job_of_the_profile(fresh, name):
    args = ["-n"] if name == "default" else ["-n", "--configfile", f"config/{name}.yaml"]
    out = snakemake(*args, cwd=fresh)
    assert out.returncode == 0, out.stderr[-3000:]
    assert WORKFLOW_PROFILE in out.stderr
    assert "Nothing to be done" not in out.stdout + out.stderr
    config = profile(name)
    datasets = len(config["datasets"])
    runs = datasets * len(config["optimizers"]) * len(config["batch_sizes"])
    per_dataset = {"data", "summary"}
    once = {"performance", "batch_sizes", "report", "all"}
    if config["noise"].get("enabled", True):
        per_dataset |= {"reference", "noise"}
        once.add("gradient_noise")
    if config["theory"]["enabled"]:
        once.add("theory")
    expected = {"tune": runs, "train": runs}
    expected |= {rule: datasets for rule in per_dataset} | {rule: 1 for rule in once}
    if name == "default":
        expected["publish"] = 1
    counts = job_counts(out.stdout)
    assert {k: v for k, v in counts.items() if k != "total"} == expected
    outputs = planned_outputs(out.stdout)
    assert outputs and all(p.startswith(f"results/{name}/") for p in outputs), outputs[:5]


def test_configfile_replaces_the_default_profile(fresh):
    out = snakemake("-n", *SMOKE, cwd=fresh)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mnist" not in out.stdout.replace("mnist1d", "") and "msvag" not in out.stdout


def test_every_report_input_is_a_source_file_or_made_by_a_planned_job(fresh):
    """The one list of the report's inputs (sngrad.layout.report_inputs, the report rule's
    inputs and what a report rendered by hand digests) names only files the plan makes."""
    from sngrad.layout import Layout, report_inputs
    from sngrad.report.reproducibility import expected_inputs

    out = snakemake("-n", *SMOKE, cwd=fresh)
    assert out.returncode == 0, out.stderr[-3000:]
    made = set(planned_outputs(out.stdout))
    config, layout = profile("smoke"), Layout("smoke")
    listed = expected_inputs(layout, config)
    assert listed == [f for files in report_inputs(layout, config).values() for f in files]
    sources = {f for f in listed if not f.startswith("results/")}
    assert sources and all((fresh / f).is_file() for f in sources), sources
    assert {f for f in listed if f.startswith("results/")} <= made
    assert layout.report() in made and layout.notebook("theory") in listed


def test_a_profile_without_the_noise_study_plans_none_of_it(fresh, tmp_path):
    """noise.enabled: false: no reference run, no noise job, no gradient_noise notebook, and
    the report reads nothing of the study (every input it lists is planned or a source)."""
    from sngrad.layout import NOISE_SUMMARY, Layout
    from sngrad.report.reproducibility import expected_inputs

    config = {**profile("smoke"), "profile": "nonoise", "noise": {"enabled": False}}
    path = tmp_path / "nonoise.yaml"
    path.write_text(yaml.safe_dump(config))
    out = snakemake("-n", "--configfile", str(path), cwd=fresh)
    assert out.returncode == 0, out.stderr[-3000:]
    counts = job_counts(out.stdout)
    assert not {"reference", "noise", "gradient_noise"} & set(counts), counts
    assert counts["train"] == len(config["optimizers"]) and counts["report"] == 1
    made, listed = set(planned_outputs(out.stdout)), expected_inputs(Layout("nonoise"), config)
    assert {f for f in listed if f.startswith("results/")} <= made
    study = ("/reference", "/noise/", "gradient_noise", NOISE_SUMMARY, "noise_vs_batch")
    results = [f for f in made | set(listed) if f.startswith("results/")]
    assert not [f for f in results if any(part in f for part in study)]


def test_jobs_are_limited_to_their_threads_and_the_benchmark_runs_alone(fresh):
    out = snakemake("-n", "-p", "--cores", "3", *SMOKE, cwd=fresh)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "intra_op_parallelism_threads=1" in out.stdout and "OMP_NUM_THREADS=1" in out.stdout
    assert f"{sys.executable} -m sngrad train" in out.stdout
    assert "rule benchmark:" not in out.stdout  # its own target, `make bench`
    bench = snakemake("-n", "-p", "--cores", "3", "bench", *SMOKE, cwd=fresh)
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert set(job_counts(bench.stdout)) == {"benchmark", "bench", "total"}
    benchmark = bench.stdout.split("rule benchmark:", 1)[1].split("\n\n", 1)[0]
    assert "threads: 3" in benchmark  # every core: no other job shares the machine


def test_jobs_that_need_no_training_come_first_and_costly_cells_before_cheap(fresh):
    """The scheduler's priorities: data, theory, the reference run's cell, the reference run
    and the noise study above every other cell; cells by their counted step cost."""
    out = snakemake("-n", "--cores", "2", "--configfile", "config/quick.yaml", cwd=fresh)
    assert out.returncode == 0, out.stderr[-3000:]
    priorities = {}
    for rule, block in re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", out.stdout, re.M | re.S):
        found = re.search(r"^\s+priority: (\d+)", block, re.M)
        name = re.search(r"^\s+output: (\S+)", block, re.M)
        if name:
            priorities[(rule, name.group(1))] = int(found.group(1)) if found else 0
    def of(rule, part=""):
        return [v for (r, path), v in priorities.items() if r == rule and part in path]
    reference = f"/sgd/bs{profile('quick')['batch_sizes'][0]}/"  # the reference run's cell
    early = min(of("data") + of("theory") + of("reference") + of("noise") + of("tune", reference))
    others = [v for (r, path), v in priorities.items()
              if r in ("tune", "train") and reference not in path]
    assert others and early > max(others)
    cv, sngrad1, adam = (of("tune", f"/{run}/") for run in ("sgd+cv", "sgd+sngrad1", "adam"))
    assert min(cv) > max(sngrad1) > max(adam)


def test_single_dataset_target_touches_no_other_dataset(fresh):
    # targets go before --configfile, which takes several values
    out = snakemake(
        "results/smoke/digits/summary.csv", "-n", *SMOKE,
        "--config", "datasets=[digits,mnist1d]", cwd=fresh,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    outputs = planned_outputs(out.stdout)
    assert outputs and not [p for p in outputs if "mnist1d" in p]
    counts = job_counts(out.stdout)
    assert counts["train"] == len(profile("smoke")["optimizers"]) and counts["summary"] == 1
    assert "report" not in counts and "theory" not in counts


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"tune": {**profile("smoke")["tune"], "lr_min": 0.5}}, "tune.lr_min (0.5) must be <"),
        ({"batch_sizes": [4096]}, "batch_sizes = [4096]: 4096 exceeds the 1294 examples"),
        ({"optimiser": ["sgd"]}, "unknown key optimiser; allowed:"),
    ],
)
def test_bad_config_stops_before_any_job_with_one_line(fresh, tmp_path, changes, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**profile("smoke"), **changes}))
    out = snakemake("--cores", "1", "--configfile", str(path), cwd=fresh)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line and WORKFLOW_PROFILE not in line]
    assert len(lines) == 1 and lines[0].startswith(f"sngrad: error: {path}: ")
    assert expected in lines[0]
    assert "Job stats" not in out.stdout and not (fresh / "results" / "smoke").exists()


def test_yaml_error_in_the_default_profile_names_file_and_line(tmp_path):
    work = copy_tree(tmp_path)
    default = work / "config" / "default.yaml"
    default.write_text(default.read_text() + "datasets: [mnist\n")
    out = snakemake("-n", cwd=work)
    assert out.returncode != 0
    assert re.search(r"sngrad: error: config/default\.yaml:\d+:\d+: YAML syntax error", out.stderr)


def test_a_run_from_another_folder_says_where_to_run_it(fresh, tmp_path):
    out = snakemake("-n", "-s", str(fresh / "workflow" / "Snakefile"), cwd=tmp_path)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.startswith("sngrad:")]
    assert lines == [f"sngrad: error: run snakemake from the repository root, not {tmp_path}: "
                     f"cd {fresh} && snakemake --cores 4"]
    assert not (tmp_path / "results").exists()


def test_only_the_default_file_may_call_itself_default(fresh):
    out = snakemake("-n", *SMOKE, "--config", "profile=default", cwd=fresh)
    assert out.returncode != 0 and "is reserved for the unmodified" in out.stderr


# ----------------------------------------------------------------------------- real runs

TIME_COLUMN = re.compile(r"time|seconds|elapsed|_s$")


def result_tables(work: Path) -> dict[str, list[dict]]:
    """The training, tuning and noise CSVs of the smoke profile, time columns left out."""
    base = work / "results" / "smoke"
    tables = {}
    for path in sorted(base.rglob("*.csv")):
        if path.name not in {"tuning.csv", "metrics.csv", "diagnostics.csv"} and (
            path.parent.name != "noise"
        ):
            continue
        with path.open() as handle:
            rows = list(csv.DictReader(handle))
        tables[str(path.relative_to(base))] = [
            {k: v for k, v in row.items() if not TIME_COLUMN.search(k)} for row in rows
        ]
    return tables


COMMAND = [*SNAKEMAKE, "--cores", "2", *SMOKE]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke DAG in a fresh copy: killed during training, then the same command again.

    Returns the tree and the second run's output.
    """
    work = copy_tree(tmp_path_factory.mktemp("smoke"))
    paper = tree_digest(work / "paper")
    run = subprocess.Popen(
        COMMAND, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    # kill the whole run (snakemake and its jobs, as a power cut would) once training began
    deadline = time.monotonic() + 900
    train = work / "results" / "smoke" / "digits"

    def training() -> bool:  # a checkpoint written, or a first training job done
        patterns = ("*/bs*/.checkpoint-train", "*/bs*/metrics.csv")
        return any(next(train.glob(pattern), None) for pattern in patterns)

    while time.monotonic() < deadline and run.poll() is None and not training():
        time.sleep(0.05)
    caught = run.poll() is None and training()
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert caught, "the run was not caught during training"
    assert not (train.parent / "report.md").exists()

    out = subprocess.run(COMMAND, cwd=work, capture_output=True, text=True, timeout=900)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((work / "logs").rglob("*.log")))
    assert out.returncode == 0, out.stderr[-4000:] + logs
    assert tree_digest(work / "paper") == paper  # only the default profile writes paper/
    return work, out.stdout + out.stderr


@pytest.mark.slow
def test_smoke_dag_renders_the_report_under_results(smoke_run):
    work, _ = smoke_run
    base = work / "results" / "smoke"
    text = (base / "report.md").read_text()
    assert "`sgd+sngrad1`" in text
    links = re.findall(r"\]\((figures/[^)]+)\)", text)
    assert links and all((base / link).is_file() for link in links)
    started = yaml.safe_load((base / "run_started.json").read_text())
    assert started["started_unix"] <= (base / "report.md").stat().st_mtime
    assert not (base / ".run.lock").exists()  # released at the end
    again = snakemake("-n", *SMOKE, cwd=work)
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_every_job_of_the_run_has_a_ledger_entry_whose_phases_fit_its_wall_time(smoke_run):
    """Each job's entry (sngrad.ledger): the compile and scan seconds its process measured
    fit inside the wall time its shell measured (other_s >= 0; they add up by definition),
    training jobs spent time in both, and the report prints the stages."""
    from collections import Counter

    from sngrad.layout import NOTEBOOKS, Layout
    from sngrad.ledger import read_entries

    work, _ = smoke_run
    entries = read_entries(Layout("smoke", str(work / "results")))
    config = profile("smoke")
    cells = len(config["datasets"]) * len(config["optimizers"]) * len(config["batch_sizes"])
    stages = Counter(e["stage"] for e in entries)
    assert stages["tune"] == stages["train"] == cells
    assert stages["data"] == stages["reference"] == stages["noise"] == len(config["datasets"])
    # every notebook of the figure manifest once, and the summary once per dataset
    assert stages["notebooks"] == len(NOTEBOOKS) + len(config["datasets"])
    for e in entries:
        measured = (e["compile_s"] or 0.0) + (e["scan_s"] or 0.0)
        assert e["wall_s"] > 0 and e["cpu_s"] > 0, e
        assert measured + e["other_s"] == pytest.approx(e["wall_s"], abs=1e-9), e
        assert e["other_s"] >= 0, e  # the phases were not counted twice
        if e["stage"] in ("tune", "train", "reference"):
            assert e["compile_s"] > 0 and e["scan_s"] > 0 and e["scan_cpu_s"] > 0, e
            assert e["scan_cpu_s"] <= e["cpu_s"], e
    text = (work / "results" / "smoke" / "report.md").read_text()
    block = text.split("<!-- ledger -->", 1)[1].split("<!-- /ledger -->", 1)[0]
    for stage in ("data", "tune", "train", "reference", "noise", "notebooks"):
        assert f"| {stage} |" in block


@pytest.mark.slow
def test_smoke_theory_table_holds_and_the_report_quotes_each_row(smoke_run):
    """Every exact check of the smoke run's theory table passes its own rule, |z| <= bound with
    z recomputed from the row (``z_score``), or says that its error bar cannot separate its
    prediction from its stated wrong value, and then counts as neither; the summary counts what
    the table says, and the rendered report's table of checks holds each check's own numbers,
    z and verdict in its own row. Catches a simulator or a closed form that drifted from the
    other, a z that is not the rule's, a summary that miscounts, and a template that shows one
    check's numbers in another's row."""
    import json
    import math

    from sngrad.report.format import fmt, pct
    from sngrad.theory.pass_rule import resolves, z_score

    work, _ = smoke_run
    base = work / "results" / "smoke"
    with (base / "theory" / "checks.csv").open() as handle:
        checks = list(csv.DictReader(handle))
    summary = json.loads((base / "theory" / "summary.json").read_text())
    floor, bound = summary["floor"], summary["z_bound"]
    exact = [c for c in checks if c["kind"] == "exact"]
    assert exact and summary["scale"] == "smoke"
    verdicts = {}
    for c in checks:
        predicted, measured, se = (float(c[k]) for k in ("predicted", "measured", "mc_se"))
        scale = float(c["scale"]) if c["scale"] else None
        z = z_score(predicted, measured, se, floor, scale)
        assert float(c["z"]) == pytest.approx(z), c["name"]
        assert (float(c["floor"]), float(c["z_bound"])) == (floor, bound), c["name"]
        if predicted:
            relative = abs(measured - predicted) / abs(predicted)
            assert float(c["rel_error"]) == pytest.approx(relative), c["name"]
        if c["kind"] != "exact":
            assert c["passed"] == "" and not math.isnan(float(c["expected_error"])), c
            verdicts[c["name"]] = "(not counted)"
        elif c["alternative"]:
            resolved = resolves(predicted, float(c["alternative"]), se, floor, bound, scale)
            assert c["resolved"] == str(resolved), c
        if c["kind"] == "exact" and c["resolved"] == "True":
            assert c["passed"] == "True" and abs(z) <= bound, c
            verdicts[c["name"]] = "yes"
        elif c["kind"] == "exact":
            assert c["passed"] == "", c
            verdicts[c["name"]] = "not resolved at this scale"
    passed = {c["name"] for c in exact if c["passed"] == "True"}
    assert summary["n_exact"] == len(exact) and summary["n_exact_passed"] == len(passed)
    assert summary["failed"] == []
    assert set(summary["unresolved"]) == {c["name"] for c in exact} - passed

    text = (base / "report.md").read_text()
    counts = rf"{summary['n_exact_passed']}\s+of the\s+{summary['n_exact']} exact checks pass"
    assert re.search(counts, text)
    for c in checks:
        rows = [line for line in text.splitlines() if line.startswith(f"| `{c['name']}` |")]
        assert len(rows) == 1, c["name"]
        cells = [cell.strip() for cell in rows[0].strip("|").split(" | ")]
        assert cells[1] == c["kind"], c["name"]
        assert cells[3:6] == [fmt(float(c["predicted"]), 4), fmt(float(c["measured"]), 4),
                              fmt(float(c["mc_se"]), 2)], c["name"]
        assert cells[6] == f"{pct(float(c['rel_error']), 2)} %", c["name"]
        assert cells[8:11] == [fmt(float(c["z"]), 2), fmt(bound, 2), verdicts[c["name"]]], c


@pytest.mark.slow
def test_killed_run_resumes_to_the_results_of_an_uninterrupted_one(smoke_run, tmp_path):
    work, output = smoke_run
    for error in ("IncompleteFilesException", "LockException"):
        assert error not in output
    # the same results computed without interruption (what the tables depend on only)
    config = profile("smoke")
    targets = [f"results/smoke/noise/{d}.csv" for d in config["datasets"]] + [
        f"results/smoke/{d}/{run}/bs{b}/metrics.csv"
        for d in config["datasets"] for run in config["optimizers"] for b in config["batch_sizes"]
    ]  # fmt: skip
    clean = copy_tree(tmp_path)
    out = snakemake(*targets, "--cores", "2", *SMOKE, cwd=clean, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    tables = result_tables(clean)
    assert len(tables) == 1 + 3 * len(targets[1:])
    assert result_tables(work) == tables


@pytest.mark.slow
def test_single_target_rebuild_redoes_only_that_file(smoke_run):
    work, _ = smoke_run
    run = work / "results" / "smoke" / "digits" / "sgd" / "bs64"
    kept = [run / "tuning.csv", run.parent.parent / "sgd+sngrad1" / "bs64" / "metrics.csv"]
    before = {p: p.stat().st_mtime_ns for p in kept}
    metrics = result_tables(work)
    (run / "metrics.csv").unlink()
    # Snakemake leaves a deleted intermediate alone while everything downstream of it is up to
    # date, so the deleted file is named as a target (targets before --configfile).
    targets = ["results/smoke/digits/sgd/bs64/metrics.csv", "results/smoke/digits/summary.csv"]
    plan = snakemake(*targets, "-n", *SMOKE, cwd=work)
    assert job_counts(plan.stdout) == {"train": 1, "summary": 1, "total": 2}
    out = snakemake(*targets, "--cores", "2", *SMOKE, cwd=work, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert {p: p.stat().st_mtime_ns for p in kept} == before
    assert result_tables(work) == metrics  # the same numbers again


@pytest.mark.slow
def test_a_result_deleted_after_its_report_is_remade_by_the_plain_command(smoke_run):
    work, _ = smoke_run
    metrics = work / "results" / "smoke" / "digits" / "sgd" / "bs64" / "metrics.csv"
    kept, stat = metrics.read_bytes(), metrics.stat()
    planned = snakemake("-n", *SMOKE, cwd=work).stdout  # other tests may have left work
    metrics.unlink()
    try:
        plan = snakemake("-n", *SMOKE, cwd=work)
        counts = job_counts(plan.stdout)
        # its job, and everything that reads it after (nothing upstream: no tuning again)
        assert counts["train"] == 1 and counts["report"] == 1 and "tune" not in counts, counts
        assert "train" not in (job_counts(planned) if "Job stats:" in planned else {})
        text = plan.stdout + plan.stderr
        assert "Missing output files" in text and "bs64/metrics.csv" in text
    finally:
        metrics.write_bytes(kept)
        os.utime(metrics, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = snakemake("-n", *SMOKE, cwd=work).stdout
    assert "Nothing to be done" in planned or job_counts(again) == job_counts(planned)


# ----------------------------------------------------------------------------- run lock


def test_run_lock_is_exclusive_and_a_dead_holder_is_stale(tmp_path):
    from sngrad import runlock
    from sngrad.errors import SngradError

    lock = tmp_path / "results" / "p" / ".run.lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    lock.parent.mkdir(parents=True)
    lock.write_text(dead.stdout)  # a killed run's lock
    runlock.acquire(lock)
    assert runlock.read(lock).pid == os.getpid()
    runlock.release(lock)
    assert not lock.exists()

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "snakemake"])
    try:
        while not Path(f"/proc/{live.pid}/cmdline").read_bytes():
            time.sleep(0.01)  # until the child has its command line
        lock.write_text(f"{live.pid}\n")
        with pytest.raises(SngradError, match=f"active \\(pid {live.pid}\\)"):
            runlock.acquire(lock)
        runlock.release(lock)  # not ours: left alone
        assert lock.exists()
    finally:
        live.kill()
        live.wait()
