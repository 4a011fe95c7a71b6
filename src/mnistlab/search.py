"""Sweeps: a base configuration, a search space, every point trained as one population.

    name = "lr-l2"
    base = "seed"                                   # a preset, or the path of a run TOML
    set = ["training.epochs=5", "training.validation_split=0.1"]
    seeds = 3                                       # each point is trained with seeds 0, 1, 2
    metric = "val_accuracy"                         # what ranks the members

    [search]
    method = "grid"                                 # grid | random | list
    [search.params]
    "optimizer.learning_rate" = [1e-4, 1e-3, 1e-2, 1e-1]
    "model.layers.0.kernel_regularizer.l2" = [0.0, 1e-4, 1e-3, 1e-2]

Random search draws `trials` points from distributions:
`{ distribution = "log_uniform", low = 1e-4, high = 1e-1 }`, `"uniform"`, `"int_uniform"`,
or `{ choice = [256, 512] }`. A list search trains `points = [{...}, {...}]` as given.

Keys under `mlp.` vary the hidden stack of a dense network as a whole, which dotted
paths cannot (a path names one layer, and the number of layers is what changes):
`mlp.hidden_layers`, `mlp.units`, `mlp.dropout` (after each hidden layer),
`mlp.input_dropout`, `mlp.l2` (every kernel, output included), `mlp.max_norm` (hidden
kernels; 0 removes the constraint) and `mlp.activation`. Whatever is not given is copied
from the base model's first hidden Dense layer and its dropout (`expand_point`).

Every (point, seed) is a member; `populations.run` trains them, members that share a
program and its data side by side, each to its own epoch count. Every epoch is recorded
and checkpointed, so an interrupted sweep resumes where it stopped, with the same numbers.
Points are ranked by their mean over seeds, with a 95% Student-t interval (`stats`).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from safetensors.numpy import load_file, save_file

from mnistlab import data, populations, runs, stats, tracking
from mnistlab import spec as spec_lib
from mnistlab.errors import UserError, suggest

# ------------------------------------------------------------------ the specification


class Distribution(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    distribution: Literal["uniform", "log_uniform", "int_uniform"] | None = None
    low: float | None = None
    high: float | None = None
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> "Distribution":
        if self.choice is not None:
            if self.distribution is not None or not self.choice:
                raise ValueError("give either a non-empty `choice` list or a `distribution` with low/high")
            return self
        if self.distribution is None or self.low is None or self.high is None:
            raise ValueError("a distribution needs `distribution` (uniform, log_uniform, int_uniform), `low` and `high`")
        if not self.low < self.high:
            raise ValueError(f"low must be below high, got {self.low} >= {self.high}")
        if self.distribution == "log_uniform" and self.low <= 0:
            raise ValueError(f"log_uniform needs low > 0, got {self.low}")
        return self

    def draw(self, rng: np.random.Generator) -> Any:
        if self.choice is not None:
            return self.choice[int(rng.integers(len(self.choice)))]
        if self.distribution == "uniform":
            return float(rng.uniform(self.low, self.high))
        if self.distribution == "log_uniform":
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return int(rng.integers(int(self.low), int(self.high) + 1))


class Space(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["grid", "random", "list"] = "grid"
    params: dict[str, list[Any] | Distribution] = {}
    points: list[dict[str, Any]] = []
    trials: int = Field(default=10, gt=0)
    seed: int = 0  # of the random draws

    @model_validator(mode="after")
    def _consistent(self) -> "Space":
        if self.method == "list":
            if not self.points or self.params:
                raise ValueError("method = 'list' takes `points` (a list of tables), not `params`")
        elif not self.params or self.points:
            raise ValueError(f"method = '{self.method}' takes `params`, not `points`")
        if self.method == "grid":
            bad = [k for k, v in self.params.items() if not isinstance(v, list) or not v]
            if bad:
                raise ValueError(f"a grid takes non-empty lists of values; not {bad}. Use method = 'random' "
                                 "for distributions")
        return self

    def points_to_train(self) -> list[dict[str, Any]]:
        if self.method == "list":
            return [dict(p) for p in self.points]
        if self.method == "grid":
            keys = list(self.params)
            return [dict(zip(keys, values)) for values in itertools.product(*self.params.values())]
        rng = np.random.default_rng(self.seed)
        as_dist = {k: v if isinstance(v, Distribution) else Distribution(choice=v) for k, v in self.params.items()}
        return [{k: d.draw(rng) for k, d in as_dist.items()} for _ in range(self.trials)]


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "sweep"
    base: str | dict[str, Any] = "seed"  # a preset name, a TOML path, or an inline run spec
    set: list[str] = []
    seeds: int = Field(default=1, gt=0)
    metric: Literal["val_accuracy", "val_loss", "accuracy", "loss"] = "val_accuracy"
    # Shorthand for each member's training.early_stopping = {patience, monitor = metric}: one
    # mechanism (Keras' EarlyStopping rule, `populations.watch`), spelt as sweeps always had it.
    patience: int | None = Field(default=None, gt=0)
    lanes: int | None = Field(default=None, gt=0)  # members side by side; None: measured
    search: Space

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return spec_lib.check_name(v)

    @property
    def direction(self) -> str:
        return "minimize" if self.metric.endswith("loss") else "maximize"


def load_sweep(path: str | Path) -> SweepSpec:
    raw = spec_lib.read_toml(path, "a sweep TOML (see README: Sweeps)")
    return sweep_from_dict(raw, str(path), base_dir=Path(path).parent)


def sweep_from_dict(raw: dict[str, Any], source: str = "sweep", base_dir: Path | None = None) -> SweepSpec:
    try:
        sweep = SweepSpec.model_validate(raw)
    except ValidationError as err:
        lines = [f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg'].removeprefix('Value error, ')}"
                 for e in err.errors()]
        raise UserError(f"{source}: invalid sweep:\n  " + "\n  ".join(lines)) from None
    if isinstance(sweep.base, str) and base_dir is not None and not sweep.base.endswith(".toml"):
        return sweep
    if isinstance(sweep.base, str) and base_dir is not None:
        return sweep.model_copy(update={"base": str((base_dir / sweep.base).resolve())})
    return sweep


def base_spec(sweep: SweepSpec) -> spec_lib.RunSpec:
    if isinstance(sweep.base, dict):
        spec = spec_lib.from_dict(sweep.base, "sweep base")
    elif sweep.base.endswith(".toml"):
        spec = spec_lib.load(sweep.base)
    else:
        spec = spec_lib.preset(sweep.base)
    spec = spec_lib.with_overrides(spec, list(sweep.set))
    if sweep.patience is not None:
        given = spec.training.early_stopping
        if given is not None and "patience" in given.model_fields_set and given.patience != sweep.patience:
            raise UserError(f"patience = {sweep.patience} and the base's training.early_stopping.patience = "
                            f"{given.patience} are one setting spelt twice: give one of them")
        stopping = given.model_dump(exclude_unset=True) if given is not None else {}
        spec = spec_lib.with_values(spec, {"training.early_stopping": {
            "monitor": sweep.metric, **stopping, "patience": sweep.patience}}, source="sweep patience")
    return spec


def candidates(sweep: SweepSpec) -> list[populations.Member]:
    """Every (point, seed) of the sweep as a member with its validated specification."""
    base = base_spec(sweep)
    out = []
    for p, point in enumerate(sweep.search.points_to_train()):
        spec = spec_lib.with_values(base, expand_point(base, point), source=f"sweep point {p} {point}")
        for s in range(sweep.seeds):  # seeds count up from the point's own
            seeded = spec_lib.with_values(spec, {"training.seed": spec.training.seed + s,
                                                 "name": f"{sweep.name}-{len(out)}"}, source=f"sweep point {p}")
            out.append(populations.Member(len(out), seeded, tags={"point": p, "params": point}))
    return out


def check_metric(sweep: SweepSpec, members: list[populations.Member], source: str) -> None:
    """A metric that no epoch would produce is refused before anything trains."""
    if not sweep.metric.startswith("val_"):
        return
    bare = sorted({m.tags["point"] for m in members if m.spec.training.validation.fraction <= 0})
    if bare:
        raise UserError(f"{source}: metric = '{sweep.metric}' needs validation data, but point(s) "
                        f"{', '.join(map(str, bare))} hold none out: add \"training.validation_split=0.1\" to "
                        f"`set`, or rank by metric = '{sweep.metric.removeprefix('val_')}'")


def plan(sweep: SweepSpec, source: str) -> str:
    """What the sweep will train, in a line; a metric no member would produce is refused first."""
    members = candidates(sweep)
    check_metric(sweep, members, source)
    epochs = max(m.spec.training.epochs for m in members)
    return (f"{sweep.name}: {len(members) // sweep.seeds} points x {sweep.seeds} seed(s) = {len(members)} members "
            f"in {len(populations.groups(members))} group(s), up to {epochs} epochs, ranked by mean {sweep.metric}")


MLP_KEYS = ("hidden_layers", "units", "dropout", "input_dropout", "l2", "max_norm", "activation")


def expand_point(base: spec_lib.RunSpec, point: dict[str, Any]) -> dict[str, Any]:
    """A point as the dotted paths `spec.with_values` takes.

    A key naming several paths, "a.b,c.d", gives them one value (tied parameters). The
    `mlp.*` keys are replaced by the `model.layers` list they build, put first, so a
    dotted path such as `model.layers.1.kernel_initializer` still applies on top of it.
    """
    values = {path.strip(): v for key, v in point.items() for path in key.split(",")}
    family = {k.removeprefix("mlp."): v for k, v in values.items() if k.startswith("mlp.")}
    if not family:
        return values
    for key in family:
        if key not in MLP_KEYS:
            raise UserError(f"mlp.{key}: unknown family setting: {suggest(key, MLP_KEYS)} "
                            f"(known: {', '.join('mlp.' + k for k in MLP_KEYS)})")
    rest = {k: v for k, v in values.items() if not k.startswith("mlp.")}
    return {"model.layers": mlp_layers(base.model, family), **rest}


def mlp_layers(model: spec_lib.ModelSpec, family: dict[str, Any]) -> list[dict[str, Any]]:
    """The layer tables of `model` with its hidden stack rebuilt from `family` (see `expand_point`).

    The base's first hidden block (its first Dense layer and what follows up to the next
    Dense: an Activation, a Dropout) is the template repeated `mlp.hidden_layers` times;
    what comes before it (input dropout) and the output Dense onwards are kept.
    """
    dump = lambda layer: {"type": layer.type, **layer.model_dump(mode="json", exclude_unset=True)}  # noqa: E731
    layers = [dump(layer) for layer in model.layers]
    dense = [i for i, layer in enumerate(layers) if layer["type"] == "dense"]
    if len(dense) < 2:
        raise UserError("mlp.*: the base model has no hidden Dense layer to copy (activation, initializer, "
                        "regularizer); use a base with one, e.g. the `seed` preset (784-1000-10)")
    prefix, block, head = layers[:dense[0]], layers[dense[0]:dense[1]], layers[dense[-1]:]
    count = family.get("hidden_layers", len(dense) - 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise UserError(f"mlp.hidden_layers = {count!r}: expected a whole number >= 0")

    def regularized(table: dict[str, Any]) -> dict[str, Any]:
        if "l2" in family:
            old = table.get("kernel_regularizer") or {}
            table["kernel_regularizer"] = {"l1": old.get("l1", 0.0), "l2": float(family["l2"])}
        return table

    def with_dropout(tables: list[dict[str, Any]], key: str, at_start: bool) -> list[dict[str, Any]]:
        if key not in family:
            return tables
        rate = {"type": "dropout", "rate": float(family[key])}
        if any(t["type"] == "dropout" for t in tables):
            return [rate if t["type"] == "dropout" else t for t in tables]
        return [rate, *tables] if at_start else [*tables, rate]

    # Dropout and regularizers are written even at rate / factor 0: those numbers are
    # per-member inputs, so members differing only in them still share one program.
    hidden = regularized(dict(block[0]))
    hidden["units"] = family.get("units", hidden["units"])
    rest = block[1:]
    if "activation" in family:
        hidden["activation"] = family["activation"]
        rest = [t for t in rest if t["type"] != "activation"]
    if "max_norm" in family:
        hidden.pop("kernel_constraint", None)
        if float(family["max_norm"]) > 0:
            hidden["kernel_constraint"] = {"max_value": float(family["max_norm"])}
    block = with_dropout([hidden, *rest], "dropout", at_start=False)
    stack = [dict(t) for _ in range(count) for t in block]
    return with_dropout(prefix, "input_dropout", at_start=True) + stack + [regularized(head[0])] + head[1:]


# ------------------------------------------------------------------ the sweep folder

SWEEP, SUMMARY, RESULTS_JSON, RESULTS_CSV, POINTS_JSON, POINTS_CSV, METRICS = (
    "sweep.toml", "summary.json", "results.json", "results.csv", "points.json", "points.csv", "metrics.jsonl")
WEIGHTS = "weights"  # checkpoints/weights/<member>.safetensors: the members `best/` may still need


def sweep_text(sweep: SweepSpec) -> str:
    return tomli_w.dumps(sweep.model_dump(mode="json", exclude_none=True))


def find_resumable(sweeps_dir: Path, sweep: SweepSpec) -> Path | None:
    """The newest unfinished folder of this very sweep, if any."""
    for folder in sorted(sweeps_dir.glob(f"*-{sweep.name}*"), reverse=True):
        progress = folder / populations.Checkpoints.PROGRESS
        if progress.exists() and (folder / SWEEP).read_text() == sweep_text(sweep):
            if not json.loads(progress.read_text()).get("finished"):
                return folder
    return None


@dataclass
class SweepResult:
    path: Path
    rows: list[dict[str, Any]]  # one per member, best first
    points: list[dict[str, Any]]  # one per point: its mean over seeds and interval, best first
    summary: dict[str, Any]

    @property
    def best(self) -> dict[str, Any]:
        """The member `best/` holds: of the best point, the seed closest to the point's mean."""
        return next(r for r in self.rows if r["member"] == self.summary["best_member"])


