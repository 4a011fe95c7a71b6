"""Look inside a trained network: one self-contained HTML page per run, sweep or study.

    html = report.build("runs/20261127-101500-seed").html      # or report.write(path, out)

A **run** folder (`config.toml`, `metrics.jsonl`, `summary.json`, `weights.safetensors`)
gives learning curves with the over-fitting gap, confusion matrices on the validation set
(and on the test set when the run recorded a test evaluation) with per-class precision
and recall, the most confident mistakes, the first layer's weights as pictures (a dense
layer's units, or a convolution's filters and its feature maps for one image), every
layer's output shape and weight count, weight histograms, dead-ReLU fractions, the
configuration and the environment.

A **sweep** or **study** folder is read generically as "rows of members + per-epoch
metrics": `results.json` / `trials.json` (or their `.csv`), `metrics.jsonl`, a
`summary.json` / `study.json`, and a `best/` run folder, which gets the full run report.
The kind is told by the files present (`detect`).

Every figure is a PNG embedded as a `data:` URI and the page loads nothing else, so the
file opens in a browser with no network and can be mailed as it is.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnistlab import figures, robustness, runs
from mnistlab import spec as spec_lib
from mnistlab.errors import UserError

MISTAKES = 24          # images in the gallery
UNITS_SHOWN = 40       # first-layer units drawn
BEST_CURVES = 5        # members overlaid in a sweep's curve figure
TOP_ROWS = 10          # members in a sweep's table before "show all"
TEMPLATES = Path(__file__).parent / "templates"


# --- numbers computed from predictions -------------------------------------------------


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j] = how many examples of true class i were predicted as class j."""
    labels = np.asarray(labels, np.int64)
    predictions = np.asarray(predictions, np.int64)
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def confident_mistakes(labels: np.ndarray, probabilities: np.ndarray, k: int = MISTAKES) -> np.ndarray:
    """Indices of the wrong predictions, the most confident (highest predicted probability) first."""
    pred = probabilities.argmax(1)
    wrong = np.flatnonzero(pred != labels)
    confidence = probabilities[wrong, pred[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:k]


@dataclass
class Hidden:
    """What one hidden layer (a Dense or Conv2D, after its activation) outputs on a set of inputs.

    A dense layer's unit is one output. A convolution's unit is one filter, applied at
    every position of its feature map; the maps are too big to keep for a validation set
    (the cnn preset's first layer: 26 * 26 * 32 floats an image, 0.5 GB for 6000 images),
    so each filter is kept as two numbers per image (`Hidden.of`).
    """

    name: str
    activation: str
    outputs: np.ndarray  # (inputs, units); for a filter: its largest output over the positions
    fired: np.ndarray | None = None  # (inputs, units): for a filter, the share of positions where it is > 0
    kind: str = "dense"  # "dense" | "conv2d"

    @classmethod
    def of(cls, name: str, activation: str, x: np.ndarray) -> "Hidden":
        """From a layer's outputs: (inputs, units), or maps (inputs, H, W, filters)."""
        x = np.asarray(x)
        if x.ndim == 2:
            return cls(name, activation, x)
        return cls(name, activation, x.max(axis=(1, 2)), (x > 0).mean(axis=(1, 2), dtype=np.float32), "conv2d")

    @classmethod
    def concatenate(cls, parts: list["Hidden"]) -> "Hidden":
        first = parts[0]
        fired = None if first.fired is None else np.concatenate([p.fired for p in parts])
        return cls(first.name, first.activation, np.concatenate([p.outputs for p in parts]), fired, first.kind)

    @property
    def relu(self) -> bool:
        """Whether the outputs come out of a ReLU (possibly after others: "tanh+relu")."""
        return self.activation.rpartition("+")[2] == "relu"

    @property
    def active_fraction(self) -> np.ndarray:
        """Per unit: the fraction of inputs on which its output is > 0; for a filter, the
        fraction of (input, position) pairs."""
        return (self.outputs > 0).mean(0) if self.fired is None else self.fired.mean(0)

    @property
    def dead_fraction(self) -> float:
        """The share of units that output 0 for every input (dead ReLUs, on these inputs);
        a filter is dead when it is 0 at every position of every input."""
        return float(np.mean(self.active_fraction == 0))


def recorded(spec) -> dict[int, tuple[str, str]]:
    """Where each hidden layer's outputs are read: layer index -> (hidden layer, its activation).

    A hidden layer is a Conv2D or a Dense other than the last. Its outputs are read after
    it and again after each Activation layer that follows it, with batch normalization
    or dropout between, so that conv -> batch_normalization -> relu counts as a ReLU
    layer; pooling, flattening or a weighted layer ends it. The activation reads like
    "relu" or "tanh+relu" (an Activation after a layer that had one already).
    """
    from mnistlab import model
    from mnistlab.spec import Activation, BatchNormalization, Conv2D, Dense, Dropout

    dense_at = [i for i, layer in enumerate(spec.layers) if isinstance(layer, Dense)]
    out: dict[int, tuple[str, str]] = {}
    owner: tuple[str, str] | None = None
    for i, (name, layer) in enumerate(zip(model.layer_names(spec), spec.layers)):
        if isinstance(layer, Conv2D) or (isinstance(layer, Dense) and i != dense_at[-1]):
            owner = out[i] = (name, layer.activation)
        elif isinstance(layer, Activation) and owner is not None:
            act = layer.activation if owner[1] == "linear" else f"{owner[1]}+{layer.activation}"
            owner = out[i] = (owner[0], act)
        elif not isinstance(layer, (Activation, BatchNormalization, Dropout)):
            owner = None
    return out


def forward(spec, params: dict[str, np.ndarray], images: np.ndarray,
            batch: int | None = None) -> tuple[list[Hidden], np.ndarray]:
    """Every hidden layer's outputs and the final logits, at inference (dropout off).

    Walks the layers with `model.walk`, keeping what it passes by; the logits are
    returned so a test can check the batching against `model.logits` itself.
    """
    from mnistlab import model

    batch = batch or _batch(spec)
    where = recorded(spec)
    parts: dict[str, list[Hidden]] = {}
    logit_chunks = []
    for start in range(0, len(images), batch):
        seen: dict[str, tuple[str, np.ndarray]] = {}  # the latest read of each hidden layer
        for i, x in model.walk(spec, params, images[start:start + batch]):
            if i in where:
                name, act = where[i]
                seen[name] = (act, x)
        logit_chunks.append(np.asarray(x))
        for name, (act, outputs) in seen.items():
            parts.setdefault(name, []).append(Hidden.of(name, act, outputs))
    return [Hidden.concatenate(p) for p in parts.values()], np.concatenate(logit_chunks)


def first_maps(spec, params, image: np.ndarray) -> tuple[str, str, np.ndarray] | None:
    """(layer, activation, maps (H, W, filters)) of the first Conv2D for one image, read
    where `forward` reads that layer's outputs; None for a model without convolutions."""
    from mnistlab import model

    where = recorded(spec)
    names = [name for name, layer in zip(model.layer_names(spec), spec.layers) if layer.type == "conv2d"]
    if not names:
        return None
    last = max(i for i, (name, _) in where.items() if name == names[0])
    for i, x in model.walk(spec, params, np.asarray(image)[None]):
        if i == last:
            return names[0], where[i][1], np.asarray(x[0])
    raise AssertionError("the walk passes every layer")


def _batch(spec) -> int:
    # A convolution's maps are tens of times the image: 4096 images of the cnn preset's
    # first layer would be 350 MB, so spatial models go through in smaller batches.
    return 500 if spec_lib.takes_image(spec.layers) else 4096


def probabilities(spec, params, images: np.ndarray, batch: int | None = None) -> np.ndarray:
    """`model.probabilities` in batches: a whole test set through the cnn preset at once
    would hold its 10000 x 11 x 11 x 288 patch matrix, 1.4 GB."""
    from mnistlab import model

    batch = batch or _batch(spec)
    return np.concatenate([np.asarray(model.probabilities(spec, params, images[i:i + batch]))
                           for i in range(0, len(images), batch)])


def unit_scores(params: dict[str, np.ndarray], first: str, second: str | None,
                hidden: Hidden | None) -> np.ndarray:
    """How much each first-layer unit feeds the next layer: its mean output on the
    validation set times the norm of its outgoing weights (|mean h_j| * ||W2[j, :]||).
    Without a next layer or outputs, falls back to the norms of its weights."""
    w_in = params[f"{first}/kernel"]
    out_norm = np.linalg.norm(params[f"{second}/kernel"], axis=1) if second else np.ones(w_in.shape[1])
    if hidden is not None:
        return np.abs(hidden.outputs.mean(0)) * out_norm
    return np.linalg.norm(w_in, axis=0) * out_norm


def parameter_importance(rows: list[dict[str, Any]], params: list[str], metric: str,
                         bins: int = 4) -> dict[str, float]:
    """The share of the metric's variance explained by each parameter alone (eta squared).

    For a parameter p: group the members by their value of p, and divide the variance of
    the group means (weighted by group size) by the total variance of the metric. On a
    full grid this is the main effect of p in a functional ANOVA; the importances sum to
    at most 1, the rest being interactions and noise (seeds). A parameter drawn at random
    (values that mostly do not repeat) is first grouped into `bins` quantile bins, or every
    member would be its own group and any parameter would "explain" everything.
    Members without a finite metric (diverged) are left out.
    """
    ok = [r for r in rows if figures._finite(r.get(metric))]
    y = np.array([float(r[metric]) for r in ok])
    total = float(((y - y.mean()) ** 2).sum()) if len(y) else 0.0
    out = {}
    for p in params:
        values = [r["params"].get(p) for r in ok]
        keys = _groups(values, bins)
        between = 0.0
        for key in set(keys):
            sel = np.array([k == key for k in keys])
            between += sel.sum() * (y[sel].mean() - y.mean()) ** 2
        out[p] = float(between / total) if total > 0 else 0.0
    return out


def _groups(values: list[Any], bins: int) -> list[Any]:
    distinct = {json.dumps(v, sort_keys=True, default=str) for v in values}
    repeated = len(distinct) <= max(bins, len(values) / 2)  # a grid or a choice: values recur
    if repeated or not all(figures._finite(v) for v in values):
        return [json.dumps(v, sort_keys=True, default=str) for v in values]
    arr = np.asarray(values, float)
    edges = np.quantile(arr, np.linspace(0, 1, bins + 1)[1:-1])
    return list(np.searchsorted(edges, arr, side="right"))


# --- one run ---------------------------------------------------------------------------


@dataclass
class Evaluation:
    """A run's predictions on one split."""

    split: str
    labels: np.ndarray
    probabilities: np.ndarray
    images: np.ndarray

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(1)

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.predictions == self.labels))

    def confusion(self, num_classes: int) -> np.ndarray:
        return confusion_matrix(self.labels, self.predictions, num_classes)


