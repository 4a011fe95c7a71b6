"""The `mnistlab` command: parse, call one flow of the package (callable from Python
alike), show what it reports through `console`. Exit codes: 0 ok, 2 bad input, 1 a bug."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from mnistlab import console
from mnistlab.errors import UserError, interrupt_code, raise_on_sigterm

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Dense networks on MNIST with exact Keras semantics, trained fast.")

DataDir = Annotated[Optional[Path], typer.Option("--data-dir", help="Folder holding the dataset files.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only the final table.")]
Run = Annotated[Path, typer.Argument(help="A run folder.")]
complete = console.completer  # shell completion: `mnistlab --install-completion` (bash, zsh, fish)
Json = Annotated[bool, typer.Option("--json", callback=console.for_scripts, help="One JSON object on stdout (the "
                                    "folder's path and the figures; keys in the README); the rest on stderr.")]
Preset = Annotated[Optional[str], typer.Option(help="A named configuration (see `mnistlab presets`).",
                                              autocompletion=complete("spec", "presets"))]
Set = Annotated[Optional[list[str]], typer.Option("--set", help="Override: section.key=value (repeatable).",
                                                  autocompletion=complete("data", "DATASETS", "dataset="))]
Log = Annotated[Optional[list[str]], typer.Option(
    "--log", help="Also log to tensorboard\\[:DIR], tensorboard+histograms\\[:DIR] or mlflow\\[:URI] (repeatable; "
                  "extras mnistlab\\[tensorboard], mnistlab\\[mlflow]).")]


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=console.version, is_eager=True,
                                                help="Print mnistlab's version and exit.")] = False) -> None:
    """Dense networks on MNIST with exact Keras semantics, trained fast."""


@app.command()
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


@app.command()
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


@app.command()
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
    settings = tune_lib.with_options(space.settings, sampler=sampler, pruner=pruner, batch=batch)
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


@app.command()
def ablate(
    budget: Annotated[str, typer.Option(help="quick (under 20 minutes on 2 CPU cores), full (hours), "
                                        "or test (seconds, for the test suite).",
                                        autocompletion=complete("ablate", "BUDGETS"))] = "quick",
    seeds: Annotated[Optional[int], typer.Option(help="Seeds per variant (default: the budget's; at least 2).")] = None,
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
            done = ablate_report.run_and_report(budget, seeds=seeds, only=only, out_dir=out_dir, docs=docs,
                                                data_dir=str(data_dir) if data_dir else None, on_event=on_event)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: an ablation keeps no partial results
        console.interrupted("an ablation is written whole at its end; nothing was written")
        raise typer.Exit(interrupt_code(stop)) from None
    console.verdicts(done)


@app.command()
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


@app.command("runs")
def runs_(folder: Annotated[Path, typer.Argument(help="A folder of runs.")] = Path("runs"), json_: Json = False) -> None:
    """List the runs in a folder, newest first: status, epochs, accuracies, start."""
    from mnistlab import runs

    console.run_listing(runs.listing(folder))


@app.command()
def summary(
    source: Annotated[Optional[Path], typer.Argument(help="A run folder or a TOML run specification.")] = None,
    preset: Preset = None,
    set_: Set = None,
    json_: Json = False,
) -> None:
    """Keras' model.summary(): each layer's output shape and weights; the totals, trainable or not."""
    import mnistlab
    from mnistlab import spec as spec_lib

    console.model_summary(mnistlab.summary(spec_lib.from_source(source, preset, set_ or [])))


@app.command()
def presets() -> None:
    """List the named configurations."""
    from mnistlab import spec as spec_lib

    console.listing(("preset", "what it is"), spec_lib.presets().items())


@app.command()
def datasets(data_dir: DataDir = None) -> None:
    """List the known datasets and where each is found now."""
    from mnistlab import data

    console.listing(("dataset", "classes", "found at", "description"), [
        (name, str(info.num_classes), str(data.locate_status(name, data_dir) or
                                          "[dim]not here (downloads on first use)[/dim]"), info.description)
        for name, info in data.DATASETS.items()])


@app.command()
def predict(
    run: Run,
    images: Annotated[list[str], typer.Argument(
        help="Image files (PNG, JPEG, BMP, GIF), folders of them, or - for one image on stdin.")],
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per image (JSON Lines).")] = False,
    top: Annotated[int, typer.Option("--top", min=1, help="How many classes to show per image.")] = 3,
    raw: Annotated[bool, typer.Option("--raw", help="Skip the MNIST preprocessing: 28x28 images, "
                                      "light digit on black, taken as they are.")] = False,
) -> None:
    """Predict the digit in image files (MNIST preprocessing: crop, 20x20, centre by mass)."""
    from mnistlab import predict as predict_lib

    predictor = predict_lib.Predictor.from_run(run)
    results = predict_lib.predict_files(predictor, predict_lib.expand(images), raw_input=raw)
    if console.predictions(predictor, results, min(top, predictor.num_classes), json_):
        raise typer.Exit(2)


@app.command()
def serve(
    run: Run,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 opens it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port; 0 picks a free one.")] = 8000,
) -> None:
    """Serve a draw-a-digit page and a JSON API (POST /api/predict, GET /api/model)."""
    from mnistlab import serve as serve_lib

    serve_lib.serve(run, host=host, port=port, on_ready=console.serving(host))


@app.command()
def export(
    run: Run,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="The file to write (model.onnx, weights.npz, ...).")],
    format_: Annotated[Optional[str], typer.Option("--format", help="onnx, safetensors, npz or keras "
                                                   "(default: from --out's suffix).")] = None,
    input_type: Annotated[str, typer.Option(help="ONNX input: uint8 or float32 pixels 0..255.")] = "uint8",
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
) -> None:
    """Export the network: ONNX or Keras (image -> probabilities), or the weights as safetensors / npz."""
    from mnistlab import export as export_lib, runs

    fmt = export_lib.write(runs.open_run(run), out_path, format_, input_type=input_type, overwrite=force)
    console.say(f"wrote {out_path} ({fmt})")


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="A Keras model file: model.keras (or model.h5).")],
    runs_dir: Annotated[Path, typer.Option(help="Where the run folder is written.")] = Path("runs"),
    dataset: Annotated[str, typer.Option(help="The dataset the model reads (see `mnistlab datasets`).",
                                         autocompletion=complete("data", "DATASETS"))] = "mnist",
) -> None:
    """Make a run folder from a Keras Sequential model: its layers, weights and compile settings."""
    from mnistlab import keras_io

    console.say(f"wrote {keras_io.import_run(file, runs_dir, dataset=dataset)}")


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="A run, sweep or study folder.")],
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="The HTML file to write "
                                                     "(default: FOLDER/report.html).")] = None,
    data_dir: DataDir = None,
) -> None:
    """One self-contained HTML page about a run, sweep or study: curves, confusion, mistakes, weights."""
    from mnistlab import report as report_lib

    console.say(f"wrote {report_lib.write(folder, out_file, data_dir)}")


@app.command()
def plot(
    run: Run,
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The picture to write (.png, .svg or .pdf).")],
    what: Annotated[str, typer.Option(help="curves, confusion, mistakes, weights, feature-maps (convolutional "
                                      "models), histograms or activity.",
                                      autocompletion=complete("report", "PLOTS"))] = "curves",
    split: Annotated[Optional[str], typer.Option(help="validation or test, for confusion, mistakes and feature maps "
                                                 "(test: only when the run recorded a test evaluation).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Draw one picture of a run with matplotlib."""
    from mnistlab import report as report_lib

    console.say(f"wrote {report_lib.write_plot(run, out_file, what, split, data_dir)}")


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more run folders.")],
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the comparison: "
                                                     ".html (a page) or .png (the curves).")] = None,
    json_: Json = False,
) -> None:
    """Final figures, differing settings and curves of several runs, side by side."""
    from mnistlab import report as report_lib

    console.comparison(report_lib.compare(run_dirs))
    if out_file is not None:
        console.say(f"wrote {report_lib.write_comparison(run_dirs, out_file)}")


def main() -> None:
    raise_on_sigterm()  # SIGTERM stops a command as Ctrl-C does, keeping what is finished
    warnings.showwarning = lambda message, *_, **__: console.warn(str(message))  # a logger that failed, ...
    try:
        # Standalone mode: click reports usage errors itself (exit 2) and passes typer.Exit on.
        app()
    except UserError as e:
        console.error(str(e))
        sys.exit(2)
    finally:
        console.flush_json()  # --json: the one object, also after an error or an interrupt


if __name__ == "__main__":
    main()