def member_row(m: populations.Member, metric: str, group: int) -> dict[str, Any]:
    return {"member": m.index, "point": m.tags["point"], "group": group, "status": m.status,
            "params": m.tags["params"], "seed": m.seed, "epochs": m.epochs, "best_epoch": m.best_epoch,
            f"best_{metric}": m.best_value, **m.final}


def _value(row: dict[str, Any], metric: str) -> float | None:
    value = row.get(metric)
    ok = value is not None and math.isfinite(value) and row["status"] != populations.DIVERGED
    return value if ok else None


def sort_rows(rows: list[dict[str, Any]], metric: str, direction: str) -> list[dict[str, Any]]:
    """Members with a value first, by the metric at their last epoch; diverged last."""
    sign = -1 if direction == "maximize" else 1

    def key(row):
        value = _value(row, metric)
        return (0, sign * value, row["member"]) if value is not None else (1, 0, row["member"])

    return sorted(rows, key=key)


def point_rows(rows: list[dict[str, Any]], metric: str, direction: str) -> list[dict[str, Any]]:
    """One row per point: n seeds with a value, their mean and 95% Student-t interval, best mean first.

    A diverged seed has no value: it is counted in `diverged`, not in the mean.
    """
    by: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["point"], []).append(r)
    out = []
    for p, members in sorted(by.items()):
        interval = stats.mean_ci([_value(r, metric) for r in members if _value(r, metric) is not None])
        shown = {k: v if math.isfinite(v) else None for k, v in interval.as_dict().items()}  # strict JSON: no NaN
        out.append({"point": p, "params": members[0]["params"], "n": interval.n, "mean": shown["mean"],
                    "ci_low": shown["low"], "ci_high": shown["high"], "sd": shown["sd"],
                    "members": [r["member"] for r in members],
                    "diverged": sum(r["status"] == populations.DIVERGED for r in members),
                    "finished": all(r["status"] not in (populations.PENDING, populations.RUNNING) for r in members)})
    sign = -1 if direction == "maximize" else 1
    return sorted(out, key=lambda r: (0, sign * r["mean"], r["point"]) if r["n"] else (1, 0, r["point"]))


