"""What to train, in Keras' words: a validated, fully explicit run specification.

A `RunSpec` is data. It is read from TOML (`load`), built in Python, or taken from a
preset, then overridden with `key=value` pairs (`with_overrides`). Pydantic checks every
name and value, and `resolved()` writes every default out so that a saved run says
exactly what was trained. Names and defaults are Keras' (see
`shared/reference/keras-semantics.md`); where mnistlab differs it says so here.

    spec = RunSpec(model=ModelSpec(layers=[Dense(units=10, activation="softmax")]))
    spec = with_overrides(spec, ["optimizer.learning_rate=0.01", "training.epochs=5"])
"""

from __future__ import annotations

import difflib
import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mnistlab.errors import UserError

ACTIVATIONS = (
    "linear", "relu", "sigmoid", "softmax", "tanh", "leaky_relu", "elu", "gelu", "softplus",
)
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
# The string forms of Keras' regularizers mean a factor of 0.01.
REGULARIZER_STRINGS: dict[str, dict[str, float]] = {
    "l1": {"l1": 0.01, "l2": 0.0},
    "l2": {"l1": 0.0, "l2": 0.01},
    "l1_l2": {"l1": 0.01, "l2": 0.01},
}


def suggest(name: str, known: tuple[str, ...] | list[str]) -> str:
    """' (did you mean 'x'?)' for a near miss, else the list of known names."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return "expected one of: " + ", ".join(known)


def _check_name(value: str, known: tuple[str, ...], what: str) -> str:
    if value not in known:
        raise ValueError(f"unknown {what} '{value}': {suggest(value, known)}")
    return value


class _Strict(BaseModel):
    # Unknown keys are errors, never silently ignored: a typo must not train the
    # wrong model. `validate_assignment` keeps overrides as strict as construction.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_assignment=True)


class Initializer(_Strict):
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
        return _check_name(v, INITIALIZERS, "initializer")

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


class Regularizer(_Strict):
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


class MaxNorm(_Strict):
    """Keras' MaxNorm constraint: each unit's incoming weight vector is scaled back to norm <= max_value."""

    max_value: float = Field(default=2.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _from_number(cls, data: Any) -> Any:
        return {"max_value": data} if isinstance(data, (int, float)) else data


# An activation's name, checked against ACTIVATIONS (Dense, Conv2D and Activation take one).
ActivationName = Annotated[str, AfterValidator(lambda v: _check_name(v, ACTIVATIONS, "activation"))]


class Dense(_Strict):
    type: Literal["dense"] = "dense"
    units: int = Field(gt=0)
    activation: ActivationName = "linear"
    use_bias: bool = True
    kernel_initializer: Initializer = Initializer(name="glorot_uniform")
    bias_initializer: Initializer = Initializer(name="zeros")
    kernel_regularizer: Regularizer | None = None
    bias_regularizer: Regularizer | None = None
    kernel_constraint: MaxNorm | None = None


class Activation(_Strict):
    type: Literal["activation"] = "activation"
    activation: ActivationName


class Dropout(_Strict):
    """Inverted dropout: zero each unit with probability `rate`, scale survivors by 1/(1-rate)."""

    type: Literal["dropout"] = "dropout"
    rate: float = Field(ge=0.0, lt=1.0)


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


class Conv2D(_Strict):
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

    @model_validator(mode="before")
    @classmethod
    def _pairs(cls, data: Any) -> Any:
        return _pair(data, "kernel_size", "strides")


class MaxPooling2D(_Strict):
    """Keras' MaxPooling2D; `strides` defaults to `pool_size` (windows side by side)."""

    type: Literal["max_pooling2d"] = "max_pooling2d"
    pool_size: Pair = (2, 2)
    strides: Pair | None = None
    padding: Padding = "valid"

    @model_validator(mode="before")
    @classmethod
    def _pairs(cls, data: Any) -> Any:
        return _pair(data, "pool_size", "strides")

    @model_validator(mode="after")
    def _default_strides(self):
        if self.strides is None:
            object.__setattr__(self, "strides", self.pool_size)
        return self


