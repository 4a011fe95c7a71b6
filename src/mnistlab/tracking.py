"""Send a run's epochs to TensorBoard or MLflow as it trains, with those projects' own libraries.

    result = mnistlab.train(spec, log=["tensorboard", "mlflow:sqlite:///mlflow.db"])

which `training.train` does with `create`, `chain` and `finish` below. Sweeps and studies
log each member / trial as a child of one parent (`Family`):

    search.run_sweep(sweep, log=["tensorboard+histograms", "mlflow:sqlite:///mlflow.db"])
    tune.run(space, 30, log=["tensorboard:tb"])

Each logger is an `on_epoch` callback (it gets the same per-epoch record that goes to
`metrics.jsonl`) with a `finish` method for the end of the run. The run folder stays
the record of truth; these are views of it in tools people already have open.

- `tensorboard[:DIR]`: event files written by tensorboardX, laid out as Keras' TensorBoard
  callback does (`DIR/<time>-<name>/train` and `/validation`, scalars `epoch_loss`,
  `epoch_accuracy`, `epoch_learning_rate`), so training and validation share one chart.
  DIR defaults to `tensorboard/` beside the runs folder: `tensorboard --logdir tensorboard`.
  Each run is also one session of TensorBoard's HParams dashboard: `DIR/<time>-<name>/`
  holds its hyper-parameters (the flattened resolved specification) and, at the end, its
  status; the `epoch_*` scalars of `train/`, `validation/` and `test/` are the metric
  columns. A single run writes no HParams experiment: TensorBoard builds one from all the
  sessions it finds, so runs of different presets in one folder share a table (with one
  experiment per run it would pick one of them and hide the others' settings).
- `tensorboard+histograms[:DIR]`: the same, plus a histogram of every weight array after
  each epoch, in `train/` as `<layer>/<weight>/histogram` (Keras' `histogram_freq=1`).
- `mlflow[:URI]`: an MLflow run in experiment "mnistlab" with the resolved specification as
  parameters, every epoch's metrics at step = epoch, the test figures, and the run folder
  as a tag. At the end the run folder's files are the run's artifacts, and its network an
  MLflow model named "model" (the onnx flavour, the graph `export` writes). URI defaults to
  MLflow's own default (`MLFLOW_TRACKING_URI`, else MLflow's local store); artifacts go
  where the experiment's artifact location says.

A sweep or a study (`Family`) is, in TensorBoard, `DIR/<time>-<sweep>/` with one run per
member or trial (`<sweep>-<index>/`, laid out as above) and, at its root, the HParams
experiment: every setting of its members as a column (the searched ones and those that
differ first) and the sweep's metric as the first metric column. In MLflow it is a parent
run (the sweep's settings, `best_<metric>`, its folder as artifacts without checkpoints,
and the best run's network) with a child run per member or trial (tag
`mlflow.parentRunId`): its specification as parameters, its epochs as metrics, its status.

A logger that fails (a tracking server gone away) is reported once and dropped: training
and the run folder go on. Every logger is opened before training starts, so a bad target
fails before anything is written.

Install with `pip install 'mnistlab[tensorboard]'` / `'mnistlab[mlflow]'`.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Hashable, Protocol, Sequence

import numpy as np
import tomli_w

from mnistlab.errors import UserError, suggest
from mnistlab.spec import RunSpec, flatten

HISTOGRAMS = "tensorboard+histograms"
KINDS = ("tensorboard", HISTOGRAMS, "mlflow")
EXPERIMENT = "mnistlab"


class Logger(Protocol):
    """An epoch's record in, the run's end out. A logger that also takes the weights has
    `wants_weights = True` and `weights(epoch, params)`, called after that epoch's record."""

    def __call__(self, record: dict[str, Any]) -> None: ...

    def finish(self, status: str, summary: dict[str, Any], run_dir: Path | None) -> None: ...


