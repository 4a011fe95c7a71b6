"""Peer programs: what a user would run instead of mnistlab, measured side by side.

Each peer is a script run by the Python of a throw-away virtual environment.  The seed
network's peers (``PEERS``) are the scripts in ``../shared/peers``; the `cnn` preset's
(``CNN_PEERS``) are in ``bench/peers`` and reuse the venvs of the seed peers of the same
framework.  The venvs live outside the repository (default ``/tmp/mnistlab-peers/<name>``)
so that the peers' dependencies (Keras, TensorFlow, PyTorch) never leak into mnistlab's own.

Usage (from the repository root):

    .venv/bin/python bench/peers.py install                    # all peers, idempotent
    .venv/bin/python bench/peers.py run --epochs 1             # smoke-run each seed peer
    .venv/bin/python bench/peers.py run --peers cnn-torch --epochs 1
    .venv/bin/python bench/peers.py versions

Each peer prints one line such as
``backend=jax epochs=1 opt=adam train_s=3.10 s_per_epoch=3.10 test_loss=0.51 test_acc=0.9012``;
``run_peer`` parses it and adds the process's wall time, start-up included.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_VENVS_DIR = Path("/tmp/mnistlab-peers")
# The peer programs kept in the repository (the seed peers are in ../shared/peers).
BENCH_PEERS_DIR = Path(__file__).resolve().parent / "peers"
# Written into a venv only after its pip install succeeded, so that a half-built venv
# (interrupted download, failed wheel) is rebuilt rather than trusted.
MARKER_NAME = "mnistlab-peer.json"


@dataclass(frozen=True)
class Peer:
    """One peer program and the environment it needs."""

    name: str
    script: str  # file name inside the peers directory
    packages: tuple[str, ...]  # pip requirement strings
    env: dict[str, str] = field(default_factory=dict)  # extra environment variables
    # Distributions whose versions are worth recording for this peer.
    report: tuple[str, ...] = ()
    # Folder holding ``script``; None: the shared peers folder (``--peers-dir``, by
    # default ../shared/peers).
    peers_dir: Path | None = None
    # Name of the venv it runs in, under the venvs folder; None: its own name.  Peers
    # sharing a venv must share ``packages`` too, or each install would rebuild it.
    venv: str | None = None

    @property
    def venv_name(self) -> str:
        return self.venv or self.name


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("keras-jax", "seed_keras.py", ("keras", "jax"),
             {"KERAS_BACKEND": "jax"}, ("keras", "jax", "jaxlib", "numpy")),
        Peer("keras-tf", "seed_keras.py", ("keras", "tensorflow-cpu"),
             {"KERAS_BACKEND": "tensorflow"},
             ("keras", "tensorflow-cpu", "tensorflow", "numpy")),
        # torch==2.13.0 is the CPU wheel on this machine's disk; an unpinned "torch"
        # would pull a multi-GB CUDA build.
        Peer("torch", "seed_torch.py", ("torch==2.13.0", "numpy"), {},
             ("torch", "numpy")),
    )
}

# The `cnn` preset's network, same frameworks, same venvs (and so the same packages).
CNN_PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        replace(PEERS["keras-jax"], name="cnn-keras-jax", script="cnn_keras.py",
                peers_dir=BENCH_PEERS_DIR, venv="keras-jax"),
        replace(PEERS["torch"], name="cnn-torch", script="cnn_torch.py",
                peers_dir=BENCH_PEERS_DIR, venv="torch"),
    )
}

# The `speedrun` preset's network in PyTorch (bench/bench_speedrun.py), in the torch venv.
SPEEDRUN_PEER = replace(PEERS["torch"], name="speedrun-torch", script="speedrun_torch.py",
                        peers_dir=BENCH_PEERS_DIR, venv="torch")

# KerasTuner's Hyperband on the spaces of examples/tune-*.toml (bench/bench_search.py): its own
# venv, since keras-tuner is a package the Keras peer does not need.
# Keras on JAX is the issue's peer; on TensorFlow (Keras' default backend) the convnet's
# gradients run on oneDNN, where XLA's CPU convolution gradients are slow (docs/benchmarks.md).
KERASTUNER_PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("kerastuner", "search_kerastuner.py", ("keras", "jax", "keras-tuner", "six"),
             {"KERAS_BACKEND": "jax"}, ("keras", "keras-tuner", "jax", "jaxlib", "numpy"),
             peers_dir=BENCH_PEERS_DIR),
        # (KerasTuner imports TensorBoard's hparams API on TensorFlow.)
        Peer("kerastuner-tf", "search_kerastuner.py",
             ("keras", "tensorflow-cpu", "keras-tuner", "six", "tensorboard"),
             {"KERAS_BACKEND": "tensorflow"}, ("keras", "keras-tuner", "tensorflow-cpu", "tensorflow", "numpy"),
             peers_dir=BENCH_PEERS_DIR),
    )
}

ALL_PEERS: dict[str, Peer] = {**PEERS, **CNN_PEERS, SPEEDRUN_PEER.name: SPEEDRUN_PEER, **KERASTUNER_PEERS}


def repo_root() -> Path:
    """The repository root: this file lives in <root>/bench/."""
    return Path(__file__).resolve().parent.parent


def default_peers_dir() -> Path:
    return repo_root().parent / "shared" / "peers"


def default_data_dir() -> Path:
    return repo_root().parent / "shared" / "datasets" / "mnist"


def select_peers(names: str, known: dict[str, Peer] | None = None) -> list[Peer]:
    """Comma-separated names -> Peer objects from ``known`` (default: the seed peers);
    an empty string selects none."""
    known = PEERS if known is None else known
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise SystemExit(f"unknown peer(s) {unknown}; known: {sorted(known)}")
    return [known[n] for n in chosen]


def venv_python(peer: Peer, venvs_dir: Path) -> Path:
    return venvs_dir / peer.venv_name / "bin" / "python"


def _marker(peer: Peer, venvs_dir: Path) -> Path:
    return venvs_dir / peer.venv_name / MARKER_NAME


def script_path(peer: Peer, peers_dir: Path | None = None) -> Path:
    """The peer's program: its own folder when it has one, else ``peers_dir`` (default
    ../shared/peers)."""
    return (peer.peers_dir or peers_dir or default_peers_dir()) / peer.script


def is_installed(peer: Peer, venvs_dir: Path) -> bool:
    """True when the venv was fully built for exactly this package list."""
    marker = _marker(peer, venvs_dir)
    if not marker.is_file() or not venv_python(peer, venvs_dir).exists():
        return False
    try:
        return json.loads(marker.read_text()).get("packages") == list(peer.packages)
    except (OSError, json.JSONDecodeError):
        return False


def ensure_venv(peer: Peer, venvs_dir: Path, base_python: str = sys.executable,
                log=print) -> float:
    """Create the peer's venv and install its packages unless already done.

    Returns the seconds spent (0.0 when it was already there), so the set-up cost
    can be reported.
    """
    if is_installed(peer, venvs_dir):
        return 0.0
    t0 = time.perf_counter()
    venv = venvs_dir / peer.venv_name
    venvs_dir.mkdir(parents=True, exist_ok=True)
    # --clear: a venv without a marker is a leftover of a failed attempt.
    log(f"[peers] creating {venv}")
    subprocess.run([base_python, "-m", "venv", "--clear", str(venv)], check=True)
    log(f"[peers] pip install {' '.join(peer.packages)} into {venv}")
    subprocess.run([str(venv_python(peer, venvs_dir)), "-m", "pip", "install",
                    "--quiet", *peer.packages], check=True)
    seconds = time.perf_counter() - t0
    _marker(peer, venvs_dir).write_text(json.dumps(
        {"packages": list(peer.packages), "install_seconds": round(seconds, 1),
         "versions": peer_versions(peer, venvs_dir)}, indent=1))
    return seconds


def peer_versions(peer: Peer, venvs_dir: Path) -> dict[str, str]:
    """Versions of the peer's reported distributions, read inside its venv."""
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {'python': sys.version.split()[0]}\n"
            "for d in sys.argv[1:]:\n"
            "    try: out[d] = m.version(d)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    proc = subprocess.run([str(venv_python(peer, venvs_dir)), "-c", code, *peer.report],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def parse_result_line(stdout: str) -> dict[str, object]:
    """Parse the peer's ``key=value ...`` result line (the last one with train_s=).

    Keras also prints per-epoch progress on stdout, so only that line is read.
    Numeric values become floats (ints for ``epochs``); others stay strings.
    """
    lines = [ln for ln in stdout.splitlines() if "train_s=" in ln]
    if not lines:
        raise ValueError("no result line (train_s=...) in the peer's output")
    out: dict[str, object] = {}
    for token in lines[-1].split():
        key, sep, value = token.partition("=")
        if not sep:
            continue
        try:
            out[key] = int(value) if key == "epochs" else float(value)
        except ValueError:
            out[key] = value
    for key in ("train_s", "s_per_epoch", "test_acc"):
        if key not in out:
            raise ValueError(f"result line lacks {key}: {lines[-1]!r}")
    return out


