"""Publishing: results/default/ -> paper/, only for the default profile, all or nothing."""

import json
from pathlib import Path

import pytest

from sngrad.cli import main
from sngrad.errors import SngradError
from sngrad.layout import FIGURES, Layout
from sngrad.provenance import sha256_file
from sngrad.publish import linked_figures, publish

NAMES = list(FIGURES)[:3]


def results(tmp_path: Path, profile: str = "default", links=NAMES) -> Layout:
    """A profile's report linking ``links`` and a PNG for each of NAMES."""
    layout = Layout(profile, str(tmp_path / "results"))
    figures = Path(layout.figures_dir())
    figures.mkdir(parents=True)
    for name in NAMES:
        (figures / f"{name}.png").write_bytes(f"png {name}".encode())
    (figures / "not_in_manifest.png").write_bytes(b"scratch")
    text = "# Report\n" + "".join(f"![{n}](figures/{n}.png)\n" for n in links)
    Path(layout.report()).write_text(text)
    return layout


def test_publish_copies_report_and_manifest_figures(tmp_path):
    layout = results(tmp_path)
    paper = tmp_path / "out" / "paper"
    (paper / "figures").mkdir(parents=True)
    (paper / "figures" / "old_figure.png").write_bytes(b"stale")
    (paper / "figures" / "notes.txt").write_text("kept")

    marker = publish("default", layout.root, tmp_path / "out")

    report = (paper / "report.md").read_text()
    assert report == Path(layout.report()).read_text()
    for link in linked_figures(report):
        assert (paper / link).read_bytes() == (Path(layout.base) / link).read_bytes()
    assert sorted(p.name for p in (paper / "figures").glob("*.png")) == sorted(
        f"{n}.png" for n in NAMES
    )
    assert (paper / "figures" / "notes.txt").exists()  # only PNGs are mirrored
    written = json.loads(Path(layout.published_marker()).read_text())
    assert written["removed"] == [str(paper / "figures" / "old_figure.png")]
    assert written["report"] == {str(paper / "report.md"): sha256_file(paper / "report.md")}
    assert written == json.loads(json.dumps(marker))


def test_only_the_default_profile_publishes(tmp_path, capsys):
    layout = results(tmp_path, profile="smoke")
    with pytest.raises(SngradError, match="only 'default'"):
        publish("smoke", layout.root, tmp_path)
    assert not (tmp_path / "paper").exists()
    args = ["publish", "--profile", "smoke", "--results-root", layout.root]
    assert main([*args, "--destination", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_missing_report_or_linked_figure_writes_nothing(tmp_path):
    with pytest.raises(SngradError, match="does not exist"):
        publish("default", str(tmp_path / "results"), tmp_path)
    layout = results(tmp_path, links=[*NAMES, "no_such_figure"])
    with pytest.raises(SngradError, match=r"figures/no_such_figure\.png"):
        publish("default", layout.root, tmp_path)
    assert not (tmp_path / "paper").exists()
    assert not Path(layout.published_marker()).exists()
