"""The SLURM profile's own settings, offline and without root: it parses, names only rules and
resources that exist, its dry run submits what it says, and the helpers of
workflow/cluster/local-slurm.sh (the real run on a one-node SLURM) restate it correctly."""

import importlib.util
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, snakemake
from snakemake.cli import parse_args
from snakemake_executor_plugin_slurm.validation import get_forbidden_slurm_options

PROFILE = ROOT / "workflow" / "profiles" / "slurm"
SETTINGS = yaml.safe_load((PROFILE / "config.yaml").read_text())
# what the plugin turns into sbatch options, plus the scheduling ones Snakemake itself reads
KNOWN_RESOURCES = {"gpu", "gpu_model", "gres", "runtime", "slurm_extra", "slurm_account",
                   "slurm_partition", "mem_mb", "constraint", "qos", "nodes", "tasks"}  # fmt: skip
# top-level names of the repository that are not part of the workflow
NOT_WORKFLOW = {".git", ".venv", "results", "logs", ".snakemake", ".cache", "data",
                ".pytest_cache", ".ruff_cache", ".hypothesis"}  # fmt: skip


def load_slurmcheck():
    path = ROOT / "workflow" / "cluster" / "slurmcheck.py"
    spec = importlib.util.spec_from_file_location("slurmcheck", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


slurmcheck = load_slurmcheck()


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory):
    """The repository without results and caches: a dry run sees every job."""
    target = tmp_path_factory.mktemp("slurm") / "repo"

    def ignore(directory, names):
        top = Path(directory) == ROOT
        return [n for n in names if n == "__pycache__" or (top and n in NOT_WORKFLOW)]

    shutil.copytree(ROOT, target, ignore=ignore)
    return target


def test_profile_settings_are_ones_the_plugin_submits():
    assert SETTINGS["executor"] == "slurm"
    assert isinstance(SETTINGS["cores"], int) and SETTINGS["cores"] >= 1
    defaults = SETTINGS["default-resources"]
    # threads must reach sbatch as --cpus-per-task: a default cpus_per_task would override them
    assert "cpus_per_task" not in defaults
    for rule, resources in SETTINGS["set-resources"].items():
        assert set(resources) <= KNOWN_RESOURCES, rule
        # memory is the config profile's (resources.mem_mb); the cluster profile adds no second
        assert "mem_mb" not in resources, rule
        runtime = resources.get("runtime", defaults["runtime"])
        assert isinstance(runtime, int) and 1 <= runtime <= 7 * 24 * 60, (rule, runtime)


def test_slurm_extra_has_no_option_the_plugin_sets_itself():
    forbidden = get_forbidden_slurm_options()
    for rule, resources in SETTINGS["set-resources"].items():
        extra = resources.get("slurm_extra", "")
        for pattern, name in forbidden.items():
            assert not re.search(pattern, extra), (rule, name)
    assert "--exclusive" in SETTINGS["set-resources"]["benchmark"]["slurm_extra"]


