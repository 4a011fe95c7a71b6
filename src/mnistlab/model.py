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

import io
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mnistlab import layers
from mnistlab.spec import ModelSpec, keras_names, output_shapes, takes_image

Params = dict[str, jax.Array]
Hyper = Mapping[str, jax.Array | float]


def layer_names(spec: ModelSpec) -> list[str]:
    """Keras' automatic names: dense, dense_1, ..., dropout, dropout_1, ..."""
    return keras_names(spec.layers)


def is_statistic(name: str) -> bool:
    """Batch normalization's moving statistics: weights Keras saves but never trains."""
    return name.rpartition("/")[2] in layers.STATISTICS


def split_statistics(params: Params) -> tuple[Params, Params]:
    """(trainable weights, moving statistics): the optimizer sees only the first."""
    trainable = {k: v for k, v in params.items() if not is_statistic(k)}
    return trainable, {k: v for k, v in params.items() if is_statistic(k)}


def as_shape(input_shape: int | tuple[int, ...]) -> tuple[int, ...]:
    return (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)


def own(values: Mapping, name: str, sep: str) -> dict:
    """One layer's view of the model's weights (sep "/") or numbers (sep "."):
    {"kernel": ...} of {"dense/kernel": ...}."""
    prefix = name + sep
    return {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}


def _named(parts: list[tuple[str, dict]], sep: str) -> dict:
    """Layers' own views, (layer name, view) in order, back in the model's names."""
    return {f"{name}{sep}{k}": v for name, part in parts for k, v in part.items()}