class AveragePooling2D(MaxPooling2D):
    """Keras' AveragePooling2D; with padding "same", border windows average what they cover."""

    type: Literal["average_pooling2d"] = "average_pooling2d"  # type: ignore[assignment]


class Flatten(_Strict):
    type: Literal["flatten"] = "flatten"


class GlobalAveragePooling2D(_Strict):
    """The mean of each channel over the image: (H, W, C) -> (C,)."""

    type: Literal["global_average_pooling2d"] = "global_average_pooling2d"


class BatchNormalization(_Strict):
    """Keras' BatchNormalization over the last axis.

    Training: normalise with the batch's mean and (biased) variance, and move
    moving = momentum * moving + (1 - momentum) * batch. Inference: use the moving ones.
    """

    type: Literal["batch_normalization"] = "batch_normalization"
    momentum: float = Field(default=0.99, ge=0.0, lt=1.0)
    epsilon: float = Field(default=1e-3, gt=0.0)
    center: bool = True
    scale: bool = True


FillMode = Literal["reflect", "constant", "nearest", "wrap"]


class _Augmentation(_Strict):
    # Keras' preprocessing layers: active in training only, identity at inference.
    # Keras' default fill mode is "reflect"; for digits on black, "constant" (0) is usual.
    fill_mode: FillMode = "reflect"
    fill_value: float = 0.0


class RandomTranslation(_Augmentation):
    """Shift by up to height_factor * H rows and width_factor * W columns, uniformly drawn."""

    type: Literal["random_translation"] = "random_translation"
    height_factor: float = Field(ge=0.0, le=1.0)
    width_factor: float = Field(ge=0.0, le=1.0)


class RandomRotation(_Augmentation):
    """Rotate by an angle drawn uniformly in [-factor, factor] * 2 pi (Keras' unit)."""

    type: Literal["random_rotation"] = "random_rotation"
    factor: float = Field(ge=0.0, le=1.0)


class RandomZoom(_Augmentation):
    """Scale by 1 + u, u uniform in [-height_factor, height_factor]; positive u zooms out.

    `width_factor = None` (Keras' default) zooms both axes alike, keeping the aspect.
    """

    type: Literal["random_zoom"] = "random_zoom"
    height_factor: float = Field(ge=0.0, lt=1.0)
    width_factor: float | None = Field(default=None, ge=0.0, lt=1.0)


class ElasticDistortion(_Augmentation):
    """Not Keras: Simard et al. (2003). Each pixel moves by alpha * (a field of uniform(-1, 1)
    noise smoothed by a Gaussian of std `sigma` pixels)."""

    type: Literal["elastic_distortion"] = "elastic_distortion"
    alpha: float = Field(ge=0.0)
    sigma: float = Field(gt=0.0)


Layer = Annotated[Union[Dense, Activation, Dropout, Conv2D, MaxPooling2D, AveragePooling2D, Flatten,
                        GlobalAveragePooling2D, BatchNormalization, RandomTranslation, RandomRotation,
                        RandomZoom, ElasticDistortion], Field(discriminator="type")]
LAYER_CLASSES: dict[str, type[BaseModel]] = {
    cls.model_fields["type"].default: cls
    for cls in (Dense, Activation, Dropout, Conv2D, MaxPooling2D, AveragePooling2D, Flatten,
                GlobalAveragePooling2D, BatchNormalization, RandomTranslation, RandomRotation,
                RandomZoom, ElasticDistortion)
}
LAYER_TYPES = tuple(LAYER_CLASSES)
AUGMENTATIONS = (RandomTranslation, RandomRotation, RandomZoom, ElasticDistortion)
# Layers that need images (H, W, C) rather than vectors: a model holding any of them sees
# its input as an image; otherwise the input is flattened, as the dense lessons do.
SPATIAL = (Conv2D, MaxPooling2D, AveragePooling2D, Flatten, GlobalAveragePooling2D, *AUGMENTATIONS)


def keras_names(layers: list) -> list[str]:
    """Keras' automatic layer names: dense, dense_1, ..., conv2d, conv2d_1, ..."""
    counts: dict[str, int] = {}
    names = []
    for layer in layers:
        n = counts.get(layer.type, 0)
        counts[layer.type] = n + 1
        names.append(layer.type if n == 0 else f"{layer.type}_{n}")
    return names


