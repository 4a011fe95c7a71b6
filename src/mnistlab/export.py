"""A trained run's network out of mnistlab: ONNX, safetensors, or NumPy `.npz`.

    export.write(run, Path("model.onnx"))                      # format from the suffix
    export.write(run, Path("w.npz"), fmt="npz")

ONNX: the graph is built with `onnx.helper` straight from the spec, layer by layer, so it
is the same arithmetic as `model.probabilities`:

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

from mnistlab import model, runs
from mnistlab.errors import UserError
from mnistlab.spec import AUGMENTATIONS, SPATIAL, RunSpec, output_shapes

FORMATS = {"onnx": ".onnx", "safetensors": ".safetensors", "npz": ".npz"}
INPUT_TYPES = ("uint8", "float32")
OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime since 1.10

# A tensor in the graph is flat (N, features) or, between the input and Flatten, ONNX's
# (N, C, H, W): the channel axis is 1 in both.
NHWC_TO_NCHW, NCHW_TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


def format_for(out: Path, fmt: str | None) -> str:
    """The format asked for, or the one `out`'s suffix names."""
    if fmt is None:
        by_suffix = {suffix: name for name, suffix in FORMATS.items()}
        fmt = by_suffix.get(out.suffix.lower())
        if fmt is None:
            raise UserError(f"--out {out}: cannot tell the format from the suffix '{out.suffix}'. "
                            f"Pass --format ({', '.join(FORMATS)}) or name the file *.onnx, "
                            "*.safetensors or *.npz.")
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return fmt


def same_pads(size: int, window: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of Keras' (TensorFlow's) "same" along one axis.

    Enough padding for ceil(size / stride) windows, split with the odd pixel after.
    Written here rather than taken from model.py, so that the export tests compare two
    independent readings of the rule.
    """
    outputs = -(-size // stride)
    total = max((outputs - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def onnx_pads(hw: tuple[int, ...], window: tuple[int, int], strides: tuple[int, int], padding: str) -> list[int]:
    """ONNX's `pads` for a window over an (H, W, ...) input: [top, left, bottom, right]."""
    if padding == "valid":
        return [0, 0, 0, 0]
    (top, bottom), (left, right) = (same_pads(hw[a], window[a], strides[a]) for a in (0, 1))
    return [top, left, bottom, right]


class _Graph:
    """The nodes and initializers of an ONNX graph, appended in order as it is built."""

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


def _activation(g: _Graph, x: str, name: str, fn: str) -> str:
    """Keras' activation `fn`, element-wise except softmax, which runs over the channel
    axis: Keras' last axis, axis 1 in both of this graph's layouts."""
    if fn == "linear":
        return x
    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softplus": "Softplus"}
    if fn in simple:
        return g.node(simple[fn], [x], f"{name}/{fn}")
    if fn == "softmax":
        return g.node("Softmax", [x], f"{name}/softmax", axis=1)
    if fn == "leaky_relu":
        return g.node("LeakyRelu", [x], f"{name}/leaky_relu", alpha=0.2)  # Keras 3's slope
    if fn == "elu":
        return g.node("Elu", [x], f"{name}/elu")  # ONNX's default alpha 1.0, Keras' too
    if fn == "gelu":  # exact (erf) form, as Keras 3 and model.py
        scaled = g.node("Mul", [x, g.const(f"{name}/gelu/inv_sqrt2", 1 / math.sqrt(2))], f"{name}/gelu/scaled")
        erf = g.node("Erf", [scaled], f"{name}/gelu/erf")
        one_plus = g.node("Add", [erf, g.const(f"{name}/gelu/one", 1.0)], f"{name}/gelu/one_plus")
        half_x = g.node("Mul", [x, g.const(f"{name}/gelu/half", 0.5)], f"{name}/gelu/half_x")
        return g.node("Mul", [half_x, one_plus], f"{name}/gelu")
    raise AssertionError(f"activation {fn} is validated by spec but has no ONNX form here")


def _input(g: _Graph, image_shape: tuple[int, ...], spatial: bool, rescale: float) -> str:
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
    return g.node("Transpose", [x], "nchw", perm=NHWC_TO_NCHW)


def _dense(g: _Graph, x: str, name: str, layer, params) -> str:
    x = g.node("MatMul", [x, g.const(f"{name}/kernel", params[f"{name}/kernel"])], f"{name}/matmul")
    if layer.use_bias:
        x = g.node("Add", [x, g.const(f"{name}/bias", params[f"{name}/bias"])], f"{name}/bias_add")
    return _activation(g, x, name, layer.activation)


def _conv(g: _Graph, x: str, name: str, layer, params, hw: tuple[int, ...]) -> str:
    # Keras' kernel (kh, kw, in, out) is ONNX's (out, in, kh, kw); both cross-correlate.
    kernel = np.transpose(params[f"{name}/kernel"], (3, 2, 0, 1))
    inputs = [x, g.const(f"{name}/kernel", kernel)]
    if layer.use_bias:
        inputs.append(g.const(f"{name}/bias", params[f"{name}/bias"]))
    # kernel_shape is left out: ONNX takes it from the kernel.
    x = g.node("Conv", inputs, f"{name}/conv", strides=list(layer.strides),
               pads=onnx_pads(hw, layer.kernel_size, layer.strides, layer.padding))
    return _activation(g, x, name, layer.activation)


