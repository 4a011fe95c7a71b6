"""A trained run's network out of mnistlab: ONNX, safetensors, NumPy `.npz`, or Keras.

    export.write(run, Path("model.onnx"))                      # format from the suffix
    export.write(run, Path("w.npz"), fmt="npz")
    export.write(run, Path("model.keras"))                     # a Keras 3 model (see keras_io)

ONNX: the graph is built with `onnx.helper` straight from the spec, layer by layer (each
layer type writes its own nodes: `layers.Layer.onnx`), so it is the same arithmetic as
`model.probabilities`:

    image (N, 28, 28) uint8 | float32 -> Cast float -> Mul input_rescale
      dense models:  -> Flatten -> per Dense: MatMul kernel, Add bias, activation
      image models:  -> Reshape (N, H, W, C) -> Transpose to (N, C, H, W), then per layer
                        Conv, MaxPool, AveragePool, BatchNormalization, activation,
                        and Flatten (back to channels last first) or GlobalAveragePool
                        into the Dense layers
      -> probabilities (N, classes): Softmax or Sigmoid

ONNX's convolution and pooling operators take channels first (NCHW) where Keras and
mnistlab keep channels last (NHWC): the graph transposes once after the input and once
at Flatten, and in between every layer is written in NCHW (kernels (F, C, kh, kw), a
softmax over channels on axis 1). Dropout and the augmentation layers are the identity at
inference and leave no node. Keras' "same" padding (the odd pixel after) is written out
as explicit pads; "same" average pooling averages only the pixels a window covers
(`count_include_pad = 0`), as Keras. Batch normalization is ONNX's inference form with
the moving statistics.

A float32 input carries the same 0..255 pixel values as the uint8 one (the rescale is
inside the graph either way). Activations map to ONNX operators of opset 17; exact GELU
is written out as 0.5 x (1 + erf(x / sqrt 2)), Keras' leaky ReLU has slope 0.2.

safetensors: the run's parameters (`dense/kernel`, `conv2d/kernel`,
`batch_normalization/moving_mean`, ...) with the spec in the metadata, as in a run
folder. npz: the same arrays under the same names, plus `mnistlab.spec`, the resolved spec
as a JSON string (a plain unicode array: no pickle needed to load).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from mnistlab import data, layers, model, runs
from mnistlab.errors import UserError
from mnistlab.spec import RunSpec, output_shapes, takes_image

FORMATS = {"onnx": ".onnx", "safetensors": ".safetensors", "npz": ".npz", "keras": ".keras"}
INPUT_TYPES = ("uint8", "float32")
OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime since 1.10


def format_for(out: Path, fmt: str | None) -> str:
    """The format asked for, or the one `out`'s suffix names."""
    if fmt is None:
        by_suffix = {suffix: name for name, suffix in FORMATS.items()}
        fmt = by_suffix.get(out.suffix.lower())
        if fmt is None:
            raise UserError(f"--out {out}: cannot tell the format from the suffix '{out.suffix}'. "
                            f"Pass --format ({', '.join(FORMATS)}) or name the file *.onnx, "
                            "*.safetensors, *.npz or *.keras.")
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return fmt


class Graph:
    """The nodes and initializers of an ONNX graph, appended in order as it is built; each
    layer type appends its own (`layers.Layer.onnx`).

    A tensor in the graph is flat (N, features) or, between the input and Flatten, ONNX's
    (N, C, H, W): the channel axis is 1 in both.
    """

    def __init__(self):
        self.nodes, self.inits = [], []

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def ints(self, name: str, value) -> str:
        from onnx import numpy_helper

        # int64 written out: NumPy 1 on Windows makes Python ints int32, which Reshape refuses.
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def activation(self, x: str, name: str, fn: str) -> str:
        """Keras' activation `fn`, element-wise except softmax, which runs over the channel
        axis: Keras' last axis, axis 1 in both of this graph's layouts."""
        if fn == "linear":
            return x
        simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softplus": "Softplus"}
        if fn in simple:
            return self.node(simple[fn], [x], f"{name}/{fn}")
        if fn == "softmax":
            return self.node("Softmax", [x], f"{name}/softmax", axis=1)
        if fn == "leaky_relu":
            return self.node("LeakyRelu", [x], f"{name}/leaky_relu", alpha=0.2)  # Keras 3's slope
        if fn == "elu":
            return self.node("Elu", [x], f"{name}/elu")  # ONNX's default alpha 1.0, Keras' too
        if fn == "gelu":  # exact (erf) form, as Keras 3 and model.py
            inv_sqrt2 = self.const(f"{name}/gelu/inv_sqrt2", 1 / math.sqrt(2))
            scaled = self.node("Mul", [x, inv_sqrt2], f"{name}/gelu/scaled")
            erf = self.node("Erf", [scaled], f"{name}/gelu/erf")
            one_plus = self.node("Add", [erf, self.const(f"{name}/gelu/one", 1.0)], f"{name}/gelu/one_plus")
            half_x = self.node("Mul", [x, self.const(f"{name}/gelu/half", 0.5)], f"{name}/gelu/half_x")
            return self.node("Mul", [half_x, one_plus], f"{name}/gelu")
        raise AssertionError(f"activation {fn} is validated by spec but has no ONNX form here")


