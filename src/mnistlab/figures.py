"""Figures of a run, a sweep or a comparison: plain data in, a matplotlib `Figure` out.

Every function here is pure: it takes NumPy arrays or per-epoch records (the dicts of a
run's `metrics.jsonl`) and returns a `matplotlib.figure.Figure`, touching no file and no
global state. `pyplot` is never imported: a `Figure` made directly has no GUI backend and
no global registry to leak into, so the same functions serve `mnistlab plot` (a PNG file)
and `mnistlab report` (PNGs embedded in one HTML page), on a machine without a display.

    fig = figures.learning_curves(run.metrics, title="fast")
    fig.savefig("curves.png")                    # or figures.png_bytes(fig)
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
import matplotlib.patches
from matplotlib import colors as mcolors
from matplotlib.figure import Figure

Record = Mapping[str, Any]

TRAIN, VALIDATION, TEST = "#7f7f7f", "#d9480f", "#1c7ed6"  # grey, orange, blue
GOOD, BAD = "#2b8a3e", "#c92a2a"
# Distinct colours for overlaid runs (Tableau 10, which the eye separates well).
SERIES = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
          "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")

STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 9.5,
    "axes.labelcolor": "#343a40",
    "axes.edgecolor": "#adb5bd",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e9ecef",
    "grid.linewidth": 0.8,
    "xtick.color": "#495057",
    "ytick.color": "#495057",
    "legend.frameon": False,
    "legend.fontsize": 8.5,
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "figure.facecolor": "white",
    "image.interpolation": "nearest",
}


def _panel_grid(count: int, panel_height: float, extra: float) -> tuple[Figure, np.ndarray]:
    """A figure of `count` panels, three to a row, its unused cells hidden."""
    n = max(1, count)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.7 * cols, panel_height * rows + extra), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[count:]:
        ax.set_axis_off()
    return fig, axes


def _styled(fn):
    """Run `fn` under this module's style: artists read rcParams when they are created."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (Agg, no display needed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.12)
    return buf.getvalue()


