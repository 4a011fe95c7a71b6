"""Tests for mnistlab.multilabel: the mnist-multi composites and the label-set metrics."""

import hashlib

import numpy as np
import pytest

from mnistlab import data, multilabel
from mnistlab.spec import preset, with_values
from mnistlab.training import train

# 40 tiny "digits": each image is filled with its own index, so a half names its source.
N = 40
LABELS = np.arange(N, dtype=np.uint8) % 4
IMAGES = np.stack([np.full((28, 28), i + 1, np.uint8) for i in range(N)])


def composites(seed=3):
    return multilabel.compose(IMAGES, LABELS, seed, num_classes=4)


def test_shapes_and_types():
    c = composites()
    n = len(c.labels)
    assert c.images.shape == (n, 28, 56) and c.images.dtype == np.uint8
    assert c.labels.shape == (n, 4) and c.labels.dtype == np.uint8
    assert c.sources.shape == (n, 2)
    assert N // 2 <= n <= N


def test_halves_are_the_source_images_and_labels_are_the_digits_placed():
    c = composites()
    for image, label, (left, right) in zip(c.images, c.labels, c.sources):
        placed = set()
        for half, src in ((image[:, :28], left), (image[:, 28:], right)):
            if src < 0:
                assert not half.any()
            else:
                np.testing.assert_array_equal(half, IMAGES[src])
                placed.add(int(LABELS[src]))
        assert set(np.flatnonzero(label)) == placed
        assert 1 <= len(placed) <= 2


def test_every_source_is_used_exactly_once_and_pairs_differ():
    c = composites()
    used = c.sources[c.sources >= 0]
    assert sorted(used.tolist()) == list(range(N))
    pairs = c.sources[(c.sources >= 0).all(1)]
    assert len(pairs) > 0 and all(LABELS[a] != LABELS[b] for a, b in pairs)
    # Both orders and both sides of single digits occur.
    singles = c.sources[(c.sources < 0).any(1)]
    assert (singles[:, 0] < 0).any() and (singles[:, 1] < 0).any()


def test_deterministic_per_seed():
    a, b, other = composites(3), composites(3), composites(4)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.sources, other.sources)


def test_one_class_left_makes_single_digit_images():
    c = multilabel.compose(IMAGES[:5], np.zeros(5, np.uint8), 0, pair_fraction=1.0, num_classes=4)
    assert len(c.labels) == 5 and (c.labels.sum(1) == 1).all()


def _hashes(images):
    return {hashlib.sha1(im.tobytes()).digest() for im in images}


@pytest.mark.slow
def test_mnist_multi_from_real_mnist(mnist_root, monkeypatch):
    monkeypatch.setenv("MNISTLAB_DATA", str(mnist_root))
    base = data.load("mnist")
    multi = data.load("mnist-multi")
    assert multi.info.image_shape == (28, 56) and data.get_info("mnist-multi") is multi.info
    again = multilabel.derive(base)
    np.testing.assert_array_equal(multi.train_images, again.train_images)
    np.testing.assert_array_equal(multi.test_labels, again.test_labels)
    # Train composites are made of MNIST training images only, test composites of test images.
    for images, labels, source_images, source_labels in (
            (multi.train_images, multi.train_labels, base.train_images, base.train_labels),
            (multi.test_images, multi.test_labels, base.test_images, base.test_labels)):
        assert len(images) == len(labels) and labels.shape[1] == 10
        halves = np.concatenate([images[:, :, :28], images[:, :, 28:]])
        halves = halves[halves.reshape(len(halves), -1).any(1)]
        assert len(halves) == len(source_images)  # every source used once
        assert _hashes(halves) <= _hashes(source_images)
        np.testing.assert_array_equal(labels.sum(0), np.bincount(source_labels, minlength=10))
    assert 0.45 < np.mean(multi.train_labels.sum(1) == 2) < 0.55


def test_training_on_mnist_multi(mnist_root, monkeypatch):
    monkeypatch.setenv("MNISTLAB_DATA", str(mnist_root))
    spec = with_values(preset("fast"), {"dataset": "mnist-multi", "model.layers.1.activation": "sigmoid",
                                        "training.subset": 3000, "training.epochs": 2,
                                        "training.validation_split": 0.2})
    result = train(spec, runs_dir=None)
    assert result.status == "completed"
    assert result.summary["train_samples"] == 2400 and result.summary["validation_samples"] == 600
    # Exact-set accuracy well above what predicting the most common set would give (< 0.1).
    assert result.history[-1]["val_accuracy"] > 0.3


def test_set_metrics_by_hand():
    truth = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 0]])
    predicted = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1]])
    m = multilabel.set_metrics(truth, predicted)
    assert m["exact"] == pytest.approx(1 / 3)
    assert m["precision"] == pytest.approx([1.0, 1.0, 0.0])
    assert m["recall"] == pytest.approx([1.0, 0.5, 0.0])
    assert m["f1"] == pytest.approx([1.0, 2 / 3, 0.0])
    assert m["macro_f1"] == pytest.approx(5 / 9)


def test_rules_and_choosing_one_on_validation():
    p = np.array([[0.5, 0.45, 0.05], [0.9, 0.06, 0.04], [0.3, 0.3, 0.4]])
    np.testing.assert_array_equal(multilabel.apply_rule(p, ("top", 1)), [[1, 0, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(multilabel.apply_rule(p, ("top", 2)), [[1, 1, 0], [1, 1, 0], [1, 0, 1]])
    # A threshold keeps p >= t, and always the most probable class.
    np.testing.assert_array_equal(multilabel.apply_rule(p, ("threshold", 0.42)),
                                  [[1, 1, 0], [1, 0, 0], [0, 0, 1]])
    truth = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    rules = (("top", 1), ("threshold", 0.42), ("threshold", 0.25))
    # top 1: 1 of 3 exact; 0.42: rows 1, 2 -> 2 of 3; 0.25: [[1,1,0],[1,0,0],[1,1,1]] -> 3 of 3.
    assert multilabel.choose_rule(p, truth, rules) == ("threshold", 0.25)
