"""Several workers of one study on one machine, each on its own share of the CPU's cores.

    mnistlab tune SPACE.toml --workers 2          # or `workers = 2` in the space's [tune] table

Why: on a CPU a dense trial at batch 128 is too small a program for XLA to keep two cores
busy (a step of the 784-512-10 network is 2 ms, and dropout's random masks run on one
thread), and the `seed` family trains one member at a time, so a population gives a search
no parallelism there. Two processes pinned to a core each train 1.7x the trials a minute of
one process on both (bench/bench_workers.py, docs/benchmarks.md). Workers of one study already coordinate
through its storage (`tune`'s ask lock, heartbeats, re-queued trials), so a pool is only
that many `tune.run` workers, started here, each pinned before its XLA runtime starts and
so sizing its thread pool to its cores.

The parent trains nothing: it starts the workers, shows their events as one study's,
stops them on Ctrl-C or SIGTERM (each fails and re-queues the trials it was training, as
a single worker does), and writes the study's outputs once they are done.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from mnistlab import data
from mnistlab.errors import UserError, interrupt_code

# Events only the pool sends: one start and one done for the study, not one per worker.
_POOL_EVENTS = ("start", "done")


def core_groups(cores: Sequence[int], workers: int) -> list[list[int]]:
    """`cores` split into `workers` groups of consecutive cores, as even as can be (the first
    ones one larger); with more workers than cores, cores are shared round-robin."""
    cores = sorted(cores)
    if workers <= len(cores):
        size, extra = divmod(len(cores), workers)
        bounds = [i * size + min(i, extra) for i in range(workers + 1)]
        return [cores[bounds[i]:bounds[i + 1]] for i in range(workers)]
    return [[cores[i % len(cores)]] for i in range(workers)]


def worker_environment(group: Sequence[int]) -> dict[str, str]:
    """What a worker's environment adds: on one core, XLA's CPU matrix products single-threaded
    (its default pool would still run them in parallel tasks that only contend there)."""
    if len(group) > 1:
        return {}
    flags = os.environ.get("XLA_FLAGS", "")
    return {"XLA_FLAGS": f"{flags} --xla_cpu_multi_thread_eigen=false".strip()}


@contextlib.contextmanager
def _started_on(group: Sequence[int], env: dict[str, str]) -> Iterator[None]:
    """While inside, a process started by this thread inherits `group` as its CPU affinity and
    `env` as its environment from its first instruction, before its XLA runtime starts and
    sizes its thread pool (setting them from inside the child would come too late for a
    runtime started by an import)."""
    before_cores, before_env = os.sched_getaffinity(0), {k: os.environ.get(k) for k in env}
    os.sched_setaffinity(0, group)
    os.environ.update(env)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before_cores)
        for k, v in before_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _worker(events, tune, trials: int, kwargs: dict[str, Any], deadline: float | None) -> None:
    """One worker process: `tune.run` with its events sent to the pool. SIGTERM stops it as it
    stops any worker (its trials failed and queued again); SIGINT is left to the pool, which
    sends SIGTERM once, so a Ctrl-C does not reach the worker twice mid-way through its cleanup.
    `deadline`: the pool's, on the wall clock: a worker's budget is what is left of the pool's."""
    from mnistlab import errors, tune as tune_lib

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    errors.raise_on_sigterm()
    events.put({"event": "worker", "pid": os.getpid(), "cores": sorted(os.sched_getaffinity(0))})
    try:
        timeout = None if deadline is None else max(deadline - time.time(), 0.0)
        result = tune_lib.run(tune, trials, on_event=events.put, timeout=timeout, **kwargs)
        events.put({"event": "worker-end", "timed_out": result.timed_out, "interrupted": result.interrupted})
    except KeyboardInterrupt:  # SIGTERM before its study began: it held no trial
        events.put({"event": "worker-end", "timed_out": False, "interrupted": True})
    except BaseException as err:  # noqa: BLE001 - the pool reports it and exits with an error
        events.put({"event": "worker-error", "user": isinstance(err, UserError), "text": str(err) or repr(err)})
        raise SystemExit(1) from None


def run(tune, trials: int, workers: int, *, study_dir: str | Path, storage: str | None, settings,
        data_dir, arrays: data.Arrays | None, timeout: float | None,
        on_event: Callable[[dict[str, Any]], None] | None, memory_budget: int | None, log: Sequence[str]):
    """`tune.run` with `workers` processes (see the module's docstring); its TuneResult."""
    from mnistlab import tune as tune_lib

    started, deadline = time.perf_counter(), None if timeout is None else time.time() + timeout
    folder, url, rdb = tune_lib._open(tune, settings, study_dir, storage, retry=False)
    study = tune_lib.open_study(tune, settings, rdb)  # made once here, not raced by the workers
    arrays = arrays if arrays is not None else data.load(tune_lib._base(tune).dataset, data_dir)  # fails first
    groups = core_groups(sorted(os.sched_getaffinity(0)), workers)
    emit = on_event or (lambda event: None)
    emit({"event": "start", "trials": trials, "sampler": settings.sampler, "pruner": settings.pruner,
          "batch": settings.batch, "folder": str(folder)})
    one = settings.model_copy(update={"workers": 1})
    kwargs = dict(study_dir=folder, storage=storage, settings=one, arrays=arrays,
                  memory_budget=memory_budget, log=log)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: its XLA starts pinned
    events = context.Queue()
    processes = []
    for group in groups:
        with _started_on(group, worker_environment(group)):
            process = context.Process(target=_worker, args=(events, tune, trials, kwargs, deadline), daemon=True)
            process.start()
        processes.append(process)
    ends, errors, stop, signalled = [], [], None, set()

    def stop_workers() -> None:  # once each: a second SIGTERM would cut short a worker's cleanup
        for process in processes:
            if process.is_alive() and process.pid not in signalled:
                signalled.add(process.pid)
                os.kill(process.pid, signal.SIGTERM)

    try:
        while len(ends) + len(errors) < len(processes):
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                if not any(p.is_alive() for p in processes) and events.empty():
                    break  # a worker died without a word (killed): the others are done too
                continue
            if event["event"] == "worker-end":
                ends.append(event)
            elif event["event"] == "worker-error":
                errors.append(event)
                stop_workers()  # the command fails, as one worker's would; the others re-queue their trials
            elif event["event"] not in _POOL_EVENTS:
                emit(event)
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM (errors.Terminated)
        stop = interrupt
        stop_workers()
    finally:
        for process in processes:
            process.join()
    if errors:
        text = "; ".join(sorted({e["text"] for e in errors}))
        if all(e["user"] for e in errors):
            raise UserError(text)
        raise RuntimeError(f"a tune worker failed: {text}")
    summary, rows = tune_lib.write_outputs(study, folder, tune, settings, url, trials, with_importances=True)
    tune_lib._prune_trial_folders(study, folder)
    emit({"event": "done", "seconds": time.perf_counter() - started})
    return tune_lib.TuneResult(folder, url, tune_lib.counts(study), summary, rows,
                               interrupted=stop is not None, timed_out=any(e["timed_out"] for e in ends),
                               exit_code=interrupt_code(stop) if stop is not None else 0)