def _pool(g: _Graph, x: str, name: str, layer, hw: tuple[int, ...]) -> str:
    attrs = dict(kernel_shape=list(layer.pool_size), strides=list(layer.strides),
                 pads=onnx_pads(hw, layer.pool_size, layer.strides, layer.padding))
    if layer.type == "max_pooling2d":
        return g.node("MaxPool", [x], f"{name}/max_pool", **attrs)  # padding never wins a max
    # Keras averages a border window over the pixels it covers, not over the padding too:
    # ONNX's default (count_include_pad = 0).
    return g.node("AveragePool", [x], f"{name}/average_pool", **attrs)


def _batch_norm(g: _Graph, x: str, name: str, layer, params) -> str:
    """(x - moving_mean) / sqrt(moving_variance + epsilon) * gamma + beta over axis 1 (channels
    or features); gamma 1 and beta 0 where the layer has none (scale / center false)."""
    mean = params[f"{name}/moving_mean"]
    gamma = params[f"{name}/gamma"] if layer.scale else np.ones_like(mean)
    beta = params[f"{name}/beta"] if layer.center else np.zeros_like(mean)
    inputs = [x, g.const(f"{name}/gamma", gamma), g.const(f"{name}/beta", beta),
              g.const(f"{name}/moving_mean", mean),
              g.const(f"{name}/moving_variance", params[f"{name}/moving_variance"])]
    return g.node("BatchNormalization", inputs, f"{name}/batch_norm", epsilon=layer.epsilon)


def _flatten(g: _Graph, x: str, name: str) -> str:
    # Keras flattens (H, W, C) row by row, channels fastest. Transposing back to NHWC
    # first, rather than permuting the next Dense kernel's rows to match NCHW order, keeps
    # the graph a layer-by-layer copy of the Keras model with the Dense kernels exactly as
    # saved, and stays right whatever comes between Flatten and the Dense (a batch
    # normalization over the flattened features, dropout, another activation), which a
    # row permutation tied to "the next Dense" would not. It costs one copy of a small tensor.
    x = g.node("Transpose", [x], f"{name}/nhwc", perm=NCHW_TO_NHWC)
    return g.node("Flatten", [x], f"{name}/flatten")  # ONNX's default axis 1: (N, C)


def _global_average(g: _Graph, x: str, name: str) -> str:
    x = g.node("GlobalAveragePool", [x], f"{name}/mean")  # (N, C, 1, 1)
    return g.node("Flatten", [x], f"{name}/flatten")  # ONNX's default axis 1: (N, C)


def _layer(g: _Graph, x: str, name: str, layer, params, before: tuple[int, ...]) -> str:
    """One layer's nodes; returns its output. `before`: its input's Keras shape."""
    kind = layer.type
    if kind == "dense":
        return _dense(g, x, name, layer, params)
    if kind == "conv2d":
        return _conv(g, x, name, layer, params, before)
    if kind in ("max_pooling2d", "average_pooling2d"):
        return _pool(g, x, name, layer, before)
    if kind == "batch_normalization":
        return _batch_norm(g, x, name, layer, params)
    if kind == "activation":
        return _activation(g, x, name, layer.activation)
    if kind == "flatten":
        return _flatten(g, x, name)
    if kind == "global_average_pooling2d":
        return _global_average(g, x, name)
    if kind == "dropout" or isinstance(layer, AUGMENTATIONS):
        return x  # identity at inference
    raise AssertionError(f"layer type {kind} is validated by spec but has no ONNX form here")


def onnx_model(spec: RunSpec, params: dict[str, np.ndarray], *, input_type: str = "uint8",
               image_shape: tuple[int, ...] = (28, 28)):
    """The network as an `onnx.ModelProto` (checked with `onnx.checker`)."""
    import onnx
    from onnx import TensorProto, helper

    if input_type not in INPUT_TYPES:
        raise UserError(f"--input-type {input_type!r}: expected one of {', '.join(INPUT_TYPES)}")
    layers = spec.model.layers
    names = model.layer_names(spec.model)
    runs.check_params(spec, params, "the weights", image_shape)
    g = _Graph()
    spatial = any(isinstance(layer, SPATIAL) for layer in layers)
    x = _input(g, image_shape, spatial, spec.model.input_rescale)
    for name, layer, before in zip(names, layers, output_shapes(layers, image_shape)):
        x = _layer(g, x, name, layer, params, before)
    # model.logits leaves the final softmax/sigmoid to `probabilities`, which applies it
    # once; the spec's own final activation is that same function, applied above.
    g.nodes.append(helper.make_node("Identity", [x], ["probabilities"], name="probabilities"))
    last_dense = [n for n, layer in zip(names, layers) if layer.type == "dense"][-1]
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
    helper.set_model_props(onnx_proto, {"mnistlab.spec": json.dumps(spec.resolved()),
                                        "input": f"{input_type} pixels 0..255, shape (N, {shown})",
                                        "output": f"{spec.model.output_activation} probabilities (N, {classes})"})
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
    else:
        import io

        buf = io.BytesIO()
        np.savez(buf, **params, **{"mnistlab.spec": np.array(json.dumps(run.spec.resolved()))})
        runs.atomic_write(out, buf.getvalue())
    return fmt
