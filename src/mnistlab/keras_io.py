"""A network to Keras 3 and back: `.keras` files in and out of mnistlab.

    model = keras_io.to_keras(spec, params)         # a compiled keras.Sequential, weights set
    keras_io.save(spec, params, Path("model.keras"))
    spec, params = keras_io.from_keras(model)       # what mnistlab supports, or a UserError
    run_dir = keras_io.import_run(Path("model.keras"), Path("runs"))

The Keras model takes what mnistlab's networks take, raw pixels (N, 28, 28) 0..255: it
starts with `Rescaling(input_rescale)` and a `Reshape` to the vector (dense models) or
the (28, 28, 1) image (convolutional ones), then has one Keras layer per mnistlab layer,
under mnistlab's names (dense, dense_1, ...), so its weights are mnistlab's by name and in
the same layout (a Dense kernel (in, out), a Conv2D kernel (kh, kw, in, out), batch
normalization's gamma, beta and moving statistics). It is compiled with the run's
optimizer (schedule included), the cross-entropy of its output and accuracy.

Coming in, a `Rescaling` first sets `input_rescale`; a model without one is taken to
expect pixels scaled to [0, 1] outside it, as Keras' MNIST examples do (`x / 255`), so
`input_rescale` is 1/255. Reshapes at the start that only shape the input are dropped.
Every setting of every layer, the optimizer and the loss is read from Keras'
`get_config()`: one mnistlab has (a field), one at the value mnistlab computes (e.g.
`dilation_rate = (1, 1)`), or refused with a UserError naming the layer and the setting.
Initializer seeds are not kept: the weights come with the file.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mnistlab import data, layers, model, runs
from mnistlab import spec as spec_lib
from mnistlab.errors import UserError
from mnistlab.spec import OPTIMIZER_DEFAULTS, RunSpec, takes_image

SUFFIXES = (".keras", ".h5")


def import_keras():
    """Keras 3 on the JAX backend, or a UserError saying how to install it."""
    # Keras reads KERAS_BACKEND once, at its first import, and defaults to TensorFlow,
    # which mnistlab neither needs nor installs; JAX is here already. A backend the user
    # chose is kept: a .keras file is the same whichever backend wrote it.
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras
    except ImportError:
        raise UserError("Keras is not installed: pip install 'mnistlab[keras]' (Keras 3, JAX backend)") from None
    return keras


# ------------------------------------------------------------------ names on both sides


# mnistlab's initializer names -> Keras' classes (their arguments have the same names).
INITIALIZER_CLASSES = {
    "glorot_normal": "GlorotNormal", "glorot_uniform": "GlorotUniform", "he_normal": "HeNormal",
    "he_uniform": "HeUniform", "lecun_normal": "LecunNormal", "lecun_uniform": "LecunUniform",
    "zeros": "Zeros", "ones": "Ones", "constant": "Constant", "random_normal": "RandomNormal",
    "random_uniform": "RandomUniform", "truncated_normal": "TruncatedNormal",
}
OPTIMIZER_CLASSES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "adagrad": "Adagrad"}
# The loss Keras computes for each output: class indices against a softmax (what mnistlab's
# labels are), label sets against sigmoids.
LOSSES = {"softmax": "sparse_categorical_crossentropy", "sigmoid": "binary_crossentropy"}


# ------------------------------------------------------------------ out: a Keras model


def _initializer(keras, init: layers.Initializer):
    args = init.model_dump(exclude_none=True, exclude={"name"})
    return getattr(keras.initializers, INITIALIZER_CLASSES[init.name])(**args)


def _regularizer(keras, reg: layers.Regularizer | None):
    return None if reg is None else keras.regularizers.L1L2(l1=reg.l1, l2=reg.l2)


def _keras_layer(keras, layer: layers.Layer, name: str, dtype_policy: str):
    """The Keras layer computing what `layer` computes, named `name`, under `dtype_policy`."""
    if isinstance(layer, (layers.ElasticDistortion, layers.RandomStrokeWidth)):
        raise UserError(f"layer '{name}' ({layer.type}): Keras has no such layer, so this network cannot go "
                        "to Keras; export it as ONNX, or train it without that layer")
    settings = layer.model_dump(exclude={"type"})
    for which in ("kernel_initializer", "bias_initializer"):
        if which in settings:
            settings[which] = _initializer(keras, getattr(layer, which))
    for which in ("kernel_regularizer", "bias_regularizer"):
        if which in settings:
            settings[which] = _regularizer(keras, getattr(layer, which))
    if "kernel_constraint" in settings:
        c = layer.kernel_constraint
        # Keras' MaxNorm on axis 0: the norm of each unit's incoming weights, as mnistlab's.
        settings["kernel_constraint"] = None if c is None else keras.constraints.MaxNorm(c.max_value, axis=0)
    # mnistlab's classes bear Keras' names
    return getattr(keras.layers, type(layer).__name__)(**settings, name=name, dtype=dtype_policy)


def learning_rate(keras, opt: spec_lib.OptimizerSpec):
    """The Keras learning rate (a number or a schedule) of mnistlab's schedule, warm-up and decay."""
    s, lr = opt.schedule, opt.learning_rate
    schedules = keras.optimizers.schedules
    if opt.decay and (s.name != "constant" or s.warmup_steps):
        raise UserError(f"optimizer.decay = {opt.decay} with schedule '{s.name}'"
                        f"{' and a warm-up' if s.warmup_steps else ''} has no Keras equivalent (Keras 3 "
                        "replaces decay by one schedule): export with --format onnx, or keep one of them")
    if s.warmup_steps and s.name != "cosine":
        raise UserError(f"optimizer.schedule: a warm-up before schedule '{s.name}' has no Keras equivalent "
                        "(only CosineDecay warms up): export with --format onnx, or use schedule 'cosine'")
    if s.name == "constant":
        # Keras 2's decay: lr / (1 + decay * step), which Keras 3 spells InverseTimeDecay.
        return schedules.InverseTimeDecay(lr, 1, opt.decay) if opt.decay else lr
    if s.name in ("exponential", "step"):
        return schedules.ExponentialDecay(lr, s.decay_steps, s.decay_rate, staircase=s.staircase or s.name == "step")
    if s.name == "inverse_time":
        return schedules.InverseTimeDecay(lr, s.decay_steps, s.decay_rate, staircase=s.staircase)
    if s.warmup_steps:  # cosine after a linear warm-up from 0 to lr
        return schedules.CosineDecay(0.0, s.decay_steps, s.alpha, warmup_target=lr, warmup_steps=s.warmup_steps)
    return schedules.CosineDecay(lr, s.decay_steps, s.alpha)


