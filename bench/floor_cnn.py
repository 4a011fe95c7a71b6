"""Hardware floor for a convnet preset: its step's matrix products at this core's rate.

A training step of a convnet on a CPU cannot go faster than its matrix products: for each
Conv2D (as a patch product, M = batch x output positions, K = kh x kw x channels, N =
filters) the forward product [M, K] @ [K, N], the kernel gradient [K, M] @ [M, N] and,
past the first layer, the input gradient [M, N] @ [N, K]; for each Dense the same three
with M = batch. This times each product alone, at the step's exact shapes, on this
machine, compiled by the same XLA as training, and adds them up: the epoch no convnet
program here (mnistlab, Keras, PyTorch) can beat by doing the products faster, only by
doing fewer. Everything else a step does (augmentation, the patch matrices, pooling,
activations, dropout, the loss, the update) is memory traffic on top.

Each product is timed as ``repeats`` products in one compiled loop whose left operand
depends on the previous product (one element written in place), so XLA can neither hoist
nor drop it, and nothing is allocated per product.

Usage (from the repository root):
    .venv/bin/python bench/floor_cnn.py [--preset cnn] [--repeats 200] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mnistlab import model, spec as spec_lib
from mnistlab.layers import Conv2D, Dense

import machine


class Product(NamedTuple):
    layer: str  # Keras' name of the layer
    role: str  # "forward", "kernel gradient" or "input gradient"
    m: int
    k: int
    n: int  # [m, k] @ [k, n]

    @property
    def multiply_adds(self) -> int:
        return self.m * self.k * self.n


def products(spec: spec_lib.RunSpec, image_shape: tuple[int, ...] = (28, 28)) -> list[Product]:
    """The matrix products of one training step of `spec` at its batch size.

    The first weighted layer has no input gradient (nothing before it is trained).
    """
    batch = spec.training.batch_size
    layer_list = spec.model.layers
    shapes = spec_lib.output_shapes(layer_list, model.as_shape(image_shape))
    out, first = [], True
    for layer, name, before, after in zip(layer_list, spec_lib.keras_names(layer_list), shapes, shapes[1:]):
        if isinstance(layer, Conv2D):
            m, k, n = batch * after[0] * after[1], layer.kernel_size[0] * layer.kernel_size[1] * before[-1], after[-1]
        elif isinstance(layer, Dense):
            m, k, n = batch, before[-1], after[-1]
        else:
            continue
        out += [Product(name, "forward", m, k, n), Product(name, "kernel gradient", k, m, n)]
        if not first:
            out.append(Product(name, "input gradient", m, n, k))
        first = False
    return out


def time_product(p: Product, repeats: int, trials: int = 3) -> float:
    """Seconds of one [m, k] @ [k, n] float32 product here: the best of `trials` loops."""
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    a = jax.random.normal(keys[0], (p.m, p.k), jnp.float32)
    b = jax.random.normal(keys[1], (p.k, p.n), jnp.float32)

    @jax.jit
    def loop(a, b):
        def body(_, carry):
            a, acc = carry
            c = a @ b
            # One element of `a` from this product: the next product depends on it.
            return a.at[0, 0].set(c[0, 0] * 1e-30), acc + c[-1, -1]

        return jax.lax.fori_loop(0, repeats, body, (a, jnp.float32(0)))

    compiled = loop.lower(a, b).compile()
    jax.block_until_ready(compiled(a, b))
    best = []
    for _ in range(trials):
        start = time.perf_counter()
        jax.block_until_ready(compiled(a, b))
        best.append(time.perf_counter() - start)
    return min(best) / repeats


def floor(spec: spec_lib.RunSpec, repeats: int, train_size: int = 60000) -> dict:
    """Each product's time and rate, and their sum per step and per epoch of `train_size`."""
    steps = -(-train_size // spec.training.batch_size)
    rows = []
    for p in products(spec):
        seconds = time_product(p, repeats)
        rows.append({**p._asdict(), "multiply_adds": p.multiply_adds, "ms": round(seconds * 1e3, 4),
                     "gflop_per_s": round(2 * p.multiply_adds / seconds / 1e9, 1)})
    step_s = sum(r["ms"] for r in rows) / 1e3
    macs = sum(r["multiply_adds"] for r in rows)
    return {"preset": spec.name, "batch": spec.training.batch_size, "steps_per_epoch": steps,
            "products": rows, "multiply_adds_per_step": macs, "ms_per_step": round(step_s * 1e3, 3),
            "gflop_per_s": round(2 * macs / step_s / 1e9, 1), "s_per_epoch": round(step_s * steps, 3)}


def markdown(result: dict) -> str:
    lines = ["| layer | product | [M, K] @ [K, N] | ms | GFLOP/s |", "| --- | --- | --- | --- | --- |"]
    for r in result["products"]:
        lines.append(f"| {r['layer']} | {r['role']} | [{r['m']}, {r['k']}] @ [{r['k']}, {r['n']}] "
                     f"| {r['ms']:.3f} | {r['gflop_per_s']:.0f} |")
    lines.append(f"| **a step** | {result['multiply_adds_per_step'] / 1e6:.0f} M multiply-adds | | "
                 f"**{result['ms_per_step']:.3f}** | {result['gflop_per_s']:.0f} |")
    lines.append("")
    lines.append(f"Floor: {result['s_per_epoch']:.2f} s an epoch ({result['steps_per_epoch']} steps of "
                 f"{result['batch']}).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cnn")
    ap.add_argument("--repeats", type=int, default=200, help="products per timed loop")
    ap.add_argument("--out", type=Path, help="write the result as JSON")
    args = ap.parse_args(argv)
    result = floor(spec_lib.preset(args.preset), args.repeats)
    result.update(machine=machine.describe(), jax=jax.__version__,
                  command=" ".join([sys.executable, *sys.argv]))
    print(markdown(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
