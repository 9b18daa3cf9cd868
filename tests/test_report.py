"""The report renders from result files alone, shows their numbers, and never prints tba/nan."""

import json
import re
import shutil
from pathlib import Path

import pytest

from sngrad import report
from sngrad.errors import SngradError

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "paper" / "templates"

CONFIG = {
    "profile": "fixture",
    "datasets": ["digits"],
    "optimizers": ["sgd", "sgd+sngrad1"],
    "batch_sizes": [32, 128],
    "data": {"seed": 0, "val_fraction": 0.1},
    "model": {"hidden": [24, 24], "init_seed": 0},
    "train": {
        "epochs": 2,
        "seeds": [1, 2, 3],
        "backend": "dense",
        "checkpoint_every": 1,
        "diverge_loss": 1000.0,
        "alpha": None,
    },
    "tune": {
        "budget": 2,
        "lr_min": 0.01,
        "lr_max": 0.5,
        "momentum_min": 0.5,
        "momentum_max": 0.99,
        "seeds": [0],
        "search_seed": 0,
    },
    "alpha_sweep": {"batch_size": 32, "optimizers": ["sgd+sngrad1"], "alphas": [0.3, 3.0]},
    "theory": {"enabled": True, "scale": "smoke", "seed": 0},
    "benchmark": {"sizes": [64, 10], "batch_sizes": [32], "repeats": 2, "backends": ["dense"]},
    "resources": {},
}

# test accuracy per (optimizer, batch size) and seed; chosen to have known means
ACCURACY = {
    ("sgd", 32): [0.91, 0.92, 0.93],
    ("sgd+sngrad1", 32): [0.95, 0.96, 0.97],
    ("sgd", 128): [0.81, 0.83, 0.85],
    ("sgd+sngrad1", 128): [0.80, 0.82, 0.87],
}


def _csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(str(r[k]) for k in header) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def write_fixture(results: Path, figures: Path, *, theory: bool) -> None:
    (results / "data").mkdir(parents=True)
    meta = {"name": "digits", "num_classes": 10, "feature_dim": 64,
            "sizes": {"train": 1437, "val": 180, "test": 180}}  # fmt: skip
    (results / "data" / "digits.json").write_text(json.dumps(meta))
    summary, paired = [], []
    for (opt, bs), accs in ACCURACY.items():
        run = results / "digits" / opt / f"bs{bs}"
        run.mkdir(parents=True)
        lr = 0.0625 if opt == "sgd" else 0.1875
        best = {"optimizer": opt, "batch_size": bs, "learning_rate": lr, "momentum": None}
        (run / "best.json").write_text(json.dumps(best))
        provenance = {"wall_time_s": 60.0, "device": ["cpu:0"], "git_commit": "abc"}
        (run / "provenance.json").write_text(json.dumps(provenance))
        (run / "tuning_provenance.json").write_text(json.dumps({"wall_time_s": 30.0}))
        mean = sum(accs) / 3
        std = (sum((a - mean) ** 2 for a in accs) / 2) ** 0.5
        summary.append({"dataset": "digits", "optimizer": opt, "batch_size": bs,
                        "learning_rate": lr, "momentum": "", "alpha": "", "val_accuracy": 0.9,
                        "test_accuracy_mean": mean, "test_accuracy_std": std, "n_seeds": 3,
                        "diverged": 0})  # fmt: skip
    for bs, low, high, excl in [(32, 0.0123, 0.0677, True), (128, -0.0456, 0.0523, False)]:
        paired.append({"dataset": "digits", "batch_size": bs, "optimizer": "sgd+sngrad1",
                       "base": "sgd", "n_pairs": 3, "diff_mean": (low + high) / 2,
                       "ci_low": low, "ci_high": high, "excludes_zero": excl})  # fmt: skip
    _csv(results / "digits" / "summary.csv", summary)
    _csv(results / "digits" / "paired.csv", paired)
    _csv(results / "benchmark" / "step_time.csv", [
        {"batch_size": 32, "method": "sgd", "median_ms": 0.5, "sgd_same_ms": 0.5,
         "ratio_to_sgd": 1.0,
         "peak_mem_mb": 12.5, "sizes": "64-10"},
        {"batch_size": 32, "method": "sngrad-dense", "median_ms": 0.71, "sgd_same_ms": 0.503,
         "ratio_to_sgd": 1.42,
         "peak_mem_mb": 13.25, "sizes": "64-10"},
    ])  # fmt: skip
    _csv(results / "analysis" / "gradient_noise.csv", [
        {"dataset": "digits", "optimizer": "sgd", "batch_size": 32, "snr_median_first": 0.4321,
         "noise_scale_first": 57.3, "factor_I_first": 0.5, "factor_II_first": 0.2,
         "factor_III_first": 0.7, "snr_median_last": 0.1234, "noise_scale_last": 812.0,
         "factor_I_last": 0.61, "factor_II_last": 0.052, "factor_III_last": 0.77,
         "reference": True},
    ])  # fmt: skip
    _csv(results / "analysis" / "alpha_sensitivity.csv", [
        {"dataset": "digits", "optimizer": "sgd+sngrad1", "batch_size": 32, "alpha": a,
         "val_accuracy_mean": v, "test_accuracy_mean": v, "test_accuracy_std": 0.01,
         "n_seeds": 3, "diverged": 0}
        for a, v in [(0.3, 0.944), (3.0, 0.9012)]
    ])  # fmt: skip
    figures.mkdir(parents=True)
    (figures / "learning_curves.png").write_bytes(b"\x89PNG")
    if theory:
        _csv(results / "theory" / "checks.csv", [{"name": "stationary_1d", "value": 0.25}])
        _csv(results / "theory" / "stationary_1d.csv", [{"x": 0.0, "density": 0.5}])
        (results / "theory" / "summary.json").write_text(json.dumps({"wall_time_s": 6.0}))


