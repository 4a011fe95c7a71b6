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
from typing import Any, Callable

from mnistlab import data, engine, errors, populations, runs
from mnistlab.spec import RunSpec


@dataclass
class TrainResult:
    status: str  # completed | diverged | interrupted
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    run_dir: Path | None
    member: populations.Member


def train(spec: RunSpec, *, data_dir: str | Path | None = None, runs_dir: str | Path | None = "runs",
          test: bool = False, arrays: data.Arrays | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None,
          on_progress: Callable[[engine.Progress], None] | None = None) -> TrainResult:
    """Train `spec` and record it under `runs_dir` (None: record nothing)."""
    started = time.perf_counter()
    arrays = arrays if arrays is not None else data.load(spec.dataset, data_dir)
    # A split that cannot be made, or a network the machine cannot hold, fails before the run folder exists.
    populations.split(spec, arrays)
    populations.check_fits(spec, arrays.train_images.shape[1:])
    member = populations.Member(0, spec)
    writer = runs.RunWriter.create(Path(runs_dir), spec) if runs_dir is not None else None
    kept: dict[str, Any] = {}

    def log(m: populations.Member, part: populations.Part) -> None:
        # The weights at the end of each finished epoch: what an interrupted run keeps.
        kept["params"] = part.params(m)
        if writer:
            writer.log_epoch(m.history[-1])
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
        report = populations.run([member], lambda _: arrays, metric=metric, on_epoch=log, on_done=done,
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
    return TrainResult(member.status, member.history, summary, writer.path if writer else None, member)


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