def parse(target: str) -> tuple[str, str | None]:
    """'mlflow:sqlite:///x.db' -> ('mlflow', 'sqlite:///x.db'); 'tensorboard' -> ('tensorboard', None)."""
    kind, sep, where = target.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise UserError(f"--log {target!r}: unknown logger '{kind}': {suggest(kind, KINDS)} "
                        "(tensorboard[:DIR], tensorboard+histograms[:DIR] or mlflow[:URI])")
    if sep and not where:
        raise UserError(f"--log {target!r}: nothing after ':'; give a folder or URI, or leave the ':' out")
    return kind, where or None


def tensorboard_dir(where: str | None, records_dir: str | Path | None, name: str) -> Path:
    """`DIR/<time>-<name>`; DIR defaults to `tensorboard/` beside the folder the records go to."""
    base = Path(where) if where else Path(records_dir or "runs").parent / "tensorboard"
    return base / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"


def _in_opening_order(targets: Sequence[str]) -> list[tuple[str, str | None]]:
    """Every target parsed before any is opened, TensorBoard's before MLflow's: a bad one
    then fails before a run was created in a tracking store, to be left running there."""
    return sorted(map(parse, targets), key=lambda target: target[0] == "mlflow")


def create(targets: list[str], spec: RunSpec, runs_dir: str | Path | None = "runs") -> list[Logger]:
    """The loggers `--log` asks for, opened now so that a bad target fails before training."""
    loggers: list[Logger] = []
    for kind, where in _in_opening_order(targets):
        if kind == "mlflow":
            loggers.append(MlflowLogger(spec, where))
        else:
            loggers.append(TensorBoardLogger(tensorboard_dir(where, runs_dir, spec.name), spec,
                                             histograms=kind == HISTOGRAMS))
    return loggers


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def feed(logger: Logger, record: dict[str, Any], weights: dict[str, np.ndarray] | None = None) -> None:
    """One epoch to one logger: its record, then the weights if it takes them."""
    logger(record)
    if weights is not None and getattr(logger, "wants_weights", False):
        logger.weights(int(record["epoch"]), weights)


def chain(loggers: list[Logger], warn: Callable[[str], None] = _warn) -> Callable[..., None]:
    """One `on_epoch(record, weights=None)` callback feeding every logger. A logger that fails
    (a tracking server gone away) is reported once through `warn` (a Python warning by
    default) and dropped: training and the run folder go on."""
    live = list(loggers)

    def on_epoch(record: dict[str, Any], weights: dict[str, np.ndarray] | None = None) -> None:
        for logger in list(live):
            try:
                feed(logger, record, weights)
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


# ------------------------------------------------------------------ TensorBoard


def _summary_writer():
    """tensorboardX's SummaryWriter, and the HParams plugin's protos (from `tensorboard`)."""
    try:
        from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: F401
        from tensorboardX import SummaryWriter
    except ImportError as e:
        raise UserError("--log tensorboard needs tensorboardX and tensorboard: "
                        "pip install 'mnistlab[tensorboard]'") from e
    return SummaryWriter


def hparam_value(value: Any) -> str | float | bool | None:
    """A setting as HParams holds it: a flag, a number (as a float), text; None stays None
    (left out: HParams has no empty value); a table or list as its JSON text."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return json.dumps(value)


def searched_extras(flat: dict[str, Any], point: dict[str, Any] | None) -> dict[str, Any]:
    """A sweep point's keys that name no single path of the spec (`mlp.units`), kept as the
    space names them: what was searched. A tied key ("a,b") is left out: its paths are in
    the spec already."""
    return {k: v for k, v in (point or {}).items() if k not in flat and "," not in k}


def hparams_of(spec: RunSpec, point: dict[str, Any] | None = None) -> dict[str, str | float | bool]:
    """A run's HParams: its flattened resolved specification (and a sweep point's own keys)."""
    flat = flatten(spec.resolved())
    values = {k: hparam_value(v) for k, v in {**flat, **searched_extras(flat, point)}.items()}
    return {k: v for k, v in values.items() if v is not None}


# mnistlab's metric -> (folder, scalar) in Keras' TensorBoard layout.
KERAS_SCALARS = {"val_accuracy": ("validation", "epoch_accuracy"), "val_loss": ("validation", "epoch_loss"),
                 "accuracy": ("train", "epoch_accuracy"), "loss": ("train", "epoch_loss")}
# An HParams session's end: a run that stopped as it was meant to (its epochs, patience, a
# pruner) is a success; divergence, a failure or an interruption is not.
SESSION_STATUS = {"completed": "STATUS_SUCCESS", "stopped": "STATUS_SUCCESS", "pruned": "STATUS_SUCCESS"}


def _hparams_summary(tag: str, **plugin_data: Any):
    """A Summary carrying HParams plugin data, as the plugin reads it.

    The content is built with TensorBoard's own protos, not `tensorboardX.summary.hparams`:
    that one writes metrics without a folder (TensorBoard would look for `epoch_accuracy` in
    the session's root, where Keras' layout has none), no `differs`, and ends every session
    as a success."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

    content = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **plugin_data)
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME,
                                                                  content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


