"""From a `ModelSpec` to pure functions: initialise, apply, penalise, constrain.

Parameters are a flat dict keyed like Keras' weights, `"dense/kernel"`, `"dense_1/bias"`,
so they go to safetensors as they are. Numbers a population may vary per member (penalty
strengths, dropout rates, max-norm values) are read from a `hyper` dict of scalars rather
than baked into the program: one compiled step then serves every value.

The last softmax/sigmoid is not applied in `logits`: the loss works from logits, which is
stable where Keras' JAX backend clips probabilities to [1e-7, 1 - 1e-7]. `probabilities`
applies it for prediction.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mnistlab.spec import Activation, Dense, Dropout, Initializer, ModelSpec

Params = dict[str, jax.Array]
Hyper = Mapping[str, jax.Array | float]

# Keras' truncated normal cuts at two standard deviations; dividing by this constant
# (the stddev of a unit normal truncated to [-2, 2]) restores the intended stddev.
TRUNCATION_STDDEV = 0.87962566103423978

ACTIVATION_FNS = {
    "linear": lambda x: x,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "softmax": jax.nn.softmax,
    "tanh": jnp.tanh,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, negative_slope=0.2),  # Keras 3 default slope
    "elu": jax.nn.elu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # Keras 3 default: exact erf form
    "softplus": jax.nn.softplus,
}


def layer_names(spec: ModelSpec) -> list[str]:
    """Keras' automatic names: dense, dense_1, ..., dropout, dropout_1, ..."""
    counts: dict[str, int] = {}
    names = []
    for layer in spec.layers:
        n = counts.get(layer.type, 0)
        counts[layer.type] = n + 1
        names.append(layer.type if n == 0 else f"{layer.type}_{n}")
    return names


