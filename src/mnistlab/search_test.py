"""search.py: spaces, grouping, isolation, exactness, resume and records, on real MNIST."""

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w

import mnistlab
from mnistlab import data, engine, populations, runs, search
from mnistlab import spec as spec_lib
from mnistlab.errors import UserError

pytestmark = pytest.mark.slow  # processes, servers, or training for seconds each

BASE = ["training.subset=3000", "training.epochs=3", "training.validation_split=0.2", "training.batch_size=64"]


def sweep_spec(**over):
    raw = {"name": "t", "base": "fast", "set": BASE, "seeds": 2,
           "search": {"method": "grid", "params": {"optimizer.learning_rate": [1e-3, 3e-3]}}}
    raw.update(over)
    return search.sweep_from_dict(raw)


@pytest.fixture(scope="module")
def mnist(mnist_root):
    return data.load("mnist", mnist_root)


def test_grid_is_the_product_times_seeds():
    s = sweep_spec(search={"method": "grid", "params": {"optimizer.learning_rate": [0.1, 0.2, 0.3, 0.4],
                                                        "model.layers.0.units": [8, 16]}}, seeds=3)
    cands = search.candidates(s)
    assert len(cands) == 4 * 2 * 3
    assert [c.seed for c in cands[:3]] == [0, 1, 2]
    assert cands[3].tags["params"] == {"optimizer.learning_rate": 0.1, "model.layers.0.units": 16}
    assert cands[3].spec.model.layers[0].units == 16 and cands[3].spec.optimizer.learning_rate == 0.1
    assert len(populations.groups(cands)) == 2  # two widths: two programs


def test_a_key_naming_several_paths_ties_them():
    s = sweep_spec(base="seed", set=[], search={"method": "grid", "params": {
        "model.layers.0.kernel_regularizer.l2,model.layers.2.kernel_regularizer.l2": [0.0, 0.5]}})
    tied = search.candidates(s)[2].spec.model.layers
    assert tied[0].kernel_regularizer.l2 == 0.5 and tied[2].kernel_regularizer.l2 == 0.5


def test_mlp_family_rebuilds_the_hidden_stack():
    """`mlp.*` keys: depth, width, dropout, L2 and max-norm of every hidden layer at once."""
    s = sweep_spec(base="seed", set=["training.validation_split=0.1"], seeds=1, search={"method": "list", "points": [
        {"mlp.hidden_layers": 3, "mlp.units": 40, "mlp.dropout": 0.3, "mlp.input_dropout": 0.1,
         "mlp.l2": 1e-5, "mlp.max_norm": 3.0},
        {"mlp.hidden_layers": 1, "mlp.max_norm": 0, "model.layers.0.kernel_initializer": "he_normal"}]})
    deep, shallow = (c.spec.model for c in search.candidates(s))
    # seed: Dense(1000) -> Activation(relu) -> Dense(10) -> Activation(softmax), l2(0.01) on both kernels
    assert [layer.type for layer in deep.layers] == (
        ["dropout"] + ["dense", "activation", "dropout"] * 3 + ["dense", "activation"])
    hidden = deep.dense_layers[:-1]
    assert [d.units for d in deep.dense_layers] == [40, 40, 40, 10]
    assert all(d.kernel_regularizer.l2 == 1e-5 and d.kernel_constraint.max_value == 3.0 for d in hidden)
    assert deep.dense_layers[-1].kernel_regularizer.l2 == 1e-5 and deep.dense_layers[-1].kernel_constraint is None
    assert deep.layers[0].rate == 0.1 and {layer.rate for layer in deep.layers[1:] if layer.type == "dropout"} == {0.3}
    assert [layer.activation for layer in deep.layers if layer.type == "activation"] == ["relu"] * 3 + ["softmax"]
    # Unnamed settings are the base's; a dotted path applies on top of the built stack.
    assert [d.units for d in shallow.dense_layers] == [1000, 10]
    assert shallow.dense_layers[0].kernel_regularizer.l2 == 0.01 and shallow.dense_layers[0].kernel_constraint is None
    assert shallow.layers[1].type == "activation" and shallow.layers[0].kernel_initializer.name == "he_normal"
    with pytest.raises(UserError, match="did you mean 'units'"):
        search.candidates(sweep_spec(search={"method": "list", "points": [{"mlp.unit": 3}]}))