def session_start(hparams: dict[str, str | float | bool]):
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    info = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for key, value in hparams.items():
        if isinstance(value, bool):
            info.hparams[key].bool_value = value
        elif isinstance(value, float):
            info.hparams[key].number_value = value
        else:
            info.hparams[key].string_value = value
    return _hparams_summary(metadata.SESSION_START_INFO_TAG, session_start_info=info)


def session_end(status: str):
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    info = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(SESSION_STATUS.get(status, "STATUS_FAILURE")),
                                          end_time_secs=time.time())
    return _hparams_summary(metadata.SESSION_END_INFO_TAG, session_end_info=info)


def metric_order(metric: str) -> list[str]:
    """The metric columns: the sweep's metric first, then validation's, then training's."""
    return list(dict.fromkeys([metric, *KERAS_SCALARS]))


def experiment(sessions: list[dict[str, str | float | bool]], metric: str, searched: Sequence[str] = ()):
    """The HParams experiment of a sweep or study: a column per setting of any session
    (marked `differs` when searched or not the same in all, which TensorBoard shows first),
    and the metric columns with `metric` first."""
    from tensorboard.plugins.hparams import api_pb2, metadata

    types = {bool: "DATA_TYPE_BOOL", float: "DATA_TYPE_FLOAT64", str: "DATA_TYPE_STRING"}
    names = list(dict.fromkeys(k for s in sessions for k in s))
    first = {k: next(s[k] for s in sessions if k in s) for k in names}

    def differs(name: str) -> bool:
        return name in searched or len({json.dumps(s.get(name)) for s in sessions}) > 1

    infos = [api_pb2.HParamInfo(name=k, type=api_pb2.DataType.Value(types[type(first[k])]), differs=differs(k))
             for k in names]
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(group=KERAS_SCALARS[m][0], tag=KERAS_SCALARS[m][1]),
                                  display_name=m) for m in metric_order(metric)]
    found = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics, time_created_secs=time.time())
    return _hparams_summary(metadata.EXPERIMENT_TAG, experiment=found)


class TensorBoardLogger:
    """Keras' TensorBoard layout: `train/` and `validation/` writers with `epoch_*` scalars;
    the folder itself is the run's HParams session; `histograms`: the weights too."""

    def __init__(self, logdir: str | Path, spec: RunSpec, *, histograms: bool = False,
                 point: dict[str, Any] | None = None):
        SummaryWriter = _summary_writer()
        self.logdir = Path(logdir)
        self._writer = SummaryWriter
        self.wants_weights = histograms
        self.hparams = hparams_of(spec, point)
        # The session's start and end go in the run's own folder, above train/ and
        # validation/: TensorBoard then reads those as the session's metric groups.
        self.session = SummaryWriter(str(self.logdir))
        self.session.file_writer.add_summary(session_start(self.hparams))
        self.session.flush()
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

    def weights(self, epoch: int, params: dict[str, np.ndarray]) -> None:
        """A histogram of each weight array, as Keras' `histogram_freq=1` (in `train/`)."""
        for name, values in params.items():
            values = np.asarray(values)
            if values.size and np.isfinite(values).all():  # a diverged epoch's NaNs have no histogram
                self.train.add_histogram(f"{name}/histogram", values, epoch)
        self.train.flush()

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
        self.session.file_writer.add_summary(session_end(status))
        self.session.close()


