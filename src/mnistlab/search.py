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

Members that share a structure (layer sizes, activations, optimizer family, batch size...)
train together in one compiled program (`engine.Population`); groups run one after
another. Every epoch is recorded and checkpointed, so an interrupted sweep resumes where
it stopped, with the same numbers.
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
from typing import Any, Callable, Literal

import numpy as np
import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from mnistlab import data, engine, runs
from mnistlab import spec as spec_lib
from mnistlab.errors import UserError
from mnistlab.training import epoch_record, split

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
    patience: int | None = Field(default=None, gt=0)  # early stopping on `metric`, per member
    lanes: int | None = Field(default=None, gt=0)  # members side by side; None: measured
    search: Space

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
    return spec_lib.with_overrides(spec, list(sweep.set))


@dataclass(frozen=True)
class Candidate:
    member: int
    params: dict[str, Any]
    seed: int
    spec: spec_lib.RunSpec


def candidates(sweep: SweepSpec) -> list[Candidate]:
    """Every (point, seed) of the sweep as a validated run specification."""
    base = base_spec(sweep)
    out = []
    for p, point in enumerate(sweep.search.points_to_train()):
        for s in range(sweep.seeds):
            seed = base.training.seed + s
            values = expand_point(base, point)
            spec = spec_lib.with_values(base, {**values, "training.seed": seed, "name": f"{sweep.name}-{len(out)}"},
                                        source=f"sweep point {p} {point}")
            out.append(Candidate(len(out), point, seed, spec))
    return out


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
            raise UserError(f"mlp.{key}: unknown family setting: {spec_lib.suggest(key, MLP_KEYS)} "
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


def groups(cands: list[Candidate]) -> list[list[Candidate]]:
    """Candidates grouped by program structure, in order of first appearance."""
    by: dict[tuple, list[Candidate]] = {}
    for c in cands:
        by.setdefault(engine.structure(c.spec), []).append(c)
    return list(by.values())


# ------------------------------------------------------------------ the sweep folder

SWEEP, SUMMARY, RESULTS_JSON, RESULTS_CSV, METRICS, PROGRESS = (
    "sweep.toml", "summary.json", "results.json", "results.csv", "metrics.jsonl", "progress.json")


def _append_lines(path: Path, records: list[dict[str, Any]]) -> None:
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()


def find_resumable(sweeps_dir: Path, sweep: SweepSpec) -> Path | None:
    """The newest unfinished folder of this very sweep, if any."""
    text = tomli_w.dumps(sweep.model_dump(mode="json", exclude_none=True))
    for folder in sorted(sweeps_dir.glob(f"*-{sweep.name}*"), reverse=True):
        progress = folder / PROGRESS
        if progress.exists() and (folder / SWEEP).read_text() == text:
            if not json.loads(progress.read_text()).get("finished"):
                return folder
    return None


@dataclass
class Member:
    """What the sweep knows of one member as it trains."""

    candidate: Candidate
    group: int
    status: str = "pending"  # pending | running | completed | diverged | stopped
    epochs: int = 0
    best_epoch: int = 0
    best_value: float | None = None
    final: dict[str, float] | None = None

    def row(self, metric: str) -> dict[str, Any]:
        return {"member": self.candidate.member, "group": self.group, "status": self.status,
                "params": self.candidate.params, "seed": self.candidate.seed, "epochs": self.epochs,
                "best_epoch": self.best_epoch, f"best_{metric}": self.best_value, **(self.final or {})}


@dataclass
class SweepResult:
    path: Path
    rows: list[dict[str, Any]]  # sorted, best first
    summary: dict[str, Any]

    @property
    def best(self) -> dict[str, Any]:
        return self.rows[0]


def _better(value: float, best: float | None, direction: str) -> bool:
    if best is None or not math.isfinite(best):
        return math.isfinite(value)
    return value > best if direction == "maximize" else value < best


def sort_rows(rows: list[dict[str, Any]], metric: str, direction: str) -> list[dict[str, Any]]:
    """Completed members first, by the metric at their last epoch; diverged last."""
    sign = -1 if direction == "maximize" else 1

    def key(row):
        value = row.get(metric)
        ok = value is not None and math.isfinite(value) and row["status"] != "diverged"
        return (0 if ok else 1, sign * value if ok else 0, row["member"])

    return sorted(rows, key=key)


def rows_csv(rows: list[dict[str, Any]]) -> str:
    names = sorted({k for r in rows for k in r["params"]})
    plain = [k for k in rows[0] if k != "params"] if rows else []
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(plain + [f"param:{n}" for n in names])
    for r in rows:
        writer.writerow([r.get(k) for k in plain] + [r["params"].get(n) for n in names])
    return out.getvalue()


def run_sweep(sweep: SweepSpec, *, data_dir: str | Path | None = None, sweeps_dir: str | Path = "sweeps",
              resume: bool | Path = False, arrays: data.Arrays | None = None,
              on_epoch: Callable[[dict[str, Any]], None] | None = None,
              memory_budget: int | None = None) -> SweepResult:
    """Train every member of `sweep`; record, checkpoint and rank them.

    `resume=True` continues the newest unfinished folder of the same sweep (a path: that
    folder). `on_epoch` receives {"epoch", "epochs", "members", "members_done", "best", ...}
    after each epoch of each group.
    """
    started = time.perf_counter()
    cands = candidates(sweep)
    grouped = groups(cands)
    sweeps_dir = Path(sweeps_dir)
    folder = Path(resume) if isinstance(resume, Path) else (find_resumable(sweeps_dir, sweep) if resume else None)
    if resume and folder is None:
        raise UserError(f"--resume: no unfinished sweep '{sweep.name}' with this specification under {sweeps_dir}")
    arrays = arrays if arrays is not None else data.load(base_spec(sweep).dataset, data_dir)

    if folder is None:
        folder = runs.new_run_dir(sweeps_dir, sweep.name)
        runs.atomic_write(folder / SWEEP, tomli_w.dumps(sweep.model_dump(mode="json", exclude_none=True)))
        runs.atomic_write(folder / PROGRESS, json.dumps({"done_parts": [], "members": [], "finished": False}))
        (folder / METRICS).touch()
    (folder / CHECKPOINTS).mkdir(exist_ok=True)
    progress = json.loads((folder / PROGRESS).read_text())
    members = sorted((Member(c, g) for g, group in enumerate(grouped) for c in group),
                     key=lambda m: m.candidate.member)
    _restore_members(members, progress["members"])
    live = _running_checkpoints(folder)
    for meta in live.values():
        _restore_members(members, meta["members"])
    _drop_unsaved_metrics(folder, members)

    context = Context(sweep, folder, arrays, members, on_epoch, memory_budget, progress)
    for g, group in enumerate(grouped):
        for part, chunk in enumerate(fit_memory(group, arrays, memory_budget, context.messages)):
            key = f"{g}.{part}"
            if key not in progress["done_parts"]:
                _train_part(context, chunk, g, key, live.get(key))

    rows = sort_rows([m.row(sweep.metric) for m in members], sweep.metric, sweep.direction)
    best = rows[0]
    _save_best(folder, members[best["member"]])
    progress["seconds"] = progress.get("seconds", 0.0) + time.perf_counter() - started
    summary = {
        "name": sweep.name, "metric": sweep.metric, "direction": sweep.direction, "members": len(cands),
        "groups": len(grouped), "completed": sum(r["status"] == "completed" for r in rows),
        "diverged": sum(r["status"] == "diverged" for r in rows),
        "stopped": sum(r["status"] == "stopped" for r in rows),
        "best_member": best["member"], "best": best, "messages": context.messages,
        "lanes": context.lanes, "compile_seconds": context.compile_seconds, "seconds": progress["seconds"],
        "environment": runs.environment(),
    }
    runs.atomic_write(folder / RESULTS_JSON, json.dumps(rows, indent=1) + "\n")
    runs.atomic_write(folder / RESULTS_CSV, rows_csv(rows))
    runs.atomic_write(folder / SUMMARY, json.dumps(summary, indent=2) + "\n")
    progress["finished"] = True
    runs.atomic_write(folder / PROGRESS, json.dumps(progress))
    return SweepResult(folder, rows, summary)


CHECKPOINTS = "checkpoints"


@dataclass
class Context:
    """What every part of one sweep run shares."""

    sweep: SweepSpec
    folder: Path
    arrays: data.Arrays
    members: list[Member]
    on_epoch: Callable[[dict[str, Any]], None] | None
    memory_budget: int | None
    progress: dict[str, Any]

    def __post_init__(self):
        self.messages: list[str] = []
        self.lanes: dict[str, int] = {}
        self.compile_seconds = 0.0


def fit_memory(group: list[Candidate], arrays: data.Arrays, budget: int | None, messages: list[str]):
    """Split a group into parts whose members' state fits the device at once."""
    per_member = engine.member_bytes(group[0].spec, arrays.train_images.shape[1:])
    budget = budget if budget is not None else engine.device_memory() // 2
    fit = max(1, budget // per_member)
    if len(group) <= fit:
        return [group]
    parts = [group[i:i + fit] for i in range(0, len(group), fit)]
    message = (f"a group of {len(group)} members needs about {len(group) * per_member / 2**20:.0f} MiB; "
               f"training it in {len(parts)} parts of at most {fit} members to fit {budget / 2**20:.0f} MiB")
    if message not in messages:
        messages.append(message)
    return parts


def _train_part(ctx: Context, part: list[Candidate], g: int, key: str, checkpoint: dict[str, Any] | None) -> None:
    sweep, members = ctx.sweep, ctx.members
    first = part[0].spec
    x_train, y_train, x_val, y_val = split(first, ctx.arrays)
    # A resumed part keeps the width it was measured at: another width is another compiled
    # program, whose float rounding would differ from the run that was interrupted.
    lanes = (sweep.lanes or (checkpoint or {}).get("lanes")
             or engine.choose_lanes(first, x_train, y_train, len(part)))
    ctx.lanes[key] = lanes
    population = engine.Population([c.spec for c in part], x_train, y_train, x_val, y_val, lanes=lanes)
    path = ctx.folder / CHECKPOINTS / f"part-{key}.safetensors"
    if checkpoint is not None:
        population.load_state_arrays(load_file(path), checkpoint["epochs"], checkpoint["diverged"])
    population.freeze([i for i, c in enumerate(part) if members[c.member].status in ("stopped", "diverged")])
    epochs = first.training.epochs
    while population.epochs_done < epochs and population.active.any():
        result = population.train_epoch()
        records = [_update_member(members[c.member], result, i, g, sweep, epochs)
                   for i, c in enumerate(part) if members[c.member].status in ("pending", "running")]
        population.freeze([i for i, c in enumerate(part) if members[c.member].status != "running"])
        _append_lines(ctx.folder / METRICS, records)
        # The checkpoint comes after the records and carries the members' bookkeeping: a
        # kill in between re-trains this epoch on resume, to the same numbers (shuffles and
        # dropout keys derive from the epoch and step numbers).
        meta = {"epochs": population.epochs_done, "diverged": population.diverged.tolist(), "lanes": lanes,
                "members": [_member_state(members[c.member]) for c in part]}
        save_file(population.state_arrays(), str(path) + ".tmp", metadata={"mnistlab.sweep": json.dumps(meta)})
        Path(str(path) + ".tmp").replace(path)
        if ctx.on_epoch:
            finished = [m for m in members if m.status in ("completed", "stopped", "diverged")]
            values = [m.best_value for m in members if m.best_value is not None and math.isfinite(m.best_value)]
            pick = max if sweep.direction == "maximize" else min
            ctx.on_epoch({"part": key, "epoch": result.epoch, "epochs": epochs, "members": len(members),
                          "members_done": len(finished), "running": int(population.active.sum()),
                          "best": pick(values) if values else None, "epoch_seconds": result.seconds,
                          "compile_seconds": ctx.compile_seconds + population.compile_seconds})
    for c in part:  # nobody is left running once the part ends
        m = members[c.member]
        if m.status in ("pending", "running"):
            m.status = "completed"
    ctx.compile_seconds += population.compile_seconds
    _keep_best_weights(ctx, part, population)
    progress = ctx.progress
    progress["done_parts"].append(key)
    known = {s["member"]: s for s in progress["members"]}
    known.update({c.member: _member_state(members[c.member]) for c in part})
    progress["members"] = sorted(known.values(), key=lambda s: s["member"])
    runs.atomic_write(ctx.folder / PROGRESS, json.dumps(progress))
    path.unlink(missing_ok=True)


def _keep_best_weights(ctx: Context, part: list[Candidate], population: engine.Population) -> None:
    """Keep the weights of the best member so far only (a sweep may have hundreds)."""
    path = ctx.folder / CHECKPOINTS / BEST_WEIGHTS
    rows = [ctx.members[c.member].row(ctx.sweep.metric) for c in part]
    if path.exists():
        with safe_open(path, "np") as f:
            holder = int(f.metadata()["mnistlab.member"])
        rows.append(ctx.members[holder].row(ctx.sweep.metric))
    top = sort_rows(rows, ctx.sweep.metric, ctx.sweep.direction)[0]["member"]
    for i, c in enumerate(part):
        if c.member == top:
            params = {k: np.ascontiguousarray(v) for k, v in population.member_params(i).items()}
            save_file(params, str(path) + ".tmp", metadata={"mnistlab.member": str(c.member)})
            Path(str(path) + ".tmp").replace(path)


BEST_WEIGHTS = "best.safetensors"


def _update_member(m: Member, result: engine.EpochResult, i: int, g: int, sweep: SweepSpec,
                   epochs: int) -> dict[str, Any]:
    """Fold one epoch into a member's bookkeeping; its record for metrics.jsonl."""
    record = {"member": m.candidate.member, "group": g, **epoch_record(result, i)}
    m.status, m.epochs = "running", result.epoch
    m.final = {k: v for k, v in record.items() if k not in ("member", "group", "epoch", "seconds")}
    value = record.get(sweep.metric, float("nan"))
    if result.diverged[i]:
        m.status = "diverged"
        return record
    if _better(value, m.best_value, sweep.direction):
        m.best_value, m.best_epoch = value, result.epoch
    if result.epoch == epochs:
        m.status = "completed"
    elif sweep.patience and result.epoch - m.best_epoch >= sweep.patience:
        m.status = "stopped"
    return record


def _member_state(m: Member) -> dict[str, Any]:
    return {"member": m.candidate.member, "status": m.status, "epochs": m.epochs, "best_epoch": m.best_epoch,
            "best_value": m.best_value, "final": m.final}


def _restore_members(members: list[Member], states: list[dict[str, Any]]) -> None:
    for s in states:
        m = members[s["member"]]
        m.status, m.epochs, m.best_epoch, m.best_value, m.final = (
            s["status"], s["epochs"], s["best_epoch"], s["best_value"], s["final"])


def _running_checkpoints(folder: Path) -> dict[str, dict[str, Any]]:
    """part key -> the bookkeeping saved with its checkpoint (parts interrupted mid-way)."""
    out = {}
    for path in (folder / CHECKPOINTS).glob("part-*.safetensors"):
        with safe_open(path, "np") as f:
            out[path.name.removeprefix("part-").removesuffix(".safetensors")] = json.loads(
                f.metadata()["mnistlab.sweep"])
    return out


def _drop_unsaved_metrics(folder: Path, members: list[Member]) -> None:
    """Forget epochs recorded after the last checkpoint (they are trained again)."""
    path = folder / METRICS
    lines = [line for line in path.read_text().splitlines() if line]
    keep = [line for line in lines if json.loads(line)["epoch"] <= members[json.loads(line)["member"]].epochs]
    if len(keep) != len(lines):
        runs.atomic_write(path, "".join(line + "\n" for line in keep))


def _save_best(folder: Path, member: Member) -> None:
    """The best member as an ordinary run folder (`mnistlab evaluate` accepts it)."""
    best = folder / "best"
    if best.exists():
        return
    tmp = folder / ".best.tmp"
    if tmp.exists():
        for p in tmp.iterdir():
            p.unlink()
    else:
        tmp.mkdir()
    spec = member.candidate.spec
    writer = runs.RunWriter(tmp, spec)
    for line in (folder / METRICS).read_text().splitlines():
        record = json.loads(line)
        if record["member"] == member.candidate.member:
            writer.log_epoch({k: v for k, v in record.items() if k not in ("member", "group")})
    weights = load_file(folder / CHECKPOINTS / BEST_WEIGHTS)
    runs.save_weights(tmp / runs.WEIGHTS, weights, spec)
    writer.finish({"name": spec.name, "status": member.status, "epochs_completed": member.epochs,
                   "epochs_requested": spec.training.epochs, "final": member.final,
                   "from_sweep": str(folder), "member": member.candidate.member, "params": member.candidate.params})
    tmp.rename(best)
