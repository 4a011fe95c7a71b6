"""engine.py: one step against a hand computation, Keras' epoch bookkeeping, determinism."""

import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnistlab import engine, model
from mnistlab import spec as spec_lib
from mnistlab.spec import Dense, Dropout, ModelSpec, OptimizerSpec, Regularizer, RunSpec, TrainingSpec


def tiny_data(n=40, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, d), dtype=np.uint8)
    labels = rng.integers(0, classes, n).astype(np.uint8)
    return images, labels


def tiny_spec(**training):
    return RunSpec(
        model=ModelSpec(layers=[Dense(units=5, activation="tanh", kernel_regularizer=Regularizer(l2=0.01, l1=0.001)),
                                Dense(units=3, activation="softmax")]),
        optimizer=OptimizerSpec(name="sgd", learning_rate=0.1),
        training=TrainingSpec(**{"batch_size": 40, "epochs": 1, **training}))


def numpy_loss(params, images, labels, l1=0.001, l2=0.01):
    x = images.astype(np.float64) / 255
    h = np.tanh(x @ params["dense/kernel"] + params["dense/bias"])
    z = h @ params["dense_1/kernel"] + params["dense_1/bias"]
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    w = params["dense/kernel"]
    return -logp[np.arange(len(labels)), labels].mean() + l1 * np.abs(w).sum() + l2 * (w * w).sum()