def representative(point: dict[str, Any], rows: list[dict[str, Any]], metric: str) -> int:
    """The member of `point` whose value is closest to the point's mean (its first, if none has one)."""
    mine = [r for r in rows if r["member"] in point["members"]]
    valued = [r for r in mine if _value(r, metric) is not None]
    if not valued:
        return min(r["member"] for r in mine)
    return min(valued, key=lambda r: (abs(r[metric] - point["mean"]), r["member"]))["member"]


def rows_csv(rows: list[dict[str, Any]]) -> str:
    names = sorted({k for r in rows for k in r["params"]})
    plain = [k for k in rows[0] if k != "params"] if rows else []
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(plain + [f"param:{n}" for n in names])
    for r in rows:
        writer.writerow([r.get(k) for k in plain] + [r["params"].get(n) for n in names])
    return out.getvalue()


def _open_folder(sweep: SweepSpec, members: list[populations.Member], sweeps_dir: Path, resume: bool | Path,
                 load: Callable[[str], data.Arrays]) -> Path:
    """The sweep's folder: the one to resume, or a new one. A missing data set or a network
    too big for this machine fails first, before a new folder exists."""
    folder = Path(resume) if isinstance(resume, Path) else (find_resumable(sweeps_dir, sweep) if resume else None)
    if resume and folder is None:
        raise UserError(f"--resume: no unfinished sweep '{sweep.name}' with this specification under {sweeps_dir}")
    for group in populations.groups(members):
        populations.check_fits(group[0].spec, load(group[0].spec.dataset).train_images.shape[1:])
    if folder is None:
        folder = runs.new_run_dir(sweeps_dir, sweep.name)
        runs.atomic_write(folder / SWEEP, sweep_text(sweep))
    return folder


