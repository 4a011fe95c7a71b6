"""The dense layers' parts against statistics and hand sums: Keras' initializers, inverted
dropout, the MaxNorm constraint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnistlab import layers, model
from mnistlab.layers import Dense, Dropout, Initializer, MaxNorm
from mnistlab.spec import ModelSpec


def draw(name, shape=(784, 1000), **kwargs):
    return Initializer(name=name, **kwargs).draw(np.random.default_rng(3), shape)


@pytest.mark.parametrize("name, fan", [("glorot_normal", (784 + 1000) / 2), ("he_normal", 784 / 2),
                                       ("lecun_normal", 784)])
def test_truncated_normal_initializers_have_keras_stddev_and_cut_at_two_sigma(name, fan):
    w = draw(name)
    target = np.sqrt(1.0 / fan)
    # 784k draws: the sample stddev is within 0.3% of the target.
    assert w.std() == pytest.approx(target, rel=3e-3)
    assert abs(w.mean()) < 3e-3 * target * 10
    # The pre-truncation stddev is target / 0.8796...; the cut is at two of those.
    cut = 2 * target / 0.87962566103423978
    assert np.abs(w).max() <= cut * (1 + 1e-6)
    assert np.abs(w).max() > 0.99 * cut  # the tails reach the cut, so it is a truncation, not a clip


@pytest.mark.parametrize("name, limit", [("glorot_uniform", np.sqrt(6 / 1784)), ("he_uniform", np.sqrt(6 / 784)),
                                         ("lecun_uniform", np.sqrt(3 / 784))])
def test_uniform_initializers_have_keras_limits(name, limit):
    w = draw(name)
    assert np.abs(w).max() <= limit
    assert np.abs(w).max() > 0.999 * limit
    assert w.std() == pytest.approx(limit / np.sqrt(3), rel=3e-3)  # uniform(-a, a) has stddev a/sqrt(3)


def test_simple_initializers():
    assert (draw("zeros", (3, 4)) == 0).all() and (draw("ones", (3, 4)) == 1).all()
    assert (draw("constant", (3,), value=0.5) == 0.5).all()
    w = draw("random_normal")
    assert w.std() == pytest.approx(0.05, rel=3e-3) and abs(w.mean()) < 1e-3
    u = draw("random_uniform")
    assert u.min() >= -0.05 and u.max() <= 0.05 and u.std() == pytest.approx(0.1 / np.sqrt(12), rel=3e-3)
    t = draw("truncated_normal", stddev=0.1, mean=1.0)
    assert abs(t - 1.0).max() <= 0.2 + 1e-6  # Keras' plain truncated_normal: cut at 2 stddev, no correction


def tiny_spec(**dense_kwargs):
    return ModelSpec(layers=[Dense(units=3, activation="relu", **dense_kwargs), Dense(units=2, activation="softmax")])


def test_inverted_dropout_scales_survivors_and_vanishes_at_inference():
    spec = ModelSpec(layers=[Dropout(rate=0.25), Dense(units=2, activation="softmax", use_bias=False)],
                     input_rescale=1.0)
    params = {"dense/kernel": jnp.eye(20000, 2)}
    x = jnp.ones((1, 20000))
    hyper = model.hyperparameters(spec)
    # Identity kernel on the first two inputs: read the dropped-out inputs through a wide layer instead.
    keep = layers.dropout(x, 0.25, jax.random.PRNGKey(0))
    values = np.unique(np.asarray(keep))
    np.testing.assert_allclose(values, [0.0, 1 / 0.75], rtol=1e-6)
    assert float((keep == 0).mean()) == pytest.approx(0.25, abs=0.01)
    assert float(keep.mean()) == pytest.approx(1.0, abs=0.02)  # expectation preserved
    np.testing.assert_array_equal(model.logits(spec, params, hyper, x), x @ params["dense/kernel"])


def test_max_norm_caps_each_units_incoming_norm():
    spec = tiny_spec(kernel_constraint=MaxNorm(max_value=1.0))
    w = jnp.array([[3.0, 0.1, 0.0], [4.0, 0.2, 2.0]])  # column norms 5, ~0.224, 2
    out = model.constrain(spec, {"dense/kernel": w}, model.hyperparameters(spec))["dense/kernel"]
    norms = np.linalg.norm(np.asarray(out), axis=0)
    np.testing.assert_allclose(norms, [1.0, np.sqrt(0.05), 1.0], rtol=1e-5)
    np.testing.assert_allclose(out[:, 0], [0.6, 0.8], rtol=1e-5)


def test_a_dropout_layer_drops_in_training_only():
    x, key = jnp.ones((4, 50)), jax.random.PRNGKey(3)
    layer = Dropout(rate=0.5)
    trained, moved = layer.apply(x, {}, {"rate": 0.5}, key=key, weight=jnp.ones(4))
    np.testing.assert_array_equal(trained, layers.dropout(x, 0.5, key))
    assert moved == {}
    assert float((trained == 0).mean()) > 0.3  # some units dropped
    np.testing.assert_array_equal(layer.apply(x, {}, {"rate": 0.5})[0], x)  # inference: untouched


def test_the_output_layers_activation_is_left_to_the_loss():
    x = jnp.array([[1.0, -2.0, 0.5]])
    softmax = layers.Activation(activation="softmax")
    np.testing.assert_array_equal(softmax.apply(x, {}, {}, output=True)[0], x)
    np.testing.assert_allclose(softmax.apply(x, {}, {})[0], np.exp(x) / np.exp(x).sum(), rtol=1e-6)


@pytest.mark.parametrize("cls, size", [(Dense, {"units": 4}), (layers.Conv2D, {"filters": 4, "kernel_size": 3})])
def test_the_structure_tells_apart_where_the_penalties_are(cls, size):
    # A term whose strength is 0 is left out of the compiled step: which terms exist is program.
    plain = cls(**size).structure()
    on_kernel = cls(**size, kernel_regularizer={"l2": 0.01}).structure()
    on_bias = cls(**size, bias_regularizer={"l2": 0.01}).structure()
    l1_on_kernel = cls(**size, kernel_regularizer={"l1": 0.01}).structure()
    assert len({plain, on_kernel, on_bias, l1_on_kernel}) == 4
    assert cls(**size, kernel_regularizer={"l2": 0.5}).structure() == on_kernel  # the strength is a number


def test_a_convolution_keeps_its_patch_matrix_for_backward():
    conv = layers.Conv2D(filters=4, kernel_size=(3, 2))
    # an 8x7 output, each pixel a patch of 3 x 2 x 5 input numbers
    assert conv.kept_for_backward((10, 8, 5), (8, 7, 4)) == 8 * 7 * 3 * 2 * 5
    assert Dense(units=4).kept_for_backward((10,), (4,)) == 0


def test_the_penalised_weights_are_those_with_a_regularizer_and_a_bias_only_when_there_is_one():
    reg = layers.Regularizer(l2=0.01)
    assert Dense(units=4, kernel_regularizer=reg, bias_regularizer=reg).regularizers() == {"kernel": reg, "bias": reg}
    # Keras: no bias, no penalty on it.
    assert Dense(units=4, kernel_regularizer=reg, bias_regularizer=reg, use_bias=False).regularizers() == {
        "kernel": reg}
    assert Dense(units=4).regularizers() == {}
    assert layers.Conv2D(filters=2, kernel_size=3, bias_regularizer=reg).regularizers() == {"bias": reg}


def test_a_misspelt_name_is_named_with_the_closest_known_one():
    with pytest.raises(ValueError, match=r"^unknown activation 'rleu': did you mean 'relu'\?$"):
        layers.check_name("rleu", layers.ACTIVATIONS, "activation")


def test_truncated_normal_draws_of_a_small_tensor_stay_within_two_sigma():
    # A small tensor rarely has a draw beyond 3 sigma, so a cut placed anywhere but 2 shows here.
    unit = Initializer(name="truncated_normal", stddev=1.0)
    worst = max(np.abs(unit.draw(np.random.default_rng(seed), (20,))).max() for seed in range(300))
    assert 1.9 < worst <= 2.0


@pytest.mark.parametrize("name, draws", [
    ("random_normal", lambda rng, shape: 0.5 + 0.2 * rng.standard_normal(shape)),
    ("truncated_normal", lambda rng, shape: 0.5 + 0.2 * layers._truncated_normal(rng, shape)),
])
def test_normal_initializers_draw_mean_plus_stddev_times_the_stream(name, draws):
    w = Initializer(name=name, mean=0.5, stddev=0.2).draw(np.random.default_rng(7), (30, 4))
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, draws(np.random.default_rng(7), (30, 4)).astype(np.float32))


def test_weights_regularizer_numbers_and_structure_by_hand():
    dense = Dense(units=4, kernel_regularizer={"l1": 1e-3, "l2": 1e-2}, bias_regularizer="l2")
    assert dense.numbers() == {"kernel_l1": 1e-3, "kernel_l2": 1e-2, "bias_l1": 0.0, "bias_l2": 0.01}
    assert layers.terms(layers.Regularizer(l2=0.01)) == (False, True)  # an l1 of 0 is no term
    assert layers.terms(layers.Regularizer(l1=0.01)) == (True, False) and layers.terms(None) == (False, False)
    assert Dense(units=4, use_bias=False).weight_shapes((784,)) == {"kernel": (784, 4)}
    constrained = Dense(units=4, kernel_constraint={"max_value": 2.0})
    assert constrained.structure()[-1] is True and Dense(units=4).structure()[-1] is False
    assert constrained.numbers() == {"max_norm": 2.0}


def test_matmul_in_bfloat16_sums_in_float32_rounds_once_and_leaves_float32_alone():
    rng = np.random.default_rng(0)
    x, w = (jnp.asarray(rng.normal(size=shape), jnp.bfloat16) for shape in ((8, 300), (300, 5)))
    got = layers.matmul(x, w)
    # The exact sum of the bfloat16 products, rounded once to bfloat16: within half a unit
    # in the last place (float32's summation error is 2^-16 of that unit here).
    exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    assert got.dtype == jnp.bfloat16
    ulp = 2.0 ** (np.floor(np.log2(np.abs(exact))) - 7)
    assert np.all(np.abs(np.asarray(got, np.float64) - exact) <= 0.5 * ulp * (1 + 1e-3))
    # Asked for as one float32 product then one rounding (the bfloat16 units' form), and in
    # float32 the plain product, nothing cast.
    (product, *rest) = jax.make_jaxpr(layers.matmul)(x, w).eqns
    assert product.params["preferred_element_type"] == jnp.float32 and product.outvars[0].aval.dtype == jnp.float32
    assert [e.primitive.name for e in rest] == ["convert_element_type"]
    plain = jax.make_jaxpr(layers.matmul)(x.astype(jnp.float32), w.astype(jnp.float32)).eqns
    assert [e.primitive.name for e in plain] == ["dot_general"] and plain[0].outvars[0].aval.dtype == jnp.float32
    # One side float32, the other bfloat16: float32, as x @ w promotes.
    assert layers.matmul(x.astype(jnp.float32), w).dtype == layers.matmul(x, w.astype(jnp.float32)).dtype == jnp.float32
