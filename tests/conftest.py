"""Shared test helpers: tiny real images generated on the fly (no binary fixtures in the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


from support.files import write_folder_catalogue


@pytest.fixture
def folder_catalogue(tmp_path: Path) -> Path:
    return write_folder_catalogue(tmp_path / "cat", {"sku-a": 6, "sku-b": 6, "sku-c": 2})