def optimizer(keras, opt: spec_lib.OptimizerSpec):
    """The Keras optimizer of `opt`: mnistlab's arguments are Keras' (spec.OPTIMIZER_DEFAULTS)."""
    args = {k: getattr(opt, k) for k in OPTIMIZER_DEFAULTS[opt.name] if k != "learning_rate"}
    return getattr(keras.optimizers, OPTIMIZER_CLASSES[opt.name])(learning_rate=learning_rate(keras, opt), **args)


def to_keras(spec: RunSpec, params: dict[str, np.ndarray], *, compile: bool = True):
    """A Keras 3 `Sequential` computing the network, its weights `params`; compiled with the
    run's optimizer, loss and accuracy unless `compile` is False."""
    keras = import_keras()
    image_shape = data.get_info(spec.dataset).image_shape
    runs.check_params(spec, params, "the weights", image_shape)
    layer_list = spec.model.layers
    first = tuple(spec_lib.output_shapes(layer_list, image_shape)[0])
    # Raw pixels in, as mnistlab takes them: scaled and shaped inside the model, in float32
    # under either dtype policy (the first layer casts its input, as mnistlab's does).
    stack = [keras.Input(image_shape), keras.layers.Rescaling(spec.model.input_rescale, name="input_rescale"),
             keras.layers.Reshape(first, name="input_image" if takes_image(layer_list) else "input_vector")]
    names = model.layer_names(spec.model)
    stack += [_keras_layer(keras, layer, name, spec.model.dtype_policy) for layer, name in zip(layer_list, names)]
    net = keras.Sequential(stack, name=spec.name)
    for name in names:
        own = model.own(params, name, "/")
        target = net.get_layer(name)
        target.set_weights([np.asarray(own[v.name], np.float32) for v in target.weights])
    if compile:
        activation = spec.model.output_activation
        # Accuracy for one label per image; for label sets mnistlab's accuracy is the exact
        # set, which Keras' per-label binary_accuracy is not, so none is attached.
        net.compile(optimizer=optimizer(keras, spec.optimizer), loss=LOSSES[activation],
                    metrics=["accuracy"] if activation == "softmax" else [])
        # Its variables made now (fresh: a run folder keeps no optimizer state), so that the
        # file holds them and Keras loads it without "Skipping variable loading for optimizer".
        net.optimizer.build(net.trainable_variables)
    return net


