"""The report renders from a profile's result tree alone: its cells hold the numbers of the
right rows of the result tables, the summary names the optimizer chosen on validation, and a
study in which everything diverged still renders."""

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, tune_dict

from sngrad import names
from sngrad.analysis import outputs
from sngrad.errors import SngradError
from sngrad.io import write_frame, write_json
from sngrad.layout import FIGURES, Layout, notebook_tables
from sngrad.report import format as report_format
from sngrad.report import render as report_render
from sngrad.report import reproducibility, results

TEMPLATES = ROOT / "paper" / "templates"
SEEDS = list(range(1, 11))
EPOCHS = 4
B = 64
RUNS = ["sgd", "sgd+sngrad1", "sgd+sngrad2@0.05", "adam", "adabelief", "sgd+cv", "momentum"]
PARSED = [names.parse_run(run) for run in RUNS]  # as the notebooks parse their runs

# final test accuracy per seed; sgd+sngrad1 better than sgd on every seed, adabelief worse
# than adam on every seed, the others mixed
_NOISE = np.random.default_rng(3).standard_normal((3, len(SEEDS)))
_SGD = 0.90 + 0.004 * _NOISE[0]
_ADAM = 0.95 + 0.002 * _NOISE[1]
TEST = {
    "sgd": _SGD,
    "sgd+sngrad1": _SGD + 0.03 + 0.002 * np.abs(_NOISE[2]),
    "sgd+sngrad2@0.05": _SGD + 0.004 * _NOISE[2],
    "adam": _ADAM,
    "adabelief": _ADAM - 0.01 - 0.002 * np.abs(_NOISE[2]),
    "sgd+cv": _SGD - 0.004 * _NOISE[2],
    "momentum": _ADAM + 0.006,
}
# final validation accuracy: adam is best on validation although momentum is best on test
VAL_SHIFT = {"adam": 0.03, "momentum": -0.05}


def config_for(profile, datasets=("mnist",), runs=RUNS):
    return {
        "profile": profile,
        "datasets": list(datasets),
        "optimizers": list(runs),
        "batch_sizes": [B],
        "data": {"seed": 0, "val_fraction": 0.1, "train_size": 1000},
        "model": {"hidden": [16], "init_seed": 0},
        "train": {"epochs": EPOCHS, "seeds": SEEDS, "backend": "dense", "schedule": "constant",
                  "checkpoint_every": 1, "diverge_loss": 1000.0, "snapshot_every": 1},
        "tune": tune_dict(lr_min=0.01, lr_max=1.0, lr_bounds=[1e-5, 100.0],
                          one_minus_momentum=[0.01, 0.3],
                          alpha={"I": [0.1, 10.0], "II": [0.3, 30.0], "III": [0.03, 1.0]}),
    }  # fmt: skip


def write_tree(root, profile="fixture", *, all_diverged=False, datasets=("mnist",)):
    """A result tree in the formats of docs/CONTRACTS.md (what the rules would write)."""
    layout = Layout(profile, str(root))
    config = config_for(profile, datasets)
    for dataset in datasets:
        write_json(layout.data_meta(dataset), {
            "name": dataset, "description": f"{dataset} test data", "feature_dim": 64,
            "num_classes": 10, "sizes": {"train": 1000, "val": 100, "test": 200},
            "test_split": "official",
            "source": {"kind": "embedded", "loader": "fixture",
                       "sha256": {"x": "ab" * 32, "y": "cd" * 32}},
        })  # fmt: skip
        for run in RUNS:
            write_run(layout, dataset, run, all_diverged=all_diverged)
    write_frame(layout.benchmark(), pd.DataFrame({
        "network": ["64-16-10"] * 4, "batch_size": [B] * 4,
        "method": ["sgd", "sgd+sngrad1", "sgd+sngrad2", "adam"],
        "median_ms": [1.0, 1.5, 1.6, 1.2], "sgd_ms": [1.0, 1.0, 1.0, 1.0],
        "ratio": [1.0, 1.5, 1.6, 1.2],
    }))  # fmt: skip
    write_json(f"{layout.base}/run_started.json", {"started_unix": 1_000_000.0})
    for dataset in datasets:
        tables = outputs.dataset_tables(layout, dataset, PARSED, [B], config)
        for path, table in zip(notebook_tables(layout, "summary", dataset), tables, strict=True):
            write_frame(path, table)
    tables = outputs.performance_tables(layout, list(datasets), PARSED, [B], {"hidden": [16]})
    for path in notebook_tables(layout, "performance"):
        write_frame(path, tables[Path(path).name])
    Path(layout.figures_dir()).mkdir(parents=True, exist_ok=True)
    Path(layout.figure("learning_curves")).write_bytes(b"\x89PNG")
    return layout, config