class TensorBoardParent:
    """A sweep's or study's folder: a run per child, the HParams experiment at its root,
    written at the end from the sessions its children opened (so it lists every setting
    they had; until then TensorBoard builds the table from the sessions themselves)."""

    def __init__(self, logdir: Path, metric: str, searched: Sequence[str] = (), histograms: bool = False):
        self._writer = _summary_writer()
        self.logdir, self.metric, self.searched, self.histograms = Path(logdir), metric, list(searched), histograms
        self.sessions: list[dict[str, str | float | bool]] = []

    def child(self, spec: RunSpec, point: dict[str, Any] | None, tags: dict[str, Any]) -> TensorBoardLogger:
        logger = TensorBoardLogger(self.logdir / spec.name, spec, histograms=self.histograms, point=point)
        self.sessions.append(logger.hparams)
        return logger

    def finish(self, status: str, metrics: dict[str, float], folder: Path | None, skip: Sequence[str] = ()) -> None:
        if self.sessions:
            writer = self._writer(str(self.logdir))
            writer.file_writer.add_summary(experiment(self.sessions, self.metric, self.searched))
            writer.close()


# ------------------------------------------------------------------ MLflow


def mlflow_params(spec: RunSpec, point: dict[str, Any] | None = None) -> dict[str, str]:
    """A run's MLflow parameters: its flattened resolved specification (and a sweep point's own keys)."""
    flat = flatten(spec.resolved())
    text = lambda v: json.dumps(v) if isinstance(v, (dict, list)) else str(v)  # noqa: E731
    return {k: text(v) for k, v in {**flat, **searched_extras(flat, point)}.items()}


def _open_mlflow(uri: str | None, experiment: str):
    """(client, experiment id); a store that cannot be opened is a UserError naming it."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        raise UserError("--log mlflow needs MLflow: pip install 'mnistlab[mlflow]'") from e
    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        return client, found.experiment_id if found else client.create_experiment(experiment)
    except Exception as e:
        raise UserError(f"--log mlflow{':' + uri if uri else ''}: could not open the tracking store "
                        f"({type(e).__name__}: {e})") from e


def _log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[i:i + 100])


def _log_folder(client, run_id: str, folder: Path, skip: Sequence[str] = ()) -> None:
    """The folder's files as the run's artifacts, its subfolders under their names; `skip`
    names what is not worth copying (checkpoints, a study's database), hidden files too."""
    for entry in sorted(folder.iterdir()):
        if entry.name in skip or entry.name.startswith("."):
            continue
        if entry.is_dir():
            client.log_artifacts(run_id, str(entry), entry.name)
        else:
            client.log_artifact(run_id, str(entry))


def _log_onnx(client, run_id: str, run_dir: Path) -> None:
    """The run's network as an MLflow model named "model" (the onnx flavour, the graph
    `mnistlab export` writes): listed under the run's logged models, loadable with
    `mlflow.onnx.load_model("models:/<id>")` and servable with `mlflow models serve`.

    Through the client (`mlflow.onnx.save_model` writes the folder, `create_logged_model`
    and `log_model_artifacts` send it), not `mlflow.onnx.log_model`, which logs through the
    fluent API's global active run where these loggers hold their own client. A run without
    weights (diverged) has no model."""
    import mlflow.onnx
    from mlflow.entities import LoggedModelStatus

    from mnistlab import export, runs

    if not (run_dir / runs.WEIGHTS).is_file():
        return
    record = runs.open_run(run_dir)
    experiment_id = client.get_run(run_id).info.experiment_id
    logged = client.create_logged_model(experiment_id, name="model", source_run_id=run_id)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        mlflow.onnx.save_model(export.onnx_model(record.spec, record.params()), str(folder))
        client.log_model_artifacts(logged.model_id, str(folder))
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)


