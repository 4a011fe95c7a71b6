"""What `mnistlab` shows in a terminal: Keras' epoch lines, progress bars, result tables.

The commands (`cli`) parse and call; the flows they call report through callbacks
(`on_epoch`, `on_progress`, `on_event`), and this module turns those into lines, bars
and tables with rich. Nothing here computes a figure: every number comes in as data.

With `--json` (`for_scripts`) every line, bar and table goes to stderr, and what a
command ends with is also gathered (`emit`) into one JSON object that `flush_json`
writes on stdout: `mnistlab train --json | jq .run_dir`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.table import Column, Table
from rich.text import Text

from mnistlab import training

# soft_wrap: a Keras line or a path is never broken across lines when piped to a file.
stdout = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
out = stdout  # where people read; stderr under --json, so stdout holds the JSON object only
_json: dict[str, Any] | None = None  # the object --json writes, gathered while the command runs


def for_scripts(on: bool) -> bool:
    """The `--json` option's callback: human output to stderr, the figures to `emit`."""
    global out, _json
    out, _json = (err, {}) if on else (stdout, None)
    return on


def emit(**fields: Any) -> None:
    """Add fields to the JSON object (under --json; otherwise nothing)."""
    if _json is not None:
        _json.update(fields)


def flush_json() -> None:
    """Write the gathered object on stdout, once, as the command ends (even on an error)."""
    global _json
    if _json:
        # default=str: paths; NaN stays NaN (a diverged figure), which json.load reads back.
        sys.stdout.write(json.dumps(_json, default=str) + "\n")
        sys.stdout.flush()
    _json = None if _json is None else {}


def say(text: str) -> None:
    out.print(text, highlight=False)


def warn(text: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {text}", highlight=False)


def error(text: str) -> None:
    err.print(f"[red]error:[/red] {text}", highlight=False)
    emit(error=text)


def interrupted(text: str) -> None:
    err.print(f"interrupted: {text}", highlight=False)


def version(shown: bool) -> None:
    """The `--version` option's callback."""
    if shown:
        from mnistlab import runs

        say(f"mnistlab {runs.VERSION}")
        raise SystemExit(0)


def completer(module: str, names: str, prefix: str = "") -> Callable[[str], list[str]]:
    """A shell completer offering what `mnistlab.<module>.<names>` lists (a function, a
    mapping or a tuple), each after `prefix`; the module is imported only when a TAB asks."""
    def complete(incomplete: str) -> list[str]:
        import importlib

        found = getattr(importlib.import_module(f"mnistlab.{module}"), names)
        return [c for c in (prefix + n for n in (found() if callable(found) else found)) if c.startswith(incomplete)]

    return complete


def listing(header: tuple[str, ...], rows) -> None:
    """A plain table: `mnistlab presets`, `mnistlab datasets`."""
    table = Table(*header)
    for row in rows:
        table.add_row(*row)
    out.print(table)


# ------------------------------------------------------------------ train, evaluate, runs


@contextmanager
def epochs_progress(epochs: int, quiet: bool) -> Iterator[tuple[Callable, Callable]]:
    """(on_epoch, on_progress) for `training.train`: a bar over the steps of the epoch in
    progress, Keras' line for each finished one."""
    with Progress(TextColumn("[bold]Epoch {task.fields[epoch]}/" + str(epochs)), BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), console=out, transient=True,
                  disable=quiet) as bar:
        task = bar.add_task("train", total=None, epoch=1)

        def on_progress(p) -> None:
            bar.update(task, completed=p.steps_done, total=p.steps_total, epoch=p.epoch)

        def on_epoch(record: dict[str, Any]) -> None:
            if not quiet:
                bar.console.print(training.keras_line(record, epochs))
            bar.reset(task, epoch=record["epoch"] + 1)

        yield on_epoch, on_progress


