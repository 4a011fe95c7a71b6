"""Look inside a trained network: one self-contained HTML page per run, sweep or study.

    html = report.build("runs/20261127-101500-seed").html      # or report.write(path, out)

A **run** folder (`config.toml`, `metrics.jsonl`, `summary.json`, `weights.safetensors`)
gives learning curves with the over-fitting gap, confusion matrices on the validation set
(and on the test set when the run recorded a test evaluation) with per-class precision
and recall, the most confident mistakes, the first layer's weights as pictures, weight
histograms, dead-ReLU fractions, the configuration and the environment.

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

from mnistlab import figures, runs
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
    """The outputs of one hidden layer (after its activation) on a set of inputs."""

    name: str
    activation: str
    outputs: np.ndarray  # (inputs, units)

    @property
    def relu(self) -> bool:
        return self.activation == "relu"

    @property
    def active_fraction(self) -> np.ndarray:
        """Per unit: the fraction of inputs on which its output is > 0."""
        return (self.outputs > 0).mean(0)

    @property
    def dead_fraction(self) -> float:
        """The share of units that output 0 for every input (dead ReLUs, on these inputs)."""
        return float(np.mean(self.active_fraction == 0))


def forward(spec, params: dict[str, np.ndarray], images: np.ndarray,
            batch: int = 4096) -> tuple[list[Hidden], np.ndarray]:
    """Every hidden layer's outputs and the final logits, at inference (dropout off).

    Walks the layers as `model.logits` does, keeping what it passes by; the logits are
    returned so a test can check the walk against `model.logits` itself.
    """
    import jax.numpy as jnp

    from mnistlab import model
    from mnistlab.spec import Activation, Dense

    names = model.layer_names(spec)
    dense_at = [i for i, layer in enumerate(spec.layers) if isinstance(layer, Dense)]
    last_dense = dense_at[-1]
    chunks: dict[str, list[np.ndarray]] = {}
    acts: dict[str, str] = {}
    logit_chunks = []
    flat = images.reshape(len(images), -1)
    for start in range(0, len(flat), batch):
        x = jnp.asarray(flat[start:start + batch]).astype(jnp.float32) * spec.input_rescale
        owner = None
        for i, (name, layer) in enumerate(zip(names, spec.layers)):
            if isinstance(layer, Dense):
                x = x @ params[f"{name}/kernel"]
                if layer.use_bias:
                    x = x + params[f"{name}/bias"]
                if i == last_dense:
                    break  # the output layer: its softmax/sigmoid is not part of the logits
                x = model.ACTIVATION_FNS[layer.activation](x)
                owner, acts[name] = name, layer.activation
                chunks.setdefault(name, []).append(None)
            elif isinstance(layer, Activation):
                x = model.ACTIVATION_FNS[layer.activation](x)
                if owner is not None:
                    acts[owner] = layer.activation if acts[owner] == "linear" else f"{acts[owner]}+{layer.activation}"
            if owner is not None:
                chunks[owner][-1] = np.asarray(x)
        logit_chunks.append(np.asarray(x))
    hidden = [Hidden(name, acts[name], np.concatenate(parts)) for name, parts in chunks.items()]
    return hidden, np.concatenate(logit_chunks)


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
    info = data.get_info(run.spec.dataset)
    out = RunData(run, list(info.class_names))
    try:
        out.params = run.params()
    except UserError as e:
        out.no_weights = str(e)
        return out
    if not predictions:
        return out
    from mnistlab import model
    from mnistlab.training import split

    arrays = data.load(run.spec.dataset, data_dir)
    _, _, x_val, y_val = split(run.spec, arrays)
    if len(y_val):
        probs = np.asarray(model.probabilities(run.spec.model, out.params, x_val))
        out.validation = Evaluation("validation", np.asarray(y_val), probs, x_val)
        out.hidden, out.logits_validation = forward(run.spec.model, out.params, x_val)
    if run.summary.get("test") is not None:
        probs = np.asarray(model.probabilities(run.spec.model, out.params, arrays.test_images))
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


PLOTS = ("curves", "confusion", "mistakes", "weights", "histograms", "activity")


def check_plot(what: str) -> None:
    if what not in PLOTS:
        from mnistlab.spec import suggest

        raise UserError(f"--what {what!r}: {suggest(what, PLOTS)}")


def plot(d: RunData, what: str, split: str | None = None, standalone: bool = True):
    """One matplotlib figure about a run (None when the run lacks what it needs):
    curves | confusion | mistakes | weights | histograms | activity. `split` picks the
    evaluation for confusion and mistakes (validation by default, else test);
    `standalone` titles the curves with the run's name (a page has its own headings)."""
    from mnistlab import model
    from mnistlab.spec import Dense

    check_plot(what)
    run = d.run
    if what == "curves":
        return figures.learning_curves(run.metrics, title=d.name if standalone else None)
    if what in ("confusion", "mistakes"):
        ev = {"validation": d.validation, "test": d.test, None: d.gallery}[split]
        if ev is None:
            return None
        if what == "confusion":
            return figures.confusion_matrix(ev.confusion(len(d.class_names)), d.class_names, title=f"{ev.split} set")
        idx = confident_mistakes(ev.labels, ev.probabilities)
        return figures.mistakes(ev.images[idx], ev.labels[idx], ev.probabilities[idx], d.class_names,
                                title=f"most confident mistakes ({ev.split})")
    if d.params is None:
        return None
    names = model.layer_names(run.spec.model)
    dense = [(n, layer) for n, layer in zip(names, run.spec.model.layers) if isinstance(layer, Dense)]
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
                                           d.params[f"{n}/kernel"], _regularizer_text(layer)) for n, layer in dense])
    relu = [(h.name, h.active_fraction) for h in d.hidden if h.relu]
    return figures.unit_activity(relu) if relu else None