@dataclass
class RunData:
    """Everything the report says about one run."""

    run: runs.Run
    class_names: list[str]
    params: dict[str, np.ndarray] | None = None
    no_weights: str | None = None
    validation: Evaluation | None = None
    test: Evaluation | None = None
    hidden: list[Hidden] = field(default_factory=list)
    logits_validation: np.ndarray | None = None
    image_shape: tuple[int, ...] = (28, 28)

    @property
    def name(self) -> str:
        return self.run.path.name

    @property
    def gallery(self) -> Evaluation | None:
        """Where mistakes are shown from: validation, else test."""
        return self.validation or self.test


def collect_run(path: str | Path, data_dir: str | Path | None = None, *, predictions: bool = True) -> RunData:
    """Read a run folder and, when it has weights, evaluate it on its validation split
    (and on the test set when the run recorded a test evaluation)."""
    from mnistlab import data

    run = runs.open_run(path)
    if not run.finished:
        raise UserError(f"{run.path}: {run.describe()}: a report draws a finished run (completed, interrupted or "
                        "diverged); wait for it to finish, or train it again")
    info = data.get_info(run.spec.dataset)
    out = RunData(run, list(info.class_names), image_shape=tuple(info.image_shape))
    if not (run.path / runs.WEIGHTS).exists():  # diverged, or interrupted before its first epoch
        out.no_weights = f"{run.path}: this run has no {runs.WEIGHTS}: {run.describe()}"
        return out
    out.params = run.params()  # a damaged file, or one that does not fit config.toml, is an error
    if not predictions:
        return out
    from mnistlab.populations import split

    arrays = data.load(run.spec.dataset, data_dir)
    _, _, x_val, y_val = split(run.spec, arrays)
    if len(y_val):
        probs = probabilities(run.spec.model, out.params, x_val)
        out.validation = Evaluation("validation", np.asarray(y_val), probs, x_val)
        out.hidden, out.logits_validation = forward(run.spec.model, out.params, x_val)
    if run.summary.get("test") is not None:
        probs = probabilities(run.spec.model, out.params, arrays.test_images)
        out.test = Evaluation("test", np.asarray(arrays.test_labels), probs, arrays.test_images)
    return out