def write_run(layout, dataset, run, *, all_diverged):
    parts = names.parse_run(run)
    variant = parts.variant
    tuned_alpha = variant is not None and parts.fixed_alpha is None
    rows = []
    for k, lr in enumerate([0.01, 0.1, 1.0]):
        for a, scaled in enumerate([1.0, 3.0] if tuned_alpha else [math.nan]):
            setting = k * 2 + a
            for seed in (100, 101):
                diverged = all_diverged or lr == 1.0
                rows.append({
                    "setting": setting, "learning_rate": lr, "momentum": math.nan,
                    "alpha": scaled / 10, "alpha_scaled": scaled, "seed": seed,
                    "val_accuracy": math.nan if diverged else 0.8 + 0.05 * k + 0.01 * a,
                    "val_loss": math.nan if diverged else 0.5, "train_loss": 0.5,
                    "diverged": diverged, "chosen": (not all_diverged) and setting == 2 + a,
                    "round": 0,
                })  # fmt: skip
    path = Path(layout.run_file("tuning.csv", dataset, run, B))
    write_frame(path, pd.DataFrame(rows))
    write_json(layout.run_file("best.json", dataset, run, B), {
        "optimizer": parts.optimizer, "run": run, "batch_size": B,
        "learning_rate": None if all_diverged else 0.1, "momentum": None,
        "alpha": None if variant is None else 0.3, "alpha_scaled": 3.0 if tuned_alpha else None,
        "val_accuracy": None if all_diverged else 0.86,
        "val_loss": 0.5, "all_diverged": all_diverged, "at_bound": run == "sgd", "trials": 6,
    })  # fmt: skip
    metrics, diagnostics = [], []
    for i, seed in enumerate(SEEDS):
        for epoch in range(1, EPOCHS + 1):
            acc = TEST[run][i] * (0.9 + 0.1 * epoch / EPOCHS)
            val = acc + VAL_SHIFT.get(run, 0.0)
            metrics.append({
                "dataset": dataset, "optimizer": run, "batch_size": B, "seed": seed,
                "epoch": epoch, "learning_rate": 0.1, "momentum": math.nan, "alpha": math.nan,
                "train_loss": math.nan if all_diverged else 1.0 / epoch,
                "val_loss": math.nan if all_diverged else 0.4,
                "val_accuracy": math.nan if all_diverged else val,
                "test_loss": math.nan if all_diverged else 0.4,
                "test_accuracy": math.nan if all_diverged else acc,
                "wall_time": float(epoch), "diverged": all_diverged,
            })  # fmt: skip
            for layer in ("0", "1"):
                diagnostics.append({
                    "dataset": dataset, "optimizer": run, "batch_size": B, "seed": seed,
                    "epoch": epoch, "layer": layer,
                    "factor_mean": 0.6 if variant else math.nan,
                    "shrink_share": (0.25 if layer == "0" else 0.75) if variant else math.nan,
                    "lambda_median": 0.7 if run == "sgd+cv" else math.nan,
                    "variance_ratio": 0.4 if run == "sgd+cv" else math.nan,
                })  # fmt: skip
    write_frame(layout.run_file("metrics.csv", dataset, run, B), pd.DataFrame(metrics))
    write_frame(layout.run_file("diagnostics.csv", dataset, run, B), pd.DataFrame(diagnostics))
    record = {"git_commit": "f" * 40, "git_dirty": False, "device": ["cpu:0"]}
    write_json(layout.run_file("provenance.json", dataset, run, B), record)
    write_json(layout.run_file("tuning_provenance.json", dataset, run, B), record)