def test_example_sweeps_expand():
    root = Path(__file__).resolve().parents[2] / "examples"
    assert len(search.candidates(search.load_sweep(root / "sweep-lr-l2.toml"))) == 48
    assert len(search.candidates(search.load_sweep(root / "sweep-random.toml"))) == 24
    cnn = search.candidates(search.load_sweep(root / "sweep-cnn.toml"))
    assert len(cnn) == 12 and {c.spec.model.layers[2].filters for c in cnn} == {16, 32}


def test_random_draws_are_reproducible_and_in_range():
    space = {"method": "random", "trials": 200, "seed": 3, "params": {
        "optimizer.learning_rate": {"distribution": "log_uniform", "low": 1e-4, "high": 1e-1},
        "training.epochs": {"distribution": "int_uniform", "low": 1, "high": 3},
        "model.layers.0.units": {"choice": [8, 16]}}}
    a = search.Space.model_validate(space).points_to_train()
    b = search.Space.model_validate(space).points_to_train()
    assert a == b and len(a) == 200
    lrs = np.array([p["optimizer.learning_rate"] for p in a])
    assert lrs.min() >= 1e-4 and lrs.max() <= 1e-1
    # log-uniform: about half the draws fall below the geometric mean of the bounds.
    assert 0.4 < np.mean(lrs < np.sqrt(1e-4 * 1e-1)) < 0.6
    assert {p["training.epochs"] for p in a} == {1, 2, 3}
    assert {p["model.layers.0.units"] for p in a} == {8, 16}


@pytest.mark.parametrize("space, message", [
    ({"method": "grid", "params": {"optimizer.learning_rate": {"distribution": "uniform", "low": 0, "high": 1}}},
     "a grid takes non-empty lists"),
    ({"method": "list", "params": {"optimizer.learning_rate": [1]}}, "takes `points`"),
    ({"method": "random", "params": {"x": {"distribution": "log_uniform", "low": 0, "high": 1}}}, "low > 0"),
])
def test_bad_spaces_are_refused(space, message):
    with pytest.raises(UserError, match=message):
        search.sweep_from_dict({"search": space})


def test_a_misspelt_parameter_names_the_point():
    s = sweep_spec(search={"method": "grid", "params": {"optimizer.learnig_rate": [0.1]}})
    with pytest.raises(UserError, match="did you mean 'learning_rate'"):
        search.candidates(s)


def test_lane_widths_give_the_same_numbers(mnist):
    """Three members side by side, two by two (padding the last slice), and one by one."""
    specs = [c.spec for c in search.candidates(sweep_spec(seeds=1, search={
        "method": "list", "points": [{"optimizer.learning_rate": 1e-3}, {"optimizer.learning_rate": 3e-3},
                                     {"optimizer.learning_rate": 2e-3, "training.seed": 5}]}))]
    x, y = mnist.train_images[:2000], mnist.train_labels[:2000]
    results = []
    for lanes in (3, 2, 1):
        population = engine.Population(specs, x, y, lanes=lanes)
        population.train_epoch()
        results.append([population.member_params(i) for i in range(3)])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            for k in a:
                np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=2e-6)


def test_choose_lanes_measures_a_width_within_bounds(mnist):
    spec = search.candidates(sweep_spec())[0].spec
    width = engine.choose_lanes(spec, mnist.train_images, mnist.train_labels, 4, steps=8)
    assert width in (1, 2, 4)
    seconds = engine._probe_seconds(spec, mnist.train_images, mnist.train_labels, 2, 2, 1, 8)
    assert 0 < seconds < 60


