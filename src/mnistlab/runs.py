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

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from mnistlab import spec as spec_lib
from mnistlab.errors import UserError

CONFIG, METRICS, SUMMARY, WEIGHTS = "config.toml", "metrics.jsonl", "summary.json", "weights.safetensors"
VERSION = importlib.metadata.version("mnistlab")  # what every record says wrote it (`mnistlab.__version__`)
RUNNING, KILLED = "running", "killed"  # the status of a run in training, and of one whose process is gone


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `path` through a temporary file in its folder and an atomic rename.

    The file gets the mode any new file gets here (0666 less the umask), not mkstemp's 0600.
    """
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@functools.cache
def source_commit() -> str | None:
    """The git commit of the checkout mnistlab runs from ("+dirty" when files differ from it),
    or None when it is not run from a checkout (installed from a wheel)."""
    here = str(Path(__file__).parent)
    try:
        head = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):  # no git, or a stuck file system
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def environment() -> dict[str, Any]:
    """What a run ran on, for its summary: mnistlab's version and commit, the libraries, the machine."""
    import jax
    import optax

    device = jax.devices()[0]
    return {"mnistlab": VERSION, "commit": source_commit(),
            "python": platform.python_version(), "jax": jax.__version__, "optax": optax.__version__,
            "numpy": np.__version__, "platform": platform.platform(), "processor": platform.processor(),
            "device": f"{device.platform}:{device.device_kind}", "device_count": jax.device_count(),
            "cpu_count": os.cpu_count()}


def new_run_dir(runs_dir: Path, name: str) -> Path:
    """A fresh folder `runs_dir/<time>-<name>`; a taken name gets a -2, -3... suffix."""
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=runs_dir, prefix=".mnistlab-probe-")
        probe.close()
    except OSError as err:
        raise UserError(f"{runs_dir}: cannot write there ({err.strerror or err}): give a folder you can write "
                        "to (--runs-dir / --sweeps-dir / --study-dir)") from None
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
        # From the first moment the folder says what it is: a run in training, by whom. A
        # reader that finds "running" from a process that is gone knows it was killed.
        self.finish({"name": spec.name, "status": RUNNING, "pid": os.getpid(), "host": socket.gethostname(),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    @classmethod
    def create(cls, runs_dir: Path, spec: spec_lib.RunSpec) -> "RunWriter":
        return cls(new_run_dir(Path(runs_dir), spec.name), spec)

    def log_epoch(self, record: dict[str, Any]) -> None:
        self.log_epochs([record])

    def log_epochs(self, records: list[dict[str, Any]]) -> None:
        self.epochs.extend(records)
        atomic_write(self.path / METRICS, "".join(json.dumps(r) + "\n" for r in self.epochs))

    def save_weights(self, params: dict[str, np.ndarray]) -> str:
        return save_weights(self.path / WEIGHTS, params, self.spec)

    def finish(self, summary: dict[str, Any]) -> None:
        atomic_write(self.path / SUMMARY, json.dumps(summary, indent=2) + "\n")


# What writing a run can fail with for reasons outside mnistlab: a full disk, a read-only
# or vanished folder, permissions (safetensors reports its I/O errors as its own type).
WRITE_ERRORS = (OSError, SafetensorError)


def rescue(spec: spec_lib.RunSpec, records: list[dict[str, Any]], params: dict[str, np.ndarray] | None,
           summary: dict[str, Any]) -> str:
    """Keep a trained result whose run folder could not be written: a new run folder under the
    system's temporary folder. Says where, or that it could not be kept."""
    try:
        folder = Path(tempfile.mkdtemp(prefix=f"mnistlab-rescued-{spec.name}-"))
        writer = RunWriter(folder, spec)
        writer.log_epochs(records)
        if params is not None:
            summary = {**summary, "weights_sha256": writer.save_weights(params)}
        writer.finish(summary)
        return f"the trained result is kept in {folder} (a complete run folder: move it where you want it)"
    except WRITE_ERRORS as err:
        return f"it could not be kept elsewhere either ({reason(err)}): the trained weights are lost"


def reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err)


DIGEST = "mnistlab.sha256"  # safetensors metadata: the digest of the tensors, checked on every load


def tensors_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(json.dumps([name, str(a.dtype), list(a.shape)]).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_weights(path: Path, params: dict[str, np.ndarray], spec: spec_lib.RunSpec) -> str:
    """Write `params` as safetensors with the spec and their digest in the metadata; the digest."""
    # safetensors, never pickle: loading weights must not run code. The spec rides in the
    # metadata so a weights file alone still says what network it belongs to.
    arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in params.items()}
    digest = tensors_digest(arrays)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(arrays, tmp, metadata={"mnistlab.spec": json.dumps(spec.resolved()), DIGEST: digest})
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


def check_params(spec: spec_lib.RunSpec, params: dict[str, np.ndarray], source: str,
                 image_shape: tuple[int, ...] | None = None) -> None:
    """A UserError unless `params` hold exactly the weights the spec's network needs, in its
    shapes (for images of `image_shape`, by default its dataset's)."""
    from mnistlab import data, model

    image_shape = image_shape or data.get_info(spec.dataset).image_shape
    shapes = model.parameter_shapes(spec.model, image_shape)
    wrong = [f"{name} is missing" for name in shapes if name not in params]
    wrong += [f"{name} is {tuple(params[name].shape)}, not {shape}" for name, shape in shapes.items()
              if name in params and tuple(params[name].shape) != shape]
    wrong += [f"{name} is not in the network" for name in params if name not in shapes]
    if wrong:
        raise UserError(f"{source}: the weights do not fit the network its config.toml describes ("
                        + "; ".join(wrong) + "): use the config.toml they were trained with, unedited")


def load_weights(path: Path, spec: spec_lib.RunSpec | None = None) -> dict[str, np.ndarray]:
    """The weights in `path`, verified: a UserError naming the file when it is missing, cut
    short, not safetensors, changed since it was written, or not the spec's network."""
    fix = "train the run again, or put back a good copy of the file"
    try:
        with safe_open(str(path), "np") as f:
            metadata = f.metadata() or {}
            arrays = {name: f.get_tensor(name) for name in f.keys()}
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except Exception as err:  # safetensors' own error, or the OS's: the file cannot be read as weights
        raise UserError(f"{path}: not readable as safetensors weights ({err}): {fix}") from None
    recorded = metadata.get(DIGEST)  # files written before digests were recorded have none
    if recorded is not None and tensors_digest(arrays) != recorded:
        raise UserError(f"{path}: the tensors differ from the ones written (sha256 {recorded[:12]}... recorded): "
                        f"the file is corrupted; {fix}")
    if spec is not None:
        check_params(spec, arrays, str(path))
    return arrays


@dataclass(frozen=True)
class Run:
    """A run folder, read back."""

    path: Path
    spec: spec_lib.RunSpec
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]

    @property
    def status(self) -> str:
        """completed | interrupted | diverged | running | killed (a run whose process is gone), ..."""
        status = self.summary.get("status", "unknown")
        if status == RUNNING and self.summary.get("host") == socket.gethostname() \
                and not _alive(self.summary.get("pid")):
            return KILLED
        return status

    @property
    def finished(self) -> bool:
        return self.status not in (RUNNING, KILLED, "unknown")

    def describe(self) -> str:
        """The run's state in words, for messages."""
        if self.status == RUNNING:
            return f"still training (process {self.summary.get('pid')} on {self.summary.get('host')})"
        if self.status == KILLED:
            resumable = (self.path / "progress.json").exists()  # the checkpoints `train --resume` continues from
            return (f"its training stopped without finishing after {len(self.metrics)} epoch(s): process "
                    f"{self.summary.get('pid')} is gone (killed, out of memory or out of disk)"
                    + (f"; `mnistlab train --resume {self.path}` continues it" if resumable else ""))
        return f"status '{self.status}'"

    def params(self) -> dict[str, np.ndarray]:
        """The run's weights, verified against their digest and the network of config.toml."""
        weights = self.path / WEIGHTS
        if not weights.exists():
            raise UserError(f"{self.path}: this run has no {WEIGHTS}: {self.describe()}; train it again.")
        return load_weights(weights, self.spec)


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _read_json(path: Path, fix: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err}): {fix}") from None


