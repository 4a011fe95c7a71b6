"""Every layer type through every consumer: the contract a new layer type must meet.

A layer type is one class in `layers.TYPES`, and every part of mnistlab reaches it through
its methods: the specification (its output shape), model (weights, per-member numbers,
structure, forward in training and inference), engine (`member_bytes`), export (ONNX
nodes), report (the summary table) and predict (the description). EXAMPLES holds one small
network per type, so a type added without an example fails here first; then each consumer
the new class does not serve fails by name, instead of an error in someone's run.
"""

import jax
import numpy as np
import onnxruntime as ort
import pytest

from mnistlab import engine, export, layers, model, predict, report
from mnistlab import spec as spec_lib

CONV = {"type": "conv2d", "filters": 3, "kernel_size": 3, "activation": "relu"}
HEAD = [{"type": "dense", "units": 10, "activation": "softmax"}]
EXAMPLES = {
    "dense": [{"type": "dense", "units": 8, "activation": "relu"}],
    "activation": [{"type": "dense", "units": 8}, {"type": "activation", "activation": "tanh"}],
    "dropout": [{"type": "dropout", "rate": 0.3}, {"type": "dense", "units": 8, "activation": "relu"}],
    # Strides, "same" padding and an oblong kernel: each axis has its own pads in the ONNX graph.
    "conv2d": [CONV, {"type": "conv2d", "filters": 2, "kernel_size": [3, 2], "strides": 2, "padding": "same"},
               {"type": "flatten"}],
    # Overlapping windows, then "same" windows over an odd size.
    "max_pooling2d": [CONV, {"type": "max_pooling2d", "pool_size": 3, "strides": 2},
                      {"type": "max_pooling2d", "pool_size": 2, "padding": "same"}, {"type": "flatten"}],
    "average_pooling2d": [CONV, {"type": "average_pooling2d", "pool_size": 3, "padding": "same"}, {"type": "flatten"}],
    "flatten": [{"type": "flatten"}],
    "global_average_pooling2d": [CONV, {"type": "global_average_pooling2d"}],
    "batch_normalization": [CONV, {"type": "batch_normalization"}, {"type": "flatten"}],
    "random_translation": [{"type": "random_translation", "height_factor": 0.1, "width_factor": 0.1}, CONV,
                           {"type": "flatten"}],
    "random_rotation": [{"type": "random_rotation", "factor": 0.05}, CONV, {"type": "flatten"}],
    "random_zoom": [{"type": "random_zoom", "height_factor": 0.1}, CONV, {"type": "flatten"}],
    "elastic_distortion": [{"type": "elastic_distortion", "alpha": 8.0, "sigma": 3.0}, CONV, {"type": "flatten"}],
    "random_stroke_width": [{"type": "random_rotation", "factor": 0.05}, {"type": "random_stroke_width", "factor": 0.5},
                            CONV, {"type": "flatten"}],
}


def test_every_layer_type_has_an_example():
    assert set(EXAMPLES) == set(layers.NAMES), "add an example network for the new layer type"


@pytest.mark.parametrize("kind", layers.NAMES)
def test_every_layer_type_is_one_class_the_specification_reads(kind):
    cls = layers.BY_NAME[kind]
    layer = network(kind).model.layers[[l.type for l in network(kind).model.layers].index(kind)]
    assert type(layer) is cls  # the union of the specification is built from layers.TYPES
    assert set(cls.described) <= set(cls.model_fields)
    assert set(cls.roles) == set(cls.model_fields), "give every field a role (populations_test checks each)"
    # The structure names the type first, so two layer types never share a compiled program.
    assert layer.structure()[0] == kind
    assert set(layer.numbers()) <= {f for f, role in cls.roles.items() if role == layers.NUMBER} | {
        "kernel_l1", "kernel_l2", "bias_l1", "bias_l2", "max_norm"}  # a nested table's numbers, by weight


