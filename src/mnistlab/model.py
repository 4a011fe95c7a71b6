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

from typing import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mnistlab.spec import (
    AUGMENTATIONS,
    Activation,
    AveragePooling2D,
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    ElasticDistortion,
    Flatten,
    GlobalAveragePooling2D,
    Initializer,
    MaxPooling2D,
    ModelSpec,
    RandomRotation,
    RandomTranslation,
    RandomZoom,
    SPATIAL,
    keras_names,
    output_shapes,
)

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
    return keras_names(spec.layers)


def _truncated_normal(rng: np.random.Generator, shape) -> np.ndarray:
    """Unit normal draws cut at +-2 by redrawing what falls outside (as Keras' backends do)."""
    x = rng.standard_normal(shape)
    outside = np.abs(x) > 2.0
    while outside.any():
        x[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(x) > 2.0
    return x


def initialize(init: Initializer, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Draw a tensor as Keras' initializer of that name would.

    Fans as Keras' `compute_fans`: a Dense kernel (in, out); a convolution kernel
    (kh, kw, in, out) has fan_in = kh*kw*in and fan_out = kh*kw*out.

    Drawn on the host with NumPy: the same distributions as Keras (Keras' own random
    streams cannot be reproduced by any other library anyway), and no compilation, where
    JAX's jitted initializers cost about 2 s of XLA compile time per network on a CPU.
    """
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    fan_in, fan_out = (shape[-2] * receptive, shape[-1] * receptive) if len(shape) >= 2 else (shape[0], shape[0])
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


# Batch normalization's moving statistics are weights Keras saves but never trains.
STATISTICS = ("moving_mean", "moving_variance")


def is_statistic(name: str) -> bool:
    return name.rpartition("/")[2] in STATISTICS


def split_statistics(params: Params) -> tuple[Params, Params]:
    """(trainable weights, moving statistics): the optimizer sees only the first."""
    trainable = {k: v for k, v in params.items() if not is_statistic(k)}
    return trainable, {k: v for k, v in params.items() if is_statistic(k)}


def as_shape(input_shape: int | tuple[int, ...]) -> tuple[int, ...]:
    return (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)


def parameter_shapes(spec: ModelSpec, input_shape: int | tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Every weight's shape, in Keras' names and order, for images of `input_shape`."""
    shapes = output_shapes(spec.layers, as_shape(input_shape))
    out: dict[str, tuple[int, ...]] = {}
    for name, layer, before in zip(layer_names(spec), spec.layers, shapes):
        if isinstance(layer, Dense):
            out[f"{name}/kernel"] = (before[0], layer.units)
            if layer.use_bias:
                out[f"{name}/bias"] = (layer.units,)
        elif isinstance(layer, Conv2D):
            out[f"{name}/kernel"] = (*layer.kernel_size, before[-1], layer.filters)
            if layer.use_bias:
                out[f"{name}/bias"] = (layer.filters,)
        elif isinstance(layer, BatchNormalization):
            channels = (before[-1],)
            if layer.scale:
                out[f"{name}/gamma"] = channels
            if layer.center:
                out[f"{name}/beta"] = channels
            out[f"{name}/moving_mean"] = channels
            out[f"{name}/moving_variance"] = channels
    return out


# Batch normalization's weights start as Keras' do.
_FIXED_START = {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0}


def init(spec: ModelSpec, seed: int, input_shape: int | tuple[int, ...]) -> dict[str, np.ndarray]:
    """Fresh parameters for images of `input_shape` (an int: flat vectors of that length).

    Each tensor has its own stream, seeded by (seed, layer index, tensor): the draws
    do not depend on the order tensors are drawn in, nor on the other layers' sizes.
    """
    index = {name: i for i, name in enumerate(layer_names(spec))}
    params = {}
    for pname, shape in parameter_shapes(spec, input_shape).items():
        name, _, which = pname.rpartition("/")
        layer = spec.layers[index[name]]
        if which in _FIXED_START:
            params[pname] = np.full(shape, _FIXED_START[which], np.float32)
        else:
            rng = np.random.default_rng([seed, index[name], 0 if which == "kernel" else 1])
            params[pname] = initialize(getattr(layer, f"{which}_initializer"), rng, shape)
    return params


# The numbers of each augmentation layer that a population may vary per member.
_AUGMENTATION_NUMBERS = {
    RandomTranslation: ("height_factor", "width_factor"),
    RandomRotation: ("factor",),
    RandomZoom: ("height_factor", "width_factor"),
    ElasticDistortion: ("alpha", "sigma"),
}


def hyperparameters(spec: ModelSpec) -> dict[str, float]:
    """The model's numbers that may vary per population member, keyed `layer.setting`."""
    hyper: dict[str, float] = {}
    for name, layer in zip(layer_names(spec), spec.layers):
        if isinstance(layer, Dropout):
            hyper[f"{name}.rate"] = layer.rate
        elif isinstance(layer, (Dense, Conv2D)):
            for which in ("kernel", "bias"):
                reg = getattr(layer, f"{which}_regularizer")
                if reg is not None:
                    hyper[f"{name}.{which}_l1"] = reg.l1
                    hyper[f"{name}.{which}_l2"] = reg.l2
            if isinstance(layer, Dense) and layer.kernel_constraint is not None:
                hyper[f"{name}.max_norm"] = layer.kernel_constraint.max_value
        elif isinstance(layer, BatchNormalization):
            hyper[f"{name}.momentum"] = layer.momentum  # epsilon is read at inference too: structure
        elif isinstance(layer, AUGMENTATIONS):
            for key in _AUGMENTATION_NUMBERS[type(layer)]:
                value = getattr(layer, key)
                # Keras' width_factor = None for zoom: the height's draw, aspect kept (-1 flags it).
                hyper[f"{name}.{key}"] = -1.0 if value is None else value
            hyper[f"{name}.fill_value"] = layer.fill_value
    return hyper



def structure(spec: ModelSpec) -> tuple:
    """What shapes the program: two specs with the same structure share one compilation."""
    parts = []
    for layer in spec.layers:
        if isinstance(layer, Dense):
            parts.append(("dense", layer.units, layer.activation, layer.use_bias,
                          _terms(layer.kernel_regularizer), _terms(layer.bias_regularizer),
                          layer.kernel_constraint is not None))
        elif isinstance(layer, Conv2D):
            parts.append(("conv2d", layer.filters, layer.kernel_size, layer.strides, layer.padding,
                          layer.activation, layer.use_bias, _terms(layer.kernel_regularizer),
                          _terms(layer.bias_regularizer)))
        elif isinstance(layer, Activation):
            parts.append(("activation", layer.activation))
        elif isinstance(layer, (MaxPooling2D, AveragePooling2D)):
            parts.append((layer.type, layer.pool_size, layer.strides, layer.padding))
        elif isinstance(layer, BatchNormalization):
            parts.append((layer.type, layer.center, layer.scale, layer.epsilon))
        elif isinstance(layer, RandomZoom):
            # A separate width draw or not changes the program; the factors do not.
            parts.append((layer.type, layer.fill_mode, layer.width_factor is None))
        elif isinstance(layer, AUGMENTATIONS):
            parts.append((layer.type, layer.fill_mode))
        else:
            parts.append((layer.type,))  # dropout, flatten, global average pooling
    return tuple(parts)


def _dropout(x: jax.Array, rate: jax.Array | float, key: jax.Array) -> jax.Array:
    # Inverted dropout (Keras): zero with probability `rate`, scale survivors by 1/(1-rate),
    # so nothing changes at inference.
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def inputs(spec: ModelSpec, images: jax.Array) -> jax.Array:
    """Raw uint8 pixels as the first layer takes them: rescaled, and shaped (N, H, W, C)
    (channels last, as Keras) when a layer needs an image, else flattened.

    Scaling happens here, inside the compiled step, so the data set stays uint8 on the
    device (4x less memory traffic).
    """
    x = jnp.asarray(images).astype(jnp.float32) * spec.input_rescale
    if any(isinstance(layer, SPATIAL) for layer in spec.layers):
        return x.reshape(*x.shape[:3], -1)
    return x.reshape(x.shape[0], -1)


def apply_layer(layer, name: str, params: Params, hyper: Hyper, x: jax.Array, *, output: bool = False,
                key: jax.Array | None = None, weight: jax.Array | None = None) -> tuple[jax.Array, Params]:
    """(output, moved statistics) of one layer; augmentation layers are `forward`'s (they
    are applied a run at a time), here the identity.

    `output`: the layer whose softmax/sigmoid makes the probabilities, left to the loss.
    `key=None` means inference (dropout off, batch normalization on its moving statistics);
    in training `weight` (N,) marks the samples batch statistics are taken over.
    """
    if isinstance(layer, (Dense, Conv2D)):
        if isinstance(layer, Dense):
            x = x @ params[f"{name}/kernel"]
        else:
            x = conv2d(x, params[f"{name}/kernel"], layer.strides, layer.padding)
        if layer.use_bias:
            x = x + params[f"{name}/bias"]
        return (x if output else ACTIVATION_FNS[layer.activation](x)), {}
    if isinstance(layer, Activation):
        return (x if output else ACTIVATION_FNS[layer.activation](x)), {}
    if isinstance(layer, MaxPooling2D):  # AveragePooling2D is one too, with another reduction
        kind = "average" if isinstance(layer, AveragePooling2D) else "max"
        return pool2d(x, kind, layer.pool_size, layer.strides, layer.padding), {}
    if isinstance(layer, Flatten):
        return x.reshape(x.shape[0], -1), {}
    if isinstance(layer, GlobalAveragePooling2D):
        return jnp.mean(x, axis=(1, 2)), {}
    if isinstance(layer, BatchNormalization):
        return _batch_norm(x, layer, name, params, hyper, None if key is None else weight)
    if isinstance(layer, Dropout) and key is not None:
        return _dropout(x, hyper[f"{name}.rate"], key), {}
    return x, {}  # dropout at inference, augmentation


def walk(spec: ModelSpec, params: Params, images: jax.Array) -> Iterator[tuple[int, jax.Array]]:
    """(layer index, output) after each layer in turn, at inference; the last output is
    the logits (what `logits` returns), for reading hidden layers on the way."""
    final = final_activation_index(spec)
    x = inputs(spec, images)
    for i, (name, layer) in enumerate(zip(layer_names(spec), spec.layers)):
        x, _ = apply_layer(layer, name, params, {}, x, output=i == final)
        yield i, x


def forward(spec: ModelSpec, params: Params, hyper: Hyper, images: jax.Array,
            key: jax.Array | None = None, mask: jax.Array | None = None) -> tuple[jax.Array, Params]:
    """(logits, moved statistics): the network up to (not including) its final softmax/sigmoid.

    `images` are raw uint8 pixels (N, H, W) or (N, H, W, C) (see `inputs`). `key=None`
    means inference: dropout and augmentation do nothing and batch normalization uses its
    moving statistics. In training, `mask` (N,) marks the real samples of a padded last
    batch, so that batch statistics leave the padding out; the moved statistics are
    returned for the caller to keep. Layer i draws its randomness from `key` folded with i.
    """
    x = inputs(spec, images)
    training = key is not None
    weight = jnp.ones(x.shape[0], jnp.float32) if mask is None else mask.astype(jnp.float32)
    final = final_activation_index(spec)
    moved: Params = {}
    pending: list[tuple[str, object]] = []  # consecutive augmentation layers, resampled once
    layers = list(zip(layer_names(spec), spec.layers))
    for i, (name, layer) in enumerate(layers):
        layer_key = jax.random.fold_in(key, i) if training else None
        if isinstance(layer, AUGMENTATIONS):
            pending.append((name, layer))
            if i + 1 == len(layers) or not isinstance(layers[i + 1][1], AUGMENTATIONS):  # the run's last
                if training:
                    x = _augment(x, pending, hyper, layer_key)
                pending = []
            continue
        x, stats = apply_layer(layer, name, params, hyper, x, output=i == final, key=layer_key, weight=weight)
        moved.update(stats)
    return x, moved


def logits(spec: ModelSpec, params: Params, hyper: Hyper, images: jax.Array,
           dropout_key: jax.Array | None = None) -> jax.Array:
    """`forward`'s logits alone (prediction, evaluation, tests)."""
    return forward(spec, params, hyper, images, dropout_key)[0]


# ------------------------------------------------------------------ convolution and pooling


def _same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    """TensorFlow's (and Keras') "same": pad to ceil(n / s) outputs, the odd pixel after."""
    total = max((-(-size // stride) - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: str) -> jax.Array:
    """Keras' Conv2D (a cross-correlation) of (N, H, W, C) images with a (kh, kw, C, F) kernel.

    On a CPU as one matrix product of the image patches with the kernel (im2col), not
    XLA's convolution: measured for the `cnn` preset's step, XLA's CPU convolution and its
    gradients took 0.52 s where the patch matrix product takes 0.03 s (it runs on the
    same tuned matrix kernels as Dense). Elsewhere (GPU: cuDNN) XLA's own convolution.
    """
    kh, kw, c, f = kernel.shape
    sh, sw = strides
    if padding == "same":
        x = jnp.pad(x, ((0, 0), _same_padding(x.shape[1], kh, sh), _same_padding(x.shape[2], kw, sw), (0, 0)))
    if jax.default_backend() != "cpu":
        return jax.lax.conv_general_dilated(x, kernel, strides, "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    n, h, w, _ = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    # Patch features ordered (row, column, channel): the order of kernel.reshape(-1, f).
    taps = [x[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :] for i in range(kh) for j in range(kw)]
    patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    return patches @ kernel.reshape(kh * kw * c, f)


def pool2d(x: jax.Array, kind: str, size: tuple[int, int], strides: tuple[int, int], padding: str) -> jax.Array:
    """Keras' MaxPooling2D / AveragePooling2D on (N, H, W, C).

    Windows side by side ("valid", strides = size, the usual case) are a reshape and a
    reduction, which XLA fuses with what comes before; measured on a CPU 1.6x faster a
    step than `reduce_window`, whose gradient (select-and-scatter) is slow there.
    Average pooling with "same" padding averages only the pixels a window covers (Keras).
    """
    (ph, pw), (sh, sw) = size, strides
    n, h, w, c = x.shape
    if padding == "valid" and (ph, pw) == (sh, sw):
        oh, ow = h // ph, w // pw
        windows = x[:, :oh * ph, :ow * pw, :].reshape(n, oh, ph, ow, pw, c)
        return windows.max(axis=(2, 4)) if kind == "max" else windows.mean(axis=(2, 4))
    pads = ((0, 0), _same_padding(h, ph, sh), _same_padding(w, pw, sw), (0, 0)) if padding == "same" else "VALID"
    dims, steps = (1, ph, pw, 1), (1, sh, sw, 1)
    if kind == "max":
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, steps, pads)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, steps, pads)
    covered = jax.lax.reduce_window(jnp.ones((1, h, w, 1), x.dtype), 0.0, jax.lax.add, dims, steps, pads)
    return total / covered


def _batch_norm(x, layer: BatchNormalization, name: str, params: Params, hyper: Hyper,
                weight: jax.Array | None) -> tuple[jax.Array, Params]:
    """Normalise over every axis but the last; `weight` (N,) in training, None at inference."""
    if weight is None:
        mean, var, moved = params[f"{name}/moving_mean"], params[f"{name}/moving_variance"], {}
    else:
        axes = tuple(range(x.ndim - 1))
        w = weight.reshape(-1, *([1] * (x.ndim - 1)))
        count = jnp.maximum(jnp.sum(weight), 1.0) * (x.size // (x.shape[0] * x.shape[-1]))
        mean = jnp.sum(x * w, axes) / count
        var = jnp.sum(jnp.square(x - mean) * w, axes) / count  # biased, as Keras' moments
        m = hyper[f"{name}.momentum"]
        moved = {f"{name}/moving_mean": m * params[f"{name}/moving_mean"] + (1 - m) * mean,
                 f"{name}/moving_variance": m * params[f"{name}/moving_variance"] + (1 - m) * var}
    x = (x - mean) * jax.lax.rsqrt(var + layer.epsilon)
    if layer.scale:
        x = x * params[f"{name}/gamma"]
    if layer.center:
        x = x + params[f"{name}/beta"]
    return x, moved


# ------------------------------------------------------------------ augmentation


def _augment(x: jax.Array, layers: list, hyper: Hyper, key: jax.Array) -> jax.Array:
    """Apply consecutive augmentation layers to (N, H, W, C) as one resampling.

    Each layer maps an output pixel to where it reads the input; chained layers compose
    those maps (the last layer's first), and the image is sampled once, bilinearly. Keras
    resamples after each layer; one resampling blurs less and gathers once. The draws are
    per image, from `key` (the step's key folded with the layer's index).
    """
    n, h, w, c = x.shape
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    coords = jnp.broadcast_to(jnp.stack([rows, cols]), (n, 2, h, w))
    center = jnp.array([(h - 1) / 2, (w - 1) / 2], jnp.float32).reshape(1, 2, 1, 1)
    keys = jax.random.split(key, len(layers))
    for (name, layer), k in zip(reversed(layers), reversed(list(keys))):
        coords = _coordinate_map(layer, name, hyper, k, coords, center, (h, w))
    first_name, first = layers[0]
    mode = first.fill_mode  # Keras' names are scipy.ndimage's (reflect = half-sample symmetric)
    # map_coordinates takes its fill as a compile-time constant; bilinear weights sum to
    # one, so sampling (x - v) with 0 outside and adding v back fills with v while v stays
    # a per-member input.
    fill = hyper[f"{first_name}.fill_value"] if mode == "constant" else 0.0

    def sample(image, where):  # image (H, W), where (2, H, W)
        return jax.scipy.ndimage.map_coordinates(image - fill, [where[0], where[1]], order=1, mode=mode) + fill

    per_channel = jax.vmap(sample, in_axes=(2, None), out_axes=2)  # over C
    return jax.vmap(per_channel)(x, coords)


def _coordinate_map(layer, name: str, hyper: Hyper, key, coords, center, size) -> jax.Array:
    """Where each output pixel (N, 2, H, W) of this layer reads its input."""
    n = coords.shape[0]
    h, w = size
    u = lambda k, shape=(n,): jax.random.uniform(k, shape, jnp.float32, -1.0, 1.0)
    k1, k2 = jax.random.split(key)
    if isinstance(layer, RandomTranslation):
        shift = jnp.stack([u(k1) * hyper[f"{name}.height_factor"] * h, u(k2) * hyper[f"{name}.width_factor"] * w], 1)
        return coords - shift.reshape(n, 2, 1, 1)
    if isinstance(layer, RandomRotation):
        angle = (u(k1) * hyper[f"{name}.factor"] * 2 * jnp.pi).reshape(n, 1, 1)
        dy, dx = coords[:, 0] - center[:, 0], coords[:, 1] - center[:, 1]
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        return jnp.stack([cos * dy - sin * dx, sin * dy + cos * dx], 1) + center
    if isinstance(layer, RandomZoom):
        zoom_h = 1.0 + u(k1) * hyper[f"{name}.height_factor"]
        zoom_w = zoom_h if layer.width_factor is None else 1.0 + u(k2) * hyper[f"{name}.width_factor"]
        return center + (coords - center) * jnp.stack([zoom_h, zoom_w], 1).reshape(n, 2, 1, 1)
    # Elastic: uniform noise per pixel and axis, smoothed by a Gaussian (as two small matrix
    # products, zero beyond the border), scaled by alpha.
    noise = u(k1, (n, 2, h, w))
    sigma = hyper[f"{name}.sigma"]
    smooth = lambda m: jnp.exp(-0.5 * jnp.square((jnp.arange(m)[:, None] - jnp.arange(m)[None, :]) / sigma))
    gh, gw = smooth(h), smooth(w)
    norm = jnp.sqrt(2 * jnp.pi) * sigma  # a full Gaussian's sum: the border keeps its fall-off
    field = jnp.einsum("ij,najk,lk->nail", gh, noise, gw) / (norm * norm)
    return coords + hyper[f"{name}.alpha"] * field


def final_activation_index(spec: ModelSpec) -> int:
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
        if isinstance(layer, (Dense, Conv2D)):
            for which in ("kernel", "bias") if layer.use_bias else ("kernel",):  # Keras: no bias, no penalty on it
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