def save(spec: RunSpec, params: dict[str, np.ndarray], out: Path) -> None:
    """Write the network as a `.keras` file, whole or not at all."""
    net = to_keras(spec, params)
    # Keras writes to a path with the suffix .keras; it is then renamed into place.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        written = Path(tmp) / "model.keras"
        net.save(written)
        runs.atomic_write(out, written.read_bytes())


# ------------------------------------------------------------------ in: a Keras model


# Config keys that say nothing about the arithmetic: names, seeds (the weights come with
# the file; a dropout or augmentation seed only picks which random draws), and the dtype
# policy, read for the whole model by `_dtype_policy_in`.
IGNORED = {"name", "trainable", "dtype", "seed"}
# Per Keras layer class: (mnistlab's type, the keys mnistlab has, keys at the one value mnistlab computes).
_CHANNELS_LAST = {"data_format": "channels_last"}
_WEIGHTED = ("activation", "use_bias", "kernel_initializer", "bias_initializer", "kernel_regularizer",
             "bias_regularizer")
_NO_EXTRAS = {"activity_regularizer": None, "bias_constraint": None}
_AUGMENTATION = {"interpolation": "bilinear", **_CHANNELS_LAST}
IMPORTED: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {
    "Dense": ("dense", ("units", *_WEIGHTED, "kernel_constraint"), _NO_EXTRAS),
    "Conv2D": ("conv2d", ("filters", "kernel_size", "strides", "padding", *_WEIGHTED),
               {**_NO_EXTRAS, **_CHANNELS_LAST, "dilation_rate": (1, 1), "groups": 1, "kernel_constraint": None}),
    "Activation": ("activation", ("activation",), {}),
    "Dropout": ("dropout", ("rate",), {"noise_shape": None}),
    "MaxPooling2D": ("max_pooling2d", ("pool_size", "strides", "padding"), _CHANNELS_LAST),
    "AveragePooling2D": ("average_pooling2d", ("pool_size", "strides", "padding"), _CHANNELS_LAST),
    "Flatten": ("flatten", (), _CHANNELS_LAST),
    "GlobalAveragePooling2D": ("global_average_pooling2d", (), {**_CHANNELS_LAST, "keepdims": False}),
    "BatchNormalization": ("batch_normalization", ("momentum", "epsilon", "center", "scale"), {
        "axis": -1, "beta_initializer": "Zeros", "gamma_initializer": "Ones", "moving_mean_initializer": "Zeros",
        "moving_variance_initializer": "Ones", "beta_regularizer": None, "gamma_regularizer": None,
        "beta_constraint": None, "gamma_constraint": None, "synchronized": False, "renorm": False}),
    "RandomTranslation": ("random_translation", ("height_factor", "width_factor", "fill_mode", "fill_value"),
                          _AUGMENTATION),
    "RandomRotation": ("random_rotation", ("factor", "fill_mode", "fill_value"), _AUGMENTATION),
    "RandomZoom": ("random_zoom", ("height_factor", "width_factor", "fill_mode", "fill_value"), _AUGMENTATION),
}
# Keys that only matter when another setting is on (renorm's, ema's): not read on their own.
DEPENDENT = {"renorm_clipping", "renorm_momentum", "ema_momentum", "ema_overwrite_frequency"}


