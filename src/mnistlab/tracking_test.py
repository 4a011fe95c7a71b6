"""tracking.py: what TensorBoard and MLflow read back is what training recorded."""

import json
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from typer.testing import CliRunner

import mnistlab
from mnistlab import runs, search, tracking, tune
from mnistlab import spec as spec_lib
from mnistlab.errors import UserError
from mnistlab.spec import flatten

SPEC = mnistlab.with_overrides(mnistlab.preset("fast"), ["training.epochs=3"])
RECORDS = [{"epoch": e, "loss": 1.0 / e, "accuracy": 0.8 + e / 100, "val_loss": 1.2 / e, "val_accuracy": 0.78 + e / 100,
            "learning_rate": 1e-3 / e, "seconds": 0.5} for e in (1, 2, 3)]
SUMMARY = {"test": {"loss": 0.25, "accuracy": 0.93, "samples": 10000}}


def scalars(logdir, tag):
    """(step, value) pairs as TensorBoard itself reads them from the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars(tag)]


def accumulator(logdir):
    """TensorBoard's reader of one folder's event files, keeping every histogram."""
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.HISTOGRAMS: 0})
    acc.Reload()
    return acc


def hparams_data(logdir):
    """The HParams plugin's data in one folder, by tag ('_hparams_/session_start_info', ...),
    parsed with the plugin's own protos."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = accumulator(logdir).PluginTagToContent("hparams")
    return {tag: plugin_data_pb2.HParamsPluginData.FromString(data) for tag, data in content.items()}


def plain(value):
    """A google.protobuf Value as Python."""
    return getattr(value, value.WhichOneof("kind"))


def as_hparams(settings):
    """Settings as HParams holds them, by hand: flags and text kept, numbers as floats, None left out."""
    return {k: v if isinstance(v, (bool, str)) else float(v) for k, v in settings.items() if v is not None}


def dashboard(logdir):
    """What TensorBoard's HParams dashboard shows for `logdir`: (experiment, session groups by
    name), from the plugin's own handlers over TensorBoard's own data provider."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    backend = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), data_provider=provider,
                                                            multiplexer=multiplexer))
    ctx = context.RequestContext()
    found = get_experiment.Handler(ctx, backend, "", api_pb2.GetExperimentRequest()).run()
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100,
                                               allowed_statuses=list(api_pb2.Status.values()))
    for h in found.hparam_infos:
        request.col_params.add(hparam=h.name)
    for m in found.metric_infos:
        request.col_params.add(metric=m.name)
    groups = list_session_groups.Handler(ctx, backend, "", request).run().session_groups
    return found, {g.name: g for g in groups}


def metric_value(group, folder, tag):
    return next(v.value for v in group.metric_values if (v.name.group, v.name.tag) == (folder, tag))


def histogram(logdir, tag, step):
    """The histogram TensorBoard reads for `tag` at `step`."""
    (found,) = [e.histogram_value for e in accumulator(logdir).Histograms(tag) if e.step == step]
    return found


def test_parse_targets():
    assert tracking.parse("tensorboard") == ("tensorboard", None)
    assert tracking.parse("tensorboard:logs/tb") == ("tensorboard", "logs/tb")
    assert tracking.parse("mlflow:sqlite:///x.db") == ("mlflow", "sqlite:///x.db")
    assert tracking.parse("tensorboard+histograms:tb") == ("tensorboard+histograms", "tb")
    with pytest.raises(UserError, match="did you mean 'mlflow'"):
        tracking.parse("mlfow")
    with pytest.raises(UserError, match="did you mean 'tensorboard[+]histograms'"):
        tracking.parse("tensorboard+histogram")
    with pytest.raises(UserError, match="nothing after ':'"):
        tracking.parse("tensorboard:")


def test_tensorboard_logger_writes_keras_layout(tmp_path):
    (logger,) = tracking.create([f"tensorboard:{tmp_path}"], SPEC)
    for r in RECORDS:
        logger(r)
    logger.finish("completed", SUMMARY, tmp_path / "run")
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.endswith("-fast")
    assert scalars(run_dir / "train", "epoch_loss") == [(r["epoch"], r["loss"]) for r in RECORDS]
    assert scalars(run_dir / "train", "epoch_learning_rate") == [(r["epoch"], r["learning_rate"]) for r in RECORDS]
    assert scalars(run_dir / "validation", "epoch_accuracy") == [(r["epoch"], r["val_accuracy"]) for r in RECORDS]
    assert scalars(run_dir / "test", "epoch_accuracy") == [(3, 0.93)]


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """One store for the module: creating MLflow's SQLite schema takes seconds. Its
    experiment keeps artifacts beside it (MLflow's default is ./mlruns, here the clone)."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(uri).create_experiment(tracking.EXPERIMENT, artifact_location=(folder / "artifacts").as_uri())
    return uri


def artifacts(client, run_id, path=None):
    """Every artifact file of a run, as paths relative to its root, walking the folders."""
    out = set()
    for a in client.list_artifacts(run_id, path):
        out |= artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def onnx_spec(client, run_id, tmp_path):
    """The specification inside the run's logged model, after checking it is one: named
    "model", ready, of the onnx flavour (its MLmodel file), the only one of the run."""
    import mlflow.artifacts
    import onnx
    import yaml

    experiment = client.get_run(run_id).info.experiment_id
    (logged,) = [m for m in client.search_logged_models([experiment]) if m.source_run_id == run_id]
    assert logged.name == "model" and logged.status.name == "READY"
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=logged.artifact_location,
                                                      dst_path=str(tmp_path / logged.model_id)))
    flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["onnx"]
    props = {p.key: p.value for p in onnx.load(folder / flavor["data"]).metadata_props}
    return json.loads(props["mnistlab.spec"])


