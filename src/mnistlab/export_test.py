"""Export: the ONNX graph run by onnxruntime against mnistlab's own outputs; weight files."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from mnistlab import export, model, runs, spec as spec_lib
from mnistlab.predict import Predictor
from mnistlab.predict_test import mnist, run_cli, trained_run  # noqa: F401 (shared session fixtures)


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
    (["--out", "{tmp}/model.bin"], "cannot tell the format from the suffix '.bin'"),
    (["--out", "{tmp}/model.onnx", "--format", "tflite"], "--format 'tflite': expected one of onnx, safetensors, npz"),
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