def run_sweep(sweep: SweepSpec, *, data_dir: str | Path | None = None, sweeps_dir: str | Path = "sweeps",
              resume: bool | Path = False, arrays: data.Arrays | None = None,
              on_epoch: Callable[[dict[str, Any]], None] | None = None,
              memory_budget: int | None = None, log: Sequence[str] = ()) -> SweepResult:
    """Train every member of `sweep`; record, checkpoint and rank them, by point over seeds.

    `resume=True` continues the newest unfinished folder of the same sweep (a path: that
    folder). `on_epoch` receives {"epoch", "epochs", "members", "members_done", "best", ...}
    after each epoch of each part. `log` ("tensorboard[:DIR]", "tensorboard+histograms[:DIR]",
    "mlflow[:URI]", see `tracking`) logs the sweep as a parent and each member as its child:
    its settings, its epochs, its status.
    """
    started = time.perf_counter()
    members = candidates(sweep)
    check_metric(sweep, members, sweep.name)
    # Opened before the sweep's folder: a bad target fails before anything is written.
    with tracking.Family(log, "sweep", sweep.name, metric=sweep.metric, records_dir=Path(sweeps_dir),
                         searched=list(dict.fromkeys(k for m in members for k in m.tags["params"])),
                         params=_logged_settings(sweep, members)) as logs:
        result = _sweep(sweep, members, logs, data_dir=data_dir, sweeps_dir=sweeps_dir, resume=resume, arrays=arrays,
                        on_epoch=on_epoch, memory_budget=memory_budget, started=started)
        # A sweep's metric is ranked on its points' means over seeds: the best one's is its figure.
        logs.done("completed", {f"best_{sweep.metric}": result.points[0]["mean"]}, result.path, skip=("checkpoints",))
        return result