def templates_with_stand_ins(tmp_path):
    """The real templates; the theory and noise partials (other owners, own contexts) are
    replaced by stand-ins that only show they were included."""
    folder = tmp_path / "templates"
    shutil.copytree(TEMPLATES, folder)
    (folder / "theory.md.j2").write_text("THEORY PARTIAL\n")
    (folder / "noise.md.j2").write_text("NOISE PARTIAL\n")
    return folder / "report.md.j2"


def render(tmp_path, layout, config):
    template = templates_with_stand_ins(tmp_path)
    out = Path(layout.report())
    text = report_render.render_report(layout, template, out, config=config, now=1_000_000.0 + 1800)
    assert out.read_text() == text
    return text


def markdown_table(text, header_start):
    """The rows (lists of cell strings) of the first markdown table whose header row starts
    with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, [c.strip() for c in line.strip("|").split("|")],
                             strict=True)))  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One rendered fixture study, shared by the tests that only read it."""
    tmp_path = tmp_path_factory.mktemp("study")
    layout, config = write_tree(tmp_path / "results")
    return layout, config, render(tmp_path, layout, config)


def test_paired_table_cells_hold_the_right_rows(study):
    layout, _, text = study
    paired = pd.read_csv(layout.paired("mnist"))
    rows = markdown_table(text, "| dataset | B | run | base | pairs | diverged | run %")
    accuracy = paired[(paired["family"] == "equal_epochs")
                      & (paired["outcome"] == "test_accuracy")]
    assert len(rows) == len(accuracy)
    for row in rows:
        run = row["run"].strip("`")
        want = accuracy[accuracy["run"] == run].iloc[0]
        assert row["base"].strip("`") == want["base"] == names.parse_run(run).paired_base.name
        assert row["difference"] == f"{100 * want['diff_mean']:+.2f}"
        assert row["verdict"] == want["verdict"]
        assert row["pairs"] == f"{want['n_pairs']}/{want['n_seeds']}"
        assert row["run %"] == f"{100 * want['run_mean']:.2f}"
    by_run = {r["run"].strip("`"): r for r in rows}
    assert by_run["sgd+sngrad1"]["verdict"] == "better"
    assert by_run["adabelief"]["verdict"] == "worse"
    # sgd+sngrad1 beats sgd on all 10 seeds: exact p = 2 / 1024
    assert by_run["sgd+sngrad1"]["sign-flip p"] == f"{2 / 1024:.3f}"


def test_seed_tables_fill_the_seed_readme(study):
    """The seed's two tables: one row per (dataset, run), one column per batch size; the seed's
    datasets this profile does not train say why, the sngrad cells carry the paired verdict."""
    layout, _, text = study
    summary = pd.read_csv(layout.summary("mnist")).set_index("run")
    column = f"B = {B}"
    header = f"| dataset | run | {column} |"
    lr = markdown_table(text, header)
    rows = {(r["dataset"], r["run"]): r[column] for r in lr}
    assert {d for d, _ in rows} == {"MNIST", "Fashion MNIST", "CIFAR10"}
    assert rows[("MNIST", "`sgd`")].startswith("0.1")
    assert rows[("MNIST", "`sgd`")].endswith("†")  # sgd's best.json says at_bound
    assert "not run: needs the paper profile" in rows[("CIFAR10", "every run")]
    assert rows[("Fashion MNIST", "every run")] == results.NOT_IN_PROFILE
    lines = text.splitlines()
    second = [i for i, line in enumerate(lines) if line.startswith(header)][1]
    acc = {(r["dataset"], r["run"]): r[column]
           for r in markdown_table("\n".join(lines[second:]), header)}
    s = summary.loc["sgd+sngrad1"]
    cell = acc[("MNIST", "`sgd+sngrad1`")]
    mean, std = 100 * s["test_accuracy_mean"], 100 * s["test_accuracy_std"]
    assert cell.startswith(f"{mean:.2f} ± {std:.2f}")
    assert "(better," in cell
    assert acc[("MNIST", "`sgd`")].startswith(
        f"{100 * summary.loc['sgd', 'test_accuracy_mean']:.2f}")


