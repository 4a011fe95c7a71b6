"""training.py in process: what a run records, against figures computed apart from it.

The CLI tests drive `mnistlab train` in subprocesses (real signals, real full disks); these
call `mnistlab.train` directly, so mutation testing sees which lines they reach. Tests of
figures train on real MNIST; tests of how a run is kept take the `synthetic` dataset.
"""

import dataclasses
import errno
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import mnistlab
from mnistlab import data, errors, optim, runs, training
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


@pytest.mark.slow
def test_evaluate_splits_the_data_again_and_records_each_evaluation(mnist, mnist_root, tmp_path, monkeypatch):
    result = mnistlab.train(spec(epochs=1), runs_dir=tmp_path, arrays=mnist)
    # Nowhere else to find the dataset: MNISTLAB_DATA and the cache empty, the only mirror refusing.
    for name, value in (("MNISTLAB_DATA", tmp_path), ("MNISTLAB_CACHE", tmp_path), ("MNISTLAB_MIRRORS", "http://127.0.0.1:9/")):
        monkeypatch.setenv(name, str(value))
    validation = training.evaluate(result.run_dir, "validation", mnist_root)
    assert validation["samples"] == 500
    assert validation["loss"] == pytest.approx(result.history[-1]["val_loss"], rel=1e-5)
    assert validation["accuracy"] == result.history[-1]["val_accuracy"]
    assert training.evaluate(result.run_dir, "train", mnist_root)["samples"] == 1500
    test = training.evaluate(result.run_dir, data_dir=mnist_root)  # the test split by default
    run = runs.open_run(result.run_dir)
    loss, accuracy = numpy_test_figures(run.params(), mnist.test_images, mnist.test_labels)
    assert test["samples"] == 10_000 and test["loss"] == pytest.approx(loss, rel=1e-4)
    assert test["accuracy"] == pytest.approx(accuracy, abs=1.5e-4)
    evaluations = run.summary["evaluations"]
    assert [e["split"] for e in evaluations] == ["validation", "train", "test"]
    assert {k: v for k, v in evaluations[-1].items() if k != "split"} == run.summary["test"]
    assert {k: run.summary["test"][k] for k in test} == test
    with pytest.raises(UserError, match=r"^--split 'tset': expected test, validation or train$"):
        training.evaluate(result.run_dir, "tset", mnist_root)
    unvalidated = mnistlab.train(spec(epochs=1, validation={"fraction": 0.0}), runs_dir=tmp_path, arrays=mnist)
    with pytest.raises(UserError, match=r"this run has no validation data \(training.validation.fraction = 0\)$"):
        training.evaluate(unvalidated.run_dir, "validation", mnist_root)


def test_a_run_logs_its_epochs_where_log_asks(synthetic, tmp_path, monkeypatch):
    from mnistlab.tracking_test import scalars

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = mnistlab.train(spec(), runs_dir=tmp_path / "runs", arrays=synthetic, log=["tensorboard"])
    (logdir,) = (tmp_path / "tensorboard").iterdir()  # beside the runs folder, as `--log tensorboard` says
    assert scalars(logdir / "validation", "epoch_loss") == [(r["epoch"], r["val_loss"]) for r in result.history]
    assert not list((tmp_path / "elsewhere").iterdir())
    with pytest.raises(UserError, match="wandb"):  # a bad target fails before anything is written
        mnistlab.train(spec(), runs_dir=tmp_path / "more", arrays=synthetic, log=["wandb"])
    assert not (tmp_path / "more").exists()


def test_the_best_epoch_follows_val_loss_when_there_is_validation(mnist):
    # 100 images, 8 epochs: the training loss falls every epoch, the validation loss turns.
    overfitting = spec_lib.with_values(spec(subset=200, epochs=8, batch_size=20, validation={"fraction": 0.5}),
                                       {"optimizer.learning_rate": 0.03})
    result = mnistlab.train(overfitting, runs_dir=None, arrays=mnist)
    val_losses, losses = [r["val_loss"] for r in result.history], [r["loss"] for r in result.history]
    best = 1 + val_losses.index(min(val_losses))
    assert best < 1 + losses.index(min(losses)) == 8
    assert result.summary["best_epoch"] == best


def test_without_test_the_test_set_is_never_read(synthetic):
    # The arrays given are what trains (1,200 images, no subset asked), and their test set
    # cannot be read: touching it would raise.
    blind = dataclasses.replace(synthetic, train_images=synthetic.train_images[:1200],
                                train_labels=synthetic.train_labels[:1200], test_images=None, test_labels=None)
    result = mnistlab.train(spec(subset=None, validation={"fraction": 0.0}), runs_dir=None, arrays=blind)
    assert result.status == "completed" and result.run_dir is None
    assert result.summary["train_samples"] == 1200
    assert "test" not in result.summary and "evaluations" not in result.summary
    assert result.summary["validation_samples"] == 0 and "val_loss" not in result.history[-1]
    losses = [r["loss"] for r in result.history]
    assert result.summary["best_epoch"] == 1 + losses.index(min(losses))  # no validation: the loss decides


