"""Trials a minute of `mnistlab tune` with 1 worker process against N pinned ones (`--workers`).

The same grid of equal-cost trials (the MLP space's smallest network, 784-512-10 with
dropout 0.2 and input dropout 0.1, Adam's rate varied over the grid, `--epochs` epochs
at batch 128 with a cosine decay) searched whole by each setting, one
after the other, alternating, `--repeats` times; each is a whole process (start-up, data,
compilation, every trial), as a user runs it. Reports the wall time, trials a minute and
the ratio to one worker, with the machine.

Usage (from the repository root):
    .venv/bin/python bench/bench_workers.py --workers 1,2 --out docs/bench-workers.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import tomllib
from pathlib import Path

import tomli_w

import machine
from bench_tune import ROOT, run

RATES = [5e-4, 8e-4, 1e-3, 1.5e-3, 2e-3, 2.5e-3]  # the grid: one trial each


def space(epochs: int, trials: int) -> dict:
    """examples/tune-mlp.toml with its search replaced by a grid of equal-cost trials."""
    raw = tomllib.loads((ROOT / "examples" / "tune-mlp.toml").read_text())
    steps = epochs * -(-54_000 // 128)
    raw["set"] = [s for s in raw["set"] if not s.startswith(("training.epochs", "optimizer.schedule"))] + [
        f"training.epochs={epochs}", f'optimizer.schedule={{name = "cosine", decay_steps = {steps}}}',
        "model.layers.0.units=512"]  # the seed network at the space's smallest width
    raw["name"] = "bench-workers"
    # One value each but for the rate: a trial as the space's are, dropout's random masks included.
    fixed = {"mlp.dropout": 0.2, "mlp.input_dropout": 0.1, "mlp.l2": 1e-6}
    raw["search"] = {"trials": trials, "seed": 0,
                     "params": {"optimizer.learning_rate": {"choice": RATES[:trials]},
                                **{name: {"choice": [value]} for name, value in fixed.items()}}}
    raw["tune"] = {**raw.get("tune", {}), "sampler": "grid", "pruner": "none", "batch": 1, "workers": 1}
    return raw


def search(workers: int, space_file: Path, folder: Path, trials: int) -> dict:
    cmd = [sys.executable, "-m", "mnistlab", "tune", str(space_file), "--trials", str(trials), "--study-dir",
           str(folder), "--workers", str(workers), "--quiet"]
    code, seconds = run(cmd, folder.with_suffix(".log"))
    rows = json.loads((folder / "trials.json").read_text()) if code == 0 else []
    done = [r for r in rows if r["state"] == "COMPLETE"]
    return {"workers": workers, "exit": code, "seconds": seconds, "complete": len(done),
            "trials_per_minute": 60 * len(done) / seconds if done else None,
            "train_seconds_per_trial": statistics.median(r["train_seconds"] for r in done) if done else None,
            "val_accuracy": {r["trial"]: r["value"] for r in done}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="the settings compared, e.g. 1,2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--trials", type=int, default=6, choices=range(2, len(RATES) + 1))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",")]
    info = machine.describe()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        space_file = Path(tmp) / "space.toml"
        space_file.write_text(tomli_w.dumps(space(args.epochs, args.trials)))
        for repeat in range(args.repeats):
            for workers in counts if repeat % 2 == 0 else reversed(counts):  # alternate: drift falls on both
                record = search(workers, space_file, Path(tmp) / f"w{workers}-{repeat}", args.trials)
                print(json.dumps(record), flush=True)
                if record["exit"] != 0:
                    return 1
                runs.append(record)
    one = statistics.median(r["seconds"] for r in runs if r["workers"] == counts[0])
    summary = {w: {"median_seconds": statistics.median(r["seconds"] for r in runs if r["workers"] == w),
                   "speed-up": one / statistics.median(r["seconds"] for r in runs if r["workers"] == w)}
               for w in counts}
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": info,
              "epochs": args.epochs, "trials": args.trials, "runs": runs, "summary": summary,
              "machine_after": machine.describe()["loadavg"]}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
