"""Send a run's epochs to TensorBoard or MLflow as it trains, with those projects' own libraries.

    result = mnistlab.train(spec, log=["tensorboard", "mlflow:sqlite:///mlflow.db"])

which `training.train` does with `create`, `chain` and `finish` below.

Each logger is an `on_epoch` callback (it gets the same per-epoch record that goes to
`metrics.jsonl`) with a `finish` method for the end of the run. The run folder stays
the record of truth; these are views of it in tools people already have open.

- `tensorboard[:DIR]`: event files written by tensorboardX, laid out as Keras' TensorBoard
  callback does (`DIR/<time>-<name>/train` and `/validation`, scalars `epoch_loss`,
  `epoch_accuracy`, `epoch_learning_rate`), so training and validation share one chart.
  DIR defaults to `tensorboard/` beside the runs folder: `tensorboard --logdir tensorboard`.
- `mlflow[:URI]`: an MLflow run in experiment "mnistlab" with the resolved specification as
  parameters, every epoch's metrics at step = epoch, the test figures, and the run folder
  as a tag. URI defaults to MLflow's own default (`MLFLOW_TRACKING_URI`, else MLflow's
  local store).

Install with `pip install 'mnistlab[tensorboard]'` / `'mnistlab[mlflow]'`.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import tomli_w

from mnistlab.errors import UserError, suggest
from mnistlab.spec import RunSpec, flatten

KINDS = ("tensorboard", "mlflow")
EXPERIMENT = "mnistlab"


class Logger(Protocol):
    def __call__(self, record: dict[str, Any]) -> None: ...

    def finish(self, status: str, summary: dict[str, Any], run_dir: Path | None) -> None: ...


def parse(target: str) -> tuple[str, str | None]:
    """'mlflow:sqlite:///x.db' -> ('mlflow', 'sqlite:///x.db'); 'tensorboard' -> ('tensorboard', None)."""
    kind, sep, where = target.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise UserError(f"--log {target!r}: unknown logger '{kind}': {suggest(kind, KINDS)} "
                        "(tensorboard[:DIR] or mlflow[:URI])")
    if sep and not where:
        raise UserError(f"--log {target!r}: nothing after ':'; give a folder or URI, or leave the ':' out")
    return kind, where or None


def create(targets: list[str], spec: RunSpec, runs_dir: str | Path | None = "runs") -> list[Logger]:
    """The loggers `--log` asks for, opened now so that a bad target fails before training."""
    loggers: list[Logger] = []
    for target in targets:
        kind, where = parse(target)
        if kind == "tensorboard":
            base = Path(where) if where else Path(runs_dir or "runs").parent / "tensorboard"
            loggers.append(TensorBoardLogger(base / f"{time.strftime('%Y%m%d-%H%M%S')}-{spec.name}", spec))
        else:
            loggers.append(MlflowLogger(spec, where))
    return loggers


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def chain(loggers: list[Logger], warn: Callable[[str], None] = _warn) -> Callable[[dict[str, Any]], None]:
    """One `on_epoch` callback feeding every logger. A logger that fails (a tracking server
    gone away) is reported once through `warn` (a Python warning by default) and dropped:
    training and the run folder go on."""
    live = list(loggers)

    def on_epoch(record: dict[str, Any]) -> None:
        for logger in list(live):
            try:
                logger(record)
            except Exception as e:  # a view failing must not cost the run
                live.remove(logger)
                warn(f"{type(logger).__name__} stopped logging: {type(e).__name__}: {e}")

    return on_epoch


def finish(loggers: list[Logger], status: str, summary: dict[str, Any], run_dir: Path | None,
           warn: Callable[[str], None] = _warn) -> None:
    for logger in loggers:
        try:
            logger.finish(status, summary, run_dir)
        except Exception as e:
            warn(f"{type(logger).__name__} could not finish: {type(e).__name__}: {e}")


class Session:
    """The loggers of one run: `on_epoch` feeds them all; leaving the `with` block finishes
    them with the result given to `done`, or as failed when none was."""

    def __init__(self, targets: Sequence[str], spec: RunSpec, runs_dir: str | Path | None = "runs"):
        self.loggers = create(list(targets), spec, runs_dir)
        self.on_epoch = chain(self.loggers)
        self.result = None

    def done(self, result):
        self.result = result
        return result

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_) -> None:
        r = self.result
        finish(self.loggers, *((r.status, r.summary, r.run_dir) if r is not None else ("failed", {}, None)))


class TensorBoardLogger:
    """Keras' TensorBoard layout: `train/` and `validation/` writers with `epoch_*` scalars."""

    def __init__(self, logdir: str | Path, spec: RunSpec):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as e:
            raise UserError("--log tensorboard needs tensorboardX: pip install 'mnistlab[tensorboard]'") from e
        self.logdir = Path(logdir)
        self._writer = SummaryWriter
        self.train = SummaryWriter(str(self.logdir / "train"))
        self.validation = SummaryWriter(str(self.logdir / "validation"))
        config = tomli_w.dumps(spec.resolved())
        # Four-space indent: TensorBoard renders text as Markdown, and this keeps it verbatim.
        self.train.add_text("config", "\n".join("    " + line for line in config.splitlines()), 0)
        self.last_epoch = 0

    def __call__(self, record: dict[str, Any]) -> None:
        epoch = int(record["epoch"])
        self.last_epoch = epoch
        for key in ("loss", "accuracy", "learning_rate"):
            if record.get(key) is not None:
                self.train.add_scalar(f"epoch_{key}", float(record[key]), epoch)
        for key in ("loss", "accuracy"):
            if record.get(f"val_{key}") is not None:
                self.validation.add_scalar(f"epoch_{key}", float(record[f"val_{key}"]), epoch)
        self.train.flush()
        self.validation.flush()

    def finish(self, status: str, summary: dict[str, Any], run_dir: Path | None) -> None:
        test = summary.get("test")
        if test:
            writer = self._writer(str(self.logdir / "test"))
            writer.add_scalar("epoch_loss", float(test["loss"]), self.last_epoch)
            writer.add_scalar("epoch_accuracy", float(test["accuracy"]), self.last_epoch)
            writer.close()
        self.train.add_text("run", f"status: {status}; run folder: {run_dir or '(not recorded)'}", self.last_epoch)
        self.train.close()
        self.validation.close()


