"""spec.py: Keras vocabulary, defaults made explicit, precise errors."""

import tomllib

import pytest
import tomli_w

from mnistlab import spec as spec_lib
from mnistlab.errors import UserError


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


@pytest.mark.parametrize("override, message", [
    ("optimizer.nmae=sgd", "optimizer.nmae: unknown setting 'nmae': did you mean 'name'?"),
    ("model.layers.0.unitz=3", "unknown setting 'unitz': did you mean 'units'?"),
    ("model.layers.1.activation=rleu", "unknown activation 'rleu': did you mean 'relu'?"),
    ("optimizer.name=adamm", "unknown optimizer 'adamm': did you mean 'adam'?"),
    ("model.layers.0.kernel_initializer=glorot_norml", "did you mean 'glorot_normal'?"),
    ("model.layers.0.type=dens", "unknown layer type 'dens': did you mean 'dense'?"),
    ("training.validation.fraction=1.5", "training.validation.fraction: Input should be less than 1"),
    ("optimizer.learning_rate=-0.1", "optimizer.learning_rate: Input should be greater than 0"),
    ("model.layers.0.units=0", "model.layers.0.units: Input should be greater than 0"),
    ("model.layers.1.type=dropout", "layers.1.activation"),
    ("optimizer.beta_1=0.9", "takes no argument"),
    ("model.layers.3.activation=relu", "the last activation must be 'softmax'"),
    ("model.layers.9.units=3", "'9' is not a layer index"),
    ("training", "expected key=value"),
])
def test_bad_values_get_precise_messages(override, message):
    base = spec_lib.preset("seed")
    if override.startswith("optimizer.beta_1"):
        base = spec_lib.with_overrides(base, ["optimizer.name=sgd"])
    with pytest.raises(UserError) as info:
        spec_lib.with_overrides(base, [override])
    assert message in str(info.value)


def test_dropout_rate_must_be_below_one():
    with pytest.raises(ValueError, match="less than 1"):
        spec_lib.Dropout(rate=1.0)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="did you mean 'seed'"):
        spec_lib.preset("sead")
    with pytest.raises(UserError, match="no such file"):
        spec_lib.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(UserError, match="not valid TOML"):
        spec_lib.load(bad)


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
    assert "layers[2] (conv2d_1)" in message and "7x7 window does not fit its 6x6 input" in message
    assert 'padding = "same"' in message
    message = invalid([{"type": "conv2d", "filters": 8, "kernel_size": 3},
                       {"type": "dense", "units": 10, "activation": "softmax"}])
    assert "layers[1] (dense) gets an image (26, 26, 8)" in message and "add a flatten" in message
    message = invalid(conv_layers({"type": "conv2d", "filters": 8, "kernel_size": 3}, {"type": "flatten"},
                                  {"type": "random_rotation", "factor": 0.1}))
    assert "layers[2] (random_rotation) needs an image" in message and "before the flatten" in message
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