def test_one_sgd_step_equals_finite_difference_gradient_descent():
    images, labels = tiny_data()
    spec = tiny_spec(shuffle=False)
    pop = engine.Population([spec], images, labels)
    before = {k: np.asarray(v, np.float64) for k, v in pop.member_params(0).items()}
    result = pop.train_epoch()
    after = pop.member_params(0)
    # The reported loss is the batch loss with the penalty of the weights it was computed with.
    assert result.metrics["loss"][0] == pytest.approx(numpy_loss(before, images, labels), rel=1e-5)
    eps = 1e-6
    for name, w in before.items():
        grad = np.zeros_like(w)
        for i in np.ndindex(w.shape):
            up, down = {**before, name: w.copy()}, {**before, name: w.copy()}
            up[name][i] += eps
            down[name][i] -= eps
            grad[i] = (numpy_loss(up, images, labels) - numpy_loss(down, images, labels)) / (2 * eps)
        np.testing.assert_allclose(after[name], w - 0.1 * grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("chunks", [1, 2])
def test_epoch_metrics_are_keras_sample_weighted_means_including_the_last_small_batch(chunks):
    # With a vanishing learning rate the weights stay put, so every batch's loss is the
    # loss of the same model: the epoch's running mean must equal a full evaluation, which
    # holds only if the last, smaller batch (40 = 3*12 + 4) is trained and weighted by its
    # size, and (in two chunks of two steps) if every chunk's sums are added up.
    images, labels = tiny_data()
    spec = tiny_spec(batch_size=12).model_copy(update={"optimizer": OptimizerSpec(name="sgd", learning_rate=1e-30)})
    pop = engine.Population([spec], images, labels, chunks_per_epoch=chunks)
    assert pop.steps_per_epoch() == 4
    result = pop.train_epoch()
    full = pop.evaluate(images, labels)
    assert int(np.asarray(pop.states[0].step)[0]) == 4
    assert result.metrics["loss"][0] == pytest.approx(float(full["loss"][0]), rel=1e-5)
    assert result.metrics["accuracy"][0] == pytest.approx(float(full["accuracy"][0]), abs=1e-7)


def test_evaluation_batch_size_changes_nothing_but_speed():
    images, labels = tiny_data(n=37)
    spec = tiny_spec()
    params = engine.Population([spec], images, labels).member_params(0)
    results = [engine.evaluate(spec.model_copy(update={"training": TrainingSpec(eval_batch_size=b)}), params,
                               images, labels) for b in (1, 5, 37, 128)]
    for r in results[1:]:
        assert r["loss"] == pytest.approx(results[0]["loss"], rel=1e-6)
        assert r["accuracy"] == results[0]["accuracy"]


def dropout_spec(**training):
    return RunSpec(model=ModelSpec(layers=[Dropout(rate=0.2), Dense(units=16, activation="relu"), Dropout(rate=0.5),
                                           Dense(units=3, activation="softmax")]),
                   optimizer=OptimizerSpec(name="adam"),
                   training=TrainingSpec(**{"batch_size": 8, "epochs": 2, **training}))


def train(spec, images, labels, epochs=2, chunks=10):
    pop = engine.Population([spec], images, labels, chunks_per_epoch=chunks)
    history = [pop.train_epoch().metrics for _ in range(epochs)]
    return pop, history


@pytest.mark.slow
def test_same_seed_same_numbers_and_chunking_changes_nothing():
    images, labels = tiny_data(n=200)
    a, ha = train(dropout_spec(), images, labels, chunks=1)
    a2, ha2 = train(dropout_spec(), images, labels, chunks=1)
    b, hb = train(dropout_spec(), images, labels, chunks=7)
    c, hc = train(dropout_spec(seed=1), images, labels)
    assert ha == ha2  # bit for bit
    for k, v in a.member_params(0).items():
        np.testing.assert_array_equal(v, a2.member_params(0)[k])
        # Same steps and keys; another chunk length is another compiled loop, so only
        # float rounding may differ.
        np.testing.assert_allclose(v, b.member_params(0)[k], rtol=1e-5, atol=1e-7)
    assert hb[-1]["loss"][0] == pytest.approx(ha[-1]["loss"][0], rel=1e-6)
    assert hb[-1]["accuracy"] == ha[-1]["accuracy"]
    assert ha[-1]["loss"] != hc[-1]["loss"]


@pytest.mark.slow
def test_population_members_follow_their_solo_trajectories():
    images, labels = tiny_data(n=200)
    specs = [dropout_spec(seed=s) for s in (0, 1, 2)]
    specs[2] = specs[2].model_copy(update={"optimizer": OptimizerSpec(name="adam", learning_rate=0.01)})
    together = engine.Population(specs, images, labels)
    for _ in range(2):
        together.train_epoch()
    for i, spec in enumerate(specs):
        alone, _ = train(spec, images, labels)
        for k, v in alone.member_params(0).items():
            np.testing.assert_allclose(together.member_params(i)[k], v, rtol=2e-5, atol=2e-6)


def test_a_frozen_member_keeps_its_weights_while_the_others_train():
    images, labels = tiny_data(n=200)
    specs = [dropout_spec(seed=s) for s in (0, 1, 2)]
    population = engine.Population(specs, images, labels, lanes=3)  # side by side: computed along
    population.train_epoch()
    frozen = population.member_params(1)
    population.freeze([1])
    result = population.train_epoch()
    for k, v in population.member_params(1).items():
        np.testing.assert_array_equal(v, frozen[k])
    assert np.isnan(result.metrics["loss"][1]) and population.active.tolist() == [True, False, True]
    alone, _ = train(specs[2], images, labels)
    for k, v in alone.member_params(0).items():
        np.testing.assert_allclose(population.member_params(2)[k], v, rtol=2e-5, atol=2e-6)


def test_a_diverging_member_is_frozen_and_marked_the_others_go_on():
    images, labels = tiny_data()
    ok = tiny_spec(batch_size=4)
    bad = ok.model_copy(update={"optimizer": OptimizerSpec(name="sgd", learning_rate=1e4)})
    population = engine.Population([ok, bad], images, labels, lanes=2)
    result = population.train_epoch()
    assert result.diverged == [False, True] and population.active.tolist() == [True, False]
    assert np.isfinite(result.metrics["loss"][0])
    second = population.train_epoch()
    assert second.diverged == [False, True] and np.isfinite(second.metrics["loss"][0])


def test_a_diverging_run_is_marked():
    images, labels = tiny_data()
    spec = tiny_spec(batch_size=4).model_copy(update={"optimizer": OptimizerSpec(name="sgd", learning_rate=1e30)})
    pop = engine.Population([spec], images, labels)
    result = pop.train_epoch()
    assert result.diverged == [True]
    assert not np.isfinite(result.metrics["loss"][0])


@pytest.mark.parametrize("steps, target, expected", [
    (1875, 10, [125] * 15), (20, 10, [2] * 10), (7, 10, [7]), (0, 10, []), (1687, 10, [241] * 7),
    (10, 10, [10]), (11, 10, [1] * 11), (4, 1, [4]), (5, 1, [5]), (11, None, [1] * 11)])
def test_plan_chunks(steps, target, expected):
    plan = engine.plan_chunks(steps) if target is None else engine.plan_chunks(steps, target)  # None: about ten
    assert plan == expected and sum(plan) == steps


def test_plan_chunks_for_primes_uses_two_sizes():
    plan = engine.plan_chunks(1693, 10)  # prime
    assert sum(plan) == 1693 and len(set(plan)) == 2 and 8 <= len(plan) <= 12


def test_population_rejects_mixed_structures():
    images, labels = tiny_data()
    wide = tiny_spec().model_copy(update={"model": ModelSpec(layers=[Dense(units=9, activation="softmax")])})
    with pytest.raises(ValueError, match="share one structure"):
        engine.Population([tiny_spec(), wide], images, labels)


@pytest.mark.parametrize("output", ["sigmoid", "softmax"])
def test_label_sets_losses_follow_keras_formulas(output):
    # Images with one or two digits: multi-hot targets. With a vanishing learning rate the
    # epoch's loss is that of the initial weights, computed here by hand in NumPy, and so is
    # the validation on the same images. 20 images in batches of 8: the last is padded
    # (training and evaluation alike), and the padding must not count.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 6), dtype=np.uint8)
    labels = np.zeros((20, 3), np.int32)
    labels[np.arange(20), rng.integers(0, 3, 20)] = 1
    labels[np.arange(0, 20, 2), rng.integers(0, 3, 10)] = 1
    spec = RunSpec(model=ModelSpec(layers=[Dense(units=3, activation=output)]),
                   optimizer=OptimizerSpec(name="sgd", learning_rate=1e-30),
                   training=TrainingSpec(batch_size=8, eval_batch_size=8))
    population = engine.Population([spec], images, labels, images, labels)
    p = {k: v.astype(np.float64) for k, v in population.member_params(0).items()}
    z = images / 255.0 @ p["dense/kernel"] + p["dense/bias"]
    if output == "sigmoid":  # Keras binary_crossentropy: mean over classes, then over the batch
        q = 1 / (1 + np.exp(-z))
        expected = -(labels * np.log(q) + (1 - labels) * np.log(1 - q)).mean(1).mean()
        predicted = q >= 0.5
    else:  # categorical cross-entropy against the normalised label set
        logq = z - np.log(np.exp(z).sum(1, keepdims=True))
        expected = -(labels / labels.sum(1, keepdims=True) * logq).sum(1).mean()
        predicted = np.exp(logq) >= 0.25
    result = population.train_epoch()
    exact = np.mean(np.all(predicted == (labels > 0), axis=1))
    assert 0 < exact < 1
    for prefix in ("", "val_"):
        assert result.metrics[prefix + "loss"][0] == pytest.approx(expected, rel=1e-5)
        assert result.metrics[prefix + "accuracy"][0] == pytest.approx(exact, abs=1e-6)


def test_populations_of_different_sizes_do_not_share_an_epoch_order():
    images, labels = tiny_data(n=60)
    first = engine.Population([tiny_spec(batch_size=8)], images[:40], labels[:40])
    first.train_epoch()
    second = engine.Population([tiny_spec(batch_size=8)], images, labels)
    second.train_epoch()
    assert int(np.asarray(second.states[0].step)[0]) == 8  # 60 samples in batches of 8


@pytest.mark.slow
@pytest.mark.parametrize("lanes", [1, 2])
def test_slices_trained_at_the_same_time_give_the_same_numbers(lanes):
    images, labels = tiny_data(n=200)
    specs = [dropout_spec(seed=s) for s in range(4)]
    results = {}
    for concurrency in (1, 2):
        population = engine.Population(specs, images, labels, images[:50], labels[:50], lanes=lanes,
                                       concurrency=concurrency)
        epochs = [population.train_epoch() for _ in range(3)]
        results[concurrency] = ([population.member_params(i) for i in range(4)], epochs[-1].metrics)
    assert results[1][1] == results[2][1]  # every figure of every member, bit for bit
    for one, two in zip(results[1][0], results[2][0]):
        for name in one:
            np.testing.assert_array_equal(one[name], two[name])


def test_a_checkpoint_resumes_at_another_width():
    images, labels = tiny_data(n=200)
    specs = [dropout_spec(seed=s) for s in (0, 1, 2)]
    straight = engine.Population(specs, images, labels, lanes=3)
    straight.train_epoch()
    saved = straight.state_arrays()
    straight.train_epoch()
    resumed = engine.Population(specs, images, labels, lanes=2)  # another width, padded last slice
    resumed.load_state_arrays(saved, 1, [False] * 3)
    resumed.train_epoch()
    for i in range(3):
        for k, v in straight.member_params(i).items():
            np.testing.assert_allclose(resumed.member_params(i)[k], v, rtol=2e-5, atol=2e-6)


# ------------------------------------------------------------------ convolutional models


def image_data(n=24, size=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8), rng.integers(0, classes, n).astype(np.uint8)


def conv_run(optimizer=None, **training):
    layers = [{"type": "random_rotation", "factor": 0.05, "fill_mode": "constant"},
              {"type": "conv2d", "filters": 4, "kernel_size": 3, "activation": "relu"},
              {"type": "batch_normalization"},
              {"type": "max_pooling2d"}, {"type": "flatten"}, {"type": "dropout", "rate": 0.2},
              {"type": "dense", "units": 3, "activation": "softmax"}]
    return RunSpec.model_validate({
        "model": {"layers": layers}, "optimizer": optimizer or {"name": "adam", "learning_rate": 0.01},
        "training": {"batch_size": 8, "epochs": 1, **training}})


@pytest.mark.parametrize("n", [16, 12])
def test_batch_statistics_move_by_keras_momentum_and_escape_the_optimizer(n):
    # One batch of 16, AdamW with a large weight decay: were the moving statistics handed to
    # the optimizer, the decay would pull them off Keras' moving average. With 12 samples
    # the batch is padded to 16 (by repeats of the first image): the statistics are those
    # of the 12 real samples.
    images, labels = tiny_data(n=n)
    spec = RunSpec.model_validate({
        "model": {"layers": [{"type": "dense", "units": 4}, {"type": "batch_normalization", "momentum": 0.9},
                             {"type": "dense", "units": 3, "activation": "softmax"}]},
        "optimizer": {"name": "adamw", "learning_rate": 0.1, "weight_decay": 0.5},
        "training": {"batch_size": 16, "epochs": 1}})
    pop = engine.Population([spec], images, labels)
    before = pop.member_params(0)
    pop.train_epoch()
    after = pop.member_params(0)
    pre = images.astype(np.float64) / 255 @ before["dense/kernel"] + before["dense/bias"]
    np.testing.assert_allclose(after["batch_normalization/moving_mean"], 0.1 * pre.mean(0), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(after["batch_normalization/moving_variance"], 0.9 + 0.1 * pre.var(0), rtol=1e-5)
    assert not np.allclose(after["batch_normalization/gamma"], before["batch_normalization/gamma"])  # trained


@pytest.mark.slow
def test_conv_training_is_reproducible_and_members_match_solo_runs():
    images, labels = image_data()
    specs = [conv_run({"name": "adam", "learning_rate": lr}, seed=3) for lr in (0.01, 0.003)]
    pair = engine.Population(specs, images, labels, lanes=2)
    for _ in range(2):
        pair.train_epoch()
    for i, spec in enumerate(specs):
        solo = engine.Population([spec], images, labels)
        for _ in range(2):
            solo.train_epoch()
        for name, value in solo.member_params(0).items():
            np.testing.assert_allclose(pair.member_params(i)[name], value, rtol=2e-4, atol=2e-6, err_msg=name)
    other = engine.Population([conv_run(seed=4)], images, labels)
    other.train_epoch()
    again = engine.Population([conv_run(seed=4)], images, labels)
    again.train_epoch()
    for name, value in other.member_params(0).items():
        np.testing.assert_array_equal(again.member_params(0)[name], value)


def test_inference_uses_the_moving_statistics():
    images, labels = image_data()
    spec = conv_run()
    pop = engine.Population([spec], images, labels)
    pop.train_epoch()
    params = pop.member_params(0)
    result = engine.evaluate(spec, params, images, labels)
    z = model.logits(spec.model, {k: jnp.asarray(v) for k, v in params.items()}, {}, jnp.asarray(images))
    expected = np.mean(np.argmax(np.asarray(z), 1) == labels)
    assert result["accuracy"] == pytest.approx(expected)
    # Were batch statistics used at inference, one image's prediction would depend on the others'.
    alone = model.logits(spec.model, {k: jnp.asarray(v) for k, v in params.items()}, {}, jnp.asarray(images[:1]))
    np.testing.assert_allclose(alone, np.asarray(z)[:1], rtol=1e-5, atol=1e-6)


# --- what moves from step to step: the epoch's order, the dropout masks, the rate --------


def softmax_regression(batch_size, seed=0, learning_rate=0.5):
    return RunSpec(model=ModelSpec(layers=[Dense(units=3, activation="softmax")]),
                   optimizer=OptimizerSpec(name="sgd", learning_rate=learning_rate),
                   training=TrainingSpec(batch_size=batch_size, epochs=2, seed=seed))


def sgd_epoch_by_hand(params, images, labels, order, batch_size, lr):
    """One epoch of plain SGD on softmax regression, in float64, visiting samples in `order`."""
    w, b = params["dense/kernel"].astype(np.float64), params["dense/bias"].astype(np.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        x = images[idx].astype(np.float64) / 255
        z = x @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(idx)), labels[idx]] -= 1  # d(mean cross-entropy)/dz, times the batch size
        w, b = w - lr * x.T @ p / len(idx), b - lr * p.sum(0) / len(idx)
    return {"dense/kernel": w, "dense/bias": b}


def assert_epochs_follow(pop, images, labels, orders, batch_size):
    """Each epoch of `pop` leaves the weights plain SGD leaves visiting the samples in its order."""
    expected = {k: np.asarray(v, np.float64) for k, v in pop.member_params(0).items()}
    for order in orders:
        pop.train_epoch()
        expected = sgd_epoch_by_hand(expected, images, labels, order, batch_size, 0.5)
        for name, value in pop.member_params(0).items():
            np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n, batch_size, chunks", [(12, 4, 10), (14, 4, 3)])  # 3 steps in one chunk; 4 in 4
def test_every_epoch_visits_the_samples_in_its_own_order(n, batch_size, chunks):
    # Order matters to SGD with small batches, so the weights after each epoch tell which
    # order it used. Each epoch's order is the permutation jax.random draws from the run's
    # shuffle key (the first half of the seed's split) folded with the epoch number.
    images, labels = tiny_data(n=n)
    seed = 3
    shuffle_key = jax.random.split(jax.random.PRNGKey(seed), 2)[0]
    orders = [np.asarray(jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n)) for epoch in (1, 2)]
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[0], np.arange(n))
    pop = engine.Population([softmax_regression(batch_size, seed)], images, labels, chunks_per_epoch=chunks)
    assert_epochs_follow(pop, images, labels, orders, batch_size)