def children(client, parent_id):
    """The runs whose `mlflow.parentRunId` is `parent_id`, by name."""
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    found = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {run.info.run_name: run for run in found}


def parent_of(client, kind, folder):
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    (run,) = client.search_runs([experiment], f"tags.`mnistlab.kind` = '{kind}' and "
                                              f"tags.`mnistlab.run_dir` = '{folder.resolve()}'")
    return run


@pytest.mark.slow
def test_mlflow_logger_records_params_metrics_and_status(mlflow_uri):
    from mlflow.tracking import MlflowClient

    uri = mlflow_uri
    (logger,) = tracking.create([f"mlflow:{uri}"], SPEC)
    for r in RECORDS[:2]:
        logger(r)
    logger.finish("diverged", {}, None)
    client = MlflowClient(uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FAILED" and run.info.run_name == "fast"
    assert run.data.params["optimizer.learning_rate"] == str(SPEC.optimizer.learning_rate)
    assert run.data.params["model.layers.0.units"] == "256"
    history = client.get_metric_history(logger.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], pytest.approx(r["val_accuracy"])) for r in RECORDS[:2]]
    assert run.data.tags["mnistlab.status"] == "diverged"


def test_a_failing_logger_is_dropped_not_fatal():
    seen, warnings = [], []

    class Broken:
        def __call__(self, record):
            raise ConnectionError("tracking server gone")

    class Fine:
        def __call__(self, record):
            seen.append(record["epoch"])

    on_epoch = tracking.chain([Broken(), Fine()], warnings.append)
    for r in RECORDS:
        on_epoch(r)
    assert seen == [1, 2, 3] and len(warnings) == 1 and "tracking server gone" in warnings[0]


