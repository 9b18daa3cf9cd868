"""tools/compare_results.py: equal trees apart from timings, and every kind of difference named."""

import importlib.util
import json
from pathlib import Path

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("compare_results",
                                               ROOT / "tools" / "compare_results.py")
compare_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_results)


def _tree(root: Path, *, wall="0.5", acc="0.9", started=1.0, report_min="2.1", extra=False):
    (root / "d").mkdir(parents=True)
    (root / "d" / "metrics.csv").write_text(
        f"epoch,test_accuracy,wall_time,train_s\n1,{acc},{wall},{wall}\n")
    (root / "d" / "provenance.json").write_text(json.dumps(
        {"seeds": [1], "compile_s": started, "git_commit": str(started), "nested": {"x_s": 1}}))
    (root / "report.md").write_text(f"Elapsed {report_min} min, commit {'a' * 40}.\nSame.\n")
    (root / "fig.png").write_bytes(b"\x89PNG")
    if extra:
        (root / "new.csv").write_text("a\n1\n")
    return root


def test_timings_are_normalised(tmp_path):
    before = _tree(tmp_path / "b")
    after = _tree(tmp_path / "a", wall="7.25", started=2.0, report_min="40.0")
    assert compare_results.compare_trees(before, after) == []
    assert compare_results.main([str(before), str(after)]) == 0


def test_every_result_difference_is_reported(tmp_path, capsys):
    before = _tree(tmp_path / "b")
    after = _tree(tmp_path / "a", acc="0.8", extra=True)
    (after / "fig.png").write_bytes(b"\x89PNG!")
    (after / "report.md").write_text(f"Elapsed 2.1 min, commit {'b' * 40}.\nOther.\n")
    lines = compare_results.compare_trees(before, after, show=2)
    assert lines == [
        "differs: d/metrics.csv: 1 of 1 rows differ in columns test_accuracy",
        "differs: fig.png: bytes differ",
        "only in after: new.csv",
        "differs: report.md: 2 lines differ\n      -Same.\n      +Other.",
    ]
    assert compare_results.main([str(before), str(after)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "4 of 5 files differ apart from timings"
