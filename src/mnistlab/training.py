"""The training path, top to bottom: data -> split -> population of one -> epochs -> record.

    result = mnistlab.train(mnistlab.spec.preset("seed"), test=True)
    result.history[-1]["val_accuracy"], result.summary["test"]["accuracy"]
    result.history["val_loss"], result.epoch            # as Keras' History

A run is a population of one, trained by the same driver as sweeps and studies
(`populations.run`). The test set is only touched when `test=True` is asked for: tuning
reads validation.

Keras' training controls: `training.early_stopping` in the specification (Keras'
EarlyStopping, `populations.watch`); a checkpoint after every epoch, so that `resume`
continues a killed run to the numbers it would have reached; `callbacks` with Keras'
`on_epoch_end(epoch, logs)` that can stop training; `verbose` 0/1/2 as Keras prints.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mnistlab import data, engine, errors, populations, runs, tracking
from mnistlab.spec import RunSpec

NOT_LOGGED = ("epoch", "seconds")  # a record's bookkeeping; the rest are Keras' log names


class History(list):
    """A run's epochs: a list of records, and Keras' `History` at once.

    mnistlab has always returned the records (`history[-1]["val_accuracy"]`); a Keras user
    reaches for `history["loss"]`, `history.history` and `history.epoch`. Being both keeps
    every existing caller working and needs no new name to learn: a string key gives the
    metric's values over the epochs, an integer the epoch's record.
    """

    def __getitem__(self, key):
        if isinstance(key, str):
            values = self.history
            if key not in values:
                raise KeyError(f"{key!r}: this run logged {', '.join(values) or 'no epochs'}")
            return values[key]
        return super().__getitem__(key)

    @property
    def history(self) -> dict[str, list[float]]:
        """Keras' `History.history`: metric name -> one value per epoch."""
        names = dict.fromkeys(k for r in self for k in r if k not in NOT_LOGGED)
        return {name: [r.get(name) for r in self] for name in names}

    @property
    def epoch(self) -> list[int]:
        """Keras' `History.epoch`: 0-based epoch indices (the records' `epoch` is 1-based, as Keras prints)."""
        return [r["epoch"] - 1 for r in self]

    def keys(self):
        return self.history.keys()


@dataclass
class TrainResult:
    status: str  # completed | stopped (early stopping, a callback) | diverged | interrupted
    history: History
    summary: dict[str, Any]
    run_dir: Path | None

    def __post_init__(self) -> None:
        self.history = History(self.history)

    @property
    def epoch(self) -> list[int]:
        """0-based epoch indices, as Keras' `History.epoch`."""
        return self.history.epoch


def logs(record: dict[str, Any]) -> dict[str, Any]:
    """An epoch's record under Keras' log names: loss, accuracy, val_loss, val_accuracy, learning_rate."""
    return {k: v for k, v in record.items() if k not in NOT_LOGGED}


@dataclass
class TrainingModel:
    """What a callback sees as `self.model`, as in Keras: set `stop_training = True` to stop
    after this epoch. `weights` are the weights at the end of the last finished epoch."""

    spec: RunSpec
    stop_training: bool = False
    weights: dict[str, np.ndarray] = field(default_factory=dict)


class Callback:
    """Keras' `Callback` shape; subclass it and override what you need:

        class StopAt(mnistlab.Callback):
            def on_epoch_end(self, epoch, logs=None):   # epoch: 0-based, as Keras
                if logs["val_accuracy"] > 0.97:
                    self.model.stop_training = True

    Any object with some of these methods will do; `on_epoch_end` returning True also stops.
    """

    model: TrainingModel | None = None

    def set_model(self, model: TrainingModel) -> None:
        self.model = model

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> bool | None:
        pass

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        pass


def _call(callbacks: Sequence[Any], method: str, *args) -> list[Any]:
    """Call `method` of every callback that has it; their answers."""
    return [getattr(c, method)(*args) for c in callbacks if callable(getattr(c, method, None))]