def _series(records: Sequence[Record], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of `key`, skipping records without a finite value."""
    pts = [(r["epoch"], float(r[key])) for r in records
           if r.get(key) is not None and math.isfinite(float(r[key]))]
    if not pts:
        return np.zeros(0), np.zeros(0)
    e, v = zip(*pts)
    return np.asarray(e, float), np.asarray(v, float)


def overfitting(records: Sequence[Record]) -> dict[str, float] | None:
    """Where validation loss was lowest, and how far training and validation drift apart.

    Returns `best_epoch` (lowest `val_loss`), `loss_gap` (val_loss - loss) and
    `accuracy_gap` (accuracy - val_accuracy) at the last epoch, and `val_loss_rise`
    (last val_loss - lowest val_loss: above 0 means validation got worse while training
    went on, the signature of over-fitting). None when no epoch has validation numbers.
    """
    e, val = _series(records, "val_loss")
    if not len(e):
        return None
    last = records[-1]
    best = int(np.argmin(val))
    out = {"best_epoch": int(e[best]), "best_val_loss": float(val[best]),
           "val_loss_rise": float(val[-1] - val[best])}
    if last.get("loss") is not None and last.get("val_loss") is not None:
        out["loss_gap"] = float(last["val_loss"]) - float(last["loss"])
    if last.get("accuracy") is not None and last.get("val_accuracy") is not None:
        out["accuracy_gap"] = float(last["accuracy"]) - float(last["val_accuracy"])
    return out


@_styled
def learning_curves(records: Sequence[Record], title: str | None = None) -> Figure:
    """Training vs validation loss and accuracy per epoch, and the learning-rate schedule.

    The over-fitting gap is marked: the area between the training and validation curves
    is shaded, the gap at the last epoch is written beside it, and the epoch with the
    lowest validation loss gets a dotted line; epochs after it, where validation loss
    rose again, are shaded red.
    """
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 0.8]})
    fit = overfitting(records)
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        et, t = _series(records, key)
        ev, v = _series(records, f"val_{key}")
        marker = "o" if max(len(et), len(ev)) <= 30 else None
        if len(et):
            ax.plot(et, t, color=TRAIN, marker=marker, ms=3.5, lw=1.8, label="training")
        if len(ev):
            ax.plot(ev, v, color=VALIDATION, marker=marker, ms=3.5, lw=1.8, label="validation")
        if len(et) and len(ev) and np.array_equal(et, ev):
            ax.fill_between(et, t, v, color=VALIDATION, alpha=0.10, lw=0, label="gap")
            gap = v[-1] - t[-1]
            ax.annotate("", xy=(et[-1], v[-1]), xytext=(et[-1], t[-1]),
                        arrowprops={"arrowstyle": "<->", "color": "#495057", "lw": 1})
            ax.annotate(f"gap {abs(gap):.4f}", xy=(et[-1], (v[-1] + t[-1]) / 2), xytext=(-6, 0),
                        textcoords="offset points", ha="right", va="center", fontsize=8.5,
                        color="#343a40")
        if fit is not None:
            ax.axvline(fit["best_epoch"], color=GOOD, ls=":", lw=1.3,
                       label=f"lowest val_loss (epoch {fit['best_epoch']})")
            last = records[-1]["epoch"]
            if fit["val_loss_rise"] > 0 and fit["best_epoch"] < last:
                ax.axvspan(fit["best_epoch"], last, color=BAD, alpha=0.05, lw=0,
                           label="val_loss rising")
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        _integer_ticks(ax)
    handles, labels = axes[0].get_legend_handles_labels()
    if labels:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(labels))
    el, lr = _series(records, "learning_rate")
    ax = axes[2]
    if len(el):
        ax.plot(el, lr, color="#495057", marker="o" if len(el) <= 30 else None, ms=3, lw=1.6)
        if lr.min() > 0 and lr.max() / lr.min() > 20:
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, lr.max() * 1.15 if lr.max() > 0 else 1)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3), useOffset=False)
    ax.set_title("learning rate")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate (end of epoch)")
    _integer_ticks(ax)
    _epoch_axis(axes, records)
    if title:
        fig.suptitle(title, x=0.01, ha="left", fontweight="bold", fontsize=12)
    return fig


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))


def _epoch_axis(axes, records: Sequence[Record]) -> None:
    """The same epoch range on every panel, even where a metric is missing (NaN, diverged)."""
    epochs = [r["epoch"] for r in records if r.get("epoch") is not None]
    if not epochs:
        return
    lo, hi = min(epochs), max(epochs)
    pad = max(0.5, 0.04 * (hi - lo))
    for ax in axes:
        ax.set_xlim(lo - pad, hi + pad)


@_styled
def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str] | None = None,
                     title: str = "confusion matrix") -> Figure:
    """Counts of (true label, predicted label), with recall per row and precision per column.

    Cells are coloured by the share of their row (what fraction of class i went to j),
    on a square-root scale so that a 1% confusion is visible next to a 98% diagonal; the
    count is written in every non-empty cell.
    """
    m = np.asarray(matrix)
    n = m.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    rows = m.sum(1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape, float), where=rows > 0)
    precision, recall = precision_recall(m)
    fig = Figure(figsize=(0.4 * n + 1.9, 0.4 * n + 1.5), layout="constrained")
    ax = fig.subplots()
    ax.grid(False)
    ax.imshow(share, cmap="Blues", norm=mcolors.PowerNorm(0.35, vmin=0, vmax=1))
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                dark = share[i, j] > 0.35
                ax.text(j, i, str(int(m[i, j])), ha="center", va="center",
                        fontsize=8 if m[i, j] < 1000 else 7,
                        color="white" if dark else ("#212529" if i == j else BAD))
    for i in range(n):  # recall column and precision row, outside the grid
        ax.text(n - 0.35, i, _pct(recall[i]), ha="left", va="center", fontsize=7.5, color="#495057")
        ax.text(i, n + 0.05, _pct(precision[i]), ha="center", va="center", fontsize=7.5, color="#495057")
    ax.text(n - 0.35, -0.62, "recall %", ha="left", va="bottom", fontsize=8, fontweight="bold")
    ax.text(-0.62, n + 0.05, "precision %", ha="right", va="center", fontsize=8, fontweight="bold")
    short = [s if len(s) <= 8 else s[:7] + "…" for s in names]
    wide = max(map(len, short)) > 2
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_xticks(range(n), short, rotation=45 if wide else 0, ha="left" if wide else "center")
    ax.set_yticks(range(n), short)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(n - 0.5, -0.5)
    total = int(m.sum())
    ax.set_title(f"{title}  ·  {int(np.trace(m))}/{total} correct", pad=10)
    return fig


def precision_recall(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class: precision = diagonal / column sum, recall = diagonal / row sum (NaN if 0/0)."""
    m = np.asarray(matrix, float)
    tp = np.diag(m)
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / m.sum(0), tp / m.sum(1)


def _pct(x: float) -> str:
    return "–" if not np.isfinite(x) else f"{100 * x:.1f}"


@_styled
def mistakes(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
             class_names: Sequence[str] | None = None, columns: int = 8,
             title: str = "most confident mistakes") -> Figure:
    """A gallery of misclassified images, each with its true and predicted label and the
    network's probabilities as a bar per class (the true class green, the prediction red).

    `images` (k, 28, 28) uint8, `labels` (k,), `probabilities` (k, classes): the caller
    picks which images (e.g. the most confident mistakes first). Drawn as tiles in one
    Axes (one Axes per image made this figure ten times slower to lay out).
    """
    images = np.asarray(images)
    k = len(images)
    n_cls = probabilities.shape[1] if k else 10
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_cls)]
    columns = max(1, min(columns, k))
    rows = max(1, math.ceil(k / columns))
    side, bar_h, gap, cell_w = 28.0, 9.0, 2.0, 34.0
    cell_h = side + bar_h + gap + 9.0  # image, bars, space for the title above
    fig = Figure(figsize=(1.2 * columns + 0.2, 1.62 * rows + 0.45))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - 0.38 / fig.get_figheight()))
    ax.set_axis_off()
    bars_x, bars_y, bars_h, bars_c = [], [], [], []
    bar_w = side / n_cls
    for idx in range(k):
        r, c = divmod(idx, columns)
        x0, y0 = c * cell_w, (rows - 1 - r) * cell_h
        true, pred = int(labels[idx]), int(np.argmax(probabilities[idx]))
        img = images[idx].reshape(28, 28) if images[idx].size == 784 else images[idx]
        ax.imshow(img, cmap="gray_r", vmin=0, vmax=255,
                  extent=(x0, x0 + side, y0 + bar_h + gap, y0 + bar_h + gap + side))
        ax.add_patch(matplotlib.patches.Rectangle((x0, y0 + bar_h + gap), side, side, fill=False,
                                                  ec="#dee2e6", lw=0.6))
        ax.text(x0 + side / 2, y0 + bar_h + gap + side + 1.2,
                f"{_short(names[true])} → {_short(names[pred])}  {probabilities[idx, pred]:.2f}",
                ha="center", va="bottom", fontsize=8, color="#212529")
        for j in range(n_cls):
            bars_x.append(x0 + j * bar_w)
            bars_y.append(y0)
            bars_h.append(max(float(probabilities[idx, j]), 0.0) * bar_h)
            bars_c.append(GOOD if j == true else BAD if j == pred else "#ced4da")
        ax.plot([x0, x0 + side], [y0, y0], color="#adb5bd", lw=0.6)
    if k:
        ax.bar(bars_x, bars_h, width=bar_w * 0.82, bottom=bars_y, align="edge", color=bars_c)
    else:
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(-3, columns * cell_w)
    ax.set_ylim(-2, rows * cell_h)
    ax.set_aspect("equal", anchor="NW")
    fig.suptitle(f"{title}: true → predicted, confidence", x=0.01, y=0.995, ha="left", va="top",
                 fontweight="bold", fontsize=10.5)
    return fig


