"""The `mnistlab` command: parse, call, print. Exit codes: 0 ok, 2 bad input, 1 a bug."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mnistlab.errors import UserError, interrupt_code, raise_on_sigterm

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Dense networks on MNIST with exact Keras semantics, trained fast.")
# soft_wrap: a Keras line or a path is never broken across lines when piped to a file.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DataDir = Annotated[Optional[Path], typer.Option("--data-dir", help="Folder holding the dataset files.")]


def _keras_line(record: dict, epochs: int) -> str:
    parts = [f"Epoch {record['epoch']}/{epochs}", f"{record['seconds']:.2f}s"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in record:
            parts.append(f"{key}: {record[key]:.4f}")
    parts.append(f"learning_rate: {record['learning_rate']:.4g}")
    return " - ".join(parts)


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Argument(help="A TOML run specification.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="A named configuration (see `mnistlab presets`).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override: section.key=value (repeatable).")] = None,
    data_dir: DataDir = None,
    runs_dir: Annotated[Path, typer.Option(help="Where run folders are written.")] = Path("runs"),
    test: Annotated[bool, typer.Option("--test", help="Evaluate once on the test set at the end.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the final table.")] = False,
    log: Annotated[Optional[list[str]], typer.Option(
        "--log", help="Also log to tensorboard[:DIR] or mlflow[:URI] (repeatable; extras "
                      "mnistlab[tensorboard], mnistlab[mlflow]).")] = None,
) -> None:
    """Train a network and record it in a run folder."""
    from mnistlab import spec as spec_lib
    from mnistlab import tracking
    from mnistlab.training import train as run_training

    if config is not None and preset is not None:
        raise UserError("give either CONFIG or --preset, not both")
    spec = spec_lib.load(config) if config is not None else spec_lib.preset(preset or "seed")
    spec = spec_lib.with_overrides(spec, set_ or [])
    epochs = spec.training.epochs
    loggers = tracking.create(log or [], spec, runs_dir)  # opened now: a bad target fails before training
    warn = lambda message: err.print(f"[yellow]warning:[/yellow] {message}", highlight=False)  # noqa: E731
    tracked = tracking.chain(loggers, warn)

    with Progress(TextColumn("[bold]Epoch {task.fields[epoch]}/" + str(epochs)), BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), console=out, transient=True,
                  disable=quiet) as bar:
        task = bar.add_task("train", total=None, epoch=1)

        def on_progress(p):
            bar.update(task, completed=p.steps_done, total=p.steps_total, epoch=p.epoch)

        def on_epoch(record):
            if not quiet:
                bar.console.print(_keras_line(record, epochs))
            tracked(record)
            bar.reset(task, epoch=record["epoch"] + 1)

        try:
            result = run_training(spec, data_dir=data_dir, runs_dir=runs_dir, test=test,
                                  on_epoch=on_epoch, on_progress=on_progress)
        except BaseException:
            tracking.finish(loggers, "failed", {}, None, warn)
            raise
    tracking.finish(loggers, result.status, result.summary, result.run_dir, warn)
    _print_summary(result.summary, result.run_dir)
    if result.status == "diverged":
        err.print(f"[red]diverged[/red] at epoch {result.summary['diverged_at_epoch']}: {result.summary['hint']}")
        raise typer.Exit(2)  # the configuration is the thing to fix
    if result.status == "interrupted":
        err.print(f"interrupted ({result.summary['interrupted_by']}): the epochs already finished are recorded")
        raise typer.Exit(143 if result.summary["interrupted_by"] == "SIGTERM" else 130)


def _print_summary(summary: dict, run_dir: Path | None) -> None:
    table = Table(title=f"{summary['name']}: {summary['status']}", show_header=True)
    table.add_column("")
    table.add_column("value", justify="right")
    final = summary.get("final") or {}
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in final:
            table.add_row(key, f"{final[key]:.4f}")
    if "test" in summary:
        table.add_row("test_loss", f"{summary['test']['loss']:.4f}")
        table.add_row("test_accuracy", f"{summary['test']['accuracy']:.4f}")
    table.add_row("epochs", f"{summary['epochs_completed']}/{summary['epochs_requested']}")
    if summary["seconds_per_epoch"]:
        table.add_row("seconds/epoch", f"{summary['train_seconds'] / summary['epochs_completed']:.2f}")
    table.add_row("compile seconds", f"{summary['compile_seconds']:.2f}")
    table.add_row("wall seconds", f"{summary['wall_seconds']:.2f}")
    out.print(table)
    if run_dir:
        out.print(f"recorded in {run_dir}")


def _short(name: str, names: list[str]) -> str:
    """The shortest dotted suffix of `name` that no other name ends with."""
    parts = name.split(".")
    for k in range(1, len(parts) + 1):
        tail = ".".join(parts[-k:])
        if sum(n.endswith(tail) for n in names) == 1:
            return tail
    return name


def _columns(names: list[str], fixed: list[str]) -> list[str]:
    """Short, unique column titles for parameter paths; none repeats a fixed column."""
    titles = [_short(n, names) for n in names]
    return [n if t in fixed or titles.count(t) > 1 else t for n, t in zip(names, titles)]


def _value_text(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the final table.")] = False,
) -> None:
    """Train many configurations at once (grid, random or list), ranked by their mean over seeds."""
    from mnistlab import populations, search

    spec = search.load_sweep(config)
    members = search.candidates(spec)
    search.check_metric(spec, members, str(config))
    points = len(members) // spec.seeds
    epochs = max(m.spec.training.epochs for m in members)
    out.print(f"{spec.name}: {points} points x {spec.seeds} seed(s) = {len(members)} members in "
              f"{len(populations.groups(members))} group(s), up to {epochs} epochs, ranked by mean {spec.metric}",
              highlight=False)
    if storage is not None:
        if resume:
            raise UserError("--resume goes without --storage: a sweep in a storage resumes by running it again")
        from mnistlab import tune as tune_lib

        space = tune_lib.sweep_as_study(spec)
        _study(space, len(members), folder=sweeps_dir / spec.name, storage=storage, settings=space.settings,
               data_dir=data_dir, timeout=None, quiet=quiet)
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[done]}"),
               TextColumn("best {task.fields[best]}"), TimeRemainingColumn())
    with Progress(*columns, console=out, transient=True, disable=quiet) as bar:
        task = bar.add_task("members", total=None, done="", best="-")

        def on_epoch(p):
            best = "-" if p["best"] is None else f"{p['best']:.4f}"
            bar.update(task, completed=p["members_done"], total=p["members"], best=best,
                       done=f"{p['members_done']}/{p['members']} done, part {p['part']} epoch {p['epoch']}/{p['epochs']}")

        try:
            result = search.run_sweep(spec, data_dir=data_dir, sweeps_dir=sweeps_dir, resume=resume,
                                      on_epoch=on_epoch)
        except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: every finished epoch is checkpointed
            err.print(f"interrupted: the finished epochs are checkpointed in {getattr(stop, 'folder', sweeps_dir)}; "
                      f"continue with `mnistlab sweep {config} --resume`", highlight=False)
            raise typer.Exit(interrupt_code(stop)) from None
    for message in result.summary["messages"]:
        out.print(message)
    names = list(dict.fromkeys(n for p in result.points for n in p["params"]))
    value = f"{spec.metric} (mean ± 95% CI)" if spec.seeds > 1 else spec.metric
    fixed = ["point", "seeds", "diverged", value]
    table = Table(title=f"{spec.name}: best mean {spec.metric} first")
    for column in ["point", *_columns(names, fixed), "seeds", "diverged", value]:
        table.add_column(column, justify="right", no_wrap=True)
    for row in result.points[:top]:
        shown = "-" if not row["n"] else f"{row['mean']:.4f}"
        if row["n"] > 1:
            shown += f" ± {(row['ci_high'] - row['ci_low']) / 2:.4f}"
        table.add_row(str(row["point"]), *[_value_text(row["params"].get(n)) for n in names],
                      str(row["n"]), str(row["diverged"]), shown)
    out.print(table)
    s, best = result.summary, result.best
    out.print(f"{s['completed']} completed, {s['stopped']} stopped early, {s['diverged']} diverged in "
              f"{s['seconds']:.1f} s; best point {s['best_point']['point']}: {result.path / 'best'} holds its seed "
              f"{best['seed']} (member {best['member']}), the one closest to the point's mean; per point: "
              f"{result.path / search.POINTS_CSV}, per member: {result.path / search.RESULTS_CSV}", highlight=False)


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="A run folder.")],
    split: Annotated[str, typer.Option(help="test, validation or train.")] = "test",
    data_dir: DataDir = None,
) -> None:
    """Evaluate a trained run on a split; a test evaluation is recorded in its summary."""
    import numpy as np

    from mnistlab import data, engine, runs
    from mnistlab.populations import split as split_data

    if split not in ("test", "validation", "train"):
        raise UserError(f"--split {split!r}: expected test, validation or train")
    record = runs.open_run(run)
    arrays = data.load(record.spec.dataset, data_dir)
    x_train, y_train, x_val, y_val = split_data(record.spec, arrays)
    images, labels = {"test": (arrays.test_images, arrays.test_labels), "train": (x_train, y_train),
                      "validation": (x_val, y_val)}[split]
    if len(labels) == 0:
        raise UserError(f"{run}: this run has no validation data (training.validation.fraction = 0)")
    result = engine.evaluate(record.spec, record.params(), images, labels)
    result = {"loss": float(result["loss"]), "accuracy": float(result["accuracy"]), "samples": int(len(labels))}
    runs.record_evaluation(record, split, result)
    out.print(f"{split}: loss {result['loss']:.4f} - accuracy {result['accuracy']:.4f} "
              f"({result['samples']} samples)")
    del np


@app.command()
def presets() -> None:
    """List the named configurations."""
    from mnistlab import spec as spec_lib

    table = Table("preset", "what it is")
    for name, description in spec_lib.presets().items():
        table.add_row(name, description)
    out.print(table)


@app.command()
def datasets(data_dir: DataDir = None) -> None:
    """List the known datasets and where each is found now."""
    from mnistlab import data

    table = Table("dataset", "classes", "found at", "description")
    for name, info in data.DATASETS.items():
        where = data.locate_status(name, data_dir)
        table.add_row(name, str(info.num_classes), str(where) if where else "[dim]not here (downloads on first use)[/dim]",
                      info.description)
    out.print(table)


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="A run folder.")],
    images: Annotated[list[str], typer.Argument(
        help="Image files (PNG, JPEG, BMP, GIF), folders of them, or - for one image on stdin.")],
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per image (JSON Lines).")] = False,
    top: Annotated[int, typer.Option("--top", min=1, help="How many classes to show per image.")] = 3,
    raw: Annotated[bool, typer.Option("--raw", help="Skip the MNIST preprocessing: 28x28 images, "
                                      "light digit on black, taken as they are.")] = False,
) -> None:
    """Predict the digit in image files (MNIST preprocessing: crop, 20x20, centre by mass)."""
    import json

    from mnistlab import predict as predict_lib

    predictor = predict_lib.Predictor.from_run(run)
    items = predict_lib.expand(images)
    if sum(path is None for _, path in items) > 1:
        raise UserError("- (stdin) can be given once: it holds one image")
    sources = [(name, path if path is not None else sys.stdin.buffer.read()) for name, path in items]
    top = min(top, predictor.num_classes)
    failed = 0
    write = sys.stdout.write  # plain writes: 10,000 lines through rich cost seconds
    for name, _, result in predict_lib.predict_files(predictor, sources, raw_input=raw):
        if isinstance(result, UserError):
            failed += 1
            if json_:
                write(json.dumps({"file": name, "error": getattr(result, "code", "error"), "detail": str(result)}) + "\n")
            else:
                sys.stdout.flush()
                err.print(f"[red]error:[/red] {result}", highlight=False)
            continue
        best = predictor.top(result, top)
        if json_:
            write(json.dumps({"file": name, "class": best[0][0], "label": predictor.label(best[0][0]),
                              "top": [{"class": c, "label": predictor.label(c), "probability": p} for c, p in best],
                              "probabilities": [float(p) for p in result]}) + "\n")
        else:
            write(f"{name}: " + "  ".join(f"{predictor.label(c)} ({p:.4f})" for c, p in best) + "\n")
    sys.stdout.flush()
    if failed:
        err.print(f"{failed} of {len(sources)} images could not be used (see the errors above)", highlight=False)
        raise typer.Exit(2)


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="A run folder.")],
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 opens it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port; 0 picks a free one.")] = 8000,
) -> None:
    """Serve a draw-a-digit page and a JSON API (POST /api/predict, GET /api/model)."""
    from mnistlab import serve as serve_lib

    def ready(url: str, predictor) -> None:
        out.print(f"serving {predictor.spec.name} ({predictor.source}) at {url}  (Ctrl+C stops)",
                  highlight=False)
        if host not in ("127.0.0.1", "localhost", "::1"):
            err.print(f"[yellow]warning:[/yellow] listening on {host}: other machines can reach it", highlight=False)
        sys.stdout.flush()

    serve_lib.serve(run, host=host, port=port, on_ready=ready)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="A run folder.")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="The file to write (model.onnx, weights.npz, ...).")],
    format_: Annotated[Optional[str], typer.Option("--format", help="onnx, safetensors or npz "
                                                   "(default: from --out's suffix).")] = None,
    input_type: Annotated[str, typer.Option(help="ONNX input: uint8 or float32 pixels 0..255.")] = "uint8",
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
) -> None:
    """Export the network: ONNX (image -> probabilities), or the weights as safetensors / npz."""
    from mnistlab import export as export_lib, runs

    fmt = export_lib.write(runs.open_run(run), out_path, format_, input_type=input_type, overwrite=force)
    out.print(f"wrote {out_path} ({fmt})", highlight=False)


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="A run, sweep or study folder.")],
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="The HTML file to write "
                                                     "(default: FOLDER/report.html).")] = None,
    data_dir: DataDir = None,
) -> None:
    """One self-contained HTML page about a run, sweep or study: curves, confusion, mistakes, weights."""
    from mnistlab import report as report_lib

    written = report_lib.write(folder, out_file, data_dir)
    out.print(f"wrote {written}", highlight=False)


@app.command()
def plot(
    run: Annotated[Path, typer.Argument(help="A run folder.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The picture to write (.png, .svg or .pdf).")],
    what: Annotated[str, typer.Option(help="curves, confusion, mistakes, weights, feature-maps (convolutional "
                                      "models), histograms or activity.")] = "curves",
    split: Annotated[Optional[str], typer.Option(help="validation or test, for confusion, mistakes and feature maps "
                                                 "(test: only when the run recorded a test evaluation).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Draw one picture of a run with matplotlib."""
    from mnistlab import report as report_lib

    report_lib.check_plot(what)
    if out_file.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UserError(f"--out {out_file}: give a .png, .svg or .pdf file name")
    if split not in (None, "validation", "test"):
        raise UserError(f"--split {split!r}: expected validation or test")
    data = report_lib.collect_run(run, data_dir, predictions=what not in ("curves", "histograms"))
    fig = report_lib.plot(data, what, split)
    if fig is None:
        why = {"test": "it recorded no test evaluation: run `mnistlab evaluate RUN --split test` first",
               "validation": "it has no validation set"}.get(split or "", "it has no weights or no evaluation data")
        if what == "feature-maps" and not any(layer.type == "conv2d" for layer in data.run.spec.model.layers):
            why = "it has no conv2d layer (feature maps are what a convolution outputs)"
        raise UserError(f"{run}: cannot draw {what}: {why}")
    if not out_file.parent.exists():
        raise UserError(f"--out {out_file}: the folder {out_file.parent} does not exist")
    fig.savefig(out_file, bbox_inches="tight", pad_inches=0.12)
    out.print(f"wrote {out_file}", highlight=False)


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more run folders.")],
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the comparison: "
                                                     ".html (a page) or .png (the curves).")] = None,
) -> None:
    """Final figures, differing settings and curves of several runs, side by side."""
    from mnistlab import figures, report as report_lib

    c = report_lib.compare(run_dirs)
    for path, status in zip(c["paths"], dict(c["table"])["status"]):
        if status in ("running", "killed"):
            err.print(f"[yellow]warning:[/yellow] {path} is unfinished ({status}): its figures are of the epochs "
                      "it recorded", highlight=False)
    table = Table("", *c["labels"], title="final figures")
    for key, values in c["table"]:
        table.add_row(key, *[report_lib.fmt(v, 2 if "seconds" in key else 4) for v in values])
    out.print(table)
    if c["differing"]:
        diff = Table("setting", *c["labels"], title="settings that differ")
        diff.columns[0].overflow = "fold"
        for key, values in c["differing"]:
            diff.add_row(key, *[report_lib.fmt_param(v) for v in values])
        out.print(diff)
    if out_file is not None:
        suffix = out_file.suffix.lower()
        if suffix == ".html":
            report_lib.write_html(out_file, report_lib.compare_page(run_dirs).html)
        elif suffix in (".png", ".svg", ".pdf"):
            figures.overlaid_curves(c["series"]).savefig(out_file, bbox_inches="tight", pad_inches=0.12)
        else:
            raise UserError(f"--out {out_file}: give a .html, .png, .svg or .pdf file name")
        out.print(f"wrote {out_file}", highlight=False)


