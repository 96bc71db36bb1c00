"""Where the benchmarks find the Grocery Store dataset: beside the checkout (``<repo>/../shared/datasets/...``), or
wherever ``--dataset`` points. Imported by the benchmark scripts (they run as ``python3 benchmarks/<name>.py``)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The Grocery Store dataset (github.com/marcusklasson/GroceryStoreDataset) beside the checkout: <repo>/../shared/...
DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "grocery_store"


def dataset_root(path: Path) -> Path:
    """The folder holding ``train/ val/ test/ classes.csv``: ``path`` itself or its ``dataset/`` sub-folder."""
    path = Path(path)
    root = path / "dataset" if (path / "dataset").is_dir() else path
    if not root.is_dir():
        raise SystemExit(
            f"Grocery Store dataset not found at {path}; pass --dataset PATH (the clone of "
            "github.com/marcusklasson/GroceryStoreDataset or its dataset/ folder)"
        )
    return root