def _same(value: Any, expected: Any) -> bool:
    """A config value equals mnistlab's fixed one: tuples as lists, initializers by class."""
    if isinstance(value, dict) and "class_name" in value:
        return value["class_name"] == expected and not {k: v for k, v in value.get("config", {}).items()
                                                         if k != "seed" and v is not None}
    if isinstance(value, (list, tuple)) and isinstance(expected, (list, tuple)):
        return list(value) == list(expected)
    return value == expected


def _refuse(where: str, key: str, value: Any, why: str = "mnistlab has no such setting") -> UserError:
    shown = value.get("class_name", value) if isinstance(value, dict) else value
    return UserError(f"{where}: {key} = {shown!r}: {why}, so it cannot be imported")


def _check_rest(config: dict[str, Any], known: tuple[str, ...], fixed: dict[str, Any], where: str) -> None:
    """Every key of a Keras config is mnistlab's, ignorable, at mnistlab's value, or refused."""
    for key, value in config.items():
        if key in known or key in IGNORED or key in DEPENDENT:
            continue
        if key in fixed:
            if not _same(value, fixed[key]):
                raise _refuse(where, key, value, f"mnistlab computes only {key} = {fixed[key]!r}")
        elif value not in (None, False):  # a setting this Keras has and mnistlab's table does not, left off
            raise _refuse(where, key, value)


def _initializer_in(value: Any, where: str) -> dict[str, Any] | str:
    by_class = {cls: name for name, cls in INITIALIZER_CLASSES.items()}
    name = by_class.get(value.get("class_name"))
    if name is None:
        raise _refuse(where, "initializer", value, f"mnistlab has {', '.join(INITIALIZER_CLASSES)}")
    config = value.get("config", {})
    args = {k: v for k, v in config.items() if k in layers.Initializer.model_fields}
    other = {k: v for k, v in config.items() if k not in args and k not in IGNORED and v is not None}
    if other:
        key = sorted(other)[0]
        raise _refuse(f"{where} ({value['class_name']})", key, other[key])
    return {"name": name, **args} if args else name


def _regularizer_in(value: Any, where: str) -> dict[str, float]:
    if value.get("class_name") not in ("L1", "L2", "L1L2"):
        raise _refuse(where, "regularizer", value, "mnistlab has l1, l2 and l1_l2")
    config = value.get("config", {})
    return {k: float(config.get(k) or 0.0) for k in ("l1", "l2")}


def _constraint_in(value: Any, where: str) -> dict[str, float]:
    config = value.get("config", {})
    if value.get("class_name") != "MaxNorm" or config.get("axis", 0) != 0:
        raise _refuse(where, "kernel_constraint", value, "mnistlab has MaxNorm over axis 0 (each unit's weights)")
    return {"max_value": float(config["max_value"])}


def _factor_in(value: Any, key: str, where: str) -> float | None:
    """Keras' factor f, or (-f, f): mnistlab draws in [-f, f]."""
    if value is None or isinstance(value, (int, float)):
        return value
    low, high = value
    if low != -high:
        raise _refuse(where, key, value, "mnistlab draws from a range symmetric about 0, (-f, f)")
    return float(high)