def _input(g: Graph, image_shape: tuple[int, ...], spatial: bool, rescale: float) -> str:
    """The scaled pixels: flat vectors for a dense model, NCHW images for one with image layers."""
    from onnx import TensorProto

    if not spatial:
        x = g.node("Flatten", ["image"], "flat")  # ONNX's default axis 1: (N, pixels)
        x = g.node("Cast", [x], "flat_float", to=TensorProto.FLOAT)
        return g.node("Mul", [x, g.const("input_rescale", rescale)], "rescaled")
    x = g.node("Cast", ["image"], "image_float", to=TensorProto.FLOAT)
    x = g.node("Mul", [x, g.const("input_rescale", rescale)], "rescaled")
    # (N, H, W) or (N, H, W, C) -> (N, H, W, C) as model.forward; 0 keeps N whatever it is.
    hwc = image_shape if len(image_shape) == 3 else (*image_shape, 1)
    x = g.node("Reshape", [x, g.ints("nhwc_shape", [0, *hwc])], "nhwc")
    return g.node("Transpose", [x], "nchw", perm=layers.NHWC_TO_NCHW)


def onnx_model(spec: RunSpec, params: dict[str, np.ndarray], *, input_type: str = "uint8",
               image_shape: tuple[int, ...] = (28, 28)):
    """The network as an `onnx.ModelProto` (checked with `onnx.checker`)."""
    import onnx
    from onnx import TensorProto, helper

    if input_type not in INPUT_TYPES:
        raise UserError(f"--input-type {input_type!r}: expected one of {', '.join(INPUT_TYPES)}")
    layer_list = spec.model.layers
    names = model.layer_names(spec.model)
    runs.check_params(spec, params, "the weights", image_shape)
    g = Graph()
    x = _input(g, image_shape, takes_image(layer_list), spec.model.input_rescale)
    for name, layer, before in zip(names, layer_list, output_shapes(layer_list, image_shape)):
        x = layer.onnx(g, x, name, model.own(params, name, "/"), before)
    # model.logits leaves the final softmax/sigmoid to `probabilities`, which applies it
    # once; the spec's own final activation is that same function, applied above.
    g.nodes.append(helper.make_node("Identity", [x], ["probabilities"], name="probabilities"))
    last_dense = [n for n, layer in zip(names, layer_list) if layer.type == "dense"][-1]
    classes = int(params[f"{last_dense}/kernel"].shape[1])
    elem = TensorProto.UINT8 if input_type == "uint8" else TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes, f"mnistlab-{spec.name}",
        [helper.make_tensor_value_info("image", elem, ["N", *image_shape])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        initializer=g.inits)
    onnx_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="mnistlab", ir_version=IR_VERSION)
    shown = ", ".join(map(str, image_shape))
    # "classes": the name of each output column, a JSON list, for whoever serves the model.
    names = list(data.get_info(spec.dataset).class_names)
    helper.set_model_props(onnx_proto, {"mnistlab.spec": json.dumps(spec.resolved()),
                                        "input": f"{input_type} pixels 0..255, shape (N, {shown})",
                                        "output": f"{spec.model.output_activation} probabilities (N, {classes})",
                                        "classes": json.dumps(names)})
    onnx.checker.check_model(onnx_proto, full_check=True)
    return onnx_proto


def write(run: runs.Run, out: Path, fmt: str | None = None, *, input_type: str = "uint8",
          overwrite: bool = False) -> str:
    """Write the run's network to `out` in `fmt` (default: from the suffix); returns the format."""
    fmt = format_for(out, fmt)
    if out.exists() and not overwrite:
        raise UserError(f"--out {out}: the file exists. Choose another name or pass --force.")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist. Create it first.")
    params = run.params()
    if fmt == "onnx":
        runs.atomic_write(out, onnx_model(run.spec, params, input_type=input_type).SerializeToString())
    elif fmt == "safetensors":
        runs.save_weights(out, params, run.spec)
    elif fmt == "keras":
        from mnistlab import keras_io  # Keras is an extra: imported only when asked for

        keras_io.save(run.spec, params, out)
    else:
        import io

        buf = io.BytesIO()
        np.savez(buf, **params, **{"mnistlab.spec": np.array(json.dumps(run.spec.resolved()))})
        runs.atomic_write(out, buf.getvalue())
    return fmt