def _finish_run(client, run_id: str, status: str, metrics: dict[str, float], folder: Path | None,
                skip: Sequence[str] = (), model_dir: Path | None = None) -> None:
    """End an MLflow run: its last metrics and status; the folder's files and network
    (`model_dir`'s, default the folder's) as artifacts; marked terminated whatever fails."""
    from mlflow.entities import Metric, RunTag

    try:
        stamp = int(time.time() * 1000)
        tags = [RunTag("mnistlab.status", status)]
        if folder is not None:
            tags.append(RunTag("mnistlab.run_dir", str(Path(folder).resolve())))
        client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items() if v is not None],
                         tags=tags)
        if folder is not None and Path(folder).is_dir():
            _log_folder(client, run_id, Path(folder), skip)
            _log_onnx(client, run_id, Path(model_dir or folder))
    finally:
        client.set_terminated(run_id, MlflowLogger.STATUS.get(status, "FAILED"))


class MlflowLogger:
    """One MLflow run per training run, through `MlflowClient` (no global MLflow state); with
    `parent`, a child run of a sweep's or study's (its client, experiment and tag
    `mlflow.parentRunId`)."""

    # A run that stopped as it was meant to (its epochs, patience, a pruner) finished.
    STATUS = {"completed": "FINISHED", "stopped": "FINISHED", "pruned": "FINISHED", "diverged": "FAILED",
              "interrupted": "KILLED"}

    def __init__(self, spec: RunSpec, uri: str | None = None, experiment: str = EXPERIMENT, *,
                 parent: MlflowParent | None = None, point: dict[str, Any] | None = None,
                 tags: dict[str, Any] | None = None):
        if parent is None:
            self.client, experiment_id = _open_mlflow(uri, experiment)
        else:
            self.client, experiment_id = parent.client, parent.experiment_id
        tags = {"mnistlab.dataset": spec.dataset, **{k: str(v) for k, v in (tags or {}).items()}}
        if parent is not None:
            tags["mlflow.parentRunId"] = parent.run_id  # MLflow's own tag: the UI nests the run
        try:
            self.run_id = self.client.create_run(experiment_id, run_name=spec.name, tags=tags).info.run_id
            _log_params(self.client, self.run_id, mlflow_params(spec, point))
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
        test = summary.get("test") or {}
        _finish_run(self.client, self.run_id, status, {f"test_{k}": test[k] for k in ("loss", "accuracy") if k in test},
                    run_dir)


class MlflowParent:
    """The MLflow run of a sweep or study, parent of one run per member or trial."""

    def __init__(self, kind: str, name: str, uri: str | None = None, params: dict[str, Any] | None = None,
                 experiment: str = EXPERIMENT):
        self.client, self.experiment_id = _open_mlflow(uri, experiment)
        try:
            self.run_id = self.client.create_run(self.experiment_id, run_name=name,
                                                 tags={"mnistlab.kind": kind}).info.run_id
            _log_params(self.client, self.run_id, {k: str(v) for k, v in (params or {}).items()})
        except Exception as e:
            raise UserError(f"--log mlflow{':' + uri if uri else ''}: could not open the tracking store "
                            f"({type(e).__name__}: {e})") from e

    def child(self, spec: RunSpec, point: dict[str, Any] | None, tags: dict[str, Any]) -> MlflowLogger:
        return MlflowLogger(spec, parent=self, point=point, tags=tags)

    def finish(self, status: str, metrics: dict[str, float], folder: Path | None, skip: Sequence[str] = ()) -> None:
        # The network logged is the best run's (a sweep's best/, a study's best -> trials/N).
        best = Path(folder) / "best" if folder is not None else None
        _finish_run(self.client, self.run_id, status, metrics, folder, skip, best)


# ------------------------------------------------------------------ sweeps and studies


