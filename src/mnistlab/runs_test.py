"""runs.py: atomic records, never overwritten, weights as safetensors with their spec."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from mnistlab import model, runs, spec as spec_lib
from mnistlab.errors import UserError


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    runs.atomic_write(target, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(runs.os, "replace", broken_replace)
    with pytest.raises(OSError):
        runs.atomic_write(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary left behind


def test_run_folders_are_never_reused(tmp_path):
    a = runs.new_run_dir(tmp_path, "seed")
    b = runs.new_run_dir(tmp_path, "seed")
    assert a != b and a.is_dir() and b.is_dir()


def test_writer_records_and_reads_back(tmp_path):
    spec = spec_lib.preset("seed")
    writer = runs.RunWriter.create(tmp_path, spec)
    writer.log_epoch({"epoch": 1, "loss": 0.5})
    writer.log_epoch({"epoch": 2, "loss": 0.25})
    params = model.init(spec.model, 0, (28, 28))
    assert runs.open_run(writer.path).status == "running"  # from the first moment
    writer.save_weights(params)
    writer.finish({"status": "completed"})
    run = runs.open_run(writer.path)
    assert run.spec == spec
    assert [m["loss"] for m in run.metrics] == [0.5, 0.25]
    np.testing.assert_array_equal(run.params()["dense/kernel"], params["dense/kernel"])
    # Weights for another network are refused, naming the tensor.
    runs.save_weights(writer.path / runs.WEIGHTS, {**params, "dense/kernel": params["dense/kernel"][:, :10]}, spec)
    with pytest.raises(UserError, match=r"dense/kernel is \(784, 10\), not \(784, 1000\)"):
        run.params()
    with safe_open(writer.path / runs.WEIGHTS, "np") as f:
        assert json.loads(f.metadata()["mnistlab.spec"]) == spec.resolved()
    runs.record_evaluation(run, "test", {"accuracy": 0.9})
    runs.record_evaluation(runs.open_run(writer.path), "test", {"accuracy": 0.9})
    summary = runs.open_run(writer.path).summary
    assert [e["split"] for e in summary["evaluations"]] == ["test", "test"]
    assert summary["status"] == "completed" and summary["test"]["accuracy"] == 0.9


def test_not_a_run_folder(tmp_path):
    with pytest.raises(UserError, match="not a run folder"):
        runs.open_run(tmp_path)


# ------------------------------------------------------------------ what readers refuse, on real files

import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

QUICK = ["train", "--preset", "fast", "--set", "training.subset=3000", "--set", "training.epochs=1",
         "--set", "training.validation_split=0.2", "--set", "model.layers.0.units=64", "-q"]


def mnistlab(*args, root, **kwargs):
    return subprocess.run([sys.executable, "-m", "mnistlab", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "MNISTLAB_DATA": str(root), "COLUMNS": "200"}, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def finished_run(mnist_root, tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("runs")
    done = mnistlab(*QUICK, "--runs-dir", runs_dir, root=mnist_root)
    assert done.returncode == 0, done.stderr
    (path,) = runs_dir.iterdir()
    return path


def _copy(run, tmp_path):
    return Path(shutil.copytree(run, tmp_path / run.name))


READERS = [("evaluate", ["--split", "validation"]), ("report", ["--out", "r.html"]), ("export", ["--out", "m.onnx"]),
           ("predict", ["-"]), ("serve", ["--port", "0"])]


@pytest.mark.parametrize("reader, extra", READERS, ids=[r for r, _ in READERS])
@pytest.mark.parametrize("damage, message", [
    ("flip", "the tensors differ from the ones written"),  # 4 KB flipped inside the tensor data
    ("truncate", "not readable as safetensors weights"),
    ("header", "not readable as safetensors weights"),
])
@pytest.mark.slow
def test_damaged_weights_are_refused_by_every_reader(finished_run, reader, extra, damage, message, mnist_root,
                                                     tmp_path):
    run = _copy(finished_run, tmp_path)
    weights = run / runs.WEIGHTS
    raw = bytearray(weights.read_bytes())
    if damage == "flip":
        start = len(raw) // 2
        raw[start:start + 4096] = bytes(b ^ 0xFF for b in raw[start:start + 4096])
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[8:40] = b"{not a header" + b" " * 19
    weights.write_bytes(bytes(raw))
    done = mnistlab(reader, run, *extra, root=mnist_root, cwd=tmp_path, input="")
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and str(weights) in done.stderr and "Traceback" not in done.stderr


def test_the_weights_digest_is_recorded_where_a_reader_can_check_it(finished_run):
    run = runs.open_run(finished_run)
    with safe_open(str(finished_run / runs.WEIGHTS), "np") as f:
        recorded = f.metadata()[runs.DIGEST]
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    assert run.summary["weights_sha256"] == recorded == runs.tensors_digest(arrays)
    # The digest, computed independently: sha256 over name, dtype, shape and bytes, in name order.
    import hashlib

    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(json.dumps([name, "float32", list(arrays[name].shape)]).encode())
        h.update(arrays[name].tobytes())
    assert recorded == h.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("reader, extra", READERS, ids=[r for r, _ in READERS])
def test_a_hand_edited_config_is_refused(finished_run, reader, extra, mnist_root, tmp_path):
    run = _copy(finished_run, tmp_path)
    config = (run / runs.CONFIG).read_text()
    (run / runs.CONFIG).write_text(config.replace("units = 64", "units = 128", 1))
    done = mnistlab(reader, run, *extra, root=mnist_root, cwd=tmp_path, input="")
    assert done.returncode == 2, done.stderr
    assert "dense/kernel is (784, 64), not (784, 128)" in done.stderr


@pytest.mark.parametrize("file, cut, message", [
    (runs.SUMMARY, lambda text: text[: len(text) // 2], "summary.json: not valid JSON"),
    (runs.METRICS, lambda text: text + '{"epoch": 2, "lo', "metrics.jsonl: line 2 is not valid JSON"),
])
@pytest.mark.slow
def test_cut_records_are_named_not_a_traceback(finished_run, file, cut, message, mnist_root, tmp_path):
    run = _copy(finished_run, tmp_path)
    (run / file).write_text(cut((run / file).read_text()))
    for reader, extra in READERS[:3]:
        done = mnistlab(reader, run, *extra, root=mnist_root, cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.slow
def test_a_killed_run_says_so_and_readers_name_it(mnist_root, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "mnistlab", *QUICK, "--set", "training.epochs=500",
                             "--runs-dir", str(tmp_path / "runs")],
                            env={**os.environ, "MNISTLAB_DATA": str(mnist_root)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob(f"runs/*/{runs.METRICS}")):
        assert proc.poll() is None
        time.sleep(0.1)
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / runs.SUMMARY).read_text())
    assert summary["status"] == "running" and summary["pid"] == proc.pid  # said from the first moment
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert runs.open_run(run).status == runs.KILLED
    for reader, extra in READERS:
        done = mnistlab(reader, run, *extra, root=mnist_root, cwd=tmp_path, input="")
        assert done.returncode == 2 and "stopped without finishing" in done.stderr, done.stderr
    done = mnistlab("compare", run, run, "--json", root=mnist_root, cwd=tmp_path)
    assert done.returncode == 0 and "is unfinished (killed)" in done.stderr
    shown = json.loads(done.stdout)  # --json: a row per run, the settings that differ (none: the same run)
    assert [r["status"] for r in shown["runs"]] == ["killed"] * 2 and shown["differing"] == {}
    assert shown["runs"][0]["epochs"] == len(runs.open_run(run).metrics) == shown["runs"][0]["epochs"]
    listed = json.loads(mnistlab("runs", tmp_path / "runs", "--json", root=mnist_root).stdout)["runs"]
    assert [(r["run_dir"], r["status"]) for r in listed] == [(str(run), runs.KILLED)]


def test_run_files_follow_the_umask(finished_run):
    mask = os.umask(0)
    os.umask(mask)
    for path in finished_run.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path


def test_the_environment_names_mnistlab_and_the_commit_it_runs_from(tmp_path, monkeypatch):
    import importlib.metadata
    import subprocess

    env = runs.environment()
    assert env["mnistlab"] == importlib.metadata.version("mnistlab")
    package = Path(runs.__file__).parent
    head = subprocess.run(["git", "-C", str(package), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a checkout (the test suite runs in one)
        dirty = subprocess.run(["git", "-C", str(package), "diff", "--quiet", "HEAD"]).returncode != 0
        assert env["commit"] == head.stdout.strip() + ("+dirty" if dirty else "")
    # Installed from a wheel: no checkout around the package, no commit.
    runs.source_commit.cache_clear()
    monkeypatch.setattr(runs, "__file__", str(tmp_path / "site-packages" / "mnistlab" / "runs.py"))
    (tmp_path / "site-packages" / "mnistlab").mkdir(parents=True)
    try:
        assert runs.source_commit() is None
    finally:
        runs.source_commit.cache_clear()
