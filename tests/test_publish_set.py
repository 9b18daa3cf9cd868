"""Publishing is all or nothing: stopped at any file operation, paper/ is one complete set."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sngrad.publish as pub
from sngrad.cli import main
from sngrad.layout import FIGURES, Layout

NAMES = list(FIGURES)[:3]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def setup(tmp_path: Path) -> tuple[Layout, Path, dict, dict]:
    """An old published set (old report, 4 figures, a template) and new results (3 figures)."""
    paper = tmp_path / "dest" / "paper"
    (paper / "figures").mkdir(parents=True)
    (paper / "templates").mkdir()
    (paper / "templates" / "report.md.j2").write_text("template")
    (paper / "report.md").write_text("old report\n")
    for name in list(FIGURES)[:4]:
        (paper / "figures" / f"{name}.png").write_bytes(f"old {name}".encode())
    layout = Layout("default", str(tmp_path / "results"))
    figures = Path(layout.figures_dir())
    figures.mkdir(parents=True)
    for name in NAMES:
        (figures / f"{name}.png").write_bytes(f"new {name}".encode())
    text = "# New\n" + "".join(f"![{n}](figures/{n}.png)\n" for n in NAMES)
    Path(layout.report()).write_text(text)
    old = snapshot(paper)
    new = {"templates/report.md.j2": b"template", "report.md": text.encode()}
    new.update({f"figures/{n}.png": f"new {n}".encode() for n in NAMES})
    return layout, paper, old, new


class Killed(BaseException):
    """Stands for SIGKILL: no ``except`` or cleanup of the publish code runs."""


def count_operations(monkeypatch, tmp_path) -> int:
    layout, _, _, _ = setup(tmp_path)
    calls = []
    real = pub._op
    monkeypatch.setattr(pub, "_op", lambda f, *a: (calls.append(f), real(f, *a))[1])
    pub.publish("default", layout.root, tmp_path / "dest")
    monkeypatch.setattr(pub, "_op", real)
    return len(calls)


@pytest.mark.parametrize("failure", [Killed, OSError])
@pytest.mark.parametrize("atomic_exchange", [True, False])
def test_stopped_at_every_operation_leaves_old_or_new_set(
    tmp_path, monkeypatch, failure, atomic_exchange
):
    if not atomic_exchange:  # a system without renameat2's exchange: two renames
        monkeypatch.setattr(pub, "_exchange", lambda a, b: False)
    total = count_operations(monkeypatch, tmp_path / "count")
    assert total >= 12  # copies, links, renames, removals: each one is a place to stop
    real = pub._op
    for k in range(1, total + 1):
        case = tmp_path / f"k{k}"
        layout, paper, old, new = setup(case)
        calls = []

        def stop_at_k(f, *a, _calls=calls, _k=k):
            _calls.append(f)
            if len(_calls) == _k:
                raise failure(28, "No space left on device") if failure is OSError else failure()
            return real(f, *a)

        monkeypatch.setattr(pub, "_op", stop_at_k)
        with pytest.raises(failure):
            pub.publish("default", layout.root, case / "dest")
        monkeypatch.setattr(pub, "_op", real)
        pub.recover(case / "dest")  # what the next publish does first
        assert snapshot(paper) in (old, new), f"mixed set after stopping at operation {k}"
        pub.publish("default", layout.root, case / "dest")  # the same command heals it
        assert snapshot(paper) == new
        assert sorted(p.name for p in (case / "dest").iterdir()) == ["paper"]


def test_stop_between_fallback_renames_is_undone(tmp_path, monkeypatch):
    layout, paper, old, _ = setup(tmp_path)
    monkeypatch.setattr(pub, "_exchange", lambda a, b: False)
    real_rename = pub.os.rename
    renames = []

    def rename(a, b):
        renames.append(b)
        if len(renames) == 2:
            raise Killed()
        real_rename(a, b)

    monkeypatch.setattr(pub.os, "rename", rename)
    with pytest.raises(Killed):
        pub.publish("default", layout.root, tmp_path / "dest")
    monkeypatch.setattr(pub.os, "rename", real_rename)
    assert not paper.exists()  # the only window of the fallback path
    pub.recover(tmp_path / "dest")
    assert snapshot(paper) == old


def test_atomic_exchange_is_used_on_linux(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not pub._exchange(a, b):
        pytest.fail("renameat2(RENAME_EXCHANGE) unavailable on this file system")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_full_disk_is_one_line_and_keeps_old_set(tmp_path, monkeypatch, capsys):
    layout, paper, old, _ = setup(tmp_path)

    def full(*args):
        raise OSError(28, "No space left on device", str(paper.parent / pub.STAGING))

    monkeypatch.setattr(pub, "copy_file", full)
    args = ["publish", "--profile", "default", "--results-root", layout.root]
    assert main([*args, "--destination", str(tmp_path / "dest")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "No space left on device" in err and "previous complete report" in err
    assert snapshot(paper) == old
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["paper"]


SLOW_PUBLISH = """
import sys, time
import sngrad.publish as pub
real = pub._op
def slow(f, *a):
    time.sleep(0.02)
    return real(f, *a)
pub._op = slow
print("ready", flush=True)
pub.publish("default", sys.argv[1], sys.argv[2])
"""


def test_sigkill_at_any_moment_leaves_old_or_new_set(tmp_path):
    """A real SIGKILL of a publishing process, at moments spread over its whole run."""
    for i, delay in enumerate([0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7]):
        case = tmp_path / f"kill{i}"
        layout, paper, old, new = setup(case)
        child = subprocess.Popen([sys.executable, "-c", SLOW_PUBLISH, layout.root,
                                  str(case / "dest")], stdout=subprocess.PIPE)  # fmt: skip
        assert child.stdout.readline() == b"ready\n"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert snapshot(paper) in (old, new), f"mixed set after a kill at {delay} s"
        pub.publish("default", layout.root, case / "dest")
        assert snapshot(paper) == new


def test_a_marker_that_cannot_be_written_names_the_new_set(tmp_path, monkeypatch, capsys):
    """After the switch paper/ holds the new set: the message says so, not 'previous'."""
    layout, paper, _, new = setup(tmp_path)

    def full(path, *args):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(pub, "write_json", full)
    args = ["publish", "--profile", "default", "--results-root", layout.root]
    assert main([*args, "--destination", str(tmp_path / "dest")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    assert "already holds the new report" in err and "previous" not in err
    assert layout.published_marker() in err
    assert snapshot(paper) == new