def test_without_shuffling_every_epoch_visits_the_samples_in_their_order():
    images, labels = tiny_data(n=14)
    spec = softmax_regression(4)
    spec = spec.model_copy(update={"training": spec.training.model_copy(update={"shuffle": False})})
    assert_epochs_follow(engine.Population([spec], images, labels), images, labels, [np.arange(14)] * 2, 4)


@pytest.mark.slow
def test_every_step_draws_its_own_dropout_mask():
    # With a learning rate of 1e-30 the weights never move (1e-30 * g is far below a float32
    # ulp of any weight), and without shuffling every step sees the same samples, so a step's
    # loss changes only with its dropout mask. `max_steps=1` trains just the first batch of
    # each epoch: its epochs are single steps (global steps 0, 1, 2).
    images, labels = tiny_data(n=16)
    spec = dropout_spec(shuffle=False, batch_size=8).model_copy(
        update={"optimizer": OptimizerSpec(name="sgd", learning_rate=1e-30)})
    one_step = engine.Population([spec], images, labels, max_steps=1)
    before = one_step.member_params(0)
    losses = [one_step.train_epoch().metrics["loss"][0] for _ in range(3)]
    for name, value in one_step.member_params(0).items():  # (the zero biases move by 1e-30 * g)
        np.testing.assert_allclose(value, before[name], rtol=1e-7, atol=1e-20)
    assert len(set(losses)) == 3, losses  # a new mask every step
    # The same model without dropout: the same loss every step (the weights did stay put).
    no_dropout = spec.model_copy(update={"model": ModelSpec(layers=[spec.model.layers[1], spec.model.layers[3]])})
    still = engine.Population([no_dropout], images, labels, max_steps=1)
    assert len({still.train_epoch().metrics["loss"][0] for _ in range(3)}) == 1
    # Steps 0 and 1 inside one epoch draw the masks of the single-step epochs 1 and 2: the
    # mask follows the global step, not the epoch or the position in a chunk.
    for chunks in (1, 2):
        twice = engine.Population([spec], np.concatenate([images[:8]] * 2), np.concatenate([labels[:8]] * 2),
                                  chunks_per_epoch=chunks)
        assert twice.steps_per_epoch() == 2
        assert twice.train_epoch().metrics["loss"][0] == pytest.approx((losses[0] + losses[1]) / 2, rel=1e-6)


@pytest.mark.parametrize("schedule, decay", [
    ({"name": "exponential", "decay_rate": 0.5, "decay_steps": 3}, 0.0),
    ({"name": "inverse_time", "decay_rate": 0.5, "decay_steps": 2, "staircase": True}, 0.1),
    ({"name": "cosine", "decay_steps": 9, "warmup_steps": 4}, 0.0),
])
@pytest.mark.slow
def test_the_learning_rate_reported_for_an_epoch_is_that_of_its_last_step(schedule, decay):
    from mnistlab.optim_test import keras_lr  # the Keras formulas, transcribed once

    images, labels = tiny_data(n=40)
    spec = tiny_spec(batch_size=8).model_copy(update={"optimizer": OptimizerSpec(
        name="sgd", learning_rate=0.1, decay=decay, schedule=schedule)})
    for chunks in (1, 2):
        pop = engine.Population([spec], images, labels, chunks_per_epoch=chunks)
        steps = pop.steps_per_epoch()
        assert steps == 5
        reported = [pop.train_epoch().metrics["learning_rate"][0] for _ in range(3)]
        by_hand = [keras_lr(epoch * steps - 1, 0.1, decay=decay, **schedule) for epoch in (1, 2, 3)]
        np.testing.assert_allclose(reported, by_hand, rtol=1e-6)


# --- evaluation of label sets, a checkpoint read back, a parameter set's own penalty ---------