def test_one_batch_size_says_the_trend_is_not_measured(study):
    _, _, text = study
    section = text.split("## Batch size:")[1].split("## What a step costs")[0]
    assert f"This profile trains one batch size, B = {B}, so it says nothing" in section
    assert "batch_size_trend.png" not in section


def test_summary_names_the_run_chosen_on_validation(study):
    layout, _, text = study
    summary = text.split("## Method")[0]
    # momentum has the highest test accuracy, adam the highest validation accuracy
    assert "`adam` on mnist" in summary
    assert "`momentum` on mnist" not in summary
    paired = pd.read_csv(layout.paired("mnist"))
    counts = paired[(paired["family"] == "equal_epochs")
                    & (paired["outcome"] == "test_accuracy")]["verdict"].value_counts()
    assert counts["better"] == 1 and counts["worse"] == 1
    assert (f"**{counts['better']} better, {counts['worse']} worse, "
            f"{counts['inconclusive']} inconclusive**") in summary  # fmt: skip
    assert "`sgd+sngrad1` beats `sgd` on mnist" in summary
    assert "`adabelief` is worse than `adam` on mnist" in summary
    assert "`sgd+sngrad2@0.05` against `sgd`" in summary
    assert "30.0 min" in summary  # elapsed: run_started 1800 s before rendering
    # each run's activity is named by its cell: a run appears once per batch size
    active = summary.split("**Were the variants active?**")[1].split("**Training length.**")[0]
    assert f"(mnist, B = {B})" in active and "(mnist)" not in active


def test_report_sections_come_from_the_tables(study):
    _, _, text = study
    assert "nan" not in text.lower().replace("nano", "")
    assert "THEORY PARTIAL" not in text  # no theory tables in this tree
    assert "NOISE PARTIAL" in text
    shrink = markdown_table(text, "| dataset | B | run | mean $\\bar f$")
    assert {r["run"] for r in shrink} == {"`sgd+sngrad1`", "`sgd+sngrad2@0.05`"}
    # layers of 64 x 16 and 16 x 10 weights shrink 25 % and 75 %: the network shrinks
    share = (0.25 * 64 * 16 + 0.75 * 16 * 10) / (64 * 16 + 16 * 10)
    assert all(r["share with $f < 1$, %"] == f"{100 * share:.1f}" for r in shrink)
    # the activity measure is the mean factor: 0.6 on every layer, listed per layer too
    assert all(r["mean $\\bar f$"] == "0.6" and r["per layer"] == "0: 0.6, 1: 0.6"
               for r in shrink)
    cv = markdown_table(text, "| dataset | B | run | variance ratio")
    assert [r["run"] for r in cv] == ["`sgd+cv`"]
    assert cv[0]["variance ratio (mean over layers and epochs)"] == "0.4"
    bench = markdown_table(text, "| network |")
    assert len(bench) == 4
    length = markdown_table(text, "| dataset | B | base | epochs")
    assert {r["base"] for r in length} == {"`sgd`", "`adam`", "`momentum`"}
    # every figure of the manifest is either embedded with its caption and notebook or named
    for name, figure in FIGURES.items():
        if figure.notebook != "performance":
            continue
        if name == "learning_curves":
            assert f"![{figure.caption}](figures/{name}.png)" in text
            assert "made by `analysis/performance.py`" in text
        else:
            assert f"Figure `{name}` was not produced" in text
    assert "ab" * 32 in text  # the data sidecar's hash
    prototype = {r["variant"]: r for r in markdown_table(text, "| variant | prototype alpha")}
    assert prototype["I"]["same alpha on our cross-entropy"] == "0.1"
    assert prototype["II"]["run of this profile"] == "`sgd+sngrad2@0.05`"
    assert prototype["III"]["run of this profile"] == "not run in this profile"
    assert "sgd+sngrad1` on mnist, B = 64: 2 of 6 settings" in text
    assert "`sgd` on mnist, B = 64" in text.split("stopped at a hard bound")[1][:80]


