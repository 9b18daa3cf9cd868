"""The smoke profile of a convolutional network (config/smoke-cnn.yaml), run for real: the
whole DAG on a flax CNN, its report with the cell's paired tables and counted costs."""

import json

import pytest
from conftest import copy_tree, snakemake

from sngrad import costs
from sngrad.names import parse_run
from sngrad.profile import architecture, read_yaml


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    work = copy_tree(tmp_path_factory.mktemp("cnn"))
    out = snakemake("--cores", "2", "--configfile", "config/smoke-cnn.yaml", cwd=work,
                    timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    return work, work / "results" / "smoke-cnn"


@pytest.mark.slow
def test_the_cnn_profile_trains_the_convolutional_network(cnn_run):
    _, base = cnn_run
    provenance = json.loads((base / "digits/sgd+sngrad1/bs64/provenance.json").read_text())
    assert provenance["spec"]["model"] == {"kind": "cnn", "channels": [8], "kernel": 3,
                                           "dense": []}
    assert "hidden" not in provenance["spec"]
    # the per-layer diagnostics have the network's two layers with parameters
    rows = (base / "digits/sgd+sngrad1/bs64/diagnostics.csv").read_text().splitlines()
    layers = {line.split(",")[rows[0].split(",").index("layer")] for line in rows[1:]}
    assert layers >= {"0", "1"} and "2" not in layers
    assert not (base / "noise").exists() and not (base / "reference").exists()


@pytest.mark.slow
def test_the_cnn_report_has_the_paired_tables_and_the_counted_costs(cnn_run):
    work, base = cnn_run
    text = (base / "report.md").read_text()
    config = read_yaml(work / "config" / "smoke-cnn.yaml")
    network = architecture(config, "digits")
    assert network.describe() in text
    assert "This profile does not run the noise study: it trains a cnn model" in text
    # the equal-compute table's step cost is the counted ratio of this network's steps
    row = next(line for line in text.splitlines()
               if line.startswith("| digits | 64 | `sgd+sngrad1` | `sgd` |") and " vs " in line)
    counted = costs.step_flops(parse_run("sgd+sngrad1"), network, 64) / costs.step_flops(
        parse_run("sgd"), network, 64)
    assert row.split("|")[5].strip() == f"{counted:.2f}" == "1.11"
    # the equal-epochs table: every run against sgd, on both seeds
    for run in ("sgd+sngrad1", "sgd+cv"):
        assert f"| digits | 64 | `{run}` | `sgd` | 2/2 | 0/0 |" in text
