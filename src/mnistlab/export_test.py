"""Export: the ONNX graph run by onnxruntime against mnistlab's own outputs; weight files."""

import json

import jax
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from mnistlab import export, model, runs, spec as spec_lib
from mnistlab.errors import UserError
from mnistlab.predict import Predictor
from mnistlab.predict_test import (  # noqa: F401 (shared session fixtures)
    CONV_SPEC, mnist, run_cli, trained_conv_run, trained_run)


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("input_type", ["uint8", "float32"])
def test_onnx_matches_mnistlab_on_the_whole_mnist_test_set(trained_run, mnist, tmp_path, capsys, monkeypatch, input_type):
    out = tmp_path / "model.onnx"
    code, stdout, err = run_cli(["export", trained_run, "--format", "onnx", "--out", out, "--input-type", input_type],
                                capsys, monkeypatch)
    assert code == 0, err
    assert f"wrote {out} (onnx)" in stdout
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    (inp,), (outp,) = proto.graph.input, proto.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "image" and dims == ["N", 28, 28]
    assert inp.type.tensor_type.elem_type == (onnx.TensorProto.UINT8 if input_type == "uint8" else onnx.TensorProto.FLOAT)
    assert outp.name == "probabilities"
    assert [d.dim_param or d.dim_value for d in outp.type.tensor_type.shape.dim] == ["N", 10]
    assert (proto.producer_name, proto.ir_version) == ("mnistlab", 8)  # IR 8: onnxruntime >= 1.10 reads it
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    assert {p.key: p.value for p in proto.metadata_props} == {
        "mnistlab.spec": json.dumps(runs.open_run(trained_run).spec.resolved()),
        "input": f"{input_type} pixels 0..255, shape (N, 28, 28)", "output": "softmax probabilities (N, 10)",
        "classes": '["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]'}
    assert all(node.name == node.output[0] for node in proto.graph.node)  # Netron shows each layer by name

    images = mnist.test_images  # all 10,000
    feed = images if input_type == "uint8" else images.astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": feed})[0]
    expected = Predictor.from_run(trained_run).probabilities(images)
    assert got.shape == (10_000, 10)
    assert np.abs(got - expected).max() <= 1e-5
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert (got.argmax(1) == mnist.test_labels).mean() >= 0.9


EVERY_ACTIVATION = {
    "name": "zoo", "model": {"input_rescale": 0.5 / 255, "layers": [
        {"type": "dropout", "rate": 0.2},
        {"type": "dense", "units": 24, "activation": "relu"},
        {"type": "dense", "units": 24, "activation": "tanh", "use_bias": False},
        {"type": "dense", "units": 24, "activation": "leaky_relu"},
        {"type": "dropout", "rate": 0.5},
        {"type": "dense", "units": 24, "activation": "elu"},
        {"type": "dense", "units": 24, "activation": "gelu"},
        {"type": "dense", "units": 24, "activation": "softplus"},
        {"type": "dense", "units": 24, "activation": "sigmoid"},
        {"type": "dense", "units": 24, "activation": "softmax"},
        {"type": "dense", "units": 16},
        {"type": "activation", "activation": "relu"},
        {"type": "dense", "units": 10},
        {"type": "activation", "activation": "softmax"},
    ]}}


@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_every_layer_and_activation_has_the_same_arithmetic(mnist, output):
    spec = spec_lib.from_dict({**EVERY_ACTIVATION, "model": {
        **EVERY_ACTIVATION["model"],
        "layers": EVERY_ACTIVATION["model"]["layers"][:-1] + [{"type": "activation", "activation": output}]}})
    params = model.init(spec.model, seed=3, input_shape=(28, 28))
    params = {k: v * 3 for k, v in params.items()}  # large enough to reach every activation's curve
    images = mnist.test_images[:1000]
    expected = np.asarray(model.probabilities(spec.model, params, images))
    got = session(export.onnx_model(spec, params)).run(None, {"image": images})[0]
    assert np.abs(got - expected).max() <= 1e-5
    if output == "sigmoid":
        assert not np.allclose(got.sum(1), 1.0)  # sigmoid outputs are not a distribution


