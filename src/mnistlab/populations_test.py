"""populations.py: every field of a specification has a role, and every member of a sweep or a
tune study is exactly the configuration it names.

The fields are generated from the specification (`variations`), never listed by hand, and
`test_the_variations_reach_every_field` checks they reach every field `ROLES` classifies.
"""

import json
import math
import typing

import numpy as np
import pytest
from pydantic import BaseModel

import mnistlab
from mnistlab import engine, layers, populations, runs, search
from mnistlab import spec as spec_lib
from mnistlab import tune as tune_lib
from mnistlab.populations import DATA, MEMBER, NESTED, PROGRAM, ROLES
from mnistlab.spec import RunSpec

# ------------------------------------------------------------------ the specification's fields


def _models_in(annotation) -> typing.Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def spec_models() -> dict[str, type[BaseModel]]:
    """Every Pydantic model reachable from RunSpec (the layer union included), by class name."""
    found: dict[str, type[BaseModel]] = {}

    def visit(annotation) -> None:
        for cls in _models_in(annotation):
            if cls.__name__ not in found:
                found[cls.__name__] = cls
                for f in cls.model_fields.values():
                    visit(f.annotation)

    visit(RunSpec)
    return found


def test_every_field_of_the_specification_has_a_role():
    models = spec_models()
    assert set(models) == set(ROLES), "a model of the specification is missing from ROLES (or ROLES names a gone one)"
    for name, cls in models.items():
        assert set(cls.model_fields) == set(ROLES[name]), f"{name}: classify every field in populations.ROLES"
        for field, role in ROLES[name].items():
            holds_model = any(True for _ in _models_in(cls.model_fields[field].annotation))
            assert (role == NESTED) == holds_model, f"{name}.{field}: NESTED exactly for tables of their own"


# ------------------------------------------------------------------ variations, generated

COMMON = {"training": {"epochs": 2, "batch_size": 50, "eval_batch_size": 100, "subset": 1000, "seed": 0,
                       "validation": {"fraction": 0.3, "method": "last"}}}
