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

import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from mnistlab import layers
from mnistlab.errors import UserError, suggest
# The layer types are part of the specification (`spec.Dense` is `layers.Dense`), so that a
# specification can be written in Python from this module alone.
from mnistlab.layers import (  # noqa: F401
    Activation,
    Augmentation,
    AveragePooling2D,
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    ElasticDistortion,
    Flatten,
    GlobalAveragePooling2D,
    Initializer,
    MaxNorm,
    MaxPooling2D,
    RandomRotation,
    RandomStrokeWidth,
    RandomTranslation,
    RandomZoom,
    Regularizer,
    Settings,
)

# The layer types and their settings live in `layers`, one class per type.
AnyLayer = Annotated[Union[layers.TYPES], Field(discriminator="type")]


def keras_names(layer_list: list) -> list[str]:
    """Keras' automatic layer names: dense, dense_1, ..., conv2d, conv2d_1, ..."""
    counts: dict[str, int] = {}
    names = []
    for layer in layer_list:
        n = counts.get(layer.type, 0)
        counts[layer.type] = n + 1
        names.append(layer.type if n == 0 else f"{layer.type}_{n}")
    return names


def takes_image(layer_list: list) -> bool:
    """Whether the model sees its input as an image (H, W, C), as any of its layers may need;
    otherwise the input is flattened, as the dense lessons do."""
    return any(layer.takes_image for layer in layer_list)


def output_shapes(layer_list: list, image_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The shape of one sample going in (first) and after each layer, or a ValueError
    naming the layer that cannot fit."""
    if takes_image(layer_list):
        shape = tuple(image_shape) if len(image_shape) == 3 else (*image_shape, 1)
    else:
        shape = (int(math.prod(image_shape)),)
    shapes = [shape]
    for i, (layer, name) in enumerate(zip(layer_list, keras_names(layer_list))):
        try:
            shape = layer.output_shape(shape)
        except ValueError as err:
            raise ValueError(f"model.layers[{i}] ({name}): {err}") from None
        shapes.append(shape)
    if len(shape) != 1:
        raise ValueError(f"the model ends with an image {shape}; end it with flatten and a dense layer")
    return shapes


DTYPE_POLICIES = ("float32", "mixed_bfloat16")


class ModelSpec(Settings):
    """A Sequential stack over pixels times `input_rescale` (1/255: [0, 1]).

    The input is the flattened image, or the image (H, W, C) when a layer needs one
    (convolutions, pooling, augmentation); see `output_shapes`.
    """

    layers: list[AnyLayer] = Field(min_length=1)
    input_rescale: float = Field(default=1 / 255, gt=0)
    # Keras' dtype policy (`keras.mixed_precision`): "mixed_bfloat16" computes each layer in
    # bfloat16 while the weights and the optimizer stay float32 (see model.apply_layer).
    dtype_policy: Literal[DTYPE_POLICIES] = "float32"

    @model_validator(mode="before")
    @classmethod
    def _layer_types(cls, data: Any) -> Any:
        # Give the "did you mean" answer for a misspelt layer type before Pydantic's
        # generic discriminator message.
        for i, layer in enumerate(data.get("layers", []) if isinstance(data, dict) else []):
            if isinstance(layer, dict):
                kind = layer.get("type")
                if kind is None:
                    raise ValueError(f"layers[{i}] needs a 'type': one of {', '.join(layers.NAMES)}")
                if kind not in layers.NAMES:
                    raise ValueError(f"layers[{i}]: unknown layer type '{kind}': {suggest(kind, layers.NAMES)}")
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
            if isinstance(a, Augmentation) and isinstance(b, Augmentation) and (
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


class Schedule(Settings):
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


class OptimizerSpec(Settings):
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
        return layers.check_name(v, OPTIMIZERS, "optimizer")

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


class Holdout(Settings):
    """Where validation data comes from: Keras' `validation_split` (the last fraction) or stratified."""

    fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    method: Literal["last", "stratified"] = "last"


class EarlyStopping(Settings):
    """Keras' `EarlyStopping` callback, as a setting of the run (`[training.early_stopping]`).

    After each epoch from `start_from_epoch` (0-based, as Keras counts) the `monitor`ed
    figure is an improvement when it beats the best so far by more than `min_delta` (its
    sign is ignored, as Keras' `abs`); `patience` epochs without one stop training. `mode`
    "auto" minimizes losses and maximizes accuracies. With a `baseline`, the count of epochs
    without improvement restarts only on epochs that also beat it. `restore_best_weights`:
    the run keeps the weights of its best epoch (Keras 3: also when it did not stop early).
    """

    monitor: Literal["val_loss", "val_accuracy", "loss", "accuracy"] = "val_loss"
    min_delta: float = 0.0
    patience: int = Field(default=0, ge=0)
    mode: Literal["auto", "min", "max"] = "auto"
    baseline: float | None = None
    restore_best_weights: bool = False
    start_from_epoch: int = Field(default=0, ge=0)

    @property
    def minimize(self) -> bool:
        return self.mode == "min" or (self.mode == "auto" and self.monitor.endswith("loss"))


class TrainingSpec(Settings):
    epochs: int = Field(default=20, gt=0)
    batch_size: int = Field(default=32, gt=0)
    eval_batch_size: int = Field(default=128, gt=0)
    shuffle: bool = True
    seed: int = Field(default=0, ge=0)
    validation: Holdout = Holdout()
    # Not Keras: train on the first `subset` training images only (quick experiments,
    # tests, reduced budgets). The validation split is taken from these.
    subset: int | None = Field(default=None, gt=0)
    early_stopping: EarlyStopping | None = None

    @model_validator(mode="after")
    def _monitored(self) -> "TrainingSpec":
        # Keras only warns, and then never stops: a setting that can do nothing is refused here.
        stopping = self.early_stopping
        if stopping is not None and stopping.monitor.startswith("val_") and self.validation.fraction <= 0:
            raise ValueError(f"early_stopping.monitor = '{stopping.monitor}' needs validation data: set "
                             "training.validation_split (e.g. 0.1), or monitor = "
                             f"'{stopping.monitor.removeprefix('val_')}'")
        return self

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


class RunSpec(Settings):
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
                    if not (i and isinstance(loc[i - 1], int) and p in layers.BY_NAME))


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The Pydantic model that owns the field at `loc` (for 'did you mean' on unknown keys;
    an unknown key is always a key of a model: lists and plain values take none)."""
    model: type[BaseModel] | None = RunSpec
    for part in loc[:-1]:
        if part in layers.BY_NAME:  # the union tag of a layer
            model = layers.BY_NAME[part]
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


def from_source(path: str | Path | None = None, preset_name: str | None = None,
                assignments: list[str] | None = None) -> RunSpec:
    """A TOML file's specification, a run folder's (its config.toml) or a preset's (default
    "seed"), then `key=value` overrides: what `mnistlab train [CONFIG] [--preset NAME]
    [--set ...]` trains, and what `mnistlab summary` describes."""
    if path is not None and preset_name is not None:
        raise UserError("give either CONFIG or --preset, not both")
    if path is not None and Path(path).is_dir():
        path = Path(path) / "config.toml"  # a run folder: the resolved specification it ran
    spec = load(path) if path is not None else preset(preset_name or "seed")
    return with_overrides(spec, assignments or [])
