"""figures.py on known inputs: what is drawn is what was given."""

import math

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.image import AxesImage

from mnistlab import figures

PNG = b"\x89PNG\r\n\x1a\n"

# Five epochs where validation loss is lowest at epoch 3 and then rises: over-fitting.
RECORDS = [
    {"epoch": 1, "loss": 0.9, "accuracy": 0.70, "val_loss": 0.80, "val_accuracy": 0.72, "learning_rate": 1e-3},
    {"epoch": 2, "loss": 0.5, "accuracy": 0.85, "val_loss": 0.55, "val_accuracy": 0.83, "learning_rate": 8e-4},
    {"epoch": 3, "loss": 0.3, "accuracy": 0.91, "val_loss": 0.40, "val_accuracy": 0.88, "learning_rate": 6e-4},
    {"epoch": 4, "loss": 0.2, "accuracy": 0.95, "val_loss": 0.45, "val_accuracy": 0.88, "learning_rate": 4e-4},
    {"epoch": 5, "loss": 0.1, "accuracy": 0.98, "val_loss": 0.50, "val_accuracy": 0.87, "learning_rate": 2e-4},
]


def texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_overfitting_numbers_by_hand():
    fit = figures.overfitting(RECORDS)
    assert fit["best_epoch"] == 3 and fit["best_val_loss"] == 0.40
    assert fit["val_loss_rise"] == pytest.approx(0.50 - 0.40)
    assert fit["loss_gap"] == pytest.approx(0.50 - 0.10)
    assert fit["accuracy_gap"] == pytest.approx(0.98 - 0.87)
    assert figures.overfitting([{"epoch": 1, "loss": 0.3, "accuracy": 0.9}]) is None


def test_learning_curves_draw_the_records_and_mark_the_gap():
    fig = figures.learning_curves(RECORDS, title="t")
    loss_ax, acc_ax, lr_ax = fig.axes[:3]
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    np.testing.assert_allclose(lines["training"].get_ydata(), [r["loss"] for r in RECORDS])
    np.testing.assert_allclose(lines["validation"].get_ydata(), [r["val_loss"] for r in RECORDS])
    best = lines["lowest val_loss (epoch 3)"]
    assert list(best.get_xdata()) == [3, 3]
    assert "gap 0.4000" in [t.get_text() for t in loss_ax.texts]  # val_loss - loss at epoch 5
    assert "gap 0.1100" in [t.get_text() for t in acc_ax.texts]   # accuracy - val_accuracy
    np.testing.assert_allclose(lr_ax.get_lines()[0].get_ydata(), [r["learning_rate"] for r in RECORDS])
    assert loss_ax.get_xlabel() == "epoch" and loss_ax.get_ylabel() == "loss"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "training", "validation", "gap", "lowest val_loss (epoch 3)", "val_loss rising"]
    assert figures.png_bytes(fig).startswith(PNG)


def test_learning_curves_without_validation_still_draw():
    fig = figures.learning_curves([{k: r[k] for k in ("epoch", "loss", "accuracy", "learning_rate")} for r in RECORDS])
    loss_ax, acc_ax, lr_ax = fig.axes[:3]
    for ax, key in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        (line,) = ax.get_lines()  # training only: no validation, no best epoch, no gap
        assert line.get_label() == "training"
        np.testing.assert_allclose(line.get_xdata(), [r["epoch"] for r in RECORDS])
        np.testing.assert_allclose(line.get_ydata(), [r[key] for r in RECORDS])
        assert not [t for t in ax.texts if t.get_text().startswith("gap")]
    np.testing.assert_allclose(lr_ax.get_lines()[0].get_ydata(), [r["learning_rate"] for r in RECORDS])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["training"]
    assert figures.png_bytes(fig).startswith(PNG)