def _layer_in(keras_layer, where: str) -> dict[str, Any]:
    """mnistlab's settings (a spec layer table) of one Keras layer."""
    cls = type(keras_layer).__name__
    if cls not in IMPORTED:
        known = ", ".join(IMPORTED)
        raise UserError(f"{where}: mnistlab has no {cls} layer, so the model cannot be imported. mnistlab "
                        f"supports {known}")
    kind, known, fixed = IMPORTED[cls]
    config = keras_layer.get_config()
    if cls == "BatchNormalization" and config.get("axis") == len(keras_layer.input.shape) - 1:
        config["axis"] = -1  # the last axis by its number: (N, H, W, C)'s 3, (N, F)'s 1
    _check_rest(config, known, fixed, where)
    out: dict[str, Any] = {"type": kind}
    for key in known:
        value = config.get(key)
        if key.endswith("_initializer"):
            value = _initializer_in(value, f"{where} {key}")
        elif key.endswith("_regularizer"):
            value = None if value is None else _regularizer_in(value, f"{where} {key}")
        elif key == "kernel_constraint":
            value = None if value is None else _constraint_in(value, where)
        elif key.endswith("factor"):
            value = _factor_in(value, key, where)
        elif key == "activation" and value not in layers.ACTIVATIONS:
            raise _refuse(where, key, value, f"mnistlab has {', '.join(layers.ACTIVATIONS)}")
        if value is not None:
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def _dtype_policy_in(keras_layers: list) -> str:
    """The model's dtype policy: that of its layers with weights, which must share one of
    mnistlab's. A layer without weights may also be float32, as Keras' mixed-precision guide
    has the output's softmax be (mnistlab computes the softmax and loss in float32)."""
    allowed = spec_lib.DTYPE_POLICIES
    found = {layer.name: layer.dtype_policy.name for layer in keras_layers}
    for name, policy in found.items():
        if policy not in allowed:
            raise _refuse(f"layer '{name}'", "dtype", policy, f"mnistlab computes under {' or '.join(allowed)}")
    weighted = {found[layer.name] for layer in keras_layers if layer.weights}
    if len(weighted) > 1:
        raise UserError("the layers with weights compute under different dtype policies ("
                        + ", ".join(f"'{layer.name}' {found[layer.name]}" for layer in keras_layers if layer.weights)
                        + "): mnistlab computes a model under one; set one policy for them all")
    return weighted.pop() if weighted else "float32"


def _schedule_in(value: Any) -> tuple[float, dict[str, Any]]:
    """(learning rate, mnistlab schedule table) of a Keras learning rate."""
    if isinstance(value, (int, float)):
        # Keras keeps a constant rate in a float32 variable and reports 0.0010000000474974513
        # for 0.001: the shortest decimal of that float32 is the number that was given.
        return float(str(np.float32(value))), {}
    cls, config = value.get("class_name"), value.get("config", {})
    where = f"optimizer learning_rate ({cls})"
    lr = float(config.get("initial_learning_rate", 0.0))
    common = {"decay_steps": int(config.get("decay_steps", 1))}
    if cls in ("ExponentialDecay", "InverseTimeDecay"):
        name = "exponential" if cls == "ExponentialDecay" else "inverse_time"
        return lr, {"name": name, **common, "decay_rate": float(config["decay_rate"]),
                    "staircase": bool(config.get("staircase"))}
    if cls == "CosineDecay":
        schedule = {"name": "cosine", **common, "alpha": float(config.get("alpha", 0.0))}
        if config.get("warmup_target") is not None:
            if lr != 0.0:
                raise _refuse(where, "initial_learning_rate", lr, "mnistlab warms up from 0")
            return float(config["warmup_target"]), {**schedule, "warmup_steps": int(config.get("warmup_steps", 0))}
        return lr, schedule
    raise _refuse("optimizer", "learning_rate", value, "mnistlab has ExponentialDecay, InverseTimeDecay and "
                  "CosineDecay")