def _short(name: str, n: int = 7) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


@_styled
def first_layer_weights(kernel: np.ndarray, units: Sequence[int] | None = None,
                        scores: Sequence[float] | None = None, columns: int = 10,
                        image_shape: tuple[int, int] = (28, 28),
                        title: str = "first-layer weights") -> Figure:
    """Each chosen unit's incoming weights as a picture the size of an input image.

    `kernel` is the first Dense kernel, (784, units). Red pixels push the unit up, blue
    pull it down; each picture has its own symmetric colour scale, so the pattern shows
    whatever the unit's overall size. `scores` (one per chosen unit) are written above.
    """
    kernel = np.asarray(kernel)
    units = list(range(min(kernel.shape[1], 40))) if units is None else list(units)
    k = len(units)
    columns = max(1, min(columns, k))
    rows = max(1, math.ceil(k / columns))
    h, w = image_shape
    cell_w, cell_h = w + 3.0, h + 9.0
    fig = Figure(figsize=(1.0 * columns + 0.2, 1.3 * rows + 0.45))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - 0.38 / fig.get_figheight()))
    ax.set_axis_off()
    for i, unit in enumerate(units):
        r, c = divmod(i, columns)
        x0, y0 = c * cell_w, (rows - 1 - r) * cell_h
        tile = kernel[:, unit].reshape(image_shape)
        lim = float(np.abs(tile).max()) or 1.0
        ax.imshow(tile, cmap="RdBu_r", vmin=-lim, vmax=lim, extent=(x0, x0 + w, y0, y0 + h))
        label = f"#{unit}" + (f"  {scores[i]:.2g}" if scores is not None else "")
        ax.text(x0 + w / 2, y0 + h + 1.0, label, ha="center", va="bottom", fontsize=7.5, color="#343a40")
    ax.set_xlim(-1, columns * cell_w)
    ax.set_ylim(-1, rows * cell_h)
    ax.set_aspect("equal", anchor="NW")
    fig.suptitle(title, x=0.01, y=0.995, ha="left", va="top", fontweight="bold", fontsize=10.5)
    return fig


