"""spec.py: Keras vocabulary, defaults made explicit, precise errors."""

import json
import tomllib

import pytest
import tomli_w

from mnistlab import spec as spec_lib
from mnistlab.errors import UserError
from mnistlab.layers import NAMES as LAYER_TYPES


def test_presets_resolve_with_keras_defaults():
    seed = spec_lib.preset("seed")
    assert seed.resolved()["optimizer"]["epsilon"] == 1e-7  # written out though the preset leaves it unset
    opt = seed.optimizer
    assert (opt.name, opt.learning_rate, opt.beta_1, opt.beta_2, opt.epsilon, opt.amsgrad) == (
        "adam", 0.001, 0.9, 0.999, 1e-7, False)
    dense = seed.model.layers[0]
    assert dense.units == 1000 and dense.kernel_initializer.name == "glorot_normal"
    assert dense.kernel_regularizer.l2 == 0.01 and dense.bias_initializer.name == "zeros"
    assert seed.model.output_activation == "softmax"
    assert (seed.training.epochs, seed.training.batch_size, seed.training.eval_batch_size) == (20, 32, 128)


def test_resolved_spec_round_trips_through_toml():
    seed = spec_lib.preset("keras-mlp")
    text = tomli_w.dumps(seed.resolved())
    again = spec_lib.from_dict(tomllib.loads(text))
    assert again == seed
    assert "rho = 0.9" in text and "epsilon = 1e-07" in text  # defaults written out


@pytest.mark.parametrize("shorthand, l1, l2", [("l1", 0.01, 0.0), ("l2", 0.0, 0.01), ("l1_l2", 0.01, 0.01)])
def test_regularizer_strings_mean_keras_factor(shorthand, l1, l2):
    reg = spec_lib.Regularizer.model_validate(shorthand)
    assert (reg.l1, reg.l2) == (l1, l2)


def test_initializer_arguments_get_keras_defaults():
    assert spec_lib.Initializer.model_validate("random_normal").stddev == 0.05
    assert spec_lib.Initializer.model_validate("random_uniform").minval == -0.05
    with pytest.raises(ValueError, match="takes no argument"):
        spec_lib.Initializer(name="glorot_normal", stddev=0.1)


def test_optimizer_family_defaults_and_switching_family():
    seed = spec_lib.preset("seed")
    sgd = spec_lib.with_overrides(seed, ["optimizer.name=sgd", "optimizer.momentum=0.9", "optimizer.nesterov=true"])
    assert (sgd.optimizer.learning_rate, sgd.optimizer.momentum, sgd.optimizer.nesterov) == (0.01, 0.9, True)
    assert sgd.optimizer.beta_1 is None
    rms = spec_lib.OptimizerSpec(name="rmsprop")
    assert (rms.learning_rate, rms.rho, rms.epsilon, rms.momentum) == (0.001, 0.9, 1e-7, 0.0)


def test_keras_validation_split_spelling():
    t = spec_lib.TrainingSpec(validation_split=0.1)
    assert t.validation.fraction == 0.1 and t.validation.method == "last"


def test_overrides_parse_toml_values_and_layer_indices():
    s = spec_lib.with_overrides(spec_lib.preset("seed"), [
        "model.layers.0.units=500", "model.layers.0.kernel_regularizer={l1 = 0.001}", "training.shuffle=false",
        "name=mine"])
    assert s.model.layers[0].units == 500 and s.model.layers[0].kernel_regularizer.l1 == 0.001
    assert s.training.shuffle is False and s.name == "mine"


INVALID = "--set: invalid specification:\n  "


