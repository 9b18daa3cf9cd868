"""The persistent cache of compiled XLA programs that every job of every clone shares.

A job compiles its programs once per machine, not once per process: the programs are kept on
disk in a user cache folder (``$SNGRAD_XLA_CACHE``, else ``$XDG_CACHE_HOME/sngrad-xla``, else
``~/.cache/sngrad-xla``) shared by every clone and profile. Programs of the same shapes (the
datasets of one profile, a rerun, a fresh clone) find each other there, small ones included:
a cold tune job otherwise spends about a third of its CPU compiling.

How an entry is keyed. JAX names each entry by a hash of the lowered program, the compile
options, the XLA flags (thread count included), the backend and the jax/jaxlib versions. It
does not hash the host CPU, yet XLA's CPU compiler emits code for the instruction set of the
machine that compiles (vector width, fused multiply-add), so the same program compiled on two
CPU types may round differently, or not run at all. Each CPU type therefore gets a folder of
its own, named by the machine type and a digest of the processor's model name and feature
flags: a cache written on another CPU type (a home folder shared by a cluster's nodes) is never
read here. Within one folder an entry is the program XLA would compile anew, so reading it
cannot change a result.

The folder is not trimmed (JAX's size limit needs a file-lock package the project does not
otherwise use); the default profile's programs take about 6 MB, and deleting the folder at any
time only costs the next run its compilation.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

CACHE_ENV = "SNGRAD_XLA_CACHE"
FOLDER = "sngrad-xla"


def cache_root() -> Path:
    """``$SNGRAD_XLA_CACHE``, else ``$XDG_CACHE_HOME/sngrad-xla``, else ~/.cache/sngrad-xla."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / FOLDER


def cpu_identity(cpuinfo: str | None = None) -> str:
    """The machine type and the first processor's model name and feature flags, one line each.

    ``cpuinfo``: the text of /proc/cpuinfo (read when None; empty where there is none, and
    the platform's processor string stands in)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    wanted = ("model name", "flags", "features", "cpu model", "isa")
    lines = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in wanted and key not in lines:
            lines[key] = " ".join(sorted(value.split())) if key != "model name" else value.strip()
    if not lines:
        lines["processor"] = platform.processor()
    return "\n".join([platform.machine(), *(f"{k}: {lines[k]}" for k in sorted(lines))])


def cache_dir(cpuinfo: str | None = None) -> Path:
    """This CPU type's folder: ``<root>/<machine>-<12 hex digits of cpu_identity>``."""
    digest = hashlib.sha256(cpu_identity(cpuinfo).encode()).hexdigest()[:12]
    return cache_root() / f"{platform.machine() or 'cpu'}-{digest}"


# every program is kept, however small or quick to compile
SETTINGS = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


if __name__ == "__main__":  # the folder for a job's shell (workflow/rules/common.smk)
    print(cache_dir())
