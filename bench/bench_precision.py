"""Keras' dtype policies side by side: float32 against mixed_bfloat16, in one run.

Runs each preset under each policy through the CLI, one process after another, the two
policies alternating so that a drift in the machine's load falls on both; `--seeds N`
trains each pair under N seeds (`training.seed`) to show what bfloat16 costs in accuracy
apart from a seed's luck. Reports per preset and policy the median s/epoch (epochs 2..N,
compilation left out), the wall time, the test accuracy (mean over seeds), and mixed's
s/epoch over float32's. Prints a Markdown table and writes JSON (`--out`) with the
machine: bfloat16 is fast only where the CPU has bfloat16 instructions (avx512_bf16,
amx_bf16: `machine.flags`) or on a GPU.

Usage (from the repository root):
    .venv/bin/python bench/bench_precision.py [--presets seed,fast,cnn] [--seeds 1]
        [--epochs N] [--out docs/bench-precision.json]
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
from pathlib import Path

import bench_seed as seedlib
import peers as peerlib

POLICIES = ("float32", "mixed_bfloat16")


def jobs(presets: list[str], seeds: int, epochs: int | None, args: argparse.Namespace, data_dir: Path):
    """(name, job) for every preset, seed and policy; the policies alternate within a seed."""
    out = []
    for preset in presets:
        for seed in range(seeds):
            for policy in POLICIES:
                extra = ["--set", f"model.dtype_policy={policy}", "--set", f"training.seed={seed}", *args.mnistlab_arg]
                out.append((f"mnistlab:{preset}:{policy}:{seed}", lambda p=preset, e=extra: seedlib.run_mnistlab(
                    args.python, p, epochs, data_dir, e, args.keep_runs, args.timeout)))
    return out


def summarize(names: list[str], records: list[dict]) -> list[dict]:
    """One row per (preset, policy): medians of the seeds' s/epoch and wall, mean accuracy."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for name, rec in zip(names, records):
        _, preset, policy, _ = name.split(":")
        groups.setdefault((preset, policy), []).append(rec)
    rows = []
    for (preset, policy), recs in groups.items():
        ok = [r for r in recs if "error" not in r]
        per_epoch = [r["s_per_epoch_steady"] or r["s_per_epoch_mean"] for r in ok]
        rows.append({"preset": preset, "policy": policy, "runs": len(ok), "failed": len(recs) - len(ok),
                     "epochs": ok[0]["epochs"] if ok else None,
                     "s_per_epoch": statistics.median(per_epoch) if ok else None,
                     "wall_s": statistics.median(r["wall_s"] for r in ok) if ok else None,
                     "test_acc": statistics.fmean(r["test_acc"] for r in ok) if ok else None,
                     "test_accs": [r["test_acc"] for r in ok]})
    for row in rows:
        base = next(r for r in rows if r["preset"] == row["preset"] and r["policy"] == POLICIES[0])
        row["over_float32"] = (row["s_per_epoch"] / base["s_per_epoch"]
                               if row["s_per_epoch"] and base["s_per_epoch"] else None)
        row["accuracy_change"] = (row["test_acc"] - base["test_acc"]
                                  if row["test_acc"] is not None and base["test_acc"] is not None else None)
    return rows


def markdown_table(rows: list[dict]) -> str:
    fmt = seedlib._fmt
    lines = ["| preset | policy | epochs | runs | s/epoch (2..N median) | ÷ float32 | wall s | test accuracy "
             "(mean) | change |", "|" + " --- |" * 9]
    for r in rows:
        change = None if r["accuracy_change"] is None else 100 * r["accuracy_change"]
        lines.append(f"| {r['preset']} | {r['policy']} | {r['epochs'] or '—'} | {r['runs']} | "
                     f"{fmt(r['s_per_epoch'])} | {fmt(r['over_float32'])} | {fmt(r['wall_s'], '.1f')} | "
                     f"{fmt(r['test_acc'], '.4f')} | {fmt(change, '+.2f')} |")
    lines += ["", "÷ float32 < 1: mixed_bfloat16 is faster; change: test accuracy points against float32 "
                  "(mean over the seeds)."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="seed,fast,cnn")
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per preset and policy")
    ap.add_argument("--epochs", type=int, default=None, help="for every preset (default: each preset's own)")
    ap.add_argument("--out", type=Path, default=Path("docs/bench-precision.json"))
    seedlib.add_common_args(ap)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    data_dir = args.data_dir or peerlib.default_data_dir()
    host = seedlib.machine_info(args.python, [], args.venvs_dir)
    planned = jobs(presets, args.seeds, args.epochs, args, data_dir)
    records = seedlib.run_jobs(planned)
    rows = summarize([name for name, _ in planned], records)
    table = markdown_table(rows)
    print(table)
    host["loadavg_at_end"] = os.getloadavg()
    command = shlex.join(["bench/bench_precision.py", *(sys.argv[1:] if argv is None else argv)])
    return seedlib.write_report(args.out, {"command": command, "machine": host, "rows": rows,
                                           "records": records, "markdown": table})


if __name__ == "__main__":
    sys.exit(main())