def tile_grid(tiles: np.ndarray, columns: int, gap: int = 1) -> np.ndarray:
    """Small pictures (n, h, w) laid out as one array, `columns` to a row, left to right
    then top to bottom, with `gap` pixels of NaN between them (drawn as background).

    One array drawn by one `imshow` rather than an Axes or image per tile: a layer has
    dozens of 3x3 filters, and what is drawn can be compared with the weights directly.
    """
    tiles = np.asarray(tiles, float)
    n, h, w = tiles.shape
    columns = max(1, min(columns, n))
    rows = max(1, math.ceil(n / columns))
    grid = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap), np.nan)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tile
    return grid


def filter_layout(kernel: np.ndarray, columns: int = 16) -> tuple[np.ndarray, int]:
    """(tiles, columns) for a Conv2D kernel (kh, kw, in, filters): one kh x kw tile per
    filter and input channel, filter by filter. With one input channel (grey images)
    `columns` filters to a row; with several, one filter to a row, a tile per channel."""
    kernel = np.asarray(kernel)
    kh, kw, channels, filters = kernel.shape
    tiles = kernel.transpose(3, 2, 0, 1).reshape(filters * channels, kh, kw)
    return tiles, (channels if channels > 1 else min(columns, filters))


_BACKGROUND = "#dee2e6"  # between tiles: grey, so that a weight of 0 (white) stays visible


def _tile_ticks(ax, tiles: int, columns: int, h: int, w: int, gap: int, row_label, column_label) -> None:
    """Number the rows and columns of a tile grid (a tile's index is row label + column)."""
    rows = math.ceil(tiles / columns)
    ax.set_xticks([c * (w + gap) + (w - 1) / 2 for c in range(columns)], [column_label(c) for c in range(columns)],
                  fontsize=7)
    ax.set_yticks([r * (h + gap) + (h - 1) / 2 for r in range(rows)], [row_label(r) for r in range(rows)],
                  fontsize=7)
    ax.tick_params(length=0)
    ax.grid(False)
    for s in ax.spines.values():
        s.set_visible(False)


@_styled
def conv_filters(kernel: np.ndarray, columns: int = 16, title: str = "first convolution's filters") -> Figure:
    """A Conv2D kernel (kh, kw, in, filters) as one small picture per filter.

    Each tile is drawn as the filter lies over the image: Keras' convolution is a
    cross-correlation, output[y, x] = sum kernel[i, j] * input[y + i, x + j], so the tile
    is not flipped and reads directly as the patch it answers most. Red: a bright pixel
    there raises the output; blue: lowers it; white: 0. All filters share one symmetric
    colour scale, so a filter that learned little looks pale next to the others.
    """
    kernel = np.asarray(kernel)
    kh, kw, channels, filters = kernel.shape
    tiles, columns = filter_layout(kernel, columns)
    grid = tile_grid(tiles, columns)
    lim = float(np.abs(kernel).max()) or 1.0
    pixel = 0.45 / max(kh, kw)  # inches: a tile about 0.45 in wide whatever the kernel size
    fig = Figure(figsize=(grid.shape[1] * pixel + 1.5, grid.shape[0] * pixel + 0.8), layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad=_BACKGROUND)
    image = ax.imshow(grid, cmap=cmap, vmin=-lim, vmax=lim)
    if channels > 1:
        _tile_ticks(ax, len(tiles), columns, kh, kw, 1, lambda r: f"filter {r}", lambda c: f"in {c}")
    else:
        _tile_ticks(ax, len(tiles), columns, kh, kw, 1, lambda r: str(r * columns), lambda c: f"+{c}")
    fig.colorbar(image, ax=ax, label="weight", shrink=0.9, pad=0.02)
    ax.set_title(title)
    return fig


