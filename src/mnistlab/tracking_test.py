"""tracking.py: what TensorBoard and MLflow read back is what training recorded."""

import json

import pytest
from typer.testing import CliRunner

import mnistlab
from mnistlab import runs, tracking
from mnistlab.errors import UserError

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


def test_parse_targets():
    assert tracking.parse("tensorboard") == ("tensorboard", None)
    assert tracking.parse("tensorboard:logs/tb") == ("tensorboard", "logs/tb")
    assert tracking.parse("mlflow:sqlite:///x.db") == ("mlflow", "sqlite:///x.db")
    with pytest.raises(UserError, match="did you mean 'mlflow'"):
        tracking.parse("mlfow")
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
    """One store for the module: creating MLflow's SQLite schema takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


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


def test_bad_log_target_fails_before_training(tmp_path):
    from mnistlab import cli

    done = CliRunner().invoke(cli.app, ["train", "--preset", "fast", "--runs-dir", str(tmp_path), "--log", "wandb"])
    assert isinstance(done.exception, UserError) and not list(tmp_path.iterdir())