def probe_at(rates: dict[int, float], probed: list):
    """A stand-in for `_probe_seconds` where width w trains rates[w] member-steps a second."""
    def probe(spec, images, labels, members, width, concurrency, steps):
        probed.append(width)
        return members / rates[width]
    return probe


@pytest.mark.parametrize("members, rates, probed, chosen", [
    # the widest is not always the best: the most member-steps a second wins
    (16, {1: 10, 2: 18, 4: 12, 8: 25, 16: 14}, [1, 2, 4, 8, 16], 8),
    # a width more than 40% slower than the best ends the search
    (16, {1: 10, 2: 5.9}, [1, 2], 1),
    (16, {1: 10, 2: 6.1, 4: 3}, [1, 2, 4], 1),
    # widths double up to the population, which is probed last
    (6, {1: 10, 2: 11, 4: 12, 6: 13}, [1, 2, 4, 6], 6),
    (1, {}, [], 1),
])
def test_choose_lanes_keeps_the_fastest_width_it_measured(members, rates, probed, chosen, monkeypatch):
    spec = search.candidates(sweep_spec())[0].spec
    seen: list[int] = []
    monkeypatch.setattr(engine, "_LANES", {})
    monkeypatch.setattr(engine, "_probe_seconds", probe_at(rates, seen))
    assert engine.choose_lanes(spec, None, None, members) == chosen
    assert seen == probed
    assert engine.choose_lanes(spec, None, None, members) == chosen and seen == probed  # remembered