def _optimizer_in(keras_optimizer) -> dict[str, Any]:
    """mnistlab's optimizer table of a compiled model's Keras optimizer."""
    cls = type(keras_optimizer).__name__
    by_class = {c: name for name, c in OPTIMIZER_CLASSES.items()}
    if cls not in by_class:
        raise _refuse("optimizer", "class", cls, f"mnistlab has {', '.join(OPTIMIZER_CLASSES.values())}")
    name = by_class[cls]
    config = keras_optimizer.get_config()
    known = tuple(k for k in OPTIMIZER_DEFAULTS[name] if k != "learning_rate")
    fixed = {"weight_decay": None, "clipnorm": None, "global_clipnorm": None, "clipvalue": None, "use_ema": False,
             "loss_scale_factor": None, "gradient_accumulation_steps": None, "centered": False}
    _check_rest({k: v for k, v in config.items() if k != "learning_rate"}, known, fixed, f"optimizer ({cls})")
    lr, schedule = _schedule_in(config["learning_rate"])
    table = {"name": name, "learning_rate": lr, **{k: config[k] for k in known}}
    return {**table, "schedule": schedule} if schedule else table


def _loss_in(loss: Any, activation: str) -> None:
    """The compiled loss must be the cross-entropy mnistlab trains `activation` outputs with."""
    if loss is None:
        return
    config = loss.get_config() if hasattr(loss, "get_config") else {"name": getattr(loss, "__name__", loss)}
    name = config.get("name")
    wanted = {"softmax": ("sparse_categorical_crossentropy", "categorical_crossentropy"),
              "sigmoid": ("binary_crossentropy",)}[activation]
    if name not in wanted:
        raise _refuse("loss", "loss", name, f"mnistlab trains a {activation} output with {' or '.join(wanted)}")
    for key, plain in (("from_logits", False), ("label_smoothing", 0.0), ("ignore_class", None)):
        if config.get(key, plain) != plain:
            raise _refuse(f"loss ({name})", key, config[key], f"mnistlab computes only {key} = {plain!r}")


def from_keras(net, *, name: str | None = None, dataset: str = "mnist") -> tuple[RunSpec, dict[str, np.ndarray]]:
    """(specification, weights) of a Keras Sequential model, for the layer types and settings
    mnistlab supports; anything else is a UserError naming the layer and setting."""
    keras = import_keras()
    if not isinstance(net, keras.Sequential):
        raise UserError(f"model '{net.name}' is a {type(net).__name__}: mnistlab imports keras.Sequential models "
                        "(one layer after another)")
    image_shape = data.get_info(dataset).image_shape
    try:
        given = tuple(net.input_shape[1:])
    except (AttributeError, ValueError):
        raise UserError(f"model '{net.name}' has no input shape: build it with keras.Input((28, 28)) first, "
                        "then save it") from None
    if None in given or math.prod(given) != math.prod(image_shape):
        raise UserError(f"model '{net.name}' takes inputs of shape {given}: mnistlab feeds {dataset} images "
                        f"{image_shape} (or their {math.prod(image_shape)} pixels as one vector)")
    rest = list(net.layers)
    input_rescale = 1 / 255  # Keras' MNIST examples scale pixels outside the model (x / 255)
    if rest and type(rest[0]).__name__ == "Rescaling":
        config = rest.pop(0).get_config()
        if config.get("offset", 0.0):
            raise _refuse(f"layer '{net.layers[0].name}' (Rescaling)", "offset", config["offset"],
                          "mnistlab only scales its input")
        input_rescale = float(config["scale"])
    while rest and type(rest[0]).__name__ == "Reshape":  # shapes the input only: mnistlab does that itself
        rest.pop(0)
    tables = [_layer_in(layer, f"layer '{layer.name}' ({type(layer).__name__})") for layer in rest]
    spec = spec_lib.from_dict({
        "name": name or net.name, "dataset": dataset,
        "model": {"input_rescale": input_rescale, "dtype_policy": _dtype_policy_in(rest), "layers": tables},
        **({"optimizer": _optimizer_in(net.optimizer)} if getattr(net, "optimizer", None) is not None else {}),
    }, f"Keras model '{net.name}'")
    _loss_in(getattr(net, "loss", None), spec.model.output_activation)
    # The same layers must give the same shapes: a Keras Dense on an image works on its last
    # axis, mnistlab's takes a vector (spec checks that one within mnistlab's own terms).
    for layer, mine in zip(rest, spec_lib.output_shapes(spec.model.layers, image_shape)[1:]):
        theirs = tuple(layer.output.shape[1:])
        if theirs != tuple(mine):
            raise UserError(f"layer '{layer.name}' ({type(layer).__name__}) gives {theirs} per sample in Keras, "
                            f"where mnistlab's computes {tuple(mine)}: mnistlab feeds a model with image layers "
                            "(H, W, C) images and any other the pixels as one vector, and its Dense takes a "
                            "vector; put a Flatten where the model needs one")
    params = {f"{mine}/{v.name}": np.asarray(keras.ops.convert_to_numpy(v), np.float32)
              for mine, layer in zip(model.layer_names(spec.model), rest) for v in layer.weights}
    runs.check_params(spec, params, f"Keras model '{net.name}'", image_shape)
    return spec, params


