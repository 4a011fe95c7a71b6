"""training.py in process: what a run records, against figures computed apart from it.

The CLI tests drive `mnistlab train` in subprocesses (real signals, real full disks); these
call `mnistlab.train` directly, so mutation testing sees which lines they reach.
"""

import dataclasses
import errno
import json
import math
import time

import numpy as np
import pytest

import mnistlab
from mnistlab import data, errors, runs
from mnistlab import spec as spec_lib
from mnistlab.errors import UserError

SPEC = {
    "name": "t", "dataset": "mnist",
    "model": {"layers": [{"type": "dense", "units": 32, "activation": "relu"},
                         {"type": "dense", "units": 10, "activation": "softmax"}]},
    "optimizer": {"name": "adam", "learning_rate": 3e-3},
    "training": {"epochs": 2, "batch_size": 50, "subset": 2000, "seed": 0, "validation": {"fraction": 0.25}},
}


def spec(**training) -> spec_lib.RunSpec:
    return spec_lib.from_dict({**SPEC, "training": {**SPEC["training"], **training}})


@pytest.fixture(scope="module")
def mnist(mnist_root) -> data.Arrays:
    return data.load("mnist", mnist_root)


def numpy_test_figures(params, images, labels) -> tuple[float, float]:
    """Cross-entropy and accuracy of the 784-32-10 network, in float64 NumPy."""
    x = images.reshape(len(images), -1).astype(np.float64) / 255
    h = np.maximum(x @ params["dense/kernel"] + params["dense/bias"], 0)
    z = h @ params["dense_1/kernel"] + params["dense_1/bias"]
    z -= z.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean()), float(np.mean(z.argmax(1) == labels))


def test_a_run_records_what_it_trained(mnist, tmp_path):
    heard, progress = [], []
    before = time.perf_counter()
    result = mnistlab.train(spec(), runs_dir=tmp_path, test=True, arrays=mnist, on_epoch=heard.append,
                            on_progress=progress.append)
    took = time.perf_counter() - before
    assert result.status == "completed" and [r["epoch"] for r in result.history] == [1, 2]
    assert heard == result.history  # every finished epoch, as it finished
    # and progress within each: 1,500 images in batches of 50 are 30 steps an epoch
    for epoch in (1, 2):
        steps = [(p.steps_done, p.steps_total) for p in progress if p.epoch == epoch]
        assert steps[-1] == (30, 30) and all(a < b for (a, _), (b, _) in zip(steps, steps[1:]))
    run = runs.open_run(result.run_dir)
    assert run.metrics == result.history and run.summary == json.loads(json.dumps(result.summary))
    s = run.summary
    assert (s["status"], s["epochs_completed"], s["epochs_requested"]) == ("completed", 2, 2)
    assert (s["train_samples"], s["validation_samples"]) == (1500, 500)  # 2000, the last quarter held out
    val_losses = [r["val_loss"] for r in result.history]
    assert s["best_epoch"] == 1 + val_losses.index(min(val_losses))  # with validation, val_loss decides
    assert s["final"] == result.history[-1] and s["data_source"] == str(mnist.source)
    assert took >= s["wall_seconds"] >= s["train_seconds"] == pytest.approx(sum(s["seconds_per_epoch"]))
    assert s["compile_seconds"] >= 0 and "interrupted_by" not in s
    # The test figures are the saved weights' own, on all 10,000 test images.
    loss, accuracy = numpy_test_figures(run.params(), mnist.test_images, mnist.test_labels)
    assert s["test"]["samples"] == 10_000
    assert s["test"]["accuracy"] == pytest.approx(accuracy, abs=1.5e-4)  # a prediction or so of float32
    assert s["test"]["loss"] == pytest.approx(loss, rel=1e-4)
    assert s["evaluations"] == [{"split": "test", **s["test"]}]
    assert s["weights_sha256"] == runs.tensors_digest(run.params())


def test_the_best_epoch_follows_val_loss_when_there_is_validation(mnist):
    # 100 images, 8 epochs: the training loss falls every epoch, the validation loss turns.
    overfitting = spec_lib.with_values(spec(subset=200, epochs=8, batch_size=20, validation={"fraction": 0.5}),
                                       {"optimizer.learning_rate": 0.03})
    result = mnistlab.train(overfitting, runs_dir=None, arrays=mnist)
    val_losses, losses = [r["val_loss"] for r in result.history], [r["loss"] for r in result.history]
    best = 1 + val_losses.index(min(val_losses))
    assert best < 1 + losses.index(min(losses)) == 8
    assert result.summary["best_epoch"] == best


def test_without_test_the_test_set_is_never_read(mnist):
    # The arrays given are what trains (1,200 images, no subset asked), and their test set
    # cannot be read: touching it would raise.
    blind = dataclasses.replace(mnist, train_images=mnist.train_images[:1200], train_labels=mnist.train_labels[:1200],
                                test_images=None, test_labels=None)
    result = mnistlab.train(spec(subset=None, validation={"fraction": 0.0}), runs_dir=None, arrays=blind)
    assert result.status == "completed" and result.run_dir is None
    assert result.summary["train_samples"] == 1200
    assert "test" not in result.summary and "evaluations" not in result.summary
    assert result.summary["validation_samples"] == 0 and "val_loss" not in result.history[-1]
    losses = [r["loss"] for r in result.history]
    assert result.summary["best_epoch"] == 1 + losses.index(min(losses))  # no validation: the loss decides


