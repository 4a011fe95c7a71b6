"""Shared test fixtures: where the real MNIST files are."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The folder holding mnist/: $MNISTLAB_DATA, else ../shared/datasets beside the clone."""
    root = Path(os.environ.get("MNISTLAB_DATA") or REPO.parent / "shared" / "datasets")
    if not (root / "mnist").is_dir():
        pytest.fail(f"real MNIST not found under {root}: set MNISTLAB_DATA (CI: ../shared/datasets)")
    return root