def _study(space, trials: int, *, folder: Path, storage, settings, data_dir, timeout, quiet: bool) -> None:
    """Work on an Optuna study (tune, or a sweep in a storage) and print its trials, best first."""
    import json

    from mnistlab import tune as tune_lib

    metric = space.sweep.metric
    names = list(space.params) if space.points is None else list(
        dict.fromkeys(n for p in space.points for n in p))
    waiting = []

    def on_event(e):
        if quiet:
            return
        if e["event"] == "wait":
            if not waiting:  # once per wait: the other workers' trials fill the count
                out.print(f"waiting: {e['running']} trial(s) of other workers running, {e['finished']}/"
                          f"{e['target']} finished", highlight=False)
            waiting.append(e)
            return
        waiting.clear()
        if e["event"] == "trial":
            value = "-" if e["value"] is None else f"{e['value']:.4f}"
            best = "" if e["best_value"] is None else f" - best {e['best_value']:.4f} (trial {e['best_trial']})"
            params = ", ".join(f"{_short(k, names)}={v:.3g}" if isinstance(v, float) else f"{_short(k, names)}={v}"
                               for k, v in e["params"].items())
            out.print(f"trial {e['trial']} {e['status']}: {metric} {value} after {e['epochs']} epochs{best} - "
                      f"{e['finished']}/{trials} - {params}", highlight=False)
        elif e["event"] == "batch":
            out.print(f"training trials {', '.join(map(str, e['trials']))} ({e['finished']}/{e['target']} finished)",
                      highlight=False)
        elif e["event"] == "message":
            out.print(e["text"], highlight=False)

    out.print(f"{space.name}: {trials} trials, sampler {settings.sampler}, pruner {settings.pruner}, batch "
              f"{settings.batch}, ranked by {metric}; study folder {folder}", highlight=False)
    result = tune_lib.run(space, trials, study_dir=folder, storage=storage, settings=settings,
                          data_dir=data_dir, timeout=timeout, on_event=on_event)
    rows = json.loads((result.path / tune_lib.TRIALS_JSON).read_text())
    fixed = ["trial", "status", "epochs", metric]
    table = Table(title=f"{space.name}: best {metric} first")
    for column in ["trial", "status", *_columns(names, fixed), "epochs", metric]:
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows[:15]:
        value = row.get(metric)
        table.add_row(str(row["trial"]), row["status"], *[_value_text(row["params"].get(n)) for n in names],
                      str(row["epochs"]), "-" if value is None else f"{value:.4f}")
    out.print(table)
    c, s = result.counts, result.summary
    out.print(f"{c.complete} complete, {c.pruned} pruned, {c.failed} failed ({c.diverged} diverged); best {metric} "
              f"{'-' if s['best_value'] is None else format(s['best_value'], '.4f')} (trial {s['best_trial']}); "
              f"study folder {result.path}; open it live: {s['dashboard']}", highlight=False)
    if result.interrupted:
        err.print("interrupted: the trials in training were failed and queued again; run the same command "
                  "to resume")
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
    final: Annotated[bool, typer.Option("--final", help="Then retrain the best trial and evaluate it on the "
                                        "test set, once per study (recorded).")] = False,
    with_validation: Annotated[bool, typer.Option("--with-validation", help="With --final: retrain on "
                                                  "train + validation.")] = False,
    retest: Annotated[bool, typer.Option("--retest", help="With --final: evaluate on the test set again although "
                                         "this study already did (recorded as a re-test).")] = False,
    data_dir: DataDir = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the final table.")] = False,
) -> None:
    """Search hyper-parameters with Optuna; resumable, shared by workers; the test set read once."""
    from mnistlab import spec as spec_lib
    from mnistlab import tune as tune_lib

    space = tune_lib.load_tune(config)
    if (retest or with_validation) and not final:
        raise UserError("--retest and --with-validation go with --final")
    overrides = {k: v for k, v in {"sampler": sampler, "pruner": pruner, "batch": batch}.items() if v is not None}
    for key, known in (("sampler", ("tpe", "random", "grid", "cmaes")), ("pruner", ("median", "halving", "hyperband", "none"))):
        if key in overrides and overrides[key] not in known:
            raise UserError(f"--{key} {overrides[key]!r}: {spec_lib.suggest(overrides[key], known)} "
                            f"(one of {', '.join(known)})")
    settings = space.settings.model_copy(update=overrides)
    folder = study_dir or Path("studies") / space.name
    if trials is None and not final:
        trials = space.sweep.search.trials
    if trials is not None:
        _study(space, trials, folder=folder, storage=storage, settings=settings, data_dir=data_dir, timeout=timeout,
               quiet=quiet)
    if final:
        done = tune_lib.final(space, study_dir=folder, storage=storage, settings=settings,
                              with_validation=with_validation, retest=retest, data_dir=data_dir,
                              on_epoch=None if quiet else (lambda r: out.print("final: " + _keras_line(r, r["epochs"]),
                                                                              highlight=False)))
        r = done.record
        test = r.get("test") or {}
        figures = (f"test accuracy {test['accuracy']:.4f}, loss {test['loss']:.4f}" if test
                   else f"no test figure ({r.get('status')})")
        if done.again:
            out.print(f"the test set was already used for study '{space.name}' at {r['at']}: {figures} (trial "
                      f"{r['trial']}, run {r.get('run', '-')}). Not evaluated again: pass --retest to evaluate again "
                      "(it is recorded).", highlight=False)
        else:
            again = f" (re-test #{r['evaluation']})" if r["retest"] else ""
            out.print(f"final{again}: trial {r['trial']} retrained on {r['data']}: {figures}; run {r['run']}; "
                      f"recorded in {done.path / tune_lib.FINAL}", highlight=False)


