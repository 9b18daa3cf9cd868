"""An analysis notebook executed as a workflow job, its failure told in one line.

``jupytext --to ipynb --output - SOURCE | python -m sngrad notebook OUTPUT --source SOURCE
--parameters JSON`` executes the notebook read from standard input with papermill, as
``papermill - OUTPUT -k python3 --log-output -y JSON`` does: the same kernel, the cell outputs
in the job's log, the executed notebook saved after each cell, the same metadata (its input
path is ``-``). Only a failure differs. Papermill ends in a traceback of its own machinery,
with the cause (a full disk, a missing result) at the bottom of a cell's traceback, and a
failed save of the executed notebook names no file; here each ends in one last line of the
log:

- a cell that raised: the source file, the cell's number and first line, the exception and
  its message (a write of :mod:`sngrad.io` names its file there) and what to do; the cell's
  traceback, which the executed notebook held and a failed job loses, just above it;
- the executed notebook that cannot be written: its path, the cause and what to do
  (:func:`sngrad.oserror.describe`);
- a kernel that died: the source file, and the likely cause.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys

from sngrad import oserror
from sngrad.errors import SngradError

KERNEL = "python3"  # the venv's kernel, installed by `make install`
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the colours of IPython's tracebacks
_ERRNO = re.compile(r"\[Errno (\d+)\]")  # how str(OSError) begins


def parse_parameters(text: str) -> dict:
    """The notebook's parameters: a JSON object (``notebook_parameters`` of the workflow)."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise SngradError(f"--parameters: not JSON ({err}); allowed: a JSON object") from None
    if not isinstance(values, dict):
        raise SngradError(f"--parameters: a JSON {type(values).__name__}; allowed: a JSON "
                          "object of parameter names and values")
    return values


def failed_cell(source: str, count: int, cell: str, ename: str, evalue: str) -> str:
    """The line for a cell that raised: where (the file, the cell's number and first line),
    the exception, and what to do (for an operating-system error, by its number)."""
    first = next((line.strip() for line in cell.splitlines() if line.strip()), "")
    code = _ERRNO.match(evalue)
    todo = oserror.advice(int(code[1])) if code else "fix the cause, then rerun the same command"
    return f"{source}: cell [{count}] `{first}` raised {ename}: {evalue}; {todo}"


def execute(output: str, parameters: dict, source: str) -> None:
    """Execute the notebook on standard input into ``output`` (see the module docstring)."""
    import nbclient.exceptions
    import papermill
    from papermill.exceptions import PapermillExecutionError

    # papermill's command line sets these two for its kernels and its cell-output log
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        papermill.execute_notebook("-", output, parameters=parameters, kernel_name=KERNEL,
                                   log_output=True, progress_bar=False)
    except PapermillExecutionError as err:
        # the traceback is in the executed notebook, which a failed job loses: log it too
        print(_ANSI.sub("", "\n".join(err.traceback)), file=sys.stderr)
        raise SngradError(failed_cell(source, err.exec_count, err.source, err.ename,
                                      err.evalue)) from None
    except nbclient.exceptions.DeadKernelError:
        raise SngradError(
            f"{source}: the notebook's kernel died (most often killed for want of memory); "
            "free memory or run fewer jobs at once (--cores), then rerun"
        ) from None
    except OSError as err:
        if err.filename is None:  # nbformat's write of the executed notebook names no file
            err.filename = output
        raise


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m sngrad notebook",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("output", help="the executed notebook (.ipynb) to write")
    parser.add_argument("--parameters", required=True, help="the parameters, a JSON object")
    parser.add_argument("--source", default="-", help="the jupytext source, for messages")
    args = parser.parse_args(argv)
    if sys.stdin.isatty():
        raise SngradError("standard input is a terminal; pipe the notebook in, e.g. `jupytext "
                          "--to ipynb --output - SOURCE | python -m sngrad notebook OUTPUT ...`")
    execute(args.output, parse_parameters(args.parameters), args.source)
    return 0