def _window_output(size: int, window: int, stride: int, padding: str) -> int:
    """Keras' output length along one axis: ceil(n / s) for "same", floor((n - k) / s) + 1 for "valid"."""
    return -(-size // stride) if padding == "same" else (size - window) // stride + 1


def output_shapes(layers: list, image_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The shape of one sample going in (first) and after each layer, or a ValueError
    naming the layer that cannot fit.

    The input is the image as (H, W, C) when any layer needs an image, else flattened.
    """
    spatial = any(isinstance(layer, SPATIAL) for layer in layers)
    if spatial:
        shape = tuple(image_shape) if len(image_shape) == 3 else (*image_shape, 1)
    else:
        shape = (int(math.prod(image_shape)),)
    shapes = [shape]
    for i, (layer, name) in enumerate(zip(layers, keras_names(layers))):
        where = f"layers[{i}] ({name})"
        needs_image = isinstance(layer, (Conv2D, MaxPooling2D, GlobalAveragePooling2D, *AUGMENTATIONS))
        if needs_image and len(shape) != 3:
            raise ValueError(f"model.{where} needs an image (height, width, channels) but gets a vector of "
                             f"{shape[0]}: put it before the flatten layer")
        if isinstance(layer, Dense) and len(shape) != 1:
            raise ValueError(f"model.{where} gets an image {shape}; add a flatten or global_average_pooling2d "
                             "layer before it")
        if isinstance(layer, (Conv2D, MaxPooling2D)):
            window = layer.kernel_size if isinstance(layer, Conv2D) else layer.pool_size
            hw = [_window_output(shape[a], window[a], layer.strides[a], layer.padding) for a in (0, 1)]
            if min(hw) < 1:
                raise ValueError(f"model.{where}: a {window[0]}x{window[1]} window does not fit its "
                                 f"{shape[0]}x{shape[1]} input; use padding = \"same\", a smaller window "
                                 "or fewer pooling layers before it")
            shape = (*hw, layer.filters if isinstance(layer, Conv2D) else shape[2])
        elif isinstance(layer, Flatten):
            shape = (int(math.prod(shape)),)
        elif isinstance(layer, GlobalAveragePooling2D):
            shape = (shape[2],)
        elif isinstance(layer, Dense):
            shape = (layer.units,)
        shapes.append(shape)
    if len(shape) != 1:
        raise ValueError(f"the model ends with an image {shape}; end it with flatten and a dense layer")
    return shapes


class ModelSpec(_Strict):
    """A Sequential stack over pixels times `input_rescale` (1/255: [0, 1]).

    The input is the flattened image, or the image (H, W, C) when a layer needs one
    (convolutions, pooling, augmentation); see `output_shapes`.
    """

    layers: list[Layer] = Field(min_length=1)
    input_rescale: float = Field(default=1 / 255, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _layer_types(cls, data: Any) -> Any:
        # Give the "did you mean" answer for a misspelt layer type before Pydantic's
        # generic discriminator message.
        for i, layer in enumerate(data.get("layers", []) if isinstance(data, dict) else []):
            if isinstance(layer, dict):
                kind = layer.get("type")
                if kind is None:
                    raise ValueError(f"layers[{i}] needs a 'type': one of {', '.join(LAYER_TYPES)}")
                if kind not in LAYER_TYPES:
                    raise ValueError(f"layers[{i}]: unknown layer type '{kind}': {suggest(kind, LAYER_TYPES)}")
        return data

    @model_validator(mode="after")
    def _ends_with_a_distribution(self) -> "ModelSpec":
        if self.output_activation not in ("softmax", "sigmoid"):
            raise ValueError(
                "the last activation must be 'softmax' (one label per image, categorical "
                "cross-entropy) or 'sigmoid' (several labels, binary cross-entropy); got "
                f"'{self.output_activation}'. Add activation = \"softmax\" to the last Dense layer."
            )
        if not isinstance(self.dense_layers[-1], Dense) or not any(isinstance(l, Dense) for l in self.layers):
            raise ValueError("the model needs at least one Dense layer")
        last = max(i for i, l in enumerate(self.layers) if isinstance(l, (Dense, Activation)) and l.activation != "linear")
        after = [l.type for l in self.layers[last + 1:] if not isinstance(l, (Dropout, Activation))]
        if after:
            # The loss takes the logits; a layer computing on probabilities has no place there.
            raise ValueError(f"layers after the output's {self.output_activation} ({', '.join(after)}) are not "
                             "supported: end the model with its softmax/sigmoid layer")
        # Consecutive augmentation layers are resampled once (model._augment), so they
        # must agree on what fills the pixels that come from outside the image.
        for i, (a, b) in enumerate(zip(self.layers, self.layers[1:])):
            if isinstance(a, AUGMENTATIONS) and isinstance(b, AUGMENTATIONS) and (
                    (a.fill_mode, a.fill_value) != (b.fill_mode, b.fill_value)):
                raise ValueError(f"layers[{i}] and layers[{i + 1}] are augmentations applied as one resampling; "
                                 f"give them the same fill_mode and fill_value (got {a.fill_mode!r}/{a.fill_value} "
                                 f"and {b.fill_mode!r}/{b.fill_value})")
        return self

    @property
    def dense_layers(self) -> list[Dense]:
        return [layer for layer in self.layers if isinstance(layer, Dense)]

    @property
    def output_activation(self) -> str:
        last = "linear"
        for layer in self.layers:
            if isinstance(layer, Dense) and layer.activation != "linear":
                last = layer.activation
            elif isinstance(layer, Dense):
                last = "linear"
            elif isinstance(layer, Activation):
                last = layer.activation
        return last


class Schedule(_Strict):
    """A learning-rate schedule over optimizer steps, as Keras' schedules.

    - exponential: lr * decay_rate ** (step / decay_steps) (floored with staircase)
    - inverse_time: lr / (1 + decay_rate * step / decay_steps)
    - step: lr * decay_rate ** floor(step / decay_steps)
    - cosine: Keras CosineDecay, alpha the final fraction of lr
    `warmup_steps` ramps linearly from 0 to lr first (Keras' warmup_target form).
    """

    name: Literal["constant", "exponential", "inverse_time", "step", "cosine"] = "constant"
    decay_steps: int = Field(default=1, gt=0)
    decay_rate: float = Field(default=0.96, gt=0)
    staircase: bool = False
    alpha: float = Field(default=0.0, ge=0, le=1)
    warmup_steps: int = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "sgd": {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False},
    "adam": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "amsgrad": False},
    "adamw": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7,
              "amsgrad": False, "weight_decay": 0.004},
    "rmsprop": {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7},
    "adagrad": {"learning_rate": 0.001, "initial_accumulator_value": 0.1, "epsilon": 1e-7},
}
OPTIMIZERS = tuple(OPTIMIZER_DEFAULTS)


class OptimizerSpec(_Strict):
    """A Keras optimizer with Keras' defaults; `decay` is Keras 2's lr / (1 + decay * step)."""

    name: str = "adam"
    learning_rate: float | None = Field(default=None, gt=0)
    decay: float = Field(default=0.0, ge=0)
    schedule: Schedule = Schedule()
    momentum: float | None = Field(default=None, ge=0, lt=1)
    nesterov: bool | None = None
    beta_1: float | None = Field(default=None, ge=0, lt=1)
    beta_2: float | None = Field(default=None, ge=0, lt=1)
    epsilon: float | None = Field(default=None, gt=0)
    amsgrad: bool | None = None
    weight_decay: float | None = Field(default=None, ge=0)
    rho: float | None = Field(default=None, ge=0, lt=1)
    initial_accumulator_value: float | None = Field(default=None, ge=0)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return _check_name(v, OPTIMIZERS, "optimizer")

    @model_validator(mode="after")
    def _defaults(self) -> "OptimizerSpec":
        defaults = OPTIMIZER_DEFAULTS[self.name]
        fields = ("momentum", "nesterov", "beta_1", "beta_2", "epsilon", "amsgrad",
                  "weight_decay", "rho", "initial_accumulator_value")
        stray = [f for f in fields if getattr(self, f) is not None and f not in defaults]
        if stray:
            raise ValueError(f"optimizer '{self.name}' takes no argument {stray}; it takes "
                             f"{sorted(defaults)} plus decay and schedule")
        for key, default in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, default)
        if self.nesterov and not self.momentum:
            raise ValueError("nesterov = true needs momentum > 0")
        return self


class Holdout(_Strict):
    """Where validation data comes from: Keras' `validation_split` (the last fraction) or stratified."""

    fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    method: Literal["last", "stratified"] = "last"


class TrainingSpec(_Strict):
    epochs: int = Field(default=20, gt=0)
    batch_size: int = Field(default=32, gt=0)
    eval_batch_size: int = Field(default=128, gt=0)
    shuffle: bool = True
    seed: int = Field(default=0, ge=0)
    validation: Holdout = Holdout()
    # Not Keras: train on the first `subset` training images only (quick experiments,
    # tests, reduced budgets). The validation split is taken from these.
    subset: int | None = Field(default=None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _validation_split(cls, data: Any) -> Any:
        # Keras spells it `validation_split=0.1`; accept that spelling too, but not both at once.
        if isinstance(data, dict) and "validation_split" in data:
            data = dict(data)
            split = data.pop("validation_split")
            given = dict(data.get("validation") or {})
            if "fraction" in given and given["fraction"] != split:
                raise ValueError(f"validation_split = {split} and validation.fraction = {given['fraction']} are one "
                                 "setting spelt twice: give one of them")
            data["validation"] = {**given, "fraction": split}
        return data


def check_name(name: str) -> str:
    """A name becomes a folder name (runs/<time>-<name>, studies/<name>): one plain path component."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or len(name) > 200:
        raise ValueError(f"name {name!r} becomes a folder name: give 1-200 characters without '/', '\\' "
                         "or NUL, not '.' or '..' (e.g. \"lr-sweep\")")
    return name


class RunSpec(_Strict):
    name: str = "run"
    dataset: str = "mnist"
    model: ModelSpec
    optimizer: OptimizerSpec = OptimizerSpec()
    training: TrainingSpec = TrainingSpec()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return check_name(v)

    @model_validator(mode="after")
    def _shapes_fit(self) -> "RunSpec":
        # Checked here, where the dataset and so the image shape are known: a window that
        # does not fit is an error at configuration time, naming the layer.
        from mnistlab import data  # data imports nothing of ours but errors

        try:
            image_shape = data.get_info(self.dataset).image_shape
        except UserError:
            return self  # an unknown dataset is reported, with its fix, when it is loaded
        output_shapes(self.model.layers, image_shape)
        return self

    def resolved(self) -> dict[str, Any]:
        """Every field with every default written out: what a run folder saves."""
        return self.model_dump(mode="json", exclude_none=True)


# ---------------------------------------------------------------------------- I/O


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        where = _path(e["loc"])
        if e["type"] == "extra_forbidden":
            field = str(e["loc"][-1])
            known = tuple(_model_at(e["loc"]).model_fields)
            lines.append(f"{where}: unknown setting '{field}': {suggest(field, known)}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
            lines.append(f"{where}: {msg}{shown}" if where else f"{msg}{shown}")
    return f"{source}: invalid specification:\n  " + "\n  ".join(lines)


def _path(loc: tuple) -> str:
    """'model.layers.0.units' for Pydantic's ('model', 'layers', 0, 'dense', 'units'): the
    union tag after a layer's index goes ('activation' is also a field of Dense)."""
    return ".".join(str(p) for i, p in enumerate(loc)
                    if not (i and isinstance(loc[i - 1], int) and p in LAYER_CLASSES))


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The Pydantic model that owns the field at `loc` (for 'did you mean' on unknown keys;
    an unknown key is always a key of a model: lists and plain values take none)."""
    model: type[BaseModel] | None = RunSpec
    for part in loc[:-1]:
        if part in LAYER_CLASSES:  # the union tag of a layer
            model = LAYER_CLASSES[part]
        elif model is not None:  # None after a list field, until its item's layer tag
            annotation = model.model_fields[part].annotation
            candidates = getattr(annotation, "__args__", (annotation,))  # `Regularizer | None`
            model = next((a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return model


def from_dict(data: dict[str, Any], source: str = "specification") -> RunSpec:
    try:
        return RunSpec.model_validate(data)
    except ValidationError as err:
        raise UserError(_format_errors(err, source)) from None


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file's tables; a missing or malformed file is a UserError naming it.

    `what` completes "Give the path of ..." in the message for a missing file.
    """
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file. Give the path of {what}.") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: not valid TOML: {err}") from None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'optimizer': {'learning_rate': 0.003}} -> {'optimizer.learning_rate': 0.003}; lists by index."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = tree
    return out


def load(path: str | Path) -> RunSpec:
    """Read a TOML run specification."""
    data = read_toml(path, "a TOML specification, or use --preset (see `mnistlab presets`)")
    return from_dict(data, str(path))


_PRESETS = resources.files("mnistlab") / "presets"


def presets() -> dict[str, str]:
    """Preset name -> its one-line description (the TOML file's first comment)."""
    names = sorted(entry.name.removesuffix(".toml") for entry in _PRESETS.iterdir() if entry.name.endswith(".toml"))
    return {name: _PRESETS.joinpath(f"{name}.toml").read_text().splitlines()[0].removeprefix("#").strip()
            for name in names}


def preset(name: str) -> RunSpec:
    known = tuple(presets())
    if name not in known:
        raise UserError(f"unknown preset '{name}': {suggest(name, known)}")
    text = _PRESETS.joinpath(f"{name}.toml").read_text()
    return from_dict(tomllib.loads(text), f"preset '{name}'")


def _parse_value(text: str) -> Any:
    """A TOML value ('0.01', 'true', '[1, 2]', '{l2 = 0.01}'), or the bare text as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_path(tree: Any, path: list[str], value: Any, full: str) -> None:
    head, rest = path[0], path[1:]
    if isinstance(tree, list):
        if not head.isdigit() or int(head) >= len(tree):
            raise UserError(f"--set {full}: '{head}' is not a layer index (0..{len(tree) - 1})")
        key: Any = int(head)
    elif isinstance(tree, dict):
        key = head
        if not rest:
            tree[key] = value
            return
        if key not in tree or tree[key] is None:
            tree[key] = {}
    else:
        raise UserError(f"--set {full}: cannot set '{head}' inside a value")
    if not rest:
        tree[key] = value
    else:
        _set_path(tree[key], rest, value, full)


def with_values(spec: RunSpec, values: dict[str, Any], source: str = "--set") -> RunSpec:
    """Set dotted paths to typed values (`{"model.layers.0.units": 500}`) and re-validate."""
    # Only what was given, not the filled-in defaults: switching `optimizer.name` from
    # adam to sgd must not carry Adam's beta_1 along.
    data = spec.model_dump(mode="json", exclude_unset=True)
    values = {k.strip(): v for k, v in values.items()}
    if "training.validation_split" in values:  # Keras' spelling of training.validation.fraction
        other = [k for k in values if k in ("training.validation", "training.validation.fraction")]
        if other:
            raise UserError(f"{source}: training.validation_split and {other[0]} set the same thing: give one")
        values["training.validation.fraction"] = values.pop("training.validation_split")
    for key, value in values.items():
        _set_path(data, key.strip().split("."), value, f"{key}={value!r}")
    return from_dict(data, source)


def parse_assignment(item: str) -> tuple[str, Any]:
    """'optimizer.learning_rate=0.01' -> ('optimizer.learning_rate', 0.01)."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected key=value, e.g. optimizer.learning_rate=0.01")
    key, text = item.split("=", 1)
    return key.strip(), _parse_value(text.strip())


def with_overrides(spec: RunSpec, assignments: list[str]) -> RunSpec:
    """Apply `section.key=value` overrides (`model.layers.0.units=500`) and re-validate."""
    values: dict[str, Any] = {}
    for item in assignments:
        key, value = parse_assignment(item)
        values[key] = value
    return with_values(spec, values)