def parameter_shapes(spec: ModelSpec, input_shape: int | tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Every weight's shape, in Keras' names and order, for images of `input_shape`."""
    shapes = output_shapes(spec.layers, as_shape(input_shape))
    return _named([(name, layer.weight_shapes(before))
                   for name, layer, before in zip(layer_names(spec), spec.layers, shapes)], "/")


def init(spec: ModelSpec, seed: int, input_shape: int | tuple[int, ...]) -> dict[str, np.ndarray]:
    """Fresh parameters for images of `input_shape` (an int: flat vectors of that length).

    Each tensor has its own stream, seeded by (seed, layer index, tensor): the draws
    do not depend on the order tensors are drawn in, nor on the other layers' sizes.
    """
    shapes = output_shapes(spec.layers, as_shape(input_shape))
    drawn = []
    for i, (name, layer, before) in enumerate(zip(layer_names(spec), spec.layers, shapes)):
        stream = lambda tensor, i=i: np.random.default_rng([seed, i, tensor])  # noqa: E731
        drawn.append((name, layer.init_weights(before, stream)))
    return _named(drawn, "/")


def hyperparameters(spec: ModelSpec) -> dict[str, float]:
    """The model's numbers that may vary per population member, keyed `layer.setting`."""
    return _named([(name, layer.numbers()) for name, layer in zip(layer_names(spec), spec.layers)], ".")


def structure(spec: ModelSpec) -> tuple:
    """What shapes the program: two specs with the same structure share one compilation."""
    return tuple(layer.structure() for layer in spec.layers)


def inputs(spec: ModelSpec, images: jax.Array) -> jax.Array:
    """Raw uint8 pixels as the first layer takes them: rescaled, and shaped (N, H, W, C)
    (channels last, as Keras) when a layer needs an image, else flattened.

    Scaling happens here, inside the compiled step, so the data set stays uint8 on the
    device (4x less memory traffic).
    """
    x = jnp.asarray(images).astype(jnp.float32) * spec.input_rescale
    if takes_image(spec.layers):
        return x.reshape(*x.shape[:3], -1)
    return x.reshape(x.shape[0], -1)


# Keras' dtype policies: the dtype a mixed policy's layers compute in. The weights (Keras'
# variables) and the optimizer stay float32 under either; None casts nothing.
COMPUTE_DTYPES = {"float32": None, "mixed_bfloat16": jnp.bfloat16}


def compute_dtype(spec: ModelSpec) -> jnp.dtype | None:
    return COMPUTE_DTYPES[spec.dtype_policy]


def apply_layer(layer, name: str, params: Params, hyper: Hyper, x: jax.Array, *, output: bool = False,
                key: jax.Array | None = None, weight: jax.Array | None = None,
                dtype: jnp.dtype | None = None) -> tuple[jax.Array, Params]:
    """(output, moved statistics) of one layer, in the model's names (see `layers.Layer.apply`);
    augmentation layers are `forward`'s (applied a run at a time), here the identity.

    `dtype` is a mixed policy's compute dtype: as Keras autocasts, the layer's input and its
    weights are cast to it (the float32 weights get float32 gradients through the cast), and
    its output is in it. A layer with `float32_compute` (batch normalization, as in Keras 3)
    computes in float32 and casts its output back; its moved statistics stay float32.
    """
    weights = own(params, name, "/")
    if dtype is not None:
        compute = jnp.float32 if layer.float32_compute else dtype
        weights = {k: w.astype(compute) for k, w in weights.items()}
        x = x.astype(compute)
    x, moved = layer.apply(x, weights, own(hyper, name, "."), output=output, key=key, weight=weight)
    return (x if dtype is None else x.astype(dtype)), _named([(name, moved)], "/")


def _float32(x: jax.Array, dtype: jnp.dtype | None) -> jax.Array:
    """A mixed policy's output back in float32 (the softmax and loss are float32)."""
    return x if dtype is None else x.astype(jnp.float32)


def walk(spec: ModelSpec, params: Params, images: jax.Array) -> Iterator[tuple[int, jax.Array]]:
    """(layer index, output) after each layer in turn, at inference, float32 under every
    policy; the last output is the logits (what `logits` returns), for reading hidden
    layers on the way."""
    final = final_activation_index(spec)
    dtype = compute_dtype(spec)
    x = inputs(spec, images)
    for i, (name, layer) in enumerate(zip(layer_names(spec), spec.layers)):
        x, _ = apply_layer(layer, name, params, {}, x, output=i == final, dtype=dtype)
        yield i, _float32(x, dtype)


def forward(spec: ModelSpec, params: Params, hyper: Hyper, images: jax.Array,
            key: jax.Array | None = None, mask: jax.Array | None = None) -> tuple[jax.Array, Params]:
    """(logits, moved statistics): the network up to (not including) its final softmax/sigmoid.

    `images` are raw uint8 pixels (N, H, W) or (N, H, W, C) (see `inputs`). `key=None`
    means inference: dropout and augmentation do nothing and batch normalization uses its
    moving statistics. In training, `mask` (N,) marks the real samples of a padded last
    batch, so that batch statistics leave the padding out; the moved statistics are
    returned for the caller to keep. Layer i draws its randomness from `key` folded with i.
    The logits are float32 under every dtype policy: the softmax and the loss are computed
    in float32, as Keras' mixed-precision guide has a model's last layer do.
    """
    dtype = compute_dtype(spec)
    x = inputs(spec, images)
    training = key is not None
    weight = jnp.ones(x.shape[0], jnp.float32) if mask is None else mask.astype(jnp.float32)
    final = final_activation_index(spec)
    moved: Params = {}
    pending: list[tuple[str, object]] = []  # consecutive augmentation layers, resampled once
    named = list(zip(layer_names(spec), spec.layers))
    pooled_early = False  # the last layer's pooling already applied, before its activation
    for i, (name, layer) in enumerate(named):
        layer_key = jax.random.fold_in(key, i) if training else None
        after = named[i + 1][1] if i + 1 < len(named) else None
        if isinstance(layer, layers.Augmentation):
            pending.append((name, layer))
            if not isinstance(after, layers.Augmentation):  # the run's last
                if training:
                    x = augment(x, pending, hyper, layer_key)
                pending = []
            continue
        if pooled_early:
            pooled_early = False
            continue
        if pools_before_activation(layer, after):
            x = _convolve_pool_activate(layer, name, after, params, hyper, x, dtype)
            pooled_early = True
            continue
        x, stats = apply_layer(layer, name, params, hyper, x, output=i == final, key=layer_key, weight=weight,
                               dtype=dtype)
        moved.update(stats)
    return _float32(x, dtype), moved


def pools_before_activation(layer, after) -> bool:
    """Whether a Conv2D with ReLU and the max pooling after it run as convolution, pooling,
    then bias and ReLU.

    max(relu(x + b)) == relu(max(x) + b) exactly (adding b and ReLU never reorder two
    numbers), so the outputs are the same bits; the gradient too, bar windows whose
    maximum ties only after rounding x + b. The bias, ReLU and their gradients then run on
    the pooled map, a quarter of the convolution's (measured: the `cnn` step 4.5% shorter
    on an AVX2 CPU, with the hand-written pooling gradient of `layers.pool2d`).
    """
    return (isinstance(layer, layers.Conv2D) and layer.activation == "relu"
            and type(after) is layers.MaxPooling2D and after.padding == "valid" and after.strides == after.pool_size)


def _convolve_pool_activate(conv, name: str, pool, params: Params, hyper: Hyper, x: jax.Array,
                            dtype: jnp.dtype | None) -> jax.Array:
    linear = conv.model_copy(update={"activation": "linear", "use_bias": False})
    x, _ = apply_layer(linear, name, params, hyper, x, dtype=dtype)
    x, _ = apply_layer(pool, "", {}, {}, x, dtype=dtype)
    if conv.use_bias:
        x = x + params[f"{name}/bias"].astype(x.dtype)
    return layers.ACTIVATION_FNS["relu"](x)


def logits(spec: ModelSpec, params: Params, hyper: Hyper, images: jax.Array,
           dropout_key: jax.Array | None = None) -> jax.Array:
    """`forward`'s logits alone (prediction, evaluation, tests)."""
    return forward(spec, params, hyper, images, dropout_key)[0]


# ------------------------------------------------------------------ augmentation


def augment(x: jax.Array, run: list, hyper: Hyper, key: jax.Array) -> jax.Array:
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
    keys = jax.random.split(key, len(run))
    for (name, layer), k in zip(reversed(run), reversed(list(keys))):
        coords = layer.coordinates(own(hyper, name, "."), k, coords, center, (h, w))
    first_name, first = run[0]
    mode = first.fill_mode  # Keras' names are scipy.ndimage's (reflect = half-sample symmetric)
    # Bilinear weights sum to one, so sampling (x - v) with 0 outside and adding v back
    # fills with v while v stays a per-member input (map_coordinates takes its fill as a
    # compile-time constant).
    fill = hyper[f"{first_name}.fill_value"] if mode == "constant" else None

    def resample(image, where):  # (H, W, C), (2, H, W)
        if mode == "constant":
            return sample_bilinear_zero_outside(image - fill, where) + fill
        sample = lambda plane: jax.scipy.ndimage.map_coordinates(plane, [where[0], where[1]], order=1, mode=mode)
        return jax.vmap(sample, in_axes=2, out_axes=2)(image)

    # The batch in two halves, a loop of two iterations: a loop's result is written to
    # memory, so XLA cannot fuse the resampling into a consumer that reads each pixel
    # several times and recompute it there (a convolution's patch gather reads it kh x kw
    # times; measured: the `cnn` preset's step 0.93x as long as with the resampling fused
    # into it). `optimization_barrier` would say so directly, but XLA's CPU pipeline
    # removes barriers before it fuses.
    return in_two_interleaved_halves(jax.vmap(resample), x, coords)


def in_two_interleaved_halves(fn: Callable, *batches: jax.Array) -> jax.Array:
    """fn(*batches) as a loop of two iterations, over the even and then the odd images.

    Interleaved, not first and second half: a batch split across devices is split into
    contiguous blocks, and each block holds its share of both halves, so each device runs
    the loop on its own images. Halves in a row would make the loop's axis the devices'
    axis: XLA gathers the whole batch to every device and each resamples all of it, work
    that grows with the number of devices (measured for the `cnn` preset on 2: the
    resampling loop 0.16 ms a device-step against 0.29; the step as long, within noise).
    """
    n = batches[0].shape[0]

    def halves(a):  # (N, ...) -> (2, ceil(N / 2), ...), image i at [i % 2, i // 2]
        a = jnp.concatenate([a, a[-1:]]) if n % 2 else a
        return a.reshape(-1, 2, *a.shape[1:]).swapaxes(0, 1)
    out = jax.lax.map(lambda pair: fn(*pair), tuple(map(halves, batches)))
    return out.swapaxes(0, 1).reshape(-1, *out.shape[2:])[:n]


def sample_bilinear_zero_outside(image: jax.Array, where: jax.Array) -> jax.Array:
    """`map_coordinates(order=1, mode="constant", cval=0)` of an (H, W, C) image at (2, H, W)
    coordinates `where`, to the bit: the same weights, products and sum order.

    Written out because map_coordinates gathers each of the four corners on its own, with
    a validity mask each; here one gather reads each output pixel's 2 x 2 window from
    the image padded with two rows and columns of zeros (measured: 0.65x its time for
    64 images). A window whose top-left corner lies in [-1, size - 1] reads the image and
    its zero border exactly as the masks would; one further out reads only zeros, so its
    corner is moved to -2.
    """
    h, w, c = image.shape
    padded = jnp.pad(image, ((2, 2), (2, 2), (0, 0)))
    lower = jnp.floor(where)
    upper_weight = where - lower
    lower_weight = 1 - upper_weight
    corner = lower.astype(jnp.int32)
    inside = (corner >= -1) & (corner <= jnp.array([h - 1, w - 1]).reshape(2, 1, 1))
    start = jnp.where(inside, corner, -2) + 2
    window = lambda row, col: jax.lax.dynamic_slice(padded, (row, col, 0), (2, 2, c))
    win = jax.vmap(jax.vmap(window))(start[0], start[1])  # (H, W, 2, 2, C)
    (lr, lc), (ur, uc) = lower_weight[..., None], upper_weight[..., None]  # each (H, W, 1)
    # map_coordinates' order: corners (lower, lower), (lower, upper), (upper, lower), (upper,
    # upper), each (row weight * column weight) * value, summed left to right.
    return ((lr * lc) * win[..., 0, 0, :] + (lr * uc) * win[..., 0, 1, :]
            + (ur * lc) * win[..., 1, 0, :] + (ur * uc) * win[..., 1, 1, :])


def final_activation_index(spec: ModelSpec) -> int:
    """Index of the layer whose softmax/sigmoid is the output (left to the loss)."""
    for i in range(len(spec.layers) - 1, -1, -1):
        layer = spec.layers[i]
        if isinstance(layer, (layers.Dense, layers.Activation)) and layer.activation != "linear":
            return i
        if isinstance(layer, layers.Dense):
            break
    raise AssertionError("spec validation guarantees a final softmax/sigmoid")


def probabilities(spec: ModelSpec, params: Params, images: jax.Array, temperature: float = 1.0) -> jax.Array:
    """What the Keras model outputs at inference: softmax or sigmoid of the logits, the
    logits divided by `temperature` first (`calibration`: 1 is the network as trained)."""
    z = logits(spec, params, {}, images) / temperature  # exact at 1: x / 1.0 == x in floating point
    return jax.nn.softmax(z) if spec.output_activation == "softmax" else jax.nn.sigmoid(z)


def _regularized(spec: ModelSpec):
    """(parameter name, hyper key prefix, has l1, has l2) for every regularized tensor."""
    for name, layer in zip(layer_names(spec), spec.layers):
        for which, reg in layer.regularizers().items():
            l1, l2 = layers.terms(reg)
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
    """The parameters after each layer's constraint (Keras' MaxNorm), applied after each update."""
    changed = [(name, layer.constrain(own(params, name, "/"), own(hyper, name, ".")))
               for name, layer in zip(layer_names(spec), spec.layers)]
    return {**params, **_named(changed, "/")}


# ------------------------------------------------------------------ Keras' model.summary()


@dataclass(frozen=True)
class SummaryRow:
    name: str  # Keras' automatic name: dense, dense_1, ...
    kind: str  # Keras' class name: Dense, Conv2D, ...
    output_shape: tuple[int | None, ...]  # with the batch axis, None as Keras prints it
    params: int
    trainable: int  # of `params`: batch normalization's moving statistics are not


@dataclass(frozen=True)
class Summary:
    """What Keras' `model.summary()` shows: a row per layer, the totals. Printed (repr),
    the same table: `mnistlab.model.summary(mnistlab.preset("seed").model)`."""

    rows: tuple[SummaryRow, ...]

    @property
    def total(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def trainable(self) -> int:
        return sum(r.trainable for r in self.rows)

    @property
    def non_trainable(self) -> int:
        return self.total - self.trainable

    def table(self):
        """The rich table Keras 3 prints (it draws its summary with rich too)."""
        from rich.table import Table

        table = Table("Layer (type)", "Output Shape", "Param #", title='Model: "sequential"', title_justify="left")
        table.columns[2].justify = "right"
        for r in self.rows:
            shape = "(" + ", ".join(map(str, r.output_shape)) + ")"
            table.add_row(f"{r.name} ({r.kind})", shape, f"{r.params:,}")
        return table

    def totals(self) -> list[str]:
        """Keras' three lines under the table, sizes at 4 bytes a weight (float32)."""
        return [f" {what} params: {n:,} ({readable_size(4 * n)})" for what, n in
                (("Total", self.total), ("Trainable", self.trainable), ("Non-trainable", self.non_trainable))]

    def __repr__(self) -> str:
        from rich.console import Console

        screen = Console(width=100, record=True, file=io.StringIO())
        screen.print(self.table())
        return screen.export_text() + "\n".join(self.totals())


def multiply_adds(spec: ModelSpec, image_shape: tuple[int, ...] = (28, 28)) -> int:
    """Multiply-adds of one image's forward pass through the kernels: a dense kernel's size,
    a convolution's kernel size times its output positions. What a step costs scales with it
    (backward: about twice as much again), so it ranks structures by their cost to train."""
    shapes = output_shapes(spec.layers, as_shape(image_shape))
    total = 0
    for layer, before, after in zip(spec.layers, shapes, shapes[1:]):
        kernel = layer.weight_shapes(before).get("kernel")
        if kernel is not None:
            total += int(np.prod(kernel)) * int(np.prod(after[:-1]))  # positions: 1 for a dense layer
    return total


def readable_size(size: float) -> str:
    """Bytes as Keras' summary writes them: 3.03 MB (units of 1,024)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024:
            return f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} PB"


def summary(spec: ModelSpec, image_shape: tuple[int, ...] = (28, 28)) -> Summary:
    """Keras' model.summary() of `spec` for images of `image_shape` (no weights needed:
    the counts follow from the shapes)."""
    shapes = output_shapes(spec.layers, as_shape(image_shape))
    rows = []
    for name, layer, before, after in zip(layer_names(spec), spec.layers, shapes, shapes[1:]):
        counts = {k: int(np.prod(s)) for k, s in layer.weight_shapes(before).items()}
        rows.append(SummaryRow(name, type(layer).__name__, (None, *after), sum(counts.values()),
                               sum(n for k, n in counts.items() if k not in layers.STATISTICS)))
    return Summary(tuple(rows))