def _truncated_normal(rng: np.random.Generator, shape) -> np.ndarray:
    """Unit normal draws cut at +-2 by redrawing what falls outside (as Keras' backends do)."""
    x = rng.standard_normal(shape)
    outside = np.abs(x) > 2.0
    while outside.any():
        x[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(x) > 2.0
    return x


def initialize(init: Initializer, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Draw a tensor as Keras' initializer of that name would (fans of a Dense kernel (in, out)).

    Drawn on the host with NumPy: the same distributions as Keras (Keras' own random
    streams cannot be reproduced by any other library anyway), and no compilation, where
    JAX's jitted initializers cost about 2 s of XLA compile time per network on a CPU.
    """
    fan_in, fan_out = (shape[0], shape[1]) if len(shape) == 2 else (shape[0], shape[0])
    fans = {"glorot": (fan_in + fan_out) / 2, "he": fan_in / 2, "lecun": fan_in}
    family, _, dist = init.name.partition("_")
    if family in fans:
        variance = 1.0 / fans[family]  # scale / fan: he's scale 2 is folded into its fan
        if dist == "normal":
            out = np.sqrt(variance) / TRUNCATION_STDDEV * _truncated_normal(rng, shape)
        else:
            limit = np.sqrt(3.0 * variance)
            out = rng.uniform(-limit, limit, shape)
    elif init.name in ("zeros", "ones", "constant"):
        out = np.full(shape, {"zeros": 0.0, "ones": 1.0}.get(init.name, init.value))
    elif init.name == "random_normal":
        out = init.mean + init.stddev * rng.standard_normal(shape)
    elif init.name == "random_uniform":
        out = rng.uniform(init.minval, init.maxval, shape)
    elif init.name == "truncated_normal":
        out = init.mean + init.stddev * _truncated_normal(rng, shape)
    else:
        raise AssertionError(f"initializer {init.name} is validated by spec but not drawn here")
    return out.astype(np.float32)


def init(spec: ModelSpec, seed: int, input_dim: int) -> dict[str, np.ndarray]:
    """Fresh parameters; each tensor has its own stream, seeded by (seed, layer, tensor)."""
    params = {}
    width = input_dim
    for i, (name, layer) in enumerate(zip(layer_names(spec), spec.layers)):
        if isinstance(layer, Dense):
            rng = lambda which: np.random.default_rng([seed, i, which])
            params[f"{name}/kernel"] = initialize(layer.kernel_initializer, rng(0), (width, layer.units))
            if layer.use_bias:
                params[f"{name}/bias"] = initialize(layer.bias_initializer, rng(1), (layer.units,))
            width = layer.units
    return params


def hyperparameters(spec: ModelSpec) -> dict[str, float]:
    """The model's numbers that may vary per population member, keyed `layer.setting`."""
    hyper: dict[str, float] = {}
    for name, layer in zip(layer_names(spec), spec.layers):
        if isinstance(layer, Dropout):
            hyper[f"{name}.rate"] = layer.rate
        elif isinstance(layer, Dense):
            for which in ("kernel", "bias"):
                reg = getattr(layer, f"{which}_regularizer")
                if reg is not None:
                    hyper[f"{name}.{which}_l1"] = reg.l1
                    hyper[f"{name}.{which}_l2"] = reg.l2
            if layer.kernel_constraint is not None:
                hyper[f"{name}.max_norm"] = layer.kernel_constraint.max_value
    return hyper


def structure(spec: ModelSpec) -> tuple:
    """What shapes the program: two specs with the same structure share one compilation."""
    parts = []
    for layer in spec.layers:
        if isinstance(layer, Dense):
            parts.append(("dense", layer.units, layer.activation, layer.use_bias,
                          _terms(layer.kernel_regularizer), _terms(layer.bias_regularizer),
                          layer.kernel_constraint is not None))
        elif isinstance(layer, Activation):
            parts.append(("activation", layer.activation))
        else:
            parts.append(("dropout",))
    return tuple(parts)


def _dropout(x: jax.Array, rate: jax.Array | float, key: jax.Array) -> jax.Array:
    # Inverted dropout (Keras): zero with probability `rate`, scale survivors by 1/(1-rate),
    # so nothing changes at inference.
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def logits(spec: ModelSpec, params: Params, hyper: Hyper, images: jax.Array,
           dropout_key: jax.Array | None = None) -> jax.Array:
    """The network up to (not including) its final softmax/sigmoid.

    `images` are raw uint8 pixels (any trailing shape); scaling happens here, inside the
    compiled step, so the data set stays uint8 on the device (4x less memory traffic).
    `dropout_key=None` means inference: dropout does nothing.
    """
    x = images.reshape(images.shape[0], -1).astype(jnp.float32) * spec.input_rescale
    names = layer_names(spec)
    final = _final_activation_index(spec)
    for i, (name, layer) in enumerate(zip(names, spec.layers)):
        if isinstance(layer, Dense):
            x = x @ params[f"{name}/kernel"]
            if layer.use_bias:
                x = x + params[f"{name}/bias"]
            if i != final:
                x = ACTIVATION_FNS[layer.activation](x)
        elif isinstance(layer, Activation):
            if i != final:
                x = ACTIVATION_FNS[layer.activation](x)
        elif dropout_key is not None:
            x = _dropout(x, hyper[f"{name}.rate"], jax.random.fold_in(dropout_key, i))
    return x


def _final_activation_index(spec: ModelSpec) -> int:
    """Index of the layer whose softmax/sigmoid is the output (left to the loss)."""
    for i in range(len(spec.layers) - 1, -1, -1):
        layer = spec.layers[i]
        if isinstance(layer, (Dense, Activation)) and layer.activation != "linear":
            return i
        if isinstance(layer, Dense):
            break
    raise AssertionError("spec validation guarantees a final softmax/sigmoid")


def probabilities(spec: ModelSpec, params: Params, images: jax.Array) -> jax.Array:
    """What the Keras model outputs at inference: softmax or sigmoid of the logits."""
    z = logits(spec, params, {}, images)
    return jax.nn.softmax(z) if spec.output_activation == "softmax" else jax.nn.sigmoid(z)


def _terms(reg) -> tuple[bool, bool]:
    """Which of a regularizer's l1 and l2 terms are there at all.

    Part of the program's structure: a term whose strength is 0 is left out of the
    compiled step (an l1 sum over a 784x1000 kernel costs a full read of it per step,
    even when multiplied by zero), so members with and without it train apart.
    """
    return (reg is not None and reg.l1 > 0, reg is not None and reg.l2 > 0)


def _regularized(spec: ModelSpec):
    """(parameter name, hyper key prefix, has l1, has l2) for every regularized tensor."""
    for name, layer in zip(layer_names(spec), spec.layers):
        if isinstance(layer, Dense):
            for which in ("kernel", "bias"):
                l1, l2 = _terms(getattr(layer, f"{which}_regularizer"))
                if l1 or l2:
                    yield f"{name}/{which}", f"{name}.{which}", l1, l2


def penalty(spec: ModelSpec, params: Params, hyper: Hyper) -> jax.Array:
    """Keras' regularization loss: sum over tensors of l1*sum|w| + l2*sum(w^2)."""
    total = jnp.float32(0.0)
    for pname, key, l1, l2 in _regularized(spec):
        w = params[pname]
        if l1:
            total = total + hyper[f"{key}_l1"] * jnp.sum(jnp.abs(w))
        if l2:
            total = total + hyper[f"{key}_l2"] * jnp.sum(w * w)
    return total


def penalty_grad(spec: ModelSpec, params: Params, hyper: Hyper) -> Params:
    """The gradient of `penalty`, written out: l1*sign(w) + 2*l2*w.

    Written by hand because it then fuses into the optimizer's element-wise update
    instead of being a separate backward pass over the weights (measured: the autodiff
    form costs a full extra read and write of the 784x1000 kernel per step).
    sign(0) = 0 matches the subgradient TensorFlow and JAX take for |w| at 0.
    """
    grads = {}
    for pname, key, l1, l2 in _regularized(spec):
        w = params[pname]
        g = hyper[f"{key}_l1"] * jnp.sign(w) if l1 else 0.0
        grads[pname] = g + (2.0 * hyper[f"{key}_l2"]) * w if l2 else g
    return grads


def constrain(spec: ModelSpec, params: Params, hyper: Hyper) -> Params:
    """Keras' MaxNorm after each update: w * clip(norm, 0, c) / (1e-7 + norm), norms per unit."""
    out = dict(params)
    for name, layer in zip(layer_names(spec), spec.layers):
        if isinstance(layer, Dense) and layer.kernel_constraint is not None:
            w = params[f"{name}/kernel"]
            norms = jnp.sqrt(jnp.sum(w * w, axis=0, keepdims=True))
            desired = jnp.clip(norms, 0.0, hyper[f"{name}.max_norm"])
            out[f"{name}/kernel"] = w * (desired / (1e-7 + norms))
    return out
