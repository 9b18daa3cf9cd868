"""Ctrl-C that is never lost.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be, and an
exception raised inside a garbage-collection callback is printed ("Exception ignored in ...")
and dropped. JAX runs such a callback on every collection, so now and then an interrupt of a
training command vanished and the job ran to its end. :func:`install` keeps a record of the
signal beside the exception, and :func:`check`, called between epochs, raises it again if it
was dropped.
"""

from __future__ import annotations

import signal

_received = {"sigint": False}


def _on_sigint(signum, frame):
    _received["sigint"] = True
    raise KeyboardInterrupt


def install() -> None:
    """Take over SIGINT, unless it is ignored (a job started in the background keeps it so)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


def check() -> None:
    """Raise KeyboardInterrupt if SIGINT arrived since :func:`install` and was dropped."""
    if _received["sigint"]:
        raise KeyboardInterrupt