# Every image layer kind and option whose arithmetic differs. Shapes (H, W, C) and, for
# "same", the (top/left, bottom/right) padding TensorFlow's rule gives:
CONV_ZOO = [
    {"type": "random_translation", "height_factor": 0.1, "width_factor": 0.1},  # augmentation:
    {"type": "random_rotation", "factor": 0.05},                                # the identity
    {"type": "random_zoom", "height_factor": 0.1},                              # at inference
    {"type": "elastic_distortion", "alpha": 2.0, "sigma": 3.0},
    {"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"},   # 26x26x8, valid
    {"type": "batch_normalization"},                                            # gamma and beta
    {"type": "max_pooling2d", "pool_size": 2},                                  # 13x13x8, side by side
    {"type": "conv2d", "filters": 12, "kernel_size": 4, "strides": 2, "padding": "same",
     "activation": "elu", "use_bias": False},                                   # 7x7x12, pads (1, 2)
    {"type": "max_pooling2d", "pool_size": 3, "strides": 1, "padding": "same"},  # 7x7x12, pads (1, 1)
    {"type": "average_pooling2d", "pool_size": 2, "padding": "same"},           # 4x4x12, pads (0, 1):
                                                                                #   last windows cover 1 of 2
    {"type": "batch_normalization", "center": False},                           # gamma only
    {"type": "activation", "activation": "softmax"},                            # over the channels
    {"type": "conv2d", "filters": 16, "kernel_size": [2, 3], "strides": [1, 2], "padding": "same",
     "activation": "tanh"},                                                     # 4x2x16, pads (0, 1) (0, 1)
    {"type": "average_pooling2d", "pool_size": [3, 1], "strides": 1},           # 2x2x16, overlapping, valid
]
CONV_TAILS = {
    "flatten": [{"type": "flatten"}],                                           # 64, channels fastest
    "global_average_pooling2d": [{"type": "global_average_pooling2d"}],         # 16
}
DENSE_HEAD = [
    {"type": "batch_normalization", "scale": False},                            # over features, beta only
    {"type": "dropout", "rate": 0.3},
    {"type": "dense", "units": 16, "activation": "gelu"},
    {"type": "dense", "units": 10},
]


def with_statistics(spec: spec_lib.ModelSpec, params: dict[str, np.ndarray], images: np.ndarray,
                    seed: int) -> dict[str, np.ndarray]:
    """The parameters with batch normalization's gamma and beta drawn away from 1 and 0, and
    its moving statistics those that `images` give each layer, as training would move them
    towards: from a training pass (batch statistics) with momentum 0.

    Statistics drawn at random instead leave a deep random network giving every image
    nearly the same output (measured: spread 2e-4), which would make the comparison weak.
    """
    rng = np.random.default_rng(seed)
    out = dict(params)
    for name, value in params.items():
        low_high = {"gamma": (0.5, 2.0), "beta": (-0.5, 0.5)}.get(name.rpartition("/")[2])
        if low_high:
            out[name] = rng.uniform(*low_high, value.shape).astype(np.float32)
    # Without dropout and augmentation the training pass is deterministic; the layer names,
    # and so the parameter names, stay the same.
    core = spec.model_copy(update={"layers": [
        layer for layer in spec.layers if not isinstance(layer, (spec_lib.Augmentation, spec_lib.Dropout))]})
    hyper = {k: 0.0 if k.endswith(".momentum") else v for k, v in model.hyperparameters(core).items()}
    _, moved = model.forward(core, out, hyper, images, key=jax.random.key(seed))
    return {**out, **{k: np.asarray(v) for k, v in moved.items()}}


