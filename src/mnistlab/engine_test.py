"""engine.py: one step against a hand computation, Keras' epoch bookkeeping, determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnistlab import engine, model
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


def test_epoch_metrics_are_keras_sample_weighted_means_including_the_last_small_batch():
    # With a vanishing learning rate the weights stay put, so every batch's loss is the
    # loss of the same model: the epoch's running mean must equal a full evaluation, which
    # holds only if the last, smaller batch (40 = 3*12 + 4) is trained and weighted by its size.
    images, labels = tiny_data()
    spec = tiny_spec(batch_size=12).model_copy(update={"optimizer": OptimizerSpec(name="sgd", learning_rate=1e-30)})
    pop = engine.Population([spec], images, labels)
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
    (1875, 10, [125] * 15), (20, 10, [2] * 10), (7, 10, [7]), (0, 10, []), (1687, 10, [241] * 7)])
def test_plan_chunks(steps, target, expected):
    plan = engine.plan_chunks(steps, target)
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
    # epoch's loss is that of the initial weights, computed here by hand in NumPy.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 6), dtype=np.uint8)
    labels = np.zeros((24, 3), np.int32)
    labels[np.arange(24), rng.integers(0, 3, 24)] = 1
    labels[np.arange(0, 24, 2), rng.integers(0, 3, 12)] = 1
    spec = RunSpec(model=ModelSpec(layers=[Dense(units=3, activation=output)]),
                   optimizer=OptimizerSpec(name="sgd", learning_rate=1e-30), training=TrainingSpec(batch_size=8))
    population = engine.Population([spec], images, labels)
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
    assert result.metrics["loss"][0] == pytest.approx(expected, rel=1e-5)
    exact = np.mean(np.all(predicted == (labels > 0), axis=1))
    assert result.metrics["accuracy"][0] == pytest.approx(exact, abs=1e-6)


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


def test_batch_statistics_move_by_keras_momentum_and_escape_the_optimizer():
    # One full batch, AdamW with a large weight decay: were the moving statistics handed to
    # the optimizer, the decay would pull them off Keras' moving average.
    images, labels = tiny_data(n=16)
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


@pytest.mark.parametrize("n, batch_size", [(12, 4), (14, 4)])
def test_every_epoch_visits_the_samples_in_its_own_order(n, batch_size):
    # Order matters to SGD with small batches, so the weights after each epoch tell which
    # order it used. Each epoch's order is the permutation jax.random draws from the run's
    # shuffle key (the first half of the seed's split) folded with the epoch number.
    images, labels = tiny_data(n=n)
    seed = 3
    shuffle_key = jax.random.split(jax.random.PRNGKey(seed), 2)[0]
    orders = [np.asarray(jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n)) for epoch in (1, 2)]
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[0], np.arange(n))
    pop = engine.Population([softmax_regression(batch_size, seed)], images, labels)
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