@pytest.mark.slow  # MLflow's store: seconds each
def test_train_command_logs_to_both(mnist_root, mlflow_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    from mnistlab import cli

    uri = mlflow_uri
    args = ["train", "--preset", "fast", "--set", "training.subset=4000", "--set", "training.epochs=2",
            "--set", "training.validation_split=0.25", "--data-dir", str(mnist_root), "-q",
            "--runs-dir", str(tmp_path / "runs"), "--log", f"tensorboard:{tmp_path / 'tb'}", "--log", f"mlflow:{uri}"]
    done = CliRunner().invoke(cli.app, args)
    assert done.exit_code == 0, done.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    metrics = runs.open_run(run_dir).metrics
    (tb,) = (tmp_path / "tb").iterdir()
    assert scalars(tb / "validation", "epoch_loss") == [(m["epoch"], m["val_loss"]) for m in metrics]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mnistlab").experiment_id],
                                f"tags.`mnistlab.run_dir` = '{run_dir.resolve()}'")
    assert run.info.status == "FINISHED"
    assert run.data.tags["mnistlab.run_dir"] == str(run_dir.resolve())
    assert run.data.metrics["val_accuracy"] == pytest.approx(metrics[-1]["val_accuracy"])
    assert json.loads((run_dir / runs.SUMMARY).read_text())["status"] == "completed"
    # The run folder, whole, and its network as ONNX under model/.
    assert artifacts(client, run.info.run_id) == {p.name for p in run_dir.iterdir()}
    assert onnx_spec(client, run.info.run_id, tmp_path) == runs.open_run(run_dir).spec.resolved()


def test_bad_log_target_fails_before_training(tmp_path):
    from mnistlab import cli

    done = CliRunner().invoke(cli.app, ["train", "--preset", "fast", "--runs-dir", str(tmp_path), "--log", "wandb"])
    assert isinstance(done.exception, UserError) and not list(tmp_path.iterdir())
    # sweep and tune take --log too, and check it before their folders exist
    (tmp_path.parent / "s.toml").write_text(tomli_w.dumps(
        {"name": "sw", "base": "fast", "set": ["training.validation_split=0.2"],
         "search": {"method": "grid", "params": {"optimizer.learning_rate": [1e-3]}}}))
    for command in (["sweep", "--sweeps-dir"], ["tune", "--study-dir"]):
        done = CliRunner().invoke(cli.app, [command[0], str(tmp_path.parent / "s.toml"), command[1],
                                            str(tmp_path / "x"), "--log", "wandb", "--log", "tensorboard"])
        assert isinstance(done.exception, UserError) and "wandb" in str(done.exception), done.output
        assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ HParams, histograms, sweeps and studies

TINY = {  # a 784-16-10 network on 1,000 synthetic images: seconds on a CPU
    "name": "tiny", "dataset": "mnist",
    "model": {"layers": [{"type": "dense", "units": 16, "activation": "relu"},
                         {"type": "dense", "units": 10, "activation": "softmax"}]},
    "optimizer": {"name": "adam", "learning_rate": 3e-3},
    "training": {"epochs": 2, "batch_size": 50, "subset": 1000, "seed": 0, "validation": {"fraction": 0.25}},
}


def test_a_run_is_an_hparams_session_with_its_weight_histograms(synthetic, tmp_path):
    spec = spec_lib.from_dict(TINY)
    result = mnistlab.train(spec, runs_dir=tmp_path / "runs", arrays=synthetic,
                            log=[f"tensorboard+histograms:{tmp_path / 'tb'}"])
    (logdir,) = (tmp_path / "tb").iterdir()
    data = hparams_data(logdir)
    # The run's own folder is the session: the flattened specification, then its end.
    start = data["_hparams_/session_start_info"].session_start_info
    assert {k: plain(v) for k, v in start.hparams.items()} == as_hparams(flatten(spec.resolved()))
    assert start.hparams["model.layers.0.units"].number_value == 16
    assert start.hparams["optimizer.name"].string_value == "adam"
    assert data["_hparams_/session_end_info"].session_end_info.status == 1  # STATUS_SUCCESS
    # The dashboard's table: this session, its validation figures as metric columns.
    found, groups = dashboard(tmp_path / "tb")
    metrics = {(m.name.group, m.name.tag) for m in found.metric_infos}
    assert {("validation", "epoch_accuracy"), ("validation", "epoch_loss"), ("train", "epoch_loss")} <= metrics
    (group,) = groups.values()
    assert plain(group.hparams["optimizer.learning_rate"]) == pytest.approx(3e-3)
    assert metric_value(group, "validation", "epoch_accuracy") == pytest.approx(result.history[-1]["val_accuracy"])
    # Histograms of every weight array at every epoch; the last epoch's are of the weights
    # the run folder kept, read back from its file.
    weights = runs.open_run(result.run_dir).params()
    assert set(weights) == {"dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias"}
    for name, values in weights.items():
        steps = [e.step for e in accumulator(logdir / "train").Histograms(f"{name}/histogram")]
        assert steps == [1, 2]
        h = histogram(logdir / "train", f"{name}/histogram", 2)
        assert (h.num, h.min, h.max) == (values.size, float(values.min()), float(values.max()))
        assert h.sum == pytest.approx(float(values.astype(np.float64).sum()), rel=1e-6, abs=1e-9)
        assert sum(h.bucket) == values.size