def network(kind: str) -> spec_lib.RunSpec:
    return spec_lib.from_dict({"name": kind, "model": {"layers": [*EXAMPLES[kind], *HEAD]}})


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("kind", layers.NAMES)
def test_model_knows_every_layer_type(kind, images):
    spec = network(kind)
    params = model.init(spec.model, seed=0, input_shape=(28, 28))
    shapes = model.parameter_shapes(spec.model, (28, 28))
    assert {k: v.shape for k, v in params.items()} == shapes
    assert len(model.structure(spec.model)) == len(spec.model.layers)
    hyper = {k: np.float32(v) for k, v in model.hyperparameters(spec.model).items()}
    # Inference and a training step (dropout, augmentation and batch statistics at work).
    probabilities = np.asarray(model.probabilities(spec.model, params, images))
    assert probabilities.shape == (6, 10) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    logits, moved = model.forward(spec.model, params, hyper, images, key=jax.random.key(1))
    assert logits.shape == (6, 10) and np.isfinite(np.asarray(logits)).all()
    assert set(moved) <= set(params)
    weights = sum(int(np.prod(s)) for s in shapes.values())
    assert engine.member_bytes(spec, (28, 28)) > 4 * weights * 2  # at least the weights and their gradient


def trained_like(spec: spec_lib.RunSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial weights moved at random, so that every weight counts: batch normalization's
    gamma, beta and moving statistics are no longer 1, 0, 0 and 1."""
    rng = np.random.default_rng(seed)
    params = model.init(spec.model, seed=seed, input_shape=(28, 28))
    moved = {k: v + rng.normal(0, 0.2, v.shape).astype(np.float32) for k, v in params.items()}
    return {k: np.abs(v) + 0.5 if k.endswith("moving_variance") else v for k, v in moved.items()}


def onnx_probabilities(spec: spec_lib.RunSpec, params, images) -> np.ndarray:
    proto = export.onnx_model(spec, params)
    names = set(model.layer_names(spec.model))
    # Netron shows each node under its layer: every node past the input is named after one.
    inputs = {"flat", "flat_float", "rescaled", "image_float", "nhwc", "nchw", "probabilities"}
    assert all(node.name in inputs or node.name.split("/")[0] in names for node in proto.graph.node)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": images})[0]


@pytest.mark.parametrize("kind", layers.NAMES)
def test_export_report_and_predict_know_every_layer_type(kind, images):
    spec = network(kind)
    params = trained_like(spec)
    np.testing.assert_allclose(onnx_probabilities(spec, params, images),
                               np.asarray(model.probabilities(spec.model, params, images)), atol=1e-5)
    # At inference each layer's output is the next one's input, up to the logits.
    outputs = [np.asarray(x) for _, x in model.walk(spec.model, params, images)]
    np.testing.assert_allclose(outputs[-1], np.asarray(model.logits(spec.model, params, {}, images)), atol=1e-6)
    rows = report.architecture(spec.model, (28, 28))
    assert [row["name"] for row in rows] == ["input", *model.layer_names(spec.model)]
    assert sum(int(row["params"].replace(",", "")) for row in rows) == sum(v.size for v in params.values())
    summary = model.summary(spec.model, (28, 28))  # Keras' model.summary(): moving statistics not trainable
    assert [r.kind for r in summary.rows] == [type(layer).__name__ for layer in spec.model.layers]
    assert summary.total == sum(v.size for v in params.values())
    assert summary.non_trainable == sum(v.size for k, v in params.items() if k.endswith(("moving_mean", "moving_variance")))
    described = [predict.describe_layer(name, layer) for name, layer in zip(model.layer_names(spec.model),
                                                                            spec.model.layers)]
    assert [d["type"] for d in described] == [layer.type for layer in spec.model.layers]


@pytest.mark.parametrize("center, scale", [(False, False), (True, False), (False, True)])
def test_batch_normalization_without_beta_or_gamma_exports_as_it_computes(center, scale, images):
    norm = {"type": "batch_normalization", "center": center, "scale": scale}
    spec = spec_lib.from_dict({"model": {"layers": [CONV, norm, {"type": "flatten"}, *HEAD]}})
    params = trained_like(spec)
    assert {k.rpartition("/")[2] for k in params if k.startswith("batch_normalization/")} == {
        "moving_mean", "moving_variance", *(["beta"] if center else []), *(["gamma"] if scale else [])}
    np.testing.assert_allclose(onnx_probabilities(spec, params, images),
                               np.asarray(model.probabilities(spec.model, params, images)), atol=1e-5)


@pytest.mark.parametrize("layer, shown", [
    (layers.Dense(units=8, activation="relu"), {"units": 8, "activation": "relu"}),
    (layers.BatchNormalization(), {}),
    (layers.BatchNormalization(momentum=0.9), {"momentum": 0.9}),
    # Pooling shows its size always (its strides default to it), and strides only where they differ.
    (layers.MaxPooling2D(), {"pool_size": (2, 2)}),
    (layers.AveragePooling2D(pool_size=3), {"pool_size": (3, 3)}),
    (layers.MaxPooling2D(pool_size=3, strides=1), {"pool_size": (3, 3), "strides": (1, 1)}),
])
def test_the_report_shows_the_settings_not_left_at_their_default(layer, shown):
    assert layer.summary_settings() == shown


def test_the_report_table_lists_each_layer_as_keras_summary_does():
    spec = spec_lib.from_dict({"model": {"layers": [CONV, {"type": "max_pooling2d", "pool_size": 2},
                                                    {"type": "flatten"}, *HEAD]}})
    rows = report.architecture(spec.model, (28, 28))
    assert [(r["name"], r["settings"], r["shape"], r["params"]) for r in rows] == [
        ("input", "pixels x 0.003922", "28x28x1", "0"),
        ("conv2d", "filters=3, kernel_size=3x3, activation=relu", "26x26x3", f"{3 * 3 * 3 + 3}"),
        ("max_pooling2d", "pool_size=2x2", "13x13x3", "0"),
        ("flatten", "", "507", "0"),
        ("dense", "units=10, activation=softmax", "10", f"{507 * 10 + 10:,}")]


def test_flatten_of_a_vector_exports_as_a_flatten_of_a_vector(images):
    # Global average pooling already gives (N, C): the graph must not transpose it as an image.
    spec = spec_lib.from_dict({"model": {"layers": [CONV, {"type": "global_average_pooling2d"}, {"type": "flatten"},
                                                    *HEAD]}})
    params = model.init(spec.model, seed=0, input_shape=(28, 28))
    session = ort.InferenceSession(export.onnx_model(spec, params).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"image": images})[0],
                               np.asarray(model.probabilities(spec.model, params, images)), atol=1e-5)


@pytest.mark.parametrize("size, window, stride, pads", [
    (13, 6, 5, (1, 2)),  # TensorFlow's own documented "SAME" example: 1 left, 2 right
    (28, 3, 1, (1, 1)),
    (26, 4, 2, (1, 1)),
    (13, 4, 2, (1, 2)),
    (7, 2, 2, (0, 1)),   # the odd pixel goes after
    (28, 1, 4, (0, 0)),  # windows fit without any padding: none, never negative
])
def test_same_padding_is_tensorflows(size, window, stride, pads):
    assert layers.same_padding(size, window, stride) == pads


def test_same_pads_of_an_oblong_window_follow_each_axis():
    # ONNX's order: [top, left, bottom, right]; height 28 with 3 rows, width 28 with 6 columns at stride 2
    assert layers.onnx_pads((28, 28, 1), (3, 6), (1, 2), "same") == [1, 2, 1, 2]
    assert layers.onnx_pads((28, 28, 1), (3, 6), (1, 2), "valid") == [0, 0, 0, 0]


@pytest.mark.parametrize("padding, side", [("same", 13), ("valid", 12)])
def test_max_pooling_that_does_not_divide_its_input_exports_as_it_computes(padding, side, images):
    # 26x26 after the convolution, a 3x3 window every 2 pixels: padded 13x13, unpadded 12x12.
    pool = {"type": "max_pooling2d", "pool_size": 3, "strides": 2, "padding": padding}
    spec = spec_lib.from_dict({"model": {"layers": [CONV, pool, {"type": "flatten"}, *HEAD]}})
    assert spec_lib.output_shapes(spec.model.layers, (28, 28))[2] == (side, side, 3)
    params = trained_like(spec)
    np.testing.assert_allclose(onnx_probabilities(spec, params, images),
                               np.asarray(model.probabilities(spec.model, params, images)), atol=1e-5)
