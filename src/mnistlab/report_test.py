"""report.py: run, sweep and study folders into one offline HTML page, on a real trained run.

The numbers are checked against values computed here independently: predictions from a
NumPy forward pass of the saved weights, confusion counts by np.add.at, precision and
recall by hand, importances on a grid whose answer is known.
"""

import base64
import json
import math
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import mnistlab
from mnistlab import data, figures, model, report, runs, search
from mnistlab import spec as spec_lib
from mnistlab.errors import UserError

pytestmark = pytest.mark.slow  # processes, servers, or training for seconds each

QUICK = ["training.subset=10000", "training.epochs=2", "training.validation_split=0.2"]
PNG = b"\x89PNG\r\n\x1a\n"


# --- fixtures: a real run, a real sweep, a fake sweep and a fake study ------------------


@pytest.fixture(scope="session")
def mnist(mnist_root):
    return data.load("mnist", mnist_root)


@pytest.fixture(scope="session")
def trained(mnist_root, mnist, tmp_path_factory):
    os.environ.setdefault("MNISTLAB_DATA", str(mnist_root))  # what `report` loads the split from
    spec = mnistlab.with_overrides(mnistlab.preset("fast"), QUICK)
    result = mnistlab.train(spec, runs_dir=tmp_path_factory.mktemp("runs"), test=True, arrays=mnist)
    return result.run_dir


@pytest.fixture(scope="session")
def run_report(trained, mnist_root):
    return report.build(trained, mnist_root)


def numpy_probabilities(run_dir: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fast preset's 784-256-10 network in plain NumPy: (probabilities, hidden outputs)."""
    w = runs.open_run(run_dir).params()
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    h = np.maximum(x @ w["dense/kernel"] + w["dense/bias"], 0.0)
    z = h @ w["dense_1/kernel"] + w["dense_1/bias"]
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True), h


# 2400 training images in batches of 128: 19 steps, the whole of the cosine decay.
CNN_QUICK = ["training.subset=3000", "training.epochs=1", "training.validation_split=0.2",
             "optimizer.schedule.decay_steps=38"]  # 2400 images / batch 64


def cnn_spec():
    """The cnn preset with its second convolution made linear and followed by batch
    normalization and a ReLU layer: convolution, pooling, batch normalization, activation,
    flatten, dropout and dense layers all in one network."""
    tables = mnistlab.preset("cnn").model_dump(mode="json", exclude_unset=True)
    layers = [layer for layer in tables["model"]["layers"] if not layer["type"].startswith("random_")]
    tables["model"]["layers"] = layers
    layers[2]["activation"] = "linear"
    layers[3:3] = [{"type": "batch_normalization"}, {"type": "activation", "activation": "relu"}]
    return mnistlab.with_overrides(spec_lib.from_dict(tables), CNN_QUICK)


@pytest.fixture(scope="session")
def cnn_trained(mnist_root, mnist, tmp_path_factory):
    os.environ.setdefault("MNISTLAB_DATA", str(mnist_root))
    result = mnistlab.train(cnn_spec(), runs_dir=tmp_path_factory.mktemp("cnn-runs"), test=True, arrays=mnist)
    return result.run_dir


@pytest.fixture(scope="session")
def cnn_report(cnn_trained, mnist_root):
    return report.build(cnn_trained, mnist_root)


@pytest.fixture(scope="session")
def cnn_data(cnn_trained, mnist_root):
    return report.collect_run(cnn_trained, mnist_root)


def np_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras' "valid" Conv2D by its definition: out[n, y, x, f] = sum_ijc in[n, y+i, x+j, c] k[i, j, c, f] + b[f]."""
    kh, kw = kernel.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # (N, Y, X, C, kh, kw)
    return np.einsum("nyxcij,ijcf->nyxf", windows, kernel, optimize=True) + bias