@pytest.mark.parametrize("output, classes", [("sigmoid", 5), ("softmax", 4)])
def test_a_label_set_is_predicted_at_its_threshold_itself(output, classes):
    # Zero weights give logits of exactly 0: sigmoid 1/2 for every class, and with four
    # classes softmax exactly 1/4. Both lie on their thresholds (p >= 0.5, p >= 0.25), so
    # every class is predicted: an image holding all of them is right, one holding one
    # class is wrong. (With five classes softmax gives 1/5 < 1/4: were a sigmoid model
    # judged by the softmax rule, no class would be predicted.)
    images, _ = tiny_data(n=6)
    labels = np.zeros((6, classes), np.int32)
    labels[:4] = 1
    labels[4:, 0] = 1
    spec = RunSpec(model=ModelSpec(layers=[Dense(units=classes, activation=output)]),
                   training=TrainingSpec(eval_batch_size=4))  # 6 images: a padded second batch
    params = {"dense/kernel": np.zeros((6, classes), np.float32), "dense/bias": np.zeros(classes, np.float32)}
    result = engine.evaluate(spec, params, images, labels)
    assert result["accuracy"] == pytest.approx(4 / 6)
    # Binary cross-entropy at p = 1/2 is log 2 for either label; categorical cross-entropy
    # of the uniform 1/4 is log 4 against any normalised label set.
    assert result["loss"] == pytest.approx(np.log(2) if output == "sigmoid" else np.log(4), rel=1e-6)


def test_evaluate_adds_the_penalty_of_the_weights_it_is_given():
    # Keras' evaluate: the mean cross-entropy plus the regularization penalty of the weights
    # evaluated (l1 and l2 on the first kernel), here weights far from any initialization.
    images, labels = tiny_data()
    rng = np.random.default_rng(5)
    shapes = {"dense/kernel": (6, 5), "dense/bias": (5,), "dense_1/kernel": (5, 3), "dense_1/bias": (3,)}
    params = {k: rng.normal(0, 1.5, s).astype(np.float32) for k, s in shapes.items()}
    result = engine.evaluate(tiny_spec(), params, images, labels)
    p = {k: v.astype(np.float64) for k, v in params.items()}
    assert result["loss"] == pytest.approx(numpy_loss(p, images, labels), rel=1e-5)
    z = np.tanh(images / 255 @ p["dense/kernel"] + p["dense/bias"]) @ p["dense_1/kernel"] + p["dense_1/bias"]
    assert result["accuracy"] == pytest.approx(np.mean(np.argmax(z, 1) == labels))


def test_a_checkpoint_read_back_as_other_types_restores_the_states_types_and_frozen_members():
    # A file format may hand back every number as float64 and the flags as 0/1: the state
    # gets the population's own types back (the step stays an int32 count) and the flagged
    # member is frozen, its weights kept while the others train.
    images, labels = tiny_data()
    specs = [tiny_spec(batch_size=8, seed=s) for s in (0, 1, 2)]
    saved = engine.Population(specs, images, labels, lanes=3)
    saved.train_epoch()
    arrays = {k: np.asarray(v, np.float64) for k, v in saved.state_arrays().items()}
    resumed = engine.Population(specs, images, labels, lanes=3)
    resumed.load_state_arrays(arrays, 1, [0, 1, 0])
    state = resumed.states[0]
    assert state.step.dtype == jnp.int32 and np.asarray(state.step).tolist() == [5, 5, 5]
    assert {str(v.dtype) for v in jax.tree.leaves(state)} == {"float32", "int32"}
    assert resumed.diverged.dtype == bool and resumed.diverged.tolist() == [False, True, False]
    assert resumed.active.tolist() == [True, False, True] and resumed.epochs_done == 1
    kept = resumed.member_params(1)
    result = resumed.train_epoch()
    assert result.epoch == 2 and result.diverged == [False, True, False]
    assert all(type(flag) is bool for flag in result.diverged)
    for name, value in resumed.member_params(1).items():
        np.testing.assert_array_equal(value, kept[name])
    assert np.isnan(result.metrics["loss"][1]) and np.isfinite(result.metrics["loss"][0])


# --- sizing a population: memory, programs compiled ahead, widths and concurrency measured ---


def conv_sizing_spec(optimizer, batch_size, eval_batch_size):
    return RunSpec.model_validate({
        "model": {"layers": [{"type": "conv2d", "filters": 4, "kernel_size": 3}, {"type": "flatten"},
                             {"type": "dense", "units": 3, "activation": "softmax"}]},
        "optimizer": optimizer, "training": {"batch_size": batch_size, "eval_batch_size": eval_batch_size}})


@pytest.mark.parametrize("spec, input_shape, expected", [
    # 8x8x1 in, 6x6x4 out of the 3x3 convolution (which keeps its 6*6 x 3*3*1 patch matrix),
    # 144 flattened, 3 out: 64 + 144 + 324 + 144 + 3 = 679 numbers a sample, 3 copies kept.
    # Weights 3*3*1*4 + 4 + 144*3 + 3 = 475; Adam holds two slots, plain SGD none.
    (conv_sizing_spec({"name": "adam"}, 200, 16), (8, 8), 4 * (475 * (2 + 2) + 200 * 679 * 3)),
    (conv_sizing_spec({"name": "sgd"}, 8, 128), (8, 8), 4 * (475 * (2 + 0) + 128 * 679 * 3)),
    # 6 -> 5 -> 3: 14 numbers a sample, 6*5 + 5 + 5*3 + 3 = 53 weights, momentum one slot.
    (tiny_spec().model_copy(update={"optimizer": OptimizerSpec(name="sgd", momentum=0.9)}), 6,
     4 * (53 * (2 + 1) + 128 * 14 * 3)),
])
def test_member_bytes_counts_weights_gradient_slots_and_activations(spec, input_shape, expected):
    assert engine.member_bytes(spec, input_shape) == expected


class FakeDevice:
    def __init__(self, platform, stats):
        self.platform, self.stats = platform, stats

    def memory_stats(self):
        return self.stats


@pytest.mark.parametrize("platform, stats, expected", [
    ("gpu", {"bytes_limit": 1000, "bytes_in_use": 300}, 700),
    ("gpu", {"bytes_limit": 1000}, 1000),
    ("gpu", None, 2048 * 1024),  # no statistics: the host's available memory
    ("gpu", {"bytes_in_use": 300}, 2048 * 1024),
    ("cpu", {"bytes_limit": 1000, "bytes_in_use": 300}, 2048 * 1024),  # a CPU's memory is the host's
])
def test_device_memory_is_the_devices_free_memory_or_the_hosts(platform, stats, expected, monkeypatch):
    meminfo = "MemTotal:       8192 kB\nMemFree:         512 kB\nMemAvailable:    2048 kB\n"
    opened = []
    monkeypatch.setattr(jax, "devices", lambda: [FakeDevice(platform, stats), FakeDevice("gpu", {})])
    monkeypatch.setattr(engine, "open", lambda path: opened.append(path) or io.StringIO(meminfo), raising=False)
    assert engine.device_memory() == expected
    assert opened == ([] if expected in (700, 1000) else ["/proc/meminfo"])


