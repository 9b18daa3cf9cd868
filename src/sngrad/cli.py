"""Command line: ``python -m sngrad <command> ...`` (also installed as ``sngrad``).

Each command lives in the module that owns its idea and exposes ``cli(argv) -> int``; this
file only dispatches, so that ``python -m sngrad data ...`` does not pay for importing the
training code and vice versa.
"""

from __future__ import annotations

import importlib
import os
import sys

from sngrad import interrupt, ledger
from sngrad.errors import SngradError
from sngrad.oserror import describe as describe_os_error

INTERRUPTED = 130  # the shell's status for a process ended by SIGINT
# commands whose work runs in another process (a notebook's, in its kernel): the phases of
# their own would record a compilation and scan time of zero for work they did not see
UNTIMED = frozenset({"notebook"})

# command -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "data": ("sngrad.data", "cli", "prepare a dataset's splits: data prepare NAME --out FILE.npz"),
    "tune": ("sngrad.train.cli", "cli_tune",
             "search hyper-parameters for one (dataset, run, batch size)"),
    "train": ("sngrad.train.cli", "cli_train", "retrain the chosen setting on the final seeds"),
    "reference": ("sngrad.train.cli", "cli_reference",
                  "sgd reference run: parameters at checkpoints for the noise study"),
    "report": ("sngrad.report.render", "cli", "render paper/report.md from results/"),
    "noise": ("sngrad.noise.command", "cli",
              "gradient noise against batch size at fixed checkpoints"),
    "publish": ("sngrad.publish", "cli", "copy results/default's report and figures to paper/"),
    "config": ("sngrad.config", "cli", "check profiles as the workflow does: config check FILE"),
    "notebook": ("sngrad.notebook", "cli",
                 "execute an analysis notebook piped in (a workflow job; one-line failures)"),
}


def _usage() -> str:
    lines = ["usage: python -m sngrad <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch; usage on stdout for --help (status 0), on stderr without a command (2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(_usage())
        return 0
    if not argv:
        print(_usage(), file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"sngrad: error: unknown command {name!r}; valid: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module, function, _ = COMMANDS[name]
    if name not in UNTIMED:
        ledger.watch()
    try:
        return int(getattr(importlib.import_module(module), function)(rest) or 0)
    except SngradError as err:
        # one line per problem (a profile check may find several)
        for line in str(err).splitlines() or [""]:
            print(f"sngrad: error: {line}", file=sys.stderr)
        return 2
    except OSError as err:  # a read-only or full folder, a file where a folder should be
        print(f"sngrad: error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sngrad: {name} interrupted; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED


def entry(argv: list[str] | None = None) -> None:
    """``python -m sngrad`` and the ``sngrad`` script: exit with :func:`main`'s status.

    An interrupted command ends without the interpreter's shutdown. Ctrl-C during start-up or
    compilation leaves XLA's compiler threads running, and finalising the interpreter under
    them crashed the process (SIGSEGV, 3 of 10 interrupts of a compiling ``tune``) after the
    resume line had been printed. Nothing is lost by skipping the shutdown: every result and
    checkpoint goes through :func:`sngrad.io.atomic_write`, whose temporary file the
    KeyboardInterrupt has already removed on its way up; the ledger's record of the process is
    written here instead of by its exit handler. A Ctrl-C that Python dropped (raised inside a
    garbage-collection callback) is raised again at the next epoch (:mod:`sngrad.interrupt`).
    """
    interrupt.install()
    status = main(argv)
    if status == INTERRUPTED:
        ledger.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