def run_summary(summary: dict[str, Any], run_dir: Path | None) -> int:
    """The table `mnistlab train` ends with, and why it ended early; returns the exit code:
    2 for a diverged run (the configuration is the thing to fix), 130 / 143 after Ctrl-C /
    SIGTERM, else 0."""
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
    emit(run_dir=run_dir, name=summary["name"], status=summary["status"], epochs=summary["epochs_completed"],
         final=final, best_epoch=summary.get("best_epoch"), test=summary.get("test"),
         wall_seconds=summary["wall_seconds"])
    if summary["status"] == "diverged":
        err.print(f"[red]diverged[/red] at epoch {summary['diverged_at_epoch']}: {summary['hint']}")
        return 2
    if summary["status"] == "interrupted":
        err.print(f"interrupted ({summary['interrupted_by']}): the epochs already finished are recorded")
        return 143 if summary["interrupted_by"] == "SIGTERM" else 130
    return 0


def model_summary(summary) -> None:
    """`mnistlab summary`: Keras' model.summary() table and its totals."""
    out.print(summary.table())
    for line in summary.totals():
        say(line)
    emit(layers=[vars(r) for r in summary.rows], total=summary.total, trainable=summary.trainable,
         non_trainable=summary.non_trainable)


def evaluation(run_dir: Path, split: str, result: dict[str, Any]) -> None:
    say(f"{split}: loss {result['loss']:.4f} - accuracy {result['accuracy']:.4f} ({result['samples']} samples)")
    emit(run_dir=run_dir, split=split, **result)


def robustness(run_dir: Path, result) -> None:
    """`mnistlab robustness`: accuracy per family and severity, held-out families marked."""
    table = Table("family", "", *(f"severity {s}" for s in (1, 2, 3)), title=f"{result.split} accuracy under corruption")
    for row in result.table():
        held = {True: "held out", False: "", None: ""}[row["held_out"]]
        values = [f"{row[f'severity {s}']:.2%}" for s in (1, 2, 3)]
        table.add_row(f"{row['family']} ({row['description']})", held, *(values[:1] if row["family"] == "clean" else values))
    out.print(table)
    if result.held_out_mean() is not None:
        say(f"held-out families at middle severity: {result.held_out_mean():.2%} (clean {result.clean:.2%})")
    emit(run_dir=run_dir, **result.as_dict())


def run_listing(rows: list[dict[str, Any]]) -> None:
    """`mnistlab runs`: one line per run, newest first."""
    # no_wrap: a folder name is copied whole, never folded
    table = Table(Column("run", no_wrap=True), "status", "epochs", "val_accuracy", "test_accuracy", "started")
    for r in rows:
        status = r["status"] if r["status"] != "unreadable" else f"[red]unreadable[/red]: {r['problem']}"
        table.add_row(Path(r["run_dir"]).name, status, _optional(r["epochs"]), _optional(r["val_accuracy"]),
                      _optional(r["test_accuracy"]), r["started"])
    out.print(table)
    emit(runs=rows)


def _optional(value: Any) -> str:
    return "-" if value is None else _value_text(value)


# ------------------------------------------------------------------ sweeps and studies


def short(name: str, names: list[str]) -> str:
    """The shortest dotted suffix of `name` that no other name ends with."""
    parts = name.split(".")
    for k in range(1, len(parts) + 1):
        tail = ".".join(parts[-k:])
        if sum(n.endswith(tail) for n in names) == 1:
            return tail
    return name


def _columns(names: list[str], fixed: list[str]) -> list[str]:
    """Short, unique column titles for parameter paths; none repeats a fixed column."""
    titles = [short(n, names) for n in names]
    return [n if t in fixed or titles.count(t) > 1 else t for n, t in zip(names, titles)]


def _value_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _ranked(title: str, names: list[str], before: list[str], after: list[str],
            rows: list[tuple[list[str], dict[str, Any], list[str]]]) -> None:
    """A table of points or trials: fixed columns, one per parameter, fixed columns."""
    table = Table(title=title)
    for column in [*before, *_columns(names, before + after), *after]:
        table.add_column(column, justify="right", no_wrap=True)
    for first, params, last in rows:
        table.add_row(*first, *[_value_text(params.get(n)) for n in names], *last)
    out.print(table)


