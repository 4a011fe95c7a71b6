"""`mnist-multi`: MNIST digits side by side, labelled by the set of digits present.

The tutorial's argument for sigmoid outputs is an image holding several things at once
("suppose we had both cat and dog in the picture, softmax would get lost"). MNIST has one
digit per image, so this module builds such images from it, deterministically:

- each image is 28x56: a left and a right 28x28 half;
- it holds one digit (in a half chosen at random, the other half black) or two digits
  of different classes (in random order), with probability `pair_fraction` for two;
- its label is the set of digits present, multi-hot (N, 10) uint8;
- every source image is used at most once in a split (the split's images are walked in
  a seeded random order), so a validation hold-out of composites shares no source digit
  with the composites it is held out from;
- the training composites are built from MNIST's training images only and the test
  composites from MNIST's test images only.

    arrays = data.load("mnist-multi")          # registered in data.DERIVED
    arrays.train_images.shape, arrays.train_labels.shape   # (~40000, 28, 56), (~40000, 10)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mnistlab import data

SEED = 0
PAIR_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class Composites:
    """Composite images, their label sets, and where each half came from."""

    images: np.ndarray  # (N, 28, 56) uint8
    labels: np.ndarray  # (N, C) uint8 multi-hot
    sources: np.ndarray  # (N, 2) int64: source index of the left and right half, -1 for black


def compose(images: np.ndarray, labels: np.ndarray, seed: int, *, pair_fraction: float = PAIR_FRACTION,
            num_classes: int = 10) -> Composites:
    """Place the digits of one split side by side (see the module docstring).

    The walk over a seeded permutation of the sources: a composite with two digits takes
    the next source and the first later source of a different class (swapped forward, so
    nothing is skipped or used twice); one with a single digit takes the next source. The
    walk ends when the sources run out (a last lone source makes a single-digit image).
    """
    images, labels = np.asarray(images), np.asarray(labels)
    n = len(labels)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    # Drawn up front, one per possible composite, so the walk itself draws nothing.
    want_pair = rng.random(n) < pair_fraction
    flip = rng.random(n) < 0.5
    pairs: list[tuple[int, int]] = []
    i = 0
    while i < n:
        k = len(pairs)
        first = order[i]
        if want_pair[k] and i + 1 < n:
            j = i + 1
            while j < n and labels[order[j]] == labels[first]:
                j += 1
            if j < n:
                order[i + 1], order[j] = order[j], order[i + 1]
                a, b = int(first), int(order[i + 1])
                pairs.append((b, a) if flip[k] else (a, b))
                i += 2
                continue
        pairs.append((-1, int(first)) if flip[k] else (int(first), -1))
        i += 1
    sources = np.asarray(pairs, np.int64).reshape(-1, 2)
    h, w = images.shape[1:]
    out = np.zeros((len(sources), h, 2 * w), np.uint8)
    multi = np.zeros((len(sources), num_classes), np.uint8)
    rows = np.arange(len(sources))
    for side in (0, 1):
        used = sources[:, side] >= 0
        src = sources[used, side]
        out[used, :, side * w:(side + 1) * w] = images[src]
        multi[rows[used], labels[src]] = 1
    return Composites(out, multi, sources)


INFO = data.DatasetInfo(
    name="mnist-multi",
    description="MNIST digits side by side, one or two per 28x56 image, labelled by the set of digits",
    files={}, mirrors=(), num_classes=10, class_names=tuple("0123456789"), image_shape=(28, 56))


def derive(base: data.Arrays, seed: int = SEED) -> data.Arrays:
    """`mnist-multi` from loaded MNIST: train composites from train, test from test."""
    train = compose(base.train_images, base.train_labels, seed)
    test = compose(base.test_images, base.test_labels, seed + 1)
    return data.Arrays(train.images, train.labels, test.images, test.labels, info=INFO, source=base.source)


# ------------------------------------------------------------------ metrics on label sets


def set_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict[str, object]:
    """Exact-set accuracy and per-class precision, recall and F1 of multi-hot predictions.

    A class never predicted has precision 0 (and likewise recall for a class never
    present), so a degenerate rule cannot score by abstaining. `macro_f1` is the mean of
    the per-class F1.
    """
    truth, predicted = np.asarray(truth) > 0, np.asarray(predicted) > 0
    tp = (truth & predicted).sum(0).astype(float)
    precision = np.divide(tp, predicted.sum(0), out=np.zeros_like(tp), where=predicted.sum(0) > 0)
    recall = np.divide(tp, truth.sum(0), out=np.zeros_like(tp), where=truth.sum(0) > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(tp), where=both > 0)
    return {"exact": float(np.mean(np.all(truth == predicted, axis=1))), "precision": precision.tolist(),
            "recall": recall.tolist(), "f1": f1.tolist(), "macro_f1": float(f1.mean())}


# A prediction rule turns probabilities into a label set: ("threshold", t) keeps the classes
# with p >= t (and the most probable one, so no set is empty); ("top", k) keeps the k most
# probable classes.
RULES: tuple[tuple[str, float], ...] = (
    ("top", 1), ("top", 2),
    *(("threshold", t) for t in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9)),
)


def apply_rule(probabilities: np.ndarray, rule: tuple[str, float]) -> np.ndarray:
    """Multi-hot predictions (bool) from probabilities under a rule of `RULES`."""
    p = np.asarray(probabilities)
    kind, value = rule
    if kind == "top":
        top = np.argsort(-p, axis=1, kind="stable")[:, : int(value)]
        out = np.zeros(p.shape, bool)
        np.put_along_axis(out, top, True, axis=1)
        return out
    out = p >= value
    out[np.arange(len(p)), np.argmax(p, axis=1)] = True
    return out


def choose_rule(probabilities: np.ndarray, truth: np.ndarray,
                rules: tuple[tuple[str, float], ...] = RULES) -> tuple[str, float]:
    """The rule with the highest exact-set accuracy on (validation) data; ties: the first."""
    scores = [set_metrics(truth, apply_rule(probabilities, r))["exact"] for r in rules]
    return rules[int(np.argmax(scores))]