@pytest.mark.parametrize("override, message", [
    ("optimizer.nmae=sgd", INVALID + "optimizer.nmae: unknown setting 'nmae': did you mean 'name'?"),
    ("model.layers.0.unitz=3", INVALID + "model.layers.0.unitz: unknown setting 'unitz': did you mean 'units'?"),
    ("training.validation={fraction = 0.1, metod = 'last'}",
     INVALID + "training.validation.metod: unknown setting 'metod': did you mean 'method'?"),
    ("model.layers.0.kernel_regularizer={l22 = 0.1}",
     INVALID + "model.layers.0.kernel_regularizer.l22: unknown setting 'l22': did you mean 'l2'?"),
    ("model.layers.0.zzz=3", INVALID + "model.layers.0.zzz: unknown setting 'zzz': expected one of: type, units, "
     "activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer, "
     "kernel_constraint"),
    ("model.layers.1.activation=rleu",
     INVALID + "model.layers.1.activation: unknown activation 'rleu': did you mean 'relu'? (got 'rleu')"),
    ("optimizer.name=adamm", INVALID + "optimizer.name: unknown optimizer 'adamm': did you mean 'adam'? (got 'adamm')"),
    ("model.layers.0.kernel_initializer=glorot_norml", INVALID + "model.layers.0.kernel_initializer.name: unknown "
     "initializer 'glorot_norml': did you mean 'glorot_normal'? (got 'glorot_norml')"),
    ("model.layers.0.type=dens", INVALID + "model: layers[0]: unknown layer type 'dens': did you mean 'dense'?"),
    ("model.layers.0.type=xyz", INVALID + "model: layers[0]: unknown layer type 'xyz': expected one of: "
     + ", ".join(LAYER_TYPES)),
    ("training.validation.fraction=1.5", INVALID + "training.validation.fraction: Input should be less than 1 (got 1.5)"),
    ("optimizer.learning_rate=-0.1", INVALID + "optimizer.learning_rate: Input should be greater than 0 (got -0.1)"),
    ("model.layers.0.units=0", INVALID + "model.layers.0.units: Input should be greater than 0 (got 0)"),
    ("model.layers.1.type=dropout", INVALID + "model.layers.1.rate: Field required\n  "
     "model.layers.1.activation: unknown setting 'activation': expected one of: type, rate"),
    ("optimizer.beta_1=0.9", INVALID + "optimizer: optimizer 'sgd' takes no argument ['beta_1']; it takes "
     "['learning_rate', 'momentum', 'nesterov'] plus decay and schedule"),
    ("model.layers.3.activation=relu", INVALID + "model: the last activation must be 'softmax' (one label per "
     "image, categorical cross-entropy) or 'sigmoid' (several labels, binary cross-entropy); got 'relu'. "
     'Add activation = "softmax" to the last Dense layer.'),
    ("model.layers.9.units=3", "--set model.layers.9.units=3: '9' is not a layer index (0..3)"),
    ("model.layers.4.units=3", "--set model.layers.4.units=3: '4' is not a layer index (0..3)"),
    ("training", "--set 'training': expected key=value, e.g. optimizer.learning_rate=0.01"),
])
def test_bad_values_get_precise_messages(override, message):
    """The whole message, as the user reads it: where, what, the value given, the fix."""
    base = spec_lib.preset("seed")
    if override.startswith("optimizer.beta_1"):
        base = spec_lib.with_overrides(base, ["optimizer.name=sgd"])
    with pytest.raises(UserError) as info:
        spec_lib.with_overrides(base, [override])
    assert str(info.value) == message


def test_dropout_rate_must_be_below_one():
    with pytest.raises(ValueError, match="less than 1"):
        spec_lib.Dropout(rate=1.0)


def test_from_source_reads_a_file_or_a_preset_then_the_overrides(tmp_path):
    assert spec_lib.from_source() == spec_lib.preset("seed")
    fast = spec_lib.from_source(preset_name="fast", assignments=["training.epochs=2"])
    assert fast.training.epochs == 2 and fast.model == spec_lib.preset("fast").model
    path = tmp_path / "run.toml"
    path.write_text(tomli_w.dumps(spec_lib.preset("seed").resolved() | {"name": "mine"}))
    assert spec_lib.from_source(path).name == "mine"
    with pytest.raises(UserError) as caught:
        spec_lib.from_source(path, "fast")
    assert str(caught.value) == "give either CONFIG or --preset, not both"


def test_presets_are_listed_by_name_with_their_first_comment():
    listed = spec_lib.presets()
    assert list(listed) == ["cnn", "cnn-best", "fast", "keras-mlp", "robust", "seed", "speedrun"]
    assert listed["seed"] == ("The tutorial's program: 784-1000-10, ReLU, softmax, Glorot normal, l2(0.01), Adam, "
                              "20 epochs at batch 32")


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="^unknown preset 'sead': did you mean 'seed'\\?$"):
        spec_lib.preset("sead")
    missing = tmp_path / "nope.toml"
    with pytest.raises(UserError) as info:
        spec_lib.load(missing)
    assert str(info.value) == (f"{missing}: no such file. Give the path of a TOML specification, "
                               "or use --preset (see `mnistlab presets`).")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(UserError, match="not valid TOML"):
        spec_lib.load(bad)


def test_an_invalid_file_or_preset_is_named_in_the_message(tmp_path, monkeypatch):
    text = 'name = "broken"\n[optimizer]\nlearning_rate = -1.0\n'
    (tmp_path / "broken.toml").write_text(text)
    with pytest.raises(UserError) as info:
        spec_lib.load(tmp_path / "broken.toml")
    why = "invalid specification:\n  model: Field required\n  optimizer.learning_rate: Input should be greater than 0 (got -1.0)"
    assert str(info.value) == f"{tmp_path / 'broken.toml'}: {why}"
    monkeypatch.setattr(spec_lib, "_PRESETS", tmp_path)
    with pytest.raises(UserError) as info:
        spec_lib.preset("broken")
    assert str(info.value) == f"preset 'broken': {why}"