@contextmanager
def members_progress(quiet: bool) -> Iterator[Callable[[dict[str, Any]], None]]:
    """on_epoch for `search.run_sweep`: members done, the part and epoch, the best so far."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[done]}"),
               TextColumn("best {task.fields[best]}"), TimeRemainingColumn())
    with Progress(*columns, console=out, transient=True, disable=quiet) as bar:
        task = bar.add_task("members", total=None, done="", best="-")

        def on_epoch(p: dict[str, Any]) -> None:
            best = "-" if p["best"] is None else f"{p['best']:.4f}"
            bar.update(task, completed=p["members_done"], total=p["members"], best=best,
                       done=f"{p['members_done']}/{p['members']} done, part {p['part']} epoch {p['epoch']}/{p['epochs']}")

        yield on_epoch


def sweep_results(spec, result, top: int) -> None:
    """The points, best mean first, and where everything was written."""
    from mnistlab import search

    for message in result.summary["messages"]:
        say(message)
    names = list(dict.fromkeys(n for p in result.points for n in p["params"]))
    value = f"{spec.metric} (mean ± 95% CI)" if spec.seeds > 1 else spec.metric
    rows = []
    for row in result.points[:top]:
        shown = "-" if not row["n"] else f"{row['mean']:.4f}"
        if row["n"] > 1:
            shown += f" ± {(row['ci_high'] - row['ci_low']) / 2:.4f}"
        rows.append(([str(row["point"])], row["params"], [str(row["n"]), str(row["diverged"]), shown]))
    _ranked(f"{spec.name}: best mean {spec.metric} first", names, ["point"], ["seeds", "diverged", value], rows)
    s, best = result.summary, result.best
    say(f"{s['completed']} completed, {s['stopped']} stopped early, {s['diverged']} diverged in "
        f"{s['seconds']:.1f} s; best point {s['best_point']['point']}: {result.path / 'best'} holds its seed "
        f"{best['seed']} (member {best['member']}), the one closest to the point's mean; per point: "
        f"{result.path / search.POINTS_CSV}, per member: {result.path / search.RESULTS_CSV}")
    emit(sweep_dir=result.path, metric=spec.metric, best_run=result.path / "best", best_point=s["best_point"],
         completed=s["completed"], stopped=s["stopped"], diverged=s["diverged"], seconds=s["seconds"],
         points=result.points)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"


def time_left(elapsed: float | None, done: float, left: float | None) -> float | None:
    """Seconds left at the average pace so far; None before the first step is done."""
    if elapsed is None or left is None or done <= 0:
        return None
    return elapsed / done * left


class PaceColumn(ProgressColumn):
    """Time left at the bar's average pace since it started (or was reset).

    Not rich's TimeRemainingColumn: that one divides by the speed of the last 30 seconds,
    and trials, claims and epochs end minutes apart, several at once (a batch's trials at
    the same epoch), which makes its estimate blank or wildly short. A bar resumed part-way
    (a study's trials finished before this worker came) says so in its field `since`: those
    steps were not done at this pace.
    """

    max_refresh = 0.5  # as rich's: no jitter

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        seconds = time_left(task.elapsed, task.completed - task.fields.get("since", 0), task.remaining)
        return Text("-:--:--" if seconds is None else _clock(seconds), style="progress.remaining")


def _bars(quiet: bool) -> Progress:
    """Transient bars where people read (`out`); lines print above them through `bar.console`."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[note]}"), PaceColumn(), console=out, transient=True, disable=quiet)


def _printer_above(bar: Progress, quiet: bool) -> Callable[[str], None]:
    """say(), for lines shown above `bar` while it runs; nothing when quiet."""
    def say_above(text: str) -> None:
        if not quiet:
            bar.refresh()  # the bars drawn under the line as they stand now, not at the last tick
            bar.console.print(text, highlight=False)

    return say_above


