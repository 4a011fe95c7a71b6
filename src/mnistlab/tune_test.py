"""tune.py: Optuna studies trained as populations, on real MNIST and a real PostgreSQL server.

The PostgreSQL server is started here (initdb into a temporary folder, 127.0.0.1 on a free
port) and stopped at the end; `.ci/run` installs Debian's `postgresql` when it is missing.
"""

import contextlib
import dataclasses
import glob
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import tomli_w
from optuna.trial import TrialState

from mnistlab import data, engine, runs, search, tune
from mnistlab.errors import UserError
from mnistlab.training import train

pytestmark = pytest.mark.slow  # processes, servers, or training for seconds each

# Small, real trials: 2000 MNIST images (1500 train / 500 validation), a 784-32-10 network.
BASE = ["training.subset=2000", "training.epochs=3", "training.validation_split=0.25",
        "training.batch_size=100", "optimizer.schedule.name=constant", "model.layers.0.units=32"]


def space(name="t", params=None, settings=None, set_=BASE, **top):
    raw = {"name": name, "base": "fast", "set": set_, "lanes": 2, **top,
           "search": {"params": params or {
               "optimizer.learning_rate": {"choice": [1e-5, 3e-3, 1e-2]},
               "mlp.dropout": {"distribution": "uniform", "low": 0.0, "high": 0.3}}},
           "tune": {"sampler": "random", "pruner": "none", "batch": 2, "seed": 0, **(settings or {})}}
    return raw


def load(raw) -> tune.TuneSpec:
    return tune.tune_from_dict(raw)


@pytest.fixture(scope="module")
def mnist(mnist_root):
    return data.load("mnist", mnist_root)


@pytest.fixture(scope="module")
def no_test(mnist):
    """MNIST without its test set: the search must never need it."""
    return dataclasses.replace(mnist, test_images=None, test_labels=None)


def trials_of(storage, name):
    """The study's trials as its storage (a URL or an opened storage) holds them now."""
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


# ------------------------------------------------------------------ the space in Optuna's words


