"""The quality target of `mnistlab tune`: a 30-minute CPU search, then one test evaluation.

Runs, one after the other, as a user would (each its own process, the working tree's src/
first on PYTHONPATH):

  1. ``mnistlab tune SPACE --trials 1000 --timeout T --study-dir DIR`` where T is the
     budget less a margin for start-up and the last epoch (after T seconds the search asks
     for no new trial and stops those in training at the end of their epoch);
  2. ``mnistlab tune SPACE --study-dir DIR --final --with-validation``: the best trial's
     configuration retrained on train + validation, evaluated once on the test set.

The search's wall time (start-up, data, compilation and every trial) is what the budget
bounds; the final retraining is timed apart. Writes JSON (``--out``): the commands, the
times, the study's counts, best validation value and parameters, the importances, the
test result and whether it reaches ``--target``, and the machine (CPU, cores, load
average before and after). Exit code 1 when a step fails or the target is missed.

Usage (from the repository root):
    .venv/bin/python bench/bench_tune.py                         # 30 minutes (1800 s)
    .venv/bin/python bench/bench_tune.py --budget 150 --out /tmp/smoke.json   # a quick check
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import machine

ROOT = Path(__file__).resolve().parents[1]


def margin(budget: float) -> float:
    """Seconds of the budget kept for what `--timeout` does not count: interpreter start-up,
    reading MNIST, and the last epoch and records after the deadline (an epoch of the
    largest network takes about 10 s on 2 busy cores)."""
    return min(45.0, budget / 4)


def env() -> dict[str, str]:
    src = str(ROOT / "src")
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": src if not old else f"{src}{os.pathsep}{old}", "COLUMNS": "200"}


def run(cmd: list[str], log: Path, environment: dict[str, str] | None = None,
        timeout: float | None = None) -> tuple[int, float]:
    """(exit code, seconds) of `cmd` run from the root, its output in `log`; `environment`
    defaults to `env()`. A process past `timeout` gets SIGTERM, as `timeout(1)` sends (a
    search stopped from outside keeps what it saved)."""
    started = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=environment or env(), cwd=ROOT)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            code = proc.wait()
    return code, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=1800.0, help="seconds for the whole search")
    parser.add_argument("--space", type=Path, default=ROOT / "examples" / "tune-mlp.toml")
    parser.add_argument("--study-dir", type=Path, default=None, help="default: studies/bench-tune-<time>")
    parser.add_argument("--storage", default=None, help="an Optuna storage URL (default: SQLite in the folder)")
    parser.add_argument("--target", type=float, default=0.986, help="test accuracy to reach")
    parser.add_argument("--no-final", action="store_true", help="search only")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: STUDY_DIR/bench.json)")
    args = parser.parse_args(argv)

    folder = args.study_dir or ROOT / "studies" / f"bench-tune-{dt.datetime.now():%Y%m%d-%H%M%S}"
    if (folder / "study.json").exists():
        print(f"{folder} holds a study already: a budgeted run starts fresh; give another --study-dir",
              file=sys.stderr)
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    timeout = max(1.0, args.budget - margin(args.budget))
    storage = ["--storage", args.storage] if args.storage else []
    base = [sys.executable, "-m", "mnistlab", "tune", str(args.space), "--study-dir", str(folder), *storage]
    search = [*base, "--trials", "1000", "--timeout", f"{timeout:g}"]
    final = [*base, "--final", "--with-validation"]
    record: dict = {"date": dt.datetime.now().isoformat(timespec="seconds"), "budget_seconds": args.budget,
                    "timeout_seconds": timeout, "space": str(args.space), "study_dir": str(folder),
                    "commands": {"search": " ".join(search[1:]), "final": " ".join(final[1:])},
                    "machine_before": machine.describe()}
    print("search:", " ".join(search[1:]), flush=True)
    code, seconds = run(search, folder / "search.log")
    record.update(search_exit=code, search_seconds=seconds, within_budget=seconds <= args.budget)
    study = json.loads((folder / "study.json").read_text()) if (folder / "study.json").exists() else {}
    record["study"] = {k: study.get(k) for k in ("complete", "pruned", "failed", "best_trial", "best_value",
                                                 "best_params", "importances", "sampler", "pruner")}
    ok = code == 0 and study.get("best_trial") is not None
    if ok and not args.no_final:
        print("final:", " ".join(final[1:]), flush=True)
        code, seconds = run(final, folder / "final.log")
        record.update(final_exit=code, final_seconds=seconds)
        evaluations = json.loads((folder / "final.json").read_text()) if (folder / "final.json").exists() else []
        record["final"] = evaluations[-1] if evaluations else None
        accuracy = ((record["final"] or {}).get("test") or {}).get("accuracy")
        record["test_accuracy"] = accuracy
        record["target"] = args.target
        record["target_reached"] = accuracy is not None and accuracy >= args.target
        ok = code == 0 and record["target_reached"]
    record["machine_after"] = machine.describe()
    out = args.out or folder / "bench.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    s = record["study"]
    print(f"search: {record['search_seconds']:.0f} s (budget {args.budget:.0f} s), {s['complete']} complete, "
          f"{s['pruned']} pruned, {s['failed']} failed; best val_accuracy {s['best_value']} (trial {s['best_trial']})")
    if "test_accuracy" in record:
        print(f"final: test accuracy {record['test_accuracy']} (target {args.target}: "
              f"{'reached' if record['target_reached'] else 'missed'}), retrained in {record['final_seconds']:.0f} s")
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