@pytest.mark.slow
@pytest.mark.parametrize("tail", list(CONV_TAILS))
@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_every_image_layer_has_the_same_arithmetic(mnist, tail, output):
    spec = spec_lib.from_dict({"name": "conv-zoo", "model": {"layers": [
        *CONV_ZOO, *CONV_TAILS[tail], *DENSE_HEAD, {"type": "activation", "activation": output}]}})
    start = model.init(spec.model, seed=5, input_shape=(28, 28))
    params = with_statistics(spec.model, start, mnist.train_images[:2000], seed=6)
    assert params["batch_normalization_1/moving_mean"].min() > 0.1  # really moved (from 0)
    images = mnist.test_images[:500]
    expected = np.asarray(model.probabilities(spec.model, params, images))
    proto = export.onnx_model(spec, params)
    assert {n.op_type for n in proto.graph.node} >= {
        "Conv", "MaxPool", "AveragePool", "BatchNormalization", "Softmax",
        "Flatten" if tail == "flatten" else "GlobalAveragePool"}
    layers = set(model.layer_names(spec.model))
    inputs = {"image_float", "rescaled", "nhwc", "nchw", "probabilities"}
    assert all(n.name in inputs or n.name.split("/")[0] in layers for n in proto.graph.node)
    got = session(proto).run(None, {"image": images})[0]
    assert got.shape == (500, 10)
    assert np.abs(got - expected).max() <= 1e-5
    # The comparison means something: the outputs differ between images (measured: spread
    # 0.02 to 0.13 per class), and batch normalization's weights change them (by 0.5 to 0.7).
    assert got.std(axis=0).min() > 1e-2
    assert np.abs(np.asarray(model.probabilities(spec.model, start, images)) - expected).max() > 0.1


def test_the_graph_reads_as_the_keras_model_one_named_group_per_layer():
    spec = spec_lib.preset("seed")
    proto = export.onnx_model(spec, model.init(spec.model, seed=1, input_shape=(28, 28)))
    assert [(n.op_type, n.name, list(n.input)) for n in proto.graph.node] == [
        ("Flatten", "flat", ["image"]),
        ("Cast", "flat_float", ["flat"]),
        ("Mul", "rescaled", ["flat_float", "input_rescale"]),
        ("MatMul", "dense/matmul", ["rescaled", "dense/kernel"]),
        ("Add", "dense/bias_add", ["dense/matmul", "dense/bias"]),
        ("Relu", "activation/relu", ["dense/bias_add"]),
        ("MatMul", "dense_1/matmul", ["activation/relu", "dense_1/kernel"]),
        ("Add", "dense_1/bias_add", ["dense_1/matmul", "dense_1/bias"]),
        ("Softmax", "activation_1/softmax", ["dense_1/bias_add"]),
        ("Identity", "probabilities", ["activation_1/softmax"])]


def test_weights_of_another_network_are_refused():
    spec = spec_lib.preset("seed")
    other = model.init(spec_lib.with_overrides(spec, ["model.layers.0.units=5"]).model, seed=1, input_shape=(28, 28))
    with pytest.raises(UserError, match=r"^the weights: the weights do not fit the network its config.toml "
                                        r"describes \(dense/kernel is \(784, 5\), not \(784, 1000\)"):
        export.onnx_model(spec, other)


def test_a_colour_network_exports_with_its_three_channels():
    spec = spec_lib.from_dict({"name": "colour", "model": {"layers": [
        {"type": "conv2d", "filters": 2, "kernel_size": 3, "activation": "elu"}, {"type": "flatten"},
        {"type": "dense", "units": 3, "activation": "softmax"}]}})
    params = model.init(spec.model, seed=1, input_shape=(6, 6, 3))
    images = np.random.default_rng(0).integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
    proto = export.onnx_model(spec, params, image_shape=(6, 6, 3))
    assert [(n.op_type, n.name) for n in proto.graph.node] == [
        ("Cast", "image_float"), ("Mul", "rescaled"), ("Reshape", "nhwc"), ("Transpose", "nchw"),
        ("Conv", "conv2d/conv"), ("Elu", "conv2d/elu"), ("Transpose", "flatten/nhwc"), ("Flatten", "flatten/flatten"),
        ("MatMul", "dense/matmul"), ("Add", "dense/bias_add"), ("Softmax", "dense/softmax"),
        ("Identity", "probabilities")]
    assert [i.name for i in proto.graph.initializer][:2] == ["input_rescale", "nhwc_shape"]
    got = session(proto).run(None, {"image": images})[0]
    np.testing.assert_allclose(got, model.probabilities(spec.model, params, images), atol=1e-6)