def test_compile_all_compiles_every_program_an_epoch_needs(monkeypatch):
    monkeypatch.setattr(engine, "_PROGRAMS", {})
    monkeypatch.setattr(engine, "COMPILATIONS", {})
    images, labels = tiny_data(n=40)
    specs = [tiny_spec(batch_size=8, eval_batch_size=4, seed=s) for s in (0, 1)]
    # 5 steps in 2 chunks: 3 and 2 steps, two programs; validation in blocks of 4 * 2.
    population = engine.Population(specs, images, labels, images[:10], labels[:10], lanes=2,
                                   chunks_per_epoch=2, eval_batches_per_call=2)
    assert engine.COMPILATIONS == {"init": 1}
    population.compile_all()
    compiled = {"init": 1, "order": 1, "chunk": 2, "evaluate": 1}
    assert engine.COMPILATIONS == compiled and population.compile_seconds > 0
    population.train_epoch()
    population.evaluate(images, labels)
    assert engine.COMPILATIONS == compiled  # nothing left to compile
    # No validation data: the evaluation is compiled all the same (a test set may come at the
    # end), for one member's weights too, so a run's test evaluation compiles nothing.
    plain = engine.Population(specs[:1], images, labels, lanes=1, chunks_per_epoch=2)
    plain.compile_all()
    compiled = {"init": 2, "order": 2, "chunk": 4, "evaluate": 2}
    assert engine.COMPILATIONS == compiled
    plain.train_epoch()
    engine.evaluate(specs[0], plain.member_params(0), images, labels)
    assert engine.COMPILATIONS == compiled  # evaluate's own population of one finds all compiled
    # Label sets: the evaluation program compiled ahead takes (block, classes) labels.
    sets = (np.arange(40)[:, None] % np.array([2, 3, 5]) == 0).astype(np.int32)
    multi = [spec.model_copy(update={"model": ModelSpec(layers=[Dense(units=3, activation="sigmoid")])})
             for spec in specs]
    population = engine.Population(multi, images, sets, images[:10], sets[:10], lanes=2, chunks_per_epoch=2,
                                   eval_batches_per_call=2)
    population.compile_all()
    compiled = {"init": 3, "order": 3, "chunk": 6, "evaluate": 3}
    assert engine.COMPILATIONS == compiled
    population.train_epoch()
    assert engine.COMPILATIONS == compiled


