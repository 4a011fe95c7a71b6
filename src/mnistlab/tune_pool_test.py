"""tune_pool.py: a study's workers as processes on one machine, pinned to their cores, on real
MNIST; stopped by a real SIGTERM."""

import json
import os
import signal
import time

import pytest
import tomli_w
from optuna.trial import TrialState

from mnistlab import tune, tune_pool
from mnistlab.errors import UserError
from mnistlab.tune_test import BASE, _epochs_reported, load, mnist, mnistlab, no_test, space, trials_of  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow  # processes, training for seconds each


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 7, 16])
@pytest.mark.parametrize("workers", [1, 2, 3, 4, 5, 8, 20])
def test_core_groups_share_the_cores_evenly_in_runs(cores, workers):
    available = [c * 2 for c in range(cores)]  # any core numbers, e.g. those a cgroup allows
    groups = tune_pool.core_groups(list(reversed(available)), workers)
    assert len(groups) == workers
    if workers <= cores:  # every core to exactly one worker, consecutive, sizes differ by at most one
        assert sorted(c for g in groups for c in g) == available
        assert [c for g in groups for c in g] == available
        assert max(map(len, groups)) - min(map(len, groups)) <= 1
    else:  # one core each, every core used, shared as evenly
        assert all(len(g) == 1 for g in groups)
        uses = [sum(g == [c] for g in groups) for c in available]
        assert set(available) == {g[0] for g in groups} and max(uses) - min(uses) <= 1


def test_a_worker_on_one_core_runs_xla_single_threaded_and_keeps_the_users_flags(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    assert tune_pool.worker_environment([3]) == {"XLA_FLAGS": "--xla_dump_to=/tmp/x --xla_cpu_multi_thread_eigen=false"}
    assert tune_pool.worker_environment([2, 3]) == {}
    monkeypatch.delenv("XLA_FLAGS")
    assert tune_pool.worker_environment([0]) == {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}


def _pool_space(name, set_=BASE):
    return load(space(name, settings={"batch": 1, "workers": 2}, set_=set_))


def test_two_workers_share_the_study_each_pinned_to_its_cores(no_test, tmp_path):
    events = []
    result = tune.run(_pool_space("pool"), 4, study_dir=tmp_path, arrays=no_test, on_event=events.append)
    assert not result.interrupted and result.exit_code == 0
    trials = trials_of(result.storage, "pool")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4  # the count exact across workers
    started = [e for e in events if e["event"] == "worker"]
    # each worker read its own affinity as it started: the groups asked for, one per process
    expected = tune_pool.core_groups(sorted(os.sched_getaffinity(0)), 2)
    assert sorted(e["cores"] for e in started) == sorted(expected)
    pids = {f"{e['pid']}" for e in started}
    assert len(pids) == 2 and {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials} <= pids
    assert [e["event"] for e in events].count("start") == 1 and events[-1]["event"] == "done"
    shown = json.loads((tmp_path / tune.TRIALS_JSON).read_text())  # the outputs, written once all are done
    assert sorted(row["trial"] for row in shown) == [0, 1, 2, 3]
    assert result.summary["best_value"] == max(t.value for t in trials)
    assert json.loads((tmp_path / tune.STUDY).read_text())["workers"] == 2


def test_a_pools_workers_report_what_one_worker_would(no_test, tmp_path):
    # The grid reaches the point no network can have (0 units) in whichever worker asks for it.
    bad = space("bad", settings={"batch": 1, "sampler": "grid"}, params={"model.layers.0.units": {"choice": [32, 0, 16]}})
    with pytest.raises(UserError) as alone:
        tune.run(load(bad), 3, study_dir=tmp_path / "alone", arrays=no_test)
    bad["tune"]["workers"] = 2
    with pytest.raises(UserError) as pooled:
        tune.run(load(bad), 3, study_dir=tmp_path / "pool", arrays=no_test)
    assert str(pooled.value) == str(alone.value) and "units" in str(alone.value)
    trials = trials_of(tune.default_storage(tmp_path / "pool"), "bad")
    assert not any(t.state == TrialState.RUNNING for t in trials)  # the other worker stopped cleanly


def test_a_pool_keeps_the_timeout(no_test, tmp_path):
    # Trials that would train for an hour; 15 s for the pool, its workers' start-up included.
    t = _pool_space("late", set_=[*BASE, "training.epochs=100000"])
    result = tune.run(t, 4, study_dir=tmp_path, arrays=no_test, timeout=15.0)
    assert result.timed_out and not result.interrupted
    trials = trials_of(result.storage, "late")
    failed = [json.dumps(x.params, sort_keys=True) for x in trials if x.state == TrialState.FAIL]
    waiting = [json.dumps(x.params, sort_keys=True) for x in trials if x.state == TrialState.WAITING]
    assert not any(x.state == TrialState.RUNNING for x in trials) and failed and waiting
    assert all(x.user_attrs["failure"] == "out of time" for x in trials if x.state == TrialState.FAIL)
    assert set(waiting) <= set(failed)  # stopped trials are queued again (a re-run one may fail again)


def test_sigterm_to_a_pool_stops_every_worker_and_requeues_their_trials(mnist_root, tmp_path):
    raw = space("term", set_=[*BASE, "training.epochs=200"], settings={"batch": 1, "workers": 2})
    (tmp_path / "space.toml").write_text(tomli_w.dumps(raw))
    pool = mnistlab("tune", tmp_path / "space.toml", "--trials", 4, "--study-dir", tmp_path,
                    env={"MNISTLAB_DATA": str(mnist_root)})
    deadline = time.time() + 180
    while _epochs_reported(tmp_path / "study.db", trials=True) < 2:  # both workers' trials are training
        assert time.time() < deadline and pool.poll() is None, pool.communicate()
        time.sleep(0.2)
    pool.send_signal(signal.SIGTERM)
    out, err = pool.communicate(timeout=120)
    assert pool.returncode == 143, err + out
    trials = trials_of(tune.default_storage(tmp_path), "term")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(failed) == 2 and all(t.user_attrs["failure"] == "interrupted" for t in failed)
    assert len({t.user_attrs["worker"] for t in failed}) == 2  # one from each worker
    assert sorted(json.dumps(t.params, sort_keys=True) for t in waiting) == sorted(
        json.dumps(t.params, sort_keys=True) for t in failed)
    assert not any(t.state == TrialState.RUNNING for t in trials)
