"""model.py against hand sums and finite differences: penalties, gradients, the output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnistlab import model
from mnistlab.spec import Dense, Dropout, ModelSpec, Regularizer

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