@dataclass
class Figure:
    """One embedded picture: its anchor, title, caption and PNG bytes."""

    key: str
    title: str
    png: bytes
    caption: str = ""

    @property
    def uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def _regularizer_text(layer) -> str | None:
    reg = getattr(layer, "kernel_regularizer", None)
    if reg is None:
        return None
    parts = [f"l1={reg.l1:g}" if reg.l1 else "", f"l2={reg.l2:g}" if reg.l2 else ""]
    return ", ".join(p for p in parts if p) or "none"


PLOTS = ("curves", "confusion", "mistakes", "weights", "feature-maps", "histograms", "activity", "robustness")


def check_plot(what: str) -> None:
    if what not in PLOTS:
        from mnistlab.errors import suggest

        raise UserError(f"--what {what!r}: {suggest(what, PLOTS)}")


def plot(d: RunData, what: str, split: str | None = None, standalone: bool = True):
    """One matplotlib figure about a run (None when the run lacks what it needs):
    curves | confusion | mistakes | weights | feature-maps | histograms | activity.
    `weights` is the first layer's: a Dense layer's units as images, or a Conv2D layer's
    filters; `feature-maps` the first Conv2D's outputs for one image. `split` picks the
    evaluation for confusion, mistakes and feature maps (validation by default, else
    test); `standalone` titles the curves with the run's name (a page has its own headings)."""
    from mnistlab import model
    from mnistlab.spec import Conv2D, Dense

    check_plot(what)
    run = d.run
    if what == "curves":
        return figures.learning_curves(run.metrics, title=d.name if standalone else None)
    if what in ("confusion", "mistakes", "feature-maps"):
        ev = {"validation": d.validation, "test": d.test, None: d.gallery}[split]
        if ev is None or d.params is None:
            return None
        if what == "feature-maps":
            return _feature_maps(d, ev)
        if what == "confusion":
            return figures.confusion_matrix(ev.confusion(len(d.class_names)), d.class_names, title=f"{ev.split} set")
        idx = confident_mistakes(ev.labels, ev.probabilities)
        return figures.mistakes(ev.images[idx], ev.labels[idx], ev.probabilities[idx], d.class_names,
                                title=f"most confident mistakes ({ev.split})")
    if what == "robustness":
        measured = robustness.load(run.path)
        return None if measured is None else figures.robustness(
            {row["family"]: [row[f"severity {s}"] for s in robustness.SEVERITIES] for row in measured.table()[1:]},
            robustness.HELD_OUT, measured.clean, title=f"{measured.split} accuracy under corruption")
    if d.params is None:
        return None
    names = model.layer_names(run.spec.model)
    dense = [(n, layer) for n, layer in zip(names, run.spec.model.layers) if isinstance(layer, Dense)]
    weighted = [(n, layer) for n, layer in zip(names, run.spec.model.layers) if isinstance(layer, (Dense, Conv2D))]
    if what == "weights" and isinstance(weighted[0][1], Conv2D):  # the first weighted layer sees the pixels
        name = weighted[0][0]
        kh, kw, channels, filters = d.params[f"{name}/kernel"].shape
        return figures.conv_filters(d.params[f"{name}/kernel"], title=f"{name}: its {filters} filters, {kh}x{kw}"
                                    + (f" on {channels} input channels" if channels > 1 else ""))
    if what == "weights":
        first = dense[0][0]
        second = dense[1][0] if len(dense) > 1 else None
        hidden0 = next((h for h in d.hidden if h.name == first), None)
        scores = unit_scores(d.params, first, second, hidden0 if second else None)
        top = np.argsort(-scores, kind="stable")[:UNITS_SHOWN]
        kernel = d.params[f"{first}/kernel"]
        if kernel.shape[0] != 784:
            return None
        return figures.first_layer_weights(kernel, top, scores[top],
                                           title=f"{first}: the {len(top)} most important of {kernel.shape[1]} units")
    if what == "histograms":
        return figures.weight_histograms([(f"{n}/kernel {'x'.join(map(str, d.params[f'{n}/kernel'].shape))}",
                                           d.params[f"{n}/kernel"], _regularizer_text(layer)) for n, layer in weighted])
    relu = [(h.name, h.active_fraction, *(["fraction of (image, position) on which the filter is > 0"]
                                          if h.kind == "conv2d" else [])) for h in d.hidden if h.relu]
    return figures.unit_activity(relu) if relu else None