def sweep_of(**over):
    raw = {"name": "sw", "base": TINY, "seeds": 1, "lanes": 2,
           "search": {"method": "grid", "params": {"optimizer.learning_rate": [1e-3, 1e-2]}}}
    return search.sweep_from_dict({**raw, **over})


@pytest.mark.slow  # MLflow's store: seconds each
def test_a_sweep_is_an_hparams_experiment_and_a_parent_mlflow_run(synthetic, mlflow_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    sweep = sweep_of()
    members = {m.spec.name: m for m in search.candidates(sweep)}
    result = search.run_sweep(sweep, sweeps_dir=tmp_path / "sweeps", arrays=synthetic,
                              log=[f"tensorboard+histograms:{tmp_path / 'tb'}", f"mlflow:{mlflow_uri}"])
    lines = [json.loads(line) for line in (result.path / search.METRICS).read_text().splitlines()]
    history = {f"sw-{i}": [r for r in lines if r["member"] == i] for i in (0, 1)}

    # TensorBoard: the sweep's folder, a run per member, the experiment at its root.
    (logdir,) = (tmp_path / "tb").iterdir()
    assert logdir.name.endswith("-sw") and {p.name for p in logdir.iterdir() if p.is_dir()} == {"sw-0", "sw-1"}
    exp = hparams_data(logdir)["_hparams_/experiment"].experiment
    assert (exp.metric_infos[0].name.group, exp.metric_infos[0].name.tag) == ("validation", "epoch_accuracy")
    differs = {h.name: h.differs for h in exp.hparam_infos}
    assert set(differs) == set(as_hparams(flatten(members["sw-0"].spec.resolved())))
    assert differs["optimizer.learning_rate"] and differs["name"] and not differs["optimizer.name"]
    found, groups = dashboard(logdir)
    assert set(groups) == {"sw-0", "sw-1"}
    for name, group in groups.items():
        assert {k: plain(v) for k, v in group.hparams.items()} == as_hparams(flatten(members[name].spec.resolved()))
        assert metric_value(group, "validation", "epoch_accuracy") == pytest.approx(history[name][-1]["val_accuracy"])
    # Each member's histograms are its own weights: the best one's are in best/, exactly;
    # each is close to its configuration trained alone (another program: other roundings).
    best = f"sw-{result.summary['best_member']}"
    for key, values in runs.open_run(result.path / "best").params().items():
        h = histogram(logdir / best / "train", f"{key}/histogram", 2)
        assert (h.num, h.min, h.max) == (values.size, float(values.min()), float(values.max()))
    for name, member in members.items():
        alone = mnistlab.train(member.spec, runs_dir=tmp_path / "alone", arrays=synthetic)
        values = runs.open_run(alone.run_dir).params()["dense/kernel"]
        h = histogram(logdir / name / "train", "dense/kernel/histogram", 2)
        assert (h.num, h.min, h.max) == (values.size, pytest.approx(values.min(), rel=1e-3),
                                         pytest.approx(values.max(), rel=1e-3))

    # MLflow: the sweep's run with its folder and best network; a child run per member.
    client = MlflowClient(mlflow_uri)
    parent = parent_of(client, "sweep", result.path)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "sw"
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(result.points[0]["mean"])
    assert parent.data.params["metric"] == "val_accuracy" and parent.data.params["members"] == "2"
    logged = artifacts(client, parent.info.run_id)
    written = {str(p.relative_to(result.path)) for p in result.path.rglob("*") if p.is_file()}
    assert logged == {p for p in written if not p.startswith("checkpoints/")}
    assert "best/weights.safetensors" in logged and "results.csv" in logged
    assert onnx_spec(client, parent.info.run_id, tmp_path) == runs.open_run(result.path / "best").spec.resolved()
    runs_ = children(client, parent.info.run_id)
    assert set(runs_) == {"sw-0", "sw-1"}
    for name, run in runs_.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params == {k: str(v) for k, v in flatten(members[name].spec.resolved()).items()}
        assert run.info.status == "FINISHED" and run.data.tags["mnistlab.status"] == "completed"
        curve = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [(m.step, m.value) for m in curve] == [(r["epoch"], pytest.approx(r["val_accuracy"]))
                                                      for r in history[name]]
        assert len(curve) == TINY["training"]["epochs"]


@pytest.mark.slow  # MLflow's store: seconds each
def test_a_study_logs_a_child_per_trial(synthetic, mlflow_uri, tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    space = tune.tune_from_dict({
        "name": "st", "base": TINY, "lanes": 2, "metric": "val_loss",
        "search": {"params": {"optimizer.learning_rate": {"choice": [1e-3, 1e-2]}, "mlp.units": {"choice": [8, 16]}}},
        "tune": {"sampler": "random", "pruner": "none", "batch": 2, "seed": 0}})
    result = tune.run(space, 2, study_dir=tmp_path / "studies" / "st", arrays=synthetic,
                      log=[f"tensorboard:{tmp_path / 'tb'}", f"mlflow:{mlflow_uri}"])
    trials = {f"st-{t.number}": t for t in optuna.load_study(study_name="st", storage=result.storage).trials}
    assert len(trials) == 2

    def spec_of(trial):
        return tune.trial_spec(space, tune._base(space), tune.point_of(trial.params, space), f"st-{trial.number}")

    client = MlflowClient(mlflow_uri)
    parent = parent_of(client, "study", result.path)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_val_loss"] == pytest.approx(result.summary["best_value"])
    logged = artifacts(client, parent.info.run_id)
    written = {str(p.relative_to(result.path)) for p in result.path.glob("*") if p.is_file()}
    assert {"study.json", "trials.csv", "tune.toml"} <= logged
    # The storage (and its lock) stays out; of the trial folders, best/ is the one kept.
    assert logged == {p for p in written if not p.startswith("study.db")} | {
        f"best/{p.name}" for p in (result.path / "best").iterdir()}
    assert onnx_spec(client, parent.info.run_id, tmp_path) == runs.open_run(result.path / "best").spec.resolved()
    runs_ = children(client, parent.info.run_id)
    assert set(runs_) == set(trials)
    for name, run in runs_.items():
        trial = trials[name]
        # Its settings as the spec has them, and the searched `mlp.units` as the space names it.
        expected = {k: str(v) for k, v in flatten(spec_of(trial).resolved()).items()}
        assert run.data.params == {**expected, "mlp.units": str(trial.params["mlp.units"])}
        assert run.data.params["model.layers.0.units"] == str(trial.params["mlp.units"])
        curve = client.get_metric_history(run.info.run_id, "val_loss")
        # Every epoch the trial reported to Optuna (the mean over its seeds), at its step.
        assert [(m.step, m.value) for m in curve] == [(s, pytest.approx(v)) for s, v in
                                                      sorted(trial.intermediate_values.items())]
        assert len(curve) == TINY["training"]["epochs"]
        assert run.data.tags["mnistlab.status"] == "completed" and run.data.tags["mnistlab.trial"] == str(trial.number)

    (logdir,) = (tmp_path / "tb").iterdir()
    exp = hparams_data(logdir)["_hparams_/experiment"].experiment
    assert (exp.metric_infos[0].name.group, exp.metric_infos[0].name.tag) == ("validation", "epoch_loss")
    assert {h.name for h in exp.hparam_infos if h.differs} >= {"optimizer.learning_rate", "mlp.units"}
    _, groups = dashboard(logdir)
    assert set(groups) == set(trials)
    for name, group in groups.items():
        assert plain(group.hparams["mlp.units"]) == trials[name].params["mlp.units"]
        assert metric_value(group, "validation", "epoch_loss") == pytest.approx(trials[name].value)


def test_a_bad_target_fails_before_a_sweep_or_study_writes_anything(tmp_path):
    with pytest.raises(UserError, match="wandb"):
        search.run_sweep(sweep_of(), sweeps_dir=tmp_path / "sweeps", log=["wandb"])
    space = tune.sweep_as_study(sweep_of())
    with pytest.raises(UserError, match="tensorboard[+]histograms"):
        tune.run(space, 2, study_dir=tmp_path / "studies" / "st", log=["tensorboard+histogram"])
    assert not list(tmp_path.iterdir())


def test_a_failing_child_logger_costs_neither_the_sweep_nor_the_other_logger(synthetic, tmp_path, monkeypatch):
    seen = []

    class Recording:
        """A parent whose children record what they are told."""

        histograms = False

        def __init__(self, *args, **kwargs):
            pass

        def child(self, spec, point, tags):
            class Child:
                def __call__(self, record):
                    seen.append((spec.name, record["epoch"]))

                def finish(self, status, summary, run_dir):
                    seen.append((spec.name, status))
            return Child()

        def finish(self, status, metrics, folder, skip=()):
            seen.append(("sweep", status))

    class Broken(Recording):
        def child(self, spec, point, tags):
            class Child:
                def __call__(self, record):
                    raise ConnectionError("tracking server gone")
            return Child()

    monkeypatch.setattr(tracking, "MlflowParent", Broken)
    monkeypatch.setattr(tracking, "TensorBoardParent", Recording)
    with pytest.warns(RuntimeWarning) as warned:
        result = search.run_sweep(sweep_of(), sweeps_dir=tmp_path, arrays=synthetic, log=["mlflow", "tensorboard"])
    assert result.summary["completed"] == 2
    told = {name: [what for n, what in seen if n == name] for name, _ in seen}
    assert told == {"sw-0": [1, 2, "completed"], "sw-1": [1, 2, "completed"], "sweep": ["completed"]}
    (warning,) = [str(w.message) for w in warned]  # once, however many members it would have logged
    assert warning.startswith("Broken stopped logging: ConnectionError: tracking server gone")


@pytest.mark.slow  # MLflow's store: seconds each
def test_an_interrupted_sweep_ends_its_runs_as_killed(synthetic, mlflow_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    def ctrl_c(progress):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search.run_sweep(sweep_of(name="cut"), sweeps_dir=tmp_path, arrays=synthetic, on_epoch=ctrl_c,
                         log=[f"mlflow:{mlflow_uri}"])
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    (parent,) = client.search_runs([experiment], "tags.`mnistlab.kind` = 'sweep' and attributes.run_name = 'cut'")
    assert parent.info.status == "KILLED" and parent.data.tags["mnistlab.status"] == "interrupted"
    runs_ = children(client, parent.info.run_id)
    assert set(runs_) == {"cut-0", "cut-1"}
    for run in runs_.values():
        assert run.info.status == "KILLED" and run.data.tags["mnistlab.status"] == "interrupted"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1]