def _trial_line(e: dict[str, Any], metric: str, names: list[str], target: int) -> str:
    value = "-" if e["value"] is None else f"{e['value']:.4f}"
    best = "" if e["best_value"] is None else f" - best {e['best_value']:.4f} (trial {e['best_trial']})"
    params = ", ".join(f"{short(k, names)}={v:.3g}" if isinstance(v, float) else f"{short(k, names)}={v}"
                       for k, v in e["params"].items())
    return (f"trial {e['trial']} {e['status']}: {metric} {value} after {e['epochs']} epochs{best} - "
            f"{e['finished']}/{target} - {params}")


@contextmanager
def study_events(space, quiet: bool) -> Iterator[Callable[[dict[str, Any]], None]]:
    """on_event for `tune.run`: the plan, a line per finished trial and batch, one per wait,
    above two bars: the study's finished trials (of the target) and the epochs of the
    batch in training. Quiet: nothing."""
    metric, names = space.sweep.metric, space.names
    with _bars(quiet) as bar:
        trials = bar.add_task("trials", total=None, note="", since=0)
        epochs = bar.add_task("epochs", total=None, note="", visible=False)
        target, waiting, resumed = [0], [False], [False]
        say_above = _printer_above(bar, quiet)

        def finished(done: int, of: int) -> None:
            if not resumed[0]:  # the trials finished before this run were not done at its pace
                resumed[0] = True
                bar.reset(trials, total=of, completed=done, since=done, note="")  # reset replaces the fields
            bar.update(trials, total=of, completed=done)

        def on_event(e: dict[str, Any]) -> None:
            kind = e["event"]
            if kind == "wait":
                finished(e["finished"], e["target"])
                if not waiting[0]:  # once per wait: the other workers' trials fill the count
                    say_above(f"waiting: {e['running']} trial(s) of other workers running, {e['finished']}/"
                              f"{e['target']} finished")
                waiting[0] = True
                return
            waiting[0] = False
            if kind == "start":
                target[0] = e["trials"]
                bar.update(trials, total=e["trials"])
                say_above(f"{space.name}: {e['trials']} trials, sampler {e['sampler']}, pruner {e['pruner']}, "
                          f"batch {e['batch']}, ranked by {metric}; study folder {e['folder']}")
            elif kind == "batch":
                finished(e["finished"], e["target"])
                numbers = ", ".join(map(str, e["trials"]))
                bar.reset(epochs, total=e["epochs"], visible=True,
                          description=f"epochs, trials {numbers}", note="")
                say_above(f"training trials {numbers} ({e['finished']}/{e['target']} finished)")
            elif kind == "epoch":
                bar.update(epochs, completed=e["epoch"], note=f"{e['running']} training")
            elif kind == "trial":
                bar.update(trials, completed=e["finished"])
                say_above(_trial_line(e, metric, names, target[0]))
            elif kind == "message":
                say_above(e["text"])
            elif kind == "worker":  # one of `--workers N` (tune_pool), as it started
                say_above(f"worker {e['pid']} on CPU core(s) {', '.join(map(str, e['cores']))}")
            elif kind == "done":
                bar.update(epochs, visible=False)

        yield on_event


def study_results(space, result) -> None:
    """The trials, best first, the counts, and where the study lives."""
    metric, names = space.sweep.metric, space.names
    rows = [([str(row["trial"]), row["status"]], row["params"],
             [str(row["epochs"]), "-" if row.get(metric) is None else f"{row[metric]:.4f}"])
            for row in result.trials[:15]]
    _ranked(f"{space.name}: best {metric} first", names, ["trial", "status"], ["epochs", metric], rows)
    c, s = result.counts, result.summary
    say(f"{c.complete} complete, {c.pruned} pruned, {c.failed} failed ({c.diverged} diverged); best {metric} "
        f"{'-' if s['best_value'] is None else format(s['best_value'], '.4f')} (trial {s['best_trial']}); "
        f"study folder {result.path}; open it live: {s['dashboard']}")
    emit(study_dir=result.path, storage=result.storage, metric=metric, best_value=s["best_value"],
         best_trial=s["best_trial"], counts=vars(c), trials=result.trials)