def _tail(text: str, n: int = 2000) -> str:
    return text[-n:] if len(text) > n else text


def run_peer(peer: Peer, data_dir: Path, epochs: int, *, venvs_dir: Path = DEFAULT_VENVS_DIR,
             peers_dir: Path | None = None, timeout: float | None = None) -> dict[str, object]:
    """Run one peer to completion and return its parsed result plus wall time.

    ``wall_s`` spans the whole process (interpreter start, imports, data loading,
    compilation, training, evaluation): what a user waits for.  Raises RuntimeError
    with the output's tail when the program fails or prints no result line.
    """
    script = script_path(peer, peers_dir)
    cmd = [str(venv_python(peer, venvs_dir)), str(script), str(data_dir), str(epochs)]
    env = {**os.environ, **peer.env}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{peer.name} exited {proc.returncode}:\n{_tail(proc.stderr)}")
    try:
        result = parse_result_line(proc.stdout)
    except ValueError as exc:
        raise RuntimeError(f"{peer.name}: {exc}\n{_tail(proc.stdout)}\n{_tail(proc.stderr)}") from exc
    return {"peer": peer.name, "wall_s": round(wall, 2), **result,
            "command": [f"{k}={v}" for k, v in peer.env.items()] + cmd}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("install", "run", "versions"))
    ap.add_argument("--peers", default=",".join(PEERS),
                    help=f"comma-separated (default %(default)s) from: {', '.join(ALL_PEERS)}")
    ap.add_argument("--venvs-dir", type=Path, default=DEFAULT_VENVS_DIR)
    ap.add_argument("--peers-dir", type=Path, default=None,
                    help="folder holding seed_keras.py / seed_torch.py (default ../shared/peers); "
                         "the cnn-* peers always run from bench/peers")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="folder of the four IDX .gz files (default ../shared/datasets/mnist)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=None, help="seconds per peer run")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    failed = False
    for peer in select_peers(args.peers, ALL_PEERS):
        if args.action == "install":
            secs = ensure_venv(peer, args.venvs_dir)
            print(json.dumps({"peer": peer.name, "install_seconds": round(secs, 1),
                              **peer_versions(peer, args.venvs_dir)}))
        elif args.action == "versions":
            print(json.dumps({"peer": peer.name, **peer_versions(peer, args.venvs_dir)}))
        else:
            try:
                res = run_peer(peer, args.data_dir or default_data_dir(), args.epochs,
                               venvs_dir=args.venvs_dir, peers_dir=args.peers_dir,
                               timeout=args.timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                failed = True
                res = {"peer": peer.name, "error": str(exc)}
            print(json.dumps(res), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
