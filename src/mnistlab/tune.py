"""Hyper-parameter search with Optuna, trained as populations; the test set read once.

    mnistlab tune SPACE.toml --trials 30                    # SQLite in studies/<name>/study.db
    mnistlab tune SPACE.toml --trials 30 --storage postgresql://user@host/db   # on any number of machines
    mnistlab tune SPACE.toml --final                        # retrain the best trial, test it once

SPACE.toml is a sweep file (the same `base`, `set`, `metric` and `[search.params]`), plus an
optional `[tune]` table (sampler, pruner, batch, heartbeats...; see `TuneSettings`):

    name = "mlp"
    base = "seed"
    set = ["training.epochs=10", "training.validation_split=0.1", "training.batch_size=128"]
    metric = "val_accuracy"
    [search.params]
    "optimizer.learning_rate" = { distribution = "log_uniform", low = 3e-4, high = 3e-3 }
    "mlp.hidden_layers" = { choice = [1, 2, 3] }
    [tune]
    sampler = "tpe"
    pruner = "median"

How a worker runs (`run`): while the study has fewer than N finished trials (complete,
pruned, or failed by divergence), it asks Optuna for a batch of trials, turns each trial's
suggestions into its members (one per `[tune] seeds`) and trains the batch through the one
driver (`populations.run`), grouped by program and data as sweeps are. Every epoch's
validation value, the mean over the trial's seeds, is reported to its trial; a trial the
pruner stops is frozen inside the running population and told PRUNED; a diverged one is
told FAIL. Nothing here reads the test set: only `final` does.

Several workers (processes, machines) share a study through its storage. The rule that
keeps the count exact: asking is serialized by a lock on the storage (a PostgreSQL
advisory lock, a MySQL named lock, a file lock beside an SQLite file), and a worker asks
for at most N - finished - running trials. Each worker sends a heartbeat for its running
trials; a trial whose heartbeat is older than the grace period is failed by the next
worker that asks (`optuna.storages.fail_stale_trials`) and re-queued with the same
parameters (`RetryHeartbeatStaleTrialCallback`), so a killed worker's trial is trained
again and counted once. A worker whose trial was taken over that way (it stalled past the
grace period) drops its result rather than count it twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence, get_args

import filelock
import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import numpy as np

from mnistlab import data, errors, populations, runs, search, tracking
from mnistlab import spec as spec_lib
from mnistlab.errors import UserError, interrupt_code

# What a study folder holds (`mnistlab report` reads study.json, trials.json and metrics.jsonl).
SPACE, DATABASE, STUDY, TRIALS_JSON, TRIALS_CSV, METRICS, FINAL = (
    "tune.toml", "study.db", "study.json", "trials.json", "trials.csv", "metrics.jsonl", "final.json")
SPACE_ATTR, TESTS_ATTR = "mnistlab.space", "mnistlab.test_evaluations"

Sampler = Literal["tpe", "random", "grid", "cmaes"]
Pruner = Literal["none", "median", "halving", "hyperband"]


class TuneSettings(BaseModel):
    """The `[tune]` table; command-line options override it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sampler: Sampler = "tpe"
    pruner: Pruner = "median"
    batch: int = Field(default=4, gt=0)  # trials asked at once and trained as populations
    seed: int | None = None  # of the sampler; None: the search table's `seed`
    cost_aware: bool = True  # TPE: weigh each candidate's promise against its cost to train (`cost_aware_tpe`)
    # TPE / CMA-ES: random trials first. None: 10, or none for the cost-aware TPE, whose first
    # trials are already random draws (the cheapest of its candidates from the prior).
    startup_trials: int | None = Field(default=None, ge=0)
    prune_after: int = Field(default=5, ge=0)  # median pruner: complete trials before it prunes
    warmup_epochs: int = Field(default=1, ge=0)  # median pruner: epochs never pruned
    heartbeat_interval: int = Field(default=10, gt=0)  # seconds between a worker's heartbeats
    grace_period: int = Field(default=60, gt=0)  # seconds without one before a trial is re-run
    max_retry: int = Field(default=3, ge=0)  # re-runs of one trial whose workers keep dying
    seeds: int = Field(default=1, gt=0)  # a trial trains K seeds in one population; its value is their mean
    workers: int = Field(default=1, gt=0)  # processes on this machine, each on its share of the cores (tune_pool)


def with_options(settings: TuneSettings, **options: Any) -> TuneSettings:
    """`settings` with the command line's options (None: not given), checked as the [tune] table is."""
    given = {key: value for key, value in options.items() if value is not None}
    try:
        return TuneSettings.model_validate({**settings.model_dump(), **given})
    except ValidationError as err:
        key = err.errors()[0]["loc"][0]
        known = get_args(TuneSettings.model_fields[key].annotation)
        raise UserError(f"--{key} {given[key]!r}: {errors.suggest(str(given[key]), known)}") from None


@dataclass(frozen=True)
class TuneSpec:
    sweep: search.SweepSpec
    settings: TuneSettings
    text: str  # the normalized TOML, as saved in the study folder
    # A sweep run as a study (`mnistlab sweep --storage`): its points, enqueued as the
    # trials; the space is then the point's number.
    points: tuple[dict[str, Any], ...] | None = None

    @property
    def name(self) -> str:
        return self.sweep.name

    @property
    def params(self) -> dict[str, Any]:
        return self.sweep.search.params

    @property
    def names(self) -> list[str]:
        """The dotted settings the trials vary (a sweep's: those of its points)."""
        if self.points is None:
            return list(self.params)
        return list(dict.fromkeys(name for point in self.points for name in point))


def load_tune(path: str | Path) -> TuneSpec:
    raw = spec_lib.read_toml(path, "a search-space TOML (see README: Tuning with Optuna)")
    return tune_from_dict(raw, str(path), base_dir=Path(path).parent)