def test_precision_recall_by_hand():
    # true 0 0 0 1 1 2, predicted 0 0 1 1 2 2 -> rows: true, columns: predicted
    m = np.array([[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    precision, recall = figures.precision_recall(m)
    np.testing.assert_allclose(precision, [2 / 2, 1 / 2, 1 / 2])
    np.testing.assert_allclose(recall, [2 / 3, 1 / 2, 1 / 1])
    p, r = figures.precision_recall(np.array([[1, 0], [1, 0]]))  # class 1 never predicted
    assert math.isnan(p[1]) and r[1] == 0


def test_confusion_figure_writes_every_count_where_it_belongs():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    predictions = np.where(rng.random(500) < 0.8, labels, rng.integers(0, 10, 500))
    counts = np.zeros((10, 10), int)
    for t, p in zip(labels, predictions):
        counts[t, p] += 1
    fig = figures.confusion_matrix(counts)
    ax = fig.axes[0]
    drawn = np.zeros((10, 10), int)
    for t in ax.texts:
        x, y = t.get_position()
        if float(x).is_integer() and float(y).is_integer() and 0 <= x < 10 and 0 <= y < 10:
            drawn[int(y), int(x)] = int(t.get_text())
    np.testing.assert_array_equal(drawn, counts)
    image = ax.get_images()[0].get_array()
    np.testing.assert_allclose(image.sum(1), 1.0)  # coloured by share of the row
    assert f"{np.trace(counts)}/500 correct" in ax.get_title(loc="left")
    precision, recall = figures.precision_recall(counts)
    assert f"{100 * recall[3]:.1f}" in texts(fig) and f"{100 * precision[7]:.1f}" in texts(fig)


def test_mistakes_gallery_shows_each_image_with_its_labels():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 5, 8, 1, 0])
    probs = np.full((5, 10), 0.01)
    probs[np.arange(5), [8, 3, 3, 7, 6]] = 0.91
    fig = figures.mistakes(images, labels, probs, columns=3)
    ax = fig.axes[0]
    shown = [im.get_array() for im in ax.get_images()]
    assert len(shown) == 5
    np.testing.assert_array_equal(shown[2], images[2])
    assert "3 → 8  0.91" in texts(fig) and "0 → 6  0.91" in texts(fig)
    bars = ax.patches[-50:]  # 10 probability bars per image, drawn last
    np.testing.assert_allclose([b.get_height() for b in bars[:10]], probs[0] * 9.0)  # bar_h = 9
    figures.png_bytes(figures.mistakes(images[:0], labels[:0], probs[:0]))  # no mistakes: still a picture


def test_first_layer_weights_are_the_kernel_columns_as_images():
    kernel = np.random.default_rng(2).normal(size=(784, 16)).astype(np.float32)
    fig = figures.first_layer_weights(kernel, units=[5, 2, 9], scores=[3.0, 2.0, 1.0])
    images = [a for a in fig.axes[0].get_children() if isinstance(a, AxesImage)]
    assert len(images) == 3
    np.testing.assert_array_equal(images[1].get_array(), kernel[:, 2].reshape(28, 28))
    lo, hi = images[0].get_clim()
    assert lo == -hi == -np.abs(kernel[:, 5]).max()  # symmetric: white is zero
    assert "#5  3" in texts(fig)


def test_weight_stats_by_hand():
    s = figures.weight_stats(np.array([[0.0, -3.0], [4.0, 0.001]]))
    assert s["count"] == 4 and s["l1"] == pytest.approx(7.001)
    assert s["l2_norm"] == pytest.approx(math.sqrt(9 + 16 + 1e-6))
    assert s["zero_fraction"] == 0.25
    assert s["near_zero_fraction"] == 0.5  # 0 and 0.001 are below 1% of 4


def test_weight_histograms_and_unit_activity():
    w = np.random.default_rng(3).normal(size=(100, 20))
    fig = figures.weight_histograms([("dense/kernel", w, "l2=0.01"), ("dense_1/kernel", w[:20, :10], None)])
    assert sum(p.get_height() for p in fig.axes[0].patches) == w.size
    assert any("penalty l2=0.01" in t for t in texts(fig))
    active = np.array([0.0, 0.0, 0.5, 1.0, 0.25])
    fig = figures.unit_activity([("dense", active)])
    assert fig.axes[0].get_title(loc="left") == "dense: 2/5 dead (40.0%)"


ROWS = [
    {"member": 0, "status": "completed", "params": {"lr": 1e-3, "act": "relu"}, "val_accuracy": 0.90},
    {"member": 1, "status": "completed", "params": {"lr": 1e-2, "act": "relu"}, "val_accuracy": 0.95},
    {"member": 2, "status": "completed", "params": {"lr": 1e-1, "act": "tanh"}, "val_accuracy": 0.80},
    {"member": 3, "status": "diverged", "params": {"lr": 1.0, "act": "tanh"}, "val_accuracy": None},
]


def test_axis_kind_and_short_names():
    assert figures.axis_kind([1e-4, 1e-3, 1e-2]) == "category"  # a grid's few values
    many = list(np.geomspace(1e-4, 1e-1, 12))
    assert figures.axis_kind(many) == "log"
    assert figures.axis_kind(list(np.linspace(0.1, 0.5, 12))) == "linear"
    assert figures.axis_kind(["relu", "tanh"]) == "category"
    assert figures.short_names(["model.layers.0.units", "model.layers.1.units", "optimizer.learning_rate"]) == {
        "model.layers.0.units": "0.units", "model.layers.1.units": "1.units",
        "optimizer.learning_rate": "learning_rate"}


def test_metric_vs_params_plots_every_member():
    fig = figures.metric_vs_params(ROWS, ["lr", "act"], "val_accuracy", best=1)
    ax = fig.axes[0]
    members, diverged, best = [c for c in ax.collections if isinstance(c, PathCollection)][:3]
    np.testing.assert_allclose(members.get_offsets()[:, 1], [0.90, 0.95, 0.80])
    np.testing.assert_allclose(members.get_offsets()[:, 0], [0, 1, 2])  # categories in numeric order
    assert len(diverged.get_offsets()) == 1
    np.testing.assert_allclose(best.get_offsets(), [[1, 0.95]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.001", "0.01", "0.1", "1"]


def test_parallel_coordinates_one_line_per_member():
    fig = figures.parallel_coordinates(ROWS, ["lr", "act"], "val_accuracy")
    lines = [ln for ln in fig.axes[0].get_lines() if len(set(ln.get_xdata())) >= 2]  # not the axes
    assert len(lines) == 4  # the diverged member too (dashed, without a metric)
    best = max(lines, key=lambda ln: ln.get_ydata()[-1] if len(ln.get_ydata()) == 3 else -1)
    assert list(best.get_ydata()) == [1 / 3, 0.0, 1.0]  # lr 1e-2 is category 1 of 4; relu first; top metric


def test_overlaid_curves_and_importance():
    fig = figures.overlaid_curves({"a": RECORDS, "b": RECORDS[:3]})
    solid = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "-"]
    assert len(solid) == 2 and len(solid[1].get_xdata()) == 3
    fig = figures.importance({"lr": 0.8, "act": 0.1})
    widths = sorted(p.get_width() for p in fig.axes[0].patches)
    assert widths == [0.1, 0.8]


def mosaic(tiles, columns, gap=1):
    """The tile layout written out pixel by pixel: tile t at row t // columns, column t % columns."""
    n, h, w = tiles.shape
    rows = -(-n // columns)
    out = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap), np.nan)
    for t in range(n):
        for i in range(h):
            for j in range(w):
                out[(t // columns) * (h + gap) + i, (t % columns) * (w + gap) + j] = tiles[t, i, j]
    return out


def drawn(ax):
    """The one picture an Axes shows, its masked (background) pixels as NaN."""
    (image,) = ax.get_images()
    return np.ma.filled(np.ma.asarray(image.get_array(), dtype=float), np.nan), image.get_clim()


def test_conv_filters_draw_each_filter_unflipped_on_one_symmetric_scale():
    kernel = np.random.default_rng(4).normal(size=(3, 3, 1, 20)).astype(np.float32)
    fig = figures.conv_filters(kernel, columns=8)
    pixels, clim = drawn(fig.axes[0])
    assert pixels.shape == (3 * 4 - 1, 8 * 4 - 1)  # 3 rows of 8 tiles, a 1-pixel gap between tiles
    expected = np.full(pixels.shape, np.nan)
    for f in range(20):  # filter f sits at row f // 8, column f % 8, its weight [i, j] at pixel (i, j)
        r, c = divmod(f, 8)
        expected[4 * r:4 * r + 3, 4 * c:4 * c + 3] = kernel[:, :, 0, f]
    np.testing.assert_array_equal(pixels, expected)
    np.testing.assert_array_equal(pixels, mosaic(kernel[:, :, 0, :].transpose(2, 0, 1), 8))
    big = float(np.abs(kernel).max())
    assert clim == (-big, big)  # white is 0, shared by every filter
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["0", "8", "16"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][:3] == ["+0", "+1", "+2"]
    assert figures.png_bytes(fig).startswith(PNG)


def test_conv_filters_with_several_input_channels_give_a_row_per_filter():
    kernel = np.random.default_rng(5).normal(size=(5, 3, 2, 4))  # kh 5, kw 3, 2 channels, 4 filters
    pixels, _ = drawn(figures.conv_filters(kernel).axes[0])
    assert pixels.shape == (4 * 6 - 1, 2 * 4 - 1)
    for f in range(4):
        for ch in range(2):
            np.testing.assert_array_equal(pixels[6 * f:6 * f + 5, 4 * ch:4 * ch + 3], kernel[:, :, ch, f])


def test_feature_maps_show_the_image_and_every_map():
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    maps = np.maximum(rng.normal(size=(26, 26, 10)), 0)  # after a ReLU: a 0-based scale
    fig = figures.feature_maps(image, maps, columns=4, title="t", caption="label 3")
    ax_image, ax_maps = fig.axes[:2]
    np.testing.assert_array_equal(ax_image.get_images()[0].get_array(), image)
    pixels, clim = drawn(ax_maps)
    np.testing.assert_array_equal(pixels, mosaic(maps.transpose(2, 0, 1), 4))
    assert clim == (0.0, maps.max())
    signed = rng.normal(size=(4, 4, 3))  # linear outputs: symmetric about 0
    _, clim = drawn(figures.feature_maps(image, signed).axes[1])
    assert clim == (-np.abs(signed).max(), np.abs(signed).max())


def test_unit_activity_says_what_a_filter_counts():
    fig = figures.unit_activity([("conv2d", np.array([0.0, 0.3, 0.9]), "fraction of positions")])
    assert fig.axes[0].get_xlabel() == "fraction of positions"
    assert fig.axes[0].get_title(loc="left") == "conv2d: 1/3 dead (33.3%)"