def load(path: Path):
    """The Keras model in `path` (.keras, or .h5 where Keras reads it), or a UserError."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"{path}: give a Keras model file, model.keras (or model.h5)")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    keras = import_keras()
    fix = "give a file written by model.save(), whole"
    # Keras says "File not found" of a file that is there but not a zip archive: say what it is.
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a Keras model: a .keras file is a zip archive, and this is not one (cut "
                        f"short, or another kind of file renamed); {fix}")
    try:
        with warnings.catch_warnings():
            # A model compiled but never trained is saved without its optimizer's variables, and
            # Keras warns that it skips loading them; mnistlab takes no optimizer state anyway.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            return keras.saving.load_model(path)
    except Exception as err:  # Keras raises what its readers raise: zipfile, h5py, JSON, its own errors
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(f"{path}: not a Keras model that Keras {keras.__version__} can read ({type(err).__name__}: "
                        f"{first[:300]}): {fix}") from None


def import_run(path: Path, runs_dir: Path, *, dataset: str = "mnist") -> Path:
    """A run folder (config.toml, weights.safetensors, summary.json) made from a Keras model
    file for images of `dataset`; the folder's path. Nothing is written unless the whole
    model can be imported."""
    path = Path(path)
    data.get_info(dataset)  # an unknown name is a UserError before the file is read
    net = load(path)
    # Keras names a Sequential it was not given a name for "sequential", "sequential_1", ...:
    # the file's name says more then.
    name = path.stem if net.name.startswith("sequential") else net.name
    try:
        spec_lib.check_name(name)
    except ValueError:
        name = "keras"
    try:
        spec, params = from_keras(net, name=name, dataset=dataset)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    scaled = "by its Rescaling layer" if net.layers and type(net.layers[0]).__name__ == "Rescaling" else \
        "no Rescaling layer: pixels taken as scaled by 1/255 outside the model, as Keras' examples do"
    writer = runs.RunWriter.create(runs_dir, spec)
    try:
        digest = writer.save_weights(params)
        writer.finish({"name": spec.name, "status": "imported", "imported_from": str(path.resolve()),
                       "keras": import_keras().__version__, "input_scaling": scaled,
                       # Not compiled: the optimizer is mnistlab's default (Adam, Keras' defaults).
                       "compiled": getattr(net, "optimizer", None) is not None,
                       "imported": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "weights_sha256": digest,
                       "environment": runs.environment()})
    except runs.WRITE_ERRORS as err:  # a full disk, a folder gone: no half a run folder left behind
        shutil.rmtree(writer.path, ignore_errors=True)
        raise UserError(f"{writer.path}: cannot write the run folder ({runs.reason(err)})") from None
    return writer.path
