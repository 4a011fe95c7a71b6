"""The commands that list and describe: runs, summary, presets, datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mnistlab import console
from mnistlab.cli.options import DataDir, Json, Preset, Set


def runs_(folder: Annotated[Path, typer.Argument(help="A folder of runs.")] = Path("runs"), json_: Json = False) -> None:
    """List the runs in a folder, newest first: status, epochs, accuracies, start."""
    from mnistlab import runs

    console.run_listing(runs.listing(folder))


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


def presets() -> None:
    """List the named configurations."""
    from mnistlab import spec as spec_lib

    console.listing(("preset", "what it is"), spec_lib.presets().items())


def datasets(data_dir: DataDir = None) -> None:
    """List the known datasets and where each is found now."""
    from mnistlab import data

    console.listing(("dataset", "classes", "found at", "description"), [
        (name, str(info.num_classes), str(data.locate_status(name, data_dir) or
                                          "[dim]not here (downloads on first use)[/dim]"), info.description)
        for name, info in data.DATASETS.items()])
