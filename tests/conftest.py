"""Shared pytest configuration, and the copy of the repository the workflow tests run in."""

import os
import shutil
import subprocess
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


def toy_splits(n_train=96, dim=5, seed=0):
    """Three-class Gaussian splits (train n_train, validation and test 40) for engine tests."""
    import numpy as np

    from sngrad.data import Splits

    rng = np.random.default_rng(seed)

    def part(n):
        x = rng.normal(size=(n, dim)).astype(np.float32)
        return x, (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.8).astype(np.int32)

    return Splits(*part(n_train), *part(40), *part(40), num_classes=3, name="toy")
