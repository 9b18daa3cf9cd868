"""An analysis notebook run as a workflow job (sngrad.notebook): the executed notebook is
papermill's, and a failure ends the job's log in one line naming its cause."""

import subprocess
import sys

import nbformat
import pytest

from sngrad import notebook
from sngrad.cli import main
from sngrad.errors import SngradError


def _notebook(*cells: str) -> str:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    parameters = nbformat.v4.new_code_cell("value = 0")
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, *(nbformat.v4.new_code_cell(c) for c in cells)]
    return nbformat.writes(nb)


def _run(tmp_path, source_text, parameters='{"value": 3}'):
    output = tmp_path / "out.ipynb"
    done = subprocess.run(
        [sys.executable, "-m", "sngrad", "notebook", str(output), "--source", "analysis/x.py",
         "--parameters", parameters],
        input=source_text, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    return done, output


def test_a_notebook_runs_with_its_parameters_and_logs_its_output(tmp_path):
    done, output = _run(tmp_path, _notebook("print('twice', 2 * value)"))
    assert done.returncode == 0, done.stderr
    assert "twice 6" in done.stderr  # the cell outputs go to the job's log
    nb = nbformat.read(output, 4)
    assert nb.metadata["papermill"]["input_path"] == "-"
    assert nb.metadata["papermill"]["parameters"] == {"value": 3}


def test_a_cell_on_a_full_disk_ends_the_log_with_the_file_and_what_to_do(tmp_path):
    # what sngrad.io.atomic_write raises when a result cannot be written for want of space
    cell = ("# write the table\n"
            "raise OSError(28, 'No space left on device', 'results/x/summary.csv')")
    done, _ = _run(tmp_path, _notebook("y = value", cell))  # [1] [2] parameters, [3] y
    assert done.returncode == 2
    *above, last = done.stderr.rstrip("\n").splitlines()
    assert last == (
        "sngrad: error: analysis/x.py: cell [4] `# write the table` raised OSError: [Errno 28] "
        "No space left on device: 'results/x/summary.csv'; free space on that file system (or "
        "choose another location), then rerun the same command")
    assert any("raise OSError(28" in line for line in above)  # the cell's traceback, logged
    assert not any("\x1b[" in line for line in above)


def test_an_unwritable_executed_notebook_is_named(tmp_path, monkeypatch, capsys):
    import papermill

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")  # nbformat's write names no file

    monkeypatch.setattr(papermill, "execute_notebook", full_disk)
    monkeypatch.setattr(sys, "stdin", open(__file__))  # anything but a terminal
    out = tmp_path / "summary.ipynb"
    assert main(["notebook", str(out), "--parameters", "{}"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"sngrad: error: {out}: No space left on device; free space")


@pytest.mark.parametrize(("text", "wrong"), [("{bad", "not JSON"), ("[1, 2]", "a JSON list")])
def test_parameters_must_be_a_json_object(text, wrong):
    with pytest.raises(SngradError, match=f"--parameters: {wrong}.*allowed: a JSON object"):
        notebook.parse_parameters(text)


def test_an_error_that_is_not_the_operating_systems_says_fix_the_cause():
    line = notebook.failed_cell("analysis/a.py", 4, "\n  x = table['run']\n", "KeyError",
                                "'run'")
    assert line == ("analysis/a.py: cell [4] `x = table['run']` raised KeyError: 'run'; fix the "
                    "cause, then rerun the same command")