def _feature_maps(d: RunData, ev: Evaluation):
    """The first convolution's maps for the first image of `ev` (None without a convolution)."""
    image = ev.images[0]
    found = first_maps(d.run.spec.model, d.params, image)
    if found is None:
        return None
    name, activation, maps = found
    label = d.class_names[int(ev.labels[0])]
    return figures.feature_maps(image, maps, title=f"{name} ({activation}): its {maps.shape[-1]} maps for one image",
                                caption=f"{ev.split} image 0: {label}")


CAPTIONS = {
    "curves": ("Learning curves", "Training (grey) and validation (orange) per epoch; shaded: the gap between them."),
    "confusion": ("Confusion matrix", "Rows: true label; columns: prediction. Right: recall per class (%); "
                  "bottom: precision per class (%)."),
    "mistakes": ("Most confident mistakes", "The wrong predictions the network was surest of. Bars: probability "
                 "per class (green: true class, red: predicted)."),
    "weights": ("First-layer weights", "Each unit's 784 incoming weights as a 28x28 picture (red +, blue -), "
                "ranked by |mean output on validation| x norm of its outgoing weights (the number above; "
                "without a validation set, by the norms of its weights)."),
    "filters": ("First-layer filters", "Each tile is one filter of the first convolution, its weights laid out "
                "as they lie over the image (Keras' convolution is a cross-correlation, so nothing is flipped): red "
                "where a bright pixel raises the filter's output, blue where it lowers it, white 0, every filter on "
                "the same scale. A filter answers most the patch that looks like it: red beside blue is an edge "
                "across that line, one colour a stroke or blob of ink; a pale tile learned little. A filter's number "
                "is its row's label plus its column's."),
    "feature-maps": ("Feature maps of the first convolution", "An image (left) and what each filter of the first "
                     "convolution outputs for it (after its activation): the filter slid over the image, bright where "
                     "the image looks like it. All maps share one scale; a dark map is a filter this image does not "
                     "excite. Numbered as the filters above."),
    "histograms": ("Weight histograms", "Near zero: |w| below 1% of the layer's largest |w| "
                   "(what an L1 penalty produces)."),
    "activity": ("Hidden-unit activity", "For each ReLU unit, the fraction of validation images that make it "
                 "fire. A unit at 0 never fires: a dead ReLU."),
    "robustness": ("Robustness", "Accuracy on the test images made unlike MNIST's (`mnistlab robustness`): "
                   "solid lines are the families no preset trains on, dashed ones resemble an augmentation."),
    "activity-conv": ("Hidden-unit activity", "For each ReLU unit, the fraction of validation images that make it "
                      "fire; for a convolution's filter, the fraction of positions over all validation images where "
                      "its output is > 0. At 0 a unit or filter never fires: a dead ReLU."),
}


def _caption_key(d: RunData, what: str) -> str:
    """Which caption tells what a figure shows for this model (dense units or filters)."""
    if what == "weights" and _first_weighted(d.run.spec.model).type == "conv2d":
        return "filters"
    if what == "activity" and any(h.kind == "conv2d" and h.relu for h in d.hidden):
        return "activity-conv"
    return what


def _first_weighted(spec):
    """The first Dense or Conv2D layer: the one that looks at the pixels."""
    return next(layer for layer in spec.layers if layer.type in ("dense", "conv2d"))


def run_figures(d: RunData, prefix: str = "") -> list[Figure]:
    """The run's pictures, in page order."""
    wanted = [("curves", None)] + [("confusion", ev.split) for ev in (d.validation, d.test) if ev is not None]
    wanted += [("mistakes", None), ("weights", None), ("feature-maps", None), ("histograms", None),
               ("activity", None), ("robustness", None)]
    out = []
    for what, split in wanted:
        fig = plot(d, what, split, standalone=False)
        if fig is None:
            continue
        title, caption = CAPTIONS[_caption_key(d, what)]
        key = f"{what}-{split}" if split else what
        out.append(Figure(prefix + key, title + (f", {split} set" if split else ""), figures.png_bytes(fig), caption))
    return out


def fmt(x: Any, digits: int = 4) -> str:
    """A number as the page and the terminal show it: 4 decimals, "–" for none."""
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if math.isfinite(x) else str(x)
    return str(x)


def _pct(x: Any, digits: int = 2) -> str:
    return "–" if x is None or not math.isfinite(float(x)) else f"{100 * float(x):.{digits}f}%"


