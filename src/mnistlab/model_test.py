"""model.py against hand sums and finite differences: penalties, gradients, the output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnistlab import model
from mnistlab import spec as spec_lib
from mnistlab.spec import (Activation, AveragePooling2D, BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxNorm,
                           MaxPooling2D, ModelSpec, RandomRotation, RandomTranslation, Regularizer)

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


def test_penalty_gradient_is_keras_formula_term_by_term():
    # Keras: d/dw (l1*sum|w| + l2*sum(w^2)) = l1*sign(w) + 2*l2*w, sign(0) = 0; a term that is
    # absent adds nothing (an l2-only kernel has no l1 part, an l1-only bias no l2 part).
    spec = ModelSpec(layers=[
        Dense(units=3, activation="relu", kernel_regularizer=Regularizer(l2=0.01),
              bias_regularizer=Regularizer(l1=0.2)),
        Dense(units=2, activation="softmax", kernel_regularizer=Regularizer(l1=0.1, l2=0.3))])
    w0 = np.array([[1.0, -2.0, 0.0], [0.5, 0.0, -1.0]], np.float32)
    b0 = np.array([0.0, -0.4, 2.0], np.float32)
    w1 = np.array([[0.0, 1.5], [-0.5, 0.0], [2.0, -3.0]], np.float32)
    params = {"dense/kernel": jnp.asarray(w0), "dense/bias": jnp.asarray(b0),
              "dense_1/kernel": jnp.asarray(w1), "dense_1/bias": jnp.zeros(2)}
    grads = model.penalty_grad(spec, params, model.hyperparameters(spec))
    assert sorted(grads) == ["dense/bias", "dense/kernel", "dense_1/kernel"]  # the bias of dense_1 is not penalized
    np.testing.assert_allclose(grads["dense/kernel"], 2 * 0.01 * w0, rtol=1e-6)
    np.testing.assert_allclose(grads["dense/bias"], [0.0, -0.2, 0.2], rtol=1e-6)
    np.testing.assert_allclose(grads["dense_1/kernel"], 0.1 * np.sign(w1) + 2 * 0.3 * w1, rtol=1e-6)


def test_max_norm_scales_each_unit_s_incoming_weights_back_to_the_member_s_max():
    # Keras' MaxNorm: w * clip(norm, 0, c) / (1e-7 + norm), a norm per unit (kernel column).
    # c comes from `hyper` (a member may vary it), not from the specification's value.
    spec = ModelSpec(layers=[Dense(units=3, activation="relu", kernel_constraint=MaxNorm(max_value=2.0)),
                             Dense(units=2, activation="softmax")])
    kernel = np.array([[3.0, 0.6, 0.0], [4.0, 0.8, 0.0]], np.float32)  # column norms 5, 1, 0
    params = {"dense/kernel": jnp.asarray(kernel), "dense/bias": jnp.array([9.0, -9.0, 9.0]),
              "dense_1/kernel": jnp.full((3, 2), 7.0), "dense_1/bias": jnp.ones(2)}
    out = model.constrain(spec, params, {"dense.max_norm": 1.5})
    assert list(out) == list(params)
    np.testing.assert_allclose(out["dense/kernel"], kernel * np.array([1.5 / (1e-7 + 5.0), 1.0 / (1e-7 + 1.0), 0.0]),
                               rtol=1e-6)
    for name in ("dense/bias", "dense_1/kernel", "dense_1/bias"):  # no constraint: untouched
        np.testing.assert_array_equal(out[name], params[name])


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


@pytest.mark.parametrize("layers, final", [
    ([Dense(units=3, activation="relu"), Dense(units=2, activation="softmax")], 1),
    ([Dense(units=3, activation="sigmoid")], 0),
    ([Dense(units=2), Activation(activation="softmax")], 1),
    ([Dense(units=2), Dropout(rate=0.5), Activation(activation="sigmoid")], 2),
    ([Dense(units=3, activation="relu"), Dense(units=2, activation="softmax"), Dropout(rate=0.5)], 1),
], ids=["dense-softmax", "dense-sigmoid", "activation", "activation-after-dropout", "dropout-after-softmax"])
def test_the_output_activation_is_the_last_dense_or_activation_that_has_one(layers, final):
    spec = ModelSpec(layers=layers)
    assert model.final_activation_index(spec) == final
    # ... and it is what the logits leave out: the network up to it, its activation not applied.
    params = {k: jnp.asarray(v) for k, v in model.init(spec, 0, 4).items()}
    x = jnp.arange(8, dtype=jnp.uint8).reshape(2, 4)
    h = (x / 255.0) @ params["dense/kernel"] + params["dense/bias"]
    if "dense_1/kernel" in params:  # relu, then dense_1 without its softmax
        h = jax.nn.relu(h) @ params["dense_1/kernel"] + params["dense_1/bias"]
    np.testing.assert_allclose(model.logits(spec, params, {}, x), h, rtol=1e-5)


def test_a_specification_without_a_final_softmax_or_sigmoid_is_refused():
    # Built without validation (as one that grew a new activation before model did): a
    # linear output is not silently taken for the logits of a softmax.
    for layers in ([Dense(units=3, activation="relu"), Dense(units=2)],
                   [Dense(units=2, activation="softmax"), Dense(units=2)]):
        with pytest.raises(AssertionError, match="^spec validation guarantees a final softmax/sigmoid$"):
            model.final_activation_index(ModelSpec.model_construct(layers=layers))


def test_keras_layer_names():
    spec = ModelSpec(layers=[Dense(units=3), Dropout(rate=0.1), Dense(units=3), Dropout(rate=0.1),
                             Dense(units=2, activation="softmax")])
    assert model.layer_names(spec) == ["dense", "dropout", "dense_1", "dropout_1", "dense_2"]


def test_parameters_are_drawn_from_a_stream_per_tensor_seeded_by_seed_layer_and_tensor():
    # Glorot uniform (Keras' Dense default): U(-sqrt(6 / (fan_in + fan_out)), +sqrt(...)),
    # from NumPy's generator seeded [seed, layer index, tensor index]: the second layer's
    # draws are the same whatever the first layer's input size.
    spec = ModelSpec(layers=[Dense(units=3, activation="relu", bias_initializer="random_uniform"),
                             Dense(units=2, activation="softmax")])
    params = model.init(spec, 7, 4)
    limit = lambda fan_in, fan_out: np.sqrt(6 / (fan_in + fan_out))  # noqa: E731
    drawn = lambda i, tensor: np.random.default_rng([7, i, tensor])  # noqa: E731
    expected = {"dense/kernel": drawn(0, 0).uniform(-limit(4, 3), limit(4, 3), (4, 3)),
                "dense/bias": drawn(0, 1).uniform(-0.05, 0.05, 3),  # Keras' random_uniform
                "dense_1/kernel": drawn(1, 0).uniform(-limit(3, 2), limit(3, 2), (3, 2)),
                "dense_1/bias": np.zeros(2)}
    assert list(params) == list(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(params[name], value.astype(np.float32))
    wider_input = model.init(spec, 7, 9)
    np.testing.assert_array_equal(wider_input["dense_1/kernel"], params["dense_1/kernel"])


def test_parameter_shapes_are_keras_weights_in_keras_order():
    spec = ModelSpec(layers=[Conv2D(filters=4, kernel_size=3), BatchNormalization(), Flatten(),
                             Dense(units=10, activation="softmax")])
    assert list(model.parameter_shapes(spec, (8, 8, 3)).items()) == [
        ("conv2d/kernel", (3, 3, 3, 4)), ("conv2d/bias", (4,)),
        ("batch_normalization/gamma", (4,)), ("batch_normalization/beta", (4,)),
        ("batch_normalization/moving_mean", (4,)), ("batch_normalization/moving_variance", (4,)),
        ("dense/kernel", (6 * 6 * 4, 10)), ("dense/bias", (10,))]
    assert model.parameter_shapes(tiny_spec(), 5) == {"dense/kernel": (5, 3), "dense/bias": (3,),
                                                      "dense_1/kernel": (3, 2), "dense_1/bias": (2,)}


def test_only_the_moving_statistics_are_kept_from_the_optimizer():
    spec = ModelSpec(layers=[BatchNormalization(), Dense(units=2, activation="softmax")])
    params = model.init(spec, 0, 4)
    trainable, statistics = model.split_statistics(params)
    assert list(trainable) == ["batch_normalization/gamma", "batch_normalization/beta", "dense/kernel", "dense/bias"]
    assert list(statistics) == ["batch_normalization/moving_mean", "batch_normalization/moving_variance"]
    assert all(trainable[k] is params[k] for k in trainable) and all(statistics[k] is params[k] for k in statistics)
    assert model.is_statistic("batch_normalization_1/moving_variance") and not model.is_statistic("dense/kernel")


def test_specifications_differing_only_in_member_numbers_share_a_structure():
    def spec(units=3, l1=0.0, l2=0.01, rate=0.2):
        return ModelSpec(layers=[Dense(units=units, activation="relu", kernel_regularizer=Regularizer(l1=l1, l2=l2)),
                                 Dropout(rate=rate), Dense(units=2, activation="softmax")])

    base = model.structure(spec())
    assert model.structure(spec(l2=0.05, rate=0.5)) == base and hash(model.structure(spec(rate=0.4))) == hash(base)
    assert model.structure(spec(units=4)) != base  # another shape
    assert model.structure(spec(l1=0.1)) != base  # an l1 term: another program


def test_inputs_are_rescaled_float32_shaped_as_the_first_layer_takes_them():
    flat = ModelSpec(input_rescale=0.5, layers=[Dense(units=2, activation="softmax")])
    image = ModelSpec(input_rescale=0.5, layers=[Flatten(), Dense(units=2, activation="softmax")])
    grey = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    colour = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    for spec, images, expected in [(flat, grey, grey.reshape(2, 12) * 0.5),  # dense lessons: flattened
                                   (image, grey, grey[..., None] * 0.5),  # an image: one channel
                                   (image, colour, colour * 0.5)]:  # a colour image keeps its three
        got = model.inputs(spec, jnp.asarray(images))
        assert got.dtype == jnp.float32
        np.testing.assert_array_equal(got, expected)


def test_a_float64_process_still_runs_the_network_in_float32():
    # The pixels go in as float32 and batch normalization's sample weights are float32, so
    # float32 weights give float32 logits and statistics even with float64 turned on.
    jax.config.update("jax_enable_x64", True)
    try:
        spec = ModelSpec(layers=[BatchNormalization(), Dense(units=2, activation="softmax")])
        params = {k: jnp.asarray(v) for k, v in model.init(spec, 0, 4).items()}
        images = jnp.arange(12, dtype=jnp.uint8).reshape(3, 4)
        assert model.inputs(spec, images).dtype == jnp.float32
        for mask in (None, jnp.array([True, True, False])):
            z, moved = model.forward(spec, params, model.hyperparameters(spec), images, jax.random.PRNGKey(0), mask)
            assert z.dtype == jnp.float32 and {v.dtype for v in moved.values()} == {jnp.dtype(jnp.float32)}
    finally:
        jax.config.update("jax_enable_x64", False)


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


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_a_relu_convolution_pooled_before_its_activation_is_the_layers_one_by_one(policy):
    # `forward` runs Conv2D(relu) + MaxPooling2D as convolution, pooling, bias, ReLU; each
    # layer in turn (`apply_layer`, as `walk` does) is Keras' order. Same outputs to the
    # bit, same gradients; and only for ReLU before side-by-side max windows.
    spec = ModelSpec(dtype_policy=policy, layers=[
        Conv2D(filters=4, kernel_size=3, activation="relu"), MaxPooling2D(pool_size=2),
        Conv2D(filters=3, kernel_size=2, activation="relu"), MaxPooling2D(pool_size=3, strides=2),
        Flatten(), Dense(units=2, activation="softmax")])
    assert [model.pools_before_activation(a, b) for a, b in zip(spec.layers, spec.layers[1:])] == [
        True, False, False, False, False]
    assert not model.pools_before_activation(Conv2D(filters=1, kernel_size=1, activation="tanh"), spec.layers[1])
    assert not model.pools_before_activation(spec.layers[0], AveragePooling2D(pool_size=2))
    params = {k: jnp.asarray(v) for k, v in model.init(spec, 3, (12, 11)).items()}
    params["conv2d/bias"] = jnp.array([0.2, -0.3, 0.0, 0.1])
    images = jnp.asarray(np.random.default_rng(4).integers(0, 256, (3, 12, 11)), jnp.uint8)
    hyper = model.hyperparameters(spec)

    def one_by_one(p):
        x = model.inputs(spec, images)
        for name, layer in zip(model.layer_names(spec), spec.layers):
            x, _ = model.apply_layer(layer, name, p, hyper, x, output=layer is spec.layers[-1],
                                     dtype=model.compute_dtype(spec))
        return x.astype(jnp.float32)

    np.testing.assert_array_equal(model.logits(spec, params, hyper, images), one_by_one(params))
    loss = lambda f: lambda p: jnp.sum(jnp.sin(f(p)))
    got = jax.grad(loss(lambda p: model.logits(spec, p, hyper, images)))(params)
    expected = jax.grad(loss(one_by_one))(params)
    rtol = 1e-5 if policy == "float32" else 2 ** -6  # bfloat16 sums of other lengths: its 8 bits
    for name in params:
        np.testing.assert_allclose(got[name], expected[name], rtol=rtol, atol=1e-7, err_msg=name)


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


def test_batch_normalization_trains_on_the_masked_samples_and_infers_with_its_moving_statistics():
    # Keras: in training, normalise with the batch's mean and biased variance and move
    # moving = momentum * moving + (1 - momentum) * batch; at inference, the moving ones.
    # The mask leaves the padding of a last batch out of the batch statistics.
    spec = ModelSpec(input_rescale=1.0, layers=[BatchNormalization(momentum=0.9), Dense(units=2, activation="softmax")])
    params = {k: jnp.asarray(v) for k, v in model.init(spec, 0, 4).items()}
    params.update({"batch_normalization/gamma": jnp.array([1.0, 2.0, 0.5, -1.0]),
                   "batch_normalization/beta": jnp.array([0.0, 0.1, -0.2, 0.3]),
                   "batch_normalization/moving_mean": jnp.array([0.1, 0.2, 0.3, 0.4]),
                   "batch_normalization/moving_variance": jnp.array([1.0, 2.0, 3.0, 4.0])})
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)  # 3 samples, 4 features: apart
    hyper = model.hyperparameters(spec)

    def expected(mean, var):
        h = (x - mean) / np.sqrt(var + 1e-3) * p["batch_normalization/gamma"] + p["batch_normalization/beta"]
        return h @ p["dense/kernel"] + p["dense/bias"]

    for mask, kept in [(None, x), (jnp.array([True, True, False]), x[:2])]:
        z, moved = model.forward(spec, params, hyper, jnp.asarray(x), jax.random.PRNGKey(0), mask)
        mean, var = kept.mean(0, dtype=np.float64), kept.var(0, dtype=np.float64)
        np.testing.assert_allclose(z, expected(mean, var), rtol=1e-4, atol=1e-5)
        assert sorted(moved) == ["batch_normalization/moving_mean", "batch_normalization/moving_variance"]
        np.testing.assert_allclose(moved["batch_normalization/moving_mean"],
                                   0.9 * p["batch_normalization/moving_mean"] + 0.1 * mean, rtol=1e-5)
        np.testing.assert_allclose(moved["batch_normalization/moving_variance"],
                                   0.9 * p["batch_normalization/moving_variance"] + 0.1 * var, rtol=1e-5)
    z, moved = model.forward(spec, params, hyper, jnp.asarray(x))  # inference: nothing moves
    assert moved == {}
    np.testing.assert_allclose(z, expected(p["batch_normalization/moving_mean"],
                                           p["batch_normalization/moving_variance"]), rtol=1e-4, atol=1e-5)


def test_sigmoid_outputs_are_independent_probabilities():
    spec = ModelSpec(layers=[Dense(units=3, activation="sigmoid")])
    params = {k: jnp.asarray(v) for k, v in model.init(spec, 0, 4).items()}
    x = jnp.arange(8, dtype=jnp.uint8).reshape(2, 4)
    z = (x / 255.0) @ params["dense/kernel"] + params["dense/bias"]
    np.testing.assert_allclose(model.probabilities(spec, params, x), 1 / (1 + np.exp(-np.asarray(z))), rtol=1e-5)


@pytest.mark.parametrize("activation, temperature", [("softmax", 2.0), ("softmax", 0.5), ("sigmoid", 2.0)])
def test_probabilities_divide_the_logits_by_the_temperature(activation, temperature):
    spec = ModelSpec(layers=[Dense(units=3, activation=activation)])
    params = {k: jnp.asarray(v) for k, v in model.init(spec, 0, 4).items()}
    x = jnp.arange(8, dtype=jnp.uint8).reshape(2, 4)
    z = np.asarray((x / 255.0) @ params["dense/kernel"] + params["dense/bias"], np.float64) / temperature
    expected = np.exp(z) / np.exp(z).sum(1, keepdims=True) if activation == "softmax" else 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(model.probabilities(spec, params, x, temperature), expected, rtol=1e-5)


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


def test_one_augmentation_alone_reads_reflected_pixels_in_every_channel():
    # A run of one layer: its key is the step's key folded with its index (0), split in one.
    # Keras' default fill, "reflect", is SciPy's (half-sample symmetric); colour channels
    # are resampled alike and stay last.
    import scipy.ndimage

    spec = ModelSpec(input_rescale=1.0, layers=[RandomTranslation(height_factor=0.3, width_factor=0.2), Flatten(),
                                                Dense(units=6 * 5 * 3, activation="softmax", use_bias=False)])
    images = np.random.default_rng(8).uniform(0, 1, size=(2, 6, 5, 3)).astype(np.float32)
    key = jax.random.PRNGKey(5)
    got = model.logits(spec, {"dense/kernel": jnp.eye(90)}, model.hyperparameters(spec), jnp.asarray(images), key)
    (k_translation,) = jax.random.split(jax.random.fold_in(key, 0), 1)
    t1, t2 = jax.random.split(k_translation)
    u, v = (np.asarray(jax.random.uniform(k, (2,), jnp.float32, -1.0, 1.0)) for k in (t1, t2))
    rows, cols = np.meshgrid(np.arange(6.0), np.arange(5.0), indexing="ij")
    for i in range(2):
        where = [rows - u[i] * 0.3 * 6, cols - v[i] * 0.2 * 5]  # shifts up to 1.8 rows: the border is read
        expected = np.stack([scipy.ndimage.map_coordinates(images[i, ..., c].astype(np.float64), where, order=1,
                                                           mode="reflect") for c in range(3)], -1)
        np.testing.assert_allclose(np.asarray(got[i]).reshape(6, 5, 3), expected, atol=1e-5)


def test_augmentation_runs_apart_resample_apart_and_zero_factors_change_nothing():
    # Two runs split by a layer that is not an augmentation (dropout at rate 0: the identity),
    # each drawing from the step's key folded with its own last index. The first run has
    # zero factors: the image as it was. The second rotates, then translates (the reverse of
    # the order above): an output pixel p reads the rotation's output at p - shift, which
    # reads the image at R(p - shift - c) + c.
    import scipy.ndimage

    fill = dict(fill_mode="constant", fill_value=0.5)
    spec = ModelSpec(input_rescale=1.0, layers=[
        RandomTranslation(height_factor=0.0, width_factor=0.0), RandomRotation(factor=0.0), Dropout(rate=0.0),
        RandomRotation(factor=0.1, **fill), RandomTranslation(height_factor=0.2, width_factor=0.1, **fill),
        Flatten(), Dense(units=7 * 6, activation="softmax", use_bias=False)])
    images = np.random.default_rng(9).uniform(0, 1, size=(3, 7, 6)).astype(np.float32)
    key = jax.random.PRNGKey(6)
    got = model.logits(spec, {"dense/kernel": jnp.eye(42)}, model.hyperparameters(spec), jnp.asarray(images), key)
    k_rotation, k_translation = jax.random.split(jax.random.fold_in(key, 4), 2)
    r1, _ = jax.random.split(k_rotation)
    angle = np.asarray(jax.random.uniform(r1, (3,), jnp.float32, -1.0, 1.0)) * 0.1 * 2 * np.pi
    t1, t2 = jax.random.split(k_translation)
    u, v = (np.asarray(jax.random.uniform(k, (3,), jnp.float32, -1.0, 1.0)) for k in (t1, t2))
    rows, cols = np.meshgrid(np.arange(7.0), np.arange(6.0), indexing="ij")
    for i in range(3):
        dy, dx = rows - u[i] * 0.2 * 7 - 3.0, cols - v[i] * 0.1 * 6 - 2.5
        cos, sin = np.cos(angle[i]), np.sin(angle[i])
        where = [cos * dy - sin * dx + 3.0, sin * dy + cos * dx + 2.5]
        expected = scipy.ndimage.map_coordinates(images[i].astype(np.float64), where, order=1, mode="grid-constant",
                                                 cval=0.5)
        np.testing.assert_allclose(np.asarray(got[i]).reshape(7, 6), expected, atol=1e-5)


@pytest.mark.parametrize("preset, total", [
    ("seed", 795_010),       # the tutorial's 784-1000-10: 784*1000 + 1000 + 1000*10 + 10
    ("keras-mlp", 669_706),  # Keras' mnist_mlp example, as its model.summary() prints
    ("cnn", 34_826),         # Keras' mnist_convnet example, as its model.summary() prints
])
def test_the_summary_counts_keras_publishes_for_its_examples(preset, total):
    summary = model.summary(spec_lib.preset(preset).model, (28, 28))
    assert summary.total == summary.trainable == total and summary.non_trainable == 0


@pytest.mark.parametrize("preset, macs", [
    ("seed", 784 * 1000 + 1000 * 10),
    # conv 3x3x1x32 at 26x26 positions, conv 3x3x32x64 at 11x11 (after pooling to 13x13),
    # dense 5*5*64 -> 10; augmentation, pooling and dropout multiply nothing
    ("cnn", 3 * 3 * 1 * 32 * 26 * 26 + 3 * 3 * 32 * 64 * 11 * 11 + 5 * 5 * 64 * 10),
])
def test_multiply_adds_count_kernels_times_their_output_positions(preset, macs):
    assert model.multiply_adds(spec_lib.preset(preset).model) == macs


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


def test_the_summary_prints_keras_table_and_totals_whatever_the_terminal(monkeypatch, capsys):
    # Columns as wide as their widest cell plus a space each side; the counts right-aligned
    # with thousands separators; a left-justified title padded to the table's width (46).
    # 4 inputs: 4*300 + 300 = 1,500; 300*2 + 2 = 602; 2,102 weights of 4 bytes = 8.21 KB.
    monkeypatch.setenv("COLUMNS", "30")  # a narrow terminal: the table is drawn 100 wide all the same
    spec = ModelSpec(layers=[Dense(units=300, activation="relu"), Dropout(rate=0.5),
                             Dense(units=2, activation="softmax")])
    shown = repr(model.summary(spec, (2, 2)))
    assert shown == "\n".join([
        'Model: "sequential"'.ljust(46),
        "┏━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━┳━━━━━━━━━┓",
        "┃ Layer (type)      ┃ Output Shape ┃ Param # ┃",
        "┡━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━╇━━━━━━━━━┩",
        "│ dense (Dense)     │ (None, 300)  │   1,500 │",
        "│ dropout (Dropout) │ (None, 300)  │       0 │",
        "│ dense_1 (Dense)   │ (None, 2)    │     602 │",
        "└───────────────────┴──────────────┴─────────┘",
        " Total params: 2,102 (8.21 KB)",
        " Trainable params: 2,102 (8.21 KB)",
        " Non-trainable params: 0 (0.00 B)"])
    assert capsys.readouterr().out == ""  # drawn into the string, not onto the screen


def test_a_summary_wider_than_100_columns_is_fitted_into_100():
    row = model.SummaryRow("d" * 120, "Dense", (None, 2), 6, 6)
    table = repr(model.Summary((row,))).split("\n")[:-3]  # the totals are not part of the table
    assert max(len(line) for line in table[1:]) == 100 and len(table) > 6  # the long name wrapped


@pytest.mark.parametrize("size, text", [(0, "0.00 B"), (1023, "1023.00 B"), (1024, "1.00 KB"),
                                        (795_010 * 4, "3.03 MB"), (3 * 1024 ** 3, "3.00 GB"),
                                        (5 * 1024 ** 4, "5.00 TB"), (2 * 1024 ** 5, "2.00 PB")])
def test_sizes_read_as_keras_writes_them(size, text):
    assert model.readable_size(size) == text


# ------------------------------------------------------------------ Keras' mixed_bfloat16

BF16_UNIT = 2.0 ** -8  # bfloat16's unit roundoff: 8 significant bits, round to nearest


def _mixed_net(policy: str) -> ModelSpec:
    return ModelSpec(dtype_policy=policy, layers=[
        Dense(units=64, activation="relu", bias_initializer={"name": "random_uniform", "minval": -0.5, "maxval": 0.5}),
        Dropout(rate=0.3),
        Dense(units=10, activation="softmax",
              bias_initializer={"name": "random_uniform", "minval": -0.5, "maxval": 0.5})])


def _reference_and_bound(params, images):
    """The two-layer net's logits in float64, and how far bfloat16 may move them.

    The bound is a first-order one, layer by layer: rounding an input and a weight to
    bfloat16 moves each product by at most 2u of its size, rounding the bias and the
    result by u of theirs, and an error already in the input passes through |W| (ReLU is
    1-Lipschitz). It holds whether or not XLA keeps excess precision between operations.
    """
    u = BF16_UNIT
    x = np.float32(images.reshape(len(images), -1)) * np.float32(1 / 255)
    x = x.astype(np.float64)
    w1, b1, w2, b2 = (np.asarray(params[k], np.float64) for k in
                      ("dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias"))
    pre = x @ w1 + b1
    h = np.maximum(pre, 0)
    z = h @ w2 + b2
    err_h = 2 * u * (np.abs(x) @ np.abs(w1)) + u * np.abs(x @ w1) + u * np.abs(b1) + u * np.abs(pre)
    err_z = err_h @ np.abs(w2) + 2 * u * (h @ np.abs(w2)) + u * np.abs(h @ w2) + u * np.abs(b2) + u * np.abs(z)
    return z, 1.01 * err_z  # 1% for the second-order terms (u^2 ~ 1.5e-5 of each)


def test_mixed_bfloat16_computes_in_bfloat16_within_its_rounding_and_float32_does_not():
    images = np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    params = {k: jnp.asarray(v) for k, v in model.init(_mixed_net("float32"), 3, 784).items()}
    reference, bound = _reference_and_bound(params, images)
    single, mixed = (model.logits(_mixed_net(policy), params, {}, jnp.asarray(images))
                     for policy in ("float32", "mixed_bfloat16"))
    assert single.dtype == mixed.dtype == jnp.float32  # the loss is float32 under both policies
    single, mixed = np.asarray(single, np.float64), np.asarray(mixed, np.float64)
    np.testing.assert_allclose(single, reference, rtol=1e-5, atol=1e-5)
    assert np.all(np.abs(mixed - reference) <= bound)
    # And it is bfloat16's arithmetic, not float32's: its error is a thousand times float32's.
    assert np.abs(mixed - reference).max() > 1000 * np.abs(single - reference).max()


def test_mixed_bfloat16_keeps_float32_weights_and_gives_them_float32_gradients():
    images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (32, 28, 28), dtype=np.uint8))
    labels = jnp.arange(32) % 10
    params = {k: jnp.asarray(v) for k, v in model.init(_mixed_net("float32"), 3, 784).items()}

    def loss(spec, p):
        z = model.logits(spec, p, model.hyperparameters(spec), images, jax.random.PRNGKey(0))
        return -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(32), labels])

    single = jax.grad(lambda p: loss(_mixed_net("float32"), p))(params)
    mixed = jax.grad(lambda p: loss(_mixed_net("mixed_bfloat16"), p))(params)
    for name, g in mixed.items():
        assert g.dtype == jnp.float32, name
        # What bfloat16 costs a gradient: the output layer's moves by about 2^-8 of its size
        # (measured 0.2-0.6%); the hidden layer's, a sum over the batch of terms that cancel,
        # by more (8%), but its direction stays within 5 degrees of float32's.
        a, b = np.ravel(g).astype(np.float64), np.ravel(single[name]).astype(np.float64)
        error, cosine = np.linalg.norm(a - b) / np.linalg.norm(b), a @ b / np.linalg.norm(a) / np.linalg.norm(b)
        assert 1e-4 < error < (4 * BF16_UNIT if name.startswith("dense_1/") else 0.1), (name, error)
        assert cosine > np.cos(np.radians(5)), (name, cosine)


def test_under_mixed_bfloat16_batch_normalization_computes_in_float32():
    # Keras 3 casts bfloat16 inputs of BatchNormalization to float32: the batch moments of
    # the bfloat16 activations are exact to float32, and so are the moving statistics.
    layer = BatchNormalization(momentum=0.5)
    x = jnp.asarray(np.random.default_rng(2).normal(3.0, 0.7, (256, 8)), jnp.bfloat16)
    # Weights no bfloat16 holds exactly (it keeps 8 significant bits of 0.3137...).
    start = {"gamma": 1.3717, "beta": -0.2913, "moving_mean": 0.3137, "moving_variance": 1.2345}
    params = {f"batch_normalization/{k}": jnp.full(8, v, jnp.float32) for k, v in start.items()}
    y, moved = model.apply_layer(layer, "batch_normalization", params, {"batch_normalization.momentum": 0.5}, x,
                                 key=jax.random.PRNGKey(0), weight=jnp.ones(256), dtype=jnp.bfloat16)
    exact = np.asarray(x, np.float64)
    mean, var = exact.mean(0), exact.var(0)
    assert y.dtype == jnp.bfloat16 and moved["batch_normalization/moving_mean"].dtype == jnp.float32
    np.testing.assert_allclose(moved["batch_normalization/moving_mean"], 0.5 * 0.3137 + 0.5 * mean, rtol=1e-6)
    np.testing.assert_allclose(moved["batch_normalization/moving_variance"], 0.5 * 1.2345 + 0.5 * var, rtol=1e-6)
    expected = 1.3717 * (exact - mean) / np.sqrt(var + 1e-3) - 0.2913
    np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=BF16_UNIT, atol=BF16_UNIT)


def test_the_dtype_policy_is_part_of_the_compiled_program():
    assert model.structure(_mixed_net("float32")) == model.structure(_mixed_net("mixed_bfloat16"))  # layers alike
    from mnistlab import engine
    run = spec_lib.preset("seed")
    mixed = spec_lib.with_values(run, {"model.dtype_policy": "mixed_bfloat16"})
    assert engine.structure(run) != engine.structure(mixed)
    assert engine.numbers(run) == engine.numbers(mixed)


@pytest.mark.parametrize("rescale, kernel", [
    (1 / 255, 1 + 2**-9),  # a weight bfloat16 rounds to 1
    ((1 + 2**-9) / 255, 1.0),  # an input bfloat16 rounds to 1
])
def test_mixed_bfloat16_rounds_each_layers_input_and_weights_before_it_computes(rescale, kernel):
    # One pixel of 255: the logit is x * w - 1 with x * w = 1 + 2^-9 in float32, and exactly
    # 1 - 1 = 0 once x and w are in bfloat16 (8 significant bits: 1 + 2^-9 rounds to 1). A
    # layer computed in float32 and only its output rounded would keep 2^-9 (a power of two,
    # which bfloat16 holds exactly). `walk` computes as `logits` does, and both give float32.
    images = jnp.full((1, 1, 1), 255, jnp.uint8)
    params = {"dense/kernel": jnp.array([[kernel, 0.0]], jnp.float32), "dense/bias": jnp.array([-1.0, 0.0], jnp.float32)}
    for policy, expected in (("float32", 2**-9), ("mixed_bfloat16", 0.0)):
        spec = ModelSpec(input_rescale=rescale, dtype_policy=policy, layers=[Dense(units=2, activation="softmax")])
        z = model.logits(spec, params, {}, images)
        (_, walked), = model.walk(spec, params, images)
        for got in (z, walked):
            assert got.dtype == jnp.float32
            assert float(got[0, 0]) == pytest.approx(expected, abs=1e-6), policy


def test_under_float32_a_float64_network_stays_float64():
    # The float32 policy casts nothing: weights given in float64 (the finite-difference
    # tests) give float64 logits.
    jax.config.update("jax_enable_x64", True)
    try:
        spec = tiny_spec()
        params = {k: jnp.asarray(v, jnp.float64) for k, v in model.init(spec, 0, 4).items()}
        assert model.logits(spec, params, {}, jnp.ones((2, 4), jnp.uint8)).dtype == jnp.float64
    finally:
        jax.config.update("jax_enable_x64", False)