def _logged_settings(sweep: SweepSpec, members: list[populations.Member]) -> dict[str, Any]:
    """What a sweep's parent run shows as its parameters (the whole space is its sweep.toml)."""
    return {"metric": sweep.metric, "direction": sweep.direction, "method": sweep.search.method,
            "points": len(members) // sweep.seeds, "seeds": sweep.seeds, "members": len(members),
            "patience": sweep.patience}


def _member_logs(logs: tracking.Family) -> dict[str, populations.Hook]:
    """`populations.run`'s hooks feeding each member's child loggers: its epochs (a resumed
    member's earlier ones first), the weights when asked, its status when it stops."""
    if not logs.parents:
        return {}

    def on_epoch(m: populations.Member, part: populations.Part) -> None:
        logs.open(m.index, m.spec, m.tags["params"], {"mnistlab.member": m.index, "mnistlab.point": m.tags["point"]},
                  history=m.history[:-1])
        logs.on_epoch(m.index, m.history[-1], part.params(m) if logs.wants_weights else None)

    def on_done(m: populations.Member, part: populations.Part) -> None:
        logs.end(m.index, m.status, {"final": m.final})

    return {"on_epoch": on_epoch, "on_done": on_done}


def _sweep(sweep: SweepSpec, members: list[populations.Member], logs: tracking.Family, *, data_dir, sweeps_dir,
           resume, arrays, on_epoch, memory_budget, started: float) -> SweepResult:
    """The sweep itself (see `run_sweep`), each member's epochs and end also sent to `logs`."""
    load = populations.loader(data_dir, arrays)
    folder = _open_folder(sweep, members, Path(sweeps_dir), resume, load)
    checkpoints = populations.Checkpoints(folder)
    group_of = {m.index: g for g, group in enumerate(populations.groups(members)) for m in group}
    rows = lambda: [member_row(m, sweep.metric, group_of[m.index]) for m in members]  # noqa: E731

    written: dict[int, int] = {}  # member -> its epochs in metrics.jsonl

    def line(m: populations.Member, record: dict[str, Any]) -> str:
        return json.dumps({"member": m.index, "point": m.tags["point"], "group": group_of[m.index], **record}) + "\n"

    def write_metrics() -> None:
        # Whole, from the members' histories, at the start (a resumed sweep's checkpoints
        # may hold an epoch the file lacks) and at the end; in between, appended per epoch.
        runs.atomic_write(folder / METRICS, "".join(line(m, r) for m in members for r in m.history))
        written.update({m.index: m.epochs for m in members})

    def after_epoch(part: populations.Part, result) -> None:
        # After the checkpoint: the file never holds an epoch the checkpoints do not.
        with open(folder / METRICS, "a") as f:
            f.write("".join(line(m, r) for m in part.members for r in m.history[written[m.index]:]))
        written.update({m.index: m.epochs for m in part.members})
        if on_epoch:
            values = [m.best_value for m in members if m.best_value is not None and math.isfinite(m.best_value)]
            pick = max if sweep.direction == "maximize" else min
            on_epoch({"part": part.key, "epoch": result.epoch, "epochs": max(m.spec.training.epochs for m in part.members),
                      "members": len(members), "members_done": sum(not m.training for m in members),
                      "running": int(part.population.active.sum()), "best": pick(values) if values else None,
                      "epoch_seconds": result.seconds})

    def after_part(part: populations.Part) -> None:
        _keep_weights(folder, part, rows(), sweep)

    try:
        checkpoints.restore(members)  # for the file below (run restores them too: a few small headers)
        write_metrics()
        report = populations.run(members, load, metric=sweep.metric, lanes=sweep.lanes,
                                 memory_budget=memory_budget, checkpoints=checkpoints, after_epoch=after_epoch,
                                 after_part=after_part, **_member_logs(logs))
        write_metrics()
        return _record(sweep, folder, members, rows(), report, checkpoints, time.perf_counter() - started)
    except KeyboardInterrupt as stop:
        stop.folder = folder  # where `--resume` continues
        raise
    except runs.WRITE_ERRORS as err:
        raise UserError(f"{folder}: could not write the sweep ({runs.reason(err)}); every epoch up to the last "
                        "checkpoint is kept: make room (or fix the folder) and continue with --resume") from None