def np_max_pool(x: np.ndarray) -> np.ndarray:
    n, h, w, c = x.shape
    return x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def numpy_cnn(run_dir: Path, images: np.ndarray, chunk: int = 200):
    """`cnn_spec`'s network in plain NumPy, float64: (probabilities, first convolution's
    ReLU maps, second convolution's maps after batch normalization and ReLU)."""
    w = {k: v.astype(np.float64) for k, v in runs.open_run(run_dir).params().items()}
    probs, maps1, maps2 = [], [], []
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].astype(np.float64)[..., None] / 255.0
        a = np.maximum(np_conv(x, w["conv2d/kernel"], w["conv2d/bias"]), 0.0)
        z = np_conv(np_max_pool(a), w["conv2d_1/kernel"], w["conv2d_1/bias"])
        bn = "batch_normalization/"
        z = (z - w[bn + "moving_mean"]) / np.sqrt(w[bn + "moving_variance"] + 1e-3) * w[bn + "gamma"] + w[bn + "beta"]
        b = np.maximum(z, 0.0)
        logits = np_max_pool(b).reshape(len(x), -1) @ w["dense/kernel"] + w["dense/bias"]
        e = np.exp(logits - logits.max(1, keepdims=True))
        probs.append(e / e.sum(1, keepdims=True))
        maps1.append(a)
        maps2.append(b)
    return np.concatenate(probs), np.concatenate(maps1), np.concatenate(maps2)


def drawn(ax) -> np.ndarray:
    """The pixels of the one picture an Axes shows; the background between tiles as NaN."""
    (image,) = ax.get_images()
    return np.ma.filled(np.ma.asarray(image.get_array(), dtype=float), np.nan)


def tiles_by_hand(tiles: np.ndarray, columns: int) -> np.ndarray:
    """Tile t at row t // columns and column t % columns, one NaN pixel between tiles."""
    n, h, w = tiles.shape
    rows = -(-n // columns)
    out = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1), np.nan)
    for t in range(n):
        r, c = divmod(t, columns)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = tiles[t]
    return out


GRID_LR = [1e-3, 1e-2, 1e-1]
GRID_L2 = [0.0, 1e-3]


def fake_rows(id_key="member"):
    """A 3x2 grid whose metric depends on the learning rate only, plus one diverged member."""
    rows = []
    for i, (lr, l2) in enumerate((lr, l2) for lr in GRID_LR for l2 in GRID_L2):
        acc = {1e-3: 0.90, 1e-2: 0.95, 1e-1: 0.80}[lr]
        rows.append({id_key: i, "group": 0, "status": "completed", "params": {"optimizer.learning_rate": lr,
                     "model.layers.0.kernel_regularizer.l2": l2}, "seed": 0, "best_epoch": 3,
                     "val_accuracy": acc, "val_loss": 1 - acc, "accuracy": acc + 0.02, "loss": 0.9 - acc, "epochs": 3})
    rows.append({id_key: 6, "group": 0, "status": "diverged", "params": {"optimizer.learning_rate": 10.0,
                 "model.layers.0.kernel_regularizer.l2": 0.0}, "seed": 0, "best_epoch": 0,
                 "val_accuracy": float("nan"), "val_loss": float("nan"), "accuracy": float("nan"),
                 "loss": float("nan"), "epochs": 1})
    return rows


def fake_metrics(rows, id_key="member"):
    lines = []
    for r in rows:
        for e in range(1, r["epochs"] + 1):
            v = r["val_accuracy"] - 0.05 * (r["epochs"] - e) if r["status"] == "completed" else float("nan")
            lines.append({id_key: r[id_key], "epoch": e, "loss": 1.0 / e, "accuracy": v + 0.01, "val_loss": 1.1 / e,
                          "val_accuracy": v, "learning_rate": r["params"]["optimizer.learning_rate"], "seconds": 0.1})
    return "".join(json.dumps(x) + "\n" for x in lines)


def make_sweep(folder: Path, best_run: Path | None, csv_only: bool = False) -> Path:
    """A sweep folder as `mnistlab sweep` lays it out (rows ranked by the sweep's own sort)."""
    folder.mkdir(parents=True)
    rows = search.sort_rows(fake_rows(), "val_accuracy", "maximize")
    (folder / "sweep.toml").write_text('name = "grid"\nbase = "fast"\n[search]\nmethod = "grid"\n')
    (folder / "summary.json").write_text(json.dumps({
        "name": "grid", "metric": "val_accuracy", "direction": "maximize", "members": 7, "completed": 6,
        "diverged": 1, "stopped": 0, "best_member": 2, "seconds": 12.5}))
    if csv_only:
        (folder / "results.csv").write_text(search.rows_csv(rows))  # the sweep's own CSV writer
    else:
        (folder / "results.json").write_text(json.dumps(rows))
    (folder / "metrics.jsonl").write_text(fake_metrics(rows))
    if best_run is not None:
        shutil.copytree(best_run, folder / "best")
    return folder


