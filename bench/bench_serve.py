"""`mnistlab serve` under load: predictions per second and latency of POST /api/predict.

Starts ``python -m mnistlab serve RUN --port 0`` (a free loopback port), then drives it
from this process with a small load generator: CONNECTIONS keep-alive HTTP/1.1
connections on asyncio streams, each sending the next request as soon as the previous
answer is in (a closed loop: the offered load adapts to the server). Bounded: it stops
after --seconds of measurement or --max-requests requests, whichever comes first, after
--warmup seconds that are not counted. Server and load generator share this machine's
cores, as they would on a 2-core box; the JSON records the core count and load average.

The bodies are canvas-like PNGs: MNIST test digits drawn black on white as 140x140 RGBA
(what the page sends), so every request exercises decoding and the full MNIST
preprocessing; --size 28 sends the test digits as plain 28x28 grey PNGs instead. The
answers' labels are checked against the digits' true labels.

Without --run, a 784-1000-10 network (the seed preset's architecture) is trained for one
epoch on 10,000 images into a temporary folder (speed does not depend on the weights).

    .venv/bin/python bench/bench_serve.py [--run RUN] [--seconds 20] [--connections 16]
        [--max-requests 50000] [--out result.json]
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine

REPO = Path(__file__).resolve().parents[1]


def train_seed_network(runs_dir: Path) -> Path:
    import mnistlab

    spec = mnistlab.with_overrides(mnistlab.preset("seed"), ["training.subset=10000", "training.epochs=1"])
    return mnistlab.train(spec, runs_dir=runs_dir, verbose=0).run_dir


def canvas_pngs(n: int, size: int = 140) -> tuple[list[bytes], list[int]]:
    """n MNIST test digits as size x size black-on-white RGBA PNGs, as the page sends its
    drawing (140x140); size 28: the digits as they are, 28x28 grey."""
    from PIL import Image

    from mnistlab import data

    arrays = data.load("mnist")
    bodies = []
    for image in arrays.test_images[:n]:
        img = Image.fromarray(image)
        if size != 28:
            img = Image.fromarray(255 - image).resize((size, size), Image.Resampling.BILINEAR).convert("RGBA")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        bodies.append(buf.getvalue())
    return bodies, [int(y) for y in arrays.test_labels[:n]]


def start_server(run: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "mnistlab", "serve", str(run), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the server exited with {proc.wait()}")
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if match:
            return proc, match.group(0)
    proc.kill()
    raise RuntimeError("the server did not say where it listens within 120 s")


async def _request(reader, writer, head: bytes, body: bytes) -> tuple[int, bytes]:
    writer.write(head + body)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def load(url: str, bodies: list[bytes], labels: list[int], *, connections: int, seconds: float,
               warmup: float, max_requests: int) -> dict:
    host, port = url.removeprefix("http://").split(":")
    heads = [(f"POST /api/predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/png\r\n"
              f"Content-Length: {len(b)}\r\n\r\n").encode() for b in bodies]
    latencies: list[float] = []
    errors = wrong = 0
    started = time.perf_counter()
    measure_from = started + warmup
    stop_at = measure_from + seconds

    async def worker(k: int) -> None:
        nonlocal errors, wrong
        reader, writer = await asyncio.open_connection(host, int(port))
        i = k
        try:
            while time.perf_counter() < stop_at and len(latencies) < max_requests:
                j = i % len(bodies)
                t0 = time.perf_counter()
                status, payload = await _request(reader, writer, heads[j], bodies[j])
                t1 = time.perf_counter()
                i += connections
                if t0 < measure_from:
                    continue
                latencies.append(t1 - t0)
                if status != 200:
                    errors += 1
                elif json.loads(payload)["class"] != labels[j]:
                    wrong += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker(k) for k in range(connections)))
    elapsed = min(time.perf_counter(), stop_at) - measure_from
    ms = sorted(x * 1000 for x in latencies)
    q = lambda p: ms[min(len(ms) - 1, int(p * len(ms)))]
    return {"requests": len(ms), "seconds": round(elapsed, 2),
            "predictions_per_s": round(len(ms) / elapsed, 1),
            "latency_ms": {"p50": round(q(0.50), 2), "p90": round(q(0.90), 2), "p99": round(q(0.99), 2),
                           "max": round(ms[-1], 2), "mean": round(statistics.fmean(ms), 2)},
            "errors": errors, "accuracy": round(1 - wrong / max(1, len(ms) - errors), 4)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc), all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def uvicorn_stack() -> dict:
    """What uvicorn picks with its defaults (http="auto", loop="auto"): httptools and
    uvloop when installed, else h11 and asyncio."""
    import importlib.util

    import uvicorn

    return {"uvicorn": uvicorn.__version__,
            "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
            "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a run folder (default: train a 784-1000-10 network)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured load, seconds (default 20)")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--max-requests", type=int, default=50_000)
    parser.add_argument("--images", type=int, default=500, help="distinct digits sent round-robin")
    parser.add_argument("--size", type=int, default=140, help="body image side in pixels (28: MNIST's own PNGs)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not 0 < args.seconds <= 120:
        parser.error("--seconds must be in (0, 120]: the load is bounded")

    with tempfile.TemporaryDirectory(prefix="mnistlab-bench-serve-") as tmp:
        run = args.run or train_seed_network(Path(tmp))
        bodies, labels = canvas_pngs(args.images, args.size)
        before = machine.describe()
        proc, url = start_server(run)
        try:
            server_cpu, own_cpu = cpu_seconds(proc.pid), time.process_time()
            result = asyncio.run(load(url, bodies, labels, connections=args.connections, seconds=args.seconds,
                                      warmup=args.warmup, max_requests=args.max_requests))
            # CPU per request, warm-up included (requests counted from /healthz): less
            # sensitive to other work on a shared machine than requests per second.
            server_cpu, own_cpu = cpu_seconds(proc.pid) - server_cpu, time.process_time() - own_cpu
            import urllib.request

            health = json.loads(urllib.request.urlopen(f"{url}/healthz").read())
            described = json.loads(urllib.request.urlopen(f"{url}/api/model").read())
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    network = "-".join(str(x) for x in [784] + [l["units"] for l in described["layers"] if l["type"] == "dense"])
    report = {"network": network, "connections": args.connections, "body": f"{args.size}x{args.size} PNG",
              "body_bytes_mean": round(statistics.fmean(map(len, bodies))),
              **result, "server": health, "mean_batch": round(health["predictions"] / max(1, health["batches"]), 2),
              "server_cpu_ms_per_request": round(1000 * server_cpu / max(1, health["predictions"]), 3),
              "loadgen_cpu_ms_per_request": round(1000 * own_cpu / max(1, health["predictions"]), 3),
              "uvicorn": uvicorn_stack(),
              "machine": before, "loadavg_end": os.getloadavg(),
              "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv)}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