def tune_from_dict(raw: dict[str, Any], source: str = "tune", base_dir: Path | None = None) -> TuneSpec:
    raw = dict(raw)
    table = raw.pop("tune", {})
    try:
        settings = TuneSettings.model_validate(table)
    except ValidationError as err:
        lines = [f"tune.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
        raise UserError(f"{source}: invalid [tune] table:\n  " + "\n  ".join(lines)) from None
    raw.setdefault("search", {})
    if isinstance(raw["search"], dict) and "method" not in raw["search"]:
        raw["search"] = {**raw["search"], "method": "random"}  # Optuna samples: any distribution goes
    sweep = search.sweep_from_dict(raw, source, base_dir)
    problems = []
    if sweep.search.method == "list":
        problems.append("search.points: tune samples from `[search.params]`; a list of points is for sweeps")
    if sweep.seeds != 1:
        problems.append(f"seeds = {sweep.seeds}: a trial's seeds are `[tune] seeds = {sweep.seeds}`")
    if sweep.patience is not None:
        problems.append("patience: tune stops poor trials with its pruner (`[tune] pruner`); remove patience")
    if not sweep.metric.startswith("val_"):
        problems.append(f"metric = '{sweep.metric}': tune ranks trials on validation: val_accuracy or val_loss")
    if problems:
        raise UserError(f"{source}: not a tune space:\n  " + "\n  ".join(problems))
    dump = sweep.model_dump(mode="json", exclude_none=True)
    text = tomli_w.dumps({**dump, "tune": settings.model_dump(mode="json", exclude_none=True)})
    spec = TuneSpec(sweep, settings, text)
    _check_space(spec)
    return spec


def _check_space(tune: TuneSpec) -> None:
    """Build the specs at the corners of the space now: a misspelt path fails before any trial."""
    base = _base(tune)
    if base.training.validation.fraction <= 0:
        raise UserError(f"{tune.name}: tune needs validation data to rank trials on: add "
                        "\"training.validation_split=0.1\" to `set`")
    for corner in (0, -1):
        point = {}
        for name, dist in tune.params.items():
            choices = _choices(dist)
            point[name] = choices[corner] if choices is not None else (dist.low if corner == 0 else dist.high)
            if choices is None and dist.distribution == "int_uniform":
                point[name] = int(point[name])
        trial_spec(tune, base, point, "check")


def _base(tune: TuneSpec) -> spec_lib.RunSpec:
    return search.base_spec(tune.sweep)


def trial_spec(tune: TuneSpec, base: spec_lib.RunSpec, point: dict[str, Any], name: str) -> spec_lib.RunSpec:
    return spec_lib.with_values(base, {**search.expand_point(base, point), "name": name},
                                source=f"{tune.name}: point {point}")


def trial_members(tune: TuneSpec, base: spec_lib.RunSpec, point: dict[str, Any], number: int,
                  seeds: int) -> list[populations.Member]:
    """A trial's members: its configuration with seeds counting up from its own (as a sweep's)."""
    spec = trial_spec(tune, base, point, f"{tune.name}-{number}")
    return [populations.Member(number * seeds + s, spec_lib.with_values(
        spec, {"training.seed": spec.training.seed + s}, source=f"{tune.name}: trial {number}"),
        tags={"trial": number, "point": point}) for s in range(seeds)]


def sweep_as_study(sweep: search.SweepSpec, settings: TuneSettings | None = None) -> TuneSpec:
    """A sweep whose points are the trials of an Optuna study (`mnistlab sweep --storage`).

    Every point is enqueued once; workers sharing the storage train them with tune's
    counting rule and heartbeats. The sweep's seeds are each trial's seeds; its patience
    stops members as in a sweep; nothing is pruned."""
    points = tuple(sweep.search.points_to_train())
    settings = (settings or TuneSettings()).model_copy(update={"seeds": sweep.seeds, "pruner": "none",
                                                               "sampler": "random"})
    dump = sweep.model_dump(mode="json", exclude_none=True)
    text = tomli_w.dumps({**dump, "tune": settings.model_dump(mode="json", exclude_none=True)})
    return TuneSpec(sweep, settings, text, points)


# ------------------------------------------------------------------ the space, in Optuna's words


def _choices(dist) -> list[Any] | None:
    if isinstance(dist, list):
        return dist
    return dist.choice


def _plain(values: list[Any]) -> bool:
    return all(v is None or isinstance(v, (bool, int, float, str)) for v in values)


def _encoded(values: list[Any]) -> list[Any]:
    """Optuna's categorical choices must be plain values: tables and lists go as JSON text."""
    return values if _plain(values) else [json.dumps(v, sort_keys=True) for v in values]


POINT = "point"  # the one parameter of a sweep run as a study: the point's number


def suggest(trial, tune: TuneSpec) -> dict[str, Any]:
    """The trial's point: one value per parameter of the space, asked of Optuna."""
    if tune.points is not None:
        return tune.points[trial.suggest_categorical(POINT, list(range(len(tune.points))))]
    point = {}
    for name, dist in tune.params.items():
        choices = _choices(dist)
        if choices is not None:
            value = trial.suggest_categorical(name, _encoded(choices))
            point[name] = value if _plain(choices) else json.loads(value)
        elif dist.distribution == "int_uniform":
            point[name] = trial.suggest_int(name, int(dist.low), int(dist.high))
        else:
            point[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.distribution == "log_uniform")
    return point


def point_of(params: dict[str, Any], tune: TuneSpec) -> dict[str, Any]:
    """A finished trial's Optuna params back as the space's values."""
    if tune.points is not None:
        return tune.points[params[POINT]] if POINT in params else {}
    out = {}
    for name, value in params.items():
        dist = tune.params.get(name)
        choices = _choices(dist) if dist is not None else None
        out[name] = json.loads(value) if choices is not None and not _plain(choices) else value
    return out


def grid_space(tune: TuneSpec) -> dict[str, list[Any]]:
    grid = {}
    for name, dist in tune.params.items():
        choices = _choices(dist)
        if choices is not None:
            grid[name] = _encoded(choices)
        elif dist.distribution == "int_uniform" and dist.high - dist.low < 1000:
            grid[name] = list(range(int(dist.low), int(dist.high) + 1))
        else:
            raise UserError(f"--sampler grid: '{name}' is a {dist.distribution} distribution; a grid takes "
                            "lists of values: give `[...]` or `{ choice = [...] }`, or use --sampler tpe")
    return grid


def grid_size(tune: TuneSpec) -> int:
    return math.prod(len(v) for v in grid_space(tune).values())


def make_sampler(tune: TuneSpec, settings: TuneSettings, seed: int, spent: float = 0.0):
    """Optuna's sampler for `settings`; `spent` is the fraction of the study's budget (trials
    or time) already used, by which the cost-aware TPE cools its weighing of cost."""
    import optuna

    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if settings.sampler == "grid":
        class Grid(optuna.samplers.GridSampler):
            def after_trial(self, study, trial, state, values) -> None:
                # GridSampler stops an exhausted study with Study.stop(), which only works
                # inside optimize(); here the worker's loop ends at the grid's size itself.
                pass

        # Optuna's grid sampler shuffles the grid by its seed and gives trial k of the first
        # (grid size) the k-th point: every batch's sampler must shuffle alike, or a study
        # asked in batches repeats points and never trains others.
        return Grid(grid_space(tune), seed=study_seed(tune, settings))
    if settings.sampler == "cmaes":
        # CMA-ES samples numbers; categorical parameters go to the independent sampler.
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup_trials(settings),
                                            warn_independent_sampling=False,
                                            independent_sampler=optuna.samplers.RandomSampler(seed=seed))
    # constant_liar: a running trial counts as a poor result, so a batch asked at once (and
    # other workers' trials) spreads out instead of piling onto one promising point.
    tpe = dict(seed=seed, constant_liar=True, multivariate=True, n_startup_trials=startup_trials(settings))
    if settings.cost_aware:
        return cost_aware_tpe(trial_cost(tune), weight=1.0 - min(max(spent, 0.0), 1.0), **tpe)
    return optuna.samplers.TPESampler(**tpe)


