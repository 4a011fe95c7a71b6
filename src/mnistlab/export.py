"""A trained run's network out of mnistlab: ONNX, safetensors, or NumPy `.npz`.

    export.write(run, Path("model.onnx"))                      # format from the suffix
    export.write(run, Path("w.npz"), fmt="npz")

ONNX: the graph is built with `onnx.helper` straight from the spec, so it is the same
arithmetic as `model.probabilities`:

    image (N, 28, 28) uint8 | float32  -> Flatten -> Cast float -> Mul input_rescale
      -> per Dense: MatMul kernel, Add bias, activation  (Dropout: identity at inference)
      -> probabilities (N, classes): Softmax or Sigmoid

A float32 input carries the same 0..255 pixel values as the uint8 one (the rescale is
inside the graph either way). Activations map to ONNX operators of opset 17; exact GELU
is written out as 0.5 x (1 + erf(x / sqrt 2)), Keras' leaky ReLU has slope 0.2.

safetensors: the run's parameters (`dense/kernel`, ...) with the spec in the metadata,
as in a run folder. npz: the same arrays under the same names, plus `mnistlab.spec`,
the resolved spec as a JSON string (a plain unicode array: no pickle needed to load).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from mnistlab import model, runs
from mnistlab.errors import UserError
from mnistlab.spec import RunSpec

FORMATS = {"onnx": ".onnx", "safetensors": ".safetensors", "npz": ".npz"}
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
                            "*.safetensors or *.npz.")
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return fmt


def onnx_model(spec: RunSpec, params: dict[str, np.ndarray], *, input_type: str = "uint8",
               image_shape: tuple[int, int] = (28, 28)):
    """The network as an `onnx.ModelProto` (checked with `onnx.checker`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if input_type not in INPUT_TYPES:
        raise UserError(f"--input-type {input_type!r}: expected one of {', '.join(INPUT_TYPES)}")
    nodes, inits = [], []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def activation(x: str, name: str, fn: str) -> str:
        if fn == "linear":
            return x
        simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softplus": "Softplus"}
        if fn in simple:
            return node(simple[fn], [x], f"{name}/{fn}")
        if fn == "softmax":
            return node("Softmax", [x], f"{name}/softmax", axis=-1)
        if fn == "leaky_relu":
            return node("LeakyRelu", [x], f"{name}/leaky_relu", alpha=0.2)  # Keras 3's slope
        if fn == "elu":
            return node("Elu", [x], f"{name}/elu", alpha=1.0)
        if fn == "gelu":  # exact (erf) form, as Keras 3 and model.py
            scaled = node("Mul", [x, const(f"{name}/gelu/inv_sqrt2", 1 / math.sqrt(2))], f"{name}/gelu/scaled")
            erf = node("Erf", [scaled], f"{name}/gelu/erf")
            one_plus = node("Add", [erf, const(f"{name}/gelu/one", 1.0)], f"{name}/gelu/one_plus")
            half_x = node("Mul", [x, const(f"{name}/gelu/half", 0.5)], f"{name}/gelu/half_x")
            return node("Mul", [half_x, one_plus], f"{name}/gelu")
        raise AssertionError(f"activation {fn} is validated by spec but has no ONNX form here")

    elem = TensorProto.UINT8 if input_type == "uint8" else TensorProto.FLOAT
    x = node("Flatten", ["image"], "flat", axis=1)
    x = node("Cast", [x], "flat_float", to=TensorProto.FLOAT)
    x = node("Mul", [x, const("input_rescale", spec.model.input_rescale)], "rescaled")
    for name, layer in zip(model.layer_names(spec.model), spec.model.layers):
        if layer.type == "dense":
            x = node("MatMul", [x, const(f"{name}/kernel", params[f"{name}/kernel"])], f"{name}/matmul")
            if layer.use_bias:
                x = node("Add", [x, const(f"{name}/bias", params[f"{name}/bias"])], f"{name}/bias_add")
            x = activation(x, name, layer.activation)
        elif layer.type == "activation":
            x = activation(x, name, layer.activation)
        # dropout: identity at inference
    # model.logits leaves the final softmax/sigmoid to `probabilities`, which applies it
    # once; the spec's own final activation is that same function, applied above.
    nodes.append(helper.make_node("Identity", [x], ["probabilities"], name="probabilities"))
    last_dense = [n for n, layer in zip(model.layer_names(spec.model), spec.model.layers) if layer.type == "dense"][-1]
    classes = int(params[f"{last_dense}/kernel"].shape[1])
    graph = helper.make_graph(
        nodes, f"mnistlab-{spec.name}",
        [helper.make_tensor_value_info("image", elem, ["N", *image_shape])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        initializer=inits)
    onnx_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="mnistlab", ir_version=IR_VERSION)
    helper.set_model_props(onnx_proto, {"mnistlab.spec": json.dumps(spec.resolved()),
                                        "input": f"{input_type} pixels 0..255, shape (N, {image_shape[0]}, {image_shape[1]})",
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
        arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in params.items()}
        np.savez(buf, **arrays, **{"mnistlab.spec": np.array(json.dumps(run.spec.resolved()))})
        runs.atomic_write(out, buf.getvalue())
    return fmt