def open_run(path: str | Path) -> Run:
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise UserError(f"{path}: not a run folder (no {CONFIG}). Give a folder made by "
                        "`mnistlab train`, e.g. runs/20261127-101500-seed.")
    spec = spec_lib.load(path / CONFIG)
    fix = "mnistlab writes it whole or not at all, so it was cut or edited since; put back a good copy"
    summary = _read_json(path / SUMMARY, fix) if (path / SUMMARY).exists() else {}
    metrics_file = path / METRICS
    metrics = []
    if metrics_file.exists():
        for n, line in enumerate(metrics_file.read_text().splitlines(), 1):
            try:
                metrics.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{metrics_file}: line {n} is not valid JSON ({err}): {fix}") from None
    return Run(path, spec, summary, metrics)


def record_evaluation(run: Run, split: str, result: dict[str, float]) -> None:
    """Add an evaluation to the run's summary; every test evaluation is kept, with its time."""
    summary = dict(run.summary)
    entry = {**result, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    summary.setdefault("evaluations", []).append({"split": split, **entry})
    if split == "test":
        summary["test"] = entry
    atomic_write(run.path / SUMMARY, json.dumps(summary, indent=2) + "\n")


def listing(folder: str | Path) -> list[dict[str, Any]]:
    """The runs in `folder` (its run subfolders), newest first: what `mnistlab runs` shows.
    A run is dated by its config.toml, written once when it starts. A folder that cannot be
    read is listed as "unreadable" with the reason, so one bad folder hides no others."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; give a folder of runs (default: runs, or --runs-dir of train)")
    found = sorted((p for p in folder.iterdir() if (p / CONFIG).is_file()),
                   key=lambda p: ((p / CONFIG).stat().st_mtime, p.name), reverse=True)
    return [_listed(path) for path in found]


def _listed(path: Path) -> dict[str, Any]:
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime((path / CONFIG).stat().st_mtime))
    try:
        run = open_run(path)
    except (UserError, OSError, ValueError) as err:
        return {"run_dir": str(path), "name": path.name, "status": "unreadable", "started": started,
                "epochs": None, "val_accuracy": None, "test_accuracy": None, "problem": str(err)}
    final = run.summary.get("final") or (run.metrics[-1] if run.metrics else {})
    return {"run_dir": str(path), "name": run.spec.name, "status": run.status, "started": started,
            "epochs": len(run.metrics), "val_accuracy": final.get("val_accuracy"),
            "test_accuracy": (run.summary.get("test") or {}).get("accuracy")}