# ------------------------------------------------------------------ convolutional layers


def conv_layers(*middle):
    return [*middle, {"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}]


def invalid(layers, dataset="mnist"):
    with pytest.raises(UserError) as err:
        spec_lib.from_dict({"dataset": dataset, "model": {"layers": layers}})
    return str(err.value)


def test_conv_preset_resolves_keras_forms_and_round_trips():
    cnn = spec_lib.preset("cnn")
    conv = cnn.model.layers[2]
    assert (conv.kernel_size, conv.strides, conv.padding) == ((3, 3), (1, 1), "valid")  # 3 means (3, 3)
    assert cnn.model.layers[3].strides == (2, 2)  # pooling strides default to the pool size
    again = spec_lib.from_dict(tomllib.loads(tomli_w.dumps(cnn.resolved())))
    assert again == cnn
    shapes = spec_lib.output_shapes(cnn.model.layers, (28, 28))
    assert shapes == [(28, 28, 1), (28, 28, 1), (28, 28, 1), (26, 26, 32), (13, 13, 32), (11, 11, 64), (5, 5, 64), (1600,), (1600,), (10,)]


def test_same_padding_and_strides_give_keras_output_sizes():
    layers = [spec_lib.Conv2D(filters=4, kernel_size=3, strides=2, padding="same"),  # ceil(28 / 2) = 14
              spec_lib.MaxPooling2D(pool_size=3, strides=2, padding="same"),  # ceil(14 / 2) = 7
              spec_lib.AveragePooling2D(pool_size=2),  # floor((7 - 2) / 2) + 1 = 3
              spec_lib.Conv2D(filters=8, kernel_size=(3, 1)),  # (1, 3)
              spec_lib.GlobalAveragePooling2D()]
    assert spec_lib.output_shapes(layers, (28, 28))[1:] == [(14, 14, 4), (7, 7, 4), (3, 3, 4), (1, 3, 8), (8,)]
    assert spec_lib.output_shapes(layers, (28, 56))[1] == (14, 28, 4)  # mnist-multi's wide images


def test_shape_errors_name_the_layer_and_the_fix():
    message = invalid(conv_layers({"type": "conv2d", "filters": 8, "kernel_size": 5},
                                  {"type": "max_pooling2d", "pool_size": 4},
                                  {"type": "conv2d", "filters": 8, "kernel_size": 7}))
    assert message == ('specification: invalid specification:\n  model.layers[2] (conv2d_1): a 7x7 window does '
                       'not fit its 6x6 input; use padding = "same", a smaller window or fewer pooling layers before it')
    message = invalid([{"type": "conv2d", "filters": 8, "kernel_size": 3},
                       {"type": "dense", "units": 10, "activation": "softmax"}])
    assert "layers[1] (dense): gets an image (26, 26, 8)" in message and "add a flatten" in message
    message = invalid(conv_layers({"type": "conv2d", "filters": 8, "kernel_size": 3}, {"type": "flatten"},
                                  {"type": "random_rotation", "factor": 0.1}))
    assert "layers[2] (random_rotation): needs an image" in message and "before the flatten" in message
    message = invalid(conv_layers({"type": "max_pooling2d", "pool_size": 2}, {"type": "max_pooling_2d"}))
    assert "unknown layer type 'max_pooling_2d'" in message and "did you mean 'max_pooling2d'" in message
    message = invalid(conv_layers({"type": "conv2d", "filters": 8, "kernel_size": 3, "kernal_size": 3}))
    assert "unknown setting 'kernal_size'" in message and "did you mean 'kernel_size'" in message
    message = invalid(conv_layers({"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "full"}))
    assert "model.layers.0.padding" in message and "'valid' or 'same'" in message


def test_chained_augmentations_must_share_their_fill():
    message = invalid(conv_layers({"type": "random_rotation", "factor": 0.1, "fill_mode": "constant"},
                                  {"type": "random_zoom", "height_factor": 0.1}))
    assert "same fill_mode and fill_value" in message and "'constant'" in message and "'reflect'" in message
    spec_lib.from_dict({"model": {"layers": conv_layers(
        {"type": "random_rotation", "factor": 0.1}, {"type": "random_zoom", "height_factor": 0.1})}})


def test_nothing_with_weights_follows_the_output_distribution():
    message = invalid([{"type": "dense", "units": 10, "activation": "softmax"}, {"type": "batch_normalization"}])
    assert "layers after the output's softmax (batch_normalization)" in message


# ----------------------------------------------------------- shapes, names and overrides, exactly


def test_same_padding_rounds_up_at_any_stride_and_a_colour_image_keeps_its_channels():
    layers = [spec_lib.Conv2D(filters=2, kernel_size=3, strides=3, padding="same"), spec_lib.Flatten(),
              spec_lib.Dense(units=10, activation="softmax")]
    assert spec_lib.output_shapes(layers, (28, 28)) == [(28, 28, 1), (10, 10, 2), (200,), (10,)]  # ceil(28 / 3)
    assert spec_lib.output_shapes(layers, (28, 28, 3))[:2] == [(28, 28, 3), (10, 10, 2)]


@pytest.mark.parametrize("layers, image, message", [
    ([spec_lib.Conv2D(filters=8, kernel_size=3), spec_lib.Dense(units=10, activation="softmax")], (28, 28),
     "model.layers[1] (dense): gets an image (26, 26, 8); add a flatten or global_average_pooling2d layer before it"),
    ([spec_lib.Conv2D(filters=8, kernel_size=(3, 50))], (20, 40),
     'model.layers[0] (conv2d): a 3x50 window does not fit its 20x40 input; use padding = "same", a smaller '
     "window or fewer pooling layers before it"),
    ([spec_lib.Conv2D(filters=2, kernel_size=3)], (28, 28),
     "the model ends with an image (26, 26, 2); end it with flatten and a dense layer"),
    ([spec_lib.Flatten(), spec_lib.Conv2D(filters=2, kernel_size=3)], (28, 28),
     "model.layers[1] (conv2d): needs an image (height, width, channels) but gets a vector of 784: put it before "
     "the flatten layer"),
])
def test_shape_errors_say_which_layer_and_what_to_do(layers, image, message):
    with pytest.raises(ValueError) as err:
        spec_lib.output_shapes(layers, image)
    assert str(err.value) == message


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "a\0b", "x" * 201])
def test_a_name_must_make_one_plain_folder_name(name):
    with pytest.raises(ValueError) as err:
        spec_lib.check_name(name)
    assert str(err.value) == (f"name {name!r} becomes a folder name: give 1-200 characters without '/', '\\' "
                              "or NUL, not '.' or '..' (e.g. \"lr-sweep\")")


def test_names_up_to_200_characters_are_kept():
    for name in ("x" * 200, "lr-sweep", "X-ray 2"):
        assert spec_lib.check_name(name) == name


def conv_spec() -> spec_lib.RunSpec:
    return spec_lib.from_dict({"model": {"layers": conv_layers({"type": "conv2d", "filters": 2, "kernel_size": 3})}})


def test_resolved_is_json_data():
    resolved = conv_spec().resolved()
    assert resolved["model"]["layers"][0]["kernel_size"] == [3, 3]  # a list, as JSON and TOML write it
    assert json.loads(json.dumps(resolved)) == resolved


def test_overrides_reach_into_pairs_and_replace_whole_layers():
    spec = spec_lib.with_overrides(conv_spec(), ["model.layers.0.kernel_size.0=5"])
    assert spec.model.layers[0].kernel_size == (5, 3)
    spec = spec_lib.with_overrides(spec_lib.preset("seed"), ["model.layers.2={type = 'dropout', rate = 0.5}"])
    assert spec.model.layers[2] == spec_lib.Dropout(rate=0.5)


def test_keras_validation_split_and_its_conflicts():
    spec = spec_lib.with_overrides(spec_lib.preset("seed"), ["training.validation_split=0.2"])
    assert spec.training.validation.fraction == 0.2
    for other in ["training.validation.fraction=0.3", "training.validation={fraction = 0.3}"]:
        with pytest.raises(UserError) as err:
            spec_lib.with_overrides(spec_lib.preset("seed"), ["training.validation_split=0.2", other])
        key = other.split("=")[0]
        assert str(err.value) == f"--set: training.validation_split and {key} set the same thing: give one"


def test_nothing_can_be_set_inside_a_plain_value():
    with pytest.raises(UserError) as err:
        spec_lib.with_overrides(spec_lib.preset("seed"), ["name.x=1"])
    assert str(err.value) == "--set name.x=1: cannot set 'x' inside a value"


def test_flatten_gives_dotted_paths_with_list_indices():
    tree = {"optimizer": {"learning_rate": 0.003}, "model": {"layers": [{"units": 3}, {"rate": 0.5}]}, "name": "x"}
    assert spec_lib.flatten(tree) == {"optimizer.learning_rate": 0.003, "model.layers.0.units": 3,
                                      "model.layers.1.rate": 0.5, "name": "x"}


def test_a_run_folder_is_a_source_of_its_own_specification(tmp_path):
    ran = spec_lib.with_overrides(spec_lib.preset("fast"), ["training.epochs=3"])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.toml").write_text(tomli_w.dumps(ran.resolved()))
    assert spec_lib.from_source(tmp_path / "run", None, ["training.epochs=4"]).resolved() == spec_lib.with_overrides(
        ran, ["training.epochs=4"]).resolved()
    with pytest.raises(UserError, match="config.toml"):  # a folder that is not a run
        spec_lib.from_source(tmp_path, None, [])