def _record(sweep: SweepSpec, folder: Path, members: list[populations.Member], rows: list[dict[str, Any]],
            report: populations.Report, checkpoints: populations.Checkpoints, seconds: float) -> SweepResult:
    """The finished sweep's files: best/, members and points ranked, the summary; marked finished."""
    ranked = sort_rows(rows, sweep.metric, sweep.direction)
    points = point_rows(ranked, sweep.metric, sweep.direction)
    best = representative(points[0], ranked, sweep.metric)
    chosen = next(m for m in members if m.index == best)
    populations.write_run(folder / "best", chosen, _weights(folder, best), from_sweep=str(folder), member=best,
                          point=chosen.tags["point"], params=chosen.tags["params"],
                          chosen=(f"of the point with the best mean {sweep.metric} over its {points[0]['n']} seed(s), "
                                  "the member whose value is closest to that mean"))
    progress = checkpoints.progress
    progress["seconds"] = progress.get("seconds", 0.0) + seconds
    count = lambda status: sum(r["status"] == status for r in ranked)  # noqa: E731
    summary = {
        "name": sweep.name, "metric": sweep.metric, "direction": sweep.direction, "members": len(members),
        "points": len(points), "seeds": sweep.seeds, "groups": len({r["group"] for r in ranked}),
        "completed": count(populations.COMPLETED), "diverged": count(populations.DIVERGED),
        "stopped": count(populations.STOPPED), "best_point": points[0], "best_member": best,
        "best": next(r for r in ranked if r["member"] == best), "messages": report.messages,
        "lanes": report.lanes, "compile_seconds": report.compile_seconds, "seconds": progress["seconds"],
        "environment": runs.environment(),
    }
    runs.atomic_write(folder / RESULTS_JSON, json.dumps(ranked, indent=1) + "\n")
    runs.atomic_write(folder / RESULTS_CSV, rows_csv(ranked))
    runs.atomic_write(folder / POINTS_JSON, json.dumps(points, indent=1) + "\n")
    runs.atomic_write(folder / POINTS_CSV, rows_csv([{k: v for k, v in p.items() if k != "members"} for p in points]))
    runs.atomic_write(folder / SUMMARY, json.dumps(summary, indent=2) + "\n")
    progress["finished"] = True
    checkpoints.save_progress()
    return SweepResult(folder, ranked, points, summary)