def test_space_becomes_optuna_distributions_and_back():
    t = load(space(params={
        "optimizer.learning_rate": {"distribution": "log_uniform", "low": 1e-4, "high": 1e-1},
        "mlp.dropout": {"distribution": "uniform", "low": 0.0, "high": 0.5},
        "mlp.hidden_layers": {"distribution": "int_uniform", "low": 1, "high": 3},
        "model.layers.0.units": [16, 32],
        "optimizer.schedule": {"choice": [{"name": "constant"}, {"name": "cosine", "decay_steps": 45}]}}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    points = []
    for _ in range(60):
        trial = study.ask()
        points.append((trial, tune.suggest(trial, t)))
        study.tell(trial, 0.0)
    lrs = [p["optimizer.learning_rate"] for _, p in points]
    assert min(lrs) >= 1e-4 and max(lrs) <= 1e-1
    assert 0.25 < np.mean(np.array(lrs) < np.sqrt(1e-4 * 1e-1)) < 0.75  # log-uniform: half below the geometric mean
    assert {p["mlp.hidden_layers"] for _, p in points} == {1, 2, 3}
    assert {p["model.layers.0.units"] for _, p in points} == {16, 32}
    # Tables are not valid Optuna choices: they travel as JSON text and come back as tables.
    schedules = [p["optimizer.schedule"] for _, p in points]
    assert {json.dumps(s, sort_keys=True) for s in schedules} == {
        '{"name": "constant"}', '{"decay_steps": 45, "name": "cosine"}'}
    trial, point = points[0]
    assert isinstance(trial.params["optimizer.schedule"], str)
    assert tune.point_of(trial.params, t) == point
    spec = tune.trial_spec(t, tune._base(t), point, "x")
    assert spec.optimizer.learning_rate == point["optimizer.learning_rate"]
    assert len(spec.model.dense_layers) == point["mlp.hidden_layers"] + 1


# ------------------------------------------------------------------ the cost-aware sampler


def test_a_trials_cost_is_its_multiply_adds_per_image_times_its_epochs():
    t = load(space(params={"mlp.hidden_layers": [1, 2], "mlp.units": [64, 2048], "training.epochs": [2, 3]}))
    cost = tune.trial_cost(t)
    assert cost({"mlp.hidden_layers": 2, "mlp.units": 64, "training.epochs": 3}) == (784 * 64 + 64 * 64 + 64 * 10) * 3
    assert cost({"mlp.hidden_layers": 1, "mlp.units": 2048, "training.epochs": 2}) == (784 * 2048 + 2048 * 10) * 2
    assert cost({"mlp.units": 64}) == (784 * 64 + 64 * 10) * 3  # the others as the base has them
    assert cost({"mlp.units": -1}) == float("inf")  # a network the spec refuses is never preferred


def _cost_study(units, settings, seed, told=0, spent=0.0):
    """A study of units x dropout; `told` rounds of history in which the larger units score
    0.99 and the smaller 0.5; its sampler as tune makes it, `spent` of the budget used."""
    t = load(space(params={"mlp.units": {"choice": units},
                           "mlp.dropout": {"distribution": "uniform", "low": 0.0, "high": 0.5}},
                   settings={"sampler": "tpe", "startup_trials": 0, **settings}))
    study = optuna.create_study(direction="maximize", sampler=tune.make_sampler(t, t.settings, seed, spent))
    space_ = {"mlp.units": optuna.distributions.CategoricalDistribution(units),
              "mlp.dropout": optuna.distributions.FloatDistribution(0.0, 0.5)}
    for i in range(told):
        for u, value in zip(units, (0.5, 0.99)):
            study.add_trial(optuna.trial.create_trial(params={"mlp.units": u, "mlp.dropout": 0.05 * i},
                                                      distributions=space_, value=value))
    return tune.suggest(study.ask(), t)["mlp.units"]


def test_cost_aware_tpe_tries_the_cheap_structure_first_while_it_knows_nothing():
    assert [_cost_study([64, 2048], {}, seed) for seed in range(10)] == [64] * 10
    plain = [_cost_study([64, 2048], {"cost_aware": False}, seed) for seed in range(10)]
    assert set(plain) == {64, 2048}  # TPE alone draws from the prior: either


def test_cost_aware_tpe_pays_for_a_costly_structure_whose_promise_outweighs_its_cost():
    # 128 units cost twice 64's and scored far better: chosen from the start
    assert [_cost_study([64, 128], {}, seed, told=10) for seed in range(10)] == [128] * 10
    # 2048 units cost 32 times as much: improvement per cost keeps to 64 ...
    assert [_cost_study([64, 2048], {}, seed, told=10) for seed in range(10)] == [64] * 10
    # ... until the budget is spent and the weight of cost has cooled to nothing (plain TPE)
    assert [_cost_study([64, 2048], {}, seed, told=10, spent=1.0) for seed in range(10)] == [2048] * 10
    assert [_cost_study([64, 2048], {"cost_aware": False}, seed, told=10) for seed in range(10)] == [2048] * 10


def test_startup_trials_default_to_none_for_the_cost_aware_tpe_and_ten_otherwise():
    assert tune.startup_trials(tune.TuneSettings()) == 0
    assert tune.startup_trials(tune.TuneSettings(cost_aware=False)) == 10
    assert tune.startup_trials(tune.TuneSettings(sampler="cmaes")) == 10
    assert tune.startup_trials(tune.TuneSettings(startup_trials=3)) == 3


def test_the_budget_spent_is_the_further_along_of_trials_and_time():
    assert tune.budget_spent(3, 10, 50.0, None) == 0.3
    assert tune.budget_spent(3, 10, 50.0, 100.0) == 0.5
    assert tune.budget_spent(9, 10, 50.0, 100.0) == 0.9
    assert tune.budget_spent(0, 100_000, 0.0, None) == 0.0


def test_grid_space_and_its_size():
    t = load(space(params={"optimizer.learning_rate": [1e-3, 1e-2], "mlp.hidden_layers": {
        "distribution": "int_uniform", "low": 1, "high": 3}}))
    assert tune.grid_space(t) == {"optimizer.learning_rate": [1e-3, 1e-2], "mlp.hidden_layers": [1, 2, 3]}
    assert tune.grid_size(t) == 6
    with pytest.raises(UserError, match="a grid takes lists"):
        tune.grid_space(load(space()))


@pytest.mark.parametrize("change, message", [
    ({"seeds": 2}, r"a trial's seeds are `\[tune\] seeds = 2`"),
    ({"patience": 2}, "pruner"),
    ({"metric": "accuracy"}, "ranks trials on validation"),
    ({"set": [s for s in BASE if "validation" not in s]}, "needs validation data"),
    ({"search": {"params": {"optimizer.learnig_rate": [0.1]}}}, "did you mean 'learning_rate'"),
    ({"search": {"method": "list", "points": [{"optimizer.learning_rate": 0.1}]}}, "a list of points is for sweeps"),
    ({"tune": {"sampler": "tpee"}}, "sampler"),
])
def test_bad_spaces_are_refused_before_any_trial(change, message):
    raw = space()
    if "set" in change:
        raw["set"] = change.pop("set")
    raw.update(change)
    with pytest.raises(UserError, match=message):
        load(raw)


# ------------------------------------------------------------------ a study on SQLite


@pytest.fixture(scope="module")
def pruned_study(no_test, tmp_path_factory):
    """Six finished trials, batches of 3 as populations, the median pruner after 2 complete trials."""
    folder = tmp_path_factory.mktemp("pruned")
    t = load(space("pruned", settings={"pruner": "median", "prune_after": 2, "warmup_epochs": 0, "batch": 3,
                                       "seed": 2}))
    events = []
    result = tune.run(t, 6, study_dir=folder, arrays=no_test, on_event=events.append)
    return t, result, events


def test_study_counts_reports_and_ranks(pruned_study):
    t, result, _ = pruned_study
    trials = trials_of(result.storage, "pruned")
    assert result.storage == f"sqlite:///{(result.path / 'study.db').resolve()}"
    # Optuna's dashboard and plots name the objective by the metric, read back from the storage.
    assert optuna.load_study(study_name="pruned", storage=result.storage).metric_names == [t.sweep.metric]
    finished = [x for x in trials if x.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6 and len(trials) == 6  # exactly N: none lost, none extra
    lines = [json.loads(line) for line in (result.path / "metrics.jsonl").read_text().splitlines()]
    for x in finished:
        mine = [m for m in lines if m["trial"] == x.number]
        # Every epoch's validation value was reported to the trial, and nothing else.
        assert x.intermediate_values == {m["epoch"]: pytest.approx(m["val_accuracy"]) for m in mine}
        if x.state == TrialState.COMPLETE:
            assert len(mine) == 3 and x.value == pytest.approx(mine[-1]["val_accuracy"])
    rows = json.loads((result.path / "trials.json").read_text())
    assert result.trials == rows
    complete = sorted((x.value for x in trials if x.state == TrialState.COMPLETE), reverse=True)
    assert [r["value"] for r in rows[:len(complete)]] == complete  # best first
    summary = json.loads((result.path / "study.json").read_text())
    assert summary["complete"] + summary["pruned"] == 6 and summary["failed"] == 0
    assert summary["best_value"] == complete[0] and summary["best_trial"] == rows[0]["trial"]
    assert summary["best_params"] == rows[0]["params"]
    assert set(summary["importances"]) <= set(t.params) and summary["importances"]
    assert abs(sum(summary["importances"].values()) - 1) < 1e-6
    header = (result.path / "trials.csv").read_text().splitlines()[0]
    assert "param:optimizer.learning_rate" in header and len((result.path / "trials.csv").read_text().splitlines()) == 7


def test_pruning_follows_the_median_rule_inside_populations(pruned_study):
    """Recompute the median rule from the stored curves: every decision, both ways."""
    _, result, events = pruned_study
    trials = trials_of(result.storage, "pruned")
    pruned = [x for x in trials if x.state == TrialState.PRUNED]
    assert pruned, "this seed's draws include learning rate 1e-5, which the rule must prune"
    for x in trials:
        # One worker, one program per batch: the trials complete when x's epochs were judged
        # are those that completed before x's batch was asked.
        done_before = [y for y in trials if y.state == TrialState.COMPLETE and y.datetime_complete < x.datetime_start]
        last = max(x.intermediate_values)
        checked = range(1, last + 1) if x.state == TrialState.PRUNED else range(1, 3)
        for step in checked:
            if len(done_before) < 2:
                continue
            best_so_far = max(v for s, v in x.intermediate_values.items() if s <= step)
            median = statistics.median(y.intermediate_values[step] for y in done_before)
            should = best_so_far < median
            assert should == (x.state == TrialState.PRUNED and step == last), (x.number, step)
    # A pruned member stopped inside its running population: a batch-mate of the same
    # program trained on for more epochs after it.
    batches = [e["trials"] for e in events if e["event"] == "batch"]
    epochs = {x.number: len(x.intermediate_values) for x in trials}
    assert any(epochs[p.number] < epochs[o] for p in pruned for b in batches if p.number in b for o in b)
    # Each batch says how long its longest trial trains (the progress bar's length).
    for e in (e for e in events if e["event"] == "batch"):
        assert e["epochs"] == 3 >= max(epochs[n] for n in e["trials"])  # BASE: 3 epochs; pruned ones stop sooner


def test_best_trial_is_a_run_folder_with_its_weights(pruned_study, no_test, keras_validation):
    _, result, _ = pruned_study
    summary = json.loads((result.path / "study.json").read_text())
    best = result.path / "best"
    assert summary["best_run"] == "best" and os.readlink(best) == f"trials/{summary['best_trial']}"
    run = runs.open_run(best)
    assert run.summary["trial"] == summary["best_trial"]
    # The weights, evaluated afresh on the validation split, give the value Optuna was told.
    x_val, y_val = keras_validation(run.spec, no_test)
    assert engine.evaluate(run.spec, run.params(), x_val, y_val)["accuracy"] == pytest.approx(
        summary["best_value"], abs=1e-6)
    assert [p.name for p in (result.path / "trials").iterdir()] == [str(summary["best_trial"])]


def test_a_grid_asked_one_trial_at_a_time_trains_every_point_once(no_test, tmp_path):
    # Each batch has its own sampler (seeded by the trials so far): the grid's order must not follow it.
    lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    t = load(space("grid1", params={"optimizer.learning_rate": lrs}, settings={"sampler": "grid", "batch": 1},
                   set_=[*BASE[:1], "training.epochs=1", *BASE[2:]]))
    result = tune.run(t, 5, study_dir=tmp_path, arrays=no_test)
    assert sorted(x.params["optimizer.learning_rate"] for x in trials_of(result.storage, "grid1")) == lrs


@pytest.mark.parametrize("sampler, pruner", [("grid", "halving"), ("cmaes", "hyperband"), ("tpe", "median")])
def test_every_sampler_and_pruner_runs_a_study(sampler, pruner, no_test, tmp_path):
    params = ({"optimizer.learning_rate": [3e-3, 1e-2], "mlp.dropout": [0.0, 0.2]} if sampler == "grid" else {
        "optimizer.learning_rate": {"distribution": "log_uniform", "low": 1e-3, "high": 1e-2},
        "mlp.dropout": {"distribution": "uniform", "low": 0.0, "high": 0.3},
        "mlp.units": {"choice": [16, 32]}})
    t = load(space(sampler, params=params, settings={"sampler": sampler, "pruner": pruner, "startup_trials": 2}))
    result = tune.run(t, 5, study_dir=tmp_path, arrays=no_test)
    trials = trials_of(result.storage, sampler)
    finished = [x for x in trials if x.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if sampler == "grid":  # the grid has 4 points: 5 is lowered to 4, each point once
        assert len(finished) == len(trials) == 4
        assert sorted(tuple(sorted(x.params.items())) for x in trials) == sorted(
            tuple(sorted({"optimizer.learning_rate": lr, "mlp.dropout": d}.items()))
            for lr in (3e-3, 1e-2) for d in (0.0, 0.2))
    else:
        assert len(finished) == len(trials) == 5
        assert all(1e-3 <= x.params["optimizer.learning_rate"] <= 1e-2 for x in trials)
    assert result.summary["sampler"] == sampler and result.summary["pruner"] == pruner


def test_a_conv_space_tunes(no_test, tmp_path):
    root = Path(__file__).resolve().parents[2] / "examples"
    assert tune.load_tune(root / "tune-cnn.toml").sweep.base == "cnn"  # the examples parse
    assert tune.load_tune(root / "tune-mlp.toml").settings.cost_aware is True
    raw = space("conv", set_=["training.subset=1200", "training.epochs=2", "training.validation_split=0.25",
                              "training.batch_size=100", "optimizer.schedule.name=constant"],
                params={"model.layers.2.filters": {"choice": [4, 8]},
                        "optimizer.learning_rate": {"distribution": "log_uniform", "low": 1e-3, "high": 1e-2}})
    raw["base"] = "cnn"
    result = tune.run(load(raw), 3, study_dir=tmp_path, arrays=no_test)
    trials = trials_of(result.storage, "conv")
    assert len(trials) == 3 and all(x.state == TrialState.COMPLETE for x in trials)
    best = runs.open_run(result.path / "trials" / str(result.summary["best_trial"]))
    chosen = next(x for x in trials if x.number == result.summary["best_trial"])
    assert best.params()["conv2d/kernel"].shape[-1] == chosen.params["model.layers.2.filters"]


@pytest.fixture(scope="module")
def resumed(no_test, tmp_path_factory):
    """A study interrupted (Ctrl-C) in its second batch, then run again to the end."""
    folder = tmp_path_factory.mktemp("resume")
    t = load(space("resume"))

    def interrupt(event):
        if event["event"] == "epoch" and event["trials"] == [2, 3]:
            raise KeyboardInterrupt

    first = tune.run(t, 4, study_dir=folder, arrays=no_test, on_event=interrupt)
    before = {x.number: (x.state, x.value, x.params) for x in trials_of(first.storage, "resume")}
    second = tune.run(t, 4, study_dir=folder, arrays=no_test)
    return t, first, before, second


def test_sqlite_resume_after_an_interrupted_run(resumed):
    _, first, before, second = resumed
    assert first.interrupted
    assert [s for s, _, _ in before.values()].count(TrialState.COMPLETE) == 2
    assert first.counts.failed == 2 and first.counts.waiting == 2  # failed, and queued again
    trials = trials_of(second.storage, "resume")
    complete = [x for x in trials if x.state == TrialState.COMPLETE]
    assert len(complete) == 4 and len(trials) == 6 and second.counts.running == 0
    for number, (state, value, params) in before.items():
        if state == TrialState.COMPLETE:  # kept as they were, not trained again
            assert trials[number].state == TrialState.COMPLETE and trials[number].value == value
        if state == TrialState.FAIL:  # re-run once, with the same parameters
            (again,) = [x for x in complete if tune.retried_from(x) == number]
            assert again.params == params and again.number >= 4


def test_timeout_is_a_budget(no_test, tmp_path):
    """Out of time after the first epoch: the trials in training are failed and queued again."""
    t = load(space("budget"))
    late = lambda event: time.sleep(1.2) if event["event"] == "batch" else None  # noqa: E731
    result = tune.run(t, 4, study_dir=tmp_path, arrays=no_test, timeout=1.0, on_event=late)
    assert result.timed_out and not result.interrupted
    trials = trials_of(result.storage, "budget")
    assert [x.state for x in trials] == [TrialState.FAIL] * 2 + [TrialState.WAITING] * 2
    assert all(len(x.intermediate_values) == 1 for x in trials[:2])  # stopped after epoch 1 of 3
    assert [tune.retried_from(x) for x in trials[2:]] == [0, 1]


def test_final_tests_once_and_records_it(resumed, mnist, no_test):
    t, _, _, second = resumed
    study = optuna.load_study(study_name="resume", storage=second.storage)
    best = study.best_trial
    done = tune.final(t, study_dir=second.path, arrays=mnist)
    assert not done.again and done.record["trial"] == best.number and done.record["evaluation"] == 1
    run = runs.open_run(done.record["run"])
    assert run.spec.optimizer.learning_rate == best.params["optimizer.learning_rate"]
    assert run.summary["tune"]["trial"] == best.number and run.summary["train_samples"] == 1500
    # The recorded figure is the run's weights on the 10,000 test images, computed afresh.
    fresh = engine.evaluate(run.spec, run.params(), mnist.test_images, mnist.test_labels)
    assert done.record["test"]["accuracy"] == pytest.approx(fresh["accuracy"], abs=1e-6)
    assert done.record["test"]["samples"] == 10000
    # Asked again: the recorded result, the test set unread (it is not even there).
    again = tune.final(t, study_dir=second.path, arrays=no_test)
    assert again.again and again.record == done.record
    assert len(list((second.path / "final").iterdir())) == 1
    # --retest is explicit, and recorded as a second, numbered evaluation (here on train + validation).
    retest = tune.final(t, study_dir=second.path, arrays=mnist, retest=True, with_validation=True)
    assert not retest.again and retest.record["evaluation"] == 2 and retest.record["retest"]
    assert runs.open_run(retest.record["run"]).summary["train_samples"] == 2000
    recorded = json.loads((second.path / "final.json").read_text())
    assert [r["evaluation"] for r in recorded] == [1, 2]
    assert optuna.load_study(study_name="resume", storage=second.storage).user_attrs[tune.TESTS_ATTR] == recorded
    assert json.loads((second.path / "study.json").read_text())["test_evaluations"] == recorded


# ------------------------------------------------------------------ PostgreSQL, several workers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of our own on 127.0.0.1, for this module only."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        pytest.fail("no PostgreSQL server under /usr/lib/postgresql: apt-get install postgresql (.ci/run does)")
    bindir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="mnistlab-pg-"))
    as_user = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]

    def pg(*cmd):
        return subprocess.run([*as_user, *map(str, cmd)], check=True, capture_output=True, text=True, timeout=120)

    port = _free_port()
    pg(bindir / "initdb", "-D", root / "data", "-A", "trust", "-U", "mnistlab", "--no-sync", "-E", "UTF8")
    pg(bindir / "pg_ctl", "-D", root / "data", "-l", root / "log", "-w", "-t", "60", "-o",
       f"-k {root} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        pg(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "mnistlab", "optuna")
        yield f"postgresql://mnistlab@127.0.0.1:{port}/optuna"
    finally:
        pg(bindir / "pg_ctl", "-D", root / "data", "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def mnistlab(*args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "mnistlab", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "250", **(env or {})},
                            **kwargs)


def test_two_workers_on_postgresql_survive_a_killed_one(postgres, mnist_root, tmp_path):
    raw = space("shared", set_=[*BASE, "training.epochs=4"], settings={
        "batch": 1, "heartbeat_interval": 1, "grace_period": 5})
    (tmp_path / "space.toml").write_text(tomli_w.dumps(raw))
    env = {"MNISTLAB_DATA": str(mnist_root)}
    common = ["tune", tmp_path / "space.toml", "--trials", 4, "--storage", postgres]
    watch = optuna.storages.RDBStorage(postgres)  # the tables exist before the workers start
    survivor = mnistlab(*common, "--study-dir", tmp_path / "a", env=env)
    victim = mnistlab(*common, "--study-dir", tmp_path / "b", env=env)
    try:
        # Kill the victim while it holds a running trial (its first includes compiling: seconds).
        deadline, held = time.time() + 150, None
        while held is None:
            assert time.time() < deadline, "the victim never held a trial"
            assert victim.poll() is None, victim.communicate()
            time.sleep(0.05)
            with contextlib.suppress(KeyError):  # the workers may not have made the study yet
                held = next((x.number for x in trials_of(watch, "shared") if x.state == TrialState.RUNNING
                             and str(x.user_attrs.get("worker", "")).endswith(f":{victim.pid}")), None)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        out, err = survivor.communicate(timeout=300)
    finally:
        for p in (survivor, victim):
            if p.poll() is None:
                p.kill()
    assert survivor.returncode == 0, err + out
    trials = trials_of(postgres, "shared")
    by_number = {x.number: x for x in trials}
    complete = [x for x in trials if x.state == TrialState.COMPLETE]
    assert len(complete) == 4  # exactly the requested number
    assert not [x for x in trials if x.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert by_number[held].state == TrialState.FAIL  # found dead by its stale heartbeat
    (rerun,) = [x for x in complete if tune.retried_from(x) == held]  # and trained again, once
    assert rerun.params == by_number[held].params
    assert str(rerun.user_attrs["worker"]).endswith(f":{survivor.pid}")
    for x in trials:  # every failure was a dead worker's trial, and each was re-run once
        if x.state == TrialState.FAIL:
            assert len([y for y in complete if tune.retried_from(y) == x.number]) == 1
    summary = json.loads((tmp_path / "a" / "study.json").read_text())
    assert summary["complete"] == 4 and summary["storage"] == postgres
    assert "4 complete" in out

    # The test set, once: a second --final says so and does not evaluate again.
    final = ["tune", tmp_path / "space.toml", "--storage", postgres, "--study-dir", tmp_path / "c", "--final"]
    first = mnistlab(*final, env=env)
    out1, err1 = first.communicate(timeout=200)
    assert first.returncode == 0, err1 + out1
    assert "retrained on train: test accuracy" in out1
    second = mnistlab(*final, env=env)
    out2, err2 = second.communicate(timeout=200)
    assert second.returncode == 0, err2 + out2
    assert "the test set was already used" in out2 and "--retest" in out2
    assert len(list((tmp_path / "c" / "final").iterdir())) == 1
    (record,) = optuna.load_study(study_name="shared", storage=postgres).user_attrs[tune.TESTS_ATTR]
    assert f"test accuracy {record['test']['accuracy']:.4f}" in out1 and record["trial"] in by_number


@pytest.mark.parametrize("url, message", [
    ("nonsense", "not a database URL"),
    ("oracle+nodriver://u@127.0.0.1/x", "unknown database kind"),
    ("postgresql://mnistlab@127.0.0.1:{closed}/optuna", "cannot connect"),
])
def test_bad_or_unreachable_storage_exits_2(url, message, tmp_path):
    url = url.format(closed=_free_port())  # nothing listens there
    (tmp_path / "space.toml").write_text(tomli_w.dumps(space("bad")))
    done = subprocess.run([sys.executable, "-m", "mnistlab", "tune", str(tmp_path / "space.toml"), "--trials", "1",
                           "--storage", url, "--study-dir", str(tmp_path / "study")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and f"--storage {url}" in done.stderr
    assert "postgresql://USER:PASSWORD@HOST:5432/DB" in done.stderr  # and the fix
    assert not (tmp_path / "study").exists()  # nothing written


def test_command_line_options_override_the_tune_table_and_are_checked_as_it_is():
    table = tune.TuneSettings(sampler="random", batch=2, seed=5)
    assert tune.with_options(table, sampler=None, pruner="hyperband", batch=None) == tune.TuneSettings(
        sampler="random", pruner="hyperband", batch=2, seed=5)
    assert tune.with_options(table, cost_aware=False).cost_aware is False and table.cost_aware is True
    assert tune.with_options(table, workers=3).workers == 3 and table.workers == 1
    with pytest.raises(UserError, match=r"^--sampler 'tpee': did you mean 'tpe'\?$"):
        tune.with_options(table, sampler="tpee")
    with pytest.raises(UserError, match=r"^--pruner 'asha': expected one of: none, median, halving, hyperband$"):
        tune.with_options(table, pruner="asha")


def test_the_seed_option_draws_as_the_tune_tables_seed_does(mnist_root, tmp_path):
    def first_point(seed_in_table, option):
        raw = space(f"s{seed_in_table}{option}", settings={"seed": seed_in_table, "batch": 1},
                    set_=[*BASE[:1], "training.epochs=1", *BASE[2:]])
        (tmp_path / "space.toml").write_text(tomli_w.dumps(raw))
        folder = tmp_path / raw["name"]
        subprocess.run([sys.executable, "-m", "mnistlab", "tune", str(tmp_path / "space.toml"), "--trials", "1",
                        "--study-dir", str(folder), "--quiet", *option], check=True, timeout=300,
                       env={**os.environ, "MNISTLAB_DATA": str(mnist_root)})
        return json.loads((folder / "trials.json").read_text())[0]["params"]

    with_option = first_point(0, ["--seed", "1"])
    assert with_option == first_point(1, []) != first_point(0, [])
    # --no-cost-aware reaches the study as well (study.json records it)
    first_point(2, ["--no-cost-aware"])
    assert json.loads((tmp_path / "s2['--no-cost-aware']" / "study.json").read_text())["cost_aware"] is False
    assert json.loads((tmp_path / "s1[]" / "study.json").read_text())["cost_aware"] is True


def test_redact_hides_passwords():
    assert tune.redact("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert tune.normalize_url("postgres://u@h/db") == "postgresql://u@h/db"


def test_a_sweep_in_a_storage_is_shared_by_two_workers_and_equals_the_local_sweep(postgres, mnist_root, tmp_path):
    # Three points x two seeds: the points are the study's trials, enqueued once; two workers
    # started together train each exactly once, and each point's mean over its seeds is the
    # one the same sweep computes without a storage.
    raw = {"name": "shared-sweep", "base": "fast", "set": BASE, "seeds": 2, "lanes": 2,
           "search": {"method": "grid", "params": {"optimizer.learning_rate": [1e-3, 3e-3, 1e-2]}}}
    (tmp_path / "sweep.toml").write_text(tomli_w.dumps(raw))
    env = {"MNISTLAB_DATA": str(mnist_root)}
    optuna.storages.RDBStorage(postgres)  # the tables exist before the workers start
    workers = [mnistlab("sweep", tmp_path / "sweep.toml", "--storage", postgres, "--sweeps-dir", tmp_path / w, env=env)
               for w in ("a", "b")]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err + out
    trials = trials_of(postgres, "shared-sweep")
    assert sorted(x.params[tune.POINT] for x in trials) == [0, 1, 2]  # each point once, no more
    assert all(x.state == TrialState.COMPLETE for x in trials)
    local = search.run_sweep(search.sweep_from_dict(raw), sweeps_dir=tmp_path / "local",
                             arrays=data.load("mnist", mnist_root))
    for x in trials:
        point = next(p for p in local.points if p["point"] == x.params[tune.POINT])
        assert x.user_attrs["seeds"] == [0, 1] and x.value == pytest.approx(np.mean(x.user_attrs["seed_values"]))
        assert x.value == pytest.approx(point["mean"], abs=2e-3)


def test_a_trial_of_k_seeds_trains_them_together_and_is_their_mean(mnist, tmp_path):
    raw = space("seeds", params={"optimizer.learning_rate": {"choice": [3e-3]}},
                settings={"seeds": 3, "sampler": "grid"})
    spec = load(raw)
    result = tune.run(spec, 1, study_dir=tmp_path, arrays=mnist)
    (trial,) = trials_of(tune.default_storage(tmp_path), "seeds")
    values = trial.user_attrs["seed_values"]
    assert result.counts.complete == 1 and trial.user_attrs["seeds"] == [0, 1, 2]
    assert trial.value == pytest.approx(np.mean(values))
    for seed, value in zip((0, 1, 2), values):
        member = tune.trial_spec(spec, search.base_spec(spec.sweep), {"optimizer.learning_rate": 3e-3}, "x")
        member = member.model_copy(update={"training": member.training.model_copy(update={"seed": seed})})
        assert train(member, runs_dir=None, arrays=mnist).history[-1]["val_accuracy"] == pytest.approx(
            value, abs=2 / 500)
    # The intermediate values Optuna saw (what its pruner judges) are the means over seeds too.
    assert trial.intermediate_values[3] == pytest.approx(trial.value)


def test_sigterm_fails_and_requeues_the_trials_in_training(mnist_root, tmp_path):
    raw = space("term", set_=[*BASE, "training.epochs=200"], settings={"batch": 2})
    (tmp_path / "space.toml").write_text(tomli_w.dumps(raw))
    worker = mnistlab("tune", tmp_path / "space.toml", "--trials", 2, "--study-dir", tmp_path,
                      env={"MNISTLAB_DATA": str(mnist_root)})
    url = tune.default_storage(tmp_path)
    deadline = time.time() + 120
    while not _epochs_reported(tmp_path / "study.db"):
        assert time.time() < deadline and worker.poll() is None, worker.communicate()
        time.sleep(0.2)
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 143, err + out
    trials = trials_of(url, "term")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(failed) == 2 and all(t.user_attrs["failure"] == "interrupted" for t in failed)
    assert sorted(json.dumps(t.params, sort_keys=True) for t in waiting) == sorted(
        json.dumps(t.params, sort_keys=True) for t in failed)  # queued again, same parameters


def _epochs_reported(database: Path, trials: bool = False) -> int:
    """How many epoch results the workers have written (`trials`: how many trials have written
    one), read without writing: opening the database with Optuna while a worker creates its
    tables would race it to create them."""
    if not database.exists():
        return 0
    count = "COUNT(DISTINCT trial_id)" if trials else "COUNT(*)"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            return db.execute(f"SELECT {count} FROM trial_intermediate_values").fetchone()[0]
    except sqlite3.OperationalError:  # no such table yet, or locked by the writer this moment
        return 0


def test_two_workers_started_together_on_a_new_sqlite_study_both_run(mnist_root, tmp_path):
    raw = space("race", settings={"batch": 1})
    (tmp_path / "space.toml").write_text(tomli_w.dumps(raw))
    common = ["tune", tmp_path / "space.toml", "--trials", 4, "--study-dir", tmp_path / "study", "--json"]
    workers = [mnistlab(*common, env={"MNISTLAB_DATA": str(mnist_root)}) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err + out
    trials = trials_of(tune.default_storage(tmp_path / "study"), "race")
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 4 and len(trials) == 4
    best = max(trials, key=lambda t: t.value)  # val_accuracy: higher is better
    for out, _ in outputs:  # --json: each worker ends with the study as its storage holds it
        shown = json.loads(out)
        assert shown["study_dir"] == str(tmp_path / "study") and shown["counts"]["complete"] == 4
        assert (shown["best_trial"], shown["best_value"]) == (best.number, best.value)
        assert sorted(row["trial"] for row in shown["trials"]) == [0, 1, 2, 3]


def test_two_workers_started_together_on_a_new_postgresql_database_both_run(postgres, mnist_root, tmp_path):
    import psycopg

    server, _ = postgres.rsplit("/", 1)
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute("CREATE DATABASE race")  # no tables yet: the workers race to make them
    url = f"{server}/race"
    raw = space("race-pg", settings={"batch": 1})
    (tmp_path / "space.toml").write_text(tomli_w.dumps(raw))
    workers = [mnistlab("tune", tmp_path / "space.toml", "--trials", 4, "--storage", url, "--study-dir",
                        tmp_path / name, env={"MNISTLAB_DATA": str(mnist_root)}) for name in ("a", "b")]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err + out
    trials = trials_of(url, "race-pg")
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 4 and len(trials) == 4


def test_a_worker_that_holds_the_sqlite_lock_too_long_is_named_not_waited_for_forever(tmp_path, monkeypatch):
    import filelock

    storage = tune.open_storage(f"sqlite:///{tmp_path / 'study.db'}", tune.TuneSettings(), callback=False)
    monkeypatch.setattr(tune, "ASK_LOCK_SECONDS", 0.3)
    with tune.ask_lock(storage, "s"):  # taken and let go
        pass
    held = filelock.FileLock(f"{tmp_path / 'study.db'}.lock")  # another worker, hung while asking
    with held:  # without a timeout this would wait forever
        with pytest.raises(UserError, match=r"study\.db\.lock: another worker of study 's' has held this lock"):
            with tune.ask_lock(storage, "s"):
                pass
    with tune.ask_lock(storage, "s"):  # let go: the next worker goes on
        pass
