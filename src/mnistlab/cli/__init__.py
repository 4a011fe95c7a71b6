"""The `mnistlab` command: parse, call one flow of the package (callable from Python
alike), show what it reports through `console`. Exit codes: 0 ok, 2 bad input, 1 a bug.

The commands live by what they do (`experiments`: train, sweep, tune, ablate, evaluate;
`catalog`: runs, summary, presets, datasets; `models`: predict, robustness, serve, export,
import, report, plot, compare), the options several share in `options`; each is a few lines that
parse, call one flow and show what it reports. They are registered below, in the order
`mnistlab --help` lists them.
"""

from __future__ import annotations

import sys
import warnings
from typing import Annotated

import typer

from mnistlab import console
from mnistlab.cli import catalog, experiments, models
from mnistlab.errors import UserError, raise_on_sigterm

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=console.version, is_eager=True,
                                                help="Print mnistlab's version and exit.")] = False) -> None:
    """Dense networks on MNIST with exact Keras semantics, trained fast."""


for command in (experiments.train, experiments.sweep, experiments.tune, experiments.ablate, experiments.evaluate):
    app.command()(command)
app.command("runs")(catalog.runs_)
for command in (catalog.summary, catalog.presets, catalog.datasets, models.predict, models.robustness, models.serve,
                models.export):
    app.command()(command)
app.command("import")(models.import_)
for command in (models.report, models.plot, models.compare):
    app.command()(command)


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
