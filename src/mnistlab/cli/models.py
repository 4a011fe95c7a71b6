"""The commands that use a trained network: predict, robustness, serve, export, import, report, plot, compare."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mnistlab import console
from mnistlab.cli.options import DataDir, Json, Run, complete


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


def robustness(
    run: Run,
    split: Annotated[str, typer.Option(help="test, or validation: the run's own held-out part (to choose "
                                       "a model by, the test set read once at the end).")] = "test",
    limit: Annotated[Optional[int], typer.Option(min=1, help="Only the first N images (a quick look; "
                                                 "not saved in the run).")] = None,
    seed: Annotated[int, typer.Option(help="The corruptions' random draws.")] = 0,
    json_: Json = False,
    data_dir: DataDir = None,
) -> None:
    """Accuracy on digits unlike MNIST's: low resolution, blur, thin and fat strokes, JPEG,
    photos under uneven light, slant, small off-centre drawings; three severities each."""
    from mnistlab import robustness as robustness_lib

    if split not in ("test", "validation"):
        raise typer.BadParameter(f"{split!r}: choose test or validation", param_hint="--split")
    result = robustness_lib.run(run, split=split, data_dir=data_dir, limit=limit, seed=seed)
    console.robustness(run, result)


def serve(
    run: Annotated[Optional[Path], typer.Argument(
        help="A run folder (default: the newest completed `robust` run in --runs-dir).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 opens it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port; 0 picks a free one.")] = 8000,
    runs_dir: Annotated[Path, typer.Option(help="Where to look for (or train) the `robust` run.")] = Path("runs"),
) -> None:
    """Serve a draw-a-digit page and a JSON API (POST /api/predict, GET /api/model)."""
    from mnistlab import serve as serve_lib
    from mnistlab.cli import experiments
    from mnistlab.errors import UserError

    if run is None:
        try:
            run = serve_lib.model_for_use(runs_dir)
        except UserError:
            # At a terminal, offer to train it; a script gets the message and exit 2.
            if not (sys.stdin.isatty() and typer.confirm(
                    f"No '{serve_lib.USE_PRESET}' run in {runs_dir}/. Train it now (about 4 minutes on 2 cores)?")):
                raise
            experiments.train(preset=serve_lib.USE_PRESET, runs_dir=runs_dir, test=True)
            run = serve_lib.model_for_use(runs_dir)
    serve_lib.serve(run, host=host, port=port, on_ready=console.serving(host))


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


def import_(
    file: Annotated[Path, typer.Argument(help="A Keras model file: model.keras (or model.h5).")],
    runs_dir: Annotated[Path, typer.Option(help="Where the run folder is written.")] = Path("runs"),
    dataset: Annotated[str, typer.Option(help="The dataset the model reads (see `mnistlab datasets`).",
                                         autocompletion=complete("data", "DATASETS"))] = "mnist",
) -> None:
    """Make a run folder from a Keras Sequential model: its layers, weights and compile settings."""
    from mnistlab import keras_io

    console.say(f"wrote {keras_io.import_run(file, runs_dir, dataset=dataset)}")


def report(
    folder: Annotated[Path, typer.Argument(help="A run, sweep or study folder.")],
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="The HTML file to write "
                                                     "(default: FOLDER/report.html).")] = None,
    data_dir: DataDir = None,
) -> None:
    """One self-contained HTML page about a run, sweep or study: curves, confusion, mistakes, weights."""
    from mnistlab import report as report_lib

    console.say(f"wrote {report_lib.write(folder, out_file, data_dir)}")


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
