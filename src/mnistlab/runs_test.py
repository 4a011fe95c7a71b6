"""runs.py: atomic records, never overwritten, weights as safetensors with their spec."""

import json

import numpy as np
import pytest
from safetensors import safe_open

from mnistlab import runs, spec as spec_lib
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
    params = {"dense/kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}
    writer.save_weights(params)
    writer.finish({"status": "completed"})
    run = runs.open_run(writer.path)
    assert run.spec == spec
    assert [m["loss"] for m in run.metrics] == [0.5, 0.25]
    np.testing.assert_array_equal(run.params()["dense/kernel"], params["dense/kernel"])
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