def test_flatten_keeps_kerass_channels_last_order(mnist):
    # A 1x1 convolution makes channels x and -x; the Dense reads flattened feature 1 only.
    # In Keras' (H, W, C) order feature 1 is pixel (0, 0) of channel 1, -x[0, 0]; in ONNX's
    # (C, H, W) order it would be pixel (0, 1) of channel 0, +x[0, 1]. Worked by hand:
    spec = spec_lib.from_dict({"name": "order", "model": {"input_rescale": 1.0, "layers": [
        {"type": "conv2d", "filters": 2, "kernel_size": 1, "use_bias": False},
        {"type": "flatten"},
        {"type": "dense", "units": 2, "activation": "softmax"}]}})
    kernel = np.zeros((28 * 28 * 2, 2), np.float32)
    kernel[1, 0] = 0.01  # feature 1 -> logit 0
    params = {"conv2d/kernel": np.array([[[[1.0, -1.0]]]], np.float32), "dense/kernel": kernel,
              "dense/bias": np.zeros(2, np.float32)}
    images = np.zeros((2, 28, 28), np.uint8)
    images[0, 0, 0] = 200  # pixel (0, 0) lit: logit 0 = 0.01 * -200
    images[1, 0, 1] = 200  # pixel (0, 1) lit: Keras' feature 1 stays 0
    got = session(export.onnx_model(spec, params)).run(None, {"image": images})[0]
    expected = np.array([[np.exp(-2.0) / (np.exp(-2.0) + 1), 1 / (np.exp(-2.0) + 1)], [0.5, 0.5]], np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(model.probabilities(spec.model, params, images)), expected, atol=1e-6)


def test_weights_that_do_not_fit_the_spec_are_refused(trained_conv_run):
    run = runs.open_run(trained_conv_run)
    params = run.params()
    with pytest.raises(UserError, match=r"batch_normalization/moving_mean is missing"):
        export.onnx_model(run.spec, {k: v for k, v in params.items() if k != "batch_normalization/moving_mean"})
    with pytest.raises(UserError, match=r"conv2d/kernel is \(3, 3, 1, 4\), not \(3, 3, 1, 8\)"):
        export.onnx_model(run.spec, {**params, "conv2d/kernel": params["conv2d/kernel"][..., :4]})


def test_a_trained_conv_run_exports_to_onnx_and_weight_files(trained_conv_run, mnist, tmp_path, capsys, monkeypatch):
    run = runs.open_run(trained_conv_run)
    params = run.params()
    out = tmp_path / "cnn.onnx"
    code, stdout, err = run_cli(["export", trained_conv_run, "--format", "onnx", "--out", out], capsys, monkeypatch)
    assert code == 0, err
    assert f"wrote {out} (onnx)" in stdout
    images = mnist.test_images[:1000]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": images})[0]
    expected = np.asarray(model.probabilities(run.spec.model, params, images))
    assert np.abs(got - expected).max() <= 1e-5
    assert (got.argmax(1) == mnist.test_labels[:1000]).mean() >= 0.8

    # The weight files keep every tensor, batch normalization's moving statistics with them.
    assert {"batch_normalization/moving_mean", "batch_normalization/moving_variance"} < set(params)
    for name in ("w.npz", "w.safetensors"):
        code, _, err = run_cli(["export", trained_conv_run, "--out", tmp_path / name], capsys, monkeypatch)
        assert code == 0, err
    npz = np.load(tmp_path / "w.npz")
    assert set(npz.files) == set(params) | {"mnistlab.spec"}
    assert all(np.array_equal(npz[k], v) for k, v in params.items())
    loaded = load_file(tmp_path / "w.safetensors")
    assert loaded.keys() == params.keys() and all(np.array_equal(loaded[k], params[k]) for k in params)
    # A file's arrays and spec alone rebuild the network: the spec and weights the
    # npz carries give the ONNX graph the same numbers.
    from_npz = spec_lib.from_dict(json.loads(str(npz["mnistlab.spec"])))
    assert from_npz.model == spec_lib.from_dict(CONV_SPEC).model
    again = session(export.onnx_model(from_npz, {k: npz[k] for k in params})).run(None, {"image": images[:10]})[0]
    np.testing.assert_array_equal(again, got[:10])


