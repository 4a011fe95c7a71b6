"""Hardware floor for the seed network: how fast can one epoch possibly go here?

Times a jitted ``lax.scan`` over one epoch (1875 steps of batch 32 by default) that
does only the work the seed network cannot avoid: the matrix products of a
784-1000-10 MLP forward and backward pass (x@W1, relu, h@W2; then dW2 = h.T@g,
dh = g@W2.T, dW1 = x.T@dh) and a parameter update.  The batch is gathered by a
shuffled index from a device-resident uint8 array, as an efficient trainer would.
There is no loss value, no softmax, no metrics: whatever mnistlab spends beyond these
numbers is overhead it could in principle remove.

Variants (each with its own compiled epoch):
  sgd       plain SGD update (optax.sgd)
  adam      Adam update (optax.adam)
  sgd+l2    as sgd, plus an L2 penalty computed naively (sum of squares of both
  adam+l2   kernels, kept alive in the carry) and its gradient added to dW

Usage: .venv/bin/python bench/floor.py [--epochs 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

N_TRAIN, N_IN, N_HIDDEN, N_OUT = 60000, 784, 1000, 10


class Params(NamedTuple):
    w1: jax.Array
    b1: jax.Array
    w2: jax.Array
    b2: jax.Array


def init_params(key: jax.Array) -> Params:
    k1, k2 = jax.random.split(key)
    return Params(jax.random.normal(k1, (N_IN, N_HIDDEN)) * 0.035, jnp.zeros(N_HIDDEN),
                  jax.random.normal(k2, (N_HIDDEN, N_OUT)) * 0.044, jnp.zeros(N_OUT))


def matmul_grads(p: Params, x: jax.Array) -> Params:
    """Forward and backward by hand: exactly the five matmuls, nothing else heavy.

    The upstream gradient is the logits scaled by 1/B (the gradient of a quadratic
    "loss"), which costs one elementwise op instead of a softmax cross-entropy, so the
    probe measures the products and the update, not the loss.
    """
    h = jax.nn.relu(x @ p.w1 + p.b1)
    logits = h @ p.w2 + p.b2
    g = logits * (1.0 / x.shape[0])
    dw2 = h.T @ g
    dh = (g @ p.w2.T) * (h > 0)
    dw1 = x.T @ dh
    return Params(dw1, dh.sum(0), dw2, g.sum(0))


def add_naive_l2(p: Params, grads: Params, lam: float) -> tuple[jax.Array, Params]:
    """L2 on the kernels as a separate sum-of-squares and its own gradient.

    Returns the penalty too: the caller accumulates it so XLA cannot drop the
    reduction as dead code (a real trainer reports it as part of the loss).
    """
    penalty = lam * (jnp.sum(p.w1 ** 2) + jnp.sum(p.w2 ** 2))
    return penalty, grads._replace(w1=grads.w1 + 2 * lam * p.w1, w2=grads.w2 + 2 * lam * p.w2)


def make_epoch(opt: optax.GradientTransformation, l2: float | None, steps: int,
               batch: int) -> Callable:
    """A jitted function running one shuffled epoch; returns the new state.

    The image array is an argument (device-resident, not baked in as a constant) and
    the scan body closes over it, so each step is a gather of ``batch`` rows.
    """

    @jax.jit
    def epoch(params, opt_state, images, key):
        def step(carry, idx):
            params, opt_state, acc = carry
            x = images[idx].astype(jnp.float32) * (1.0 / 255.0)
            grads = matmul_grads(params, x)
            if l2 is not None:
                penalty, grads = add_naive_l2(params, grads, l2)
                acc = acc + penalty
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, acc), None

        perm = jax.random.permutation(key, images.shape[0])[: steps * batch]
        carry = (params, opt_state, jnp.zeros((), jnp.float32))
        (params, opt_state, acc), _ = jax.lax.scan(step, carry, perm.reshape(steps, batch))
        return params, opt_state, acc

    return epoch


def time_variant(name: str, opt: optax.GradientTransformation, l2: float | None,
                 images: jax.Array, epochs: int, steps: int, batch: int) -> dict:
    """Compile (timed separately), then time ``epochs`` epochs one by one."""
    params = init_params(jax.random.PRNGKey(0))
    opt_state = opt.init(params)
    epoch = make_epoch(opt, l2, steps, batch)
    key = jax.random.PRNGKey(1)
    t0 = time.perf_counter()
    compiled = epoch.lower(params, opt_state, images, key).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for e in range(epochs):
        t0 = time.perf_counter()
        params, opt_state, acc = compiled(params, opt_state, images, jax.random.fold_in(key, e))
        jax.block_until_ready((params, opt_state, acc))
        times.append(time.perf_counter() - t0)
    return {"variant": name, "compile_s": round(compile_s, 3),
            "s_per_epoch_median": round(statistics.median(times), 3),
            "s_per_epoch_min": round(min(times), 3),
            "epochs_s": [round(t, 3) for t in times],
            "us_per_step_median": round(statistics.median(times) / steps * 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per variant")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=N_TRAIN // 32, help="steps per epoch")
    ap.add_argument("--l2", type=float, default=0.01, help="L2 factor for the +l2 variants")
    ap.add_argument("--variants", default="sgd,adam,sgd+l2,adam+l2")
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = ap.parse_args(argv)

    # Content does not matter for dense matmul cost; random pixels avoid reading MNIST.
    images = jax.device_put(jax.random.randint(jax.random.PRNGKey(2), (N_TRAIN, N_IN), 0, 256,
                                               dtype=jnp.int32).astype(jnp.uint8))
    optimizers = {"sgd": lambda: optax.sgd(1e-2), "adam": lambda: optax.adam(1e-3, eps=1e-7)}
    results = []
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        base, _, extra = name.partition("+")
        if base not in optimizers or extra not in ("", "l2"):
            raise SystemExit(f"unknown variant {name!r}")
        res = time_variant(name, optimizers[base](), args.l2 if extra else None,
                           images, args.epochs, args.steps, args.batch)
        results.append(res)
        print(f"{name:9s} compile {res['compile_s']:6.2f} s   "
              f"s/epoch median {res['s_per_epoch_median']:.3f}  min {res['s_per_epoch_min']:.3f}"
              f"   ({res['us_per_step_median']} us/step)", flush=True)
    if args.json:
        print(json.dumps({"jax": jax.__version__, "optax": optax.__version__,
                          "backend": jax.default_backend(), "steps": args.steps,
                          "batch": args.batch, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