def study_seed(tune: TuneSpec, settings: TuneSettings) -> int:
    """The search's seed: `[tune] seed` (or --seed), else the search table's."""
    return settings.seed if settings.seed is not None else tune.sweep.search.seed


def startup_trials(settings: TuneSettings) -> int:
    """The random trials before TPE or CMA-ES model the results (`TuneSettings.startup_trials`)."""
    if settings.startup_trials is not None:
        return settings.startup_trials
    return 0 if settings.sampler == "tpe" and settings.cost_aware else 10


def trial_cost(tune: TuneSpec) -> Callable[[dict[str, Any]], float]:
    """The relative cost to train a trial, from its Optuna params: its network's multiply-adds
    per image times its epochs (what a step costs scales with the first; a structure the space
    cannot build costs infinitely much, so it is never preferred)."""
    from mnistlab import model

    base = _base(tune)
    image_shape = data.get_info(base.dataset).image_shape

    def cost(params: dict[str, Any]) -> float:
        try:
            spec = trial_spec(tune, base, point_of(params, tune), "cost")
            return float(model.multiply_adds(spec.model, image_shape) * spec.training.epochs)
        except (UserError, ValueError):
            return math.inf

    return cost


def cost_aware_tpe(cost: Callable[[dict[str, Any]], float], weight: float = 1.0, **options: Any):
    """Optuna's TPE choosing among its candidates by expected improvement per unit of cost.

    TPE draws candidates from l(x), the density of the best trials, and keeps the one with
    the highest log l(x) - log g(x). Subtracting `weight` * log cost(x) ranks them by
    improvement per multiply-add instead (weight 1: Snoek, Larochelle and Adams 2012,
    "expected improvement per second"). On a CPU a 3x1200 network trains seven times slower
    than a 1x512 one; while the densities know little (the first trials, where l and g are
    both the prior) the cheap structures come first, and a costly one is chosen once its
    promise outweighs its cost. Improvement per cost alone would keep to the cheap ones
    even when a costly one is far better, so the weight cools from 1 to 0 as the budget is
    spent (Lee et al. 2020, "cost-aware Bayesian optimization", cost cooling): the end of a
    study is plain TPE. Written here because Optuna's samplers know nothing of cost; it
    overrides two of TPESampler's private methods (`_sample`, `_compute_acquisition_func`),
    whose effect tune_test checks."""
    import optuna

    class CostAwareTPESampler(optuna.samplers.TPESampler):
        def _sample(self, study, trial, search_space):
            self._space = search_space  # the acquisition needs it to read candidates back as params
            return super()._sample(study, trial, search_space)

        def _compute_acquisition_func(self, samples, mpe_below, mpe_above):
            value = super()._compute_acquisition_func(samples, mpe_below, mpe_above)
            if weight == 0.0:
                return value
            candidates = [{name: dist.to_external_repr(samples[name][i]) for name, dist in self._space.items()}
                          for i in range(len(value))]
            with np.errstate(divide="ignore"):
                return value - weight * np.log([cost(params) for params in candidates])

    return CostAwareTPESampler(**options)


def make_pruner(settings: TuneSettings, max_epochs: int):
    import optuna

    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings.prune_after,
                                           n_warmup_steps=settings.warmup_epochs)
    if settings.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


# ------------------------------------------------------------------ storage


def default_storage(folder: Path) -> str:
    return f"sqlite:///{(folder / DATABASE).resolve()}"


def redact(url: str) -> str:
    """The URL without its password (it goes into files and messages)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def normalize_url(url: str) -> str:
    # `postgres://` is a common spelling that SQLAlchemy no longer accepts.
    return "postgresql://" + url[len("postgres://"):] if url.startswith("postgres://") else url


def open_storage(url: str, settings: TuneSettings, callback: bool = True):
    """An Optuna RDBStorage with heartbeats; a clear UserError when it cannot be opened."""
    import optuna
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    url = normalize_url(url)
    fix = ("Give a SQLAlchemy URL such as sqlite:///study.db or postgresql://USER:PASSWORD@HOST:5432/DB, "
           "and check that the server runs and the database exists (createdb DB)")
    try:
        backend = make_url(url).get_backend_name()
    except sqlalchemy.exc.ArgumentError:
        raise UserError(f"--storage {redact(url)}: not a database URL. {fix}") from None
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 10}  # an unreachable host fails in seconds
    elif backend == "mysql":
        kwargs["connect_args"] = {"connect_timeout": 10}
    elif backend == "sqlite":
        kwargs["connect_args"] = {"timeout": 60}  # workers on one machine wait for each other's writes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=settings.max_retry)
        try:
            for attempt in range(3):
                try:
                    return optuna.storages.RDBStorage(
                        url, engine_kwargs=kwargs, heartbeat_interval=settings.heartbeat_interval,
                        grace_period=settings.grace_period, heartbeat_stale_trial_callback=retry if callback else None)
                except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError,
                        sqlalchemy.exc.OperationalError) as err:
                    # Workers started together race to create Optuna's tables in a new
                    # database; the loser finds them made on its next try. (SQLite says
                    # "table ... already exists" as an OperationalError, like a lost connection.)
                    racing = not isinstance(err, sqlalchemy.exc.OperationalError) or "already exists" in str(err)
                    if attempt == 2 or not racing:
                        raise
                    time.sleep(1 + attempt)
        except sqlalchemy.exc.NoSuchModuleError:
            raise UserError(f"--storage {redact(url)}: unknown database kind '{url.split(':')[0]}'. {fix}") from None
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as err:
            reason = str(err.orig if getattr(err, "orig", None) is not None else err).strip().splitlines()[0]
            raise UserError(f"--storage {redact(url)}: cannot connect: {reason}. {fix}") from None
        except ImportError as err:
            raise UserError(f"--storage {redact(url)}: the database driver is missing ({err}); install it "
                            "(PostgreSQL: pip install 'psycopg[binary]', a mnistlab dependency)") from None
        except (sqlalchemy.exc.ArgumentError, ValueError) as err:
            raise UserError(f"--storage {redact(url)}: {err}. {fix}") from None


# How long a worker waits for another to finish asking for trials before it gives up:
# asking takes well under a second (a sampler's suggestion, a few rows written).
ASK_LOCK_SECONDS = 600.0


@contextlib.contextmanager
def ask_lock(storage, study_name: str) -> Iterator[None]:
    """Serialize count-and-ask across workers, so that together they never overshoot N."""
    from sqlalchemy import text

    backend = storage.engine.dialect.name
    key = int.from_bytes(hashlib.sha256(f"mnistlab:{study_name}".encode()).digest()[:8], "big", signed=True)
    if backend == "sqlite":
        database = storage.engine.url.database
        if not database or database == ":memory:":
            yield
            return
        # filelock: the operating system's lock (flock, or LockFileEx on Windows), so a worker
        # that dies lets go of it; a timeout, so a hung one cannot block the others forever.
        path = f"{database}.lock"
        lock = filelock.FileLock(path, timeout=ASK_LOCK_SECONDS)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise UserError(f"{path}: another worker of study '{study_name}' has held this lock for over "
                            f"{ASK_LOCK_SECONDS:.0f} s (it is held only while trials are asked for). Stop the "
                            "worker that hangs, or, if no worker runs, delete the file.") from None
        try:
            yield
        finally:
            lock.release()
        return
    if backend in ("postgresql", "mysql"):
        lock, unlock = {"postgresql": ("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"),
                        "mysql": ("SELECT GET_LOCK(:k, 3600)", "SELECT RELEASE_LOCK(:k)")}[backend]
        k = key if backend == "postgresql" else f"mnistlab:{key}"
        # A session lock: if this worker dies, the server drops it with the connection.
        with storage.engine.connect() as conn:
            conn.execute(text(lock), {"k": k})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text(unlock), {"k": k})
                conn.commit()
        return
    yield  # other databases: no lock; two workers asking at the same instant may overshoot


class Heartbeats:
    """A thread that records a heartbeat for each of this worker's running trials."""

    def __init__(self, storage, interval: int):
        self.storage, self.interval = storage, interval
        self.ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="mnistlab-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeats":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def add(self, trial_id: int) -> None:
        self.storage.record_heartbeat(trial_id)  # at once: a trial with no heartbeat is never failed
        with self._lock:
            self.ids.add(trial_id)

    def remove(self, trial_id: int) -> None:
        with self._lock:
            self.ids.discard(trial_id)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self.ids)
            for trial_id in ids:
                with contextlib.suppress(Exception):  # a lost beat is retried next interval
                    self.storage.record_heartbeat(trial_id)