def test_all_diverged_study_renders(tmp_path):
    layout, config = write_tree(tmp_path / "results", "dead", all_diverged=True)
    text = render(tmp_path, layout, config)
    summary = pd.read_csv(layout.summary("mnist"))
    assert summary["n_diverged"].eq(len(SEEDS)).all()
    assert "no valid setting (all diverged)" in text
    assert "**Cells with no valid setting**" in text
    assert "**0 better, 0 worse, 4 inconclusive**" in text
    assert "nan" not in text.lower()


def run_notebook(name, layout, config, monkeypatch):
    """Execute analysis/<name>.py as a script with its parameter cell replaced (what papermill
    does, without a kernel)."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    source = (ROOT / "analysis" / f"{name}.py").read_text()
    start = source.index('# %% tags=["parameters"]')
    end = source.index("# %%", start + 5)
    parameters = {"profile": layout.profile, "results_root": layout.root,
                  "datasets": config["datasets"], "runs": config["optimizers"],
                  "batch_sizes": config["batch_sizes"], "config_json": json.dumps(config)}
    cell = "".join(f"{k} = {v!r}\n" for k, v in parameters.items())
    exec(compile(source[:start] + cell + source[end:], f"analysis/{name}.py", "exec"), {})


def test_notebooks_cope_with_an_all_diverged_study(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    layout, config = write_tree(tmp_path / "results", "dead", all_diverged=True)
    for name in ("summary", "performance"):
        run_notebook(name, layout, config, monkeypatch)
    plt.close("all")
    for path in notebook_tables(layout, "performance") + layout.figures("performance"):
        assert Path(path).stat().st_size > 0, path
    paired = pd.read_csv(layout.paired("mnist"))
    assert (paired["verdict"] == "inconclusive").all() and (paired["n_pairs"] == 0).all()
    text = render(tmp_path, layout, config)
    for name in ("learning_curves", "lr_sensitivity", "equal_compute"):
        assert f"](figures/{name}.png)" in text


def test_a_profile_without_the_noise_study_says_so_where_the_report_would_read_it(tmp_path):
    """The real partials, the noise section's included: a sentence naming the reason where the
    study's results would stand, never an undefined value."""
    layout, config = write_tree(tmp_path / "results")
    config["noise"] = {"enabled": False}
    config["model"] = {"kind": "cnn", "channels": [8], "kernel": 3, "dense": [], "init_seed": 0}
    out = Path(layout.report())
    text = report_render.render_report(layout, TEMPLATES / "report.md.j2", out, config=config,
                                       now=1_000_000.0 + 1800)
    why = ("it trains a cnn model, and the study's exact per-layer passes are written for the "
           "dense layers of an MLP (`noise.enabled: false`)")
    noise = text.split("## Gradient noise at fixed parameters", 1)[1].split("\n## ", 1)[0]
    assert noise.strip() == f"This profile does not run the noise study: {why}."
    batch = text.split("## Batch size", 1)[1].split("\n## ", 1)[0]
    assert "does not run the noise\nstudy: " + why in batch
    assert "what the gradient noise looked" not in text


def test_missing_runs_and_no_results_still_render(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    layout = Layout("empty", str(tmp_path / "results"))
    config = config_for("empty", runs=["sgd", "sgd+sngrad1", "svag"])
    for name in ("summary", "performance"):
        run_notebook(name, layout, config, monkeypatch)
    plt.close("all")
    assert pd.read_csv(layout.summary("mnist"))["n_seeds"].eq(0).all()
    text = render(tmp_path, layout, config)
    assert "No run of this profile was compared" in text
    assert "has not run for this profile" in text


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SngradError, match="--config"):
        report_render.cli(["--profile", "x", "--results-root", str(tmp_path), "--config", "[1]"])
    with pytest.raises(SngradError, match="template"):
        report_render.cli(["--profile", "x", "--results-root", str(tmp_path), "--config", "{}",
                    "--template", str(tmp_path / "none.j2")])  # fmt: skip


