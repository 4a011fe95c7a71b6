"""Every layer type in one place: its settings and everything mnistlab needs to know of it.

A layer type is one class here, in the manner of a Keras layer: its fields are Keras'
arguments (validated by Pydantic; unknown keys are errors), and its methods are what the
rest of mnistlab asks of it:

    output_shape(before)                  the shape of one sample after it (or why it cannot fit)
    weight_shapes(before), init_weights   its weights, by Keras' names ("kernel", "bias", ...)
    numbers()                             the settings a population may vary per member
    structure()                           what shapes its compiled program (see model.structure)
    apply(x, weights, numbers, ...)       the forward function, in training and at inference
    onnx(graph, x, ...)                   its ONNX nodes (see export)
    described, summary_settings()         what predict's /model and the report's table show
    roles                                 what each field does to a population (populations.ROLES)

The defaults on `Layer` are those of a layer without weights that passes its input
through at inference (dropout, augmentation). A new layer type is one class, added to
`TYPES`, plus its tests: `layers_test.py` runs an example network of every type through
every consumer, and fails first for a type without an example.

Weights and numbers reach a layer as its own views: `weights["kernel"]` for the model's
`"dense/kernel"`, `numbers["rate"]` for `"dropout.rate"` (model.py does the naming).
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Any, Callable, ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from mnistlab.errors import suggest

Shape = tuple[int, ...]
Arrays = dict[str, Any]  # one layer's weights or numbers: jax or NumPy arrays, or floats


class Settings(BaseModel):
    # Unknown keys are errors, never silently ignored: a typo must not train the
    # wrong model. `validate_assignment` keeps overrides as strict as construction.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_assignment=True)


def check_name(value: str, known: tuple[str, ...], what: str) -> str:
    if value not in known:
        raise ValueError(f"unknown {what} '{value}': {suggest(value, known)}")
    return value


# ------------------------------------------------------------------ activations


ACTIVATION_FNS: dict[str, Callable[[jax.Array], jax.Array]] = {
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
ACTIVATIONS = tuple(ACTIVATION_FNS)
# An activation's name, checked against ACTIVATIONS (Dense, Conv2D and Activation take one).
ActivationName = Annotated[str, AfterValidator(lambda v: check_name(v, ACTIVATIONS, "activation"))]


# ------------------------------------------------------------------ initializers, penalties, constraints


INITIALIZERS = (
    "glorot_normal", "glorot_uniform", "he_normal", "he_uniform", "lecun_normal",
    "lecun_uniform", "zeros", "ones", "constant", "random_normal", "random_uniform",
    "truncated_normal",
)
# Keras' default arguments for the initializers that take any.
INITIALIZER_DEFAULTS: dict[str, dict[str, float]] = {
    "constant": {"value": 0.0},
    "random_normal": {"mean": 0.0, "stddev": 0.05},
    "random_uniform": {"minval": -0.05, "maxval": 0.05},
    "truncated_normal": {"mean": 0.0, "stddev": 0.05},
}
# Keras' truncated normal cuts at two standard deviations; dividing by this constant
# (the stddev of a unit normal truncated to [-2, 2]) restores the intended stddev.
TRUNCATION_STDDEV = 0.87962566103423978


def _truncated_normal(rng: np.random.Generator, shape) -> np.ndarray:
    """Unit normal draws cut at +-2 by redrawing what falls outside (as Keras' backends do)."""
    x = rng.standard_normal(shape)
    outside = np.abs(x) > 2.0
    while outside.any():
        x[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(x) > 2.0
    return x


class Initializer(Settings):
    """A Keras initializer: a name plus its arguments (mean/stddev, minval/maxval, value)."""

    name: str
    mean: float | None = None
    stddev: float | None = Field(default=None, gt=0)
    minval: float | None = None
    maxval: float | None = None
    value: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return check_name(v, INITIALIZERS, "initializer")

    @model_validator(mode="after")
    def _defaults(self) -> "Initializer":
        allowed = INITIALIZER_DEFAULTS.get(self.name, {})
        given = {k for k in ("mean", "stddev", "minval", "maxval", "value") if getattr(self, k) is not None}
        extra = given - set(allowed)
        if extra:
            raise ValueError(f"initializer '{self.name}' takes no argument {sorted(extra)}"
                             + (f"; it takes {sorted(allowed)}" if allowed else ""))
        for key, default in allowed.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, default)
        if self.name == "random_uniform" and not self.minval < self.maxval:
            raise ValueError(f"random_uniform needs minval < maxval, got {self.minval} >= {self.maxval}")
        return self

    def draw(self, rng: np.random.Generator, shape: Shape) -> np.ndarray:
        """A tensor as Keras' initializer of this name would draw it.

        Fans as Keras' `compute_fans`: a Dense kernel (in, out); a convolution kernel
        (kh, kw, in, out) has fan_in = kh*kw*in and fan_out = kh*kw*out.

        Drawn on the host with NumPy: the same distributions as Keras (Keras' own random
        streams cannot be reproduced by any other library anyway), and no compilation, where
        JAX's jitted initializers cost about 2 s of XLA compile time per network on a CPU.
        """
        receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        fan_in, fan_out = (shape[-2] * receptive, shape[-1] * receptive) if len(shape) >= 2 else (shape[0], shape[0])
        fans = {"glorot": (fan_in + fan_out) / 2, "he": fan_in / 2, "lecun": fan_in}
        family, _, dist = self.name.partition("_")
        if family in fans:
            variance = 1.0 / fans[family]  # scale / fan: he's scale 2 is folded into its fan
            if dist == "normal":
                out = np.sqrt(variance) / TRUNCATION_STDDEV * _truncated_normal(rng, shape)
            else:
                limit = np.sqrt(3.0 * variance)
                out = rng.uniform(-limit, limit, shape)
        elif self.name in ("zeros", "ones", "constant"):
            out = np.full(shape, {"zeros": 0.0, "ones": 1.0}.get(self.name, self.value))
        elif self.name == "random_normal":
            out = self.mean + self.stddev * rng.standard_normal(shape)
        elif self.name == "random_uniform":
            out = rng.uniform(self.minval, self.maxval, shape)
        elif self.name == "truncated_normal":
            out = self.mean + self.stddev * _truncated_normal(rng, shape)
        else:
            raise AssertionError(f"initializer {self.name} is validated but not drawn here")
        return out.astype(np.float32)


# The string forms of Keras' regularizers mean a factor of 0.01.
REGULARIZER_STRINGS: dict[str, dict[str, float]] = {
    "l1": {"l1": 0.01, "l2": 0.0},
    "l2": {"l1": 0.0, "l2": 0.01},
    "l1_l2": {"l1": 0.01, "l2": 0.01},
}


class Regularizer(Settings):
    """Keras' l1 / l2 / l1_l2: penalty = l1 * sum(|w|) + l2 * sum(w**2), no mean, no 1/2."""

    l1: float = Field(default=0.0, ge=0)
    l2: float = Field(default=0.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            if data not in REGULARIZER_STRINGS:
                raise ValueError(f"unknown regularizer '{data}': {suggest(data, tuple(REGULARIZER_STRINGS))}")
            return REGULARIZER_STRINGS[data]
        return data


def terms(reg: Regularizer | None) -> tuple[bool, bool]:
    """Which of a regularizer's l1 and l2 terms are there at all.

    Part of the program's structure: a term whose strength is 0 is left out of the
    compiled step (an l1 sum over a 784x1000 kernel costs a full read of it per step,
    even when multiplied by zero), so members with and without it train apart.
    """
    return (reg is not None and reg.l1 > 0, reg is not None and reg.l2 > 0)


class MaxNorm(Settings):
    """Keras' MaxNorm constraint: each unit's incoming weight vector is scaled back to norm <= max_value."""

    max_value: float = Field(default=2.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _from_number(cls, data: Any) -> Any:
        return {"max_value": data} if isinstance(data, (int, float)) else data


# ------------------------------------------------------------------ shapes and windows


def _pair(data: Any, *names: str) -> Any:
    """Keras takes `kernel_size = 3` for (3, 3): widen the named fields' ints to pairs."""
    if isinstance(data, dict):
        data = dict(data)
        for name in names:
            if isinstance(data.get(name), int):
                data[name] = (data[name], data[name])
    return data


Pair = tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]]
Padding = Literal["valid", "same"]
FillMode = Literal["reflect", "constant", "nearest", "wrap"]


def same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    """TensorFlow's (and Keras') "same": pad to ceil(n / s) outputs, the odd pixel after."""
    total = max((-(-size // stride) - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def window_output(size: int, window: int, stride: int, padding: str) -> int:
    """Keras' output length along one axis: ceil(n / s) for "same", floor((n - k) / s) + 1 for "valid"."""
    return -(-size // stride) if padding == "same" else (size - window) // stride + 1


def _windowed(before: Shape, window: Pair, strides: Pair, padding: str, channels: int) -> Shape:
    hw = [window_output(before[a], window[a], strides[a], padding) for a in (0, 1)]
    if min(hw) < 1:
        raise ValueError(f"a {window[0]}x{window[1]} window does not fit its {before[0]}x{before[1]} input; use "
                         "padding = \"same\", a smaller window or fewer pooling layers before it")
    return (*hw, channels)


def _image(before: Shape) -> Shape:
    """`before`, which must be an image (H, W, C)."""
    if len(before) != 3:
        raise ValueError(f"needs an image (height, width, channels) but gets a vector of {before[0]}: put it "
                         "before the flatten layer")
    return before


def onnx_pads(before: Shape, window: Pair, strides: Pair, padding: str) -> list[int]:
    """ONNX's `pads` for a window over an (H, W, ...) input: [top, left, bottom, right]."""
    if padding == "valid":
        return [0, 0, 0, 0]
    (top, bottom), (left, right) = (same_padding(before[a], window[a], strides[a]) for a in (0, 1))
    return [top, left, bottom, right]


# ONNX's convolution and pooling take channels first (see export): perms to and from it.
NHWC_TO_NCHW, NCHW_TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


# ------------------------------------------------------------------ the base


# What a field does to a population (see populations.ROLES): it shapes the compiled
# program, it is a number each member feeds the program, or it is a table of its own.
PROGRAM, NUMBER, NESTED = "program", "number", "nested"


def field_roles(program: tuple[str, ...] = (), number: tuple[str, ...] = (),
                nested: tuple[str, ...] = ()) -> dict[str, str]:
    """A layer type's field -> role; its `type` shapes the program."""
    return {"type": PROGRAM, **dict.fromkeys(program, PROGRAM), **dict.fromkeys(number, NUMBER),
            **dict.fromkeys(nested, NESTED)}


class Layer(Settings):
    """What every layer type answers; the defaults are a weightless identity at inference."""

    type: str
    # A model holding a layer that takes an image sees its input as (H, W, C); otherwise
    # the input is flattened, as the dense lessons do.
    takes_image: ClassVar[bool] = False
    # The settings predict's /api/model shows: what the layer computes at inference (not its
    # initializers or penalties); none for flatten, pooling to a vector and augmentation.
    described: ClassVar[tuple[str, ...]] = ()
    roles: ClassVar[dict[str, str]] = field_roles()
    # Under a mixed dtype policy, compute in float32 anyway (see model.apply_layer).
    float32_compute: ClassVar[bool] = False

    def output_shape(self, before: Shape) -> Shape:
        """The shape of one sample after this layer, or a ValueError saying why it cannot fit."""
        return before

    def weight_shapes(self, before: Shape) -> dict[str, Shape]:
        return {}

    def init_weights(self, before: Shape, stream: Callable[[int], np.random.Generator]) -> dict[str, np.ndarray]:
        """Fresh weights; `stream(i)` is this layer's i-th random stream."""
        return {}

    def numbers(self) -> dict[str, float]:
        """The settings a population may vary per member (compiled as inputs, not constants)."""
        return {}

    def structure(self) -> tuple:
        """What shapes the program: equal structures share one compilation."""
        return (self.type,)

    def apply(self, x: jax.Array, weights: Arrays, numbers: Arrays, *, output: bool = False,
              key: jax.Array | None = None, weight: jax.Array | None = None) -> tuple[jax.Array, Arrays]:
        """(output, moved statistics). `output`: this layer's softmax/sigmoid is the model's
        output, left to the loss. `key=None` means inference; in training `weight` (N,)
        marks the samples batch statistics are taken over."""
        return x, {}

    def regularizers(self) -> dict[str, Regularizer]:
        """The penalized weights' regularizers, by weight name."""
        return {}

    def constrain(self, weights: Arrays, numbers: Arrays) -> Arrays:
        """The weights a constraint changes after an update (Keras' kernel_constraint)."""
        return {}

    def onnx(self, graph, x: str, name: str, weights: Arrays, before: Shape) -> str:
        """Append this layer's nodes to `graph` (an `export.Graph`); returns its output."""
        return x

    def summary_settings(self) -> dict[str, Any]:
        """The settings the report's layer table shows: those not left at their default."""
        return self.model_dump(exclude_defaults=True, exclude={"type"})

    def kept_for_backward(self, before: Shape, after: Shape) -> int:
        """Numbers per sample kept for the backward pass besides the layer's output."""
        return 0


# ------------------------------------------------------------------ dense and activation


_WEIGHT_TABLES = ("kernel_initializer", "bias_initializer", "kernel_regularizer", "bias_regularizer")


class _Weighted(Layer):
    """What Dense and Conv2D share: a kernel, a bias, Keras' initializers and penalties, an
    activation. The fields are declared in each (in Keras' order, as its get_config lists them)."""

    def _kernel_shape(self, before: Shape) -> Shape:
        raise NotImplementedError

    def weight_shapes(self, before: Shape) -> dict[str, Shape]:
        kernel = self._kernel_shape(before)
        return {"kernel": kernel, "bias": (kernel[-1],)} if self.use_bias else {"kernel": kernel}

    def init_weights(self, before, stream):
        # Each tensor has its own stream: draws do not depend on the other tensors.
        return {which: getattr(self, f"{which}_initializer").draw(stream(i), shape)
                for i, (which, shape) in enumerate(self.weight_shapes(before).items())}

    def regularizers(self) -> dict[str, Regularizer]:
        # Keras: no bias, no penalty on it.
        found = {"kernel": self.kernel_regularizer, "bias": self.bias_regularizer if self.use_bias else None}
        return {which: reg for which, reg in found.items() if reg is not None}

    def numbers(self) -> dict[str, float]:
        out = {}
        for which in ("kernel", "bias"):
            reg = getattr(self, f"{which}_regularizer")
            if reg is not None:
                out[f"{which}_l1"], out[f"{which}_l2"] = reg.l1, reg.l2
        return out

    def _activate(self, x: jax.Array, output: bool) -> jax.Array:
        return x if output else ACTIVATION_FNS[self.activation](x)


class Dense(_Weighted):
    type: Literal["dense"] = "dense"
    units: int = Field(gt=0)
    activation: ActivationName = "linear"
    use_bias: bool = True
    kernel_initializer: Initializer = Initializer(name="glorot_uniform")
    bias_initializer: Initializer = Initializer(name="zeros")
    kernel_regularizer: Regularizer | None = None
    bias_regularizer: Regularizer | None = None
    kernel_constraint: MaxNorm | None = None
    described: ClassVar = ("units", "activation")
    # Whether a penalty term or a constraint is there at all is program (`terms`); its strength a number.
    roles: ClassVar = field_roles(program=("units", "activation", "use_bias"),
                                  nested=(*_WEIGHT_TABLES, "kernel_constraint"))

    def output_shape(self, before):
        if len(before) != 1:
            raise ValueError(f"gets an image {before}; add a flatten or global_average_pooling2d layer before it")
        return (self.units,)

    def _kernel_shape(self, before):
        return (before[0], self.units)

    def numbers(self):
        out = super().numbers()
        if self.kernel_constraint is not None:
            out["max_norm"] = self.kernel_constraint.max_value
        return out

    def structure(self):
        return ("dense", self.units, self.activation, self.use_bias, terms(self.kernel_regularizer),
                terms(self.bias_regularizer), self.kernel_constraint is not None)

    def apply(self, x, weights, numbers, *, output=False, key=None, weight=None):
        x = matmul(x, weights["kernel"])
        return self._activate(x + weights["bias"] if self.use_bias else x, output), {}

    def constrain(self, weights, numbers):
        """Keras' MaxNorm: w * clip(norm, 0, c) / (1e-7 + norm), norms per unit."""
        if self.kernel_constraint is None:
            return {}
        w = weights["kernel"]
        norms = jnp.sqrt(jnp.sum(w * w, axis=0, keepdims=True))
        return {"kernel": w * (jnp.clip(norms, 0.0, numbers["max_norm"]) / (1e-7 + norms))}

    def onnx(self, graph, x, name, weights, before):
        x = graph.node("MatMul", [x, graph.const(f"{name}/kernel", weights["kernel"])], f"{name}/matmul")
        if self.use_bias:
            x = graph.node("Add", [x, graph.const(f"{name}/bias", weights["bias"])], f"{name}/bias_add")
        return graph.activation(x, name, self.activation)


class Activation(Layer):
    type: Literal["activation"] = "activation"
    activation: ActivationName
    described: ClassVar = ("activation",)
    roles: ClassVar = field_roles(program=("activation",))

    def structure(self):
        return ("activation", self.activation)

    def apply(self, x, weights, numbers, *, output=False, key=None, weight=None):
        return (x if output else ACTIVATION_FNS[self.activation](x)), {}

    def onnx(self, graph, x, name, weights, before):
        return graph.activation(x, name, self.activation)


def dropout(x: jax.Array, rate: jax.Array | float, key: jax.Array) -> jax.Array:
    # Inverted dropout (Keras): zero with probability `rate`, scale survivors by 1/(1-rate),
    # so nothing changes at inference.
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


class Dropout(Layer):
    """Inverted dropout: zero each unit with probability `rate`, scale survivors by 1/(1-rate)."""

    type: Literal["dropout"] = "dropout"
    rate: float = Field(ge=0.0, lt=1.0)
    described: ClassVar = ("rate",)
    roles: ClassVar = field_roles(number=("rate",))

    def numbers(self):
        return {"rate": self.rate}

    def apply(self, x, weights, numbers, *, output=False, key=None, weight=None):
        return (x if key is None else dropout(x, numbers["rate"], key)), {}


# ------------------------------------------------------------------ convolution and pooling


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x @ w, Dense's and Conv2D's product; in bfloat16 (a mixed policy), summed in float32
    and rounded once.

    The same numbers as Keras' `ops.matmul` under mixed_bfloat16, but asked for as a float32
    result: XLA's CPU backend runs that on the bfloat16 matrix units (AVX512-BF16, AMX) and
    a bfloat16 result through a slower path (measured: 2.8x faster at 1024x784 @ 784x1000).
    """
    if jnp.result_type(x, w) != jnp.bfloat16:
        return x @ w
    return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(jnp.bfloat16)


def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: str, *,
           im2col: bool | None = None) -> jax.Array:
    """Keras' Conv2D (a cross-correlation) of (N, H, W, C) images with a (kh, kw, C, F) kernel.

    On a CPU as one matrix product of the image patches with the kernel (im2col), not
    XLA's convolution: measured for the `cnn` preset's step, XLA's CPU convolution and its
    gradients took 0.52 s where the patch matrix product takes 0.03 s (it runs on the
    same tuned matrix kernels as Dense). Elsewhere (GPU: cuDNN) XLA's own convolution.
    `im2col` overrides that choice (the tests check both ways on any machine).
    """
    kh, kw, c, f = kernel.shape
    sh, sw = strides
    if padding == "same":
        x = jnp.pad(x, ((0, 0), same_padding(x.shape[1], kh, sh), same_padding(x.shape[2], kw, sw), (0, 0)))
    if not (jax.default_backend() == "cpu" if im2col is None else im2col):
        return jax.lax.conv_general_dilated(x, kernel, strides, "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return _patch_product(x, kernel, (sh, sw))


def _patches(x: jax.Array, kernel_shape: Shape, strides: tuple[int, int]) -> jax.Array:
    """(N, OH, OW, kh * kw * C): each output pixel's input window, features ordered (row,
    column, channel) as kernel.reshape(-1, F) orders them.

    One gather of pixel vectors at indices fixed at trace time: XLA writes the patch
    matrix in one pass, where a concatenation of the kh x kw shifted windows wrote each
    window and then copied it into place (measured: 4.6x the gather's time for the `cnn`
    preset's second convolution, 1.7x for its first; the `speedrun` preset's step 0.94x).
    The gather reads each pixel up to kh x kw times, so x should be cheap to read: XLA
    fuses x's producer into it (see `model.augment` for one that is not).
    """
    kh, kw, _, _ = kernel_shape
    (sh, sw), (n, h, w, c) = strides, x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    return x.reshape(n, h * w, c)[:, _window_pixels(h, w, kh, kw, sh, sw)].reshape(n, oh, ow, kh * kw * c)


@functools.cache
def _window_pixels(h: int, w: int, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """(OH * OW, kh * kw): the flat pixel index of each tap of each output pixel's window."""
    rows = np.arange(0, h - kh + 1, sh)[:, None, None, None] + np.arange(kh)[None, None, :, None]
    cols = np.arange(0, w - kw + 1, sw)[None, :, None, None] + np.arange(kw)[None, None, None, :]
    return (rows * w + cols).reshape(len(rows) * cols.shape[1], kh * kw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _patch_product(x: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
    """A valid convolution as patches @ kernel, with its gradient written by hand.

    The input gradient is summed tap by tap: one (N, OH, OW, C) product per kernel
    position, each padded into place, all added in one pass. Autodiff of the forward
    product builds the gradient of the whole patch matrix instead and cuts it into its
    kh x kw windows with strided copies (measured on the `cnn` preset's step: 12% longer
    on an AVX2 CPU; one product of the whole patch gradient, cut the same way, 8% longer;
    three products of a kernel row each, equal).
    """
    return _patch_product_forward(x, kernel, strides)[0]


def _patch_product_forward(x, kernel, strides):
    patches = _patches(x, kernel.shape, strides)
    return matmul(patches, kernel.reshape(-1, kernel.shape[-1])), (x.shape, patches, kernel)


def _patch_product_backward(strides, saved, grad):
    (_, h, w, _), patches, kernel = saved
    kh, kw, _, f = kernel.shape
    _, oh, ow, _ = grad.shape
    (sh, sw), zero = strides, jnp.zeros((), grad.dtype)
    rows = grad.reshape(-1, f)
    kernel_grad = matmul(patches.reshape(rows.shape[0], -1).T, rows).reshape(kernel.shape)
    # Tap (i, j) read x[i + sh * r, j + sw * s]: its share goes back there (interior padding
    # spreads a strided tap's rows and columns apart).
    placed = [jax.lax.pad(matmul(grad, kernel[i, j].T), zero,
                          ((0, 0, 0), (i, h - i - (oh - 1) * sh - 1, sh - 1), (j, w - j - (ow - 1) * sw - 1, sw - 1),
                           (0, 0, 0)))
              for i in range(kh) for j in range(kw)]
    # Summed along a stacked axis, XLA reads the taps in one loop (4% of the step against a
    # chain of additions, which it leaves to separate passes).
    return jnp.sum(jnp.stack(placed), axis=0), kernel_grad


_patch_product.defvjp(_patch_product_forward, _patch_product_backward)


class Conv2D(_Weighted):
    """Keras' Conv2D on channels-last images: kernel (kh, kw, in, filters), cross-correlation."""

    type: Literal["conv2d"] = "conv2d"
    filters: int = Field(gt=0)
    kernel_size: Pair
    strides: Pair = (1, 1)
    padding: Padding = "valid"
    activation: ActivationName = "linear"
    use_bias: bool = True
    kernel_initializer: Initializer = Initializer(name="glorot_uniform")
    bias_initializer: Initializer = Initializer(name="zeros")
    kernel_regularizer: Regularizer | None = None
    bias_regularizer: Regularizer | None = None
    takes_image: ClassVar = True
    described: ClassVar = ("filters", "kernel_size", "strides", "padding", "activation")
    roles: ClassVar = field_roles(program=("filters", "kernel_size", "strides", "padding", "activation", "use_bias"),
                                  nested=_WEIGHT_TABLES)

    @model_validator(mode="before")
    @classmethod
    def _pairs(cls, data: Any) -> Any:
        return _pair(data, "kernel_size", "strides")

    def output_shape(self, before):
        return _windowed(_image(before), self.kernel_size, self.strides, self.padding, self.filters)

    def _kernel_shape(self, before):
        return (*self.kernel_size, before[-1], self.filters)

    def structure(self):
        return ("conv2d", self.filters, self.kernel_size, self.strides, self.padding, self.activation,
                self.use_bias, terms(self.kernel_regularizer), terms(self.bias_regularizer))

    def apply(self, x, weights, numbers, *, output=False, key=None, weight=None):
        x = conv2d(x, weights["kernel"], self.strides, self.padding)
        return self._activate(x + weights["bias"] if self.use_bias else x, output), {}

    def kept_for_backward(self, before, after):
        # The patch matrix: kh * kw * channels per output pixel.
        return after[0] * after[1] * self.kernel_size[0] * self.kernel_size[1] * before[-1]

    def onnx(self, graph, x, name, weights, before):
        # Keras' kernel (kh, kw, in, out) is ONNX's (out, in, kh, kw); both cross-correlate.
        inputs = [x, graph.const(f"{name}/kernel", np.transpose(weights["kernel"], (3, 2, 0, 1)))]
        if self.use_bias:
            inputs.append(graph.const(f"{name}/bias", weights["bias"]))
        # kernel_shape is left out: ONNX takes it from the kernel.
        x = graph.node("Conv", inputs, f"{name}/conv", strides=list(self.strides),
                       pads=onnx_pads(before, self.kernel_size, self.strides, self.padding))
        return graph.activation(x, name, self.activation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _window_max(windows: jax.Array, size: tuple[int, int]) -> jax.Array:
    """The maximum of each window of (N, OH, PH, OW, PW, C) side-by-side windows of `size`
    (PH, PW).

    Its gradient goes to the first maximum of a window in row-major order, all of it:
    Keras' gradient on every backend (JAX's `reduce_window`, TensorFlow's MaxPoolGrad,
    PyTorch's argmax). Ties are common here (a window of background pixels, of ReLU zeros),
    and JAX's gradient of `max` would split them evenly. Written by hand for speed too: the
    gradient is one pass writing the input's shape, where `max`'s is five (measured on an
    AVX2 CPU: the `cnn` preset's step 0.80x as long).
    """
    return windows.max(axis=(2, 4))


def _first_maximum(windows: jax.Array) -> jax.Array:
    """(N, OH, OW, C): the row-major position in its window of each window's first maximum.

    A running maximum compared strictly, not equality with `max`'s result: XLA may
    recompute the windows in another fusion, rounded otherwise, and a window none of whose
    pixels then equalled its maximum would lose its gradient.
    """
    _, _, ph, _, pw, _ = windows.shape
    best = windows[:, :, 0, :, 0, :]
    where = jnp.zeros(best.shape, jnp.int32)
    for k in range(1, ph * pw):
        pixel = windows[:, :, k // pw, :, k % pw, :]
        larger = pixel > best
        best, where = jnp.where(larger, pixel, best), jnp.where(larger, k, where)
    return where


def _window_max_forward(windows, size):
    return windows.max(axis=(2, 4)), _first_maximum(windows)


def _window_max_backward(size, where, grad):
    ph, pw = size
    zero = jnp.zeros_like(grad)
    rows = [jnp.stack([jnp.where(where == i * pw + j, grad, zero) for j in range(pw)], axis=3)  # (N, OH, OW, PW, C)
            for i in range(ph)]
    return (jnp.stack(rows, axis=2),)


_window_max.defvjp(_window_max_forward, _window_max_backward)


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
        return _window_max(windows, (ph, pw)) if kind == "max" else windows.mean(axis=(2, 4))
    pads = ((0, 0), same_padding(h, ph, sh), same_padding(w, pw, sw), (0, 0)) if padding == "same" else "VALID"
    dims, steps = (1, ph, pw, 1), (1, sh, sw, 1)
    if kind == "max":
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, steps, pads)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, steps, pads)
    covered = jax.lax.reduce_window(jnp.ones((1, h, w, 1), x.dtype), 0.0, jax.lax.add, dims, steps, pads)
    return total / covered


class MaxPooling2D(Layer):
    """Keras' MaxPooling2D; `strides` defaults to `pool_size` (windows side by side)."""

    type: Literal["max_pooling2d"] = "max_pooling2d"
    pool_size: Pair = (2, 2)
    strides: Pair | None = None
    padding: Padding = "valid"
    takes_image: ClassVar = True
    described: ClassVar = ("pool_size", "strides", "padding")
    roles: ClassVar = field_roles(program=("pool_size", "strides", "padding"))
    _reduction: ClassVar[str] = "max"

    @model_validator(mode="before")
    @classmethod
    def _pairs(cls, data: Any) -> Any:
        return _pair(data, "pool_size", "strides")

    @model_validator(mode="after")
    def _default_strides(self):
        if self.strides is None:
            object.__setattr__(self, "strides", self.pool_size)
        return self

    def output_shape(self, before):
        return _windowed(_image(before), self.pool_size, self.strides, self.padding, before[-1])

    def structure(self):
        return (self.type, self.pool_size, self.strides, self.padding)

    def apply(self, x, weights, numbers, *, output=False, key=None, weight=None):
        return pool2d(x, self._reduction, self.pool_size, self.strides, self.padding), {}

    def summary_settings(self):
        # strides default to the pool size: show the size, and strides only where they differ.
        shown = super().summary_settings()
        if tuple(shown.get("strides", ())) == self.pool_size:
            del shown["strides"]
        return {"pool_size": self.pool_size, **shown}

    def onnx(self, graph, x, name, weights, before):
        # Padding never wins a max.
        return graph.node("MaxPool", [x], f"{name}/max_pool", **self._onnx_window(before))

    def _onnx_window(self, before):
        return dict(kernel_shape=list(self.pool_size), strides=list(self.strides),
                    pads=onnx_pads(before, self.pool_size, self.strides, self.padding))


class AveragePooling2D(MaxPooling2D):
    """Keras' AveragePooling2D; with padding "same", border windows average what they cover."""

    type: Literal["average_pooling2d"] = "average_pooling2d"  # type: ignore[assignment]
    _reduction: ClassVar[str] = "average"

    def onnx(self, graph, x, name, weights, before):
        # Keras averages a border window over the pixels it covers, not over the padding
        # too: ONNX's default (count_include_pad = 0).
        return graph.node("AveragePool", [x], f"{name}/average_pool", **self._onnx_window(before))


class Flatten(Layer):
    type: Literal["flatten"] = "flatten"
    takes_image: ClassVar = True

    def output_shape(self, before):
        return (int(math.prod(before)),)

    def apply(self, x, weights, numbers, *, output=False, key=None, weight=None):
        return x.reshape(x.shape[0], -1), {}

    def onnx(self, graph, x, name, weights, before):
        # Keras flattens (H, W, C) row by row, channels fastest. Transposing back to NHWC
        # first, rather than permuting the next Dense kernel's rows to match NCHW order, keeps
        # the graph a layer-by-layer copy of the Keras model with the Dense kernels exactly as
        # saved, and stays right whatever comes between Flatten and the Dense (a batch
        # normalization over the flattened features, dropout, another activation), which a
        # row permutation tied to "the next Dense" would not. It costs one copy of a small tensor.
        if len(before) == 3:
            x = graph.node("Transpose", [x], f"{name}/nhwc", perm=NCHW_TO_NHWC)
        return graph.node("Flatten", [x], f"{name}/flatten")  # ONNX's default axis 1: (N, C)


class GlobalAveragePooling2D(Layer):
    """The mean of each channel over the image: (H, W, C) -> (C,)."""

    type: Literal["global_average_pooling2d"] = "global_average_pooling2d"
    takes_image: ClassVar = True

    def output_shape(self, before):
        return (_image(before)[2],)

    def apply(self, x, weights, numbers, *, output=False, key=None, weight=None):
        return jnp.mean(x, axis=(1, 2)), {}

    def onnx(self, graph, x, name, weights, before):
        x = graph.node("GlobalAveragePool", [x], f"{name}/mean")  # (N, C, 1, 1)
        return graph.node("Flatten", [x], f"{name}/flatten")  # ONNX's default axis 1: (N, C)


# ------------------------------------------------------------------ batch normalization


STATISTICS = ("moving_mean", "moving_variance")  # weights Keras saves but never trains


class BatchNormalization(Layer):
    """Keras' BatchNormalization over the last axis.

    Training: normalise with the batch's mean and (biased) variance, and move
    moving = momentum * moving + (1 - momentum) * batch. Inference: use the moving ones.
    """

    type: Literal["batch_normalization"] = "batch_normalization"
    momentum: float = Field(default=0.99, ge=0.0, lt=1.0)
    epsilon: float = Field(default=1e-3, gt=0.0)
    center: bool = True
    scale: bool = True
    described: ClassVar = ("epsilon", "center", "scale")
    # epsilon is read at inference too, so it is compiled in; momentum only in training.
    roles: ClassVar = field_roles(program=("epsilon", "center", "scale"), number=("momentum",))
    # Keras 3 normalizes bfloat16 inputs in float32: a variance in bfloat16 loses too much.
    float32_compute: ClassVar = True

    def weight_shapes(self, before):
        kept = [("gamma", self.scale), ("beta", self.center), ("moving_mean", True), ("moving_variance", True)]
        return {which: (before[-1],) for which, there in kept if there}

    def init_weights(self, before, stream):
        start = {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0}  # as Keras
        return {which: np.full(shape, start[which], np.float32) for which, shape in self.weight_shapes(before).items()}

    def numbers(self):
        return {"momentum": self.momentum}  # epsilon is read at inference too: structure

    def structure(self):
        return (self.type, self.center, self.scale, self.epsilon)

    def apply(self, x, weights, numbers, *, output=False, key=None, weight=None):
        """Normalise over every axis but the last: batch statistics in training, moving ones at inference."""
        if key is None:
            mean, var, moved = weights["moving_mean"], weights["moving_variance"], {}
        else:
            axes = tuple(range(x.ndim - 1))
            w = weight.reshape(-1, *([1] * (x.ndim - 1)))
            count = jnp.maximum(jnp.sum(weight), 1.0) * (x.size // (x.shape[0] * x.shape[-1]))
            mean = jnp.sum(x * w, axes) / count
            var = jnp.sum(jnp.square(x - mean) * w, axes) / count  # biased, as Keras' moments
            m = numbers["momentum"]
            moved = {"moving_mean": m * weights["moving_mean"] + (1 - m) * mean,
                     "moving_variance": m * weights["moving_variance"] + (1 - m) * var}
        x = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        if self.scale:
            x = x * weights["gamma"]
        if self.center:
            x = x + weights["beta"]
        return x, moved

    def onnx(self, graph, x, name, weights, before):
        """ONNX's inference form over axis 1 (channels or features); gamma 1 and beta 0
        where the layer has none (scale / center false)."""
        mean = weights["moving_mean"]
        gamma = weights["gamma"] if self.scale else np.ones_like(mean)
        beta = weights["beta"] if self.center else np.zeros_like(mean)
        inputs = [x, graph.const(f"{name}/gamma", gamma), graph.const(f"{name}/beta", beta),
                  graph.const(f"{name}/moving_mean", mean),
                  graph.const(f"{name}/moving_variance", weights["moving_variance"])]
        return graph.node("BatchNormalization", inputs, f"{name}/batch_norm", epsilon=self.epsilon)


# ------------------------------------------------------------------ augmentation


class Augmentation(Layer):
    """Keras' preprocessing layers: active in training only, identity at inference.

    Consecutive augmentation layers are applied as one resampling (model.augment): each
    says, through `coordinates`, where an output pixel reads its input.
    """

    # Keras' default fill mode is "reflect"; for digits on black, "constant" (0) is usual.
    fill_mode: FillMode = "reflect"
    fill_value: float = 0.0
    takes_image: ClassVar = True
    _factors: ClassVar[tuple[str, ...]] = ()  # the numbers a member may vary

    def output_shape(self, before):
        return _image(before)

    def numbers(self):
        # Keras' width_factor = None for zoom: the height's draw, aspect kept (-1 flags it).
        out = {key: -1.0 if getattr(self, key) is None else getattr(self, key) for key in self._factors}
        return {**out, "fill_value": self.fill_value}

    def structure(self):
        return (self.type, self.fill_mode)

    def coordinates(self, numbers: Arrays, key: jax.Array, coords: jax.Array, center: jax.Array,
                    size: tuple[int, int]) -> jax.Array:
        """Where each output pixel (N, 2, H, W) of this layer reads its input, for images
        whose output pixels sit at `coords`; draws per image from `key`."""
        raise NotImplementedError


def _augmentation_roles(*factors: str) -> dict[str, str]:
    # fill_mode is compiled in (map_coordinates takes it as a constant); the rest are numbers.
    return field_roles(program=("fill_mode",), number=(*factors, "fill_value"))


def _uniform(key: jax.Array, shape: Shape) -> jax.Array:
    return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)


class RandomTranslation(Augmentation):
    """Shift by up to height_factor * H rows and width_factor * W columns, uniformly drawn."""

    type: Literal["random_translation"] = "random_translation"
    height_factor: float = Field(ge=0.0, le=1.0)
    width_factor: float = Field(ge=0.0, le=1.0)
    _factors: ClassVar = ("height_factor", "width_factor")
    roles: ClassVar = _augmentation_roles("height_factor", "width_factor")

    def coordinates(self, numbers, key, coords, center, size):
        n, (h, w) = coords.shape[0], size
        k1, k2 = jax.random.split(key)
        shift = jnp.stack([_uniform(k1, (n,)) * numbers["height_factor"] * h,
                           _uniform(k2, (n,)) * numbers["width_factor"] * w], 1)
        return coords - shift.reshape(n, 2, 1, 1)


class RandomRotation(Augmentation):
    """Rotate by an angle drawn uniformly in [-factor, factor] * 2 pi (Keras' unit)."""

    type: Literal["random_rotation"] = "random_rotation"
    factor: float = Field(ge=0.0, le=1.0)
    _factors: ClassVar = ("factor",)
    roles: ClassVar = _augmentation_roles("factor")

    def coordinates(self, numbers, key, coords, center, size):
        n = coords.shape[0]
        k1, _ = jax.random.split(key)
        angle = (_uniform(k1, (n,)) * numbers["factor"] * 2 * jnp.pi).reshape(n, 1, 1)
        dy, dx = coords[:, 0] - center[:, 0], coords[:, 1] - center[:, 1]
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        return jnp.stack([cos * dy - sin * dx, sin * dy + cos * dx], 1) + center


class RandomZoom(Augmentation):
    """Scale by 1 + u, u uniform in [-height_factor, height_factor]; positive u zooms out.

    `width_factor = None` (Keras' default) zooms both axes alike, keeping the aspect.
    """

    type: Literal["random_zoom"] = "random_zoom"
    height_factor: float = Field(ge=0.0, lt=1.0)
    width_factor: float | None = Field(default=None, ge=0.0, lt=1.0)
    _factors: ClassVar = ("height_factor", "width_factor")
    # width_factor None or a number is program too (`structure`); its value is not.
    roles: ClassVar = _augmentation_roles("height_factor", "width_factor")

    def structure(self):
        # A separate width draw or not changes the program; the factors do not.
        return (self.type, self.fill_mode, self.width_factor is None)

    def coordinates(self, numbers, key, coords, center, size):
        n = coords.shape[0]
        k1, k2 = jax.random.split(key)
        zoom_h = 1.0 + _uniform(k1, (n,)) * numbers["height_factor"]
        zoom_w = zoom_h if self.width_factor is None else 1.0 + _uniform(k2, (n,)) * numbers["width_factor"]
        return center + (coords - center) * jnp.stack([zoom_h, zoom_w], 1).reshape(n, 2, 1, 1)


class ElasticDistortion(Augmentation):
    """Not Keras: Simard et al. (2003). Each pixel moves by alpha * (a field of uniform(-1, 1)
    noise smoothed by a Gaussian of std `sigma` pixels)."""

    type: Literal["elastic_distortion"] = "elastic_distortion"
    alpha: float = Field(ge=0.0)
    sigma: float = Field(gt=0.0)
    _factors: ClassVar = ("alpha", "sigma")
    roles: ClassVar = _augmentation_roles("alpha", "sigma")

    def coordinates(self, numbers, key, coords, center, size):
        # Uniform noise per pixel and axis, smoothed by a Gaussian (as two small matrix
        # products, zero beyond the border), scaled by alpha.
        n, (h, w) = coords.shape[0], size
        k1, _ = jax.random.split(key)
        noise = _uniform(k1, (n, 2, h, w))
        sigma = numbers["sigma"]
        smooth = lambda m: jnp.exp(-0.5 * jnp.square((jnp.arange(m)[:, None] - jnp.arange(m)[None, :]) / sigma))
        norm = jnp.sqrt(2 * jnp.pi) * sigma  # a full Gaussian's sum: the border keeps its fall-off
        field = jnp.einsum("ij,najk,lk->nail", smooth(h), noise, smooth(w)) / (norm * norm)
        return coords + numbers["alpha"] * field


def _cross_extremes(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(min, max) of each pixel of (N, H, W, C) and its four axis neighbours, 0 beyond the
    border: grey-level erosion and dilation by a 3x3 cross."""
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1], x.shape[2]
    around = [padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]
    return functools.reduce(jnp.minimum, around, x), functools.reduce(jnp.maximum, around, x)


class RandomStrokeWidth(Layer):
    """Not Keras: strokes made thinner or thicker, as by another pen. Each image draws u
    uniformly in [-factor, factor] and moves |u| of the way to its grey-level erosion
    (u < 0) or dilation (u > 0) by a 3x3 cross. Active in training only.

    Why a blend: MNIST's strokes are two or three pixels wide, so a whole erosion step
    erases thin digits; a fraction of one gives the widths in between.
    """

    type: Literal["random_stroke_width"] = "random_stroke_width"
    factor: float = Field(ge=0.0, le=1.0)
    takes_image: ClassVar = True
    roles: ClassVar = field_roles(number=("factor",))

    def output_shape(self, before):
        return _image(before)

    def numbers(self):
        return {"factor": self.factor}

    def apply(self, x, weights, numbers, *, output=False, key=None, weight=None):
        if key is None:
            return x, {}
        u = _uniform(key, (x.shape[0], 1, 1, 1)) * numbers["factor"]
        thinner, thicker = _cross_extremes(x)
        return x + jnp.maximum(u, 0.0) * (thicker - x) + jnp.maximum(-u, 0.0) * (thinner - x), {}


# Every layer type, written once: the specification's union and every consumer read it.
TYPES: tuple[type[Layer], ...] = (Dense, Activation, Dropout, Conv2D, MaxPooling2D, AveragePooling2D, Flatten,
                                  GlobalAveragePooling2D, BatchNormalization, RandomTranslation, RandomRotation,
                                  RandomZoom, ElasticDistortion, RandomStrokeWidth)
BY_NAME: dict[str, type[Layer]] = {cls.model_fields["type"].default: cls for cls in TYPES}
NAMES = tuple(BY_NAME)