def test_the_compile_cache_is_kept_where_mnistlab_cache_says_unless_turned_off(monkeypatch, tmp_path):
    import pooch

    class Config:
        def __init__(self, folder):
            self.jax_compilation_cache_dir, self.updates = folder, {}

        def update(self, name, value):
            self.updates[name] = value

    def updates(folder=None, **env):
        for name in ("MNISTLAB_COMPILE_CACHE", "MNISTLAB_CACHE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        config = Config(folder)
        monkeypatch.setattr(engine, "jax", types.SimpleNamespace(config=config))
        engine.enable_compile_cache()
        return config.updates

    kept = {"jax_compilation_cache_dir": str(tmp_path / "xla"), "jax_persistent_cache_min_compile_time_secs": 0.1}
    assert updates(MNISTLAB_CACHE=str(tmp_path)) == kept
    assert updates(MNISTLAB_CACHE=str(tmp_path), MNISTLAB_COMPILE_CACHE="1") == kept
    assert updates(MNISTLAB_CACHE=str(tmp_path), MNISTLAB_COMPILE_CACHE="0") == {}
    assert updates("/the/users/own", MNISTLAB_CACHE=str(tmp_path)) == {}
    assert updates() == {**kept, "jax_compilation_cache_dir": str(pooch.os_cache("mnistlab") / "xla")}


def test_a_probe_times_the_fastest_of_three_warm_epochs_of_its_seeds(monkeypatch):
    made, calls = [], []

    class Timed:  # a population whose epochs take the times given
        def __init__(self, members, images, labels, **options):
            made.append((members, images, labels, options))
            self.seconds = iter([0.5, 3.0, 2.0, 4.0])  # the first, warming epoch does not count

        def compile_all(self):
            calls.append("compile")

        def train_epoch(self):
            calls.append("epoch")
            return engine.EpochResult(1, {}, next(self.seconds), [])

    monkeypatch.setattr(engine, "Population", Timed)
    spec, images, labels = tiny_spec(seed=7), np.zeros((4, 6), np.uint8), np.zeros(4, np.uint8)
    assert engine._probe_seconds(spec, images, labels, 3, 2, 2, 48) == 2.0
    assert calls == ["compile", "epoch", "epoch", "epoch", "epoch"]
    [(members, given_images, given_labels, options)] = made
    assert given_images is images and given_labels is labels
    assert options == {"lanes": 2, "chunks_per_epoch": 1, "max_steps": 48, "concurrency": 2}
    assert [m.training.seed for m in members] == [0, 1, 2]
    assert all(m.model_copy(update={"training": spec.training}) == spec for m in members)


def probe_at(rates: dict[int, float], probed: list):
    """A stand-in for `_probe_seconds` where width w trains rates[w] member-steps a second."""
    def probe(*args):
        probed.append(args)  # spec, images, labels, members, width, concurrency, steps
        return args[3] / rates[args[4]]
    return probe


@pytest.mark.parametrize("members, rates, probed, chosen", [
    # the widest is not always the best: the most member-steps a second wins
    (16, {1: 10, 2: 18, 4: 12, 8: 25, 16: 14}, [1, 2, 4, 8, 16], 8),
    # a width more than 40% slower than the best ends the search; one within 40% does not
    (16, {1: 10, 2: 5.9}, [1, 2], 1),
    (16, {1: 10, 2: 6.1, 4: 3}, [1, 2, 4], 1),
    (16, {1: 10, 2: 6.0, 4: 3}, [1, 2, 4], 1),
    (16, {1: 10, 2: 10, 4: 3}, [1, 2, 4], 1),  # a tie keeps the narrower
    # widths double up to the population, which is probed last
    (6, {1: 10, 2: 11, 4: 12, 6: 13}, [1, 2, 4, 6], 6),
    (2, {1: 10, 2: 11}, [1, 2], 2),
    (65, {1: 1, 2: 2, 4: 3, 8: 4, 16: 5, 32: 6, 64: 7}, [1, 2, 4, 8, 16, 32, 64], 64),  # at most 64
    # probes of seconds: fewer than one member-step a second
    (2, {1: 0.5, 2: 0.9}, [1, 2], 2),
    (1, {}, [], 1),
])
def test_choose_lanes_keeps_the_fastest_width_it_measured(members, rates, probed, chosen, monkeypatch):
    spec, (images, labels) = tiny_spec(), tiny_data()
    seen: list = []
    monkeypatch.setattr(engine, "_LANES", {})
    monkeypatch.setattr(engine, "_probe_seconds", probe_at(rates, seen))
    assert engine.choose_lanes(spec, images, labels, members, steps=5) == chosen
    # at least two members a probe, so that it runs the population's program
    assert [args[3:] for args in seen] == [(max(2, w), w, 1, 5) for w in probed]
    assert all(args[0] is spec and args[1] is images and args[2] is labels for args in seen)
    assert engine.choose_lanes(spec, images, labels, members, steps=5) == chosen
    assert len(seen) == len(probed)  # remembered


def test_choose_lanes_remembers_per_structure_and_population_size(monkeypatch):
    seen: list = []
    monkeypatch.setattr(engine, "_LANES", {})
    monkeypatch.setattr(engine, "_probe_seconds", probe_at({1: 10, 2: 11, 4: 12}, seen))
    assert engine.choose_lanes(tiny_spec(), None, None, 4) == 4
    assert engine.choose_lanes(tiny_spec(seed=5), None, None, 4) == 4 and len(seen) == 3  # same structure
    assert engine.choose_lanes(tiny_spec(), None, None, 2) == 2 and len(seen) == 5
    assert engine.choose_lanes(tiny_spec(batch_size=8), None, None, 4) == 4 and len(seen) == 8
    assert [args[4] for args in seen] == [1, 2, 4, 1, 2, 1, 2, 4] and {args[6] for args in seen} == {48}


@pytest.mark.parametrize("one, two, chosen", [(2.0, 1.88, 2), (2.0, 1.9, 1), (2.0, 1.92, 1), (2.0, 3.0, 1)])
def test_choose_concurrency_trains_two_slices_at_once_only_when_measured_faster(one, two, chosen, monkeypatch):
    images, labels = tiny_data()
    seen = []

    def probe(*args):
        seen.append(args)
        return {1: one, 2: two}[args[5]]

    monkeypatch.setattr(engine, "_CONCURRENCY", {})
    monkeypatch.setattr(engine.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(engine, "_probe_seconds", probe)
    spec = tiny_spec()
    assert engine.choose_concurrency(spec, images, labels, width=4, members=4) == 1  # one slice: nothing to overlap
    assert seen == []
    assert engine.choose_concurrency(spec, images, labels, width=4, members=5, steps=6) == chosen  # two slices
    # two slices' worth of members, one slice after the other, then two at once
    assert seen == [(spec, images, labels, 8, 4, 1, 6), (spec, images, labels, 8, 4, 2, 6)]
    assert engine.choose_concurrency(spec, images, labels, width=4, members=8) == chosen and len(seen) == 2
    assert engine.choose_concurrency(spec, images, labels, width=2, members=8) == chosen and len(seen) == 4
    assert seen[-1][3:] == (4, 2, 2, 48)


@pytest.mark.parametrize("backend, cores", [("gpu", 2), ("cpu", 1), ("cpu", None)])
def test_choose_concurrency_runs_one_slice_at_a_time_on_an_accelerator_or_one_core(backend, cores, monkeypatch):
    monkeypatch.setattr(engine, "_CONCURRENCY", {})
    monkeypatch.setattr(engine.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(engine, "_probe_seconds", lambda *args: {1: 1.0, 2: 0.5}[args[5]])
    assert engine.choose_concurrency(tiny_spec(), None, None, width=1, members=8) == 1


def test_sigmoid_outputs_with_class_indices_take_binary_cross_entropy_against_one_hot():
    # Keras' binary_crossentropy against the one-hot rows of the class indices, averaged
    # over the 3 classes, then over the 10 images (not 3 nor 10 classes: the logits' last axis).
    images, labels = tiny_data(n=10)
    rng = np.random.default_rng(2)
    params = {"dense/kernel": rng.normal(0, 1, (6, 3)).astype(np.float32),
              "dense/bias": rng.normal(0, 1, 3).astype(np.float32)}
    spec = RunSpec(model=ModelSpec(layers=[Dense(units=3, activation="sigmoid")]))
    result = engine.evaluate(spec, params, images, labels)
    z = images / 255 @ params["dense/kernel"].astype(np.float64) + params["dense/bias"]
    q, onehot = 1 / (1 + np.exp(-z)), np.eye(3)[labels]
    expected = -(onehot * np.log(q) + (1 - onehot) * np.log(1 - q)).mean(1).mean()
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert result["accuracy"] == pytest.approx(np.mean(np.argmax(z, 1) == labels))


# --- the member axis and the chunk's memory ----------------------------------------------------


@pytest.mark.parametrize("members", [1, 3])
def test_over_members_maps_the_member_axis_and_runs_one_member_plainly(members):
    # For one member the axis is taken off and put back around the plain function, with no
    # vmap (measured: a vmap over one member made an epoch up to 4x slower on CPU); for
    # several, every member is mapped. An argument with axis None is shared.
    traced = []

    def fn(tree, shared):
        traced.append(isinstance(tree["w"], jax.core.Tracer))
        return {"w": tree["w"] * shared, "total": tree["w"].sum() + tree["b"]}

    w = np.arange(members * 2, dtype=np.float32).reshape(members, 2)  # NumPy or JAX alike
    b = jnp.arange(members, dtype=jnp.float32) * 10
    out = engine.over_members(fn, members, (0, None))({"w": w, "b": b}, np.float32(3))
    np.testing.assert_array_equal(out["w"], w * 3)
    np.testing.assert_array_equal(out["total"], w.sum(1) + np.arange(members) * 10)
    assert out["total"].shape == (members,) and traced == [members > 1]


def test_a_chunk_updates_the_state_in_place():
    # The chunk's program is given the state to write over (donated): no copy of the
    # weights and optimizer slots per chunk, and the state handed in is gone after it.
    images, labels = tiny_data()
    population = engine.Population([tiny_spec(batch_size=8)], images, labels)
    before = jax.tree.leaves(population.states[0])
    population.train_epoch()
    assert all(leaf.is_deleted() for leaf in before)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(population.states[0]))


# --- members frozen at different times ----------------------------------------------------------


def test_members_frozen_at_different_times_keep_the_weights_they_had_when_frozen():
    # Member 0 is frozen, then an epoch is given up after its first chunk (Ctrl-C): the
    # slice's state moved, member 0's with it. Member 1 frozen now must not take member 0's
    # moved weights as its snapshot: member 0 goes back to where it was frozen.
    images, labels = tiny_data()
    specs = [tiny_spec(batch_size=8, seed=s) for s in range(3)]
    population = engine.Population(specs, images, labels, lanes=3, chunks_per_epoch=5)
    population.train_epoch()
    population.freeze([0])
    first = population.member_params(0)

    def interrupt(progress):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        population.train_epoch(on_progress=interrupt)
    population.freeze([1])
    second, third = population.member_params(1), population.member_params(2)
    result = population.train_epoch()
    for name in first:
        np.testing.assert_array_equal(population.member_params(0)[name], first[name])
        np.testing.assert_array_equal(population.member_params(1)[name], second[name])
    assert not np.array_equal(population.member_params(2)["dense/kernel"], third["dense/kernel"])
    assert np.isnan(result.metrics["loss"][:2]).all() and np.isfinite(result.metrics["loss"][2])


def test_only_a_slice_training_frozen_members_along_holds_a_copy_of_its_state():
    # Two slices of two. A copy of a slice's state is kept only where some, not all, of its
    # members are frozen: a slice with none frozen needs none, and one all frozen is skipped.
    images, labels = tiny_data()
    specs = [tiny_spec(batch_size=8, seed=s) for s in range(4)]
    population = engine.Population(specs, images, labels, lanes=2)
    population.train_epoch()
    population.freeze([0])
    kept = population.member_params(0)
    assert set(population._snapshots) == {0}
    result = population.train_epoch()
    for name, value in population.member_params(0).items():
        np.testing.assert_array_equal(value, kept[name])
    assert np.isnan(result.metrics["loss"][0]) and np.isfinite(result.metrics["loss"][1:]).all()
    population.freeze([2, 3])  # the second slice, whole: skipped from now on
    assert set(population._snapshots) == {0}
    result = population.train_epoch()
    assert np.isfinite(result.metrics["loss"][1]) and np.isnan(result.metrics["loss"][2:]).all()
    population.freeze([1])  # every member frozen: nothing trains, every figure is NaN
    result = population.train_epoch()
    assert result.epoch == 4 and result.diverged == [False] * 4
    assert all(np.isnan(values).all() for values in result.metrics.values())


def test_progress_is_reported_after_every_chunk_of_every_slice():
    # Two slices of one member, 5 steps an epoch in chunks of 3 and 2: ten steps in all.
    images, labels = tiny_data()
    specs = [tiny_spec(batch_size=8, seed=s) for s in range(2)]
    population = engine.Population(specs, images, labels, lanes=1, chunks_per_epoch=2)
    heard, slices = [], []
    for epoch in (1, 2):
        started = time.perf_counter()
        result = population.train_epoch(on_progress=heard.append, on_slice=slices.append)
        assert 0 < result.seconds <= time.perf_counter() - started
        assert [(p.epoch, p.steps_done, p.steps_total) for p in heard] == [
            (epoch, 3, 10), (epoch, 5, 10), (epoch, 8, 10), (epoch, 10, 10)]
        assert slices == [0, 1]
        heard.clear(), slices.clear()
    population.freeze([0])  # a slice all frozen is skipped: five steps left
    population.train_epoch(on_progress=heard.append, on_slice=slices.append)
    assert [(p.steps_done, p.steps_total) for p in heard] == [(3, 5), (5, 5)] and slices == [1]


@pytest.mark.parametrize("concurrency, members, threads", [(2, 2, True), (3, 2, True), (1, 2, False), (2, 1, False)])
def test_slices_run_in_threads_only_when_two_at_once_are_asked_and_there_are_two(concurrency, members, threads):
    images, labels = tiny_data(n=16)
    specs = [tiny_spec(batch_size=8, seed=s) for s in range(members)]
    population = engine.Population(specs, images, labels, lanes=1, concurrency=concurrency)
    where = []
    population.train_epoch(on_slice=lambda k: where.append(threading.current_thread() is threading.main_thread()))
    assert where == [not threads] * members


def test_an_epoch_given_up_in_a_thread_raises_what_stopped_it():
    images, labels = tiny_data(n=16)
    specs = [tiny_spec(batch_size=8, seed=s) for s in range(2)]
    population = engine.Population(specs, images, labels, lanes=1, concurrency=2)

    def interrupt(progress):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        population.train_epoch(on_progress=interrupt)


def run_on_devices(script: str, count: int) -> dict:
    """The last line `script` prints, as JSON, run in a fresh process with `count` (forced
    host) CPU devices."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


SHARDED = r"""
import json, sys
import jax, numpy as np
from mnistlab import engine, engine_test
from mnistlab.spec import OptimizerSpec
images, labels = engine_test.tiny_data()
out = {"devices": jax.device_count()}
for width in (2, 3):
    specs = [engine_test.tiny_spec(batch_size=8).model_copy(update={"optimizer": OptimizerSpec(name="sgd", learning_rate=lr)})
             for lr in (0.05, 0.1, 0.2)[:width]]
    population = engine.Population(specs, images, labels)
    population.train_epoch()
    leaf = population.states[0].params["dense/kernel"]
    out[width] = {"sharded": population.sharding is not None, "devices": len(leaf.sharding.device_set),
                  "members_per_device": leaf.addressable_shards[0].data.shape[0],
                  "data_devices": len(population.images.sharding.device_set),
                  "sums": [float(np.abs(population.member_params(i)["dense/kernel"]).sum()) for i in range(width)]}
print(json.dumps(out))
"""


def test_members_are_split_across_devices_when_they_divide_evenly_and_train_the_same():
    # Two (forced host) devices: a population of 2 is split, one member per device; one of
    # 3 cannot be split evenly and stays on one device; both train exactly as on one device.
    one, two = run_on_devices(SHARDED, 1), run_on_devices(SHARDED, 2)
    assert one["devices"] == 1 and two["devices"] == 2
    assert (one["2"]["sharded"], one["3"]["sharded"], two["2"]["sharded"], two["3"]["sharded"]) == (False, False, True, False)
    assert (two["2"]["devices"], two["3"]["devices"]) == (2, 1)
    assert (two["2"]["members_per_device"], two["3"]["members_per_device"]) == (1, 3)
    assert (two["2"]["data_devices"], two["3"]["data_devices"]) == (2, 1)  # the data set is copied to each
    for width in ("2", "3"):
        np.testing.assert_allclose(two[width]["sums"], one[width]["sums"], rtol=1e-6)


# A convnet's data for the scripts below: 200 random 12 x 12 images of 3 classes.
CONVNET_DATA = r"""
import json, re
import jax, numpy as np
from mnistlab import engine, spec as spec_lib
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (200, 12, 12), dtype=np.uint8)
labels = rng.integers(0, 3, 200).astype(np.uint8)
"""

SPLIT = CONVNET_DATA + r"""
spec = spec_lib.from_dict({
    "model": {"input_rescale": 1 / 255, "layers": [
        {"type": "random_translation", "height_factor": 0.1, "width_factor": 0.1, "fill_mode": "constant"},
        {"type": "conv2d", "filters": 8, "kernel_size": 3, "use_bias": False},
        {"type": "batch_normalization"}, {"type": "activation", "activation": "relu"},
        {"type": "max_pooling2d", "pool_size": 2}, {"type": "flatten"}, {"type": "dropout", "rate": 0.3},
        {"type": "dense", "units": 3, "activation": "softmax"}]},
    "optimizer": {"name": "adam", "learning_rate": 0.01},
    "training": {"batch_size": 64, "epochs": 2}})
population = engine.Population([spec], images[:168], labels[:168], images[168:], labels[168:])
epochs = [population.train_epoch().metrics for _ in range(2)]
leaf = population.states[0].params["conv2d/kernel"]
test = population.evaluate(images[168:], labels[168:])
# the epoch's program as compiled: how many of a batch's 64 sample indices each device gets
(chunk,) = [program for key, program in engine._PROGRAMS.items() if key[0] == "chunk"]
batches = chunk.input_shardings[0][-1]
(evaluation,) = [program for key, program in engine._PROGRAMS.items() if key[0] == "evaluate"]
print(json.dumps({"devices": jax.device_count(), "split": population.batch_sharding is not None,
                  "gathered": chunk.as_text().count("all-gather("),
                  "batch_on_each": batches.shard_shape((1, 3, 64))[-1],
                  "evaluated_on": len(jax.tree.leaves(evaluation.input_shardings[0])[0].device_set),
                  "weights_on": len(leaf.sharding.device_set), "whole_on_each": leaf.sharding.is_fully_replicated,
                  "epochs": epochs, "test": {k: v.tolist() for k, v in test.items()},
                  "params": {k: np.asarray(v).ravel().tolist() for k, v in population.states[0].params.items()}}))
"""


def test_a_convnets_batch_is_split_across_devices_and_trains_the_same():
    # Two (forced host) devices and one member of a convnet (many activations a weight):
    # each device computes half of every batch, with augmentation, batch normalization
    # (its statistics over the whole batch) and dropout drawn as on one device; the
    # weights, every epoch's figures and the evaluation equal one device's to float32
    # rounding of a sum in another order. (No bias before batch normalization, as in
    # Keras' examples: its exact gradient is zero, so Adam turns rounding into its steps.)
    one, two = run_on_devices(SPLIT, 1), run_on_devices(SPLIT, 2)
    assert (one["devices"], one["split"], one["batch_on_each"], one["weights_on"]) == (1, False, 64, 1)
    assert (two["devices"], two["split"], two["batch_on_each"], two["weights_on"], two["whole_on_each"]) == \
        (2, True, 32, 2, True)
    # Each device augments its own images: nothing is gathered across the devices (the
    # gradients are summed); the whole batch on each would be augmented twice.
    assert two["gathered"] == 0
    # Evaluation runs on one device, as on one (not the same batches twice, side by side).
    assert one["evaluated_on"] == two["evaluated_on"] == 1
    for a, b in zip(one["epochs"], two["epochs"]):
        assert a.keys() == b.keys() == {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
        for name in a:
            np.testing.assert_allclose(b[name], a[name], rtol=2e-5, err_msg=name)
    for name in one["test"]:
        np.testing.assert_allclose(two["test"][name], one["test"][name], rtol=2e-5, err_msg=name)
    assert one["params"].keys() == two["params"].keys() and "batch_normalization/moving_variance" in one["params"]
    for name, values in one["params"].items():
        np.testing.assert_allclose(two["params"][name], values, rtol=1e-4, atol=1e-6, err_msg=name)


SYNCS = CONVNET_DATA + r"""
spec = spec_lib.from_dict({
    "model": {"input_rescale": 1 / 255, "layers": [
        {"type": "random_translation", "height_factor": 0.1, "width_factor": 0.1, "fill_mode": "constant"},
        {"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"},
        {"type": "max_pooling2d", "pool_size": 2}, {"type": "flatten"}, {"type": "dropout", "rate": 0.3},
        {"type": "dense", "units": 3, "activation": "softmax"}]},
    "training": {"batch_size": 64, "epochs": 1}})
population = engine.Population([spec], images, labels)
population.train_epoch()
(chunk,) = [program for key, program in engine._PROGRAMS.items() if key[0] == "chunk"]
# the compiled computations, each with the collectives it runs itself
blocks = re.findall(r"^(?:ENTRY )?%?([\w.-]+) [^\n]*\{\n(.*?)^\}", chunk.as_text(), re.S | re.M)
print(json.dumps({"split": population.batch_sharding is not None,
                  "collectives": {name: len(re.findall(r" (?:all-reduce|all-gather|collective-permute)\(", body))
                                  for name, body in blocks},
                  "step": [name for name, body in blocks if "dot(" in body or "__ynn_fusion" in body]}))
"""


def test_a_step_of_a_split_batch_waits_for_the_other_devices_once():
    # Devices computing halves of a batch meet wherever a step sums over the batch: the
    # gradient, summed across them, must be the only such place in a step of a network
    # without batch normalization. The sample count the loss's mean divides by is counted
    # for the whole chunk before it, the correct predictions summed after it.
    out = run_on_devices(SYNCS, 2)
    assert out["split"]
    loops_of_steps = {name for name in out["step"] if out["collectives"][name]}
    assert len(loops_of_steps) == 1, out
    assert out["collectives"][loops_of_steps.pop()] == 1, out


def test_activations_a_weight_of_the_cnn_preset_by_hand():
    # Per image: 2 augmentations 784 each, conv 26x26x32, pool 13x13x32, conv 11x11x64,
    # pool 5x5x64, flatten and dropout 1600 each, dense 10; times the batch of 64. Weights:
    # 3*3*1*32 + 32, 3*3*32*64 + 64, 1600*10 + 10.
    per_image = 784 + 784 + 21632 + 5408 + 7744 + 1600 + 1600 + 1600 + 10
    weights = 320 + 18496 + 16010
    assert engine.activations_per_weight(spec_lib.preset("cnn")) == pytest.approx(64 * per_image / weights)


@pytest.mark.parametrize("preset, split", [("cnn", True), ("cnn-best", True), ("robust", True),
                                           ("speedrun", False), ("seed", False), ("fast", False),
                                           ("keras-mlp", False)])
def test_which_presets_split_their_batch(preset, split):
    # As measured (engine.SPLIT_BATCH_FROM): convnets with full-size feature maps gain,
    # dense networks (their gradient summed across devices each step) lose.
    spec = spec_lib.preset(preset)
    assert engine.splits_batch(spec, 2) is split
    assert engine.splits_batch(spec, 1) is False
    odd = spec_lib.with_values(spec, {"training.batch_size": 63})
    assert engine.splits_batch(odd, 2) is False  # halves of a batch must be equal
    # Shares of fewer than 32 images were not measured: a batch of 64 stays whole on 4
    # devices, one of 128 is split in four.
    narrow = spec_lib.with_values(spec, {"training.batch_size": 64})
    wide = spec_lib.with_values(spec, {"training.batch_size": 128})
    assert engine.splits_batch(narrow, 4) is False
    assert engine.splits_batch(wide, 4) is split


DEVICES = "import mnistlab, jax; print(jax.device_count())"


@pytest.mark.parametrize("pinned, env, expected", [
    (True, {}, 1),  # run on one core
    (False, {}, min(8, len(os.sched_getaffinity(0)))),  # on all of this process's cores, at most 8
    (False, {"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, 3),  # the user's choice stays
    (False, {"JAX_NUM_CPU_DEVICES": "1"}, 1),
])
def test_import_gives_one_cpu_device_a_core_unless_the_user_chose(pinned, env, expected):
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    one_core = ["taskset", "-c", str(min(os.sched_getaffinity(0)))] if pinned else []
    done = subprocess.run([*one_core, sys.executable, "-c", DEVICES], capture_output=True, text=True,
                          env={**base, "JAX_PLATFORMS": "cpu", **env}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) == expected


def test_import_after_jax_started_leaves_its_devices():
    done = subprocess.run([sys.executable, "-c", "import jax; jax.devices(); " + DEVICES], capture_output=True,
                          text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) == 1


def test_each_slice_is_evaluated_with_its_own_weights():
    # Three members one at a time (three slices): each member's figures are those of its
    # weights evaluated alone.
    images, labels = tiny_data()
    specs = [tiny_spec(batch_size=8).model_copy(update={"optimizer": OptimizerSpec(name="sgd", learning_rate=lr)})
             for lr in (0.05, 0.5, 2.0)]
    population = engine.Population(specs, images, labels, lanes=1)
    population.train_epoch()
    together = population.evaluate(images, labels)
    for i, spec in enumerate(specs):
        alone = engine.evaluate(spec, population.member_params(i), images, labels)
        assert together["loss"][i] == pytest.approx(alone["loss"], rel=1e-6)
        assert together["accuracy"][i] == pytest.approx(alone["accuracy"])
    assert len(set(np.round(together["loss"], 6))) == 3


def test_members_of_different_structures_cannot_share_a_population():
    images, labels = tiny_data()
    wider = tiny_spec().model_copy(update={"model": ModelSpec(layers=[Dense(units=7, activation="tanh"),
                                                                      Dense(units=3, activation="softmax")])})
    with pytest.raises(ValueError) as caught:
        engine.Population([tiny_spec(), wider], images, labels)
    assert str(caught.value) == "a population's members must share one structure; group them first"


def test_compile_seconds_add_up_every_compilation(monkeypatch):
    # A clock that moves one second a reading: each compilation is read twice, so the
    # population's compile time is one second per program it compiled.
    monkeypatch.setattr(engine, "_PROGRAMS", {})
    monkeypatch.setattr(engine, "COMPILATIONS", {})
    clock = iter(range(10**6))
    monkeypatch.setattr(engine, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    # One program after another, so that the clock's readings pair up (compile_all compiles
    # side by side, and the time of each program is counted all the same).
    monkeypatch.setattr(engine, "ThreadPoolExecutor", lambda workers: contextlib.nullcontext(
        types.SimpleNamespace(map=map)))
    images, labels = tiny_data(n=40)
    population = engine.Population([tiny_spec(batch_size=8)], images, labels, chunks_per_epoch=2)
    population.compile_all()
    assert engine.COMPILATIONS == {"init": 1, "order": 1, "chunk": 2, "evaluate": 1}
    assert population.compile_seconds == 5.0


def test_a_program_is_compiled_again_for_another_number_of_samples_only_if_it_depends_on_it(monkeypatch):
    # Every program takes its shapes from its arguments except the one drawing the order,
    # which closes over the count: initialising weights does not depend on the data set,
    # the epoch's program is given it whole.
    monkeypatch.setattr(engine, "_PROGRAMS", {})
    monkeypatch.setattr(engine, "COMPILATIONS", {})
    images, labels = tiny_data(n=40)
    for n in (40, 38):
        engine.Population([tiny_spec(batch_size=8)], images[:n], labels[:n]).train_epoch()
    assert engine.COMPILATIONS == {"init": 1, "order": 2, "chunk": 2}


@pytest.mark.parametrize("held_out", [0, 1])
def test_validation_figures_come_from_any_held_out_sample_and_none_without_one(held_out):
    # Keras reports val_* whenever validation data holds a sample; an empty set is no validation.
    images, labels = tiny_data(n=41)
    population = engine.Population([tiny_spec()], images[:40], labels[:40], images[40:40 + held_out],
                                   labels[40:40 + held_out])
    metrics = population.train_epoch().metrics
    assert ("val_loss" in metrics, "val_accuracy" in metrics) == (held_out > 0, held_out > 0)
    if held_out:
        expected = engine.evaluate(tiny_spec(), population.member_params(0), images[40:], labels[40:])
        assert metrics["val_loss"][0] == pytest.approx(expected["loss"], rel=1e-6)
        assert metrics["val_accuracy"][0] == expected["accuracy"]