class MlflowLogger:
    """One MLflow run per training run, through `MlflowClient` (no global MLflow state)."""

    STATUS = {"completed": "FINISHED", "diverged": "FAILED", "interrupted": "KILLED"}

    def __init__(self, spec: RunSpec, uri: str | None = None, experiment: str = EXPERIMENT):
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise UserError("--log mlflow needs MLflow: pip install 'mnistlab[mlflow]'") from e
        try:
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            self.run_id = self.client.create_run(experiment_id, run_name=spec.name,
                                                 tags={"mnistlab.dataset": spec.dataset}).info.run_id
            params = [Param(k, str(v)) for k, v in flatten(spec.resolved()).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"--log mlflow{':' + uri if uri else ''}: could not open the tracking store "
                            f"({type(e).__name__}: {e})") from e
        self.uri = self.client.tracking_uri

    def __call__(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        step = int(record["epoch"])
        metrics = [Metric(k, float(record[k]), stamp, step)
                   for k in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds")
                   if record.get(k) is not None]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, status: str, summary: dict[str, Any], run_dir: Path | None) -> None:
        from mlflow.entities import Metric, RunTag

        stamp = int(time.time() * 1000)
        test = summary.get("test") or {}
        metrics = [Metric(f"test_{k}", float(test[k]), stamp, 0) for k in ("loss", "accuracy") if k in test]
        tags = [RunTag("mnistlab.status", status)]
        if run_dir is not None:
            tags.append(RunTag("mnistlab.run_dir", str(Path(run_dir).resolve())))
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
        self.client.set_terminated(self.run_id, self.STATUS.get(status, "FAILED"))