# ------------------------------------------------------------------ the study


def open_study(tune: TuneSpec, settings: TuneSettings, storage, create: bool = True):
    """Create or load the study; refuse one made from a different space."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if not create and tune.name not in names:
        raise UserError(f"no study '{tune.name}' in {redact(storage.url)}: run `mnistlab tune SPACE.toml "
                        "--trials N` first")
    study = optuna.create_study(storage=storage, study_name=tune.name, direction=tune.sweep.direction,
                                load_if_exists=True)
    space = json.dumps(tune.sweep.model_dump(mode="json", exclude_none=True), sort_keys=True)
    recorded = study.user_attrs.get(SPACE_ATTR)
    if recorded is None:
        study.set_user_attr(SPACE_ATTR, space)
        # The dashboard's and the plots' axis: the metric's name, not "Objective 0".
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable since 3.2
            study.set_metric_names([tune.sweep.metric])
    elif recorded != space:
        raise UserError(f"study '{tune.name}' in {redact(storage.url)} was made from another search space "
                        "(base, set, metric or params differ). Give this space another `name`, or delete the "
                        f"old study: optuna delete-study --study-name {tune.name} --storage URL")
    if study.direction.name.lower() != tune.sweep.direction:
        raise UserError(f"study '{tune.name}' {study.direction.name.lower()}s; metric {tune.sweep.metric} "
                        f"needs {tune.sweep.direction}")
    return study


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0  # diverged ones included
    diverged: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        """Trials trained to their end: complete, pruned, or diverged (a result, not an accident)."""
        return self.complete + self.pruned + self.diverged


def counts(study) -> Counts:
    from optuna.trial import TrialState

    c = Counts()
    for t in study.get_trials(deepcopy=False):
        name = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
                TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}[t.state]
        setattr(c, name, getattr(c, name) + 1)
        c.diverged += t.state == TrialState.FAIL and t.user_attrs.get("status") == populations.DIVERGED
    return c


ENQUEUED_ATTR = "mnistlab.enqueued"


def enqueue_points(study, tune: TuneSpec) -> None:
    """A sweep run as a study: every point becomes a waiting trial, once (call under `ask_lock`)."""
    if tune.points is None or study.user_attrs.get(ENQUEUED_ATTR):
        return
    for i in range(len(tune.points)):
        study.enqueue_trial({POINT: i}, skip_if_exists=True)
    study.set_user_attr(ENQUEUED_ATTR, len(tune.points))


def best_trial(study):
    """The best complete trial, or None."""
    try:
        return study.best_trial
    except ValueError:
        return None


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# ------------------------------------------------------------------ a worker


@dataclass
class Open:
    """A trial this worker is training: its point and one member per seed."""

    trial: Any  # optuna.Trial
    point: dict[str, Any]
    members: list[populations.Member] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # per epoch, the mean over seeds
    best_epoch: int = 0
    best_value: float | None = None
    closed: bool = False

    @property
    def spec(self) -> spec_lib.RunSpec:
        return self.members[0].spec


@dataclass
class TuneResult:
    path: Path
    storage: str
    counts: Counts
    summary: dict[str, Any]
    trials: list[dict[str, Any]]  # trials.json's rows, best first
    interrupted: bool = False
    timed_out: bool = False
    exit_code: int = 0  # 130 after Ctrl-C, 143 after SIGTERM


class _OutOfTime(Exception):
    """The `timeout` budget ran out while trials were training."""


def run(tune: TuneSpec, trials: int, *, study_dir: str | Path | None = None, storage: str | None = None,
        settings: TuneSettings | None = None, data_dir: str | Path | None = None,
        arrays: data.Arrays | None = None, timeout: float | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        memory_budget: int | None = None, log: Sequence[str] = ()) -> TuneResult:
    """Work on the study until it has `trials` finished (complete, pruned or diverged) trials.

    Re-running resumes: the study lives in its storage. Any number of workers may run this
    at once against one storage (see the module's docstring for the counting rule);
    `settings.workers` > 1 starts that many here, each on its share of the cores (`tune_pool`).
    `timeout`: a budget in seconds. No batch is asked after it; trials still training when it
    runs out are stopped at the end of their epoch, failed and queued again (as after Ctrl-C).
    `log` ("tensorboard[:DIR]", "tensorboard+histograms[:DIR]", "mlflow[:URI]", see
    `tracking`) logs this worker's work as a parent and each trial it trains as a child: the
    trial's settings, its epochs (the mean over its seeds), its status.
    """
    settings = settings or tune.settings
    if settings.workers > 1:
        from mnistlab import tune_pool

        return tune_pool.run(tune, trials, settings.workers, study_dir=study_dir, storage=storage, settings=settings,
                             data_dir=data_dir, arrays=arrays, timeout=timeout, on_event=on_event,
                             memory_budget=memory_budget, log=log)
    folder = Path(study_dir) if study_dir is not None else Path("studies") / tune.name
    # Opened before the study's folder and storage: a bad target fails before anything is written.
    with tracking.Family(log, "study", tune.name, metric=tune.sweep.metric, records_dir=folder.parent,
                         searched=tune.names, params=_logged_settings(tune, settings, trials)) as logs:
        result = _run(tune, trials, study_dir=study_dir, storage=storage, settings=settings, data_dir=data_dir,
                      arrays=arrays, timeout=timeout, on_event=on_event, memory_budget=memory_budget, logs=logs)
        status = "interrupted" if result.interrupted else "stopped" if result.timed_out else "completed"
        logs.done(status, {f"best_{tune.sweep.metric}": result.summary.get("best_value")}, result.path,
                  skip=(DATABASE, f"{DATABASE}.lock", "trials"))  # the storage; best/ is the trial kept
        return result


def _logged_settings(tune: TuneSpec, settings: TuneSettings, trials: int) -> dict[str, Any]:
    """What a study's parent run shows as its parameters (the whole space is its tune.toml)."""
    return {"metric": tune.sweep.metric, "direction": tune.sweep.direction, "trials": trials,
            "sampler": settings.sampler, "cost_aware": settings.cost_aware, "pruner": settings.pruner,
            "batch": settings.batch, "seeds": settings.seeds, "workers": settings.workers}


def _run(tune: TuneSpec, trials: int, *, study_dir, storage, settings: TuneSettings, data_dir, arrays, timeout,
         on_event, memory_budget, logs: tracking.Family) -> TuneResult:
    """`run`'s work, each trial's epochs and end also sent to `logs`."""
    # One function on purpose: the ask loop, the storage lock, the heartbeats and the three
    # ways out (done, stopped, failed) share `opened`, the trials this worker holds, and each
    # way out must settle exactly those.
    import optuna

    settings = settings or tune.settings
    folder, url, rdb = _open(tune, settings, study_dir, storage, retry=True)
    study = open_study(tune, settings, rdb)
    _save_space(folder, tune)
    if tune.points is not None:
        trials = len(tune.points)
        with ask_lock(rdb, tune.name):
            enqueue_points(study, tune)
    elif settings.sampler == "grid" and trials > grid_size(tune):
        _emit(on_event, {"event": "message", "text": f"the grid has {grid_size(tune)} points: "
                         f"--trials {trials} lowered to {grid_size(tune)}"})
        trials = grid_size(tune)
    _emit(on_event, {"event": "start", "trials": trials, "sampler": settings.sampler, "pruner": settings.pruner,
                     "batch": settings.batch, "folder": str(folder)})
    base = _base(tune)
    arrays = arrays if arrays is not None else data.load(base.dataset, data_dir)  # fails before any trial
    max_epochs = _max_epochs(tune, base)
    study.pruner = make_pruner(settings, max_epochs)
    seed = study_seed(tune, settings)
    started = time.perf_counter()
    opened: dict[int, Open] = {}
    deadline = started + timeout if timeout is not None else None
    ctx = _Worker(tune, settings, study, folder, populations.loader(data_dir, arrays), base, on_event, memory_budget,
                  opened, deadline, logs=logs)
    interrupted = timed_out = False
    exit_code = 0
    with warnings.catch_warnings(), Heartbeats(rdb, settings.heartbeat_interval) as beats:
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        ctx.beats = beats
        try:
            while True:
                if deadline is not None and time.perf_counter() > deadline:
                    _emit(on_event, {"event": "message", "text": f"--timeout {timeout:g} s reached: no new trials"})
                    timed_out = True
                    break
                with ask_lock(rdb, tune.name):
                    optuna.storages.fail_stale_trials(study)
                    now = counts(study)
                    slots = trials - now.finished - now.running
                    if now.finished >= trials:
                        break
                    if slots > 0:
                        batch = _ask(study, tune, settings, base, seed, min(settings.batch, slots), beats, opened,
                                     budget_spent(now.finished, trials, time.perf_counter() - started, timeout))
                if slots <= 0:
                    _emit(on_event, {"event": "wait", "running": now.running, "finished": now.finished,
                                     "target": trials})
                    time.sleep(min(settings.heartbeat_interval, 5))
                    continue
                _emit(on_event, {"event": "batch", "trials": [t.number for t in batch], "finished": now.finished,
                                 "target": trials, "epochs": max(opened[t.number].spec.training.epochs for t in batch)})
                ctx.train_batch([opened[t.number] for t in batch])
                write_outputs(study, folder, tune, settings, url, trials, with_importances=False)
        except (KeyboardInterrupt, _OutOfTime) as stop:
            # Ctrl-C or the budget: the trials in training are failed and queued again with
            # the same parameters; re-running the command trains them.
            interrupted, timed_out = isinstance(stop, KeyboardInterrupt), isinstance(stop, _OutOfTime)
            exit_code = interrupt_code(stop) if interrupted else 0
            if timed_out:
                _emit(on_event, {"event": "message", "text": f"--timeout {timeout:g} s reached: trials "
                                 f"{', '.join(map(str, opened))} stopped and queued again"})
            for o in list(opened.values()):
                frozen = _fail(study, o, "interrupted" if interrupted else "out of time")
                if frozen is not None:
                    requeue(study, frozen, settings.max_retry)
        except BaseException as err:
            for o in list(opened.values()):
                _fail(study, o, f"error: {type(err).__name__}: {err}")
            raise
        finally:
            for o in opened.values():
                beats.remove(o.trial._trial_id)
    summary, rows = write_outputs(study, folder, tune, settings, url, trials, with_importances=True)
    _prune_trial_folders(study, folder)
    _emit(on_event, {"event": "done", "seconds": time.perf_counter() - started})
    return TuneResult(folder, url, counts(study), summary, rows, interrupted, timed_out, exit_code)


def _ask(study, tune: TuneSpec, settings: TuneSettings, base: spec_lib.RunSpec, seed: int, n: int,
         beats: Heartbeats, opened: dict[int, Open], spent: float = 0.0) -> list:
    """Ask the study for `n` trials, under the caller's lock; each is opened (heart-beaten,
    its point suggested and its members built) before the lock is let go, so the other
    workers' liars see its parameters. `spent`: the fraction of the budget used (`make_sampler`)."""
    # A fresh seed per batch: a resumed study, or another worker, does not repeat the
    # draws already made (the count differs at every ask).
    study.sampler = make_sampler(tune, settings, seed * 1_000_003 + len(study.get_trials(deepcopy=False)), spent)
    batch = [study.ask() for _ in range(n)]
    for trial in batch:
        beats.add(trial._trial_id)
        opened[trial.number] = Open(trial, {})
    for trial in batch:
        point = suggest(trial, tune)
        opened[trial.number] = Open(trial, point, trial_members(tune, base, point, trial.number, settings.seeds))
        trial.set_user_attr("worker", worker_name())
    return batch


def budget_spent(finished: int, trials: int, seconds: float, timeout: float | None) -> float:
    """The fraction of a study's budget used: of its trials, or of its time when it has
    a timeout, whichever is further along."""
    return max(finished / trials if trials else 1.0, seconds / timeout if timeout else 0.0)


def _open(tune: TuneSpec, settings: TuneSettings, study_dir, storage: str | None, retry: bool):
    """(study folder, storage URL, storage). A given storage is opened before the folder is
    made, so a bad URL leaves nothing behind; the default SQLite file lives in the folder."""
    folder = Path(study_dir) if study_dir is not None else Path("studies") / tune.name
    url = normalize_url(storage) if storage else default_storage(folder)
    if storage:
        rdb = open_storage(url, settings, callback=retry)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        rdb = open_storage(url, settings, callback=retry)
    return folder, url, rdb


def _emit(on_event, event: dict[str, Any]) -> None:
    if on_event is not None:
        on_event(event)


def _max_epochs(tune: TuneSpec, base: spec_lib.RunSpec) -> int:
    dist = tune.params.get("training.epochs")
    if dist is None:
        return base.training.epochs
    choices = _choices(dist)
    return int(max(choices) if choices is not None else dist.high)


def _save_space(folder: Path, tune: TuneSpec) -> None:
    path = folder / SPACE
    if not path.exists():
        runs.atomic_write(path, tune.text)


def requeue(study, frozen, max_retry: int | None) -> None:
    """Queue a failed trial again with the same parameters, as Optuna's retry callback does
    for a stale one (the same `failed_trial` / `retry_history` marks), its results left behind."""
    import optuna

    history = [*frozen.system_attrs.get("retry_history", []), frozen.number]
    if max_retry is not None and len(history) > max_retry:
        return
    system = {**frozen.system_attrs, "failed_trial": frozen.system_attrs.get("failed_trial", frozen.number),
              "retry_history": history}
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params=frozen.params,
                                              distributions=frozen.distributions, system_attrs=system))