def run_context(d: RunData, prefix: str = "", environment: dict[str, Any] | None = None) -> dict[str, Any]:
    """The template's view of one run: numbers as text, tables as rows. `environment`
    stands in where the run's summary has none (a sweep's best member)."""
    run = d.run
    summary, metrics = run.summary, run.metrics
    fit = figures.overfitting(metrics)
    epochs = [{k: fmt(r.get(k)) if k != "learning_rate" else (f"{r[k]:.4g}" if r.get(k) is not None else "–")
               for k in ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds")}
              for r in metrics]
    evaluations = [{"split": e.get("split", "?"), "accuracy": fmt(e.get("accuracy")), "loss": fmt(e.get("loss")),
                    "samples": e.get("samples", "–"), "at": e.get("at", "at training")}
                   for e in summary.get("evaluations", [])]
    config_path = run.path / runs.CONFIG
    return {"name": d.name, "path": str(run.path), "status": summary.get("status", "unknown"),
            "spec_name": run.spec.name, "cards": _cards(d, fit), "verdict": _verdict(metrics, fit, summary),
            "epochs": epochs, "per_class": _per_class(d), "layers": _layers(d),
            "env": _machine(d, environment), "evaluations": evaluations,
            "architecture": architecture(run.spec.model, d.image_shape) if d.params is not None else [],
            "config": config_path.read_text() if config_path.exists() else "",
            "no_weights": d.no_weights, "prefix": prefix, "robustness": _robustness_rows(run.path),
            "figures": {f.key[len(prefix):]: f for f in run_figures(d, prefix)}}


def _robustness_rows(path: Path) -> list[dict[str, str]]:
    """`mnistlab robustness`'s table, when it was measured for this run."""
    measured = robustness.load(path)
    if measured is None:
        return []
    return [{"family": row["family"], "description": row["description"],
             "held_out": "held out" if row["held_out"] else "",
             "accuracies": [_pct(row[f"severity {s}"]) for s in robustness.SEVERITIES][: 1 if row["family"] == "clean" else 3]}
            for row in measured.table()]


def _cards(d: RunData, fit: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """The headline figures: (title, value, detail)."""
    run = d.run
    summary, metrics = run.summary, run.metrics
    final = summary.get("final") or (metrics[-1] if metrics else {}) or {}
    cards = []
    if "val_accuracy" in final:
        cards.append(("validation accuracy", _pct(final["val_accuracy"]), fmt(final["val_accuracy"])))
    if "val_loss" in final:
        lowest = f"lowest {fmt(fit['best_val_loss'])} at epoch {fit['best_epoch']}" if fit else ""
        cards.append(("validation loss", fmt(final["val_loss"]), lowest))
    if summary.get("test"):
        cards.append(("test accuracy", _pct(summary["test"]["accuracy"]),
                      f"{fmt(summary['test']['accuracy'])} · loss {fmt(summary['test']['loss'])}"))
    if "accuracy" in final:
        cards.append(("training accuracy", _pct(final["accuracy"]), f"loss {fmt(final.get('loss'))}"))
    if fit and "accuracy_gap" in fit:
        cards.append(("over-fitting gap", f"{100 * fit['accuracy_gap']:+.2f} pts",
                      f"train − val accuracy; val_loss − loss {fit['loss_gap']:+.4f}"))
    done, asked = summary.get("epochs_completed", len(metrics)), summary.get("epochs_requested", run.spec.training.epochs)
    cards.append(("epochs", f"{done}/{asked}", summary.get("status", "unknown")))
    if summary.get("train_seconds") is not None:
        cards.append(("training time", f"{summary['train_seconds']:.1f} s",
                      f"+ {summary.get('compile_seconds', 0):.1f} s compile"))
    if d.params is not None:
        n_params = sum(int(np.prod(v.shape)) for v in d.params.values())
        cards.append(("parameters", f"{n_params:,}", shape_path(run.spec.model, d.image_shape)))
    return cards


def _per_class(d: RunData) -> list[dict[str, Any]]:
    """Per split evaluated: each class's support, precision, recall and worst confusion."""
    per_class = []
    for ev in (d.validation, d.test):
        if ev is None:
            continue
        m = ev.confusion(len(d.class_names))
        precision, recall = figures.precision_recall(m)
        per_class.append({
            "split": ev.split, "accuracy": fmt(ev.accuracy), "n": len(ev.labels),
            "rows": [{"name": d.class_names[i], "support": int(m[i].sum()), "predicted": int(m[:, i].sum()),
                      "precision": fmt(float(precision[i])), "recall": fmt(float(recall[i])),
                      "worst": _worst_confusion(m, i, d.class_names)} for i in range(len(d.class_names))]})
    return per_class


def _layers(d: RunData) -> list[dict[str, Any]]:
    """Each weighted layer's kernel: shape, penalty, norms, zeros, and its dead ReLU units."""
    if d.params is None:
        return []
    from mnistlab import model
    from mnistlab.spec import Conv2D, Dense

    spec = d.run.spec.model
    by_name = {h.name: h for h in d.hidden}
    weighted = [(n, layer) for n, layer in zip(model.layer_names(spec), spec.layers) if isinstance(layer, (Dense, Conv2D))]
    layers = []
    for i, (n, layer) in enumerate(weighted):
        s = figures.weight_stats(d.params[f"{n}/kernel"])
        h = by_name.get(n)
        if i == len(weighted) - 1:
            dead = "output layer"
        elif h is None:
            dead = "no validation set"
        elif not h.relu:
            dead = f"n/a ({h.activation})"
        else:
            units = h.outputs.shape[1]
            dead = f"{int(np.sum(h.active_fraction == 0))}/{units} ({_pct(h.dead_fraction, 1)})"
        layers.append({"name": n, "shape": "x".join(map(str, d.params[f"{n}/kernel"].shape)),
                       "activation": h.activation if h else layer.activation,
                       "penalty": _regularizer_text(layer) or "none",
                       "l1": f"{s['l1']:.4g}", "l2": f"{s['l2_norm']:.4g}",
                       "near_zero": _pct(s["near_zero_fraction"], 1), "zero": _pct(s["zero_fraction"], 2),
                       "dead": dead})
    return layers


def _machine(d: RunData, environment: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """Where and how the run was made: seed, data, machine, sample counts, timings."""
    run = d.run
    summary = run.summary
    env = dict(summary.get("environment") or environment or {})
    rows = [("seed", run.spec.training.seed), ("dataset", run.spec.dataset),
            ("data source", summary.get("data_source", "–"))]
    rows += [(k, "–" if v is None else v) for k, v in env.items()]  # commit: None off a checkout
    samples = f"{summary.get('train_samples', '–')} / {summary.get('validation_samples', '–')}"
    rows += [("train / validation samples", samples),
             ("compile seconds", fmt(summary.get("compile_seconds"), 2)),
             ("wall seconds", fmt(summary.get("wall_seconds"), 2))]
    return rows


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def shape_path(spec, image_shape: tuple[int, ...]) -> str:
    """The input's shape and each weighted layer's output shape: "784 → 256 → 10",
    "28x28x1 → 26x26x32 → 11x11x64 → 10"."""
    shapes = spec_lib.output_shapes(spec.layers, image_shape)
    kept = [shapes[0]] + [after for layer, after in zip(spec.layers, shapes[1:]) if layer.type in ("dense", "conv2d")]
    return " → ".join(map(_shape_text, kept))


def _setting_text(value: Any) -> str:
    """A setting as the layer table shows it: (3, 3) as 3x3, an initializer as
    random_normal(mean=0, stddev=0.05), a regularizer as (l2=0.01)."""
    if isinstance(value, (tuple, list)):
        return "x".join(map(str, value))
    if isinstance(value, dict):
        args = ", ".join(f"{k}={_setting_text(v)}" for k, v in value.items() if k != "name" and v is not None)
        return f"{value['name']}({args})" if "name" in value else f"({args})"
    return f"{value:g}" if isinstance(value, float) else str(value)


def architecture(spec, image_shape: tuple[int, ...]) -> list[dict[str, str]]:
    """Every layer as Keras' model.summary() lists it (`model.summary`), with its settings
    (those not left at their default); shapes of one image."""
    from mnistlab import model

    first = spec_lib.output_shapes(spec.layers, image_shape)[0]
    rows = [{"name": "input", "settings": f"pixels x {spec.input_rescale:.4g}", "shape": _shape_text(first),
             "params": "0"}]
    for row, layer in zip(model.summary(spec, image_shape).rows, spec.layers):
        settings = layer.summary_settings()
        rows.append({"name": row.name, "settings": ", ".join(f"{k}={_setting_text(v)}" for k, v in settings.items()),
                     "shape": _shape_text(row.output_shape[1:]), "params": f"{row.params:,}"})
    return rows


def _worst_confusion(m: np.ndarray, i: int, names: list[str]) -> str:
    off = m[i].copy()
    off[i] = 0
    j = int(off.argmax())
    return f"{names[j]} ({int(off[j])})" if off[j] else "–"


def _verdict(metrics: list[dict[str, Any]], fit: dict[str, float] | None, summary: dict[str, Any]) -> str:
    """One sentence on over-fitting, from the curves."""
    if not metrics:
        return "No epoch was recorded."
    if summary.get("status") == "diverged":
        return (f"The run diverged at epoch {summary.get('diverged_at_epoch', metrics[-1]['epoch'])}: "
                f"{summary.get('hint', 'the loss stopped being finite')}.")
    if fit is None:
        return "This run kept no validation set, so over-fitting cannot be seen from its curves."
    last = metrics[-1]["epoch"]
    if fit["best_epoch"] < last and fit["val_loss_rise"] > 0:
        return (f"Validation loss was lowest at epoch {fit['best_epoch']} ({fit['best_val_loss']:.4f}) and rose by "
                f"{fit['val_loss_rise']:.4f} over the last {last - fit['best_epoch']} epoch(s) while training "
                f"went on: the network is over-fitting from about epoch {fit['best_epoch']}.")
    gap = fit.get("accuracy_gap")
    tail = f"; training accuracy is {100 * gap:+.2f} points above validation" if gap is not None else ""
    return (f"Validation loss was still at its lowest at the last epoch ({last}){tail}: "
            "no sign of over-fitting yet.")


# --- sweeps and studies: member rows + per-epoch metrics --------------------------------


@dataclass
class Collection:
    """A sweep or study folder, read as member rows and per-epoch metrics."""

    kind: str  # sweep | study
    path: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    id_key: str  # "member" | "trial"
    curves: dict[Any, list[dict[str, Any]]]
    params: list[str]
    metric: str
    direction: str
    best_id: Any
    importances: dict[str, float]
    importance_method: str
    spec_files: dict[str, str]
    best_run: Path | None

    @property
    def name(self) -> str:
        return str(self.summary.get("name") or self.path.name)

    @property
    def maximize(self) -> bool:
        return self.direction != "minimize"

    def ranked(self) -> list[dict[str, Any]]:
        """Rows with a finite metric, best first; then the rest."""
        good = [r for r in self.rows if figures._finite(r.get(self.metric))]
        good.sort(key=lambda r: float(r[self.metric]), reverse=self.maximize)
        return good + [r for r in self.rows if r not in good]


def detect(path: str | Path) -> str:
    """'run', 'sweep' or 'study', from the files the folder holds."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such folder. Give a run, sweep or study folder, "
                        "e.g. runs/20261127-101500-seed.")
    if (path / "study.json").is_file():
        return "study"
    if (path / "sweep.toml").is_file() or (path / "results.json").is_file() or (path / "results.csv").is_file():
        return "sweep"
    if (path / runs.CONFIG).is_file():
        return "run"
    raise UserError(f"{path}: not a run, sweep or study folder (no {runs.CONFIG}, sweep.toml, "
                    "results.json or study.json in it)")


def _read_rows(path: Path, stem: str) -> list[dict[str, Any]]:
    if (path / f"{stem}.json").is_file():
        rows = json.loads((path / f"{stem}.json").read_text())
        return rows if isinstance(rows, list) else rows.get("rows", [])
    if (path / f"{stem}.csv").is_file():
        with open(path / f"{stem}.csv", newline="") as f:
            out = []
            for raw in csv.DictReader(f):
                row: dict[str, Any] = {"params": {}}
                for k, v in raw.items():
                    value = _parse_cell(v)
                    if k.startswith("param:"):
                        row["params"][k[len("param:"):]] = value
                    else:
                        row[k] = value
                out.append(row)
            return out
    raise UserError(f"{path}: no {stem}.json or {stem}.csv: the member rows are missing")


def _parse_cell(v: str | None) -> Any:
    if v is None or v == "":
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def collect_collection(path: str | Path) -> Collection:
    path = Path(path)
    kind = detect(path)
    if kind == "study":
        summary = json.loads((path / "study.json").read_text())
        rows = _read_rows(path, "trials")
    else:
        summary = json.loads((path / runs.SUMMARY).read_text()) if (path / runs.SUMMARY).is_file() else {}
        rows = _read_rows(path, "results")
    id_key = "trial" if rows and "trial" in rows[0] else "member"
    for r in rows:
        r.setdefault("params", {})
    curves: dict[Any, list[dict[str, Any]]] = {}
    if (path / runs.METRICS).is_file():
        for line in (path / runs.METRICS).read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                curves.setdefault(rec.get(id_key, rec.get("member", rec.get("trial"))), []).append(rec)
    params = sorted({p for r in rows for p in r["params"]})
    metric = summary.get("metric", "val_accuracy")
    direction = summary.get("direction") or ("minimize" if "loss" in metric else "maximize")
    best_id = summary.get(f"best_{id_key}", summary.get("best_member", summary.get("best_trial")))
    if isinstance(best_id, dict):  # a study may record the best trial as an object
        best_id = best_id.get(id_key, best_id.get("number"))
    finite = [r for r in rows if figures._finite(r.get(metric))]
    if best_id is None and finite:
        pick = max if direction != "minimize" else min
        best_id = pick(finite, key=lambda r: float(r[metric]))[id_key]
    if isinstance(summary.get("importances"), dict) and summary["importances"]:
        importances = {k: float(v) for k, v in summary["importances"].items()}
        importance_method = f"As recorded by the {kind} in study.json (`importances`)."
    else:
        importances = parameter_importance(rows, params, metric)
        importance_method = (
            f"Measured as the share of the variance of {metric} explained by grouping the members by each "
            "parameter's value alone (eta squared; on a grid, the main effect of a functional ANOVA). "
            "Parameters whose values mostly do not repeat (random search) are first grouped into 4 quantile bins.")
    spec_files = {p.name: p.read_text() for p in sorted(path.glob("*.toml"))}
    best = path / "best"
    return Collection(kind, path, summary, rows, id_key, curves, params, metric, direction, best_id,
                      importances, importance_method, spec_files,
                      best if (best / runs.CONFIG).is_file() else None)


def collection_figures(c: Collection) -> list[Figure]:
    out = []
    if c.params:
        out.append(Figure("vs-params", f"{c.metric} against each hyper-parameter",
                          figures.png_bytes(figures.metric_vs_params(c.rows, c.params, c.metric, c.best_id, c.id_key,
                                                                         c.maximize)),
                          "One dot per member; the star is the best member, red crosses have no value (diverged)."))
        out.append(Figure("parallel", "Parallel coordinates",
                          figures.png_bytes(figures.parallel_coordinates(c.rows, c.params, c.metric, c.maximize)),
                          "Each line is a member; its colour is its " + c.metric + "."))
    top = [r[c.id_key] for r in c.ranked()[:BEST_CURVES] if r[c.id_key] in c.curves]
    if top:
        series = {f"{c.id_key} {i}": c.curves[i] for i in top}
        out.append(Figure("best-curves", f"The {len(top)} best members' curves",
                          figures.png_bytes(figures.overlaid_curves(series, show_train=True)),
                          "Validation solid, training dashed, one colour per member."))
    if c.importances:
        out.append(Figure("importance", "Parameter importance", figures.png_bytes(figures.importance(
            {figures.short_names(list(c.importances))[k]: v for k, v in c.importances.items()}, title=""))))
    return out


def collection_context(c: Collection) -> dict[str, Any]:
    s = c.summary
    status = [r.get("status", "completed") for r in c.rows]
    ranked = c.ranked()
    best = next((r for r in c.rows if r.get(c.id_key) == c.best_id), None)
    cards = [("members" if c.kind == "sweep" else "trials", str(s.get("members", s.get("trials", len(c.rows)))), ""),
             ("completed", str(s.get("completed", status.count("completed"))),
              f"diverged {s.get('diverged', status.count('diverged'))} · "
              f"stopped {s.get('stopped', status.count('stopped'))}")]
    if best is not None:
        cards.append((f"best {c.metric}", fmt(best.get(c.metric)), f"{c.id_key} {c.best_id}"))
        for k in ("val_loss", "val_accuracy"):
            if k != c.metric and best.get(k) is not None:
                cards.append((f"best {c.id_key}'s {k}", fmt(best[k]), ""))
    if s.get("seconds") is not None:
        cards.append(("wall time", f"{float(s['seconds']):.1f} s", ""))
    columns = [c.metric, f"best_{c.metric}", "val_accuracy", "val_loss", "accuracy", "loss", "best_epoch", "epochs"]
    columns = [k for k in dict.fromkeys(columns) if any(k in r for r in c.rows)]
    rows = [{"id": r.get(c.id_key), "status": r.get("status", "completed"), "best": r.get(c.id_key) == c.best_id,
             "params": [fmt_param(r["params"].get(p)) for p in c.params],
             "values": [fmt(r.get(k)) for k in columns], "seed": r.get("seed", "–")} for r in ranked]
    importances = sorted(c.importances.items(), key=lambda kv: -kv[1])
    summary_json = json.dumps(s, indent=2, default=str)
    short = figures.short_names(c.params)
    return {"kind": c.kind, "name": c.name, "path": str(c.path), "metric": c.metric, "direction": c.direction,
            "id_key": c.id_key, "cards": cards, "params": [(p, short[p]) for p in c.params],
            "columns": columns, "rows": rows, "top": TOP_ROWS, "best_id": c.best_id,
            "importances": [(k, f"{v:.3f}") for k, v in importances], "importance_method": c.importance_method,
            "spec_files": c.spec_files, "summary_json": summary_json,
            "figures": {f.key: f for f in collection_figures(c)}}


def fmt_param(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else str(v)


# --- the page --------------------------------------------------------------------------


@dataclass
class Report:
    """A rendered page and the figures it embeds (for tests and for `--what`)."""

    kind: str
    html: str
    figures: list[Figure]


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env


def _page(template: str, **context) -> str:
    css = (TEMPLATES / "report.css").read_text()
    return _environment().get_template(template).render(
        css=css, generated=time.strftime("%Y-%m-%d %H:%M"), version=runs.VERSION, **context)


def build(path: str | Path, data_dir: str | Path | None = None) -> Report:
    """The report of a run, sweep or study folder."""
    path = Path(path)
    kind = detect(path)
    if kind == "run":
        ctx = run_context(collect_run(path, data_dir))
        page = _page("report.html.j2", kind="run", title=ctx["name"], run=ctx, collection=None)
        return Report(kind, page, list(ctx["figures"].values()))
    c = collect_collection(path)
    ctx = collection_context(c)
    best = (run_context(collect_run(c.best_run, data_dir), prefix="best-", environment=c.summary.get("environment"))
            if c.best_run else None)
    page = _page("report.html.j2", kind=kind, title=c.name, run=best, collection=ctx)
    figs = list(ctx["figures"].values()) + (list(best["figures"].values()) if best else [])
    return Report(kind, page, figs)


def write(path: str | Path, out: str | Path | None = None, data_dir: str | Path | None = None) -> Path:
    """Build the report of `path` and write it to `out` (default: `<path>/report.html`)."""
    out = Path(out) if out is not None else Path(path) / "report.html"
    _check_out(out)
    write_html(out, build(path, data_dir).html)
    return out


PICTURES = (".png", ".svg", ".pdf")


def write_plot(run: str | Path, out: str | Path, what: str = "curves", split: str | None = None,
               data_dir: str | Path | None = None) -> Path:
    """`mnistlab plot`: one picture of a run (`plot`) saved as PNG, SVG or PDF at `out`."""
    out = Path(out)
    check_plot(what)
    if out.suffix.lower() not in PICTURES:
        raise UserError(f"--out {out}: give a .png, .svg or .pdf file name")
    if split not in (None, "validation", "test"):
        raise UserError(f"--split {split!r}: expected validation or test")
    data = collect_run(run, data_dir, predictions=what not in ("curves", "histograms"))
    fig = plot(data, what, split)
    if fig is None:
        why = {"test": "it recorded no test evaluation: run `mnistlab evaluate RUN --split test` first",
               "validation": "it has no validation set"}.get(split or "", "it has no weights or no evaluation data")
        if what == "feature-maps" and not any(layer.type == "conv2d" for layer in data.run.spec.model.layers):
            why = "it has no conv2d layer (feature maps are what a convolution outputs)"
        raise UserError(f"{run}: cannot draw {what}: {why}")
    _check_out(out)
    fig.savefig(out, bbox_inches="tight", pad_inches=0.12)
    return out


def _check_out(out: Path) -> None:
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")


def write_html(out: str | Path, page: str) -> None:
    """Write a page atomically, readable by all (it is meant to be shared)."""
    import os

    out = Path(out)
    _check_out(out)
    runs.atomic_write(out, page)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out, 0o644 & ~umask)


def compare(paths: list[str | Path]) -> dict[str, Any]:
    """Final numbers, differing settings and curves of several runs (no data needed)."""
    if len(paths) < 2:
        raise UserError("compare needs at least two run folders")
    opened = [runs.open_run(p) for p in paths]
    labels = _unique_labels([r.path.name for r in opened])
    keys = ["val_accuracy", "val_loss", "accuracy", "loss"]
    table = []
    for key in keys:
        vals = [(r.summary.get("final") or (r.metrics[-1] if r.metrics else {}) or {}).get(key) for r in opened]
        if any(v is not None for v in vals):
            table.append((key, vals))
    table.append(("test_accuracy", [(r.summary.get("test") or {}).get("accuracy") for r in opened]))
    table.append(("test_loss", [(r.summary.get("test") or {}).get("loss") for r in opened]))
    table = [(k, v) for k, v in table if any(x is not None for x in v)]
    table.append(("epochs", [r.summary.get("epochs_completed", len(r.metrics)) for r in opened]))
    table.append(("status", [r.status for r in opened]))  # "killed": its process is gone
    table.append(("train seconds", [r.summary.get("train_seconds") for r in opened]))
    flat = [spec_lib.flatten(r.spec.resolved()) for r in opened]
    all_keys = sorted(set().union(*flat))
    differing = [(k, [f.get(k) for f in flat]) for k in all_keys if len({json.dumps(f.get(k)) for f in flat}) > 1]
    series = {label: r.metrics for label, r in zip(labels, opened)}
    return {"labels": labels, "paths": [str(r.path) for r in opened], "table": table,
            "differing": differing, "series": series}


def write_comparison(paths: list[str | Path], out: str | Path) -> Path:
    """`mnistlab compare --out`: the page (.html) or the overlaid curves (.png, .svg, .pdf)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix == ".html":
        write_html(out, compare_page(paths).html)
    elif suffix in PICTURES:
        _check_out(out)
        figures.overlaid_curves(compare(paths)["series"]).savefig(out, bbox_inches="tight", pad_inches=0.12)
    else:
        raise UserError(f"--out {out}: give a .html, .png, .svg or .pdf file name")
    return out


def _unique_labels(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


def compare_page(paths: list[str | Path]) -> Report:
    """An HTML page comparing runs: final numbers side by side, the settings that differ,
    and their curves overlaid."""
    c = compare(paths)
    fig = Figure("compare-curves", "Curves overlaid",
                 figures.png_bytes(figures.overlaid_curves(c["series"])),
                 "One colour per run; validation solid, training dashed.")
    table = [(k, [fmt(v) if k != "train seconds" else fmt(v, 2) for v in vals]) for k, vals in c["table"]]
    differing = [(k, [fmt_param(v) for v in vals]) for k, vals in c["differing"]]
    page = _page("compare.html.j2", title=f"comparison of {len(c['labels'])} runs", labels=c["labels"],
                 paths=c["paths"], table=table, differing=differing, figure=fig)
    return Report("compare", page, [fig])