def test_profile_names_only_rules_of_the_workflow(workflow_copy):
    out = snakemake("--list-rules", "--configfile", "config/paper.yaml", cwd=workflow_copy,
                    timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rules = set(out.stdout.split())
    assert set(SETTINGS["set-resources"]) <= rules, set(SETTINGS["set-resources"]) - rules


def test_dry_run_gives_each_rule_the_profiles_resources(workflow_copy):
    out = snakemake(  # the study and the benchmark, its own target
        "-n", "--profile", "workflow/profiles/slurm", "all", "bench",
        "--configfile", "config/smoke.yaml", cwd=workflow_copy, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    jobs = re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", text, flags=re.M | re.S)
    seen = {rule for rule, _ in jobs}
    for rule, block in jobs:
        wanted = SETTINGS["set-resources"].get(rule, {})
        for key in ("gpu", "runtime"):
            value = wanted.get(key, SETTINGS["default-resources"].get(key))
            if value is not None:
                assert f"{key}={value}" in block, (rule, key, block)
        if rule == "benchmark":
            assert f"threads: {SETTINGS['cores']}" in block, block
    assert {"tune", "train", "benchmark"} <= seen


def test_overrides_restate_the_whole_profile_with_the_gpus_replaced():
    arguments = slurmcheck.profile_overrides(PROFILE / "config.yaml", gpu=0, partition="local")
    _, args = parse_args(["--profile", str(PROFILE), "-n", *arguments])
    for rule, resources in SETTINGS["set-resources"].items():
        parsed = args.set_resources[rule]
        assert set(parsed) == set(resources), rule
        for key, value in resources.items():
            if parsed[key].is_evaluable():  # a quoted string: an expression until a job runs
                assert parsed[key].raw == value, (rule, key)
            else:
                assert parsed[key].value == (0 if key == "gpu" else value), (rule, key)
    assert args.default_resources["runtime"].value == SETTINGS["default-resources"]["runtime"]
    assert args.default_resources["slurm_partition"].raw == "'local'"


def test_command_line_set_resources_replace_the_profiles():
    # why the overrides restate everything: one word on the command line drops the rest
    _, args = parse_args(["--profile", str(PROFILE), "-n", "--set-resources", "train:gpu=0"])
    assert set(args.set_resources) == {"train"}
    assert set(args.set_resources["train"]) == {"gpu"}


def test_overrides_refuse_bad_input(tmp_path):
    with pytest.raises(slurmcheck.CheckError, match="gpu"):
        slurmcheck.profile_overrides(PROFILE / "config.yaml", gpu=-1)
    with pytest.raises(slurmcheck.CheckError, match="partition"):
        slurmcheck.profile_overrides(PROFILE / "config.yaml", gpu=0, partition="a;rm")
    bad = tmp_path / "config.yaml"
    bad.write_text("set-resources: [train]\n")
    with pytest.raises(slurmcheck.CheckError, match="mappings"):
        slurmcheck.profile_overrides(bad, gpu=0)


def write_run(root: Path, rows: dict[str, str]) -> Path:
    for relative, text in rows.items():
        path = root / "results" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_compare_sets_aside_only_measured_columns(tmp_path):
    metrics = "seed,epoch,val_loss,wall_time\n1,1,0.5,{t}\n1,2,0.25,{u}\n"
    local = write_run(tmp_path / "a", {"d/sgd/metrics.csv": metrics.format(t=1.5, u=3.0)})
    slurm = write_run(tmp_path / "b", {"d/sgd/metrics.csv": metrics.format(t=9.5, u=17.25)})
    count, problems, set_aside = slurmcheck.compare_runs(local, slurm)
    assert (count, problems) == (1, [])
    assert set_aside == {"results/d/sgd/metrics.csv": ["wall_time"]}
    assert slurmcheck.main(["compare", str(local), str(slurm)]) == 0


def test_compare_keeps_only_what_a_benchmark_measured(tmp_path):
    table = "network,batch_size,method,median_ms,flag\n64-10,32,{m},{t},{f}\n"
    local = write_run(tmp_path / "a", {"p/benchmark/step.csv": table.format(m="sgd", t=0.5, f="")})
    slurm = write_run(tmp_path / "b", {"p/benchmark/step.csv": table.format(m="sgd", t=2, f="x")})
    count, problems, set_aside = slurmcheck.compare_runs(local, slurm)
    assert (count, problems) == (1, [])
    assert set_aside == {"results/p/benchmark/step.csv": ["median_ms", "flag"]}
    other = write_run(tmp_path / "c", {"p/benchmark/step.csv": table.format(m="adam", t=0.5, f="")})
    _, problems, _ = slurmcheck.compare_runs(local, other)
    assert problems == ["results/p/benchmark/step.csv: line 2, method: 'sgd' vs 'adam'"]


def test_compare_checks_every_row_of_a_paired_table_equal_compute_included(tmp_path):
    # equal compute pairs runs at counted costs (sngrad.costs), so no row follows a timing
    table = "family,run,epoch_run,diff_mean\nequal_epochs,a,{e},0.25\nequal_compute,a,{c},{d}\n"
    local = write_run(tmp_path / "a", {"d/paired.csv": table.format(e="2.0", c=1.5, d=0.5)})
    slurm = write_run(tmp_path / "b", {"d/paired.csv": table.format(e="2", c=1.5, d=0.5)})
    count, problems, set_aside = slurmcheck.compare_runs(local, slurm)
    assert (count, problems, set_aside) == (1, [], {})  # 2.0 and 2 are one number
    other = write_run(tmp_path / "c", {"d/paired.csv": table.format(e="2", c=1.5, d=0.75)})
    _, problems, _ = slurmcheck.compare_runs(local, other)
    assert problems == ["results/d/paired.csv: line 3, diff_mean: '0.5' vs '0.75'"]


def test_compare_finds_a_changed_cell_and_a_missing_file(tmp_path):
    local = write_run(tmp_path / "a", {"x.csv": "k,v\n1,0.5\n", "y.csv": "k\n1\n"})
    slurm = write_run(tmp_path / "b", {"x.csv": "k,v\n1,0.50000001\n"})
    count, problems, _ = slurmcheck.compare_runs(local, slurm)
    assert count == 1
    assert any("y.csv" in p and "only in" in p for p in problems)
    assert any("line 2, v" in p for p in problems)
    assert slurmcheck.main(["compare", str(local), str(slurm)]) == 1


def test_compare_refuses_a_run_without_results(tmp_path):
    (tmp_path / "a").mkdir()
    assert slurmcheck.main(["compare", str(tmp_path / "a"), str(tmp_path / "a")]) == 2
