"""Shared pytest configuration and the helpers more than one test module uses.

The tests mirror the package (tests/README.md): ``tests/test_X.py`` covers ``src/sngrad/X.py``,
``tests/P/`` the subpackage ``src/sngrad/P/``; ``tests/workflow/`` runs the Snakemake workflow,
``tests/project/`` checks the rest of the repository (install contract, examples, tools/ and
benchmarks/ scripts). This is the only conftest.py: test modules import its plain helpers with
``from conftest import ...`` (pytest puts tests/ on ``sys.path``, "prepend" import mode), so
test file names must be unique across the folders (none has an ``__init__.py``).
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]

# CI runs the property tests with a fixed example sequence, so that a submission's result does
# not depend on the draw; local runs keep exploring new examples (and the example database).
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_configure(config):
    # `make test` runs them too; `make test-fast` (-m "not slow") leaves them out while editing
    config.addinivalue_line(
        "markers", "slow: runs the real workflow (about a minute or more); never skipped"
    )
    # the workflows the tests run share one compilation cache of their own, not the user's
    # (sngrad.compile_cache); a run's results do not depend on it
    if "SNGRAD_XLA_CACHE" not in os.environ:
        cache = Path(tempfile.mkdtemp(prefix="sngrad-xla-tests-"))
        os.environ["SNGRAD_XLA_CACHE"] = str(cache)
        config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))


def tracked_files() -> list[str]:
    """What a `git clone` (or a tar of the tracked files) holds, with this tree's edits."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [name for name in out.stdout.split("\0") if name and (ROOT / name).is_file()]


def copy_tree(target: Path) -> Path:
    """A tar-like copy of the tracked files into ``target``: no results/, logs/ or .snakemake/."""
    listing = "\0".join(tracked_files()).encode()
    pack = subprocess.run(
        ["tar", "-cf", "-", "--null", "-T", "-"], cwd=ROOT, input=listing,
        capture_output=True, check=True,
    )  # fmt: skip
    subprocess.run(["tar", "-xf", "-"], cwd=target, input=pack.stdout, check=True)
    return target


SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(*args, cwd, timeout=180):
    """``python -m snakemake ARGS`` in ``cwd``, its output captured as text."""
    return subprocess.run(
        [*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


# ----------------------------------------------------------------------------- training


def tune_dict(**over):
    """The ``tune`` block of a training spec (sngrad.spec): two tuning seeds, a three-point
    learning-rate grid, bounds that never stop an extension; ``over`` replaces keys."""
    return {
        "seeds": [100, 101], "lr_min": 0.03, "lr_max": 0.3, "lr_per_decade": 2,
        "lr_bounds": [0.01, 1.0], "axis_points": 3,
        "one_minus_momentum": [0.1, 0.5], "one_minus_momentum_bounds": [0.001, 1.0],
        "alpha": {"I": [0.3, 3.0], "II": [0.3, 30.0], "III": [0.1, 1.0]},
        "alpha_bounds": {"I": [1e-4, 1e4], "II": [1e-4, 1e4], "III": [1e-4, 100.0]},
        **over,
    }  # fmt: skip


def spec_dict(tune=None, **over):
    """A training spec as ``parse_spec`` reads it (what the workflow passes to ``train`` and
    ``tune``): a small dense network, a few epochs at a constant rate, no checkpoints.
    ``over`` replaces top-level keys, ``tune`` keys of the tune block (``tune_dict``). A new
    dict on every call."""
    return {
        "hidden": [8], "init_seed": 0, "epochs": 3, "seeds": [1, 2], "backend": "dense",
        "schedule": "constant", "checkpoint_every": 0, "diverge_loss": 1000.0,
        "snapshot_every": 1, **over, "tune": tune_dict(**(tune or {})),
    }  # fmt: skip


def toy_splits(n_train=96, dim=5, seed=0, n_eval=40):
    """Three-class Gaussian splits (train n_train, validation and test n_eval) for engine
    tests, learnable in a few epochs."""
    import numpy as np

    from sngrad.data import Splits

    rng = np.random.default_rng(seed)

    def part(n):
        x = rng.normal(size=(n, dim)).astype(np.float32)
        return x, (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.8).astype(np.int32)

    return Splits(*part(n_train), *part(n_eval), *part(n_eval), num_classes=3, name="toy")


def binary_splits(n_train, dim=4, seed=0):
    """Two classes (the sign of the first feature); validation and test are the first 16
    training examples."""
    import numpy as np

    from sngrad.data import Splits

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_train, dim)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    return Splits(x, y, x[:16], y[:16], x[:16], y[:16], num_classes=2, name="toy")


def tar_archive(members: dict[str, bytes], compression: str, extra=()) -> bytes:
    """A tar archive (``compression``: "gz", "xz", ...) of ``members`` (name -> bytes), plus
    the ready-made ``extra`` TarInfo entries (links and other special members)."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for info in extra:
            tar.addfile(info)
    return buffer.getvalue()
