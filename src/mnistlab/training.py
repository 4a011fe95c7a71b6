"""The training path, top to bottom: data -> split -> population of one -> epochs -> record.

    result = mnistlab.train(mnistlab.spec.preset("seed"), test=True)
    result.history[-1]["val_accuracy"], result.summary["test"]["accuracy"]

A run is a population of one, trained by the same driver as sweeps and studies
(`populations.run`). The test set is only touched when `test=True` is asked for: tuning
reads validation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from mnistlab import data, engine, errors, populations, runs, tracking
from mnistlab.spec import RunSpec


@dataclass
class TrainResult:
    status: str  # completed | diverged | interrupted
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    run_dir: Path | None


def train(spec: RunSpec, *, data_dir: str | Path | None = None, runs_dir: str | Path | None = "runs",
          test: bool = False, arrays: data.Arrays | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None,
          on_progress: Callable[[engine.Progress], None] | None = None,
          log: Sequence[str] = ()) -> TrainResult:
    """Train `spec` and record it under `runs_dir` (None: record nothing); `log` also sends
    its epochs to TensorBoard or MLflow (`tracking`: "tensorboard[:DIR]",
    "tensorboard+histograms[:DIR]", "mlflow[:URI]")."""
    started = time.perf_counter()
    with tracking.Session(log, spec, runs_dir) as logs:  # opened first: a bad target fails before training
        arrays = arrays if arrays is not None else data.load(spec.dataset, data_dir)
        # A split that cannot be made, or a network the machine cannot hold, fails before the run folder exists.
        populations.split(spec, arrays)
        populations.check_fits(spec, arrays.train_images.shape[1:])
        member = populations.Member(0, spec)
        writer = runs.RunWriter.create(Path(runs_dir), spec) if runs_dir is not None else None
        kept: dict[str, Any] = {}

        def record_epoch(m: populations.Member, part: populations.Part) -> None:
            # The weights at the end of each finished epoch: what an interrupted run keeps.
            kept["params"] = part.params(m)
            if writer:
                writer.log_epoch(m.history[-1])
            logs.on_epoch(m.history[-1], kept["params"])  # the weights: for `tensorboard+histograms`
            if on_epoch:
                on_epoch(m.history[-1])

        def done(m: populations.Member, part: populations.Part) -> None:
            if test and m.status == populations.COMPLETED:
                result = part.evaluate(arrays.test_images, arrays.test_labels)
                kept["test"] = {"loss": float(result["loss"][0]), "accuracy": float(result["accuracy"][0]),
                                "samples": int(len(arrays.test_labels))}

        report = populations.Report()
        metric = "val_loss" if spec.training.validation.fraction > 0 else "loss"  # what `best_epoch` follows
        failure = None
        try:
            report = populations.run([member], lambda _: arrays, metric=metric, on_epoch=record_epoch, on_done=done,
                                     on_progress=on_progress)
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM as `errors.Terminated`
            # The member is marked interrupted and keeps its finished epochs.
            kept["stop"] = "SIGTERM" if isinstance(stop, errors.Terminated) else "SIGINT"
        except runs.WRITE_ERRORS as err:  # the run folder stopped taking writes (full disk, removed, ...)
            failure = err

        extra: dict[str, Any] = {"compile_seconds": report.compile_seconds, "data_source": str(arrays.source)}
        if "stop" in kept:
            extra["interrupted_by"] = kept["stop"]
        if "test" in kept:
            extra["test"] = kept["test"]
            extra["evaluations"] = [{"split": "test", **kept["test"]}]
        extra["wall_seconds"] = time.perf_counter() - started
        summary = populations.summary(member, **extra)
        if writer:
            _record(writer, member, kept.get("params"), summary, failure)
        return logs.done(TrainResult(member.status, member.history, summary, writer.path if writer else None))


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
