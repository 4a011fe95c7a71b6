"""mnistlab's `cnn` preset against the same convnet in Keras-on-JAX and PyTorch, in one run.

Runs sequentially, each as its own process so start-up is counted the same way:
  1. mnistlab's `cnn` preset through the CLI, cold (``MNISTLAB_COMPILE_CACHE=0`` unless the
     environment sets it otherwise):
     ``<python> -m mnistlab train --preset cnn --set training.epochs=N --test --runs-dir TMP``
  2. each CNN peer program (``bench/peers/cnn_keras.py`` on JAX, ``bench/peers/cnn_torch.py``;
     ``CNN_PEERS`` in ``bench/peers.py``, run in the seed peers' venvs) for ``--epochs`` epochs.

Reports per program what ``bench_seed.py`` does (wall, training, epoch 1 and the median of
epochs 2..N for mnistlab, mean s/epoch, test accuracy), the ratio of mnistlab's s/epoch to
each peer's, and to the faster peer's: issue 16's target is <= 0.6. Prints a Markdown
table and writes JSON (``--out``), with the machine, the versions and the command.

Usage (from the repository root):
    MNISTLAB_COMPILE_CACHE=0 .venv/bin/python bench/bench_cnn.py [--epochs 2]
        [--peers cnn-keras-jax,cnn-torch] [--out docs/bench-cnn.json]
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import bench_seed as seedlib
import peers as peerlib

PRESET = "cnn"
# mnistlab's s/epoch over the faster peer's, at most.
TARGET = 0.6


def faster_peer_ratio(records: list[dict], ratios: dict[str, dict]) -> dict | None:
    """mnistlab's s/epoch over the faster peer's (lowest mean s/epoch), against the target.

    mnistlab's figure is its steady one (median of epochs 2..N) when the run has more than
    one epoch, else its mean, as in ``ratios`` (``bench_seed.seed_ratios``); None when
    mnistlab or every peer failed.
    """
    peers = [r for r in records if r["program"] in ratios]
    if not peers:
        return None
    faster = min(peers, key=lambda r: r["s_per_epoch_mean"])
    rat = ratios[faster["program"]]
    steady = rat["steady_over_peer_mean"] is not None
    ratio = rat["steady_over_peer_mean"] if steady else rat["mean_over_peer_mean"]
    return {"peer": faster["program"], "peer_s_per_epoch": faster["s_per_epoch_mean"],
            "mnistlab_figure": "s_per_epoch_steady" if steady else "s_per_epoch_mean",
            "ratio": ratio, "target": TARGET, "met": ratio is not None and ratio <= TARGET}


def s_per_epoch(records: list[dict]) -> dict[str, float | None]:
    """The figure each program is compared by: mnistlab's steady s/epoch (its mean for a
    1-epoch run), the peers' mean."""
    return {r["program"]: (r.get("s_per_epoch_steady") or r["s_per_epoch_mean"])
            for r in records if "error" not in r}


def faster_line(faster: dict | None) -> str:
    if faster is None:
        return f"mnistlab {PRESET} ÷ the faster peer: — (no result to compare)"
    ratio = "—" if faster["ratio"] is None else f"{faster['ratio']:.2f}"
    return (f"mnistlab {PRESET} s/epoch ÷ the faster peer ({faster['peer']}, "
            f"{faster['peer_s_per_epoch']:.2f} s/epoch): **{ratio}** "
            f"(target <= {faster['target']}: {'met' if faster['met'] else 'missed'}).")


def command_line(argv: list[str] | None) -> str:
    """This run's command, with the environment settings that change what it measures."""
    env = [f"{k}={os.environ[k]}" for k in ("MNISTLAB_COMPILE_CACHE", "XLA_FLAGS", "JAX_NUM_CPU_DEVICES")
           if k in os.environ]
    return shlex.join([*env, sys.executable, sys.argv[0], *(sys.argv[1:] if argv is None else argv)])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=2, help="cnn preset and peers")
    ap.add_argument("--peers", default=",".join(peerlib.CNN_PEERS), help="'' for none")
    ap.add_argument("--out", type=Path, default=Path("docs/bench-cnn.json"))
    seedlib.add_common_args(ap)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    selected = peerlib.select_peers(args.peers, peerlib.CNN_PEERS)
    data_dir = args.data_dir or peerlib.default_data_dir()
    # A cold start, as the seed benchmark is run; mnistlab's env is a copy of this one.
    os.environ.setdefault("MNISTLAB_COMPILE_CACHE", "0")
    command = command_line(argv)

    setup = seedlib.ensure_peer_venvs(selected, args.venvs_dir)
    machine = seedlib.machine_info(args.python, selected, args.venvs_dir)

    jobs = [(f"mnistlab:{PRESET}", lambda: seedlib.run_mnistlab(
                args.python, PRESET, args.epochs, data_dir, args.mnistlab_arg,
                args.keep_runs, args.timeout))]
    records = seedlib.run_jobs(jobs + seedlib.peer_jobs(selected, data_dir, args.epochs, args))

    ratios = seedlib.seed_ratios(records, PRESET)
    faster = faster_peer_ratio(records, ratios)
    table = seedlib.markdown_table(records, ratios, PRESET) + "\n\n" + faster_line(faster)
    print(table)
    machine["loadavg_at_end"] = os.getloadavg()
    return seedlib.write_report(args.out, {
        "command": command, "epochs": args.epochs, "machine": machine, "setup_seconds": setup,
        "s_per_epoch": s_per_epoch(records), "ratios_cnn_over_peer": ratios,
        "ratio_over_faster_peer": faster, "records": records, "markdown": table})


if __name__ == "__main__":
    sys.exit(main())