@_styled
def feature_maps(image: np.ndarray, maps: np.ndarray, columns: int = 8,
                 title: str = "feature maps", caption: str = "") -> Figure:
    """One input image and a layer's maps (H, W, filters) for it, one tile per filter.

    All maps share one colour scale, so a filter that barely answers this image is dark:
    from 0 (black) to the largest output when the outputs are >= 0 (after a ReLU), else
    symmetric about 0 in red and blue like the weights.
    """
    maps = np.asarray(maps, float)
    h, w, filters = maps.shape
    columns = max(1, min(columns, filters))
    grid = tile_grid(maps.transpose(2, 0, 1), columns)
    rows = math.ceil(filters / columns)
    grid_h, grid_w = grid.shape
    height = max(1.6, 0.7 * rows)  # inches: a map about 0.7 in tall; the image as tall as the grid
    fig = Figure(figsize=(height * (1 + grid_w / grid_h) + 1.2, height + 0.7), layout="constrained")
    ax_image, ax_maps = fig.subplots(1, 2, width_ratios=[1.0, grid_w / grid_h])
    img = np.asarray(image)
    img = img.reshape(img.shape[:2]) if img.ndim == 3 and img.shape[2] == 1 else img
    ax_image.imshow(img, cmap="gray_r", vmin=0, vmax=255)
    ax_image.set_axis_off()
    ax_image.set_title(caption or "input", fontsize=9)
    big = float(np.abs(maps).max()) or 1.0
    if maps.min() >= 0:
        cmap, lo = matplotlib.colormaps["magma"].with_extremes(bad=_BACKGROUND), 0.0
    else:
        cmap, lo = matplotlib.colormaps["RdBu_r"].with_extremes(bad=_BACKGROUND), -big
    shown = ax_maps.imshow(grid, cmap=cmap, vmin=lo, vmax=big)
    _tile_ticks(ax_maps, filters, columns, h, w, 1, lambda r: str(r * columns), lambda c: f"+{c}")
    fig.colorbar(shown, ax=ax_maps, label="output", shrink=0.9, pad=0.02)
    fig.suptitle(title, x=0.01, ha="left", fontweight="bold", fontsize=10.5)
    return fig


def weight_stats(w: np.ndarray) -> dict[str, float]:
    """What the penalties act on: L1 = sum |w|, L2 norm = sqrt(sum w^2), and how many
    weights L1 has driven to (near) zero: exactly 0, and |w| < 1% of the largest |w|.

    Adam and SGD take sub-gradient steps on |w|, so L1 leaves weights jittering around 0
    rather than at 0: the 1% threshold counts those.
    """
    w = np.asarray(w, np.float64).ravel()
    big = float(np.abs(w).max()) if w.size else 0.0
    return {"count": int(w.size), "l1": float(np.abs(w).sum()), "l2_norm": float(np.sqrt((w * w).sum())),
            "mean": float(w.mean()) if w.size else 0.0, "std": float(w.std()) if w.size else 0.0,
            "zero_fraction": float(np.mean(w == 0)) if w.size else 0.0,
            "near_zero_fraction": float(np.mean(np.abs(w) < 0.01 * big)) if w.size else 0.0}


@_styled
def weight_histograms(layers: Sequence[tuple[str, np.ndarray, str | None]],
                      title: str = "weight distributions") -> Figure:
    """One histogram per weight tensor: (name, values, regularizer description or None).

    Each panel gives the L2 norm and the share of near-zero weights (what an L1 penalty
    produces), so the effect of a penalty can be read off without opening the weights.
    """
    fig, axes = _panel_grid(len(layers), panel_height=2.7, extra=0.3)
    for ax, (name, w, reg) in zip(axes, layers):
        w = np.asarray(w).ravel()
        s = weight_stats(w)
        ax.hist(w, bins=80, color="#4e79a7", alpha=0.85)
        ax.axvline(0, color="#495057", lw=0.8)
        ax.set_title(name)
        ax.set_xlabel("weight")
        ax.set_ylabel("count")
        text = (f"L2 norm {s['l2_norm']:.3g}\nnear zero {100 * s['near_zero_fraction']:.1f}%"
                f"\nmean {s['mean']:+.2g}, sd {s['std']:.2g}" + (f"\npenalty {reg}" if reg else ""))
        ax.text(0.02, 0.97, text, transform=ax.transAxes, ha="left", va="top", fontsize=7.5,
                color="#343a40", bbox={"fc": "white", "ec": "#dee2e6", "alpha": 0.9, "pad": 3})
    fig.suptitle(title, x=0.01, ha="left", fontweight="bold", fontsize=10.5)
    return fig


