"""The `speedrun` preset against the same network in PyTorch: seconds to 99% MNIST, in one run.

For each seed (`--seeds`, default 5), one after the other and each a whole process:
  1. ``<python> -m mnistlab train --preset speedrun --set training.seed=S --test``, with the
     compilation cache off (``MNISTLAB_COMPILE_CACHE=0``: compilation is counted; `--warm`
     keeps the user's cache, as a second run finds it);
  2. ``bench/peers/speedrun_torch.py`` with ``SEED=S`` (the same network, schedule and batch).
Reports per program the test accuracy (mean, min, max, standard deviation over the seeds) and
the whole-process wall time (mean, max), against the preset's targets: a mean of at least
99.0% in at most 15 s. Prints a Markdown table and writes JSON (`--out`) with the machine.

Usage (from the repository root):
    .venv/bin/python bench/bench_speedrun.py [--seeds 5] [--warm] [--peers speedrun-torch]
        [--out docs/bench-speedrun.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import statistics
import sys
from pathlib import Path

import bench_seed as seedlib
import peers as peerlib
from mnistlab import spec as spec_lib

PRESET = "speedrun"
EPOCHS = spec_lib.preset(PRESET).training.epochs  # the peer trains as many
TARGET_ACCURACY, TARGET_SECONDS = 0.99, 15.0


def jobs(seeds: int, peers: list[peerlib.Peer], args: argparse.Namespace, data_dir: Path):
    """(name, job) for each seed: mnistlab, then each peer, so a drift in load falls on all."""
    out = []
    for seed in range(seeds):
        extra = ["--set", f"training.seed={seed}", *args.mnistlab_arg]
        out.append((f"mnistlab:{PRESET}:{seed}", lambda e=extra: seedlib.run_mnistlab(
            args.python, PRESET, None, data_dir, e, args.keep_runs, args.timeout)))
        for peer in peers:
            seeded = dataclasses.replace(peer, env={**peer.env, "SEED": str(seed)})
            out.append((f"peer:{peer.name}:{seed}", lambda p=seeded: seedlib.run_peer_record(
                p, data_dir, EPOCHS, args.venvs_dir, None, args.timeout)))
    return out


def summarize(names: list[str], records: list[dict]) -> list[dict]:
    """One row per program over its seeds."""
    by_program: dict[str, list[dict]] = {}
    for name, rec in zip(names, records):
        by_program.setdefault(name.rsplit(":", 1)[0], []).append(rec)
    rows = []
    for program, recs in by_program.items():
        ok = [r for r in recs if "error" not in r]
        accs, walls = [r["test_acc"] for r in ok], [r["wall_s"] for r in ok]
        row = {"program": program, "runs": len(ok), "failed": len(recs) - len(ok), "test_accs": accs,
               "walls_s": walls, "s_per_epoch": [r["s_per_epoch_steady"] or r["s_per_epoch_mean"] for r in ok]}
        if ok:
            row.update(acc_mean=statistics.fmean(accs), acc_min=min(accs), acc_max=max(accs),
                       acc_sd=statistics.stdev(accs) if len(accs) > 1 else 0.0,
                       wall_mean=statistics.fmean(walls), wall_max=max(walls),
                       meets=statistics.fmean(accs) >= TARGET_ACCURACY and max(walls) <= TARGET_SECONDS)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    fmt = seedlib._fmt
    lines = ["| program | seeds | test accuracy mean | min | max | sd | wall s mean | wall s max | s/epoch "
             f"(median) | >= {TARGET_ACCURACY:.1%} in <= {TARGET_SECONDS:.0f} s |", "|" + " --- |" * 10]
    for r in rows:
        if not r["runs"]:
            lines.append(f"| {r['program']} | 0 (all {r['failed']} failed) |" + " |" * 8)
            continue
        pct = lambda x: f"{100 * x:.2f}%"
        lines.append(f"| {r['program']} | {r['runs']} | {pct(r['acc_mean'])} | {pct(r['acc_min'])} | "
                     f"{pct(r['acc_max'])} | {100 * r['acc_sd']:.2f} | {fmt(r['wall_mean'], '.1f')} | "
                     f"{fmt(r['wall_max'], '.1f')} | {fmt(statistics.median(r['s_per_epoch']))} | "
                     f"{'yes' if r['meets'] else 'no'} |")
    lines += ["", "wall: the whole process (interpreter start, imports, data, compilation, training, "
                  "the one test evaluation); sd in accuracy points."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--warm", action="store_true", help="keep the compilation cache (default: off, counted)")
    ap.add_argument("--peers", default=peerlib.SPEEDRUN_PEER.name, help="'' for none")
    ap.add_argument("--out", type=Path, default=Path("docs/bench-speedrun.json"))
    seedlib.add_common_args(ap)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.warm:
        os.environ["MNISTLAB_COMPILE_CACHE"] = "0"
    peers = peerlib.select_peers(args.peers, {peerlib.SPEEDRUN_PEER.name: peerlib.SPEEDRUN_PEER})
    data_dir = args.data_dir or peerlib.default_data_dir()
    setup = seedlib.ensure_peer_venvs(peers, args.venvs_dir)
    host = seedlib.machine_info(args.python, peers, args.venvs_dir)
    planned = jobs(args.seeds, peers, args, data_dir)
    records = seedlib.run_jobs(planned)
    rows = summarize([name for name, _ in planned], records)
    table = markdown_table(rows)
    print(table)
    host["loadavg_at_end"] = os.getloadavg()
    command = shlex.join(["bench/bench_speedrun.py", *(sys.argv[1:] if argv is None else argv)])
    return seedlib.write_report(args.out, {"command": command, "machine": host, "setup_seconds": setup,
                                           "compile_cache": args.warm, "rows": rows, "records": records,
                                           "markdown": table})


if __name__ == "__main__":
    sys.exit(main())