def final_epochs(quiet: bool) -> Callable[[dict[str, Any]], None] | None:
    """on_epoch for `tune.final`: the retraining's Keras lines, marked as the final's."""
    return None if quiet else (lambda r: say("final: " + training.keras_line(r, r["epochs"])))


def final_result(space_name: str, done) -> None:
    """`tune --final`: the retrained best trial's test figures, or why the test set was not read again."""
    from mnistlab import tune

    r = done.record
    test = r.get("test") or {}
    figures = (f"test accuracy {test['accuracy']:.4f}, loss {test['loss']:.4f}" if test
               else f"no test figure ({r.get('status')})")
    if done.again:
        say(f"the test set was already used for study '{space_name}' at {r['at']}: {figures} (trial "
            f"{r['trial']}, run {r.get('run', '-')}). Not evaluated again: pass --retest to evaluate again "
            "(it is recorded).")
    else:
        again = f" (re-test #{r['evaluation']})" if r["retest"] else ""
        say(f"final{again}: trial {r['trial']} retrained on {r['data']}: {figures}; run {r['run']}; "
            f"recorded in {done.path / tune.FINAL}")
    emit(study_dir=done.path, final={**r, "tested_now": not done.again})


# ------------------------------------------------------------------ ablate


@contextmanager
def ablate_events(budget: str, quiet: bool) -> Iterator[Callable[[dict[str, Any]], None]]:
    """on_event for `ablate.run`: the plan, each claim as it starts and its verdicts, above
    three bars: the claims done (of those run), the claim's members done (and its group in
    training) and that group's epochs. Quiet: nothing."""
    with _bars(quiet) as bar:
        claims = bar.add_task("claims", total=None, note="")
        members = bar.add_task("members", total=None, note="", visible=False)
        epochs = bar.add_task("epochs", total=None, note="", visible=False)
        say_above = _printer_above(bar, quiet)

        def on_event(e: dict[str, Any]) -> None:
            kind = e["event"]
            if kind == "start":
                bar.update(claims, total=e["claims"])
                say_above(f"ablate, budget {budget}: {e['claims']} claims, {e['seeds']} seeds ({e['expected']})")
            elif kind == "claim":
                bar.update(claims, note=e["claim"])
                bar.reset(members, total=e.get("members"), visible=True, note="")
                bar.update(epochs, visible=False)
                say_above(f"[bold]{e['claim']}[/bold]: {e['title']}")
            elif kind == "another look":
                bar.reset(members, total=e["members"], visible=True, note="")
                open_ = f"{e['statements']} statement{'s' if e['statements'] != 1 else ''} open"
                say_above(f"  look {e['look']}, {open_}: {e['members']} members more, up to {e['seeds']} seeds")
            elif kind == "group":
                bar.update(members, note=f"group {e['group']}/{e['groups']}")
                bar.reset(epochs, total=e["epochs"], visible=True, note=f"{e['members']} members")
                say_above(f"  group {e['group']}/{e['groups']}: {e['members']} members x {e['epochs']} epochs")
            elif kind == "epoch":
                bar.update(members, total=e["members"], completed=e["members_done"])
                bar.update(epochs, total=e["epochs"], completed=e["epoch"])
            elif kind == "claim done":
                bar.advance(claims)
                bar.update(members, visible=False)
                bar.update(epochs, visible=False)
                counts = {v: e["verdicts"].count(v) for v in dict.fromkeys(e["verdicts"])}
                say_above(f"  done in {e['seconds']:.0f} s: " + ", ".join(f"{n} {v}" for v, n in counts.items()))

        yield on_event