@_styled
def unit_activity(layers: Sequence[tuple[str, np.ndarray] | tuple[str, np.ndarray, str]],
                  title: str = "hidden units: how often each one fires") -> Figure:
    """Per hidden layer: a histogram over units of the fraction of inputs that activate
    them (output > 0). Units at 0 never fire on these inputs: dead ReLUs, shown red.

    `layers`: (name, fraction active per unit) pairs, or triples adding what the fraction
    counts (the x label): a convolution's filter fires at positions, not per image.
    """
    n = max(1, len(layers))
    fig = Figure(figsize=(3.7 * n, 2.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n, squeeze=False)).ravel()
    for ax, (name, active, *counted) in zip(axes, layers):
        active = np.asarray(active, float)
        dead = int(np.sum(active == 0))
        bins = np.linspace(0, 1, 41)
        ax.hist(active[active > 0], bins=bins, color="#59a14f", alpha=0.85, label="alive")
        if dead:
            ax.bar(0.0, dead, width=bins[1], align="edge", color=BAD, label=f"dead ({dead})")
        ax.set_xlim(0, 1)
        ax.set_title(f"{name}: {dead}/{len(active)} dead ({100 * dead / max(1, len(active)):.1f}%)")
        ax.set_xlabel(counted[0] if counted else "fraction of inputs on which the unit is > 0")
        ax.set_ylabel("units")
        ax.legend(loc="upper right")
    if not layers:
        axes[0].set_axis_off()
        axes[0].text(0.5, 0.5, "no hidden layers", ha="center", va="center")
    fig.suptitle(title, x=0.01, ha="left", fontweight="bold", fontsize=10.5)
    return fig


# --- several runs: sweeps, studies, comparisons ---------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(float(v))


def _label(v: Any) -> str:
    return f"{v:g}" if _is_number(v) else str(v)


def _categories(values: Sequence[Any]) -> list[str]:
    """Distinct values as labels, numbers in numeric order, then the rest alphabetically."""
    nums = sorted({float(v) for v in values if _is_number(v)})
    rest = sorted({str(v) for v in values if not _is_number(v)})
    return list(dict.fromkeys([_label(v) for v in nums] + rest))


def short_names(names: Sequence[str]) -> dict[str, str]:
    """The shortest dotted suffix that still tells each name apart:
    'model.layers.0.kernel_regularizer.l2' -> 'l2' (or 'kernel_regularizer.l2' if needed)."""
    out = {}
    for n in names:
        parts = n.split(".")
        for k in range(1, len(parts) + 1):
            cand = ".".join(parts[-k:])
            if sum(1 for m in names if m == cand or m.endswith("." + cand)) == 1:
                break
        out[n] = cand
    return out


def axis_kind(values: Sequence[Any], max_categories: int = 6) -> str:
    """How to lay out a hyper-parameter's values: 'category' for text or a few grid values
    (evenly spaced, in numeric order), else 'log' when positive and spanning 20x or more,
    else 'linear'."""
    vals = [v for v in values if v is not None]
    if not vals or not all(_is_number(v) for v in vals) or len(set(vals)) <= max_categories:
        return "category"
    arr = np.asarray(vals, float)
    if arr.min() > 0 and arr.max() / arr.min() >= 20:
        return "log"
    return "linear"


