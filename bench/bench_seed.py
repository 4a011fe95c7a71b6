"""mnistlab's presets against the peer programs, on one machine, in one run.

Runs sequentially, each as its own process so start-up is counted the same way:
  1. mnistlab presets (default seed, fast, keras-mlp) through the CLI:
     ``<python> -m mnistlab train --preset P [--set training.epochs=N] --test --runs-dir TMP``
     The seed preset always gets ``--epochs``; the others keep their own epoch count
     unless ``--other-epochs`` is given.
  2. each peer program (``bench/peers.py``) for ``--epochs`` epochs.

Reports per program: wall seconds (start-up included), training seconds, seconds per
epoch, test accuracy; for mnistlab also epoch 1 (compilation included) apart from
the median of epochs 2..N; and the ratio of the seed preset's s/epoch to each peer's.
Prints a Markdown table and writes JSON (``--out``), with the machine and versions.

Usage (from the repository root):
    .venv/bin/python bench/bench_seed.py [--epochs 20] [--peers keras-jax,keras-tf,torch]
        [--presets seed,fast,keras-mlp] [--out docs/bench-seed.json]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import machine
import peers as peerlib

SEED = "seed"


# ----------------------------------------------------------------------------- mnistlab

def mnistlab_command(python: str, preset: str, epochs: int | None, runs_dir: Path,
                     data_dir: Path, extra: list[str]) -> list[str]:
    """The CLI call; ``--data-dir`` makes mnistlab read the very files the peers read."""
    cmd = [python, "-m", "mnistlab", "train", "--preset", preset]
    if epochs is not None:
        cmd += ["--set", f"training.epochs={epochs}"]
    return cmd + ["--test", "--runs-dir", str(runs_dir), "--data-dir", str(data_dir), *extra]


def mnistlab_env() -> dict[str, str]:
    """Put the tree's src/ first so the working tree is measured, installed or not."""
    src = str(peerlib.repo_root() / "src")
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": src if not old else f"{src}{os.pathsep}{old}"}


