"""The commands that train: train, sweep, tune, ablate, and evaluate (which reads a split)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mnistlab import console
from mnistlab.cli.options import DataDir, Json, Log, Preset, Quiet, Run, Set, complete
from mnistlab.errors import UserError, interrupt_code


def train(
    config: Annotated[Optional[Path], typer.Argument(help="A TOML run specification (or a run folder: its own).")] = None,
    preset: Preset = None,
    set_: Set = None,
    data_dir: DataDir = None,
    runs_dir: Annotated[Path, typer.Option(help="Where run folders are written.")] = Path("runs"),
    test: Annotated[bool, typer.Option("--test", help="Evaluate once on the test set at the end.")] = False,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue this killed or interrupted run "
                                                   "folder from its last finished epoch, to the same numbers.")] = None,
    quiet: Quiet = False,
    json_: Json = False,
    log: Log = None,
) -> None:
    """Train a network and record it in a run folder."""
    from mnistlab import runs
    from mnistlab import spec as spec_lib
    from mnistlab import training

    if resume is not None and (config is not None or preset is not None or set_):
        raise UserError("--resume continues the run as its config.toml says: give no CONFIG, --preset or --set")
    spec = runs.open_run(resume).spec if resume is not None else spec_lib.from_source(config, preset, set_ or [])
    with console.epochs_progress(spec.training.epochs, quiet) as (on_epoch, on_progress):
        shown = dict(data_dir=data_dir, on_epoch=on_epoch, on_progress=on_progress, log=log or [], verbose=0)
        if resume is not None:
            result = training.resume(resume, test=test or None, **shown)
        else:
            result = training.train(spec, runs_dir=runs_dir, test=test, **shown)
    code = console.run_summary(result.summary, result.run_dir)
    stopping = result.summary.get("early_stopping") or {}
    if stopping.get("stopped_epoch"):
        console.say(f"early stopping: stopped after epoch {stopping['stopped_epoch']}, {stopping['monitor']} best at "
                    f"epoch {stopping['best_epoch']}; the run keeps epoch {stopping['weights_from_epoch']}'s weights")
    if result.status == "interrupted" and result.run_dir is not None:
        console.interrupted(f"continue it with `mnistlab train --resume {result.run_dir}`")
    if code:
        raise typer.Exit(code)


def sweep(
    config: Annotated[Path, typer.Argument(help="A sweep TOML: base configuration + search space.")],
    resume: Annotated[bool, typer.Option("--resume", help="Continue the newest unfinished run of this sweep.")] = False,
    storage: Annotated[Optional[str], typer.Option(help="Run the sweep as an Optuna study in this storage, its points "
                                                   "as trials, shared by any number of workers (e.g. "
                                                   "postgresql://USER@HOST/DB).")] = None,
    data_dir: DataDir = None,
    sweeps_dir: Annotated[Path, typer.Option(help="Where sweep folders are written.")] = Path("sweeps"),
    top: Annotated[int, typer.Option(help="Rows of the results table.")] = 15,
    quiet: Quiet = False,
    json_: Json = False,
    log: Log = None,
) -> None:
    """Train many configurations at once (grid, random or list), ranked by their mean over seeds."""
    from mnistlab import search

    spec = search.load_sweep(config)
    console.say(search.plan(spec, str(config)))
    if storage is not None:
        if resume:
            raise UserError("--resume goes without --storage: a sweep in a storage resumes by running it again")
        from mnistlab import tune as tune_lib

        space = tune_lib.sweep_as_study(spec)  # its trials are the points
        return _study(space, len(space.points), folder=sweeps_dir / spec.name, storage=storage,
                      settings=space.settings, data_dir=data_dir, timeout=None, quiet=quiet, log=log)
    with console.members_progress(quiet) as on_epoch:
        try:
            result = search.run_sweep(spec, data_dir=data_dir, sweeps_dir=sweeps_dir, resume=resume,
                                      on_epoch=on_epoch, log=log or [])
        except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: every finished epoch is checkpointed
            console.interrupted(f"the finished epochs are checkpointed in {getattr(stop, 'folder', sweeps_dir)}; "
                                f"continue with `mnistlab sweep {config} --resume`")
            raise typer.Exit(interrupt_code(stop)) from None
    console.sweep_results(spec, result, top)


def _study(space, trials: int, *, folder: Path, storage, settings, data_dir, timeout, quiet: bool, log) -> None:
    """Work on an Optuna study (tune, or a sweep in a storage) and print its trials, best first."""
    from mnistlab import tune as tune_lib

    with console.study_events(space, quiet) as on_event:
        result = tune_lib.run(space, trials, study_dir=folder, storage=storage, settings=settings,
                              data_dir=data_dir, timeout=timeout, on_event=on_event, log=log or [])
    console.study_results(space, result)
    if result.interrupted:
        console.interrupted("the trials in training were failed and queued again; run the same command to resume")
        raise typer.Exit(result.exit_code)


def tune(
    config: Annotated[Path, typer.Argument(help="A search space: a sweep TOML, plus an optional \\[tune] table.")],
    trials: Annotated[Optional[int], typer.Option(
        "--trials", min=1, help="Finished trials (complete, pruned or diverged) the study should reach; default: the "
                                "space's `trials`, or no more search with --final.")] = None,
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL that workers share, e.g. "
                                                   "postgresql://USER@HOST/DB (default: sqlite:///STUDY_DIR/study.db).")] = None,
    study_dir: Annotated[Optional[Path], typer.Option(help="The study folder (default: studies/NAME).")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="tpe (default), random, grid or cmaes.")] = None,
    pruner: Annotated[Optional[str], typer.Option(help="median (default), halving, hyperband or none.")] = None,
    batch: Annotated[Optional[int], typer.Option(min=1, help="Trials asked at once, trained as populations.")] = None,
    cost_aware: Annotated[Optional[bool], typer.Option(
        "--cost-aware/--no-cost-aware", help="TPE: weigh each candidate's promise against its cost to train "
                                             "(default: on).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="The sampler's seed (default: [tune] seed, else [search] "
                                                "seed).")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Worker processes on this machine, each on its "
                                                   "share of the CPU cores (default: [tune] workers, else 1).")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="A budget in seconds: then no new trials, and those "
                                                     "still training are stopped and queued again.")] = None,
    final: Annotated[bool, typer.Option("--final", help="Then retrain the best trial and test it, once per study.")] = False,
    with_validation: Annotated[bool, typer.Option("--with-validation", help="With --final: on train + validation.")] = False,
    retest: Annotated[bool, typer.Option("--retest", help="With --final: test again (recorded as a re-test).")] = False,
    data_dir: DataDir = None,
    quiet: Quiet = False,
    json_: Json = False,
    log: Log = None,
) -> None:
    """Search hyper-parameters with Optuna; resumable, shared by workers; the test set read once."""
    from mnistlab import tune as tune_lib

    space = tune_lib.load_tune(config)
    if (retest or with_validation) and not final:
        raise UserError("--retest and --with-validation go with --final")
    settings = tune_lib.with_options(space.settings, sampler=sampler, pruner=pruner, batch=batch, seed=seed,
                                     cost_aware=cost_aware, workers=workers)
    folder = study_dir or Path("studies") / space.name
    if trials is None and not final:
        trials = space.sweep.search.trials
    if trials is not None:
        _study(space, trials, folder=folder, storage=storage, settings=settings, data_dir=data_dir, timeout=timeout,
               quiet=quiet, log=log)
    if final:
        done = tune_lib.final(space, study_dir=folder, storage=storage, settings=settings,
                              with_validation=with_validation, retest=retest, data_dir=data_dir,
                              on_epoch=console.final_epochs(quiet))
        console.final_result(space.name, done)


def ablate(
    budget: Annotated[str, typer.Option(help="quick (minutes on 2 CPU cores), standard (the tutorial's sizes, "
                                        "about an hour), full (hours), or test (seconds, for the test suite).",
                                        autocompletion=complete("ablate", "BUDGETS"))] = "quick",
    seeds: Annotated[Optional[int], typer.Option(help="Seeds per variant (default: the budget's; at least 2).")] = None,
    max_seeds: Annotated[Optional[int], typer.Option(
        help="Sequential testing: a statement still open after --seeds that this many could decide is read "
             "again with twice the seeds, and so on up to this many (the looks share the 5%, so a verdict stays "
             "95% sure).")] = None,
    only: Annotated[Optional[list[str]], typer.Option(
        "--only", help="Run only these claims (repeatable or comma-separated): regularization, dropout, "
                       "activation, output, initialization, optimizer, decay, protocol, tutorial.")] = None,
    out_dir: Annotated[Path, typer.Option(help="Where ablation folders are written.")] = Path("ablations"),
    docs: Annotated[Optional[Path], typer.Option(help="Also write the report into this folder as "
                                                 "ablate-<budget>.md / .html (figures in ablate-<budget>/).")] = None,
    data_dir: DataDir = None,
    quiet: Quiet = False,
    json_: Json = False,
) -> None:
    """Measure the tutorial's claims over seeds: verdicts from 95% intervals, Markdown + HTML report."""
    from mnistlab import ablate_report

    try:
        with console.ablate_events(budget, quiet) as on_event:
            done = ablate_report.run_and_report(budget, seeds=seeds, max_seeds=max_seeds, only=only, out_dir=out_dir,
                                                docs=docs,
                                                data_dir=str(data_dir) if data_dir else None, on_event=on_event)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: an ablation keeps no partial results
        console.interrupted("an ablation is written whole at its end; nothing was written")
        raise typer.Exit(interrupt_code(stop)) from None
    console.verdicts(done)


def evaluate(
    run: Run,
    split: Annotated[str, typer.Option(help="test, validation or train.",
                                       autocompletion=complete("training", "SPLITS"))] = "test",
    data_dir: DataDir = None,
    json_: Json = False,
) -> None:
    """Evaluate a trained run on a split; a test evaluation is recorded in its summary."""
    from mnistlab import training

    console.evaluation(run, split, training.evaluate(run, split, data_dir))