def test_provenance_digest_follows_the_inputs(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("x\n1\n")
    b.write_text("x\n2\n")
    first = reproducibility.input_provenance([str(a), str(b), str(tmp_path / "gone")])
    assert first["n_inputs"] == 2 and first["n_missing"] == 1
    b.write_text("x\n3\n")
    assert reproducibility.input_provenance([str(a), str(b)])["digest"] != first["digest"]
    assert reproducibility.inputs_arg(json.dumps([str(a)])) == [str(a)]
    listing = tmp_path / "inputs.json"
    listing.write_text(json.dumps([str(a), str(b)]))
    assert reproducibility.inputs_arg(f"@{listing}") == [str(a), str(b)]
    with pytest.raises(SngradError, match="JSON list"):
        reproducibility.inputs_arg('{"a": 1}')


def test_formatting_never_prints_nan():
    assert report_format.fmt(float("nan")) == "n/a"
    assert report_format.pct(0.97344) == "97.34"
    assert report_format.signed_points(-0.0123) == "-1.23"
    assert report_format.pvalue(0.0004) == "< 0.001"
    assert report_format.mean_std(0.9, float("nan")) == "90.00"
    assert np.isnan(float("nan"))
    assert re.fullmatch(r"\d+\.\d min", report_format.minutes(95))


def test_the_report_imports_no_jax_and_no_analysis():
    # the report formats written tables: it needs neither the computation nor its imports
    import subprocess
    import sys

    modules = ", ".join(f"sngrad.report.{m}" for m in (
        "render", "experiment", "results", "summary", "noise", "theory", "implementation",
        "reproducibility", "figures", "format", "read"))
    code = (f"import sys, {modules}\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'jax'\n"
            "             or m.startswith(('sngrad.analysis', 'sngrad.noise', 'sngrad.train')))\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_signed_count_and_array_format_through_the_one_vocabulary():
    assert report_format.signed(-0.012345) == "-0.0123"
    assert report_format.signed(0.5, 2) == "+0.50"
    assert report_format.count(2913290) == "2,913,290"
    assert report_format.array([[1.0, 0.6], [0.6, 0.8]]) == "[[1, 0.6], [0.6, 0.8]]"
    assert report_format.array([0.2, 0.2]) == "[0.2, 0.2]"
    for helper in (report_format.signed, report_format.count, report_format.array):
        assert helper(float("nan")) == "n/a"


def test_equal_compute_epochs_print_three_significant_digits():
    """Mean epochs of a run stopped at the base's compute are fractional: '6.58 vs 10', not
    '6.58065 vs 10'; a loss difference keeps its sign and four decimals."""
    row = {"family": "equal_compute", "outcome": "test_loss", "dataset": "digits",
           "batch_size": 64, "run": "sgd+sngrad1", "base": "sgd", "n_pairs": 2, "n_seeds": 2,
           "n_diverged_run": 0, "n_diverged_base": 0, "epoch_run": 6.580645, "epoch_base": 10.0,
           "cost_run": 1.52, "run_mean": 0.3, "base_mean": 0.31, "diff_mean": -0.012345,
           "ci_low": -0.02, "ci_high": 0.001, "ci_level": 0.95, "no_op": False,
           "mean_factor": 0.93, "detectable": 0.01, "p_signflip": 0.5, "p_holm": 1.0,
           "p_t": 0.4, "verdict": "inconclusive", "note": None}
    (out,) = results.paired_rows(pd.DataFrame([row]), "equal_compute", "test_loss")
    assert out["epochs"] == "6.58 vs 10"
    assert out["diff"] == "-0.0123"


def test_tuning_bounds_print_plain_numbers():
    """A hard bound of 1000 reads "1000" (``format.number``), not fmt's "1e+03"."""
    from sngrad.report import experiment

    tune = {"alpha_bounds": {"I": [0.001, 1000.0]}, "lr_bounds": [1e-5, 100.0]}
    protocol = experiment.protocol({"tune": tune})
    assert protocol["alpha_bounds"]["I"] == "[0.001, 1000]"
    assert protocol["lr_bounds"] == "[1e-05, 100]"
    assert protocol["alpha_bounds"]["II"] == "n/a"