def make_study(folder: Path) -> Path:
    """A study folder as the Optuna issue plans it: study.json, trials.json, metrics with "trial"."""
    folder.mkdir(parents=True)
    rows = fake_rows("trial")
    (folder / "study.json").write_text(json.dumps({
        "name": "tpe", "metric": "val_loss", "direction": "minimize", "best_trial": 2,
        "importances": {"optimizer.learning_rate": 0.875, "model.layers.0.kernel_regularizer.l2": 0.125}}))
    (folder / "trials.json").write_text(json.dumps(rows))
    (folder / "metrics.jsonl").write_text(fake_metrics(rows, "trial"))
    return folder


@pytest.fixture(scope="session")
def sweep_dir(trained, tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("sweeps") / "20261127-120000-grid", trained)


@pytest.fixture(scope="session")
def sweep_report(sweep_dir, mnist_root):
    return report.build(sweep_dir, mnist_root)


class Checker(HTMLParser):
    """Tags must nest and close; collects <img> sources and every URL the page names."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "source", "col", "wbr"}

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.urls, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        self.urls += [attrs[k] for k in ("src", "href", "action", "poster") if k in attrs]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, d):
        self.text.append(d)


def parse(page: str) -> Checker:
    checker = Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == [], f"unclosed tags: {checker.stack}"
    return checker


# --- numbers --------------------------------------------------------------------------


def test_confusion_matrix_and_mistakes_on_a_tiny_example():
    labels = np.array([0, 0, 0, 1, 1, 2])
    probs = np.array([[.9, .05, .05], [.6, .3, .1], [.2, .7, .1], [.1, .8, .1], [.05, .05, .9], [.1, .1, .8]])
    m = report.confusion_matrix(labels, probs.argmax(1), 3)
    np.testing.assert_array_equal(m, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    # wrong: index 2 (0 taken for 1 at .7) and index 4 (1 taken for 2 at .9): the surer first
    assert list(report.confident_mistakes(labels, probs)) == [4, 2]


def test_parameter_importance_on_a_grid_by_hand():
    # y = 2a + b on the 2x2 grid: variance 5 in all; a's groups explain 4, b's 1, nothing left.
    rows = [{"params": {"a": a, "b": b}, "m": 2 * a + b} for a in (0, 1) for b in (0, 1)]
    assert report.parameter_importance(rows, ["a", "b"], "m") == pytest.approx({"a": 0.8, "b": 0.2})
    # the fake sweep: the metric depends on the learning rate only; the diverged member is left out
    imp = report.parameter_importance(fake_rows(), ["optimizer.learning_rate", "model.layers.0.kernel_regularizer.l2"],
                                      "val_accuracy")
    assert imp == pytest.approx({"optimizer.learning_rate": 1.0, "model.layers.0.kernel_regularizer.l2": 0.0})
    # random search: values never repeat, so they are binned (else each would explain everything)
    rng = np.random.default_rng(0)
    rows = [{"params": {"x": float(x), "noise": float(n)}, "m": float(x)}
            for x, n in zip(rng.uniform(0, 1, 200), rng.uniform(0, 1, 200))]
    imp = report.parameter_importance(rows, ["x", "noise"], "m")
    assert imp["x"] > 0.9 and imp["noise"] < 0.1  # 4 bins of a uniform x: 1 - 1/16 = 0.94; noise ~ 3/199


def test_forward_walk_matches_the_model(trained, mnist):
    from mnistlab import model

    run = runs.open_run(trained)
    images = mnist.test_images[:300]
    hidden, logits = report.forward(run.spec.model, run.params(), images)
    np.testing.assert_allclose(logits, np.asarray(model.logits(run.spec.model, run.params(), {}, images)), atol=1e-4)
    _, h = numpy_probabilities(trained, images)
    assert [x.name for x in hidden] == ["dense"] and hidden[0].relu
    np.testing.assert_allclose(hidden[0].outputs, h, atol=1e-4)
    assert hidden[0].dead_fraction == np.mean(h.max(0) <= 0)


def test_run_numbers_equal_independent_predictions(trained, mnist, mnist_root, keras_validation):
    d = report.collect_run(trained, mnist_root)
    run = runs.open_run(trained)
    x_val, y_val = keras_validation(run.spec, mnist)
    probs, _ = numpy_probabilities(trained, x_val)
    pred = probs.argmax(1)
    counts = np.zeros((10, 10), int)
    np.add.at(counts, (y_val, pred), 1)
    m = d.validation.confusion(10)
    np.testing.assert_array_equal(m, counts)
    np.testing.assert_array_equal(m.sum(1), np.bincount(y_val, minlength=10))
    np.testing.assert_array_equal(m.sum(0), np.bincount(pred, minlength=10))
    # the engine measured the same accuracy during training
    assert np.trace(m) / m.sum() == pytest.approx(run.summary["final"]["val_accuracy"], abs=1e-6)
    t = d.test.confusion(10)
    assert np.trace(t) / t.sum() == pytest.approx(run.summary["test"]["accuracy"], abs=1e-6)
    wrong = np.flatnonzero(pred != y_val)
    assert report.confident_mistakes(d.validation.labels, d.validation.probabilities)[0] == \
        wrong[np.argmax(probs[wrong, pred[wrong]])]


def test_conv_walk_matches_the_model_and_numpy(cnn_trained, mnist):
    run = runs.open_run(cnn_trained)
    spec, w = run.spec.model, run.params()
    images = mnist.test_images[:150]
    hidden, logits = report.forward(spec, w, images, batch=64)  # three batches, the last short
    np.testing.assert_allclose(logits, np.asarray(model.logits(spec, w, model.hyperparameters(spec), images)),
                               atol=1e-4)
    probs, maps1, maps2 = numpy_cnn(cnn_trained, images)
    np.testing.assert_allclose(report.probabilities(spec, w, images), probs, atol=1e-5)
    # conv2d_1 is linear, then batch normalization and a ReLU layer: read after the ReLU
    assert [(h.name, h.activation, h.kind) for h in hidden] == [("conv2d", "relu", "conv2d"),
                                                                ("conv2d_1", "relu", "conv2d")]
    np.testing.assert_allclose(hidden[0].outputs, maps1.max(axis=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(hidden[1].outputs, maps2.max(axis=(1, 2)), atol=1e-4)
    # the share of (image, position) pairs where a filter is > 0 (1e-3: float32 vs float64 at exactly 0)
    np.testing.assert_allclose(hidden[1].active_fraction, (maps2 > 0).mean(axis=(0, 1, 2)), atol=1e-3)
    assert hidden[1].dead_fraction == np.mean(maps2.max(axis=(0, 1, 2)) <= 0)


def test_walk_passes_every_kind_of_layer():
    """Strides, "same" padding, average pooling, batch normalization with moved statistics,
    stacked activations, global pooling, augmentation and dropout: the walk's logits are the model's."""
    spec = spec_lib.ModelSpec(layers=[
        {"type": "random_translation", "height_factor": 0.1, "width_factor": 0.1},
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"},
        {"type": "batch_normalization"},
        {"type": "activation", "activation": "tanh"},
        {"type": "activation", "activation": "relu"},
        {"type": "average_pooling2d", "pool_size": 3, "strides": 2, "padding": "same"},
        {"type": "conv2d", "filters": 5, "kernel_size": 2, "activation": "relu"},
        {"type": "max_pooling2d", "pool_size": 2, "strides": 1},
        {"type": "dropout", "rate": 0.3},
        {"type": "global_average_pooling2d"},
        {"type": "dense", "units": 6, "activation": "relu"},
        {"type": "dense", "units": 10},
        {"type": "activation", "activation": "softmax"}])
    params = model.init(spec, 0, (28, 28))
    rng = np.random.default_rng(7)  # statistics and scales away from their 0/1 start, so each one counts
    for k, lo, hi in (("moving_mean", -0.5, 0.5), ("moving_variance", 0.5, 2.0), ("gamma", 0.5, 1.5),
                      ("beta", -0.5, 0.5)):
        params[f"batch_normalization/{k}"] = rng.uniform(lo, hi, 4).astype(np.float32)
    images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    hyper = model.hyperparameters(spec)
    hidden, logits = report.forward(spec, params, images, batch=8)
    np.testing.assert_allclose(logits, np.asarray(model.logits(spec, params, hyper, images)), atol=1e-5)
    assert report.recorded(spec) == {1: ("conv2d", "linear"), 3: ("conv2d", "tanh"), 4: ("conv2d", "tanh+relu"),
                                     6: ("conv2d_1", "relu"), 10: ("dense", "relu")}
    assert [(h.name, h.activation, h.outputs.shape) for h in hidden] == [
        ("conv2d", "tanh+relu", (20, 4)), ("conv2d_1", "relu", (20, 5)), ("dense", "relu", (20, 6))]
    assert all(h.relu for h in hidden)
    name, activation, maps = report.first_maps(spec, params, images[3])
    assert (name, activation, maps.shape) == ("conv2d", "tanh+relu", (14, 14, 4))  # 28 / stride 2, "same"
    np.testing.assert_allclose(maps.max(axis=(0, 1)), hidden[0].outputs[3], atol=1e-6)
    # the report's probabilities, in batches, are the softmax of the model's logits
    z = np.asarray(model.logits(spec, params, hyper, images), np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(report.probabilities(spec, params, images, batch=7), e / e.sum(1, keepdims=True),
                               atol=1e-6)


def test_layer_table_writes_settings_shapes_and_weight_counts():
    spec = spec_lib.ModelSpec(layers=[
        {"type": "random_zoom", "height_factor": 0.1, "fill_mode": "constant"},
        {"type": "flatten"},
        {"type": "dense", "units": 64, "activation": "relu", "kernel_regularizer": "l2",
         "kernel_initializer": {"name": "random_normal", "stddev": 0.1}},
        {"type": "dense", "units": 10, "activation": "softmax"}])
    rows = report.architecture(spec, (28, 28))
    assert [(r["name"], r["settings"], r["shape"], r["params"]) for r in rows] == [
        ("input", "pixels x 0.003922", "28x28x1", "0"),  # an augmentation layer: the input is an image
        ("random_zoom", "fill_mode=constant, height_factor=0.1", "28x28x1", "0"),
        ("flatten", "", "784", "0"),
        ("dense", "units=64, activation=relu, kernel_initializer=random_normal(mean=0, stddev=0.1), "
                  "kernel_regularizer=(l2=0.01)", "64", f"{784 * 64 + 64:,}"),
        ("dense_1", "units=10, activation=softmax", "10", f"{64 * 10 + 10:,}")]
    assert report.shape_path(spec, (28, 28)) == "28x28x1 → 64 → 10"


def test_conv_run_numbers_equal_independent_predictions(cnn_data, cnn_trained, mnist, keras_validation):
    run = runs.open_run(cnn_trained)
    x_val, y_val = keras_validation(run.spec, mnist)
    probs, _, _ = numpy_cnn(cnn_trained, x_val)
    np.testing.assert_allclose(cnn_data.validation.probabilities, probs, atol=1e-5)
    counts = np.zeros((10, 10), int)
    np.add.at(counts, (y_val, probs.argmax(1)), 1)
    np.testing.assert_array_equal(cnn_data.validation.confusion(10), counts)
    assert np.trace(counts) / counts.sum() == pytest.approx(run.summary["final"]["val_accuracy"], abs=1e-6)
    t = cnn_data.test.confusion(10)
    assert np.trace(t) / t.sum() == pytest.approx(run.summary["test"]["accuracy"], abs=1e-6)


# --- the page -------------------------------------------------------------------------


def test_run_report_embeds_every_figure(run_report):
    page = parse(run_report.html)
    keys = [f.key for f in run_report.figures]
    assert keys == ["curves", "confusion-validation", "confusion-test", "mistakes", "weights", "histograms",
                    "activity"]
    assert len(page.images) == len(keys)
    for fig, src in zip(run_report.figures, page.images):
        assert src == fig.uri and src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    assert not [u for u in page.urls if not (u.startswith("data:") or u.startswith("#"))]
    assert "<script" not in run_report.html and "<link" not in run_report.html


def test_run_report_contains_the_numbers_of_the_run(run_report, trained, mnist, mnist_root, keras_validation):
    html = run_report.html
    run = runs.open_run(trained)
    final, test = run.summary["final"], run.summary["test"]
    for value in (final["val_accuracy"], final["val_loss"], final["accuracy"], test["accuracy"], test["loss"]):
        assert f"{value:.4f}" in html
    assert f"{100 * final['val_accuracy']:.2f}%" in html and f"{100 * test['accuracy']:.2f}%" in html
    for record in run.metrics:
        assert f"<td>{record['epoch']}</td><td>{record['loss']:.4f}</td>" in html
    x_val, y_val = keras_validation(run.spec, mnist)
    probs, h = numpy_probabilities(trained, x_val)
    pred = probs.argmax(1)
    precision = np.mean(y_val[pred == 7] == 7)
    recall = np.mean(pred[y_val == 7] == 7)
    assert f"<td>7</td><td>{np.sum(y_val == 7)}</td><td>{np.sum(pred == 7)}</td><td>{precision:.4f}</td>" \
           f"<td>{recall:.4f}</td>" in html
    dead = int(np.sum(h.max(0) <= 0))
    assert f"{dead}/256 (" in html
    kernel = run.params()["dense/kernel"]
    assert f"{np.sqrt(np.sum(kernel.astype(np.float64) ** 2)):.4g}" in html  # L2 norm
    assert (trained / runs.CONFIG).read_text().splitlines()[0].replace('"', "&#34;") in html
    assert run.summary["environment"]["jax"] in html and "cpu_count" in html
    assert f"{run.summary['train_samples']} / {run.summary['validation_samples']}" in html


def test_sweep_report_reads_members_metrics_and_best_run(sweep_report, sweep_dir, trained):
    assert sweep_report.kind == "sweep"
    keys = [f.key for f in sweep_report.figures]
    assert keys[:4] == ["vs-params", "parallel", "best-curves", "importance"]
    assert {"best-curves", "best-confusion-validation", "best-mistakes", "best-weights"} <= set(keys)
    page = parse(sweep_report.html)
    assert len(page.images) == len(keys) == len(set(page.images))
    html = sweep_report.html
    assert "<td>2 ★</td>" in html  # the summary's best member, marked
    for r in fake_rows():
        if r["status"] == "completed":
            assert f"{r['val_accuracy']:.4f}" in html
    assert "diverged" in html and "<td>1.000</td>" in html  # lr's importance on this grid
    assert "model.layers.0.kernel_regularizer.l2" in html and "learning_rate" in html
    final = runs.open_run(trained).summary["final"]
    assert f"{final['val_accuracy']:.4f}" in html  # the best run, reported in full
    c = report.collect_collection(sweep_dir)
    assert [r["member"] for r in c.ranked()][:3] in ([2, 3, 0], [3, 2, 0], [2, 3, 1], [3, 2, 1])
    assert len(c.curves) == 7 and len(c.curves[0]) == 3


def test_csv_rows_read_like_json(tmp_path):
    a = report.collect_collection(make_sweep(tmp_path / "a", None))
    b = report.collect_collection(make_sweep(tmp_path / "b", None, csv_only=True))
    for ra, rb in zip(a.rows, b.rows):
        assert ra["params"] == rb["params"] and ra["member"] == rb["member"]
        a, b = ra["val_accuracy"], rb["val_accuracy"]
        assert a == b or (math.isnan(a) and math.isnan(b))


def test_study_folder_uses_its_own_importances(tmp_path):
    folder = make_study(tmp_path / "study")
    assert report.detect(folder) == "study"
    r = report.build(folder)
    assert r.kind == "study" and r.html.count("<img") == 4
    c = report.collect_collection(folder)
    assert c.id_key == "trial" and c.best_id == 2 and not c.maximize
    assert c.importances == {"optimizer.learning_rate": 0.875, "model.layers.0.kernel_regularizer.l2": 0.125}
    assert "0.875" in r.html and "study.json" in r.html
    assert [row["trial"] for row in c.ranked()][:2] in ([2, 3], [3, 2])  # val_loss, lowest first


def test_detect_refuses_other_folders(tmp_path):
    with pytest.raises(UserError, match="not a run, sweep or study"):
        report.detect(tmp_path)
    with pytest.raises(UserError, match="no such folder"):
        report.detect(tmp_path / "missing")


CNN_FIGURES = ["curves", "confusion-validation", "confusion-test", "mistakes", "weights", "feature-maps",
               "histograms", "activity"]


def test_conv_report_embeds_every_figure(cnn_report):
    page = parse(cnn_report.html)
    assert [f.key for f in cnn_report.figures] == CNN_FIGURES
    assert page.images == [f.uri for f in cnn_report.figures]
    for src in page.images:
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    assert not [u for u in page.urls if not (u.startswith("data:") or u.startswith("#"))]
    assert "<script" not in cnn_report.html and "<link" not in cnn_report.html
    figs = {f.key: f for f in cnn_report.figures}
    assert figs["weights"].title == "First-layer filters"
    assert "Each tile is one filter of the first convolution" in figs["weights"].caption
    assert "Each tile is one filter of the first convolution" in cnn_report.html


def test_conv_filters_drawn_are_the_kernel(cnn_report, cnn_data, cnn_trained):
    kernel = runs.open_run(cnn_trained).params()["conv2d/kernel"]  # (3, 3, 1, 32), from the file
    assert kernel.shape == (3, 3, 1, 32)
    fig = report.plot(cnn_data, "weights")
    pixels = drawn(fig.axes[0])
    expected = np.full((2 * 4 - 1, 16 * 4 - 1), np.nan)  # 16 filters to a row, one pixel between them
    for f in range(32):
        r, c = divmod(f, 16)
        expected[4 * r:4 * r + 3, 4 * c:4 * c + 3] = kernel[:, :, 0, f]
    np.testing.assert_array_equal(pixels, expected)
    big = float(np.abs(kernel).max())
    assert fig.axes[0].get_images()[0].get_clim() == (-big, big)
    # the page embeds this very figure
    assert {f.key: f for f in cnn_report.figures}["weights"].png == figures.png_bytes(fig)


def test_conv_feature_maps_drawn_are_the_convolution_of_the_image(cnn_report, cnn_data, cnn_trained, mnist,
                                                                  keras_validation):
    run = runs.open_run(cnn_trained)
    x_val, y_val = keras_validation(run.spec, mnist)
    _, maps1, _ = numpy_cnn(cnn_trained, x_val[:1])
    fig = report.plot(cnn_data, "feature-maps")
    ax_image, ax_maps = fig.axes[:2]
    np.testing.assert_array_equal(ax_image.get_images()[0].get_array(), x_val[0])
    assert ax_image.get_title(loc="left") == f"validation image 0: {y_val[0]}"
    np.testing.assert_allclose(drawn(ax_maps), tiles_by_hand(maps1[0].transpose(2, 0, 1), 8), atol=1e-5)
    assert {f.key: f for f in cnn_report.figures}["feature-maps"].png == figures.png_bytes(fig)


def test_conv_report_describes_the_layers(cnn_report, cnn_trained, mnist, keras_validation):
    html = cnn_report.html
    run = runs.open_run(cnn_trained)
    w = run.params()
    conv1, conv2, dense = 3 * 3 * 1 * 32 + 32, 3 * 3 * 32 * 64 + 64, 5 * 5 * 64 * 10 + 10
    bn = 4 * 64  # gamma, beta, moving mean and variance
    rows = [("conv2d", "filters=32, kernel_size=3x3, activation=relu", "26x26x32", conv1),
            ("max_pooling2d", "pool_size=2x2", "13x13x32", 0),
            ("conv2d_1", "filters=64, kernel_size=3x3", "11x11x64", conv2),
            ("batch_normalization", "", "11x11x64", bn),
            ("activation", "activation=relu", "11x11x64", 0),
            ("max_pooling2d_1", "pool_size=2x2", "5x5x64", 0),
            ("flatten", "", "1600", 0),
            ("dropout", "rate=0.4", "1600", 0),
            ("dense", "units=10, activation=softmax", "10", dense)]
    for name, settings, shape, count in rows:
        assert f'<td>{name}</td><td class="text">{settings}</td><td>{shape}</td><td>{count:,}</td>' in html
    assert sum(v.size for v in w.values()) == conv1 + conv2 + bn + dense
    assert f"{conv1 + conv2 + bn + dense:,}" in html
    assert "28x28x1 → 26x26x32 → 11x11x64 → 10" in html
    x_val, _ = keras_validation(run.spec, mnist)
    _, maps1, maps2 = numpy_cnn(cnn_trained, x_val)
    dead1, dead2 = int(np.sum(maps1.max(axis=(0, 1, 2)) <= 0)), int(np.sum(maps2.max(axis=(0, 1, 2)) <= 0))
    assert "<td>conv2d</td><td>3x3x1x32</td><td class=\"text\">relu</td>" in html
    assert f"<td>{dead1}/32 (" in html and f"<td>{dead2}/64 (" in html
    kernel = w["conv2d_1/kernel"].astype(np.float64)
    assert f"{np.sqrt(np.sum(kernel ** 2)):.4g}" in html  # its L2 norm


# --- in a browser ---------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"


@pytest.mark.parametrize("which", ["sweep_report", "cnn_report"])
def test_report_opens_offline_in_chromium(which, request, tmp_path):
    if not Path(CHROMIUM).exists():  # `make test` installs it (scripts/system-deps.sh)
        pytest.fail(f"{CHROMIUM} missing: run `make test`, or `apt-get install chromium`")
    from playwright.sync_api import sync_playwright

    built = request.getfixturevalue(which)
    expected_title = "grid" if which == "sweep_report" else request.getfixturevalue("cnn_trained").name
    page_file = tmp_path / "report.html"
    page_file.write_text(built.html)
    requests = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            context = browser.new_context(offline=True)
            page = context.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
            title = page.title()
        finally:
            browser.close()
    assert len(images) == len(built.figures)
    assert all(done and w > 0 and h > 0 for done, w, h in images), images
    assert title.startswith(expected_title)
    assert requests and all(u.startswith(("file:", "data:")) for u in requests), requests


# --- the commands ---------------------------------------------------------------------


def cli(*args):
    from mnistlab import cli as cli_lib

    return CliRunner().invoke(cli_lib.app, list(map(str, args)))


def test_report_command_writes_the_page(tmp_path):
    folder = make_study(tmp_path / "study")
    done = cli("report", folder)
    assert done.exit_code == 0, done.output
    assert (folder / "report.html").is_file() and "wrote" in done.output
    out = tmp_path / "elsewhere.html"
    assert cli("report", folder, "--out", out).exit_code == 0
    parse(out.read_text())
    assert isinstance(cli("report", folder, "--out", tmp_path / "no" / "x.html").exception, UserError)


def test_plot_command_writes_pictures(trained, mnist_root, tmp_path):
    for what in ("curves", "confusion"):
        out = tmp_path / f"{what}.png"
        done = cli("plot", trained, "--what", what, "--out", out, "--data-dir", mnist_root)
        assert done.exit_code == 0, done.output
        assert out.read_bytes().startswith(PNG)
    done = subprocess.run([sys.executable, "-m", "mnistlab", "plot", str(trained), "--what", "wieghts", "--out",
                           str(tmp_path / "w.png")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "did you mean 'weights'" in done.stderr


def test_compare_command(trained, sweep_dir, tmp_path):
    best = sweep_dir / "best"
    done = cli("compare", trained, best, "--out", tmp_path / "c.html")
    assert done.exit_code == 0, done.output
    final = runs.open_run(trained).summary["final"]
    assert f"{final['val_accuracy']:.4f}" in done.output
    page = (tmp_path / "c.html").read_text()
    assert len(parse(page).images) == 1 and f"{final['val_accuracy']:.4f}" in page
    assert cli("compare", trained, best, "--out", tmp_path / "c.png").exit_code == 0
    assert (tmp_path / "c.png").read_bytes().startswith(PNG)
    assert isinstance(cli("compare", trained).exception, UserError)


def test_plot_and_compare_commands_on_a_conv_run(cnn_trained, trained, mnist_root, tmp_path):
    for what in ("weights", "feature-maps", "histograms", "activity"):
        out = tmp_path / f"{what}.png"
        done = cli("plot", cnn_trained, "--what", what, "--out", out, "--data-dir", mnist_root)
        assert done.exit_code == 0, done.output
        assert out.read_bytes().startswith(PNG)
    done = cli("plot", trained, "--what", "feature-maps", "--out", tmp_path / "m.png", "--data-dir", mnist_root)
    assert isinstance(done.exception, UserError)
    assert "cannot draw feature-maps: it has no conv2d layer" in str(done.exception)
    c = report.compare([trained, cnn_trained])
    assert ("model.layers.0.type", ["dense", "conv2d"]) in c["differing"]
    done = cli("compare", trained, cnn_trained, "--out", tmp_path / "c.html")
    assert done.exit_code == 0, done.output
    final = runs.open_run(cnn_trained).summary["final"]
    assert f"{final['val_accuracy']:.4f}" in (tmp_path / "c.html").read_text()