@_styled
def metric_vs_params(rows: Sequence[Record], params: Sequence[str], metric: str,
                     best: Any = None, id_key: str = "member", higher_is_better: bool = True) -> Figure:
    """The metric of every member against each hyper-parameter, one panel per parameter.

    Members whose metric is missing (diverged) are drawn as red crosses at the worse
    end of the axis; the best member is a star.
    """
    fig, axes = _panel_grid(len(params), panel_height=2.8, extra=0.2)
    ys = [float(r[metric]) for r in rows if _finite(r.get(metric))]
    floor = (min(ys) if higher_is_better else max(ys)) if ys else 0.0
    for ax, p in zip(axes, params):
        values = [r["params"].get(p) for r in rows]
        kind = axis_kind(values)
        if kind == "category":
            cats = _categories(values)
            xs = [cats.index(_label(v)) for v in values]
            ax.set_xticks(range(len(cats)), cats, rotation=30 if max(map(len, cats)) > 6 else 0)
            ax.set_xlim(-0.5, len(cats) - 0.5)
        else:
            xs = [float(v) if v is not None else np.nan for v in values]
            if kind == "log":
                ax.set_xscale("log")
        ok = [(x, float(r[metric])) for x, r in zip(xs, rows) if _finite(r.get(metric))]
        bad = [x for x, r in zip(xs, rows) if not _finite(r.get(metric))]
        if ok:
            ax.scatter(*zip(*ok), s=22, color="#4e79a7", alpha=0.8, zorder=3, label="member")
        if bad:
            ax.scatter(bad, [floor] * len(bad), marker="x", s=28, color=BAD, zorder=3,
                       label="diverged / no value")
        for x, r in zip(xs, rows):
            if best is not None and r.get(id_key) == best and _finite(r.get(metric)):
                ax.scatter([x], [float(r[metric])], marker="*", s=160, color="#f59f00",
                           edgecolor="#343a40", lw=0.6, zorder=4, label="best")
        ax.set_title(short_names(params)[p])
        ax.set_xlabel(p if len(p) <= 40 else "…" + p[-39:], fontsize=8)
        ax.set_ylabel(metric)
    if params:
        axes[0].legend(loc="best")
    fig.suptitle(f"{metric} against each hyper-parameter", x=0.01, ha="left", fontweight="bold",
                 fontsize=10.5)
    return fig


@_styled
def parallel_coordinates(rows: Sequence[Record], params: Sequence[str], metric: str,
                         higher_is_better: bool = True) -> Figure:
    """One line per member across an axis per hyper-parameter and a last axis for the
    metric, coloured by the metric (bright = better). Log-spaced parameters are drawn on a
    log axis, text-valued ones as evenly spaced categories.
    """
    axes_names = list(params) + [metric]
    fig = Figure(figsize=(max(6.0, 1.9 * len(axes_names) + 1.5), 3.8), layout="constrained")
    ax = fig.subplots()
    ax.grid(False)
    positions = {}
    for name in axes_names:
        values = [r.get(metric) if name == metric else r["params"].get(name) for r in rows]
        positions[name] = _normalise(values, numeric=name == metric)
    metric_vals = np.array([float(r[metric]) if _finite(r.get(metric)) else np.nan for r in rows])
    finite = metric_vals[np.isfinite(metric_vals)]
    cmap = matplotlib.colormaps["viridis" if higher_is_better else "viridis_r"]
    lo, hi = (finite.min(), finite.max()) if len(finite) else (0.0, 1.0)
    norm = mcolors.Normalize(lo, hi if hi > lo else lo + 1e-12)
    order = np.argsort(np.where(np.isfinite(metric_vals), metric_vals, -np.inf) * (1 if higher_is_better else -1))
    xs = np.arange(len(axes_names))
    for i in order:
        ys = [positions[name][0][i] for name in axes_names]
        if np.isfinite(metric_vals[i]):
            ax.plot(xs, ys, color=cmap(norm(metric_vals[i])), lw=1.6, alpha=0.85)
        else:
            ax.plot(xs[:-1], ys[:-1], color=BAD, lw=1, alpha=0.5, ls="--")
    for x, name in zip(xs, axes_names):
        ax.axvline(x, color="#495057", lw=1)
        for y, text in positions[name][1]:
            ax.text(x + 0.03, y, text, fontsize=7, va="center", ha="left", color="#343a40",
                    bbox={"fc": "white", "ec": "none", "alpha": 0.7, "pad": 0.5})
    names = short_names(list(params))
    ax.set_xticks(xs, [names.get(n, n) for n in axes_names], fontsize=8.5)
    ax.set_yticks([])
    ax.set_xlim(-0.15, len(axes_names) - 0.6)
    ax.set_ylim(-0.06, 1.06)
    for s in ("left", "bottom"):
        ax.spines[s].set_visible(False)
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric, shrink=0.9)
    ax.set_title("parallel coordinates: every member, coloured by " + metric)
    return fig