def _fail(study, o: Open, why: str):
    """Tell a trial FAIL (unless finished already); its frozen record, or None."""
    import optuna

    try:
        o.trial.set_user_attr("status", "failed")
        o.trial.set_user_attr("failure", why)
        if o.history:
            o.trial.set_user_attr("history", o.history)
        return study.tell(o.trial, state=optuna.trial.TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, ValueError):
        return None


@dataclass
class _Worker:
    tune: TuneSpec
    settings: TuneSettings
    study: Any
    folder: Path
    load: Callable[[str], data.Arrays]
    base: spec_lib.RunSpec
    on_event: Callable[[dict[str, Any]], None] | None
    memory_budget: int | None
    opened: dict[int, Open]
    deadline: float | None = None
    beats: Heartbeats | None = None
    logs: tracking.Family | None = None

    def __post_init__(self):
        self.messages: list[str] = []

    def train_batch(self, batch: list[Open]) -> None:
        """Train a batch's trials through the one driver; report, prune and tell as epochs end."""
        owner = {m.index: o for o in batch for m in o.members}

        def on_epoch(m: populations.Member, part: populations.Part) -> None:
            self.settle(owner[m.index], part)

        def after_epoch(part: populations.Part, result) -> None:
            trials = sorted({owner[m.index].trial.number for m in part.members})
            _emit(self.on_event, {"event": "epoch", "epoch": result.epoch, "trials": trials,
                                  "running": sum(m.training for m in part.members), "seconds": result.seconds})
            if self.deadline is not None and time.perf_counter() > self.deadline and part.population.active.any():
                raise _OutOfTime

        report = populations.run([m for o in batch for m in o.members], self.load, metric=self.tune.sweep.metric,
                                 lanes=self.tune.sweep.lanes,
                                 memory_budget=self.memory_budget, on_epoch=on_epoch, after_epoch=after_epoch)
        self.messages += [m for m in report.messages if m not in self.messages]

    def settle(self, o: Open, part: populations.Part) -> None:
        """Report the epochs every seed of the trial has reached (their mean); complete, prune or fail it."""
        from optuna.trial import TrialState

        if o.closed:
            return
        metric = self.tune.sweep.metric
        if any(m.status == populations.DIVERGED for m in o.members):
            return self.close(o, part, TrialState.FAIL, "diverged")
        reached = min(m.epochs for m in o.members)
        while len(o.history) < reached:
            e = len(o.history)
            records = [m.history[e] for m in o.members]
            o.history.append({k: (float(np.mean([r[k] for r in records])) if k != "epoch" else records[0][k])
                              for k in records[0]})
            self.log_epoch(o, part)
            value = o.history[-1][metric]
            if populations.better(value, o.best_value, metric):
                o.best_value, o.best_epoch = value, e + 1
            o.trial.report(value, e + 1)
            if not any(m.training for m in o.members) and len(o.history) == reached:
                break
            if o.trial.should_prune():
                return self.close(o, part, TrialState.PRUNED, "pruned")
        if not any(m.training for m in o.members):
            value = float(np.mean([m.final[metric] for m in o.members]))
            self.close(o, part, TrialState.COMPLETE, "completed", value)

    def open_logs(self, o: Open) -> None:
        """The trial's child loggers: opened at its first epoch, or at its end if it never had one."""
        if self.logs is not None:
            self.logs.open(o.trial.number, o.spec, o.point, {"mnistlab.trial": o.trial.number,
                                                               "mnistlab.seeds": len(o.members)})

    def log_epoch(self, o: Open, part: populations.Part) -> None:
        """The trial's last epoch (the mean over its seeds) to its loggers; the weights, when
        asked, are its first seed's, if that is in this part and at this epoch."""
        if self.logs is None or not self.logs.parents:
            return
        self.open_logs(o)
        first = o.members[0]
        at_epoch = self.logs.wants_weights and any(m is first for m in part.members) and first.epochs == len(o.history)
        self.logs.on_epoch(o.trial.number, o.history[-1], part.params(first) if at_epoch else None)

    def close(self, o: Open, part: populations.Part, state, status: str, value: float | None = None) -> None:
        """Stop the trial's members still training and tell Optuna; keep the trial's run if it is the best."""
        import optuna
        from optuna.trial import TrialState

        o.closed = True
        for m in o.members:
            if m.training:
                m.status = status  # the driver freezes it
        trial, metric = o.trial, self.tune.sweep.metric
        attrs = {"status": status, "history": o.history, "epochs": len(o.history), "best_epoch": o.best_epoch,
                 "final": {k: v for k, v in o.history[-1].items() if k not in ("epoch", "seconds")} if o.history else {},
                 "point": o.point, "seed": o.members[0].seed, "seeds": [m.seed for m in o.members],
                 "seed_values": [m.final.get(metric) for m in o.members], "worker": worker_name(),
                 "train_seconds": sum(r["seconds"] for r in o.history)}
        try:
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            frozen = self.study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another worker failed this trial (our heartbeat was late) and queued it again:
            # the re-run counts, this result does not.
            _emit(self.on_event, {"event": "message", "text": f"trial {trial.number} was taken over by another "
                                  "worker (heartbeat late): result dropped"})
            frozen = None
        finally:
            self.opened.pop(trial.number, None)
            if self.beats is not None:
                self.beats.remove(trial._trial_id)
        if self.logs is not None and self.logs.parents:  # a trial that diverged in its first epoch too
            self.open_logs(o)
            self.logs.end(trial.number, status if frozen is not None else "taken over", {"final": attrs["final"]})
        if frozen is None:
            return
        best = best_trial(self.study)
        is_best = state == TrialState.COMPLETE and best is not None and best.number == trial.number
        here = [m for m in o.members if m in part.members]
        if is_best and here:
            # The seed closest to the trial's mean, as a sweep's best/ (of those in this part).
            m = min(here, key=lambda m: abs(m.final.get(metric, math.inf) - value))
            populations.write_run(self.folder / "trials" / str(trial.number), m, part.params(m),
                                  from_study=str(self.folder), trial=trial.number, params=o.point)
            point_best(self.folder, trial.number)
        _emit(self.on_event, {"event": "trial", "trial": trial.number, "status": status, "value": frozen.value,
                              "epochs": len(o.history), "params": o.point, "best": is_best,
                              "best_value": best.value if best is not None else None,
                              "best_trial": best.number if best is not None else None,
                              "finished": counts(self.study).finished})