def test_weight_files_hold_the_parameters_and_the_spec(trained_run, tmp_path, capsys, monkeypatch):
    run = runs.open_run(trained_run)
    params = run.params()
    for name in ("w.npz", "w.safetensors"):
        code, _, err = run_cli(["export", trained_run, "--out", tmp_path / name], capsys, monkeypatch)
        assert code == 0, err
    npz = np.load(tmp_path / "w.npz")  # allow_pickle is off: nothing in it needs pickle
    assert set(npz.files) == set(params) | {"mnistlab.spec"}
    for k, v in params.items():
        np.testing.assert_array_equal(npz[k], v)
    assert spec_lib.from_dict(json.loads(str(npz["mnistlab.spec"]))) == run.spec
    loaded = load_file(tmp_path / "w.safetensors")
    assert loaded.keys() == params.keys() and all(np.array_equal(loaded[k], params[k]) for k in params)
    with safe_open(tmp_path / "w.safetensors", "np") as f:
        assert spec_lib.from_dict(json.loads(f.metadata()["mnistlab.spec"])) == run.spec


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}/model.bin"], "cannot tell the format from the suffix '.bin'. Pass --format (onnx, "
                                   "safetensors, npz, keras) or name the file *.onnx, *.safetensors, *.npz or "
                                   "*.keras."),
    (["--out", "{tmp}/model.onnx", "--format", "tflite"],
     "--format 'tflite': expected one of onnx, safetensors, npz, keras"),
    (["--out", "{tmp}/model.onnx", "--input-type", "int16"], "--input-type 'int16': expected one of uint8, float32"),
    (["--out", "{tmp}/no/such/folder/model.onnx"], "does not exist. Create it first"),
    (["--out", "{tmp}/exists.onnx"], "the file exists. Choose another name or pass --force"),
])
def test_bad_export_arguments_exit_2_and_write_nothing(trained_run, tmp_path, capsys, monkeypatch, args, message):
    (tmp_path / "exists.onnx").write_bytes(b"keep me")
    before = sorted(tmp_path.rglob("*"))
    code, _, err = run_cli(["export", trained_run, *[a.format(tmp=tmp_path) for a in args]], capsys, monkeypatch)
    assert code == 2 and message in err, err
    assert sorted(tmp_path.rglob("*")) == before and (tmp_path / "exists.onnx").read_bytes() == b"keep me"


def test_force_overwrites(trained_run, tmp_path, capsys, monkeypatch):
    (tmp_path / "m.onnx").write_bytes(b"old")
    code, _, _ = run_cli(["export", trained_run, "--out", tmp_path / "m.onnx", "--force"], capsys, monkeypatch)
    assert code == 0 and onnx.load(tmp_path / "m.onnx").graph.output[0].name == "probabilities"


def test_write_from_python_takes_uint8_pixels_and_keeps_an_existing_file(trained_run, tmp_path):
    run = runs.open_run(trained_run)
    out = tmp_path / "m.onnx"
    assert export.write(run, out) == "onnx"
    assert onnx.load(out).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    with pytest.raises(UserError, match="the file exists"):
        export.write(run, out)


def test_the_onnx_model_names_its_classes_in_its_metadata():
    spec = spec_lib.from_dict({"dataset": "fashion-mnist",
                               "model": {"layers": [{"type": "dense", "units": 10, "activation": "softmax"}]}})
    proto = export.onnx_model(spec, model.init(spec.model, seed=0, input_shape=(28, 28)))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["classes"]) == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                            "Shirt", "Sneaker", "Bag", "Ankle boot"]  # Zalando's README


def test_write_from_python_saves_a_keras_model_that_keras_reads_and_predicts_with(trained_run, mnist, tmp_path):
    from mnistlab import keras_io

    run = runs.open_run(trained_run)
    out = tmp_path / "m.keras"
    assert export.write(run, out) == "keras"
    net = keras_io.load(out)  # Keras' own load_model, behind mnistlab's messages
    images = mnist.test_images[:200]
    expected = np.asarray(model.probabilities(run.spec.model, run.params(), images))
    assert np.abs(net.predict(images, verbose=0) - expected).max() <= 1e-5