def error_headline(stderr: str) -> str:
    """The line that says what went wrong: the CLI's 'error: ...', else the last line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if ln.lower().startswith("error"):
            return ln
    return lines[-1] if lines else "(no output on stderr)"


def find_summary(runs_dir: Path) -> Path:
    """The CLI makes exactly one run folder holding summary.json."""
    found = sorted(runs_dir.rglob("summary.json"))
    if len(found) != 1:
        raise RuntimeError(f"expected one summary.json under {runs_dir}, found {len(found)}")
    return found[0]


def summarize_mnistlab(summary: dict) -> dict:
    """Pull the figures the table needs out of a run's summary.json.

    Epoch 1 includes XLA compilation, so the steady-state figure is the median of
    epochs 2..N (None for a 1-epoch run); ``s_per_epoch_mean`` is train_s / epochs,
    the like-for-like figure against peers, whose own s/epoch is a plain mean.
    """
    spe = [float(s) for s in summary["seconds_per_epoch"]]
    train_s = float(summary["train_seconds"])
    test = summary.get("test") or {}
    return {
        "epochs": len(spe),
        "train_s": train_s,
        "compile_s": summary.get("compile_seconds"),
        "epoch1_s": spe[0] if spe else None,
        "s_per_epoch_steady": statistics.median(spe[1:]) if len(spe) > 1 else None,
        "s_per_epoch_mean": train_s / len(spe) if spe else None,
        "seconds_per_epoch": spe,
        "test_acc": test.get("accuracy"),
        "test_loss": test.get("loss"),
    }


def run_mnistlab(python: str, preset: str, epochs: int | None, data_dir: Path,
                 extra: list[str], keep_dir: Path | None, timeout: float | None) -> dict:
    """Run one preset through the CLI; wall time spans the whole process."""
    with tempfile.TemporaryDirectory(prefix=f"mnistlab-bench-{preset}-") as tmp:
        runs_dir = (keep_dir / preset) if keep_dir else Path(tmp)
        runs_dir.mkdir(parents=True, exist_ok=True)
        cmd = mnistlab_command(python, preset, epochs, runs_dir, data_dir, extra)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=mnistlab_env(),
                              cwd=peerlib.repo_root(), timeout=timeout)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"mnistlab {preset} exited {proc.returncode}: "
                               f"{error_headline(proc.stderr)}\n"
                               f"{proc.stdout[-1500:]}\n{proc.stderr[-2500:]}")
        summary = json.loads(find_summary(runs_dir).read_text())
    return {"program": f"mnistlab:{preset}", "kind": "mnistlab", "wall_s": wall,
            **summarize_mnistlab(summary), "command": cmd, "summary": summary}


# ----------------------------------------------------------------------------- peers

def run_peer_record(peer: peerlib.Peer, data_dir: Path, epochs: int, venvs_dir: Path,
                    peers_dir: Path | None, timeout: float | None) -> dict:
    res = peerlib.run_peer(peer, data_dir, epochs, venvs_dir=venvs_dir,
                           peers_dir=peers_dir, timeout=timeout)
    return {"program": f"peer:{peer.name}", "kind": "peer", "wall_s": res["wall_s"],
            "epochs": res.get("epochs", epochs), "train_s": res["train_s"],
            "compile_s": None, "epoch1_s": None, "s_per_epoch_steady": None,
            # The peers only report a mean, first-epoch compilation/tracing included.
            "s_per_epoch_mean": res["s_per_epoch"], "test_acc": res["test_acc"],
            "test_loss": res.get("test_loss"), "raw": res}


# ----------------------------------------------------------------------------- report

def seed_ratios(records: list[dict], preset: str = SEED) -> dict[str, dict]:
    """mnistlab ``preset``'s time over each peer's (< 1: mnistlab is faster)."""
    seed = next((r for r in records if r["program"] == f"mnistlab:{preset}" and "error" not in r), None)
    if seed is None:
        return {}
    out = {}
    for r in records:
        if r["kind"] != "peer" or "error" in r:
            continue
        peer_spe = r["s_per_epoch_mean"]
        steady = seed["s_per_epoch_steady"]
        out[r["program"]] = {
            "steady_over_peer_mean": steady / peer_spe if steady and peer_spe else None,
            "mean_over_peer_mean": seed["s_per_epoch_mean"] / peer_spe if peer_spe else None,
            "train_s": seed["train_s"] / r["train_s"] if r["train_s"] else None,
            "wall_s": seed["wall_s"] / r["wall_s"] if r["wall_s"] else None,
        }
    return out


def _fmt(x, spec=".2f") -> str:
    return "—" if x is None else format(x, spec)


def markdown_table(records: list[dict], ratios: dict[str, dict], preset: str = SEED) -> str:
    """``ratios`` as ``seed_ratios`` gives them for ``preset``, the program compared."""
    head = ("| program | epochs | wall s | train s | epoch 1 s | s/epoch (2..N median) "
            f"| s/epoch (mean) | test acc | {preset} s/epoch ÷ this | {preset} train ÷ this |")
    lines = [head, "|" + " --- |" * 10]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['program']} | failed: {r['error'].splitlines()[0][:80]} |" + " |" * 8)
            continue
        rat = ratios.get(r["program"], {})
        ratio_spe = rat.get("steady_over_peer_mean") or rat.get("mean_over_peer_mean")
        lines.append(
            f"| {r['program']} | {r['epochs']} | {_fmt(r['wall_s'], '.1f')} | {_fmt(r['train_s'], '.1f')} "
            f"| {_fmt(r['epoch1_s'])} | {_fmt(r['s_per_epoch_steady'])} | {_fmt(r['s_per_epoch_mean'])} "
            f"| {_fmt(r['test_acc'], '.4f')} | {_fmt(ratio_spe, '.2f')} | {_fmt(rat.get('train_s'), '.2f')} |")
    lines.append("")
    lines.append("wall s: whole process, start-up included. Peers report only a mean s/epoch, "
                 f"first-epoch compilation included. Ratios < 1: mnistlab {preset} is faster; "
                 f"'{preset} s/epoch ÷ this' uses the {preset}'s 2..N median (its mean for a 1-epoch run).")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- machine

def _run_text(cmd: list[str]) -> str:
    """stdout of a command, or "" when it is missing or fails (the field is optional)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def python_versions(python: str, dists: list[str], env: dict[str, str] | None = None) -> dict:
    """Versions of ``dists`` as seen by another interpreter (its own site-packages)."""
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {'python': sys.version.split()[0]}\n"
            "for d in sys.argv[1:]:\n"
            "    try: out[d] = m.version(d)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    text = subprocess.run([python, "-c", code, *dists], capture_output=True, text=True,
                          env=env).stdout
    return json.loads(text) if text.strip() else {}