class Family:
    """The loggers of a sweep or a study: a parent for the whole, a child per member or trial.

        with tracking.Family(log, "sweep", sweep.name, metric=sweep.metric, records_dir=sweeps_dir,
                             searched=keys, params={"metric": sweep.metric}) as logs:
            logs.open(key, spec, point, tags)           # a child, when it starts training
            logs.on_epoch(key, record, weights)         # weights: only when `logs.wants_weights`
            logs.end(key, status, summary)              # when it stops
            logs.done(status, metrics, folder, skip)    # the whole; leaving the block finishes it

    The parents are opened here, so a bad target fails before anything is written. A
    parent whose logging fails is reported once through `warn` and dropped, children and
    all: training goes on. Leaving the block without `done` ends it as interrupted (Ctrl-C)
    or failed. A child still open then did not reach its end: it ends interrupted (failed,
    when the whole failed).
    """

    def __init__(self, targets: Sequence[str], kind: str, name: str, *, metric: str,
                 records_dir: str | Path | None, searched: Sequence[str] = (), params: dict[str, Any] | None = None,
                 warn: Callable[[str], None] = _warn):
        self.parents: list[Any] = []
        for what, where in _in_opening_order(targets):
            if what == "mlflow":
                self.parents.append(MlflowParent(kind, name, where, params))
            else:
                self.parents.append(TensorBoardParent(tensorboard_dir(where, records_dir, name), metric, searched,
                                                      histograms=what == HISTOGRAMS))
        self.live = list(self.parents)
        self.children: dict[Hashable, list[tuple[Any, Logger]]] = {}
        self.warn = warn
        self.result: tuple | None = None

    @property
    def wants_weights(self) -> bool:
        return any(getattr(parent, "histograms", False) for parent in self.live)

    def _drop(self, parent: Any, what: str, e: Exception) -> None:
        if parent in self.live:  # a view failing must not cost the run
            self.live.remove(parent)
            self.warn(f"{type(parent).__name__} {what}: {type(e).__name__}: {e}")

    def open(self, key: Hashable, spec: RunSpec, point: dict[str, Any] | None = None,
             tags: dict[str, Any] | None = None, history: Sequence[dict[str, Any]] = ()) -> None:
        """A child for `key` (nothing if it has one), fed `history`: the epochs it trained
        before (a resumed sweep's member)."""
        if key in self.children:
            return
        self.children[key] = []
        for parent in list(self.live):
            try:
                self.children[key].append((parent, parent.child(spec, point, tags or {})))
            except Exception as e:
                self._drop(parent, "could not open a child run", e)
        for record in history:
            self.on_epoch(key, record)

    def on_epoch(self, key: Hashable, record: dict[str, Any], weights: dict[str, np.ndarray] | None = None) -> None:
        for parent, logger in self.children.get(key, []):
            if parent in self.live:
                try:
                    feed(logger, record, weights)
                except Exception as e:
                    self._drop(parent, "stopped logging", e)

    def end(self, key: Hashable, status: str, summary: dict[str, Any] | None = None) -> None:
        for parent, logger in self.children.pop(key, []):
            if parent in self.live:
                try:
                    logger.finish(status, summary or {}, None)
                except Exception as e:
                    self._drop(parent, "could not finish a child run", e)

    def done(self, status: str, metrics: dict[str, float] | None = None, folder: Path | None = None,
             skip: Sequence[str] = ()) -> None:
        """How the whole ended: status, the parent's metrics, its folder (artifacts) less `skip`."""
        self.result = (status, metrics or {}, folder, tuple(skip))

    def __enter__(self) -> Family:
        return self

    def __exit__(self, kind, error, _) -> None:
        stopped = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        status, metrics, folder, skip = self.result or (stopped, {}, None, ())
        for key in list(self.children):
            self.end(key, "failed" if status == "failed" else "interrupted")
        for parent in list(self.live):
            try:
                parent.finish(status, metrics, folder, skip)
            except Exception as e:
                self._drop(parent, "could not finish", e)
