"""Shared test fixtures: where the real MNIST files are."""

import math
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


def _keras_validation(spec, arrays):
    """(images, labels) Keras' `validation_split` holds out, by hand: the last `fraction` of
    the first `subset` training images, unshuffled. Tests that check figures on the
    validation data use this, not `populations.split`, so a bug there cannot cancel out."""
    assert spec.training.validation.method == "last", "by hand only for Keras' split"
    n = spec.training.subset or len(arrays.train_labels)
    at = math.floor(n * (1 - spec.training.validation.fraction))
    return arrays.train_images[at:n], arrays.train_labels[at:n]


@pytest.fixture(scope="session")
def keras_validation():
    return _keras_validation
