"""``python -m sngrad``: the command line of :mod:`sngrad.cli`.

A Ctrl-C while the command line itself is being imported gets the same one line and status
as one during a command, instead of a traceback from inside an import.
"""

import sys

try:
    from sngrad.cli import entry
except KeyboardInterrupt:
    print("sngrad: interrupted while starting; rerun the same command", file=sys.stderr)
    sys.exit(130)  # INTERRUPTED, which may not have been imported yet

entry()