# ------------------------------------------------------------------ the study folder


def point_best(folder: Path, number: int) -> None:
    """`best` -> trials/<number>, swapped atomically (a symbolic link replaced by rename)."""
    tmp = folder / f".best.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(f"trials/{number}", tmp)
    os.replace(tmp, folder / "best")


def _prune_trial_folders(study, folder: Path) -> None:
    """Point `best` at the study's best trial when its folder is here; drop folders of worse trials.

    Only trials known complete and worse than the best are removed: another worker may be
    writing a newer, better one right now.
    """
    from optuna.trial import TrialState

    best = best_trial(study)
    if best is None or not (folder / "trials").is_dir():
        return
    if (folder / "trials" / str(best.number)).is_dir():
        point_best(folder, best.number)
    done = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    for path in (folder / "trials").iterdir():
        if path.name.isdigit() and int(path.name) in done and int(path.name) != best.number:
            import shutil

            shutil.rmtree(path, ignore_errors=True)


def trial_rows(study, tune: TuneSpec) -> list[dict[str, Any]]:
    """One row per trial, best first (by the value Optuna was told), then the rest by number."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        status = a.get("status") if t.state.name not in ("RUNNING", "WAITING") else t.state.name.lower()
        final = a.get("final") or {}
        rows.append({
            "trial": t.number, "state": t.state.name, "status": status or t.state.name.lower(),
            "value": t.value, "params": point_of(t.params, tune), "seed": a.get("seed"), "epochs": a.get("epochs", len(t.intermediate_values)),
            "best_epoch": a.get("best_epoch"), **{k: final.get(k) for k in ("loss", "accuracy", "val_loss",
                                                                          "val_accuracy")},
            "retry_of": retried_from(t), "worker": a.get("worker"),
            "train_seconds": a.get("train_seconds"),
            "started": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
            "finished": t.datetime_complete.isoformat(timespec="seconds") if t.datetime_complete else None,
        })
    sign = -1 if tune.sweep.direction == "maximize" else 1
    ok = lambda r: r["state"] == "COMPLETE" and r["value"] is not None and math.isfinite(r["value"])  # noqa: E731
    return sorted(rows, key=lambda r: (0, sign * r["value"], r["trial"]) if ok(r) else (1, 0, r["trial"]))


def retried_from(trial) -> int | None:
    """The number of the first trial this one re-runs (Optuna's retry mark), or None."""
    return trial.system_attrs.get("failed_trial")


def importances(study) -> tuple[dict[str, float], str]:
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return {}, "fewer than 2 complete trials"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study)
        return {k: float(v) for k, v in found.items()}, "optuna.importance.get_param_importances (fANOVA)"
    except (RuntimeError, ValueError, ZeroDivisionError) as err:
        return {}, f"not computed: {err}"


