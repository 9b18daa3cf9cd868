"""Shared pytest configuration."""

import os

from hypothesis import settings

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