@pytest.mark.parametrize("one, two, chosen", [(1.0, 0.94, 2), (1.0, 0.96, 1), (1.0, 1.5, 1)])
def test_choose_concurrency_trains_two_slices_at_once_only_when_measured_faster(one, two, chosen, monkeypatch):
    spec = search.candidates(sweep_spec())[0].spec
    monkeypatch.setattr(engine, "_CONCURRENCY", {})
    monkeypatch.setattr(engine.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(engine, "_probe_seconds", lambda *args: {1: one, 2: two}[args[5]])
    assert engine.choose_concurrency(spec, None, None, width=4, members=8) == chosen
    assert engine.choose_concurrency(spec, None, None, width=4, members=4) == 1  # one slice: nothing to overlap


@pytest.fixture(scope="module")
def finished(mnist, tmp_path_factory):
    # SGD at learning rate 1e3 with l2(0.01) multiplies the weights by about (1 - 2*1e3*0.01)
    # = -19 each step: they overflow and the loss turns NaN. That member must be frozen and
    # marked, the others unaffected. Two groups (two widths).
    spec = sweep_spec(search={"method": "grid", "params": {
        "optimizer.learning_rate": [3e-2, 1e3], "model.layers.0.units": [48, 80]}}, lanes=4,
        set=BASE + ["optimizer.name=sgd", "optimizer.momentum=0.9", "optimizer.schedule.name=constant",
                    "model.layers.0.kernel_regularizer={l2 = 0.01}"])
    before = dict(engine.COMPILATIONS)
    result = search.run_sweep(spec, sweeps_dir=tmp_path_factory.mktemp("sweeps"), arrays=mnist)
    compiled = {k: v - before.get(k, 0) for k, v in engine.COMPILATIONS.items()}
    return spec, result, compiled


def test_sweep_isolates_divergence_and_ranks(finished):
    spec, result, _ = finished
    rows = result.rows
    assert len(rows) == 8
    diverged = [r for r in rows if r["status"] == "diverged"]
    assert {r["params"]["optimizer.learning_rate"] for r in diverged} == {1e3} and len(diverged) == 4
    completed = [r for r in rows if r["status"] == "completed"]
    assert len(completed) == 4 and rows[:4] == completed  # diverged members rank last
    values = [r["val_accuracy"] for r in completed]
    assert values == sorted(values, reverse=True) and values[0] > 0.8
    # best/ holds the best point's seed closest to the point's mean
    assert result.summary["best_member"] in result.points[0]["members"]
    assert result.points[0]["mean"] == pytest.approx(np.mean([r["val_accuracy"] for r in rows
                                                              if r["point"] == result.points[0]["point"]]))


def test_each_group_compiles_its_step_once(finished):
    _, result, compiled = finished
    # Two groups (two widths, shapes no other test uses), four members each side by side:
    # one chunk program per group serves every learning rate, seed and epoch (an epoch of
    # 38 steps is cut into chunks of one size), one evaluation program per group.
    assert result.summary["groups"] == 2 and len(set(engine.plan_chunks(38))) == 1
    assert compiled["chunk"] == 2 and compiled["evaluate"] == 2


def test_member_in_population_matches_it_trained_alone(finished, mnist):
    spec, result, _ = finished
    row = result.rows[0]
    member = search.candidates(spec)[row["member"]]
    alone = mnistlab.train(member.spec, runs_dir=None, arrays=mnist)
    assert alone.history[-1]["val_accuracy"] == pytest.approx(row["val_accuracy"], abs=2e-3)
    assert alone.history[-1]["loss"] == pytest.approx(row["loss"], rel=1e-3)


def test_records_and_best_run(finished, mnist_root):
    spec, result, _ = finished
    folder = result.path
    metrics = [json.loads(line) for line in (folder / search.METRICS).read_text().splitlines()]
    completed = {r["member"] for r in result.rows if r["status"] == "completed"}
    for m in completed:
        assert [r["epoch"] for r in metrics if r["member"] == m] == [1, 2, 3]
    csv_lines = (folder / search.RESULTS_CSV).read_text().splitlines()
    assert len(csv_lines) == 9 and "param:optimizer.learning_rate" in csv_lines[0]
    assert json.loads((folder / search.RESULTS_JSON).read_text()) == json.loads(json.dumps(result.rows))
    best = runs.open_run(folder / "best")
    assert best.summary["member"] == result.best["member"]
    assert [m["epoch"] for m in best.metrics] == [1, 2, 3]
    done = subprocess.run([sys.executable, "-m", "mnistlab", "evaluate", str(folder / "best"), "--split", "validation"],
                          capture_output=True, text=True, env={**os.environ, "MNISTLAB_DATA": str(mnist_root)})
    assert done.returncode == 0, done.stderr
    assert f"accuracy {result.best['val_accuracy']:.3f}" in done.stdout


def test_memory_budget_splits_a_group(mnist, tmp_path):
    spec = sweep_spec()
    per_member = engine.member_bytes(search.candidates(spec)[0].spec, 784)
    result = search.run_sweep(spec, sweeps_dir=tmp_path, arrays=mnist, memory_budget=int(2.5 * per_member))
    assert any("trained in" in m or "training it in 2 parts" in m for m in result.summary["messages"])
    assert sum(r["status"] == "completed" for r in result.rows) == 4


def test_killed_sweep_resumes_to_the_same_numbers(mnist_root, tmp_path):
    spec_file = tmp_path / "s.toml"
    # lanes fixed: the reference and the interrupted run must train with the same program
    # (each would otherwise measure its own width, and widths round floats differently).
    raw = {"name": "k", "base": "fast", "seeds": 2, "lanes": 2,
           "set": ["training.subset=4000", "training.epochs=6", "training.validation_split=0.2"],
           "search": {"method": "grid", "params": {"optimizer.learning_rate": [1e-3, 3e-3]}}}
    spec_file.write_text(tomli_w.dumps(raw))
    env = {**os.environ, "MNISTLAB_DATA": str(mnist_root)}
    cmd = [sys.executable, "-m", "mnistlab", "sweep", str(spec_file), "-q"]
    reference = subprocess.run(cmd + ["--sweeps-dir", str(tmp_path / "a")], capture_output=True, text=True, env=env)
    assert reference.returncode == 0, reference.stderr

    proc = subprocess.Popen(cmd + ["--sweeps-dir", str(tmp_path / "b")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        checkpoints = list((tmp_path / "b").glob("*/checkpoints/part-*.safetensors"))
        if checkpoints:
            break
        time.sleep(0.05)
    assert checkpoints, "no checkpoint written in time"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (folder,) = list((tmp_path / "b").iterdir())
    assert not (folder / search.RESULTS_JSON).exists()  # it really was stopped mid-way
    resumed = subprocess.run(cmd + ["--sweeps-dir", str(tmp_path / "b"), "--resume"], capture_output=True,
                             text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    (ref_folder,) = list((tmp_path / "a").iterdir())
    a = json.loads((ref_folder / search.RESULTS_JSON).read_text())
    b = json.loads((folder / search.RESULTS_JSON).read_text())
    assert [r["member"] for r in a] == [r["member"] for r in b]
    for ra, rb in zip(a, b):
        assert rb["val_accuracy"] == pytest.approx(ra["val_accuracy"], abs=1e-6)
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-6)
    ma = (ref_folder / search.METRICS).read_text().splitlines()
    mb = (folder / search.METRICS).read_text().splitlines()
    assert len(ma) == len(mb) == 4 * 6  # every epoch once: none lost, none doubled


def test_resume_without_anything_to_resume(tmp_path, mnist):
    with pytest.raises(UserError, match="no unfinished sweep"):
        search.run_sweep(sweep_spec(), sweeps_dir=tmp_path, arrays=mnist, resume=True)


def test_a_conv_sweep_groups_by_structure_and_matches_a_solo_run(mnist, tmp_path):
    # Two widths of the first convolution: two structures, two compilations; the learning
    # rates share theirs. The best member retrained alone gives the same numbers.
    spec = search.sweep_from_dict({
        "name": "conv", "base": "cnn", "seeds": 1, "lanes": 2,
        "set": ["training.subset=1200", "training.epochs=2", "training.validation_split=0.25",
                "training.batch_size=100", "optimizer.schedule.name=constant", "model.layers.4.filters=8"],
        "search": {"method": "grid", "params": {"optimizer.learning_rate": [1e-3, 3e-3],
                                                "model.layers.2.filters": [4, 6]}}})
    before = dict(engine.COMPILATIONS)
    result = search.run_sweep(spec, sweeps_dir=tmp_path, arrays=mnist)
    compiled = {k: v - before.get(k, 0) for k, v in engine.COMPILATIONS.items()}
    assert result.summary["groups"] == 2 and compiled["chunk"] == 2
    assert [r["status"] for r in result.rows] == ["completed"] * 4
    row = result.rows[0]
    alone = mnistlab.train(search.candidates(spec)[row["member"]].spec, runs_dir=None, arrays=mnist)
    assert alone.history[-1]["val_accuracy"] == pytest.approx(row["val_accuracy"], abs=2e-3)
    assert alone.history[-1]["loss"] == pytest.approx(row["loss"], rel=1e-3)
    best = runs.open_run(result.path / "best")
    assert best.params()["conv2d/kernel"].shape == (3, 3, 1, result.best["params"]["model.layers.2.filters"])


def test_a_metric_no_epoch_produces_is_refused_before_anything_is_written(tmp_path, mnist_root):
    raw = {"name": "bare", "base": "fast", "set": ["training.subset=1000", "training.epochs=1"],
           "search": {"method": "list", "points": [{"training.validation_split": 0.2},
                                                   {"training.validation_split": 0.0}]}}
    (tmp_path / "s.toml").write_text(tomli_w.dumps(raw))
    done = subprocess.run([sys.executable, "-m", "mnistlab", "sweep", str(tmp_path / "s.toml"), "--sweeps-dir",
                           str(tmp_path / "out")], capture_output=True, text=True,
                          env={**os.environ, "MNISTLAB_DATA": str(mnist_root)})
    assert done.returncode == 2, done.stderr
    assert "metric = 'val_accuracy' needs validation data, but point(s) 1 hold none out" in done.stderr
    assert "training.validation_split=0.1" in done.stderr and not (tmp_path / "out").exists()


def test_the_table_shows_each_column_once_and_points_over_seeds(tmp_path, mnist_root):
    # `training.epochs` is a parameter here: it must not stand beside a second "epochs" column.
    raw = {"name": "cols", "base": "fast", "seeds": 2, "lanes": 2,
           "set": ["training.subset=1500", "training.validation_split=0.2", "training.batch_size=100"],
           "search": {"method": "list", "points": [{"training.epochs": 1}, {"training.epochs": 2}]}}
    (tmp_path / "s.toml").write_text(tomli_w.dumps(raw))
    done = subprocess.run([sys.executable, "-m", "mnistlab", "sweep", str(tmp_path / "s.toml"), "-q", "--json",
                           "--sweeps-dir", str(tmp_path / "out")], capture_output=True, text=True,
                          env={**os.environ, "MNISTLAB_DATA": str(mnist_root), "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stderr.splitlines() if "point" in line and "seeds" in line)
    titles = [t.strip() for t in header.strip("┃│ ").split("┃") if t.strip()]
    assert len(titles) == len(set(titles)) and "epochs" in titles
    (folder,) = (tmp_path / "out").iterdir()
    points = json.loads((folder / search.POINTS_JSON).read_text())
    rows = json.loads((folder / search.RESULTS_JSON).read_text())
    for p in points:  # each point: its two seeds, trained to its own epochs; mean and interval by hand
        mine = [r for r in rows if r["point"] == p["point"]]
        values = [r["val_accuracy"] for r in mine]
        assert [r["epochs"] for r in mine] == [p["params"]["training.epochs"]] * 2
        half = 12.706205 * np.std(values, ddof=1) / np.sqrt(2)  # t(0.975, 1)
        assert p["n"] == 2 and p["mean"] == pytest.approx(np.mean(values))
        assert p["ci_high"] - p["mean"] == pytest.approx(half, rel=1e-6)
        assert f"{p['mean']:.4f} ± {half:.4f}" in done.stderr
    shown = json.loads(done.stdout)  # --json: the points as points.json holds them, and where they are
    assert shown["points"] == points and shown["sweep_dir"] == str(folder) and shown["metric"] == "val_accuracy"
    assert shown["best_point"]["point"] == points[0]["point"] and shown["best_run"] == str(folder / "best")
    assert shown["completed"] == 4 and shown["diverged"] == 0
    csv_header = (folder / search.POINTS_CSV).read_text().splitlines()[0].split(",")
    assert csv_header[:5] == ["point", "n", "mean", "ci_low", "ci_high"]
    best = runs.open_run(folder / "best")
    assert best.summary["member"] in points[0]["members"] and "closest to that mean" in best.summary["chosen"]


def test_sigterm_stops_a_sweep_that_resumes_to_the_end(mnist_root, tmp_path):
    raw = {"name": "term", "base": "fast", "seeds": 1, "lanes": 2,
           "set": ["training.subset=4000", "training.epochs=30", "training.validation_split=0.2"],
           "search": {"method": "grid", "params": {"optimizer.learning_rate": [1e-3, 3e-3]}}}
    (tmp_path / "s.toml").write_text(tomli_w.dumps(raw))
    env = {**os.environ, "MNISTLAB_DATA": str(mnist_root)}
    cmd = [sys.executable, "-m", "mnistlab", "sweep", str(tmp_path / "s.toml"), "-q", "--sweeps-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob("*/checkpoints/part-*.safetensors")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "--resume" in err and "Traceback" not in err
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert not (folder / search.RESULTS_JSON).exists()
    resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    epochs = [json.loads(line)["epoch"] for line in (folder / search.METRICS).read_text().splitlines()]
    assert sorted(epochs) == sorted(list(range(1, 31)) * 2)  # every epoch once: none lost, none doubled


def test_a_full_disk_stops_a_sweep_with_exit_2_and_resume_advice(mnist_root, tmp_path):
    import subprocess as sp

    point = tmp_path / "small"
    point.mkdir()
    mounted = sp.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs ({mounted.stderr.strip()}): this test needs root, as CI has")
    try:
        # Two members of the 784-1000-10 network: a checkpoint of both (weights and Adam's
        # moments, 2 x 9.5 MB) cannot fit in 3 MB.
        raw = {"name": "full", "base": "seed", "seeds": 1, "lanes": 1,
               "set": ["training.subset=1000", "training.epochs=2", "training.validation_split=0.2"],
               "search": {"method": "grid", "params": {"optimizer.learning_rate": [1e-3, 3e-3]}}}
        (tmp_path / "s.toml").write_text(tomli_w.dumps(raw))
        done = sp.run([sys.executable, "-m", "mnistlab", "sweep", str(tmp_path / "s.toml"), "-q", "--sweeps-dir",
                       str(point)], capture_output=True, text=True,
                      env={**os.environ, "MNISTLAB_DATA": str(mnist_root), "COLUMNS": "300"})
        said = " ".join(done.stderr.split())
        assert done.returncode == 2, done.stderr
        assert "could not write the sweep" in said and "--resume" in said and "Traceback" not in said
    finally:
        sp.run(["umount", "-l", str(point)], check=False)


def test_a_sweeps_patience_is_its_members_early_stopping():
    # Sweep files have always said `patience = N` at the top: that is Keras' EarlyStopping on
    # the sweep's metric, given to every member, one mechanism with `training.early_stopping`.
    old_file = search.sweep_from_dict(tomllib.loads(
        'name = "t"\nbase = "fast"\nset = ["training.validation_split=0.2"]\nmetric = "val_accuracy"\npatience = 2\n'
        '[search]\nmethod = "grid"\n[search.params]\n"optimizer.learning_rate" = [1e-3, 3e-3]\n'))
    for m in search.candidates(old_file):
        assert m.spec.training.early_stopping == spec_lib.EarlyStopping(monitor="val_accuracy", patience=2)
    tuned = sweep_spec(patience=2, set=[*BASE, "training.early_stopping.min_delta=0.01"])
    assert {m.spec.training.early_stopping for m in search.candidates(tuned)} == {
        spec_lib.EarlyStopping(monitor="val_accuracy", patience=2, min_delta=0.01)}
    assert search.candidates(sweep_spec())[0].spec.training.early_stopping is None
    with pytest.raises(mnistlab.UserError, match="one setting spelt twice"):
        search.candidates(sweep_spec(patience=2, set=[*BASE, "training.early_stopping.patience=3"]))


def test_a_sweep_with_patience_stops_members_as_keras_would(mnist, tmp_path):
    # A learning rate of 1e-9 moves val_loss by far less than min_delta: stopped after epoch 2.
    sweep = sweep_spec(patience=1, metric="val_loss", seeds=1, set=[*BASE, "training.early_stopping.min_delta=1e-3"],
                       search={"method": "grid", "params": {"optimizer.learning_rate": [1e-9, 3e-3]}})
    result = search.run_sweep(sweep, sweeps_dir=tmp_path, arrays=mnist)
    stalled = next(r for r in result.rows if r["params"]["optimizer.learning_rate"] == 1e-9)
    assert stalled["status"] == populations.STOPPED and stalled["epochs"] == 2
    assert result.summary["stopped"] >= 1