CAPTIONS = {
    "curves": ("Learning curves", "Training (grey) and validation (orange) per epoch; shaded: the gap between them."),
    "confusion": ("Confusion matrix", "Rows: true label; columns: prediction. Right: recall per class (%); "
                  "bottom: precision per class (%)."),
    "mistakes": ("Most confident mistakes", "The wrong predictions the network was surest of. Bars: probability "
                 "per class (green: true class, red: predicted)."),
    "weights": ("First-layer weights", "Each unit's 784 incoming weights as a 28x28 picture (red +, blue -), "
                "ranked by |mean output on validation| x norm of its outgoing weights (the number above; "
                "without a validation set, by the norms of its weights)."),
    "histograms": ("Weight histograms", "Near zero: |w| below 1% of the layer's largest |w| "
                   "(what an L1 penalty produces)."),
    "activity": ("Hidden-unit activity", "For each ReLU unit, the fraction of validation images that make it "
                 "fire. A unit at 0 never fires: a dead ReLU."),
}


def run_figures(d: RunData, prefix: str = "") -> list[Figure]:
    """The run's pictures, in page order."""
    wanted = [("curves", None)] + [("confusion", ev.split) for ev in (d.validation, d.test) if ev is not None]
    wanted += [("mistakes", None), ("weights", None), ("histograms", None), ("activity", None)]
    out = []
    for what, split in wanted:
        fig = plot(d, what, split, standalone=False)
        if fig is None:
            continue
        title, caption = CAPTIONS[what]
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
    final = summary.get("final") or (metrics[-1] if metrics else {}) or {}
    fit = figures.overfitting(metrics)
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
    cards.append(("epochs", f"{done}/{asked}",
                  summary.get("status", "unknown")))
    if summary.get("train_seconds") is not None:
        cards.append(("training time", f"{summary['train_seconds']:.1f} s",
                      f"+ {summary.get('compile_seconds', 0):.1f} s compile"))
    if d.params is not None:
        n_params = sum(int(np.prod(v.shape)) for v in d.params.values())
        cards.append(("parameters", f"{n_params:,}", " → ".join(
            [str(d.params[k].shape[0]) for k in d.params if k.endswith("/kernel")][:1]
            + [str(d.params[k].shape[1]) for k in d.params if k.endswith("/kernel")])))

    verdict = _verdict(metrics, fit, summary)
    epochs = [{k: fmt(r.get(k)) if k != "learning_rate" else (f"{r[k]:.4g}" if r.get(k) is not None else "–")
               for k in ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds")}
              for r in metrics]
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
    layers = []
    if d.params is not None:
        from mnistlab import model
        from mnistlab.spec import Dense

        by_name = {h.name: h for h in d.hidden}
        dense = [(n, layer) for n, layer in zip(model.layer_names(run.spec.model), run.spec.model.layers)
                 if isinstance(layer, Dense)]
        for i, (n, layer) in enumerate(dense):
            s = figures.weight_stats(d.params[f"{n}/kernel"])
            h = by_name.get(n)
            if i == len(dense) - 1:
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
    env = dict(summary.get("environment") or environment or {})
    env_rows = [("seed", run.spec.training.seed), ("dataset", run.spec.dataset),
                ("data source", summary.get("data_source", "–"))]
    env_rows += [(k, v) for k, v in env.items()]
    samples = f"{summary.get('train_samples', '–')} / {summary.get('validation_samples', '–')}"
    env_rows += [("train / validation samples", samples),
                 ("compile seconds", fmt(summary.get("compile_seconds"), 2)),
                 ("wall seconds", fmt(summary.get("wall_seconds"), 2))]
    evaluations = [{"split": e.get("split", "?"), "accuracy": fmt(e.get("accuracy")), "loss": fmt(e.get("loss")),
                    "samples": e.get("samples", "–"), "at": e.get("at", "at training")}
                   for e in summary.get("evaluations", [])]
    config_path = run.path / runs.CONFIG
    return {"name": d.name, "path": str(run.path), "status": summary.get("status", "unknown"),
            "spec_name": run.spec.name, "cards": cards, "verdict": verdict, "epochs": epochs,
            "per_class": per_class, "layers": layers, "env": env_rows, "evaluations": evaluations,
            "config": config_path.read_text() if config_path.exists() else "",
            "no_weights": d.no_weights, "prefix": prefix,
            "figures": {f.key[len(prefix):]: f for f in run_figures(d, prefix)}}


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
    from mnistlab import __version__

    css = (TEMPLATES / "report.css").read_text()
    return _environment().get_template(template).render(
        css=css, generated=time.strftime("%Y-%m-%d %H:%M"), version=__version__, **context)


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
    table.append(("status", [r.summary.get("status", "unknown") for r in opened]))
    table.append(("train seconds", [r.summary.get("train_seconds") for r in opened]))
    flat = [spec_lib.flatten(r.spec.resolved()) for r in opened]
    all_keys = sorted(set().union(*flat))
    differing = [(k, [f.get(k) for f in flat]) for k in all_keys if len({json.dumps(f.get(k)) for f in flat}) > 1]
    series = {label: r.metrics for label, r in zip(labels, opened)}
    return {"labels": labels, "paths": [str(r.path) for r in opened], "table": table,
            "differing": differing, "series": series}


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
