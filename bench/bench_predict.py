"""`mnistlab predict` on 10,000 PNG files: wall seconds of the whole command.

Writes the MNIST test set as PNG files into a temporary folder (10,000 by default:
``NNNNN_LABEL.png``, 28x28 grey, or --size N for N x N black-on-white RGBA like the
page's drawings), then times, as separate processes, start-up included:

    python -m mnistlab predict RUN FOLDER --json > predictions.jsonl
    python -m mnistlab predict RUN FOLDER --json --raw > predictions.jsonl   (28x28 only)

and checks every file got an answer and the answers' accuracy against the labels. It
reports wall seconds and the command's CPU seconds (user + system, all threads): on a
shared machine the second moves much less with other people's work.
Without --run, a 784-1000-10 network (the seed preset's architecture) is trained for one
epoch on 10,000 images into the temporary folder.

    .venv/bin/python bench/bench_predict.py [--run RUN] [--files 10000] [--size 28] [--out result.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import machine
from bench_serve import REPO, train_seed_network


def write_files(folder: Path, n: int, size: int) -> np.ndarray:
    from PIL import Image

    from mnistlab import data

    arrays = data.load("mnist")
    images, labels = arrays.test_images[:n], arrays.test_labels[:n]
    for i, (image, label) in enumerate(zip(images, labels)):
        img = Image.fromarray(image)
        if size != 28:
            img = Image.fromarray(255 - image).resize((size, size), Image.Resampling.BILINEAR).convert("RGBA")
        img.save(folder / f"{i:05d}_{label}.png")
    return labels


def timed_predict(run: Path, folder: Path, labels: np.ndarray, extra: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "mnistlab", "predict", str(run), str(folder), "--json", *extra]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the command: unlike wall time, barely moved by other work on the machine.
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    predicted = np.array([r.get("class", -1) for r in rows])
    return {"command": "mnistlab predict RUN FOLDER --json " + " ".join(extra), "exit_code": done.returncode,
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "files": len(rows), "files_per_s": round(len(rows) / wall, 1),
            "errors": sum("error" in r for r in rows),
            "accuracy": round(float((predicted == labels[: len(predicted)]).mean()), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a run folder (default: train a 784-1000-10 network)")
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=28, help="image side; 28: the MNIST digits as they are")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mnistlab-bench-predict-") as tmp:
        run = args.run or train_seed_network(Path(tmp) / "runs")
        folder = Path(tmp) / "pngs"
        folder.mkdir()
        started = time.perf_counter()
        labels = write_files(folder, args.files, args.size)
        write_s = time.perf_counter() - started
        before = machine.describe()
        results = [timed_predict(run, folder, labels, [])]
        if args.size == 28:
            results.append(timed_predict(run, folder, labels, ["--raw"]))
    report = {"files": args.files, "image": f"{args.size}x{args.size} PNG", "write_files_s": round(write_s, 2),
              "results": results, "machine": before, "loadavg_end": os.getloadavg(),
              "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv)}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