def _weights_file(folder: Path, member: int) -> Path:
    return folder / "checkpoints" / WEIGHTS / f"{member}.safetensors"


def _weights(folder: Path, member: int) -> dict[str, np.ndarray] | None:
    path = _weights_file(folder, member)
    return load_file(path) if path.exists() else None


def _keep_weights(folder: Path, part: populations.Part, rows: list[dict[str, Any]], sweep: SweepSpec) -> None:
    """Keep the weights `best/` may still need, and no more (a sweep may have hundreds of members).

    Which member `best/` holds is known once its point's seeds have all trained, and they
    may train in different parts. So: every member of a point still training is kept; of
    the finished points, only the best one's representative.
    """
    (folder / "checkpoints" / WEIGHTS).mkdir(parents=True, exist_ok=True)
    for m in part.members:
        params = part.params(m)
        if populations.finite(params):
            path = _weights_file(folder, m.index)
            save_file({k: np.ascontiguousarray(v) for k, v in params.items()}, str(path) + ".tmp")
            Path(str(path) + ".tmp").replace(path)
    points = point_rows(rows, sweep.metric, sweep.direction)
    finished = [p for p in points if p["finished"]]
    keep = {m for p in points if not p["finished"] for m in p["members"]}
    if finished:
        keep.add(representative(finished[0], rows, sweep.metric))
    for path in (folder / "checkpoints" / WEIGHTS).glob("*.safetensors"):
        if int(path.stem) not in keep:
            path.unlink()