@pytest.mark.parametrize("stop, said", [(KeyboardInterrupt, "SIGINT"), (errors.Terminated, "SIGTERM")])
def test_an_interrupted_run_keeps_its_finished_epochs(stop, said, synthetic, tmp_path):
    def interrupt_after_two(record):
        if record["epoch"] == 2:
            raise stop()

    result = mnistlab.train(spec(epochs=4), runs_dir=tmp_path / "stopped", test=True, arrays=synthetic,
                            on_epoch=interrupt_after_two)
    assert result.status == "interrupted" and len(result.history) == 2
    run = runs.open_run(result.run_dir)
    assert run.summary["interrupted_by"] == said and run.summary["epochs_completed"] == 2
    assert "test" not in run.summary  # an unfinished run is not tested
    # Its weights are those of two epochs, as a two-epoch run trains them.
    two = runs.open_run(mnistlab.train(spec(epochs=2), runs_dir=tmp_path / "two", arrays=synthetic).run_dir)
    for name, value in two.params().items():
        np.testing.assert_array_equal(run.params()[name], value)
    timeless = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]  # noqa: E731
    assert run.metrics == result.history and timeless(run.metrics) == timeless(two.metrics)


def test_a_signal_between_an_epoch_and_its_record_keeps_the_run_at_what_it_recorded(synthetic, tmp_path,
                                                                                    monkeypatch):
    # SIGTERM can land after the driver has folded epoch 3 in but before the run wrote it:
    # the summary, the metrics and the weights must all stay at epoch 2 (measured on a fast
    # machine: the summary said 7 epochs where metrics.jsonl held 6).
    write = runs.RunWriter.log_epoch

    def terminated_before_the_third(self, record):
        if record["epoch"] == 3:
            raise errors.Terminated()
        write(self, record)

    monkeypatch.setattr(runs.RunWriter, "log_epoch", terminated_before_the_third)
    result = mnistlab.train(spec(epochs=4), runs_dir=tmp_path / "stopped", arrays=synthetic)
    monkeypatch.undo()
    run = runs.open_run(result.run_dir)
    assert result.status == "interrupted" and run.summary["interrupted_by"] == "SIGTERM"
    assert run.summary["epochs_completed"] == len(run.metrics) == len(result.history) == 2
    two = runs.open_run(mnistlab.train(spec(epochs=2), runs_dir=tmp_path / "two", arrays=synthetic).run_dir)
    for name, value in two.params().items():
        np.testing.assert_array_equal(run.params()[name], value)
    assert run.summary["best_epoch"] <= 2