def machine_info(python: str, selected: list[peerlib.Peer], venvs_dir: Path) -> dict:
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **machine.describe(),
        # Settings that change what XLA or BLAS does, so a result can be explained later.
        "env": {k: os.environ[k] for k in ("XLA_FLAGS", "OPENBLAS_CORETYPE", "OMP_NUM_THREADS",
                                           "JAX_PLATFORMS", "JAX_NUM_CPU_DEVICES", "MNISTLAB_COMPILE_CACHE")
                if k in os.environ},
        "mnistlab_python": python_versions(python, ["mnistlab", "jax", "jaxlib", "optax", "numpy"]),
        "peers": {p.name: peerlib.peer_versions(p, venvs_dir) for p in selected},
        "git_commit": _run_text(["git", "-C", str(peerlib.repo_root()), "rev-parse", "HEAD"]).strip() or None,
    }


# ----------------------------------------------------------------------------- main

def add_common_args(ap: argparse.ArgumentParser) -> None:
    """The options every mnistlab-against-peers script takes, after its own."""
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs mnistlab")
    ap.add_argument("--mnistlab-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for every mnistlab train call (repeatable)")
    ap.add_argument("--keep-runs", type=Path, default=None,
                    help="keep mnistlab's run folders here instead of a temp dir")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="MNIST IDX folder, for mnistlab and the peers (default ../shared/datasets/mnist)")
    ap.add_argument("--peers-dir", type=Path, default=None)
    ap.add_argument("--venvs-dir", type=Path, default=peerlib.DEFAULT_VENVS_DIR)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per program")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=20, help="seed preset and peers")
    ap.add_argument("--other-epochs", type=int, default=None,
                    help="epochs for non-seed presets (default: the preset's own)")
    ap.add_argument("--presets", default="seed,fast,keras-mlp", help="'' for none")
    ap.add_argument("--peers", default=",".join(peerlib.PEERS), help="'' for none")
    ap.add_argument("--out", type=Path, default=Path("docs/bench-seed.json"))
    add_common_args(ap)
    return ap.parse_args(argv)


def ensure_peer_venvs(selected: list[peerlib.Peer], venvs_dir: Path) -> dict[str, float]:
    """Set-up first (idempotent, instant when already done) so it never lands in a timing."""
    return {p.name: round(peerlib.ensure_venv(p, venvs_dir, log=lambda m: print(m, file=sys.stderr)), 1)
            for p in selected}


def peer_jobs(selected: list[peerlib.Peer], data_dir: Path, epochs: int,
              args: argparse.Namespace) -> list[tuple[str, Callable[[], dict]]]:
    return [(f"peer:{p.name}", lambda p=p: run_peer_record(
                p, data_dir, epochs, args.venvs_dir, args.peers_dir, args.timeout))
            for p in selected]


def run_jobs(jobs: list[tuple[str, Callable[[], dict]]]) -> list[dict]:
    """Run the programs one after another; a failure is recorded and the rest still run."""
    records = []
    for name, job in jobs:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        kind = name.split(":", 1)[0]
        try:
            rec = job()
        except (RuntimeError, ValueError, KeyError, OSError, subprocess.TimeoutExpired) as exc:
            rec = {"program": name, "kind": kind, "error": f"{type(exc).__name__}: {exc}"}
        print(f"[bench] {name}: " + (rec.get("error", "").splitlines()[0] if "error" in rec else
              f"wall {rec['wall_s']:.1f} s, train {rec['train_s']:.1f} s, acc {rec['test_acc']}"),
              file=sys.stderr, flush=True)
        records.append(rec)
    return records


def write_report(out: Path, report: dict) -> int:
    """Write the JSON; the exit code is 1 when a program failed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {out}", file=sys.stderr)
    return 1 if any("error" in r for r in report["records"]) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    selected = peerlib.select_peers(args.peers)
    data_dir = args.data_dir or peerlib.default_data_dir()

    setup = ensure_peer_venvs(selected, args.venvs_dir)
    host = machine_info(args.python, selected, args.venvs_dir)

    jobs = [(f"mnistlab:{p}", lambda p=p: run_mnistlab(
                args.python, p, args.epochs if p == SEED else args.other_epochs,
                data_dir, args.mnistlab_arg, args.keep_runs, args.timeout)) for p in presets]
    records = run_jobs(jobs + peer_jobs(selected, data_dir, args.epochs, args))

    ratios = seed_ratios(records)
    table = markdown_table(records, ratios)
    print(table)
    host["loadavg_at_end"] = os.getloadavg()
    return write_report(args.out, {
        "epochs": args.epochs, "machine": host, "setup_seconds": setup,
        "records": records, "ratios_seed_over_peer": ratios, "markdown": table})


if __name__ == "__main__":
    sys.exit(main())
