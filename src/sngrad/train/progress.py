"""Where a training or tuning job stands, as lines a log file shows (``tail -f``).

A job's stderr goes to its log under ``logs/``. On a terminal the sweep shows a tqdm bar; in a
log it writes progress lines instead, at least one every :data:`HEARTBEAT_S` seconds and one
at the end of every epoch that ends :data:`EVERY_S` seconds or more after the previous line
(and always after the first and the last epoch)::

    sngrad: progress train sgd bs64: epoch 3/20, loss 0.412 (median of 5 runs), elapsed 41 s,
    remaining ~3.9 min

The loss is the median over the K runs of their epoch training loss (diverged runs left out
and counted). The remaining time is the mean time per epoch finished in this process times
the epochs left (a resumed job counts only the epochs it trained itself). While one epoch
takes longer than :data:`HEARTBEAT_S`, a background thread repeats where the job is, so that
a silent log always means a stopped job. Nothing here touches the training state: the lines
are written from host values the sweep has already fetched.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

import numpy as np

EVERY_S = 10.0  # epochs shorter than this are summarised, not one line each
HEARTBEAT_S = 30.0  # the longest a log stays silent while a job runs


def duration(seconds: float) -> str:
    """``41 s``, ``3.9 min``, ``2.5 h``."""
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def loss_summary(train_loss) -> str:
    """Median training loss over the runs that have a finite one, and how many do not."""
    loss = np.atleast_1d(np.asarray(train_loss, np.float64))
    finite = loss[np.isfinite(loss)]
    if finite.size == 0:
        return f"loss not finite in all {loss.size} run(s)"
    text = f"loss {np.median(finite):.4g} (median of {loss.size} run(s)"
    if finite.size < loss.size:
        text += f", {loss.size - finite.size} not finite"
    return text + ")"


class EpochProgress:
    """Progress of one sweep of ``total`` epochs, of which ``start`` were done before.

    Call :meth:`update` after each epoch with the number of finished epochs and the epoch's
    training losses, and :meth:`close` at the end (or use it as a context manager).
    """

    def __init__(self, label: str, total: int, start: int = 0, *, stream: TextIO | None = None,
                 every_s: float | None = None, heartbeat_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.start = label or "sweep", total, start
        self.stream = sys.stderr if stream is None else stream
        self.every_s = EVERY_S if every_s is None else every_s
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.clock = clock
        self.done, self.began = start, clock()
        self.last_line = self.began
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bar = None
        self._thread = None
        if _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=start, desc=label, unit="epoch",
                             file=self.stream, leave=False)
        elif self.heartbeat_s > 0 and start < total:
            self._thread = threading.Thread(target=self._heartbeat, daemon=True)
            self._thread.start()

    def remaining_s(self, now: float) -> float | None:
        """Estimated seconds left, from the epochs this process finished; None before one."""
        trained = self.done - self.start
        if trained <= 0:
            return None
        return (now - self.began) / trained * (self.total - self.done)

    def _write(self, what: str, now: float) -> None:
        left = self.remaining_s(now)
        eta = "remaining unknown until an epoch ends" if left is None else (
            f"remaining ~{duration(left)}")
        self.stream.write(f"sngrad: progress {self.label}: {what}, elapsed "
                          f"{duration(now - self.began)}, {eta}\n")
        self.stream.flush()
        self.last_line = now

    def update(self, done: int, train_loss) -> None:
        """Epoch ``done`` (1-based count of finished epochs) has ended with these losses."""
        with self._lock:
            self.done = done
            if self._bar is not None:
                self._bar.update(1)
                return
            now = self.clock()
            edge = done == self.start + 1 or done == self.total
            if edge or now - self.last_line >= self.every_s:
                self._write(f"epoch {done}/{self.total}, {loss_summary(train_loss)}", now)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s / 4):
            with self._lock:
                now = self.clock()
                if now - self.last_line >= self.heartbeat_s and self.done < self.total:
                    self._write(f"epoch {self.done + 1}/{self.total} running", now)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> EpochProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