def keras_line(record: dict[str, Any], epochs: int) -> str:
    """`Epoch 3/20 - 1.52s - loss: 0.2310 - ... - learning_rate: 0.001`, as Keras prints."""
    parts = [f"Epoch {record['epoch']}/{epochs}", f"{record['seconds']:.2f}s"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in record:
            parts.append(f"{key}: {record[key]:.4f}")
    parts.append(f"learning_rate: {record['learning_rate']:.4g}")
    return " - ".join(parts)


class Printer:
    """Keras' `verbose`: 0 silent, 1 a progress bar over each epoch's steps, 2 one line per epoch."""

    WIDTH = 30

    def __init__(self, verbose: int | str, epochs: int, stream=None):
        if verbose == "auto":
            verbose = 1
        if verbose not in (0, 1, 2):
            raise errors.UserError(f"verbose = {verbose!r}: expected 0 (silent), 1 (a progress bar) or "
                                   "2 (one line per epoch), or 'auto' (1), as Keras")
        self.verbose, self.epochs, self.stream = verbose, epochs, stream

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stdout  # looked up late: a notebook or capsys may replace it
        stream.write(text)
        stream.flush()

    def progress(self, p: engine.Progress) -> None:
        if self.verbose == 1:
            done = self.WIDTH * p.steps_done // max(p.steps_total, 1)
            self._write(f"\rEpoch {p.epoch}/{self.epochs} {p.steps_done}/{p.steps_total} "
                        f"[{'=' * done}{'.' * (self.WIDTH - done)}]")

    def epoch_end(self, record: dict[str, Any]) -> None:
        if self.verbose == 1:
            self._write("\r" + keras_line(record, self.epochs) + "\n")
        elif self.verbose == 2:
            self._write(keras_line(record, self.epochs) + "\n")


def train(spec: RunSpec, *, data_dir: str | Path | None = None, runs_dir: str | Path | None = "runs",
          test: bool = False, arrays: data.Arrays | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None,
          on_progress: Callable[[engine.Progress], None] | None = None,
          log: Sequence[str] = (), callbacks: Sequence[Any] = (), verbose: int | str = "auto") -> TrainResult:
    """Train `spec` and record it under `runs_dir` (None: record nothing); `log` also sends
    its epochs to TensorBoard or MLflow (`tracking`: "tensorboard[:DIR]",
    "tensorboard+histograms[:DIR]", "mlflow[:URI]").

    `callbacks`: Keras-like objects (`Callback`); `verbose`: Keras' 0, 1, 2 or "auto" (1),
    printed on stdout. A recorded run is checkpointed after every epoch: `resume` continues it.
    """
    return _fit(spec, None, data_dir=data_dir, runs_dir=runs_dir, test=test, arrays=arrays, on_epoch=on_epoch,
                on_progress=on_progress, log=log, callbacks=callbacks, verbose=verbose)


def resume(run_dir: str | Path, *, data_dir: str | Path | None = None, test: bool | None = None,
           arrays: data.Arrays | None = None, on_epoch: Callable[[dict[str, Any]], None] | None = None,
           on_progress: Callable[[engine.Progress], None] | None = None, log: Sequence[str] = (),
           callbacks: Sequence[Any] = (), verbose: int | str = "auto") -> TrainResult:
    """Continue a killed or interrupted run from its last checkpointed epoch, in its own folder,
    to the numbers it would have reached uninterrupted (`test`: None, as the run was started)."""
    run_dir = Path(run_dir)
    record = runs.open_run(run_dir)
    progress = run_dir / populations.Checkpoints.PROGRESS
    if record.status == runs.RUNNING:
        raise errors.UserError(f"{run_dir}: {record.describe()}; resume it once that process has stopped")
    if record.finished and record.status != populations.INTERRUPTED:
        raise errors.UserError(f"{run_dir}: this run is finished ({record.describe()}); nothing to resume. "
                               "Train a new one to train longer.")
    if not progress.exists():
        raise errors.UserError(f"{run_dir}: this run has no checkpoints to continue from ({record.describe()}; "
                               "recorded by an earlier mnistlab, or stopped before its first epoch): train it again")
    return _fit(record.spec, run_dir, data_dir=data_dir, runs_dir=run_dir.parent, test=test, arrays=arrays,
                on_epoch=on_epoch, on_progress=on_progress, log=log, callbacks=callbacks, verbose=verbose)


class RunCheckpoints(populations.Checkpoints):
    """A run's checkpoints, in its folder. A finished part keeps its file until the run folder
    holds the weights: a kill between the two resumes to the end, with nothing lost."""

    TEST = "test"  # whether the run was asked to be tested: a resumed run does as it was asked

    def finish(self, part: populations.Part) -> None:
        pass

    def remove(self) -> None:
        """Once the run is recorded whole: nothing left to resume."""
        shutil.rmtree(self.folder / "checkpoints", ignore_errors=True)
        self.path.unlink(missing_ok=True)


def _fit(spec: RunSpec, resumed: Path | None, *, data_dir, runs_dir, test: bool | None, arrays, on_epoch,
         on_progress, log, callbacks, verbose) -> TrainResult:
    """`train` (resumed None) and `resume` (the run folder): one path."""
    # One function on purpose: the hooks below share the run's state (`kept`, the callbacks'
    # `model`, the writer and its checkpoints), and every way out (finished, stopped early,
    # interrupted, a full disk) must record that same state.
    started = time.perf_counter()
    printer = Printer(verbose, spec.training.epochs)
    with tracking.Session(log, spec, runs_dir) as tracked:  # opened first: a bad target fails before training
        arrays = arrays if arrays is not None else data.load(spec.dataset, data_dir)
        # A split that cannot be made, or a network the machine cannot hold, fails before the run folder exists.
        _, _, x_val, y_val = populations.split(spec, arrays)
        populations.check_fits(spec, arrays.train_images.shape[1:])
        member = populations.Member(0, spec)
        writer = checkpoints = None
        if runs_dir is not None:
            writer = runs.RunWriter(resumed, spec) if resumed else runs.RunWriter.create(Path(runs_dir), spec)
            checkpoints = RunCheckpoints(writer.path)
            if test is None:
                test = bool(checkpoints.progress.get(RunCheckpoints.TEST, False))
            checkpoints.progress[RunCheckpoints.TEST] = test
            checkpoints.save_progress()
            checkpoints.restore([member])
            if member.history:  # resumed: the epochs before the kill, as the checkpoint has them
                writer.log_epochs(member.history)
        test = bool(test)
        resumed_at = member.epochs
        kept: dict[str, Any] = {}
        model = TrainingModel(spec)
        for c in callbacks:
            if callable(getattr(c, "set_model", None)):
                c.set_model(model)
            else:
                c.model = model

        def snapshot() -> None:
            # What the run has recorded: a signal that lands after the driver folded an epoch
            # in but before it was written keeps the run at this, not at an epoch half kept.
            kept["recorded"] = ({**member.state(), "history": list(member.history)}, kept.get("params"))

        def record_epoch(m: populations.Member, part: populations.Part) -> None:
            # The weights at the end of each finished epoch: what an interrupted run keeps
            # once the epoch's record is written, and what a run whose folder stops taking
            # writes hands to `runs.rescue`.
            kept["params"] = model.weights = part.params(m)
            record = m.history[-1]
            if writer:
                writer.log_epoch(record)
            snapshot()
            tracked.on_epoch(record, kept["params"])  # the weights: for `tensorboard+histograms`
            printer.epoch_end(record)
            if on_epoch:
                on_epoch(record)
            answers = _call(callbacks, "on_epoch_end", record["epoch"] - 1, logs(record))
            if (model.stop_training or any(a is True for a in answers)) and m.training:
                m.status = populations.STOPPED  # the driver freezes it, as Keras' `stop_training`
                kept["params"] = model.weights = part.params(m)  # its best epoch's, when it restores them

        def finished(part: populations.Part) -> None:
            # Once the member's training is over (also when a resumed run had nothing left to
            # train): its weights, best epoch's if restored, and the test figures for them.
            kept["params"] = model.weights = part.params(member)
            if test and member.status in (populations.COMPLETED, populations.STOPPED):
                if member.best_weights is not None:
                    result = engine.evaluate(spec, kept["params"], arrays.test_images, arrays.test_labels)
                else:
                    figures = part.evaluate(arrays.test_images, arrays.test_labels)
                    result = {"loss": float(figures["loss"][0]), "accuracy": float(figures["accuracy"][0])}
                kept["test"] = {**result, "samples": int(len(arrays.test_labels))}
            if member.status in (populations.COMPLETED, populations.STOPPED):
                kept["calibration"] = calibrate(spec, kept["params"], x_val, y_val)

        def progress(p: engine.Progress) -> None:
            printer.progress(p)
            if on_progress:
                on_progress(p)

        report = populations.Report()
        metric = "val_loss" if spec.training.validation.fraction > 0 else "loss"  # what `best_epoch` follows
        failure = None
        _call(callbacks, "on_train_begin", {})
        snapshot()
        try:
            report = populations.run([member], lambda _: arrays, metric=metric, checkpoints=checkpoints,
                                     on_epoch=record_epoch, after_part=finished, on_progress=progress)
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM as `errors.Terminated`
            # The member is marked interrupted and keeps its finished epochs: those recorded,
            # with their metrics and weights.
            kept["stop"] = "SIGTERM" if isinstance(stop, errors.Terminated) else "SIGINT"
            state, kept["params"] = kept["recorded"]
            member.restore(state)
            if member.training:
                member.status = populations.INTERRUPTED
        except runs.WRITE_ERRORS as err:  # the run folder stopped taking writes (full disk, removed, ...)
            failure = err

        extra: dict[str, Any] = {"compile_seconds": report.compile_seconds, "data_source": str(arrays.source)}
        if resumed:
            extra["resumed_after_epoch"] = resumed_at
        if "stop" in kept:
            extra["interrupted_by"] = kept["stop"]
        if "test" in kept:
            extra["test"] = kept["test"]
            extra["evaluations"] = [{"split": "test", **kept["test"]}]
        if kept.get("calibration"):
            extra["calibration"] = kept["calibration"]
        extra["wall_seconds"] = time.perf_counter() - started
        summary = populations.summary(member, **extra)
        if writer:
            _record(writer, member, kept.get("params"), summary, failure)
            if member.status != populations.INTERRUPTED:
                checkpoints.remove()
        result = tracked.done(TrainResult(member.status, member.history, summary, writer.path if writer else None))
        if "stop" not in kept:
            _call(callbacks, "on_train_end", logs(member.history[-1]) if member.history else {})
        return result


def calibrate(spec: RunSpec, params, images: np.ndarray, labels: np.ndarray) -> dict[str, Any] | None:
    """The run's calibration on its validation data (`calibration.fit`): the temperature
    `predict` and `serve` divide the logits by, and the confidence under which they flag an
    answer unsure; under "novelty", what they flag as not a digit at all (`novelty.fit`).
    None without validation data, or for sigmoid outputs (label sets)."""
    if spec.model.output_activation != "softmax" or len(labels) == 0:
        return None
    from mnistlab import calibration, novelty, predict

    logits = predict.Predictor(spec, params).logits(images)
    found: dict[str, Any] = calibration.fit(logits, labels).as_dict()
    info = data.DATASETS.get(spec.dataset)
    if info is not None and info.class_names == tuple("0123456789"):  # the flag says "not a digit"
        found["novelty"] = novelty.fit(images, logits).as_dict()
    return found


def _record(writer: runs.RunWriter, member: populations.Member, params, summary: dict[str, Any],
            failure: BaseException | None) -> None:
    """The weights first, then the summary that vouches for them (with their sha256). A folder
    that cannot be written (full disk, read-only, permissions) is a UserError naming it and
    where the trained result was kept instead."""
    params = params if params is not None and populations.finite(params) else None
    try:
        if failure is not None:
            raise failure
        if params is not None:
            summary["weights_sha256"] = writer.save_weights(params)
        writer.finish(summary)
    except runs.WRITE_ERRORS as err:
        kept = runs.rescue(writer.spec, member.history, params, summary)
        raise errors.UserError(f"{writer.path}: could not write the run ({runs.reason(err)}); {kept}") from None


SPLITS = ("test", "validation", "train")


def evaluate(run_dir: str | Path, split: str = "test", data_dir: str | Path | None = None) -> dict[str, Any]:
    """Loss and accuracy of a recorded run on one split of its dataset, recorded in its
    summary (every test evaluation is kept: how often the test set was read is on record).

    The split is made again from the run's spec, so "validation" is the data it validated on.
    """
    if split not in SPLITS:
        raise errors.UserError(f"--split {split!r}: expected {', '.join(SPLITS[:-1])} or {SPLITS[-1]}")
    record = runs.open_run(run_dir)
    arrays = data.load(record.spec.dataset, data_dir)
    x_train, y_train, x_val, y_val = populations.split(record.spec, arrays)
    images, labels = {"test": (arrays.test_images, arrays.test_labels), "train": (x_train, y_train),
                      "validation": (x_val, y_val)}[split]
    if len(labels) == 0:
        raise errors.UserError(f"{run_dir}: this run has no validation data (training.validation.fraction = 0)")
    figures = engine.evaluate(record.spec, record.params(), images, labels)
    result = {"loss": float(figures["loss"]), "accuracy": float(figures["accuracy"]), "samples": int(len(labels))}
    runs.record_evaluation(record, split, result)
    return result
