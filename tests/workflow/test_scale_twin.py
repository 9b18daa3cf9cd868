"""The scale profile's CPU twin: config/scale.yaml with only its sizes cut (embedded data, a
small network of the same depth, fewer epochs and seeds, no accelerator), run end to end, so
that the protocol the GPU runs (two batch sizes, the trend over them) is exercised by
`make test` without a GPU."""

import subprocess

import pandas as pd
import pytest
import yaml
from conftest import SNAKEMAKE, copy_tree

from sngrad.analysis.batch_trend import TREND_COLUMNS
from sngrad.layout import Layout


def twin(scale: dict) -> dict:
    """The scale profile at smoke size: what changes is sizes, never the protocol."""
    config = yaml.safe_load(yaml.safe_dump(scale))
    config.pop("accelerator")
    config["profile"] = "scale_twin"
    config["datasets"] = ["digits"]
    config["batch_sizes"] = [32, 256]  # digits has 1,617 training examples: 8x apart, as 128/1024
    config["data"].update(val_fraction=0.1, train_size=None)
    config["model"]["hidden"] = [8] * len(scale["model"]["hidden"])
    config["train"].update(epochs=3, seeds=[1, 2, 3, 4], checkpoint_every=1)
    config["noise"].update(max_batch_size=256, batches=4)
    config["theory"]["scale"] = "smoke"
    config["benchmark"] = {"networks": [[64, 8, 10]], "batch_sizes": [32], "repeats": 3}
    config["resources"]["threads"] = {k: 1 for k in config["resources"]["threads"]}
    config["resources"]["mem_mb"] = {k: 1000 for k in config["resources"]["mem_mb"]}
    return config


@pytest.fixture(scope="module")
def twin_run(tmp_path_factory):
    work = copy_tree(tmp_path_factory.mktemp("scale_twin"))
    scale = yaml.safe_load((work / "config" / "scale.yaml").read_text())
    config = twin(scale)
    path = work / "config" / "scale_twin.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = subprocess.run([*SNAKEMAKE, "--cores", "2", "--configfile", str(path)], cwd=work,
                         capture_output=True, text=True, timeout=1200)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((work / "logs").rglob("*.log")))
    assert out.returncode == 0, out.stderr[-4000:] + logs
    return work, scale, config


@pytest.mark.slow
def test_the_twin_keeps_the_scale_protocol(twin_run):
    _, scale, config = twin_run
    assert config["optimizers"] == scale["optimizers"]
    assert config["tune"]["axis_points"] == scale["tune"]["axis_points"]
    assert config["train"]["schedule"] == scale["train"]["schedule"]
    assert len(config["model"]["hidden"]) == len(scale["model"]["hidden"])
    assert config["batch_sizes"][1] / config["batch_sizes"][0] == (
        scale["batch_sizes"][1] / scale["batch_sizes"][0])


@pytest.mark.slow
def test_the_twin_reports_the_trend_over_both_batch_sizes(twin_run):
    work, _, config = twin_run
    layout = Layout(config["profile"], str(work / "results"))
    trend = pd.read_csv(layout.batch_trend("digits"))
    assert list(trend.columns) == TREND_COLUMNS
    # each variant against sgd, for both outcomes, from B = 32 to 256 over the 4 seeds
    assert sorted(trend["run"].unique()) == ["sgd+sngrad1", "sgd+sngrad2", "sgd+sngrad3"]
    assert set(trend["outcome"]) == {"test_accuracy", "train_loss"}
    assert (trend["batch_size_low"] == 32).all() and (trend["batch_size_high"] == 256).all()
    assert (trend["n_pairs"] <= 4).all()
    scaling = pd.read_csv(layout.analysis("lr_scaling.csv"))
    assert set(scaling["run"]) <= set(config["optimizers"]) and len(scaling) >= 1
    report = (work / "results" / config["profile"] / "report.md").read_text()
    section = report.split("## Batch size:")[1].split("## What a step costs")[0]
    assert "This profile trains one batch size" not in section
    for figure in ("batch_size_trend", "lr_vs_batch_size"):
        assert f"](figures/{figure}.png)" in section
        assert (work / "results" / config["profile"] / "figures" / f"{figure}.png").stat(
        ).st_size > 0
    for run in trend["run"].unique():
        assert f"| digits | `{run}` | cosine |" in section
    # the seed's tables carry one column per batch size
    assert "| dataset | run | B = 32 | B = 256 |" in report
