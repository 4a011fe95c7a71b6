"""Train any list of configurations as compiled populations; each member is exactly the
configuration it names.

`train`, `sweep`, `tune` and `ablate` all train through `run`. They keep only what is
theirs (a sweep's ranking, Optuna's ask and tell, a claim's analysis) and see members
through hooks:

    members = [Member(i, spec) for i, spec in enumerate(specs)]
    run(members, load=lambda name: data.load(name), metric="val_accuracy")
    members[0].status, members[0].history[-1]["val_accuracy"]

Grouping. Members train side by side only when they share the compiled program *and* the
data it sees (`group_key`). Every field of a specification has one role (`ROLES`; a test
walks the Pydantic models and checks each field is classified, and that the code treats it
so):

    program  changes the compiled program: members must share it (`engine.structure`)
    number   a per-member input of the program (`engine.numbers`)
    member   per member outside the program: initial weights, seeds, epochs, the name
    data     which images are trained and validated on: members must share it

The data key is derived by exclusion: every field outside `model` and `optimizer` that is
not a member field belongs to it, so a field added later trains apart until it is
classified, and is never shared by mistake.

A member stops at its own epoch count, when it diverges, when its own
`training.early_stopping` says so (Keras' EarlyStopping rule, `watch`), or when a hook says
so (Optuna's pruner, a callback); it is frozen inside its running population
(`engine.Population.freeze`) while the others go on.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from mnistlab import data, engine, layers, runs
from mnistlab import spec as spec_lib
from mnistlab.errors import UserError
from mnistlab.layers import NESTED, NUMBER, PROGRAM
from mnistlab.spec import RunSpec

# ------------------------------------------------------------------ what groups members

# A field's role in grouping members: PROGRAM, NUMBER or NESTED (see `layers`), or
MEMBER = "member"  # the member's own, whatever the others do: its name, seed and epochs
DATA = "data"  # it decides the images the member trains and validates on

# Class name -> field -> role; each layer type declares its own (`layers.Layer.roles`).
# populations_test.py checks that every field of every model reachable from RunSpec is
# here, and that each role holds in the code.
ROLES: dict[str, dict[str, str]] = {
    "RunSpec": {"name": MEMBER, "dataset": DATA, "model": NESTED, "optimizer": NESTED, "training": NESTED},
    "TrainingSpec": {"epochs": MEMBER, "batch_size": PROGRAM, "eval_batch_size": PROGRAM, "shuffle": PROGRAM,
                     # Initial weights, batch order and dropout masks; with a stratified holdout it
                     # also draws the validation images, and is then part of the data key.
                     "seed": MEMBER, "validation": NESTED, "subset": DATA, "early_stopping": NESTED},
    # When a member stops and which of its weights it keeps: its own, outside the program.
    "EarlyStopping": dict.fromkeys(("monitor", "min_delta", "patience", "mode", "baseline",
                                    "restore_best_weights", "start_from_epoch"), MEMBER),
    "Holdout": {"fraction": DATA, "method": DATA},
    "ModelSpec": {"layers": NESTED, "input_rescale": PROGRAM, "dtype_policy": PROGRAM},
    "Initializer": dict.fromkeys(("name", "mean", "stddev", "minval", "maxval", "value"), MEMBER),
    "Regularizer": {"l1": NUMBER, "l2": NUMBER},
    "MaxNorm": {"max_value": NUMBER},
    **{cls.__name__: cls.roles for cls in layers.TYPES},
    "Schedule": {"name": PROGRAM, "decay_steps": PROGRAM, "warmup_steps": PROGRAM, "staircase": PROGRAM,
                 "decay_rate": NUMBER, "alpha": NUMBER},
    "OptimizerSpec": {"name": PROGRAM, "learning_rate": NUMBER, "decay": NUMBER, "schedule": NESTED,
                      "momentum": NUMBER, "nesterov": PROGRAM, "beta_1": NUMBER, "beta_2": NUMBER,
                      "epsilon": NUMBER, "amsgrad": PROGRAM, "weight_decay": NUMBER, "rho": NUMBER,
                      "initial_accumulator_value": NUMBER},
}


def field_at(spec: RunSpec, path: str) -> tuple[str, str]:
    """(class name, field) of a dotted path into `spec` ("model.layers.1.units" -> ("Dense", "units"))."""
    node: Any = spec
    owner = name = ""
    for part in path.split("."):
        if isinstance(node, (list, tuple)):
            node = node[int(part)]
            continue
        owner, name = type(node).__name__, part
        node = getattr(node, part)
    return owner, name


def role_of(spec: RunSpec, path: str) -> str | None:
    """The role of the field at `path`; None for a field ROLES does not know (yet)."""
    owner, name = field_at(spec, path)
    return ROLES.get(owner, {}).get(name)


def data_key(spec: RunSpec) -> tuple:
    """What decides the images a member trains and validates on, derived by exclusion: every
    field outside the model and optimizer that is neither program nor member, unknown ones too."""
    flat = spec_lib.flatten(spec.resolved())
    key = {k: v for k, v in flat.items()
           if not k.startswith(("model.", "optimizer.")) and role_of(spec, k) not in (PROGRAM, MEMBER)}
    if spec.training.validation.method == "stratified" and spec.training.validation.fraction > 0:
        key["training.seed"] = spec.training.seed  # it draws the validation images
    return tuple(sorted(key.items()))


def group_key(spec: RunSpec) -> tuple:
    """Members with equal keys train as one population: one program, one data set."""
    return engine.structure(spec), data_key(spec)


def loader(data_dir: str | Path | None = None, given: data.Arrays | None = None) -> Callable[[str], data.Arrays]:
    """name -> its arrays, each data set read once; `given` (already loaded) serves its own name."""
    cache = {given.info.name: given} if given is not None else {}

    def load(name: str) -> data.Arrays:
        if name not in cache:
            cache[name] = data.load(name, data_dir)
        return cache[name]

    return load


def split(spec: RunSpec, arrays: data.Arrays):
    """(train images, train labels, validation images, validation labels) as the spec asks."""
    v = spec.training.validation
    x, y = arrays.train_images, arrays.train_labels
    if spec.training.subset is not None:
        if spec.training.subset > len(y):  # a silent cap would record a subset that never was
            raise UserError(f"training.subset = {spec.training.subset}: '{spec.dataset}' has {len(y)} training "
                            f"images; give at most {len(y)}, or leave subset out for all of them")
        x, y = x[: spec.training.subset], y[: spec.training.subset]
    train_idx, val_idx = data.holdout(y, v.fraction, method=v.method, seed=spec.training.seed)
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


# ------------------------------------------------------------------ members

PENDING, RUNNING = "pending", "running"
COMPLETED, DIVERGED, STOPPED, PRUNED, INTERRUPTED = "completed", "diverged", "stopped", "pruned", "interrupted"

DIVERGED_HINT = ("the loss stopped being finite: lower optimizer.learning_rate (e.g. by 10x), "
                 "add a schedule with warm-up, or reduce the penalty strengths")


def direction(metric: str) -> str:
    return "minimize" if metric.endswith("loss") else "maximize"


def better(value: float, best: float | None, metric: str) -> bool:
    """Is `value` an improvement on `best` (None: nothing yet) for `metric`?"""
    if best is None or not math.isfinite(best):
        return math.isfinite(value)
    return value > best if direction(metric) == "maximize" else value < best


@dataclass(frozen=True)
class Watch:
    """Keras' EarlyStopping state: epochs without improvement, the best figure and its
    1-based epoch number (0: none yet)."""

    wait: int = 0
    best: float | None = None
    best_epoch: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"wait": self.wait, "best": self.best, "best_epoch": self.best_epoch}


def watch(settings: spec_lib.EarlyStopping, state: Watch, record: dict[str, Any]) -> tuple[Watch, bool]:
    """Keras' `EarlyStopping.on_epoch_end` as a pure function: (the new state, stop now?).

    `record["epoch"]` is 1-based; Keras' `epoch` argument is that minus 1. A figure the
    epoch did not produce, or an epoch before `start_from_epoch`, changes nothing.
    """
    epoch, value = record["epoch"] - 1, record.get(settings.monitor)
    if value is None or epoch < settings.start_from_epoch:
        return state, False
    delta = -abs(settings.min_delta) if settings.minimize else abs(settings.min_delta)

    def improves(reference: float | None) -> bool:
        if reference is None:
            return True
        shifted = value - delta
        return shifted < reference if settings.minimize else shifted > reference

    if improves(state.best):
        # The count restarts only when the baseline is beaten too.
        wait = 0 if settings.baseline is None or improves(settings.baseline) else state.wait + 1
        return Watch(wait, value, record["epoch"]), False
    wait = state.wait + 1
    return Watch(wait, state.best, state.best_epoch), wait >= settings.patience and epoch > 0


def replay(spec: RunSpec, history: list[dict[str, Any]]) -> Watch:
    """The early-stopping state after `history`, from the records alone."""
    state = Watch()
    if spec.training.early_stopping is not None:
        for record in history:
            state, _ = watch(spec.training.early_stopping, state, record)
    return state


@dataclass
class Member:
    """One configuration being trained: the record every caller reads.

    `tags` says who it is to its caller (a sweep's point, a trial's number, a claim's
    variant); the rest is filled in as it trains.
    """

    index: int
    spec: RunSpec
    tags: dict[str, Any] = field(default_factory=dict)
    status: str = PENDING
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float | None = None
    train_samples: int = 0
    validation_samples: int = 0
    watch: Watch = Watch()  # of `spec.training.early_stopping`, when it has one
    # The weights of `watch.best_epoch`, kept with `restore_best_weights`: what the member
    # ends with (`Part.params`), as Keras sets them back at the end of training.
    best_weights: dict[str, np.ndarray] | None = None

    @property
    def seed(self) -> int:
        return self.spec.training.seed

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def training(self) -> bool:
        return self.status in (PENDING, RUNNING)

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's figures (no epoch number, no seconds); {} before the first."""
        last = self.history[-1] if self.history else {}
        return {k: v for k, v in last.items() if k not in ("epoch", "seconds")}

    def state(self) -> dict[str, Any]:
        """The bookkeeping a checkpoint keeps (the weights go beside it)."""
        return {"index": self.index, "status": self.status, "history": self.history, "best_epoch": self.best_epoch,
                "best_value": self.best_value, "train_samples": self.train_samples,
                "validation_samples": self.validation_samples, "watch": self.watch.as_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        for key in ("status", "history", "best_epoch", "best_value", "train_samples", "validation_samples"):
            setattr(self, key, state[key])
        # Checkpoints written before early stopping was kept per member hold no watch: replay it.
        self.watch = Watch(**state["watch"]) if "watch" in state else replay(self.spec, self.history)

    @property
    def restores_best(self) -> bool:
        stopping = self.spec.training.early_stopping
        return stopping is not None and stopping.restore_best_weights


def _advance(m: Member, record: dict[str, Any], diverged: bool, metric: str) -> None:
    """Fold one trained epoch into a member: divergence, best value, its own end, early stopping."""
    m.history.append(record)
    m.status = RUNNING
    value = record.get(metric)  # None when not produced (no validation data): nothing to rank by
    if diverged or not math.isfinite(record["loss"]) or (value is not None and not math.isfinite(value)):
        m.status = DIVERGED
        return
    if value is not None and better(value, m.best_value, metric):
        m.best_value, m.best_epoch = value, record["epoch"]
    stop = False
    if m.spec.training.early_stopping is not None:
        m.watch, stop = watch(m.spec.training.early_stopping, m.watch, record)
    if m.epochs >= m.spec.training.epochs:
        m.status = COMPLETED
    elif stop:
        m.status = STOPPED


# ------------------------------------------------------------------ parts and their populations


@dataclass
class Part:
    """Members that train as one population right now (a group, or a share of one that fits memory)."""

    key: str  # "<group>.<share>", stable for one list of members: checkpoints are named by it
    members: list[Member]
    arrays: data.Arrays
    lanes: int = 1
    population: engine.Population | None = None
    x_train: np.ndarray | None = None
    y_train: np.ndarray | None = None
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    def params(self, m: Member) -> dict[str, np.ndarray]:
        """The member's weights; once it has stopped with `restore_best_weights`, its best epoch's."""
        if not m.training and m.best_weights is not None and m.status != DIVERGED:
            return m.best_weights
        return self.population.member_params(self.members.index(m))

    def evaluate(self, images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Every member's loss (penalty included) and accuracy on a data set, in part order."""
        return self.population.evaluate(images, labels)


def groups(members: list[Member]) -> list[list[Member]]:
    """Members grouped by `group_key`, in order of first appearance."""
    by: dict[tuple, list[Member]] = {}
    for m in members:
        by.setdefault(group_key(m.spec), []).append(m)
    return list(by.values())


def check_fits(spec: RunSpec, image_shape: tuple[int, ...]) -> None:
    """Refuse, before anything is allocated or written, a member this machine cannot hold.

    The need: what `engine.member_bytes` counts on the device (weights, gradient, optimizer
    slots, a batch's activations) plus the host's copies while initializing (a float64 draw
    and its float32 cast); at most 80% of the free memory is counted on (XLA's workspace,
    the data set and other processes take the rest).
    """
    from mnistlab import model

    shapes = model.parameter_shapes(spec.model, image_shape)
    sizes = {name: int(np.prod(shape)) for name, shape in shapes.items()}
    weights = sum(sizes.values())
    need = engine.member_bytes(spec, image_shape) + 12 * weights
    free = engine.device_memory()
    if need > 0.8 * free:
        names = model.layer_names(spec.model)
        biggest = max(sizes, key=sizes.get)
        index = names.index(biggest.split("/")[0])
        raise UserError(f"{spec.name}: one member needs about {need / 2**30:.1f} GiB ({weights:,} weights; "
                        f"model.layers.{index} holds {sizes[biggest]:,} of them) and this machine has "
                        f"{free / 2**30:.1f} GiB free, 80% of it usable: use fewer units or layers, a smaller "
                        "batch_size, or a machine with more memory")


def fit_memory(group: list[Member], image_shape: tuple[int, ...], budget: int | None,
               messages: list[str]) -> list[list[Member]]:
    """Split a group into shares whose members' state fits the device at once."""
    per_member = engine.member_bytes(group[0].spec, image_shape)
    budget = budget if budget is not None else engine.device_memory() // 2
    fit = max(1, budget // per_member)
    if len(group) <= fit:
        return [group]
    shares = [group[i:i + fit] for i in range(0, len(group), fit)]
    message = (f"a group of {len(group)} members needs about {len(group) * per_member / 2**20:.0f} MiB; "
               f"training it in {len(shares)} parts of at most {fit} members to fit {budget / 2**20:.0f} MiB")
    if message not in messages:
        messages.append(message)
    return shares


def plan(members: list[Member], load: Callable[[str], data.Arrays], memory_budget: int | None = None,
         messages: list[str] | None = None) -> list[Part]:
    """The parts `run` trains, in order."""
    messages = messages if messages is not None else []
    parts = []
    for g, group in enumerate(groups(members)):
        arrays = load(group[0].spec.dataset)
        check_fits(group[0].spec, arrays.train_images.shape[1:])
        for s, share in enumerate(fit_memory(group, arrays.train_images.shape[1:], memory_budget, messages)):
            parts.append(Part(f"{g}.{s}", share, arrays))
    return parts


def timed_epoch(population: engine.Population, on_progress=None) -> tuple[engine.EpochResult, np.ndarray]:
    """One epoch, and the training seconds of each member (NaN for members not trained).

    One member per slice (`lanes = 1`): slices train one after another, so the end of each
    times that member on its own. Members side by side share the epoch's time evenly.
    """
    running = np.flatnonzero(population.active)
    ends: dict[int, float] = {}
    start = time.perf_counter()
    single = population.width == 1 and population.concurrency == 1
    result = population.train_epoch(on_progress, (lambda k: ends.setdefault(k, time.perf_counter())) if single else None)
    seconds = np.full(population.size, np.nan)
    if single and ends:
        order = sorted(ends)  # slice k holds member k at width 1
        seconds[order] = np.diff([start, *(ends[k] for k in order)])
    else:
        seconds[running] = result.seconds / max(len(running), 1)
    return result, seconds


# ------------------------------------------------------------------ checkpoints


class Checkpoints:
    """What lets an interrupted `run` resume to the same numbers, in `folder`.

    `progress.json` holds the finished parts and their members' bookkeeping; a part in
    training has `checkpoints/part-<key>.safetensors`, its members' weights and optimizer
    state after the last epoch, their bookkeeping in its metadata. A kill between an
    epoch and its checkpoint trains that epoch again, to the same numbers (shuffles and
    dropout keys derive from epoch and step numbers).
    """

    PROGRESS = "progress.json"

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / self.PROGRESS
        (self.folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        if not self.path.exists():  # from the start: the folder is known as unfinished, so resumable
            runs.atomic_write(self.path, json.dumps({"done_parts": [], "members": []}))
        self.progress = json.loads(self.path.read_text())

    def _file(self, key: str) -> Path:
        return self.folder / "checkpoints" / f"part-{key}.safetensors"

    def save_progress(self) -> None:
        runs.atomic_write(self.path, json.dumps(self.progress))

    def restore(self, members: list[Member]) -> None:
        """Members' bookkeeping as it was: finished parts, then parts stopped mid-way."""
        by_index = {m.index: m for m in members}
        for state in self.progress["members"]:
            by_index[state["index"]].restore(state)
        for path in (self.folder / "checkpoints").glob("part-*.safetensors"):
            for state in self._meta(path)["members"]:
                by_index[state["index"]].restore(state)

    def done(self, key: str) -> bool:
        return key in self.progress["done_parts"]

    def lanes(self, key: str) -> int | None:
        path = self._file(key)
        return self._meta(path)["lanes"] if path.exists() else None

    def load(self, part: Part) -> None:
        path = self._file(part.key)
        if path.exists():
            meta = self._meta(path)
            arrays = load_file(path)
            part.population.load_state_arrays(arrays, meta["epochs"], meta["diverged"])
            for m in part.members:
                prefix = f"best/{m.index}/"
                best = {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}
                m.best_weights = best or None

    def save(self, part: Part) -> None:
        meta = {"epochs": part.population.epochs_done, "diverged": part.population.diverged.tolist(),
                "lanes": part.lanes, "members": [m.state() for m in part.members]}
        path = self._file(part.key)
        tmp = path.with_name(path.name + ".tmp")
        # Kept best weights go in the same file: one rename makes state and best agree.
        best = {f"best/{m.index}/{k}": np.ascontiguousarray(v) for m in part.members
                if m.best_weights is not None for k, v in m.best_weights.items()}
        save_file({**part.population.state_arrays(), **best}, str(tmp),
                  metadata={"mnistlab.part": json.dumps(meta)})
        tmp.replace(path)

    def finish(self, part: Part) -> None:
        known = {s["index"]: s for s in self.progress["members"]}
        known.update({m.index: m.state() for m in part.members})
        self.progress["members"] = sorted(known.values(), key=lambda s: s["index"])
        self.progress["done_parts"].append(part.key)
        self.save_progress()
        self._file(part.key).unlink(missing_ok=True)

    @staticmethod
    def _meta(path: Path) -> dict[str, Any]:
        with safe_open(path, "np") as f:
            return json.loads(f.metadata()["mnistlab.part"])


# ------------------------------------------------------------------ the driver

Hook = Callable[[Member, Part], Any]


@dataclass
class Report:
    """How a `run` went, apart from its members: per-part widths, compilation, messages."""

    lanes: dict[str, int] = field(default_factory=dict)
    compile_seconds: float = 0.0
    messages: list[str] = field(default_factory=list)
    parts: int = 0


def run(members: list[Member], load: Callable[[str], data.Arrays], *, metric: str = "val_accuracy",
        lanes: int | None = None, memory_budget: int | None = None,
        checkpoints: Checkpoints | None = None,
        on_epoch: Hook | None = None,
        on_done: Hook | None = None,
        after_epoch: Callable[[Part, engine.EpochResult], None] | None = None,
        after_part: Callable[[Part], None] | None = None,
        on_progress: Callable[[engine.Progress], None] | None = None) -> Report:
    """Train `members`, part after part; fill in their status and history.

    `lanes`: members side by side (None: measured, `engine.choose_lanes`). Hooks:
    `on_epoch(member, part)` after each epoch it trained; it may stop any member of the
    part by setting its status (e.g. "pruned"). `on_done(member, part)` once a member
    stops training (its weights are `part.params(member)`); `after_epoch(part, result)`
    once the part's members are updated (records, checkpoints, budgets); `after_part(part)`
    at the end of a part. An exception (Ctrl-C) marks the members in training
    "interrupted" and goes on up. With `checkpoints`, finished parts are skipped and an
    interrupted one resumes from its last epoch.
    """
    report = Report()
    if checkpoints is not None:
        checkpoints.restore(members)
    for part in plan(members, load, memory_budget, report.messages):
        report.parts += 1
        if checkpoints is not None and checkpoints.done(part.key):
            continue
        _train_part(part, report, metric=metric, lanes=lanes, checkpoints=checkpoints,
                    on_epoch=on_epoch, on_done=on_done, after_epoch=after_epoch, on_progress=on_progress)
        if after_part is not None:
            after_part(part)
        if checkpoints is not None:
            checkpoints.finish(part)
        # The next part gets the device's memory: this one's states and data are let go.
        part.population = part.x_train = part.y_train = part.x_val = part.y_val = None
    return report


def _train_part(part: Part, report: Report, *, metric, lanes, checkpoints, on_epoch, on_done,
                after_epoch, on_progress) -> None:
    first = part.members[0].spec
    part.x_train, part.y_train, part.x_val, part.y_val = split(first, part.arrays)
    # A resumed part keeps the width it was measured at: another width is another compiled
    # program, whose float rounding would differ from the run that was interrupted.
    part.lanes = (lanes or (checkpoints.lanes(part.key) if checkpoints else None)
                  or engine.choose_lanes(first, part.x_train, part.y_train, len(part.members)))
    report.lanes[part.key] = part.lanes
    concurrency = engine.choose_concurrency(first, part.x_train, part.y_train, part.lanes, len(part.members))
    part.population = population = engine.Population(
        [m.spec for m in part.members], part.x_train, part.y_train, part.x_val, part.y_val, lanes=part.lanes,
        concurrency=concurrency)
    for m in part.members:
        m.train_samples, m.validation_samples = len(part.y_train), len(part.y_val)
    if checkpoints is not None:
        checkpoints.load(part)
    population.freeze([i for i, m in enumerate(part.members) if not m.training])
    population.compile_all()  # epoch times measure training only
    epochs = max(m.spec.training.epochs for m in part.members)
    try:
        while population.epochs_done < epochs and population.active.any():
            trained = population.active & np.array([m.training for m in part.members])
            result, seconds = timed_epoch(population, on_progress)
            for i, m in enumerate(part.members):
                if trained[i] and m.training:
                    record = {"epoch": result.epoch, **{k: v[i] for k, v in result.metrics.items()},
                              "seconds": float(seconds[i])}
                    _advance(m, record, result.diverged[i], metric)
                    if m.restores_best and m.watch.best_epoch == record["epoch"]:
                        m.best_weights = part.population.member_params(i)
                    if on_epoch is not None:
                        on_epoch(m, part)
            stopped = [m for i, m in enumerate(part.members) if trained[i] and not m.training]
            population.freeze([i for i, m in enumerate(part.members) if not m.training])
            for m in stopped:
                if on_done is not None:
                    on_done(m, part)
            if checkpoints is not None:
                checkpoints.save(part)
            if after_epoch is not None:
                after_epoch(part, result)
    except BaseException:
        # Ctrl-C, SIGTERM turned into KeyboardInterrupt, a caller's budget: the members in
        # training keep their finished epochs and are marked interrupted. Their weights are
        # not handed out: a chunk stopped half-way may have consumed its (donated) state.
        for m in part.members:
            if m.training:
                m.status = INTERRUPTED
        raise
    finally:
        report.compile_seconds += population.compile_seconds
    for m in part.members:  # a member frozen before its last epoch (nothing left to run)
        if m.training:
            m.status = COMPLETED
            if on_done is not None:
                on_done(m, part)


# ------------------------------------------------------------------ the one run-folder writer


def summary(m: Member, **extra: Any) -> dict[str, Any]:
    """A member's `summary.json`, one schema for every run folder (train, a sweep's best, a trial)."""
    seconds = [r["seconds"] for r in m.history]
    out: dict[str, Any] = {
        "name": m.spec.name, "status": m.status, "epochs_completed": m.epochs,
        "epochs_requested": m.spec.training.epochs, "best_epoch": m.best_epoch,
        "train_samples": m.train_samples, "validation_samples": m.validation_samples,
        "train_seconds": float(sum(seconds)), "seconds_per_epoch": seconds,
        "final": m.history[-1] if m.history else None,
    }
    if m.spec.training.early_stopping is not None:
        out["early_stopping"] = early_stopping_summary(m)
    if m.status == DIVERGED:
        out["diverged_at_epoch"] = m.epochs
        out["hint"] = DIVERGED_HINT
    out.update(extra)
    out.setdefault("environment", runs.environment())
    return out


def early_stopping_summary(m: Member) -> dict[str, Any]:
    """What early stopping did, in 1-based epoch numbers: the best epoch of its monitor, where
    it stopped (None: it did not), and whose weights the run keeps."""
    stopping = m.spec.training.early_stopping
    ended = m.status in (COMPLETED, STOPPED)
    restored = m.restores_best and ended and m.best_weights is not None
    return {"monitor": stopping.monitor, "best": m.watch.best, "best_epoch": m.watch.best_epoch or None,
            "stopped_epoch": m.epochs if m.status == STOPPED else None,
            "weights_from_epoch": m.watch.best_epoch if restored else (m.epochs or None)}


def finite(params: dict[str, np.ndarray]) -> bool:
    """Weights worth saving: a diverged member's are not."""
    return all(np.isfinite(np.asarray(v)).all() for v in params.values())


def write_run(dest: Path, m: Member, weights: dict[str, np.ndarray] | None, **extra: Any) -> Path:
    """A finished member as an ordinary run folder at `dest`, which appears whole or not at all."""
    if dest.exists():
        return dest
    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    writer = runs.RunWriter(tmp, m.spec)
    writer.log_epochs(m.history)
    if weights is not None and finite(weights):
        extra["weights_sha256"] = writer.save_weights(weights)
    writer.finish(summary(m, **extra))
    tmp.rename(dest)
    return dest
