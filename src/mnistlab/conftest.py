"""Shared test fixtures: where the real MNIST files are. And mutmut's mutant runs."""

import json
import math
import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def pytest_configure(config):
    # Here rather than in pyproject.toml: mutmut runs the tests from its copy in mutants/,
    # where only this file comes along.
    config.addinivalue_line("markers", "slow: starts processes or servers, or trains for seconds; "
                                       "left out of the inner loop (pytest -m 'not slow')")
    config.addinivalue_line("markers", "mnist: reads the real MNIST files (added to every test that "
                                       "asks for mnist_root)")


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The folder holding mnist/: $MNISTLAB_DATA, else ../shared/datasets beside the clone."""
    root = Path(os.environ.get("MNISTLAB_DATA") or REPO.parent / "shared" / "datasets")
    if not (root / "mnist").is_dir():
        pytest.fail(f"real MNIST not found under {root}: set MNISTLAB_DATA (CI: ../shared/datasets)")
    return root


@pytest.fixture(scope="session")
def synthetic():
    """A dataset made here, for tests of how things run rather than of what MNIST gives:
    ten classes of 28x28 uint8 images, each class a bright band of its own (rows 5c to
    5c + 4 for c < 5, columns 5(c - 5) to 5(c - 5) + 4 for the rest) on noise, which a small
    network tells apart within an epoch. 2,000 training and 500 test images, as MNIST's info."""
    import numpy as np

    from mnistlab import data

    rng = np.random.default_rng(0)

    def images(labels):
        x = rng.integers(0, 80, (len(labels), 28, 28))
        for i, c in enumerate(labels):
            band = slice(5 * (c % 5), 5 * (c % 5) + 5)
            if c < 5:
                x[i, band, :] += 160
            else:
                x[i, :, band] += 160
        return x.astype(np.uint8)

    train, test = rng.integers(0, 10, 2000).astype(np.uint8), rng.integers(0, 10, 500).astype(np.uint8)
    return data.Arrays(images(train), train, images(test), test, data.DATASETS["mnist"], Path("synthetic"))


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


# ------------------------------------------------------------------ mutation testing
#
# mutmut 3 (`make mutation`, docs/testing.md) runs each mutant's tests in a forked process
# with $MUTANT_UNDER_TEST naming the mutant ("mnistlab.optim.x_build__mutmut_3"). Had that
# process compiled a program before, the program would be reused and the mutated Python,
# which runs only while JAX traces, would never run: the mutant would survive.


def _mutant_under_test() -> str:
    name = os.environ.get("MUTANT_UNDER_TEST", "")
    return name if "__mutmut_" in name else ""


def pytest_sessionstart(session):
    """Under a mutant, start as a fresh process would: nothing compiled, nothing cached."""
    if "MUTANT_UNDER_TEST" not in os.environ:  # not run by mutmut
        return
    import jax
    from jax._src import xla_bridge

    # XLA's persistent cache, shared by every mutant's process: it is keyed by the program
    # itself, so a mutant that changes a traced function compiles its own program, and the
    # rest of its tests skip compilation (most of a mutant's time otherwise).
    jax.config.update("jax_compilation_cache_dir", str(Path(__file__).resolve().parents[2] / "xla-cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    if not _mutant_under_test():  # the stats and clean runs
        return

    from mnistlab import data, engine

    if xla_bridge.backends_are_initialized():
        # mutmut's process_isolation = "fork": forked from the process that ran the stats,
        # whose XLA threads did not come along. Measured: the mutant's first test hangs.
        warnings.warn("JAX ran in this process before the mutant's tests; forked, it deadlocks: "
                      'keep process_isolation = "forkserver" in [tool.mutmut] (pyproject.toml)')
    jax.clear_caches()  # jit's traces and compiled executables
    for cache in (engine._PROGRAMS, engine.COMPILATIONS, engine._LANES, engine._CONCURRENCY):
        cache.clear()  # compiled programs, and the measured lanes / concurrency choices
    data._digest.cache_clear()
    # A subprocess a test starts imports mnistlab from the mutated copy too, not from the
    # src/ that the editable install's .pth names; it inherits $MUTANT_UNDER_TEST.
    here = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))


def pytest_collection_modifyitems(config, items):
    """Mark the tests that read the real MNIST files; under a mutant, keep only the tests
    beside its module, quickest file first.

    A module's mutants are for its own tests to catch (engine's for engine_test.py, layers'
    for layers_test.py, layers_conv_test.py and layers_dense_test.py): a bug that only
    another module's tests notice is a test missing beside the code. It also keeps a survivor cheap: spec's
    validation is reached by 400 tests, minutes of training, and by 37 of spec_test.py's.
    Files run quickest first, each in its own order (a module's fixtures are built once
    only while its tests stay together); a mutant's run stops at its first failure."""
    for item in items:
        if "mnist_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mnist)
    module = _mutant_under_test().split(".")[1:2]
    if not module:
        return
    own = [item for item in items if item.path.name.startswith(f"{module[0]}_")]
    config.hook.pytest_deselected(items=[item for item in items if item not in own])
    stats = Path("mutmut-stats.json")  # mutmut runs the tests from mutants/
    seconds = json.loads(stats.read_text())["duration_by_test"] if stats.exists() else {}
    per_file: dict[str, float] = {}
    for item in own:
        per_file[item.path.name] = per_file.get(item.path.name, 0.0) + seconds.get(item.nodeid, 0.0)
    items[:] = sorted(own, key=lambda item: per_file[item.path.name])  # stable: each file keeps its order