def test_runs_are_recorded_under_runs_by_default(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = mnistlab.train(spec(epochs=1), arrays=synthetic)
    assert result.run_dir.resolve().parent == tmp_path / "runs" and runs.open_run(result.run_dir).status == "completed"


def test_without_arrays_the_dataset_is_read_from_data_dir(mnist_root, tmp_path, monkeypatch):
    # Nowhere else to find it: MNISTLAB_DATA and the cache empty, the only mirror refusing.
    monkeypatch.setenv("MNISTLAB_DATA", str(tmp_path))
    monkeypatch.setenv("MNISTLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("MNISTLAB_MIRRORS", "http://127.0.0.1:9/")
    result = mnistlab.train(spec(epochs=1), data_dir=mnist_root, runs_dir=None)
    assert result.status == "completed" and result.summary["data_source"] == str(mnist_root / "mnist")


@pytest.mark.slow
def test_a_run_from_python_keeps_its_compiled_programs_for_the_next_process(mnist_root, tmp_path):
    # `import mnistlab` turns on JAX's persistent cache, as the command line does: the
    # first process writes its programs, the second finds every one of them there.
    program = (f"import mnistlab; from mnistlab import spec; "
               f"mnistlab.train(spec.from_dict({json.dumps(SPEC)}), data_dir={str(mnist_root)!r}, runs_dir=None)")
    env = {**os.environ, "MNISTLAB_CACHE": str(tmp_path)}
    env.pop("MNISTLAB_COMPILE_CACHE", None)
    cached = []
    for _ in range(2):
        subprocess.run([sys.executable, "-c", program], env=env, check=True, timeout=300)
        cached.append({p.name: p.stat().st_mtime_ns for p in (tmp_path / "xla").iterdir()})
    # The second process read the first's programs and wrote none of them again. (It may add
    # one: a program compiled near the 0.1 s threshold is kept by one process, not another.)
    assert cached[0] and all(cached[1].get(name) == written for name, written in cached[0].items())
    subprocess.run([sys.executable, "-c", program], env={**env, "MNISTLAB_CACHE": str(tmp_path / "off"),
                                                          "MNISTLAB_COMPILE_CACHE": "0"}, check=True, timeout=300)
    assert not (tmp_path / "off" / "xla").exists()


def test_a_network_the_machine_cannot_hold_is_refused_before_its_folder(synthetic, tmp_path):
    units = 100_000_000  # 78 billion weights: more than any machine's memory
    huge = spec_lib.from_dict({**SPEC, "model": {"layers": [
        {"type": "dense", "units": units, "activation": "relu"},
        {"type": "dense", "units": 10, "activation": "softmax"}]}})
    with pytest.raises(UserError) as refused:
        mnistlab.train(huge, runs_dir=tmp_path / "runs", arrays=synthetic)
    weights = 784 * units + units + units * 10 + 10
    assert "t: one member needs about " in str(refused.value)
    assert f"({weights:,} weights; model.layers.0 holds {784 * units:,} of them)" in str(refused.value)
    assert not (tmp_path / "runs").exists()


def test_a_diverged_run_writes_no_weights(synthetic, tmp_path):
    # SGD at learning rate 1e3 with l2(0.01) multiplies the kernel by about 1 - 2 * 1e3 * 0.01
    # = -19 a step: it overflows within an epoch.
    diverging = spec_lib.with_values(spec(), {"optimizer.name": "sgd", "optimizer.learning_rate": 1e3,
                                              "model.layers.0.kernel_regularizer": {"l2": 0.01}})
    result = mnistlab.train(diverging, runs_dir=tmp_path, test=True, arrays=synthetic)
    assert result.status == "diverged"
    summary = runs.open_run(result.run_dir).summary
    assert summary["diverged_at_epoch"] == len(result.history) and "weights_sha256" not in summary
    assert "test" not in summary and not (result.run_dir / runs.WEIGHTS).exists()
    assert not math.isfinite(result.history[-1]["loss"])


def test_a_run_folder_that_stops_taking_writes_keeps_the_result_elsewhere(synthetic, tmp_path, monkeypatch):
    save = runs.save_weights

    def disk_full_under_runs(path, params, spec):
        if tmp_path in path.parents:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(path, params, spec)

    monkeypatch.setattr(runs, "save_weights", disk_full_under_runs)
    with pytest.raises(UserError, match=r"could not write the run \(No space left on device\); the trained "
                                        r"result is kept in (\S+) ") as err:
        mnistlab.train(spec(), runs_dir=tmp_path, arrays=synthetic)
    kept = runs.open_run(err.value.args[0].split("kept in ")[1].split(" ")[0])
    (failed,) = tmp_path.iterdir()
    assert str(failed) in str(err.value)
    assert kept.status == "completed" and [r["epoch"] for r in kept.metrics] == [1, 2]
    assert kept.summary["weights_sha256"] == runs.tensors_digest(kept.params())


def test_a_run_folder_that_fails_while_training_stops_it_and_keeps_the_result(synthetic, tmp_path, monkeypatch):
    write = runs.atomic_write

    def metrics_refused(path, text):
        if path.name == runs.METRICS and tmp_path in path.parents:
            raise OSError(errno.EROFS, "Read-only file system")
        return write(path, text)

    monkeypatch.setattr(runs, "atomic_write", metrics_refused)
    with pytest.raises(UserError, match=r"could not write the run \(Read-only file system\); the trained "
                                        r"result is kept in ") as err:
        mnistlab.train(spec(epochs=3), runs_dir=tmp_path, arrays=synthetic)
    kept = runs.open_run(err.value.args[0].split("kept in ")[1].split(" ")[0])
    assert [r["epoch"] for r in kept.metrics] == [1]  # the first epoch's record was refused: training stopped
    assert kept.summary["weights_sha256"] == runs.tensors_digest(kept.params())


# ------------------------------------------------------------------ Keras' training controls


def timeless(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def keras_stop(values, patience, min_delta, minimize):
    """By hand, Keras' EarlyStopping without baseline or start_from_epoch: the 1-based epoch at
    which `patience` epochs have gone by since the last improvement by more than |min_delta|
    (None: training runs to its end)."""
    best_epoch, best = 0, None
    for epoch, value in enumerate(values):
        gain = (best - value if minimize else value - best) if best is not None else math.inf
        if gain > abs(min_delta):
            best_epoch, best = epoch, value
        elif epoch - best_epoch >= patience:
            return epoch + 1
    return None


@pytest.fixture(scope="module")
def ten_epochs(synthetic):
    """An uninterrupted, unstopped run of `spec(epochs=10)`, to hold the stopped ones against."""
    return mnistlab.train(spec(epochs=10), runs_dir=None, arrays=synthetic, verbose=0)


@pytest.mark.parametrize("stopping", [
    {"patience": 1},
    {"patience": 2, "min_delta": 0.02},
    {"patience": 0, "min_delta": -0.005},
    {"monitor": "val_accuracy", "patience": 1},
    {"monitor": "accuracy", "patience": 2, "min_delta": 0.001},
    {"monitor": "loss", "patience": 1, "min_delta": 0.01, "mode": "min"},
])
def test_early_stopping_stops_where_keras_rule_says(stopping, synthetic, ten_epochs):
    settings = spec_lib.EarlyStopping(**stopping)
    result = mnistlab.train(spec(epochs=10, early_stopping=stopping), runs_dir=None, arrays=synthetic, verbose=0)
    values = [r[settings.monitor] for r in ten_epochs.history]
    stop = keras_stop(values, settings.patience, settings.min_delta, settings.monitor.endswith("loss"))
    assert len(result.history) == (stop or 10)
    assert result.status == ("stopped" if stop else "completed")
    # Stopping changes nothing else: the epochs trained are the unstopped run's.
    assert timeless(result.history) == timeless(ten_epochs.history[:len(result.history)])
    said = result.summary["early_stopping"]
    assert said["stopped_epoch"] == stop and said["monitor"] == settings.monitor


def test_early_stopping_stops_in_some_of_these_cases(ten_epochs):
    # The cases above are worth having only if some stop before the end and some do not.
    losses = [r["val_loss"] for r in ten_epochs.history]
    assert keras_stop(losses, 2, 0.02, True) is not None and keras_stop(losses, 0, 0.0, True) is None


def test_restore_best_weights_keeps_the_best_epoch_as_a_run_of_that_length_trains_it(synthetic, tmp_path):
    stopping = {"patience": 2, "min_delta": 0.02, "restore_best_weights": True}
    result = mnistlab.train(spec(epochs=10, early_stopping=stopping), runs_dir=tmp_path / "a", arrays=synthetic,
                            test=True, verbose=0)
    said = result.summary["early_stopping"]
    best = said["weights_from_epoch"]
    assert result.status == "stopped" and best == said["best_epoch"] == said["stopped_epoch"] - 2
    losses = [r["val_loss"] for r in result.history]
    assert best == 1 + losses.index(min(losses[:best]))
    alone = mnistlab.train(spec(epochs=best), runs_dir=tmp_path / "b", arrays=synthetic, test=True, verbose=0)
    kept, trained = runs.open_run(result.run_dir).params(), runs.open_run(alone.run_dir).params()
    for name, value in trained.items():
        np.testing.assert_array_equal(kept[name], value)
    # The test figures are those of the weights kept.
    assert result.summary["test"]["accuracy"] == pytest.approx(alone.summary["test"]["accuracy"], abs=1e-6)
    assert result.summary["test"]["loss"] == pytest.approx(alone.summary["test"]["loss"], rel=1e-5)


def test_early_stopping_on_validation_needs_validation_data():
    with pytest.raises(UserError, match="early_stopping.monitor = 'val_loss' needs validation data"):
        spec(validation={"fraction": 0.0}, early_stopping={"patience": 1})
    with pytest.raises(UserError, match="patience"):
        spec(early_stopping={"patience": -1})


def test_early_stopping_is_reachable_with_set():
    made = spec_lib.with_overrides(spec(), ["training.early_stopping.patience=3",
                                            "training.early_stopping.restore_best_weights=true"])
    assert made.training.early_stopping == spec_lib.EarlyStopping(patience=3, restore_best_weights=True)
    assert made.resolved()["training"]["early_stopping"]["monitor"] == "val_loss"  # Keras' default, written out


class StopAfter(mnistlab.Callback):
    def __init__(self, epochs):
        self.epochs, self.heard, self.begun, self.ended = epochs, [], False, None

    def on_train_begin(self, logs=None):
        self.begun = logs  # Keras passes {}: nothing measured yet

    def on_epoch_end(self, epoch, logs=None):
        self.heard.append((epoch, dict(logs)))
        if epoch + 1 == self.epochs:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.ended = logs


@pytest.mark.parametrize("k", [1, 3])
def test_a_callback_that_stops_at_epoch_k_leaves_k_epochs(k, synthetic, tmp_path):
    stopper = StopAfter(k)
    result = mnistlab.train(spec(epochs=5), runs_dir=tmp_path, arrays=synthetic, callbacks=[stopper], verbose=0)
    assert result.status == "stopped" and len(result.history) == k
    assert runs.open_run(result.run_dir).summary["epochs_completed"] == k
    assert len(runs.open_run(result.run_dir).metrics) == k
    # Keras' arguments: 0-based epochs, the log names Keras uses, the figures recorded.
    assert [e for e, _ in stopper.heard] == list(range(k)) == result.epoch
    assert all(set(logs) == {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
               for _, logs in stopper.heard)
    assert [logs["val_loss"] for _, logs in stopper.heard] == result.history["val_loss"]
    assert stopper.begun == {} and stopper.ended == stopper.heard[-1][1]


def test_a_plain_object_returning_true_stops_too(synthetic):
    class Enough:  # no base class: any object with on_epoch_end will do
        def on_epoch_end(self, epoch, logs):
            return logs["val_accuracy"] >= 0.0 and epoch == 1

    result = mnistlab.train(spec(epochs=4), runs_dir=None, arrays=synthetic, callbacks=[Enough()], verbose=0)
    assert result.status == "stopped" and result.epoch == [0, 1]


def test_history_is_the_records_and_keras_history(ten_epochs):
    history = ten_epochs.history
    assert isinstance(history, list) and history[-1]["epoch"] == 10  # the records, as always
    assert set(history.history) == set(history.keys()) == {"loss", "accuracy", "val_loss", "val_accuracy",
                                                            "learning_rate"}
    for name, values in history.history.items():
        assert values == [r[name] for r in history] == history[name]
    assert history.epoch == ten_epochs.epoch == list(range(10))
    with pytest.raises(KeyError) as caught:
        history["val_acc"]
    assert caught.value.args == ("'val_acc': this run logged loss, accuracy, val_loss, val_accuracy, learning_rate",)
    with pytest.raises(KeyError) as caught:
        training.History()["loss"]
    assert caught.value.args == ("'loss': this run logged no epochs",)
    assert json.loads(json.dumps(history)) == list(history)


@pytest.mark.parametrize("verbose", [0, 1, 2, "auto"])
def test_verbose_prints_as_keras(verbose, synthetic, capsys):
    mnistlab.train(spec(epochs=3), runs_dir=None, arrays=synthetic, verbose=verbose)
    out = capsys.readouterr().out
    if verbose == 0:
        assert out == ""
        return
    lines = out.split("\n")
    assert lines[-1] == ""  # every epoch's line ends
    finals = [line.rsplit("\r", 1)[-1] for line in lines[:-1]]
    assert [line.split(" - ")[0] for line in finals] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    assert all("val_loss: " in line and "accuracy: " in line for line in finals)
    bars = out.count("\r")
    assert (bars >= 6) if verbose in (1, "auto") else bars == 0  # 1: a bar updated over each epoch


def test_an_unknown_verbose_is_refused_before_training(synthetic, tmp_path):
    with pytest.raises(UserError) as caught:
        mnistlab.train(spec(), runs_dir=tmp_path, arrays=synthetic, verbose=3)
    assert str(caught.value) == ("verbose = 3: expected 0 (silent), 1 (a progress bar) or 2 (one line per epoch), "
                                 "or 'auto' (1), as Keras")
    assert not list(tmp_path.iterdir())


def test_an_interrupted_run_resumes_to_the_numbers_of_an_uninterrupted_one(synthetic, tmp_path):
    stopping = {"patience": 3, "restore_best_weights": True, "monitor": "val_accuracy"}

    def interrupt_after_three(record):
        if record["epoch"] == 3:
            raise KeyboardInterrupt

    whole = mnistlab.train(spec(epochs=6, early_stopping=stopping), runs_dir=tmp_path / "whole", arrays=synthetic,
                           test=True, verbose=0)
    cut = mnistlab.train(spec(epochs=6, early_stopping=stopping), runs_dir=tmp_path / "cut", arrays=synthetic,
                         test=True, on_epoch=interrupt_after_three, verbose=0)
    assert cut.status == "interrupted" and (cut.run_dir / "progress.json").exists()
    done = mnistlab.resume(cut.run_dir, arrays=synthetic, verbose=0)  # tested as it was asked at the start
    assert done.status == whole.status and done.run_dir == cut.run_dir
    assert timeless(done.history) == timeless(whole.history) == timeless(runs.open_run(cut.run_dir).metrics)
    assert done.summary["test"] == pytest.approx(whole.summary["test"])
    assert done.summary["early_stopping"] == whole.summary["early_stopping"]
    # Stopped inside epoch 3's hooks, before its checkpoint: epoch 3 is trained again, to the same numbers.
    assert done.summary["resumed_after_epoch"] == 2
    kept, trained = runs.open_run(cut.run_dir).params(), runs.open_run(whole.run_dir).params()
    for name, value in trained.items():
        np.testing.assert_array_equal(kept[name], value)
    assert not (cut.run_dir / "progress.json").exists() and not (cut.run_dir / "checkpoints").exists()
    with pytest.raises(UserError, match="this run is finished"):
        mnistlab.resume(cut.run_dir, arrays=synthetic)


def test_resume_names_what_it_cannot_resume(tmp_path):
    with pytest.raises(UserError, match="not a run folder"):
        mnistlab.resume(tmp_path)


@pytest.mark.slow  # a real process, killed
def test_a_run_killed_with_sigkill_resumes_to_the_same_numbers(mnist_root, mnist, tmp_path):
    sets = ["training.subset=6000", "training.epochs=30", "training.validation_split=0.2", "model.layers.0.units=128"]
    env = {**os.environ, "MNISTLAB_DATA": str(mnist_root)}
    command = [sys.executable, "-m", "mnistlab", "train", "--preset", "seed", "-q",
               "--runs-dir", str(tmp_path / "runs")]
    proc = subprocess.Popen([*command, *(a for s in sets for a in ("--set", s))], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    metrics = lambda: list(tmp_path.glob(f"runs/*/{runs.METRICS}"))  # noqa: E731
    while time.monotonic() < deadline and not (metrics() and len(metrics()[0].read_text().splitlines()) >= 2):
        assert proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run,) = (tmp_path / "runs").iterdir()
    assert runs.open_run(run).status == runs.KILLED and len(runs.open_run(run).metrics) < 30
    done = subprocess.run([*command[:4], "--resume", str(run), "-q"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    whole = mnistlab.train(spec_lib.from_source(None, "seed", sets), runs_dir=tmp_path / "whole", arrays=mnist,
                           verbose=0)
    resumed, uninterrupted = runs.open_run(run), runs.open_run(whole.run_dir)
    assert resumed.status == "completed" and resumed.summary["resumed_after_epoch"] >= 1
    assert timeless(resumed.metrics) == timeless(uninterrupted.metrics)
    for name, value in uninterrupted.params().items():
        np.testing.assert_array_equal(resumed.params()[name], value)
    refused = subprocess.run([*command[:4], "--resume", str(run), "--preset", "seed"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2 and "give no CONFIG, --preset or --set" in refused.stderr


def test_the_command_line_sets_early_stopping_and_says_where_it_stopped(mnist_root, tmp_path, capsys, monkeypatch):
    from mnistlab import cli

    # min_delta 1.0: no epoch after the first improves on it, so patience 1 stops after epoch 2.
    monkeypatch.setenv("MNISTLAB_DATA", str(mnist_root))
    monkeypatch.setattr(sys, "argv", ["mnistlab", "train", "--preset", "fast", "-q", "--runs-dir", str(tmp_path),
                                      *(a for item in ("training.subset=2000", "training.epochs=5",
                                                    "training.validation_split=0.2",
                                                    "training.early_stopping.patience=1",
                                                    "training.early_stopping.min_delta=1.0",
                                                    "training.early_stopping.restore_best_weights=true")
                                        for a in ("--set", item))])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out = capsys.readouterr().out
    assert (exit_.value.code or 0) == 0
    assert "early stopping: stopped after epoch 2, val_loss best at epoch 1; the run keeps epoch 1's weights" in out
    (run,) = tmp_path.iterdir()
    assert runs.open_run(run).summary["status"] == "stopped" and len(runs.open_run(run).metrics) == 2


def test_a_run_with_validation_data_records_its_calibration_and_one_without_none(mnist, tmp_path):
    from mnistlab import calibration, model, novelty

    result = mnistlab.train(spec(), arrays=mnist, runs_dir=tmp_path, verbose=0)
    # Keras' validation_split: the last quarter of the 2,000 images; the logits of the saved weights.
    images, labels = mnist.train_images[1500:2000], mnist.train_labels[1500:2000]
    logits = np.asarray(model.logits(spec().model, runs.open_run(result.run_dir).params(), {}, images))
    expected = calibration.fit(logits, labels).as_dict()
    recorded = json.loads((result.run_dir / runs.SUMMARY).read_text())["calibration"]
    found = recorded.pop("novelty")  # what is not a digit, fitted on the same images and logits
    assert recorded == pytest.approx(expected, rel=1e-3) and recorded["samples"] == 500
    fitted = novelty.fit(images, logits).as_dict()
    assert found["limits"].keys() == fitted["limits"].keys() and found["samples"] == 500
    for k, table in fitted["limits"].items():
        assert found["limits"][k] == pytest.approx(table, rel=1e-4, abs=1e-4), k
    assert found["threshold"] == pytest.approx(fitted["threshold"], rel=1e-4)
    assert recorded["temperature"] != 1.0 and recorded["ece_after"] <= recorded["ece_before"]
    alone = mnistlab.train(spec(validation={"fraction": 0.0}), arrays=mnist, runs_dir=None, verbose=0)
    assert "calibration" not in alone.summary  # nothing to fit it on


def test_resume_refuses_a_run_in_training_a_finished_one_and_one_without_checkpoints(synthetic, tmp_path):
    refused = []

    def resume_while_training(record):
        if record["epoch"] == 1:
            (folder,) = (tmp_path / "running").iterdir()
            with pytest.raises(UserError) as caught:
                mnistlab.resume(folder, arrays=synthetic)
            refused.append(str(caught.value))

    mnistlab.train(spec(), runs_dir=tmp_path / "running", arrays=synthetic, on_epoch=resume_while_training, verbose=0)
    (message,) = refused
    assert f"still training (process {os.getpid()} on " in message
    assert message.endswith("; resume it once that process has stopped")

    finished = mnistlab.train(spec(), runs_dir=tmp_path / "finished", arrays=synthetic, verbose=0)
    with pytest.raises(UserError) as caught:
        mnistlab.resume(finished.run_dir, arrays=synthetic)
    assert str(caught.value) == (f"{finished.run_dir}: this run is finished ({runs.open_run(finished.run_dir).describe()}); "
                                 "nothing to resume. "
                                 "Train a new one to train longer.")

    def interrupt(record):
        raise KeyboardInterrupt

    cut = mnistlab.train(spec(), runs_dir=tmp_path / "cut", arrays=synthetic, on_epoch=interrupt, verbose=0)
    (cut.run_dir / "progress.json").unlink(missing_ok=True)  # as a run of an earlier mnistlab
    with pytest.raises(UserError) as caught:
        mnistlab.resume(cut.run_dir, arrays=synthetic)
    assert str(caught.value) == (
        f"{cut.run_dir}: this run has no checkpoints to continue from ({runs.open_run(cut.run_dir).describe()}; "
        "recorded by an earlier mnistlab, or stopped before its first epoch): train it again")


def test_resume_hands_on_what_it_is_given(mnist_root, synthetic, tmp_path, monkeypatch, capsys):
    # The data folder (no arrays given: MNIST read from `data_dir`, the environment's folder
    # empty), the test decision (asked at the start, declined now), the hooks, and Keras'
    # default verbosity: an epoch line for each epoch it trains.
    def interrupt_in_the_second(record):
        if record["epoch"] == 2:  # in its hooks, before its checkpoint: resumed after the first
            raise KeyboardInterrupt

    cut = mnistlab.train(spec(epochs=3), runs_dir=tmp_path, arrays=synthetic, test=True, on_epoch=interrupt_in_the_second,
                         verbose=0)
    monkeypatch.setenv("MNISTLAB_DATA", str(tmp_path / "empty"))
    epochs, progress = [], []
    done = mnistlab.resume(cut.run_dir, data_dir=mnist_root, test=False, on_epoch=lambda r: epochs.append(r["epoch"]),
                           on_progress=progress.append)
    assert done.status == "completed" and "test" not in done.summary
    assert epochs == [2, 3] and progress
    finals = [line.split(" - ")[0] for line in capsys.readouterr().out.splitlines() if " - loss: " in line]
    assert finals == ["Epoch 2/3", "Epoch 3/3"]


def test_an_epoch_line_reads_as_keras_prints_it():
    record = {"epoch": 3, "seconds": 1.5234, "loss": 0.231049, "accuracy": 0.9, "val_loss": 0.30004,
              "val_accuracy": 0.91237, "learning_rate": 0.00125}
    assert training.keras_line(record, 20) == ("Epoch 3/20 - 1.52s - loss: 0.2310 - accuracy: 0.9000 - "
                                               "val_loss: 0.3000 - val_accuracy: 0.9124 - learning_rate: 0.00125")
    without_validation = {k: v for k, v in record.items() if not k.startswith("val_")}
    assert training.keras_line(without_validation, 20) == ("Epoch 3/20 - 1.52s - loss: 0.2310 - accuracy: 0.9000 - "
                                                           "learning_rate: 0.00125")


def test_the_progress_bar_fills_in_thirtieths_of_the_epoch():
    import io

    from mnistlab import engine

    out = io.StringIO()
    printer = training.Printer(1, 4, stream=out)
    for done in (0, 7, 13, 20):  # 30 * 7 // 20 = 10, 30 * 13 // 20 = 19
        printer.progress(engine.Progress(epoch=2, steps_done=done, steps_total=20))
    assert out.getvalue().split("\r")[1:] == [
        "Epoch 2/4 0/20 [" + "." * 30 + "]", "Epoch 2/4 7/20 [" + "=" * 10 + "." * 20 + "]",
        "Epoch 2/4 13/20 [" + "=" * 19 + "." * 11 + "]", "Epoch 2/4 20/20 [" + "=" * 30 + "]"]
    printer.progress(engine.Progress(epoch=3, steps_done=1, steps_total=1))  # an epoch of one batch
    assert out.getvalue().endswith("\rEpoch 3/4 1/1 [" + "=" * 30 + "]")


@pytest.mark.parametrize("dataset, flags_non_digits", [("mnist", True), ("fashion-mnist", False)])
def test_only_a_network_of_the_ten_digits_learns_what_is_not_a_digit(dataset, flags_non_digits):
    from mnistlab import model

    run_spec = spec_lib.with_values(spec(), {"dataset": dataset})
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    labels = np.arange(40) % 10
    found = training.calibrate(run_spec, model.init(run_spec.model, 0, (28, 28)), images, labels)
    assert "temperature" in found and ("novelty" in found) == flags_non_digits


def test_callbacks_are_handed_the_model_as_keras_does(synthetic):
    # Keras calls `set_model` where a callback has one (a subclass may do more in it), and a
    # plain object is given `.model`: either way, the run's model with its specification.
    class Attaching(mnistlab.Callback):
        def set_model(self, model):
            self.attached = model

    class Plain:
        def on_epoch_end(self, epoch, logs):
            return None

    attaching, plain = Attaching(), Plain()
    run_spec = spec(epochs=1)
    mnistlab.train(run_spec, runs_dir=None, arrays=synthetic, callbacks=[attaching, plain], verbose=0)
    assert isinstance(attaching.attached, training.TrainingModel) and attaching.attached.spec == run_spec
    assert attaching.model is None  # what set_model did was its own business
    assert isinstance(plain.model, training.TrainingModel) and plain.model.spec == run_spec


def test_weight_histograms_are_of_the_weights_each_epoch_ends_with(synthetic, tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    result = mnistlab.train(spec(epochs=2), runs_dir=tmp_path / "runs", arrays=synthetic, verbose=0,
                            log=[f"tensorboard+histograms:{tmp_path / 'tb'}"])
    (logdir,) = (tmp_path / "tb").iterdir()
    found = event_accumulator.EventAccumulator(str(logdir / "train"), size_guidance={event_accumulator.HISTOGRAMS: 0})
    found.Reload()
    for name, value in runs.open_run(result.run_dir).params().items():  # the weights the run kept: epoch 2's
        assert [e.step for e in found.Histograms(f"{name}/histogram")] == [1, 2]
        last = found.Histograms(f"{name}/histogram")[-1].histogram_value
        assert (last.num, last.min, last.max) == (value.size, float(value.min()), float(value.max()))


def test_a_checkpoint_that_does_not_say_whether_to_test_resumes_untested(synthetic, tmp_path):
    # Checkpoints of an earlier mnistlab did not record the test decision: resumed as asked
    # by default (not tested), never tested by surprise.
    def interrupt_in_the_second(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    cut = mnistlab.train(spec(epochs=3), runs_dir=tmp_path, arrays=synthetic, test=True,
                         on_epoch=interrupt_in_the_second, verbose=0)
    progress = json.loads((cut.run_dir / "progress.json").read_text())
    progress.pop(training.RunCheckpoints.TEST)
    (cut.run_dir / "progress.json").write_text(json.dumps(progress))
    done = mnistlab.resume(cut.run_dir, arrays=synthetic, verbose=0)
    assert done.status == "completed" and "test" not in done.summary


def test_a_run_that_ends_without_stopping_still_restores_its_best_weights(synthetic, tmp_path):
    # Keras 3 sets the best weights back at the end of training even when it did not stop
    # early: an improvement must beat the best by 0.5 of accuracy, so only epoch 1 counts.
    stopping = {"monitor": "val_accuracy", "min_delta": 0.5, "patience": 10, "restore_best_weights": True}
    result = mnistlab.train(spec(epochs=3, early_stopping=stopping), runs_dir=tmp_path / "a", arrays=synthetic,
                            verbose=0)
    assert result.status == "completed" and result.summary["early_stopping"]["weights_from_epoch"] == 1
    alone = mnistlab.train(spec(epochs=1), runs_dir=tmp_path / "b", arrays=synthetic, verbose=0)
    kept, trained = runs.open_run(result.run_dir).params(), runs.open_run(alone.run_dir).params()
    for name, value in trained.items():
        np.testing.assert_array_equal(kept[name], value)


def test_an_interrupted_run_does_not_end_its_callbacks_training(synthetic):
    # Keras' fit lets KeyboardInterrupt through without calling on_train_end.
    listener = StopAfter(10)

    def interrupt(record):
        raise KeyboardInterrupt

    result = mnistlab.train(spec(epochs=3), runs_dir=None, arrays=synthetic, callbacks=[listener], on_epoch=interrupt,
                            verbose=0)
    assert result.status == "interrupted" and listener.begun == {} and listener.ended is None


def test_the_speedrun_preset_trains_is_evaluated_once_and_its_rate_ends_at_zero(mnist):
    spec = mnistlab.preset("speedrun")
    # Its schedule: up over the warm-up, then a cosine to zero at the run's last step.
    t = spec.training
    steps = t.epochs * math.ceil(len(mnist.train_labels) / t.batch_size)
    hp = optim.hyperparameters(spec.optimizer)
    rate = lambda step: float(optim.learning_rate(spec.optimizer, hp, step))
    assert rate(spec.optimizer.schedule.warmup_steps) == pytest.approx(spec.optimizer.learning_rate)
    assert rate(steps) == pytest.approx(0.0, abs=1e-12) and rate(steps - 1) > 0
    # It trains (a tenth of the data, one epoch, still warming up: 83% measured, chance is 10%)
    # and reads the test set once, at the end.
    short = mnistlab.with_overrides(spec, ["training.subset=6000", "training.epochs=1"])
    result = mnistlab.train(short, arrays=mnist, runs_dir=None, test=True, verbose=0)
    assert result.summary["test"]["samples"] == 10_000 and result.summary["test"]["accuracy"] > 0.7
    assert all("test_accuracy" not in epoch for epoch in result.history)
