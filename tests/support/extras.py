"""Optional-extra imports for the tests of the ``scale`` extra (PostgreSQL, Celery)."""

from __future__ import annotations

import os

import pytest


def need(module: str, why: str):
    """Import an optional-extra module; in CI (which installs .[scale]) a missing one is a failure, not a skip."""
    try:
        return __import__(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is missing: CI installs .[test,scale]")
        pytest.skip(f"{module} not installed ({why}): pip install -e '.[scale]'")