@app.command()
def ablate(
    budget: Annotated[str, typer.Option(help="quick (under 20 minutes on 2 CPU cores), full (hours), "
                                        "or test (seconds, for the test suite).")] = "quick",
    seeds: Annotated[Optional[int], typer.Option(help="Seeds per variant (default: the budget's; at least 2).")] = None,
    only: Annotated[Optional[list[str]], typer.Option(
        "--only", help="Run only these claims (repeatable or comma-separated): regularization, dropout, "
                       "activation, output, initialization, optimizer, decay, protocol, tutorial.")] = None,
    out_dir: Annotated[Path, typer.Option(help="Where ablation folders are written.")] = Path("ablations"),
    docs: Annotated[Optional[Path], typer.Option(help="Also write the report into this folder as "
                                                 "ablate-<budget>.md / .html (figures in ablate-<budget>/).")] = None,
    data_dir: DataDir = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the final table.")] = False,
) -> None:
    """Measure the tutorial's claims over seeds: verdicts from 95% intervals, Markdown + HTML report."""
    from mnistlab import runs, study, study_report

    if budget not in study.BUDGETS:
        raise UserError(f"--budget {budget!r}: expected one of {', '.join(study.BUDGETS)}")
    plan = study.BUDGETS[budget]
    only = [k.strip() for item in only or [] for k in item.split(",") if k.strip()] or None
    selected = study.claims(plan, only)  # a bad --only fails before any training
    if docs is not None and not docs.is_dir():
        raise UserError(f"--docs {docs}: no such folder")
    say = (lambda text: None) if quiet else (lambda text: out.print(text, highlight=False))  # noqa: E731

    def on_event(e: dict) -> None:
        if e["event"] == "claim":
            say(f"[bold]{e['claim']}[/bold]: {e['title']}")
        elif e["event"] == "group":
            say(f"  group {e['group']}/{e['groups']}: {e['members']} members x {e['epochs']} epochs")
        elif e["event"] == "claim done":
            counts = {v: e["verdicts"].count(v) for v in dict.fromkeys(e["verdicts"])}
            say(f"  done in {e['seconds']:.0f} s: " + ", ".join(f"{n} {v}" for v, n in counts.items()))

    say(f"ablate, budget {budget}: {len(selected)} claims, {seeds or plan.seeds} seeds ({plan.expected})")
    try:
        results, kept = study.run(plan, seeds=seeds, only=only, data_dir=str(data_dir) if data_dir else None,
                                  on_event=on_event)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: an ablation keeps no partial results
        err.print("interrupted: an ablation is written whole at its end; nothing was written", highlight=False)
        raise typer.Exit(interrupt_code(stop)) from None
    folder = runs.new_run_dir(out_dir, f"ablate-{budget}")
    study.write_results(folder, results, kept)
    page = study_report.build(results, kept)
    study_report.write(page, folder / "report.md", folder / "report.html", "figures")
    written = [folder / "report.md", folder / "report.html"]
    if docs is not None:
        name = f"ablate-{budget}"
        study_report.write(page, docs / f"{name}.md", docs / f"{name}.html", name)
        written += [docs / f"{name}.md", docs / f"{name}.html"]
    table = Table("claim", "statement", "difference [95% CI]", "verdict", title="verdicts")
    for claim in results["claims"]:
        for c in claim["comparisons"]:
            table.add_row(claim["key"], c["statement"], study_report.difference_text(c), c["verdict"])
    out.print(table)
    out.print(f"{results['seconds'] / 60:.1f} minutes; results in {folder / study.RESULTS}; report: "
              + ", ".join(map(str, written)), highlight=False)


def _enable_compile_cache() -> None:
    """Keep XLA's compiled programs between runs (JAX's persistent cache).

    The second run of a configuration then skips compilation (measured: 1.7 s -> 0.4 s
    for the keras-mlp preset on 2 CPU cores). MNISTLAB_COMPILE_CACHE=0 turns it off.
    """
    import os

    if os.environ.get("MNISTLAB_COMPILE_CACHE", "1") == "0":
        return
    import jax
    import pooch

    root = os.environ.get("MNISTLAB_CACHE") or pooch.os_cache("mnistlab")
    jax.config.update("jax_compilation_cache_dir", str(Path(root) / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def main() -> None:
    _enable_compile_cache()
    raise_on_sigterm()  # SIGTERM stops a command as Ctrl-C does, keeping what is finished
    try:
        # Standalone mode: click reports usage errors itself (exit 2) and passes typer.Exit on.
        app()
    except UserError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
