"""The Snakemake workflow: lint, config schema, dry runs of every profile, and the smoke DAG."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
# what the smoke DAG needs from the repository (the sngrad package comes from the venv)
WORKFLOW_FILES = ["Snakefile", "workflow", "config", "analysis", "paper/templates", "benchmarks",
                  "environment.yml"]  # fmt: skip


def copy_workflow(target: Path) -> Path:
    for name in WORKFLOW_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A copy of the workflow without results, so that dry runs see every job."""
    return copy_workflow(tmp_path_factory.mktemp("clean"))


def snakemake(*args, cwd, timeout=120):
    return subprocess.run(
        [*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a snakemake run -> {rule: count}."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def profile(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())


def write_config(tmp_path, **changes) -> Path:
    config = profile("smoke")
    config.update(changes)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_lint_reports_nothing():
    out = snakemake("--lint", cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Lints for" not in out.stdout + out.stderr


# ----------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"optimizers": ["sgd", "adamw"]}, ["'adamw' is not one of", "optimizers", "sgd+sngrad1"]),
        ({"batch_sizes": [0]}, ["batch_sizes", "minimum of 1"]),
        ({"datasets": ["imagenet"]}, ["datasets", "'imagenet' is not one of", "mnist1d"]),
        ({"optimiser": ["sgd"]}, ["'optimiser' was unexpected"]),
        ({"theory": {"enabled": True, "scale": "huge", "seed": 0}}, ["scale", "'huge'", "paper"]),
    ],
)
def test_schema_rejects_bad_config_before_any_job(clean, tmp_path, changes, expected):
    out = snakemake("-n", "--configfile", str(write_config(tmp_path, **changes)), cwd=clean)
    message = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Error validating config file" in message
    for text in expected:
        assert text in message
    assert "Job stats" not in message


def test_every_profile_is_valid_and_complete():
    required = set(SCHEMA["required"])
    for name in ["default", "paper", "smoke"]:
        config = profile(name)
        assert set(config) == required, name
        assert config["profile"] == name


def test_schema_enums_match_the_package_registries():
    from sngrad.data import DATASETS
    from sngrad.optimizers import OPTIMIZERS
    from sngrad.stats import BACKENDS

    defs = SCHEMA["$defs"]
    assert set(defs["dataset"]["enum"]) == set(DATASETS)
    assert set(defs["optimizer"]["enum"]) == set(OPTIMIZERS)
    assert set(defs["backend"]["enum"]) == set(BACKENDS)


def test_default_profile_covers_the_comparison():
    config = profile("default")
    assert set(config["datasets"]) == {"digits", "mnist5k", "mnist1d"}
    assert len(config["batch_sizes"]) >= 3 and len(config["train"]["seeds"]) >= 3
    expected = {"sgd", "sgd+sngrad1", "sgd+sngrad2", "sgd+sngrad3", "momentum",
                "momentum+sngrad1", "adam", "adam+sngrad1", "msvag"}  # fmt: skip
    assert expected <= set(config["optimizers"])


# ----------------------------------------------------------------------------- dry runs


@pytest.mark.parametrize("name", ["default", "paper", "smoke"])
def test_dry_run_schedules_every_run_of_the_profile(clean, name):
    args = ["-n"] if name == "default" else ["-n", "--configfile", f"config/{name}.yaml"]
    out = snakemake(*args, cwd=clean)
    assert out.returncode == 0, out.stderr[-3000:]
    config = profile(name)
    counts = job_counts(out.stdout)
    runs = len(config["datasets"]) * len(config["optimizers"]) * len(config["batch_sizes"])
    assert counts["train"] == runs
    assert counts["tune"] == runs  # the alpha sweep's batch size is one of the profile's
    assert counts["alpha_sweep"] == len(config["datasets"]) * len(
        config["alpha_sweep"]["optimizers"]
    )
    assert counts["summary"] == len(config["datasets"])
    assert counts["report"] == 1 and counts["theory"] == 1 and counts["benchmark"] == 1


def test_configfile_replaces_the_default_profile(clean):
    out = snakemake("-n", "--configfile", "config/smoke.yaml", cwd=clean)
    assert out.returncode == 0, out.stderr[-3000:]
    # lists and datasets of the default profile must not leak into the smoke run
    assert "mnist5k" not in out.stdout and "msvag" not in out.stdout


def test_jobs_are_limited_to_their_threads(clean):
    out = snakemake("-n", "-p", "--configfile", "config/smoke.yaml", cwd=clean)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "intra_op_parallelism_threads=1" in out.stdout
    assert "OMP_NUM_THREADS=1" in out.stdout
    assert f"{sys.executable} -m sngrad train" in out.stdout


def test_slurm_profile_dry_run_asks_for_gpus(clean):
    out = snakemake(
        "-n", "--profile", "workflow/profiles/slurm", "--configfile", "config/smoke.yaml", cwd=clean
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert job_counts(out.stdout)["train"] == 2
    slurm = yaml.safe_load((ROOT / "workflow/profiles/slurm/config.yaml").read_text())
    assert slurm["executor"] == "slurm"
    assert all(slurm["set-resources"][rule]["gpu"] == 1 for rule in ["tune", "train"])


def test_single_dataset_target_touches_no_other_dataset(clean):
    out = snakemake(
        "results/digits/summary.csv", "-n", "--configfile", "config/smoke.yaml",
        "--config", "datasets=[digits,mnist1d]", cwd=clean,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "results/digits/" in out.stdout
    # (the command line itself, echoed in the header, names mnist1d)
    assert "results/mnist1d" not in out.stdout and "results/data/mnist1d" not in out.stdout
    counts = job_counts(out.stdout)
    assert "report" not in counts and "theory" not in counts
    assert counts["train"] == 2


# ----------------------------------------------------------------------------- smoke DAG


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Run the whole smoke DAG once in a copy of the workflow."""
    work = copy_workflow(tmp_path_factory.mktemp("smoke"))
    out = snakemake("--cores", "2", "--configfile", "config/smoke.yaml", cwd=work, timeout=600)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((work / "logs").rglob("*.log")))
    assert out.returncode == 0, out.stderr[-4000:] + logs
    return work


def test_smoke_dag_renders_the_report(smoke_run):
    text = (smoke_run / "paper" / "report.md").read_text()
    assert not re.search(r"\btba\b", text, re.IGNORECASE)
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)
    assert "## Results" in text and "`sgd+sngrad1`" in text
    for link in re.findall(r"\]\((figures/[^)]+)\)", text):
        assert (smoke_run / "paper" / link).exists(), link
    assert (smoke_run / "results" / "digits" / "summary.csv").exists()
    assert (smoke_run / "results" / "analysis" / "performance.ipynb").exists()


def test_rerun_redoes_only_the_deleted_output(smoke_run):
    run = smoke_run / "results" / "digits" / "sgd" / "bs64"
    kept = [run / "tuning.csv", smoke_run / "results/digits/sgd+sngrad1/bs64/metrics.csv"]
    before = {p: p.stat().st_mtime_ns for p in kept}
    (run / "metrics.csv").unlink()
    # Snakemake (>= 7.7) leaves a deleted intermediate alone while everything downstream of
    # it is up to date (snakemake issue #1978), so the deleted file is named as a target.
    targets = ["results/digits/sgd/bs64/metrics.csv", "paper/report.md"]

    plan = snakemake(*targets, "-n", "--configfile", "config/smoke.yaml", cwd=smoke_run)
    counts = job_counts(plan.stdout)
    assert counts["train"] == 1 and counts["report"] == 1
    assert not {"data", "tune", "alpha_sweep", "theory", "benchmark"} & set(counts)

    # (targets first: --configfile takes several values)
    out = snakemake(*targets, "--cores", "2", "--configfile", "config/smoke.yaml",
                    cwd=smoke_run, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    assert (run / "metrics.csv").exists()
    assert {p: p.stat().st_mtime_ns for p in kept} == before
    nothing = snakemake("-n", "--configfile", "config/smoke.yaml", cwd=smoke_run)
    assert "Nothing to be done" in nothing.stdout + nothing.stderr
