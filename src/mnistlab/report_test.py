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
from mnistlab import data, report, runs, search
from mnistlab.errors import UserError
from mnistlab.training import split

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


def test_run_numbers_equal_independent_predictions(trained, mnist, mnist_root):
    d = report.collect_run(trained, mnist_root)
    run = runs.open_run(trained)
    _, _, x_val, y_val = split(run.spec, mnist)
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


def test_run_report_contains_the_numbers_of_the_run(run_report, trained, mnist, mnist_root):
    html = run_report.html
    run = runs.open_run(trained)
    final, test = run.summary["final"], run.summary["test"]
    for value in (final["val_accuracy"], final["val_loss"], final["accuracy"], test["accuracy"], test["loss"]):
        assert f"{value:.4f}" in html
    assert f"{100 * final['val_accuracy']:.2f}%" in html and f"{100 * test['accuracy']:.2f}%" in html
    for record in run.metrics:
        assert f"<td>{record['epoch']}</td><td>{record['loss']:.4f}</td>" in html
    _, _, x_val, y_val = split(run.spec, mnist)
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


# --- in a browser ---------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"


def test_report_opens_offline_in_chromium(sweep_report, tmp_path):
    if not Path(CHROMIUM).exists():  # `make test` installs it (scripts/system-deps.sh)
        pytest.fail(f"{CHROMIUM} missing: run `make test`, or `apt-get install chromium`")
    from playwright.sync_api import sync_playwright

    page_file = tmp_path / "report.html"
    page_file.write_text(sweep_report.html)
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
    assert len(images) == len(sweep_report.figures)
    assert all(done and w > 0 and h > 0 for done, w, h in images), images
    assert title.startswith("grid")
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
