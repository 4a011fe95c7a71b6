"""Populations against single runs: is training 16 configurations at once worth it?

For the seed architecture (784-1000-10, batch 32, Adam) and a small one (784-100-10), three
epochs of real MNIST, every run through the one driver that `train`, `sweep`, `tune` and
`ablate` use (`populations.run`), the fastest epoch after the first timed:
  - a single run (a population of one), times 16;
  - 16 members (16 learning rates) trained as one population, at the width `choose_lanes`
    measures, and at forced widths, to show what the measurement decides between.
Prints a Markdown table and writes JSON. Usage:
  .venv/bin/python bench/bench_population.py [--members 16] [--widths 1,4,16] [--out FILE]

`--sizes 1,16,64,256` measures instead how one population scales (the GPU figures,
bench/gpu.sh): for each size, that many `seed` members trained together, the fastest
epoch after the first and the device's peak memory (the process's peak RSS on a CPU).
`--epochs` and `--subset` shrink the work (the CPU test of bench/gpu.sh).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time

import jax

import numpy as np

from mnistlab import data, engine, populations
from mnistlab import spec as spec_lib

import machine


def members(base: spec_lib.RunSpec, count: int, epochs: int) -> list[spec_lib.RunSpec]:
    rates = np.geomspace(1e-4, 1e-2, count)
    return [spec_lib.with_values(base, {"optimizer.learning_rate": float(r), "training.seed": i,
                                        "training.epochs": epochs, "training.validation.fraction": 0.0})
            for i, r in enumerate(rates)]


def epoch_seconds(specs, arrays, lanes) -> float:
    """The fastest epoch after the first (which compiles and warms caches), all members together."""
    trained = [populations.Member(i, spec) for i, spec in enumerate(specs)]
    populations.run(trained, lambda _: arrays, metric="loss", lanes=lanes)
    epochs = len(trained[0].history)
    return min(sum(m.history[e]["seconds"] for m in trained) for e in range(1, epochs))


def bench(name: str, base: spec_lib.RunSpec, arrays, count: int, widths: list[int], repeats: int) -> dict:
    """Single runs and populations, interleaved `repeats` times; each keeps its fastest epoch
    (this machine's speed drifts by tens of percent over minutes, see docs/benchmarks.md)."""
    specs = members(base, count, epochs=3)
    chosen = engine.choose_lanes(base, arrays.train_images, arrays.train_labels, count)
    widths = sorted(set(widths) | {chosen})
    concurrency = {w: engine.choose_concurrency(base, arrays.train_images, arrays.train_labels, w, count)
                   for w in widths}
    single, seconds = [], {w: [] for w in widths}
    for _ in range(repeats):
        single.append(epoch_seconds(specs[:1], arrays, 1))
        for width in widths:
            seconds[width].append(epoch_seconds(specs, arrays, width))
    rows = {"single_epoch_s": min(single), "single_runs": single, "chosen_lanes": chosen, "widths": {}}
    for width in widths:
        best = min(seconds[width])
        rows["widths"][width] = {"epoch_s": best, "runs": seconds[width], "concurrency": concurrency[width],
                                 "ratio_to_singles": best / (count * min(single))}
        print(f"[bench] {name} width {width} ({concurrency[width]} slice(s) at once): {best:.2f} s for {count} members "
              f"({best / (count * min(single)):.3f} x {count} single runs)", flush=True)
    return rows


def peak_memory_bytes() -> tuple[int, str]:
    """(bytes, what was read): the accelerator's peak allocation where JAX reports one,
    else the process's peak resident set (CPU: weights, data and activations all live there)."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), f"{jax.devices()[0].device_kind} peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def scaling(arrays, sizes: list[int], epochs: int) -> list[dict]:
    """One population of each size of `seed` members: epoch seconds and peak memory.

    The peaks are the process's so far and never go down, so the sizes run smallest first:
    each peak is then that of the largest population yet, the one just trained."""
    rows = []
    for size in sorted(sizes):
        specs = members(spec_lib.preset("seed"), size, epochs)
        seconds = epoch_seconds(specs, arrays, lanes=None)
        memory, source = peak_memory_bytes()
        rows.append({"members": size, "epoch_s": seconds, "member_epoch_s": seconds / size,
                     "peak_memory_gib": memory / 2**30, "memory_source": source})
        print(f"[bench] {size} seed members: {seconds:.2f} s/epoch ({seconds / size:.3f} s a member), "
              f"peak {memory / 2**30:.2f} GiB ({source})", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--widths", default="1,4,16")
    parser.add_argument("--networks", default="seed,small")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="docs/bench-population.json")
    parser.add_argument("--sizes", default=None, help="population sizes to scale through, e.g. 1,16,64,256")
    parser.add_argument("--epochs", type=int, default=3, help="with --sizes (at least 2: the first compiles)")
    parser.add_argument("--subset", type=int, default=None, help="train images, with --sizes")
    args = parser.parse_args()
    arrays = data.load("mnist")
    if args.sizes:
        if args.subset:
            arrays = dataclasses.replace(arrays, train_images=arrays.train_images[:args.subset],
                                     train_labels=arrays.train_labels[:args.subset])
        rows = scaling(arrays, [int(n) for n in args.sizes.split(",")], args.epochs)
        print("\n| members | s/epoch | s/epoch a member | peak memory GiB |\n| --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['members']} | {r['epoch_s']:.2f} | {r['member_epoch_s']:.3f} | {r['peak_memory_gib']:.2f} |")
        with open(args.out, "w") as f:
            json.dump({"machine": {**machine.describe(), "date": time.strftime("%Y-%m-%d")}, "sizes": rows}, f, indent=1)
        return
    widths = [int(w) for w in args.widths.split(",")]
    seed = spec_lib.preset("seed")
    small = spec_lib.with_values(seed, {"model.layers.0.units": 100})
    results = {"machine": {**machine.describe(), "date": time.strftime("%Y-%m-%d")}}
    networks = {"seed": ("seed 784-1000-10", seed), "small": ("small 784-100-10", small)}
    for name in args.networks.split(","):
        label, base = networks[name]
        results[name] = bench(label, base, arrays, args.members, widths, args.repeats)
    print("\n| network | single run s/epoch | lanes chosen | width | slices at once | population s/epoch | ÷ 16 single runs |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.networks.split(","):
        r = results[name]
        for width, w in r["widths"].items():
            mark = " (chosen)" if width == r["chosen_lanes"] else ""
            print(f"| {name} | {r['single_epoch_s']:.2f} | {r['chosen_lanes']} | {width}{mark} | {w['concurrency']} | "
                  f"{w['epoch_s']:.2f} | {w['ratio_to_singles']:.3f} |")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
