"""model.py against hand sums and finite differences: penalties, gradients, the output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnistlab import model
from mnistlab import spec as spec_lib
from mnistlab.spec import Dense, Dropout, Flatten, ModelSpec, RandomRotation, RandomTranslation, Regularizer

jax.config.update("jax_enable_x64", False)


def tiny_spec(**dense_kwargs):
    return ModelSpec(layers=[Dense(units=3, activation="relu", **dense_kwargs), Dense(units=2, activation="softmax")])


def test_penalty_is_keras_plain_sum():
    spec = tiny_spec(kernel_regularizer=Regularizer(l1=0.1, l2=0.01), bias_regularizer=Regularizer(l2=0.5))
    params = {"dense/kernel": jnp.array([[1.0, -2.0, 0.0], [0.5, 0.0, -1.0]]),
              "dense/bias": jnp.array([1.0, 2.0, -3.0]),
              "dense_1/kernel": jnp.ones((3, 2)), "dense_1/bias": jnp.zeros(2)}
    hyper = model.hyperparameters(spec)
    # By hand: kernel l1 0.1*(1+2+0.5+1) = 0.45, l2 0.01*(1+4+0.25+1) = 0.0625; bias l2 0.5*14 = 7.
    assert float(model.penalty(spec, params, hyper)) == pytest.approx(0.45 + 0.0625 + 7.0, rel=1e-6)


def test_penalty_gradient_matches_autodiff():
    spec = tiny_spec(kernel_regularizer=Regularizer(l1=0.1, l2=0.01), bias_regularizer=Regularizer(l1=0.2, l2=0.3))
    params = {k: jnp.asarray(v) for k, v in model.init(spec, 0, 4).items()}
    params["dense/bias"] = jnp.array([0.3, -0.2, 0.7])
    hyper = model.hyperparameters(spec)
    auto = jax.grad(lambda p: model.penalty(spec, p, hyper))(params)
    for name, g in model.penalty_grad(spec, params, hyper).items():
        np.testing.assert_allclose(g, auto[name], rtol=1e-6)


@pytest.mark.slow
def test_logits_gradient_matches_finite_differences():
    jax.config.update("jax_enable_x64", True)
    try:
        spec = ModelSpec(layers=[Dense(units=5, activation="tanh"), Dense(units=4, activation="sigmoid"),
                                 Dense(units=3, activation="softmax")], input_rescale=1.0)
        params = {k: v.astype(jnp.float64) for k, v in model.init(spec, 1, 6).items()}
        x = jax.random.uniform(jax.random.PRNGKey(2), (7, 6), jnp.float64)
        labels = jnp.array([0, 1, 2, 0, 1, 2, 0])

        def loss(p):
            z = model.logits(spec, p, {}, x)
            return -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(7), labels])

        grads = jax.grad(loss)(params)
        eps = 1e-6
        for name in params:
            flat = np.asarray(params[name]).ravel()
            for i in (0, flat.size // 2, flat.size - 1):
                up, down = flat.copy(), flat.copy()
                up[i] += eps
                down[i] -= eps
                f = lambda v: float(loss({**params, name: jnp.asarray(v.reshape(params[name].shape))}))
                numeric = (f(up) - f(down)) / (2 * eps)
                assert float(np.asarray(grads[name]).ravel()[i]) == pytest.approx(numeric, rel=1e-5, abs=1e-9)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_final_activation_is_left_to_the_loss():
    spec = tiny_spec()
    params = {k: jnp.asarray(v) for k, v in model.init(spec, 0, 4).items()}
    x = jnp.arange(8, dtype=jnp.uint8).reshape(2, 4)
    z = model.logits(spec, params, {}, x)
    h = jax.nn.relu((x / 255.0) @ params["dense/kernel"] + params["dense/bias"])
    np.testing.assert_allclose(z, h @ params["dense_1/kernel"] + params["dense_1/bias"], rtol=1e-5)
    np.testing.assert_allclose(model.probabilities(spec, params, x), jax.nn.softmax(z), rtol=1e-6)


def test_keras_layer_names():
    spec = ModelSpec(layers=[Dense(units=3), Dropout(rate=0.1), Dense(units=3), Dropout(rate=0.1),
                             Dense(units=2, activation="softmax")])
    assert model.layer_names(spec) == ["dense", "dropout", "dense_1", "dropout_1", "dense_2"]


def test_walk_yields_each_layers_output_at_inference():
    spec = ModelSpec(layers=[Dense(units=3, activation="relu"), Dropout(rate=0.5), Dense(units=2, activation="softmax")])
    params = {k: jnp.asarray(v) for k, v in model.init(spec, 0, 4).items()}
    x = jnp.arange(8, dtype=jnp.uint8).reshape(2, 4)
    h = jax.nn.relu((x / 255.0) @ params["dense/kernel"] + params["dense/bias"])
    walked = list(model.walk(spec, params, x))
    assert [i for i, _ in walked] == [0, 1, 2]
    np.testing.assert_allclose(walked[0][1], h, rtol=1e-5)
    np.testing.assert_allclose(walked[1][1], h, rtol=1e-5)  # dropout is off at inference
    np.testing.assert_allclose(walked[2][1], h @ params["dense_1/kernel"] + params["dense_1/bias"], rtol=1e-5)


def test_in_training_a_dropout_layer_draws_its_mask_from_the_key_folded_with_its_index():
    spec = ModelSpec(layers=[Dense(units=300, activation="relu"), Dropout(rate=0.5),
                             Dense(units=2, activation="softmax")])
    params = {k: jnp.asarray(v) for k, v in model.init(spec, 0, 4).items()}
    x = jnp.arange(8, dtype=jnp.uint8).reshape(2, 4)
    key = jax.random.PRNGKey(4)
    h = jax.nn.relu((x / 255.0) @ params["dense/kernel"] + params["dense/bias"])
    keep = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.5, h.shape)  # the dropout layer is layers[1]
    expected = jnp.where(keep, h / 0.5, 0.0) @ params["dense_1/kernel"] + params["dense_1/bias"]
    np.testing.assert_allclose(model.logits(spec, params, model.hyperparameters(spec), x, key), expected, rtol=1e-5)


def test_sigmoid_outputs_are_independent_probabilities():
    spec = ModelSpec(layers=[Dense(units=3, activation="sigmoid")])
    params = {k: jnp.asarray(v) for k, v in model.init(spec, 0, 4).items()}
    x = jnp.arange(8, dtype=jnp.uint8).reshape(2, 4)
    z = (x / 255.0) @ params["dense/kernel"] + params["dense/bias"]
    np.testing.assert_allclose(model.probabilities(spec, params, x), 1 / (1 + np.exp(-np.asarray(z))), rtol=1e-5)


def test_consecutive_augmentations_are_one_resampling_of_their_composed_maps():
    # Translation then rotation (Keras' order): an output pixel p of the rotation reads the
    # translation's output at R(p), which reads the image at R(p) - shift. Sampled once,
    # bilinearly, with the constant fill 0.5 beyond the border (SciPy's grid-constant).
    import scipy.ndimage

    fill = dict(fill_mode="constant", fill_value=0.5)
    spec = ModelSpec(input_rescale=1.0, layers=[
        RandomTranslation(height_factor=0.2, width_factor=0.1, **fill), RandomRotation(factor=0.1, **fill),
        Flatten(), Dense(units=120, activation="softmax", use_bias=False)])
    images = np.random.default_rng(7).uniform(0, 1, size=(4, 12, 10)).astype(np.float32)
    key = jax.random.PRNGKey(3)
    got = model.logits(spec, {"dense/kernel": jnp.eye(120)}, model.hyperparameters(spec), jnp.asarray(images), key)
    # The run draws from the step's key folded with its last layer's index, one key per layer.
    k_translation, k_rotation = jax.random.split(jax.random.fold_in(key, 1), 2)
    t1, t2 = jax.random.split(k_translation)
    u, v = (np.asarray(jax.random.uniform(k, (4,), jnp.float32, -1.0, 1.0)) for k in (t1, t2))
    r1, _ = jax.random.split(k_rotation)
    angle = np.asarray(jax.random.uniform(r1, (4,), jnp.float32, -1.0, 1.0)) * 0.1 * 2 * np.pi
    rows, cols = np.meshgrid(np.arange(12.0), np.arange(10.0), indexing="ij")
    dy, dx = rows - 5.5, cols - 4.5
    for i in range(4):
        read_rows = np.cos(angle[i]) * dy - np.sin(angle[i]) * dx + 5.5 - u[i] * 0.2 * 12
        read_cols = np.sin(angle[i]) * dy + np.cos(angle[i]) * dx + 4.5 - v[i] * 0.1 * 10
        expected = scipy.ndimage.map_coordinates(images[i].astype(np.float64), [read_rows, read_cols], order=1,
                                                 mode="grid-constant", cval=0.5)
        np.testing.assert_allclose(np.asarray(got[i]).reshape(12, 10), expected, atol=1e-5)


@pytest.mark.parametrize("preset, total", [
    ("seed", 795_010),       # the tutorial's 784-1000-10: 784*1000 + 1000 + 1000*10 + 10
    ("keras-mlp", 669_706),  # Keras' mnist_mlp example, as its model.summary() prints
    ("cnn", 34_826),         # Keras' mnist_convnet example, as its model.summary() prints
])
def test_the_summary_counts_keras_publishes_for_its_examples(preset, total):
    summary = model.summary(spec_lib.preset(preset).model, (28, 28))
    assert summary.total == summary.trainable == total and summary.non_trainable == 0


def test_the_summary_of_batch_normalization_keeps_its_statistics_out_of_the_trainable():
    spec = spec_lib.ModelSpec(layers=[
        {"type": "conv2d", "filters": 8, "kernel_size": 3}, {"type": "batch_normalization"},
        {"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}])
    summary = model.summary(spec, (28, 28))
    assert [(r.name, r.kind, r.output_shape, r.params, r.trainable) for r in summary.rows] == [
        ("conv2d", "Conv2D", (None, 26, 26, 8), 3 * 3 * 8 + 8, 3 * 3 * 8 + 8),
        ("batch_normalization", "BatchNormalization", (None, 26, 26, 8), 4 * 8, 2 * 8),  # gamma, beta trained
        ("flatten", "Flatten", (None, 26 * 26 * 8), 0, 0),
        ("dense", "Dense", (None, 10), 26 * 26 * 8 * 10 + 10, 26 * 26 * 8 * 10 + 10)]
    assert summary.non_trainable == 2 * 8
    shown = repr(summary)
    assert "batch_normalization (BatchNormalization)" in shown and "(None, 26, 26, 8)" in shown
    total = 80 + 32 + 54_090
    assert shown.endswith(f" Total params: {total:,} ({total * 4 / 1024:.2f} KB)\n"
                          f" Trainable params: {total - 16:,} ({(total - 16) * 4 / 1024:.2f} KB)\n"
                          " Non-trainable params: 16 (64.00 B)")


@pytest.mark.parametrize("size, text", [(0, "0.00 B"), (1023, "1023.00 B"), (1024, "1.00 KB"),
                                        (795_010 * 4, "3.03 MB"), (3 * 1024 ** 3, "3.00 GB")])
def test_sizes_read_as_keras_writes_them(size, text):
    assert model.readable_size(size) == text