def _normalise(values: Sequence[Any], numeric: bool = False) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Values mapped to [0, 1] for a parallel axis, and (position, label) ticks for it.
    `numeric`: a linear axis whatever the values (the metric's)."""
    kind = "linear" if numeric else axis_kind(values)
    if kind == "category":
        cats = _categories(values)
        pos = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
        return np.array([pos[_label(v)] for v in values]), [(p, c) for c, p in pos.items()]
    arr = np.array([float(v) if _finite(v) else np.nan for v in values])
    t = np.log10(arr) if kind == "log" else arr
    lo, hi = np.nanmin(t) if np.isfinite(t).any() else 0.0, np.nanmax(t) if np.isfinite(t).any() else 1.0
    span = hi - lo
    scaled = (t - lo) / span if span > 0 else np.full_like(t, 0.5)
    scaled = np.where(np.isfinite(scaled), scaled, 0.0)
    uniq = sorted(set(arr[np.isfinite(arr)].tolist()))
    shown = uniq if len(uniq) <= 6 and not numeric else uniq[:1] + uniq[-1:]
    ticks = []
    for u in shown:
        tu = math.log10(u) if kind == "log" else u
        ticks.append(((tu - lo) / span if span > 0 else 0.5, f"{u:.3g}"))
    return scaled, ticks


@_styled
def overlaid_curves(series: Mapping[str, Sequence[Record]], metrics: Sequence[str] = ("loss", "accuracy"),
                    show_train: bool = True, title: str | None = None) -> Figure:
    """Several runs' curves on shared axes: one panel per metric, one colour per run,
    validation solid and training dashed."""
    fig = Figure(figsize=(5.3 * len(metrics), 3.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics), squeeze=False)).ravel()
    for ax, key in zip(axes, metrics):
        for i, (label, records) in enumerate(series.items()):
            colour = SERIES[i % len(SERIES)]
            ev, v = _series(records, f"val_{key}")
            if len(ev):
                ax.plot(ev, v, color=colour, lw=1.8, label=label)
            if show_train:
                et, t = _series(records, key)
                if len(et):
                    ax.plot(et, t, color=colour, lw=1.2, ls="--", alpha=0.8,
                            label=None if len(ev) else label)
        ax.set_title(f"validation {key}" + (" (dashed: training)" if show_train else ""))
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        _integer_ticks(ax)
    handles, labels = axes[-1].get_legend_handles_labels()
    if labels:
        fig.legend(handles, labels, loc="outside right center", fontsize=8)
    if title:
        fig.suptitle(title, x=0.01, ha="left", fontweight="bold", fontsize=10.5)
    return fig


@_styled
def importance(values: Mapping[str, float], title: str = "parameter importance",
               xlabel: str = "importance") -> Figure:
    """Horizontal bars, most important parameter on top."""
    items = sorted(values.items(), key=lambda kv: kv[1])
    fig = Figure(figsize=(6.4, 0.42 * max(1, len(items)) + 1.0), layout="constrained")
    ax = fig.subplots()
    names = [k for k, _ in items]
    vals = [float(v) for _, v in items]
    ax.barh(range(len(items)), vals, color="#4e79a7", height=0.6)
    for y, v in enumerate(vals):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
    ax.set_yticks(range(len(items)), names)
    ax.set_xlim(0, max([1.0] + vals) * 1.12)
    ax.set_xlabel(xlabel)
    ax.grid(axis="y", visible=False)
    ax.set_title(title)
    return fig


@_styled
def robustness(series: Mapping[str, Sequence[float]], held_out: Sequence[str], clean: float,
               title: str = "accuracy under corruption") -> Figure:
    """Accuracy against severity (0 clean, 1 mild .. 3 severe), one line per family:
    solid for the families no preset trains on (held out), dashed for the others."""
    fig = Figure(figsize=(7.2, 4.2), layout="constrained")
    ax = fig.subplots()
    colours = matplotlib.colormaps["tab10"]
    for i, (family, values) in enumerate(series.items()):
        ax.plot(range(len(values) + 1), [100 * clean, *(100 * v for v in values)], marker="o", markersize=3,
                color=colours(i % 10), linestyle="-" if family in held_out else "--", label=family)
    ax.set_xticks(range(4), ["clean", "1 mild", "2 middle", "3 severe"])
    ax.set_xlabel("severity")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7, loc="lower left", title="solid: held out", title_fontsize=7)
    ax.set_title(title)
    return fig