DENSE = {
    "name": "p", "dataset": "mnist", **COMMON,
    "model": {"layers": [
        {"type": "dropout", "rate": 0.1},
        {"type": "dense", "units": 24, "activation": "relu", "kernel_initializer": "he_normal",
         "bias_initializer": {"name": "random_uniform", "minval": -0.01, "maxval": 0.01},
         "kernel_regularizer": {"l1": 1e-5, "l2": 1e-4}, "bias_regularizer": {"l2": 1e-4},
         "kernel_constraint": {"max_value": 3.0}},
        {"type": "dense", "units": 10, "activation": "softmax",
         "kernel_initializer": {"name": "truncated_normal", "stddev": 0.05},
         "bias_initializer": {"name": "constant", "value": 0.01},
         "kernel_regularizer": {"l2": 1e-4}}]},
    "optimizer": {"name": "adam", "learning_rate": 2e-3,
                  "schedule": {"name": "exponential", "decay_steps": 20, "decay_rate": 0.9, "warmup_steps": 3}},
}
CONV = {
    "name": "c", **COMMON,
    "model": {"layers": [
        {"type": "random_translation", "height_factor": 0.1, "width_factor": 0.1, "fill_mode": "constant"},
        {"type": "random_rotation", "factor": 0.03, "fill_mode": "constant"},
        {"type": "random_zoom", "height_factor": 0.1, "width_factor": 0.1, "fill_mode": "constant"},
        {"type": "elastic_distortion", "alpha": 1.0, "sigma": 3.0, "fill_mode": "constant"},
        {"type": "random_stroke_width", "factor": 0.5},
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "activation": "relu",
         "kernel_regularizer": {"l2": 1e-4}},
        {"type": "batch_normalization"},
        {"type": "activation", "activation": "relu"},
        {"type": "max_pooling2d", "pool_size": 2},
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"},
        {"type": "average_pooling2d", "pool_size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "softmax"}]},
    "optimizer": {"name": "rmsprop", "learning_rate": 1e-3},
}


def _optimizer(table):
    return {**DENSE, "optimizer": table}


def _everything(path: str) -> bool:
    return True


def _family(name: str, schedule: bool = False):
    """An optimizer family's own numbers (Keras' defaults table names them), and its schedule's."""
    own = tuple(f"optimizer.{k}" for k in spec_lib.OPTIMIZER_DEFAULTS[name] if k != "learning_rate")
    return lambda path: path in own or (schedule and path.startswith("optimizer.schedule."))


# name -> (base, which of its paths to vary): every path of the first; the other optimizer
# families' own settings; the convolutional network's layers.
BASES = {
    "dense": (DENSE, _everything),
    "sgd": (_optimizer({"name": "sgd", "learning_rate": 0.05, "momentum": 0.9, "nesterov": True, "decay": 1e-3,
                        "schedule": {"name": "cosine", "decay_steps": 28, "alpha": 0.1}}), _family("sgd", True)),
    "rmsprop": (_optimizer({"name": "rmsprop", "learning_rate": 1e-3, "momentum": 0.5,
                            "schedule": {"name": "inverse_time", "decay_steps": 10, "staircase": True}}),
                _family("rmsprop", True)),
    "adagrad": (_optimizer({"name": "adagrad", "learning_rate": 0.05}), _family("adagrad")),
    "adamw": (_optimizer({"name": "adamw", "learning_rate": 2e-3, "amsgrad": True}), _family("adamw")),
    "conv": (CONV, lambda path: path.startswith("model.layers.")),
    "stopping": ({**DENSE, "training": {**COMMON["training"], "early_stopping": {
        "monitor": "val_loss", "patience": 2, "min_delta": 0.01, "baseline": 5.0, "restore_best_weights": True}}},
        lambda path: path.startswith("training.early_stopping.")),
}

NAMES = (*layers.ACTIVATIONS, *layers.INITIALIZERS, *spec_lib.OPTIMIZERS, "exponential", "inverse_time",
         "step", "cosine", "constant", "stratified", "last", "same", "valid", "reflect", "nearest", "wrap",
         "val_accuracy", "max", *spec_lib.DTYPE_POLICIES)


def _alternatives(path: str, value) -> list:
    """Values to try in place of `value`, most telling first (the first valid one is used)."""
    if path == "dataset":
        return ["fashion-mnist"]
    if path == "name":
        return [f"{value}-other"]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value * 2, value - 1]
    if isinstance(value, float):
        return [value * 0.5, value * 2, 0.05, 0.5] if value else [0.05, 1e-3, 0.5]
    if isinstance(value, str):
        return [n for n in NAMES if n != value]
    if isinstance(value, list):  # a window's (height, width)
        return [[v + 1 for v in value]]
    return []


def leaves(tree, prefix: str = "") -> dict:
    """Dotted paths to values, layers by index; a pair of numbers is one value."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in leaves(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list) and any(isinstance(v, dict) for v in tree):
        return {k: v for i, sub in enumerate(tree) for k, v in leaves(sub, f"{prefix}{i}.").items()}
    return {prefix[:-1]: tree}


def variations(base: dict, chosen) -> list[tuple[str, typing.Any, typing.Any]]:
    """(key, value in the base, another valid value) for every leaf of the resolved base.

    A leaf that cannot change alone (augmentation layers resampled as one share their fill)
    changes tied to every leaf of the same name: the key names them all, "a,b".
    """
    spec = spec_lib.from_dict(base)
    flat = leaves(spec.resolved())
    out = []
    for path, value in flat.items():
        if not chosen(path) or path.endswith(".type"):  # a layer's type is the layer itself
            continue
        same_name = [p for p in flat if p.rsplit(".", 1)[-1] == path.rsplit(".", 1)[-1] and flat[p] == value]
        for other in _alternatives(path, value):
            for key in (path, ",".join(same_name)):
                try:
                    changed = spec_lib.with_values(spec, dict.fromkeys(key.split(","), other))
                except mnistlab.UserError:
                    continue
                if leaves(changed.resolved()).get(path) == other:
                    break
            else:
                continue
            if key.split(",")[0] == path:  # a tied key is listed once, at its first path
                out.append((key, value, other))
            break
    return out


def cases() -> list[tuple[str, str, typing.Any, typing.Any]]:
    """Every base's variations; the convolutional base's only where they reach a new field."""
    out, reached = [], set()
    for name, (base, chosen) in BASES.items():
        spec = spec_lib.from_dict(base)
        for key, old, new in variations(base, chosen):
            where = populations.field_at(spec, key.split(",")[0])
            if name != "conv" or where not in reached:
                out.append((name, key, old, new))
            reached.add(where)
    return out


CASES = cases()
IDS = [f"{name}:{path}" for name, path, _, _ in CASES]


def test_the_variations_reach_every_field():
    reached = {populations.field_at(spec_lib.from_dict(BASES[name][0]), p)
               for name, key, _, _ in CASES for p in key.split(",")}
    leaves = {(cls, field) for cls, fields in ROLES.items() for field, role in fields.items()
              if role != NESTED and field != "type"}
    assert leaves - reached == set()


@pytest.mark.parametrize("name, path, old, new", CASES, ids=IDS)
def test_each_role_holds_in_the_code(name, path, old, new):
    a = spec_lib.from_dict(BASES[name][0])
    b = spec_lib.with_values(a, dict.fromkeys(path.split(","), new))
    role = populations.role_of(a, path.split(",")[0])
    assert (populations.data_key(a) != populations.data_key(b)) == (role == DATA)
    if role == MEMBER:
        assert engine.structure(a) == engine.structure(b)
        assert engine.numbers(a) == engine.numbers(b)
    if role == PROGRAM and engine.structure(a) == engine.structure(b):
        # Not every program field changes every program (nesterov without momentum, a
        # schedule's steps under "constant"...): then it must change nothing at all.
        assert engine.numbers(a) == engine.numbers(b)


def test_a_stratified_holdout_is_drawn_by_the_seed_which_joins_the_data_key_when_it_holds_anything_out(load):
    spec = spec_lib.with_values(spec_lib.from_dict(DENSE), {"training.validation.method": "stratified"})
    other = spec_lib.with_values(spec, {"training.seed": 1})
    assert populations.data_key(spec) != populations.data_key(other)
    drawn = [as_rows(*populations.split(s, load("mnist"))[2:]) for s in (spec, other)]
    assert len(drawn[0]) == len(drawn[1]) == 300 and drawn[0] != drawn[1]
    # Nothing held out: the seed draws nothing, and members of both seeds share one population.
    nothing = {"training.validation.fraction": 0.0}
    assert populations.data_key(spec_lib.with_values(spec, nothing)) == populations.data_key(
        spec_lib.with_values(other, nothing))


def test_a_subset_may_be_the_whole_training_set_and_no_more(load):
    arrays = load("mnist")
    spec = spec_lib.with_values(spec_lib.from_dict(DENSE), {"training.subset": 60_000})
    x_train, _, x_val, _ = populations.split(spec, arrays)
    assert len(x_train) + len(x_val) == 60_000
    with pytest.raises(mnistlab.UserError) as refused:
        populations.split(spec_lib.with_values(spec, {"training.subset": 60_001}), arrays)
    assert str(refused.value) == ("training.subset = 60001: 'mnist' has 60000 training images; give at most 60000, "
                                  "or leave subset out for all of them")


def as_rows(images, labels) -> list[tuple[bytes, int]]:
    return sorted((image.tobytes(), int(label)) for image, label in zip(images, labels))


@pytest.mark.parametrize("subset, fraction", [(1000, 0.1), (2000, 0.25)])
def test_the_split_holds_out_what_the_specification_says(subset, fraction, load):
    arrays = load("mnist")
    images, labels = arrays.train_images[:subset], arrays.train_labels[:subset]
    last = spec_lib.with_values(spec_lib.from_dict(DENSE), {
        "training.subset": subset, "training.validation.fraction": fraction})
    stratified = spec_lib.with_values(last, {"training.validation.method": "stratified"})
    at = math.floor(subset * (1 - fraction))  # Keras' validation_split: the last fraction, unshuffled
    x, y, x_val, y_val = populations.split(last, arrays)
    np.testing.assert_array_equal(x_val, images[at:])
    np.testing.assert_array_equal(y_val, labels[at:])
    np.testing.assert_array_equal(x, images[:at])
    np.testing.assert_array_equal(y, labels[:at])
    # Stratified: every class holds out its own share (rounded), summing to the fraction.
    per_class = np.bincount(labels, minlength=10) * fraction
    assert np.abs(np.bincount(labels[at:], minlength=10) - per_class).max() >= 1  # "last" is not stratified here
    x, y, x_val, y_val = populations.split(stratified, arrays)
    held = np.bincount(y_val, minlength=10)
    assert held.sum() == round(subset * fraction) and np.abs(held - per_class).max() < 1
    # Each image once, on one side, with its own label.
    assert as_rows(np.concatenate([x, x_val]), np.concatenate([y, y_val])) == as_rows(images, labels)
    assert len(y_val) == len(x_val) == held.sum() and len(y) == subset - held.sum()


# ------------------------------------------------------------------ the property


@pytest.fixture(scope="module")
def load(mnist_root):
    return populations.loader(mnist_root)


_ALONE: dict[str, list[dict]] = {}


def alone(spec: RunSpec, load) -> list[dict]:
    """The spec trained by itself with `mnistlab train` (memoized: sweeps and studies share it)."""
    key = json.dumps({**spec.resolved(), "name": ""}, sort_keys=True)
    if key not in _ALONE:
        _ALONE[key] = mnistlab.train(spec, runs_dir=None, arrays=load(spec.dataset)).history
    return _ALONE[key]


def assert_same_training(history: list[dict], solo: list[dict], n_val: int) -> None:
    """Same epochs; the same figures to float rounding of another member width."""
    assert [r["epoch"] for r in history] == [r["epoch"] for r in solo]
    for got, want in zip(history, solo):
        assert got["val_accuracy"] == pytest.approx(want["val_accuracy"], abs=2.5 / n_val)
        for key in ("loss", "val_loss"):
            assert got[key] == pytest.approx(want[key], rel=2e-3)


@pytest.mark.parametrize("name, path, old, new", [c for c in CASES if c[1] != "name"],
                         ids=[i for i, c in zip(IDS, CASES) if c[1] != "name"])
@pytest.mark.slow
def test_a_sweep_member_is_its_configuration_trained_alone(name, path, old, new, load, tmp_path):
    sweep = search.sweep_from_dict({"name": "prop", "base": BASES[name][0], "seeds": 1, "lanes": 2,
                                    "search": {"method": "list", "points": [{path: old}, {path: new}]}})
    result = search.run_sweep(sweep, sweeps_dir=tmp_path, arrays=load("mnist"))
    members = {m.index: m for m in search.candidates(sweep)}
    histories = {}
    for line in (result.path / search.METRICS).read_text().splitlines():
        record = json.loads(line)
        histories.setdefault(record["member"], []).append(record)
    for index, m in members.items():
        assert m.tags["params"][path] in (old, new)
        assert_same_training(histories[index], alone(m.spec, load), m.validation_samples or 300)


@pytest.mark.parametrize("name, path, old, new", [c for c in CASES if c[1] != "name"],
                         ids=[i for i, c in zip(IDS, CASES) if c[1] != "name"])
@pytest.mark.slow
def test_a_tune_trial_is_its_configuration_trained_alone(name, path, old, new, load, tmp_path):
    space = tune_lib.tune_from_dict({
        "name": "prop", "base": BASES[name][0], "lanes": 2,
        "search": {"params": {path: {"choice": [old, new]}}},
        "tune": {"sampler": "grid", "pruner": "none", "batch": 2}})
    tune_lib.run(space, 2, study_dir=tmp_path, arrays=load("mnist"))
    trials = json.loads((tmp_path / tune_lib.TRIALS_JSON).read_text())
    assert sorted(json.dumps(t["params"][path]) for t in trials) == sorted(json.dumps(v) for v in (old, new))
    history = {t["trial"]: t for t in trials}
    import optuna

    study = optuna.load_study(study_name="prop", storage=tune_lib.default_storage(tmp_path))
    for t in study.trials:
        spec = tune_lib.trial_spec(space, search.base_spec(space.sweep), history[t.number]["params"], "x")
        assert t.state.name == "COMPLETE"
        assert_same_training(t.user_attrs["history"], alone(spec, load), 300)


# ------------------------------------------------------------------ the driver's own rules


@pytest.mark.slow
def test_members_stop_at_their_own_epochs_in_one_population(load):
    base = spec_lib.from_dict(DENSE)
    members = [populations.Member(i, spec_lib.with_values(base, {"training.epochs": e}))
               for i, e in enumerate((1, 3, 2))]
    report = populations.run(members, load, lanes=3)
    assert report.parts == 1 and report.lanes == {"0.0": 3}  # one program, one data set
    assert [m.epochs for m in members] == [1, 3, 2]
    assert all(m.status == populations.COMPLETED for m in members)
    for m in members:
        assert_same_training(m.history, alone(m.spec, load), m.validation_samples)


def test_patience_and_hooks_stop_members(load):
    base = spec_lib.with_values(spec_lib.from_dict(DENSE), {"training.epochs": 4,
                                                            "training.early_stopping.patience": 1})
    members = [populations.Member(i, spec_lib.with_values(base, {"optimizer.learning_rate": lr}))
               for i, lr in enumerate((2e-3, 1e-9, 2e-3))]

    def prune_third(m, part):
        if m.index == 2 and m.epochs == 2:
            m.status = populations.PRUNED

    done = []
    # learning rate 1e-9 learns nothing: its val_loss stops improving at once (patience 1).
    populations.run(members, load, metric="val_loss", lanes=1, on_epoch=prune_third,
                    on_done=lambda m, part: done.append((m.index, m.status, m.epochs)))
    assert members[0].status == populations.COMPLETED and members[0].epochs == 4
    assert members[2].status == populations.PRUNED and members[2].epochs == 2
    assert members[1].status == populations.STOPPED
    assert members[1].epochs - members[1].best_epoch == 1
    assert sorted(done) == sorted((m.index, m.status, m.epochs) for m in members)


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_checkpoints_to_the_same_numbers(load, tmp_path, monkeypatch):
    base = spec_lib.with_values(spec_lib.from_dict(DENSE), {"training.epochs": 3})
    narrow = spec_lib.with_values(base, {"model.layers.1.units": 16})  # another program: a second part

    def members():
        return [populations.Member(0, base), populations.Member(1, spec_lib.with_values(
                    base, {"optimizer.learning_rate": 5e-3})), populations.Member(2, narrow),
                populations.Member(3, spec_lib.with_values(narrow, {"optimizer.learning_rate": 5e-3}))]

    def keep(into):
        return lambda m, part: into.update({m.index: part.params(m)})

    whole, weights = members(), {}
    populations.run(whole, load, lanes=2, on_done=keep(weights))

    def stop_after_one_epoch_of_the_second_part(part, result):
        if part.key == "1.0" and result.epoch == 1:
            raise KeyboardInterrupt

    folder = tmp_path / "sweep" / "checkpoints here"  # Checkpoints makes the folders it needs
    stopped = members()
    monkeypatch.setattr(engine, "choose_lanes", lambda *args, **kwargs: 2)  # measured, with no checkpoint yet
    with pytest.raises(KeyboardInterrupt):
        populations.run(stopped, load, checkpoints=populations.Checkpoints(folder),
                        after_epoch=stop_after_one_epoch_of_the_second_part)
    assert [m.status for m in stopped] == [populations.COMPLETED] * 2 + [populations.INTERRUPTED] * 2

    # Resumed by fresh members, as a new process would. The width comes from the checkpoint,
    # not from a measurement (which here would say 1).
    monkeypatch.setattr(engine, "choose_lanes", lambda *args, **kwargs: 1)
    resumed, again, epochs = members(), {}, []
    report = populations.run(resumed, load, checkpoints=populations.Checkpoints(folder), on_done=keep(again),
                             after_epoch=lambda part, result: epochs.append((part.key, result.epoch)))
    assert epochs == [("1.0", 2), ("1.0", 3)] and report.lanes == {"1.0": 2}  # the finished part is skipped
    assert not list((folder / "checkpoints").iterdir())  # a finished part's checkpoint is let go
    timeless = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]  # noqa: E731
    for a, b in zip(whole, resumed):
        assert timeless(b.history) == timeless(a.history)
        assert (b.status, b.best_epoch, b.best_value) == (a.status, a.best_epoch, a.best_value)
        assert (b.train_samples, b.validation_samples) == (a.train_samples, a.validation_samples) == (700, 300)
    for i in (2, 3):
        for name, value in weights[i].items():
            np.testing.assert_array_equal(again[i][name], value)


def test_a_resumed_run_restores_the_best_weights_it_kept_before_the_interruption(load, tmp_path):
    # Best at epoch 1 (no accuracy can beat another by min_delta 1), interrupted after epoch 2,
    # resumed for epoch 3: the run ends with epoch 1's weights, which only the checkpoint held.
    spec = spec_lib.with_values(spec_lib.from_dict(DENSE), {"training.epochs": 3, "training.early_stopping": {
        "monitor": "val_accuracy", "min_delta": 1.0, "patience": 10, "restore_best_weights": True}})
    first_epoch = {}
    populations.run([populations.Member(0, spec_lib.with_values(spec, {"training.epochs": 1,
                                                                     "training.early_stopping": None}))],
                    load, on_done=lambda m, part: first_epoch.update(part.params(m)))

    def stop_after_epoch_2(part, result):
        if result.epoch == 2:
            raise KeyboardInterrupt

    folder = tmp_path / "checkpoints"
    with pytest.raises(KeyboardInterrupt):
        populations.run([populations.Member(0, spec)], load, checkpoints=populations.Checkpoints(folder),
                        after_epoch=stop_after_epoch_2)
    resumed, final = populations.Member(0, spec), {}
    populations.run([resumed], load, checkpoints=populations.Checkpoints(folder),
                    on_done=lambda m, part: final.update(part.params(m)))
    assert (resumed.status, resumed.watch.best_epoch, len(resumed.history)) == (populations.COMPLETED, 1, 3)
    assert sorted(final) == sorted(first_epoch)
    for name, value in first_epoch.items():
        np.testing.assert_array_equal(final[name], value)


def test_a_part_evaluates_its_members_as_each_alone(load):
    base = spec_lib.from_dict(DENSE)
    members = [populations.Member(i, spec_lib.with_values(base, {"training.seed": i})) for i in range(2)]
    arrays = load("mnist")
    images, labels = arrays.test_images[:500], arrays.test_labels[:500]
    seen = {}

    def evaluate(m, part):
        figures = part.evaluate(images, labels)
        seen[m.index] = (float(figures["loss"][part.members.index(m)]),
                         float(figures["accuracy"][part.members.index(m)]), part.params(m))

    populations.run(members, load, lanes=2, on_done=evaluate)
    for m in members:
        loss, accuracy, params = seen[m.index]
        alone_figures = engine.evaluate(m.spec, params, images, labels)
        assert loss == pytest.approx(float(alone_figures["loss"]), rel=1e-5)
        assert accuracy == float(alone_figures["accuracy"])


def test_better_follows_the_direction_of_the_metric():
    assert populations.direction("val_loss") == "minimize" and populations.direction("val_accuracy") == "maximize"
    assert populations.better(0.9, 0.8, "val_accuracy") and not populations.better(0.7, 0.8, "val_accuracy")
    assert populations.better(0.3, 0.4, "loss") and not populations.better(0.5, 0.4, "val_loss")
    assert populations.better(0.1, None, "loss") and not populations.better(math.nan, None, "loss")
    assert populations.better(0.5, math.nan, "val_accuracy")  # anything finite beats a diverged best
    # A tie is no improvement, either way (the first epoch to reach a value keeps it).
    assert not populations.better(0.8, 0.8, "val_accuracy") and not populations.better(0.4, 0.4, "val_loss")


def test_an_epoch_diverges_on_the_engines_flag_a_non_finite_loss_or_a_non_finite_metric():
    spec = spec_lib.from_dict(DENSE)  # 2 epochs
    for diverged, loss, value in ((True, 0.5, 0.9), (False, math.nan, 0.9), (False, math.inf, 0.9),
                                  (False, 0.5, math.nan), (False, math.nan, None)):
        m = populations.Member(0, spec)
        populations._advance(m, {"epoch": 1, "loss": loss, "val_accuracy": value}, diverged, "val_accuracy")
        assert m.status == populations.DIVERGED, (diverged, loss, value)
    m = populations.Member(0, spec)
    populations._advance(m, {"epoch": 1, "loss": 0.5, "val_accuracy": 0.9}, False, "val_accuracy")
    assert (m.status, m.best_value, m.best_epoch) == (populations.RUNNING, 0.9, 1)


class _Epoch:
    """The part of engine.Population timed_epoch uses: three members, those not `active` frozen."""

    def __init__(self, width, concurrency, active):
        self.active, self.size, self.width, self.concurrency = np.array(active), 3, width, concurrency

    def train_epoch(self, on_progress, on_slice):
        self.on_progress = on_progress
        if on_slice is not None:  # one member a slice: the active slices train, one after the other
            for k in [*np.flatnonzero(self.active), 2]:
                on_slice(int(k))  # slice 2's end seen twice counts once
        return engine.EpochResult(1, {}, 6.0, [False] * 3)


@pytest.mark.parametrize("width, concurrency, active, expected", [
    (1, 1, [True, False, True], [1.5, math.nan, 4.0]),  # each member timed by its own slice's end
    (2, 1, [True, False, True], [3.0, math.nan, 3.0]),  # side by side: the epoch's 6 s shared by the two trained
    (1, 2, [True, False, True], [3.0, math.nan, 3.0]),  # slices run at once: shared too
    (2, 2, [False, True, False], [math.nan, 6.0, math.nan]),  # one trained: all its own
])
def test_an_epoch_times_each_trained_member_and_leaves_the_frozen_untimed(monkeypatch, width, concurrency, active,
                                                                          expected):
    # time.perf_counter: 10.0 at the start, then a reading at each slice's end.
    monkeypatch.setattr(populations.time, "perf_counter", iter([10.0, 11.5, 15.5, 20.0]).__next__)
    population, on_progress = _Epoch(width, concurrency, active), lambda progress: None
    result, seconds = populations.timed_epoch(population, on_progress)
    assert result.seconds == 6.0 and population.on_progress is on_progress
    np.testing.assert_array_equal(seconds, expected)


def test_the_loader_reads_each_dataset_once_from_its_folder(mnist_root, synthetic, tmp_path, monkeypatch):
    # Nowhere else to find it: MNISTLAB_DATA and the cache empty, the only mirror refusing.
    for name, value in (("MNISTLAB_DATA", tmp_path), ("MNISTLAB_CACHE", tmp_path),
                        ("MNISTLAB_MIRRORS", "http://127.0.0.1:9/")):
        monkeypatch.setenv(name, str(value))
    load = populations.loader(mnist_root)
    assert load("mnist").source == mnist_root / "mnist" and load("mnist") is load("mnist")
    assert populations.loader(tmp_path, given=synthetic)("mnist") is synthetic  # given: never read again


def test_a_member_becomes_an_ordinary_run_folder(load, tmp_path):
    m = populations.Member(0, spec_lib.with_values(spec_lib.from_dict(DENSE), {"training.epochs": 1}))
    kept = {}
    populations.run([m], load, lanes=1, on_done=lambda member, part: kept.update(part.params(member)))
    dest = tmp_path / "member-0"
    stale = tmp_path / ".member-0.tmp"  # what a writer killed half-way left
    stale.mkdir()
    (stale / "junk").write_text("half a run")
    assert populations.write_run(dest, m, kept, note="kept") == dest
    run = runs.open_run(dest)
    assert not stale.exists() and not (dest / "junk").exists()
    assert run.status == "completed" and run.metrics == m.history and run.summary["note"] == "kept"
    assert run.summary["weights_sha256"] == runs.tensors_digest(kept)
    seconds = [r["seconds"] for r in m.history]
    assert {k: run.summary[k] for k in ("name", "status", "epochs_completed", "epochs_requested", "best_epoch",
                                         "train_samples", "validation_samples", "train_seconds",
                                         "seconds_per_epoch", "final")} == {
        "name": "p", "status": "completed", "epochs_completed": 1, "epochs_requested": 1, "best_epoch": 1,
        "train_samples": 700, "validation_samples": 300, "train_seconds": sum(seconds),
        "seconds_per_epoch": seconds, "final": m.history[-1]}
    assert run.summary["environment"] == runs.environment()
    for name, value in run.params().items():
        np.testing.assert_array_equal(value, kept[name])
    assert populations.write_run(dest, m, None) == dest and runs.open_run(dest).summary == run.summary


def test_divergence_freezes_one_member_and_writes_no_weights(load, tmp_path):
    # SGD at learning rate 1e3 with l2(0.01) multiplies the kernel by about 1 - 2 * 1e3 * 0.01
    # = -19 a step (no max-norm to hold it): it overflows.
    hidden = {"type": "dense", "units": 24, "activation": "relu", "kernel_regularizer": {"l2": 0.01}}
    base = spec_lib.from_dict({**DENSE, "model": {"layers": [hidden, DENSE["model"]["layers"][2]]},
                               "optimizer": {"name": "sgd", "learning_rate": 1e3}})
    members = [populations.Member(0, base), populations.Member(1, spec_lib.with_values(
        base, {"optimizer.learning_rate": 0.05}))]
    kept = {}
    populations.run(members, load, lanes=2, on_done=lambda m, part: kept.update({m.index: part.params(m)}))
    assert members[0].status == populations.DIVERGED and members[1].status == populations.COMPLETED
    assert not populations.finite(kept[0]) and populations.finite(kept[1])
    path = populations.write_run(tmp_path / "run", members[0], kept[0])
    summary = json.loads((path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at_epoch"] == members[0].epochs
    assert "lower optimizer.learning_rate" in summary["hint"]  # what to do about it
    assert summary["final"]["epoch"] == members[0].epochs and math.isnan(summary["final"]["loss"])  # the last epoch
    assert not (path / "weights.safetensors").exists()


def test_points_rank_by_their_mean_over_seeds_with_student_t_intervals():
    rows = [{"member": i, "point": p, "status": "completed", "params": {"x": p}, "val_accuracy": v}
            for i, (p, v) in enumerate([(0, 0.90), (0, 0.92), (0, 0.97), (1, 0.93), (1, 0.94), (1, 0.95)])]
    points = search.point_rows(rows, "val_accuracy", "maximize")
    assert [p["point"] for p in points] == [1, 0]  # point 0 holds the luckiest seed, point 1 the best mean
    best = points[0]
    # mean 0.94, sd 0.01, t(0.975, 2) = 4.302653 -> half-width 4.302653 * 0.01 / sqrt(3)
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert best["n"] == 3 and best["mean"] == pytest.approx(0.94)
    assert best["ci_low"] == pytest.approx(0.94 - half) and best["ci_high"] == pytest.approx(0.94 + half)
    assert search.representative(best, rows, "val_accuracy") == 4  # 0.94: closest to the mean
    np.testing.assert_allclose(points[1]["mean"], (0.90 + 0.92 + 0.97) / 3)


# ------------------------------------------------------------------ early stopping: Keras' rule


class KerasEarlyStopping:
    """Keras 3's EarlyStopping.on_epoch_end, transcribed as a stateful object (0-based epochs),
    to check `populations.watch` against a formulation other than its own."""

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto", baseline=None, start_from_epoch=0):
        self.monitor, self.patience, self.baseline, self.start = monitor, patience, baseline, start_from_epoch
        lower = mode == "min" or (mode == "auto" and monitor.endswith("loss"))
        self.op = (lambda a, b: a < b) if lower else (lambda a, b: a > b)
        self.min_delta = -abs(min_delta) if lower else abs(min_delta)
        self.wait, self.best, self.best_epoch, self.stopped_epoch = 0, None, 0, None

    def improves(self, value, reference):
        return reference is None or self.op(value - self.min_delta, reference)

    def on_epoch_end(self, epoch, logs):
        current = logs.get(self.monitor)
        if current is None or epoch < self.start:
            return False
        self.wait += 1
        if self.improves(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.baseline is None or self.improves(current, self.baseline):
                self.wait = 0
            return False
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            return True
        return False


def fold_watch(settings, values, monitor):
    """(1-based stop epoch or None, 1-based best epoch) of `populations.watch` over `values`."""
    state = populations.Watch()
    for epoch, value in enumerate(values, 1):
        state, stop = populations.watch(settings, state, {"epoch": epoch, monitor: value})
        if stop:
            return epoch, state.best_epoch
    return None, state.best_epoch


def fold_keras(values, **settings):
    keras = KerasEarlyStopping(**settings)
    for epoch, value in enumerate(values):
        if keras.on_epoch_end(epoch, {settings["monitor"]: value}):
            return epoch + 1, keras.best_epoch + 1
    return None, (keras.best_epoch + 1 if keras.best is not None else 0)


def test_watch_is_keras_early_stopping_on_random_curves():
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(300):
        monitor = ["val_loss", "val_accuracy", "loss", "accuracy"][trial % 4]
        # Noisy curves with plateaus and exact ties: where min_delta and `>` vs `>=` matter.
        steps = np.round(rng.normal(0, 0.05, 12), 2)
        values = [float(v) for v in np.round(1 + np.cumsum(steps), 2)]
        settings = dict(monitor=monitor, min_delta=float(rng.choice([0.0, 0.02, -0.02, 0.1])),
                        patience=int(rng.integers(0, 4)), mode=str(rng.choice(["auto", "min", "max"])),
                        baseline=[None, float(values[0])][trial % 2], start_from_epoch=int(rng.choice([0, 0, 2])))
        ours = fold_watch(spec_lib.EarlyStopping(**settings), values, monitor)
        assert ours == fold_keras(values, **settings), (values, settings)
        checked += ours[0] is not None
    assert 50 < checked < 300  # both stopping and running to the end were exercised


@pytest.mark.parametrize("settings, stop, best", [
    # val_loss 1.0 0.9 0.95 0.89 0.95 0.96: 0.89 improves on 0.9, but not by min_delta 0.02.
    ({"patience": 2}, 6, 4),
    ({"patience": 2, "min_delta": 0.02}, 4, 2),
    ({"patience": 2, "min_delta": -0.02}, 4, 2),  # Keras takes the size of min_delta, not its sign
    ({"patience": 0}, 3, 2),  # patience 0: the first epoch without improvement stops
    ({"patience": 3}, None, 4),
    ({"patience": 1, "start_from_epoch": 3}, 5, 4),  # epochs 1-3 are not watched: 0.89 is the first best
    ({"patience": 2, "baseline": 0.92}, 6, 4),  # 0.9 beats the baseline: as without one
    # Nothing beats 0.85: improvements do not restart the count, which reaches 2 after epoch 2.
    ({"patience": 2, "baseline": 0.85}, 3, 2),
    ({"patience": 1, "mode": "max"}, 2, 1),  # maximized: 1.0 is never beaten
])
def test_watch_by_hand(settings, stop, best):
    values = [1.0, 0.9, 0.95, 0.89, 0.95, 0.96]
    assert fold_watch(spec_lib.EarlyStopping(**settings), values, "val_loss") == (stop, best)


def test_a_checkpoint_without_early_stopping_state_replays_it_from_the_history():
    stopping = spec_lib.with_values(spec_lib.from_dict(DENSE), {"training.early_stopping.patience": 3})
    history = [{"epoch": e, "val_loss": v} for e, v in enumerate([1.0, 0.9, 0.95, 0.97], 1)]
    trained = populations.Member(0, stopping)
    for record in history:
        trained.watch, _ = populations.watch(stopping.training.early_stopping, trained.watch, record)
    old = {k: v for k, v in trained.state().items() if k != "watch"} | {"history": history}
    restored = populations.Member(0, stopping)
    restored.restore(old)
    assert restored.watch == trained.watch == populations.Watch(wait=2, best=0.9, best_epoch=2)


@pytest.mark.parametrize("restore, status, weights, expected", [
    # Stopped at epoch 5, best at epoch 3: Keras 3 sets the best weights back only with
    # restore_best_weights and only when they were kept.
    (True, populations.STOPPED, True, {"stopped_epoch": 5, "weights_from_epoch": 3}),
    (False, populations.STOPPED, True, {"stopped_epoch": 5, "weights_from_epoch": 5}),
    (True, populations.STOPPED, False, {"stopped_epoch": 5, "weights_from_epoch": 5}),
    # Ran to its end: restored too (Keras 3), but no stopping epoch.
    (True, populations.COMPLETED, True, {"stopped_epoch": None, "weights_from_epoch": 3}),
    # Cut short (interrupted, diverged): training did not end, so nothing was set back.
    (True, populations.INTERRUPTED, True, {"stopped_epoch": None, "weights_from_epoch": 5}),
    (True, populations.DIVERGED, True, {"stopped_epoch": None, "weights_from_epoch": 5}),
])
def test_early_stopping_summary_says_where_it_stopped_and_whose_weights_are_kept(restore, status, weights, expected):
    spec = spec_lib.with_values(spec_lib.preset("fast"), {"training.validation_split": 0.1, "training.early_stopping": {
        "monitor": "val_accuracy", "patience": 2, "restore_best_weights": restore}})
    member = populations.Member(0, spec, status=status, history=[{"epoch": e} for e in range(1, 6)],
                                watch=populations.Watch(2, 0.97, 3), best_weights={"w": np.zeros(1)} if weights else None)
    assert populations.early_stopping_summary(member) == {"monitor": "val_accuracy", "best": 0.97, "best_epoch": 3,
                                                          **expected}


def test_a_summary_before_any_epoch_has_no_final_figures_and_says_what_early_stopping_did():
    stopping = spec_lib.with_values(spec_lib.from_dict(DENSE), {"training.early_stopping": {
        "monitor": "val_accuracy", "patience": 2}})
    out = populations.summary(populations.Member(0, stopping))
    assert (out["status"], out["epochs_completed"], out["seconds_per_epoch"], out["final"]) == (
        populations.PENDING, 0, [], None)
    assert out["early_stopping"] == {"monitor": "val_accuracy", "best": None, "best_epoch": None,
                                     "stopped_epoch": None, "weights_from_epoch": None}
    assert "early_stopping" not in populations.summary(populations.Member(0, spec_lib.from_dict(DENSE)))


def test_early_stopping_summary_before_any_epoch_has_no_epochs():
    spec = spec_lib.with_values(spec_lib.preset("fast"), {"training.validation_split": 0.1,
                                                          "training.early_stopping": {"patience": 2}})
    member = populations.Member(0, spec, status=populations.INTERRUPTED)
    assert populations.early_stopping_summary(member) == {
        "monitor": "val_loss", "best": None, "best_epoch": None, "stopped_epoch": None, "weights_from_epoch": None}


def test_a_plan_splits_a_group_for_28_by_28_images_and_says_why_in_the_callers_messages(load):
    members = [populations.Member(i, spec_lib.from_dict(DENSE)) for i in range(3)]
    member = engine.member_bytes(members[0].spec, (28, 28))  # what one member of MNIST holds
    messages = ["said before"]
    parts = populations.plan(members, load, memory_budget=2 * member, messages=messages)
    assert [[m.index for m in part.members] for part in parts] == [[0, 1], [2]]
    assert messages == ["said before", f"a group of 3 members needs about {3 * member / 2**20:.0f} MiB; training "
                                       f"it in 2 parts of at most 2 members to fit {2 * member / 2**20:.0f} MiB"]
    # Without a list to say it in, it is said nowhere and the plan is the same.
    assert [len(p.members) for p in populations.plan(members, load, memory_budget=2 * member)] == [2, 1]


def test_a_run_trains_within_its_memory_budget_and_reports_its_parts_and_why(load, monkeypatch):
    monkeypatch.setattr(engine, "_PROGRAMS", {})  # the first part compiles, the second reuses its programs
    spec = spec_lib.with_values(spec_lib.from_dict(DENSE), {"training.epochs": 1})
    members = [populations.Member(i, spec) for i in range(3)]
    member = engine.member_bytes(spec, (28, 28))
    compiled = []
    report = populations.run(members, load, memory_budget=2 * member, lanes=1,
                             after_part=lambda part: compiled.append(part.population.compile_seconds))
    assert report.parts == 2 and all(m.status == populations.COMPLETED for m in members)
    assert report.compile_seconds == compiled[0] + compiled[1] and compiled[0] > 0 == compiled[1]
    assert report.messages == [f"a group of 3 members needs about {3 * member / 2**20:.0f} MiB; training it in 2 "
                               f"parts of at most 2 members to fit {2 * member / 2**20:.0f} MiB"]


def test_a_part_trains_at_the_lanes_and_concurrency_it_measured_on_its_own_data_unless_told(load, monkeypatch):
    asked = []

    def choose_lanes(spec, images, labels, members):
        asked.append((spec, images.shape, labels.shape, members))
        return 2

    monkeypatch.setattr(engine, "choose_lanes", choose_lanes)
    monkeypatch.setattr(engine, "choose_concurrency", lambda spec, images, labels, width, members: width)
    spec = spec_lib.with_values(spec_lib.from_dict(DENSE), {"training.epochs": 1})
    trained = []  # (width, concurrency) of each part's population
    keep = lambda part, result: trained.append((part.population.width, part.population.concurrency))  # noqa: E731
    report = populations.run([populations.Member(i, spec) for i in range(3)], load, after_epoch=keep)
    assert asked == [(spec, (700, 28, 28), (700,), 3)] and list(report.lanes.values()) == [2]
    assert trained == [(2, 2)]
    report = populations.run([populations.Member(i, spec) for i in range(3)], load, lanes=1, after_epoch=keep)
    assert len(asked) == 1 and list(report.lanes.values()) == [1] and trained[1:] == [(1, 1)]  # told: not measured


def test_members_a_hook_stops_mid_epoch_keep_no_record_of_it_and_the_part_ends_with_them(load):
    # As a tune trial of two seeds is pruned from its first seed's epoch: the second seed,
    # trained in the same compiled epoch, is stopped before its record is folded in.
    spec = spec_lib.with_values(spec_lib.from_dict(DENSE), {"training.epochs": 3})
    members = [populations.Member(i, spec) for i in range(2)]

    def prune_both(m, part):
        for each in members:
            each.status = "pruned"

    epochs = []
    populations.run(members, load, lanes=1, on_epoch=prune_both, after_epoch=lambda part, r: epochs.append(r.epoch))
    assert [(m.status, m.epochs) for m in members] == [("pruned", 1), ("pruned", 0)]
    assert epochs == [1]  # nothing left to train: no second epoch


def test_a_run_tells_its_progress_through_each_epoch(load):
    spec = spec_lib.from_dict(DENSE)  # 2 epochs of 700 training images at batch 50: 14 steps each
    heard = []
    populations.run([populations.Member(0, spec)], load, lanes=1, on_progress=heard.append)
    ends = [(p.epoch, p.steps_done) for p in heard if p.steps_done == p.steps_total]
    assert ends == [(1, 14), (2, 14)] and all(p.steps_total == 14 for p in heard)


def _huge_network(units=100_000_000):
    """(spec, units, weights) of a dense net whose 784 x units weights (78 billion by default)
    exceed any machine's memory; the weights counted by hand."""
    spec = spec_lib.from_dict({**DENSE, "model": {"layers": [
        {"type": "dense", "units": units, "activation": "relu"},
        {"type": "dense", "units": 10, "activation": "softmax"}]}})
    return spec, units, 784 * units + units + units * 10 + 10


def test_a_member_is_refused_exactly_when_it_needs_more_than_80_percent_of_the_free_memory(monkeypatch):
    huge, units, weights = _huge_network()
    monkeypatch.setattr(engine, "member_bytes", lambda spec, shape: 4 * weights)  # say, the device's
    need = 4 * weights + 12 * weights  # and the host's float64 draw and its float32 cast: 12 bytes a weight
    free = need // 4 * 5
    assert 0.8 * free == need  # exactly 80% of it: the boundary
    monkeypatch.setattr(engine, "device_memory", lambda: free)
    populations.check_fits(huge, (28, 28))  # fits
    monkeypatch.setattr(engine, "device_memory", lambda: free - 1)
    with pytest.raises(mnistlab.UserError) as refused:
        populations.check_fits(huge, (28, 28))
    assert str(refused.value) == (
        f"p: one member needs about {need / 2**30:.1f} GiB ({weights:,} weights; model.layers.0 holds "
        f"{784 * units:,} of them) and this machine has {(free - 1) / 2**30:.1f} GiB free, 80% of it usable: "
        "use fewer units or layers, a smaller batch_size, or a machine with more memory")


def test_a_plan_refuses_a_member_the_machine_cannot_hold_counting_every_pixel(load):
    huge, units, weights = _huge_network()
    with pytest.raises(mnistlab.UserError) as refused:
        populations.plan([populations.Member(0, huge)], load)
    assert f"({weights:,} weights; model.layers.0 holds {784 * units:,} of them)" in str(refused.value)


@pytest.mark.parametrize("budget, device, sizes", [
    (None, 10, [5, 5, 2]),  # no budget: half the device's free memory, 5 MiB: 5 members a share
    (2.5, 1000, [2] * 6),  # a budget given wins over the device's memory: 2 whole members
    (1.5, 1000, [1] * 12),  # room for one member a share
    (0.5, 1000, [1] * 12),  # less than one member: each still trains, alone
    (12, 1, [12]),  # all of them fit: one share, said nothing of
])
def test_a_group_is_split_into_shares_that_fit_the_memory(monkeypatch, budget, device, sizes):
    mib = 2**20
    monkeypatch.setattr(engine, "member_bytes", lambda spec, shape: mib)  # 1 MiB a member
    monkeypatch.setattr(engine, "device_memory", lambda: device * mib)
    group = [populations.Member(i, spec_lib.preset("fast")) for i in range(12)]
    messages = []
    shares = populations.fit_memory(group, (28, 28), None if budget is None else int(budget * mib), messages)
    assert [len(share) for share in shares] == sizes
    assert [m.index for share in shares for m in share] == list(range(12))  # in order, none lost
    split = len(sizes) > 1
    fits = 5 if budget is None else budget
    assert messages == ([f"a group of 12 members needs about 12 MiB; training it in {len(sizes)} parts of at "
                         f"most {sizes[0]} members to fit {fits:.0f} MiB"] if split else [])
    populations.fit_memory(group, (28, 28), None if budget is None else int(budget * mib), messages)
    assert len(messages) == split  # the same message once