@pytest.mark.parametrize("stop, said", [(KeyboardInterrupt, "SIGINT"), (errors.Terminated, "SIGTERM")])
def test_an_interrupted_run_keeps_its_finished_epochs(stop, said, mnist, tmp_path):
    def interrupt_after_two(record):
        if record["epoch"] == 2:
            raise stop()

    result = mnistlab.train(spec(epochs=4), runs_dir=tmp_path / "stopped", test=True, arrays=mnist,
                            on_epoch=interrupt_after_two)
    assert result.status == "interrupted" and len(result.history) == 2
    run = runs.open_run(result.run_dir)
    assert run.summary["interrupted_by"] == said and run.summary["epochs_completed"] == 2
    assert "test" not in run.summary  # an unfinished run is not tested
    # Its weights are those of two epochs, as a two-epoch run trains them.
    two = runs.open_run(mnistlab.train(spec(epochs=2), runs_dir=tmp_path / "two", arrays=mnist).run_dir)
    for name, value in two.params().items():
        np.testing.assert_array_equal(run.params()[name], value)
    timeless = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]  # noqa: E731
    assert run.metrics == result.history and timeless(run.metrics) == timeless(two.metrics)


def test_runs_are_recorded_under_runs_by_default(mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = mnistlab.train(spec(epochs=1), arrays=mnist)
    assert result.run_dir.resolve().parent == tmp_path / "runs" and runs.open_run(result.run_dir).status == "completed"


def test_without_arrays_the_dataset_is_read_from_data_dir(mnist_root, tmp_path, monkeypatch):
    # Nowhere else to find it: MNISTLAB_DATA and the cache empty, the only mirror refusing.
    monkeypatch.setenv("MNISTLAB_DATA", str(tmp_path))
    monkeypatch.setenv("MNISTLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("MNISTLAB_MIRRORS", "http://127.0.0.1:9/")
    result = mnistlab.train(spec(epochs=1), data_dir=mnist_root, runs_dir=None)
    assert result.status == "completed" and result.summary["data_source"] == str(mnist_root / "mnist")


def test_a_diverged_run_writes_no_weights(mnist, tmp_path):
    # SGD at learning rate 1e3 with l2(0.01) multiplies the kernel by about 1 - 2 * 1e3 * 0.01
    # = -19 a step: it overflows within an epoch.
    diverging = spec_lib.with_values(spec(), {"optimizer.name": "sgd", "optimizer.learning_rate": 1e3,
                                              "model.layers.0.kernel_regularizer": {"l2": 0.01}})
    result = mnistlab.train(diverging, runs_dir=tmp_path, test=True, arrays=mnist)
    assert result.status == "diverged"
    summary = runs.open_run(result.run_dir).summary
    assert summary["diverged_at_epoch"] == len(result.history) and "weights_sha256" not in summary
    assert "test" not in summary and not (result.run_dir / runs.WEIGHTS).exists()
    assert not math.isfinite(result.history[-1]["loss"])


def test_a_run_folder_that_stops_taking_writes_keeps_the_result_elsewhere(mnist, tmp_path, monkeypatch):
    save = runs.save_weights

    def disk_full_under_runs(path, params, spec):
        if tmp_path in path.parents:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(path, params, spec)

    monkeypatch.setattr(runs, "save_weights", disk_full_under_runs)
    with pytest.raises(UserError, match=r"could not write the run \(No space left on device\); the trained "
                                        r"result is kept in (\S+) ") as err:
        mnistlab.train(spec(), runs_dir=tmp_path, arrays=mnist)
    kept = runs.open_run(err.value.args[0].split("kept in ")[1].split(" ")[0])
    (failed,) = tmp_path.iterdir()
    assert str(failed) in str(err.value)
    assert kept.status == "completed" and [r["epoch"] for r in kept.metrics] == [1, 2]
    assert kept.summary["weights_sha256"] == runs.tensors_digest(kept.params())


def test_a_run_folder_that_fails_while_training_stops_it_and_keeps_the_result(mnist, tmp_path, monkeypatch):
    write = runs.atomic_write

    def metrics_refused(path, text):
        if path.name == runs.METRICS and tmp_path in path.parents:
            raise OSError(errno.EROFS, "Read-only file system")
        return write(path, text)

    monkeypatch.setattr(runs, "atomic_write", metrics_refused)
    with pytest.raises(UserError, match=r"could not write the run \(Read-only file system\); the trained "
                                        r"result is kept in ") as err:
        mnistlab.train(spec(epochs=3), runs_dir=tmp_path, arrays=mnist)
    kept = runs.open_run(err.value.args[0].split("kept in ")[1].split(" ")[0])
    assert [r["epoch"] for r in kept.metrics] == [1]  # the first epoch's record was refused: training stopped
    assert kept.summary["weights_sha256"] == runs.tensors_digest(kept.params())