def write_outputs(study, folder: Path, tune: TuneSpec, settings: TuneSettings, url: str, trials: int | None,
                  with_importances: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """study.json, trials.json / trials.csv and metrics.jsonl, all from the storage; returns
    (study.json's summary, trials.json's rows)."""
    rows = trial_rows(study, tune)
    metrics = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        metrics += [{"trial": t.number, **r} for r in t.user_attrs.get("history") or []]
    c = counts(study)
    best = best_trial(study)
    previous = json.loads((folder / STUDY).read_text()) if (folder / STUDY).exists() else {}
    found, method = (importances(study) if with_importances
                     else (previous.get("importances", {}), previous.get("importance_method", "not computed yet")))
    link = folder / "best"
    summary = {
        "name": tune.name, "study_name": study.study_name, "storage": redact(url),
        "metric": tune.sweep.metric, "direction": tune.sweep.direction,
        "trials_requested": trials if trials is not None else previous.get("trials_requested"),
        "complete": c.complete, "pruned": c.pruned, "failed": c.failed, "running": c.running, "waiting": c.waiting,
        "best_trial": best.number if best else None, "best_value": best.value if best else None,
        "best_params": point_of(best.params, tune) if best else None,
        "best_run": "best" if best and link.is_dir() and os.readlink(link) == f"trials/{best.number}" else None,
        "importances": found, "importance_method": method,
        "sampler": settings.sampler, "cost_aware": settings.cost_aware, "pruner": settings.pruner,
        "batch": settings.batch, "workers": settings.workers,
        "test_evaluations": study.user_attrs.get(TESTS_ATTR, []),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dashboard": f"optuna-dashboard {redact(url)}",
    }
    if best and summary["best_run"] is None:
        summary["best_run_note"] = (f"trial {best.number} was trained by {best.user_attrs.get('worker')}; its run "
                                    "folder is in that worker's study folder")
    runs.atomic_write(folder / TRIALS_JSON, json.dumps(rows, indent=1) + "\n")
    runs.atomic_write(folder / TRIALS_CSV, search.rows_csv(rows))
    runs.atomic_write(folder / METRICS, "".join(json.dumps(m) + "\n" for m in metrics))
    runs.atomic_write(folder / STUDY, json.dumps(summary, indent=2) + "\n")
    return summary, rows


# ------------------------------------------------------------------ the test set, once


def _on_all_training_data(spec: spec_lib.RunSpec, arrays: data.Arrays) -> tuple[spec_lib.RunSpec, str | None]:
    """The spec trained on train + validation. A schedule that spanned the searched run
    exactly (decay_steps = epochs x steps per epoch) is stretched to the longer epochs, so
    its shape over the run stays the one that was searched; anything else is kept as is."""
    import math as m

    searched = len(populations.split(spec, arrays)[1])
    spec_all = spec_lib.with_values(spec, {"training.validation.fraction": 0.0}, source="--with-validation")
    everything = len(populations.split(spec_all, arrays)[1])
    t, schedule = spec.training, spec.optimizer.schedule
    before, after = (t.epochs * m.ceil(n / t.batch_size) for n in (searched, everything))
    if schedule.name != "constant" and schedule.decay_steps == before and before != after:
        spec_all = spec_lib.with_values(spec_all, {"optimizer.schedule.decay_steps": after}, source="--with-validation")
        return spec_all, f"optimizer.schedule.decay_steps {before} -> {after}: the schedule spans the longer epochs"
    return spec_all, None


@dataclass
class FinalResult:
    record: dict[str, Any]  # the test evaluation: new, or the one recorded before
    again: bool  # True: the test set had been used already and was not read now
    path: Path


def final(tune: TuneSpec, *, study_dir: str | Path | None = None, storage: str | None = None,
          settings: TuneSettings | None = None, with_validation: bool = False, retest: bool = False,
          data_dir: str | Path | None = None, arrays: data.Arrays | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> FinalResult:
    """Retrain the best trial's configuration and evaluate it on the test set, once per study.

    The evaluation is recorded in the study's storage (user attribute
    `mnistlab.test_evaluations`) and in final.json. Asked again, it returns the recorded
    result without reading the test set, unless `retest` (itself recorded, numbered).
    """
    from mnistlab.training import train

    settings = settings or tune.settings
    where = Path(study_dir) if study_dir is not None else Path("studies") / tune.name
    if not storage and not (where / DATABASE).exists():
        raise UserError(f"{where / DATABASE}: no study here: run `mnistlab tune SPACE.toml --trials N` first "
                        "(or give --storage / --study-dir where it ran)")
    folder, url, rdb = _open(tune, settings, study_dir, storage, retry=False)
    study = open_study(tune, settings, rdb, create=False)
    with ask_lock(rdb, tune.name):
        done = list(study.user_attrs.get(TESTS_ATTR, []))
        used = [r for r in done if r.get("test") is not None or r.get("status") == "started"]
        if used and not retest:
            return FinalResult(used[-1], True, folder)  # the test set stays unread
        best = best_trial(study)
        if best is None:
            raise UserError(f"study '{tune.name}' has no complete trial yet: run `mnistlab tune SPACE.toml "
                            "--trials N` first")
        # Claimed before training: a second --final while this one runs sees it.
        claim = {"evaluation": len(done) + 1, "status": "started", "trial": best.number,
                 "value": best.value, "params": point_of(best.params, tune),
                 "data": "train+validation" if with_validation else "train", "retest": bool(done),
                 "worker": worker_name(), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        study.set_user_attr(TESTS_ATTR, done + [claim])
    base = _base(tune)
    spec = trial_spec(tune, base, point_of(best.params, tune), f"{tune.name}-final")
    arrays = arrays if arrays is not None else data.load(base.dataset, data_dir)
    if with_validation:
        spec, note = _on_all_training_data(spec, arrays)
        claim["adjusted"] = note
    try:
        # The test set is read at the very end of train(), after the last epoch.
        result = train(spec, runs_dir=folder / "final", test=True, arrays=arrays, verbose=0,
                       on_epoch=(lambda r: on_epoch({**r, "epochs": spec.training.epochs})) if on_epoch else None)
    except BaseException:
        with ask_lock(rdb, tune.name):  # stopped before the test set was read: withdraw the claim
            study.set_user_attr(TESTS_ATTR, [r for r in study.user_attrs.get(TESTS_ATTR, []) if r != claim])
        raise
    record = {**claim, "status": result.status, "test": result.summary.get("test"),
              "final": result.summary.get("final"), "run": str(result.run_dir),
              "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _record_final(study, rdb, tune, url, folder, claim, record)
    write_outputs(study, folder, tune, settings, url, None, with_importances=False)
    return FinalResult(record, False, folder)


def _record_final(study, rdb, tune: TuneSpec, url: str, folder: Path, claim: dict[str, Any],
                  record: dict[str, Any]) -> None:
    """The final run's summary names its study and trial; the record replaces its claim in the
    storage (every evaluation kept, in order) and in final.json."""
    summary_path = Path(record["run"]) / runs.SUMMARY
    run_summary = json.loads(summary_path.read_text())
    run_summary["tune"] = {"study": tune.name, "storage": redact(url), "trial": record["trial"],
                           "evaluation": record["evaluation"], "retest": record["retest"], "data": record["data"]}
    runs.atomic_write(summary_path, json.dumps(run_summary, indent=2) + "\n")
    with ask_lock(rdb, tune.name):
        recorded = [r for r in study.user_attrs.get(TESTS_ATTR, [])
                    if not (r.get("evaluation") == claim["evaluation"] and r.get("worker") == claim["worker"])]
        study.set_user_attr(TESTS_ATTR, sorted(recorded + [record], key=lambda r: r["evaluation"]))
        everything = study.user_attrs[TESTS_ATTR]
    runs.atomic_write(folder / FINAL, json.dumps(everything, indent=2) + "\n")