@pytest.fixture
def rendered(tmp_path):
    """Render the real templates (with a stand-in theory partial) against the fixture."""
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    (templates / "theory.md.j2").write_text(
        "Theory check value {{ theory.checks['stationary_1d'].value | fmt(3) }}.\n"
    )
    results, out = tmp_path / "results", tmp_path / "paper" / "report.md"
    write_fixture(results, tmp_path / "paper" / "figures", theory=True)
    text = report.render_report(
        results, templates / "report.md.j2", out, tmp_path / "paper" / "figures", config=CONFIG
    )
    return text, out


def test_report_is_written_and_matches_the_returned_text(rendered):
    text, out = rendered
    assert out.read_text() == text
    assert not list(out.parent.glob("*.tmp"))


def test_no_placeholder_and_no_nan(rendered):
    text, _ = rendered
    assert not re.search(r"\btba\b", text, re.IGNORECASE)
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)
    assert "None" not in text


def test_fixture_numbers_appear(rendered):
    text, _ = rendered
    # test accuracy mean +- std (percent) of each cell
    assert "92.00 ± 1.00" in text
    assert "96.00 ± 1.00" in text
    assert "83.00 ± 2.00" in text
    # chosen learning rates, paired CI in points, benchmark ratio, noise stats, alpha spread
    assert "0.0625" in text and "0.188" in text
    assert "[1.23, 6.77] \\*" in text and "[-4.56, 5.23]" in text
    assert "1.42 \N{MULTIPLICATION SIGN} the time of an SGD step" in text and "13.2" in text
    assert "| 0.71 | 0.503 | 1.42 |" in text
    assert "0.432" in text and "812" in text and "0.052" in text
    assert "94.40" in text and "4.28" in text
    assert "Theory check value 0.25." in text


def test_discussion_follows_the_confidence_intervals(rendered):
    text, _ = rendered
    discussion = text.split("## Discussion")[1].split("## Reproducibility")[0]
    assert "improvement in 1" in discussion
    assert "`sgd+sngrad1` on digits at batch 32" in discussion
    assert "none a deterioration" in discussion
    assert "1 are inconclusive" in discussion


def test_reproducibility_section(rendered):
    text, _ = rendered
    assert report.config_hash(CONFIG) in text
    assert len(report.config_hash(CONFIG)) == 64
    # four runs x (60 s train + 30 s tune) + 6 s of theory = 6.1 minutes
    assert "| total wall time (those jobs and the theory notebook) | 6.1 min |" in text
    assert "snakemake --cores 4 --configfile config/fixture.yaml" in text
    assert "cpu:0" in text


def test_figures_are_linked_relative_to_the_report(rendered):
    text, _ = rendered
    assert "](figures/learning_curves.png)" in text
    # a figure that no rule wrote is not linked
    assert "figures/noise_scale.png" not in text


def test_missing_theory_says_the_rule_has_not_run(tmp_path):
    results, out = tmp_path / "results", tmp_path / "report.md"
    write_fixture(results, tmp_path / "figures", theory=False)
    text = report.render_report(
        results, TEMPLATES / "report.md.j2", out, tmp_path / "figures", config=CONFIG
    )
    assert "theory rule has not run" in text


def test_fmt_filter():
    assert report.fmt(3.14159, 3) == "3.14"
    assert report.fmt(float("nan")) == "n/a"
    assert report.fmt(None) == "n/a"
    assert report.pct(0.9736) == "97.36"


def test_cli_rejects_bad_config(tmp_path):
    with pytest.raises(SngradError, match="--config"):
        report.cli(["--config", "{not json", "--results", str(tmp_path)])
