"""Run records on disk: one folder per run, written atomically, never overwritten.

    runs/20261127-101500-seed/
        config.toml          the resolved specification, every default explicit
        metrics.jsonl        one JSON object per epoch (Keras' History, line by line)
        summary.json         status, timings, final metrics, test evaluations, environment
        weights.safetensors  the parameters, with the specification in its metadata

Every file is written to a temporary name in the same folder and renamed into place,
so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
from safetensors.numpy import load_file, save_file

from mnistlab import spec as spec_lib
from mnistlab.errors import UserError

CONFIG, METRICS, SUMMARY, WEIGHTS = "config.toml", "metrics.jsonl", "summary.json", "weights.safetensors"


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `path` through a temporary file in its folder and an atomic rename."""
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def environment() -> dict[str, Any]:
    import jax
    import optax

    device = jax.devices()[0]
    return {"python": platform.python_version(), "jax": jax.__version__, "optax": optax.__version__,
            "numpy": np.__version__, "platform": platform.platform(), "processor": platform.processor(),
            "device": f"{device.platform}:{device.device_kind}", "device_count": jax.device_count(),
            "cpu_count": os.cpu_count()}


def new_run_dir(runs_dir: Path, name: str) -> Path:
    """A fresh folder `runs_dir/<time>-<name>`; a taken name gets a -2, -3... suffix."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    for n in range(1, 1000):
        path = runs_dir / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()  # atomic: fails if it exists, so two runs never share a folder
            return path
        except FileExistsError:
            continue
    raise UserError(f"{runs_dir}: could not find a free run folder name for '{stem}'")


class RunWriter:
    """Records one run as it trains."""

    def __init__(self, path: Path, spec: spec_lib.RunSpec):
        self.path = path
        self.spec = spec
        self.epochs: list[dict[str, Any]] = []
        atomic_write(path / CONFIG, tomli_w.dumps(spec.resolved()))

    @classmethod
    def create(cls, runs_dir: Path, spec: spec_lib.RunSpec) -> "RunWriter":
        return cls(new_run_dir(Path(runs_dir), spec.name), spec)

    def log_epoch(self, record: dict[str, Any]) -> None:
        self.log_epochs([record])

    def log_epochs(self, records: list[dict[str, Any]]) -> None:
        self.epochs.extend(records)
        atomic_write(self.path / METRICS, "".join(json.dumps(r) + "\n" for r in self.epochs))

    def save_weights(self, params: dict[str, np.ndarray]) -> None:
        save_weights(self.path / WEIGHTS, params, self.spec)

    def finish(self, summary: dict[str, Any]) -> None:
        atomic_write(self.path / SUMMARY, json.dumps(summary, indent=2) + "\n")


def save_weights(path: Path, params: dict[str, np.ndarray], spec: spec_lib.RunSpec) -> None:
    # safetensors, never pickle: loading weights must not run code. The spec rides in the
    # metadata so a weights file alone still says what network it belongs to.
    arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in params.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(arrays, tmp, metadata={"mnistlab.spec": json.dumps(spec.resolved())})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Run:
    """A run folder, read back."""

    path: Path
    spec: spec_lib.RunSpec
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]

    def params(self) -> dict[str, np.ndarray]:
        weights = self.path / WEIGHTS
        if not weights.exists():
            raise UserError(f"{self.path}: this run has no {WEIGHTS} (status "
                            f"'{self.summary.get('status', 'unknown')}'); train it again.")
        return load_file(weights)


def open_run(path: str | Path) -> Run:
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise UserError(f"{path}: not a run folder (no {CONFIG}). Give a folder made by "
                        "`mnistlab train`, e.g. runs/20261127-101500-seed.")
    spec = spec_lib.load(path / CONFIG)
    summary = json.loads((path / SUMMARY).read_text()) if (path / SUMMARY).exists() else {}
    metrics_file = path / METRICS
    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines()] if metrics_file.exists() else []
    return Run(path, spec, summary, metrics)


def record_evaluation(run: Run, split: str, result: dict[str, float]) -> None:
    """Add an evaluation to the run's summary; every test evaluation is kept, with its time."""
    summary = dict(run.summary)
    entry = {**result, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    summary.setdefault("evaluations", []).append({"split": split, **entry})
    if split == "test":
        summary["test"] = entry
    atomic_write(run.path / SUMMARY, json.dumps(summary, indent=2) + "\n")