def verdicts(done) -> None:
    """Every comparison's interval and verdict, and where the results and reports are."""
    from mnistlab import ablate, ablate_report

    table = Table("claim", "statement", f"difference [{ablate_report.level_text(done.results)} CI]", "verdict",
                  title="verdicts")
    for claim in done.results["claims"]:
        for c in claim["comparisons"]:
            table.add_row(claim["key"], c["statement"], ablate_report.difference_text(c), c["verdict"])
    out.print(table)
    say(f"{done.results['seconds'] / 60:.1f} minutes; results in {done.folder / ablate.RESULTS}; report: "
        + ", ".join(map(str, done.written)))
    emit(ablation_dir=done.folder, results=done.folder / ablate.RESULTS, reports=done.written,
         seconds=done.results["seconds"],
         verdicts=[{"claim": claim["key"], "statement": c["statement"], "difference": c["difference"],
                    "verdict": c["verdict"]} for claim in done.results["claims"] for c in claim["comparisons"]])


# ------------------------------------------------------------------ compare


def comparison(c: dict[str, Any]) -> None:
    """`report.compare`'s final figures and differing settings, a column per run."""
    from mnistlab import report

    for path, status in zip(c["paths"], dict(c["table"])["status"]):
        if status in ("running", "killed"):
            warn(f"{path} is unfinished ({status}): its figures are of the epochs it recorded")
    table = Table("", *c["labels"], title="final figures")
    for key, values in c["table"]:
        table.add_row(key, *[report.fmt(v, 2 if "seconds" in key else 4) for v in values])
    out.print(table)
    if c["differing"]:
        diff = Table("setting", *c["labels"], title="settings that differ")
        diff.columns[0].overflow = "fold"
        for key, values in c["differing"]:
            diff.add_row(key, *[report.fmt_param(v) for v in values])
        out.print(diff)
    emit(runs=[{"run_dir": path, **{key: values[i] for key, values in c["table"]}} for i, path in enumerate(c["paths"])],
         differing={key: values for key, values in c["differing"]})


def serving(host: str) -> Callable[[str, Any], None]:
    """on_ready for `serve.serve`: where it listens, and a warning when that is not loopback."""
    def ready(url: str, predictor) -> None:
        say(f"serving {predictor.spec.name} ({predictor.source}) at {url}  (Ctrl+C stops)")
        if host not in ("127.0.0.1", "localhost", "::1"):
            warn(f"listening on {host}: other machines can reach it")
        sys.stdout.flush()

    return ready


# ------------------------------------------------------------------ predict


def predictions(predictor, results: Iterator, top: int, as_json: bool) -> int:
    """One line per image (JSON Lines with `as_json`), errors in their place; returns how
    many images could not be used. Plain writes: 10,000 lines through rich cost seconds."""
    count = 0
    import json

    from mnistlab.errors import UserError

    failed = 0
    write = sys.stdout.write
    for name, pixels, result, logits in results:
        count += 1
        if isinstance(result, UserError):
            failed += 1
            if as_json:
                write(json.dumps({"file": name, "error": getattr(result, "code", "error"), "detail": str(result)}) + "\n")
            else:
                sys.stdout.flush()
                error(str(result))
            continue
        best, sure = predictor.top(result, top), predictor.assess(result, image=pixels, logits=logits)
        if as_json:
            write(json.dumps({"file": name, "class": best[0][0], "label": predictor.label(best[0][0]),
                              "top": [{"class": c, "label": predictor.label(c), "probability": p} for c, p in best],
                              "probabilities": [float(p) for p in result], **sure}) + "\n")
        else:
            doubt = f"  - unsure: {predictor.label(best[0][0])}? could be {sure['runner_up']['label']}" \
                if sure["unsure"] else ""
            if sure["not_a_digit"]:  # says more than "unsure": no digit to be sure of
                doubt = f"  - not a digit? ({sure['not_a_digit_reason']})"
            write(f"{name}: " + "  ".join(f"{predictor.label(c)} ({p:.4f})" for c, p in best) + doubt + "\n")
    sys.stdout.flush()
    if failed:
        err.print(f"{failed} of {count} images could not be used (see the errors above)", highlight=False)
    return failed
