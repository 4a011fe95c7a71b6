"""What several commands take, written once: the data folder, --quiet, --json, --preset,
--set, --log, and the shell completers behind them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mnistlab import console

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
