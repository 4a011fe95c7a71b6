"""The training path, top to bottom: data -> split -> population of one -> epochs -> record.

    result = mnistlab.train(mnistlab.spec.preset("seed"), test=True)
    result.history[-1]["val_accuracy"], result.summary["test"]["accuracy"]

The test set is only touched when `test=True` is asked for: tuning reads validation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mnistlab import data, engine, runs
from mnistlab.spec import RunSpec

DIVERGED_HINT = ("the loss stopped being finite: lower optimizer.learning_rate (e.g. by 10x), "
                 "add a schedule with warm-up, or reduce the penalty strengths")


@dataclass
class TrainResult:
    status: str  # completed | diverged | interrupted
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    run_dir: Path | None
    population: engine.Population


def split(spec: RunSpec, arrays: data.Arrays):
    """(train images, train labels, validation images, validation labels) as the spec asks."""
    v = spec.training.validation
    x, y = arrays.train_images, arrays.train_labels
    if spec.training.subset is not None:
        x, y = x[: spec.training.subset], y[: spec.training.subset]
    train_idx, val_idx = data.holdout(y, v.fraction, method=v.method, seed=spec.training.seed)
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def epoch_record(result: engine.EpochResult, member: int = 0) -> dict[str, Any]:
    record: dict[str, Any] = {"epoch": result.epoch}
    record.update({k: v[member] for k, v in result.metrics.items()})
    record["seconds"] = result.seconds
    return record


def train(spec: RunSpec, *, data_dir: str | Path | None = None, runs_dir: str | Path | None = "runs",
          test: bool = False, arrays: data.Arrays | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None,
          on_progress: Callable[[engine.Progress], None] | None = None) -> TrainResult:
    """Train `spec` and record it under `runs_dir` (None: record nothing)."""
    started = time.perf_counter()
    arrays = arrays if arrays is not None else data.load(spec.dataset, data_dir)
    x_train, y_train, x_val, y_val = split(spec, arrays)
    population = engine.Population([spec], x_train, y_train, x_val, y_val)
    writer = runs.RunWriter.create(Path(runs_dir), spec) if runs_dir is not None else None
    population.compile_all()

    history: list[dict[str, Any]] = []
    status = "completed"
    try:
        for _ in range(spec.training.epochs):
            result = population.train_epoch(on_progress)
            record = epoch_record(result)
            history.append(record)
            if writer:
                writer.log_epoch(record)
            if on_epoch:
                on_epoch(record)
            if result.diverged[0]:
                status = "diverged"
                break
    except KeyboardInterrupt:
        status = "interrupted"

    summary: dict[str, Any] = {
        "name": spec.name, "status": status, "epochs_completed": len(history),
        "epochs_requested": spec.training.epochs,
        "train_samples": int(len(y_train)), "validation_samples": int(len(y_val)),
        "compile_seconds": population.compile_seconds,
        "train_seconds": sum(r["seconds"] for r in history),
        "seconds_per_epoch": [r["seconds"] for r in history],
        "final": history[-1] if history else None,
        "data_source": str(arrays.source),
        "environment": runs.environment(),
    }
    if status == "diverged":
        summary["diverged_at_epoch"] = len(history)
        summary["hint"] = DIVERGED_HINT
    params = population.member_params(0)
    if test and status == "completed":
        result = population.evaluate(arrays.test_images, arrays.test_labels)
        summary["test"] = {"loss": float(result["loss"][0]), "accuracy": float(result["accuracy"][0]),
                           "samples": int(len(arrays.test_labels))}
        summary["evaluations"] = [{"split": "test", **summary["test"]}]
    summary["wall_seconds"] = time.perf_counter() - started
    if writer:
        if all(math.isfinite(float(np.max(np.abs(p)))) for p in params.values()):
            writer.save_weights(params)
        writer.finish(summary)
    return TrainResult(status, history, summary, writer.path if writer else None, population)
