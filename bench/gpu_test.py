"""bench/gpu.sh at its token budget on this machine's CPU: every step runs and writes its figures."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_script_runs_every_step_at_a_tiny_budget(tmp_path):
    out = tmp_path / "figures"
    env = {**os.environ, "BUDGET": "tiny", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "bench/gpu.sh", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # One file per step and no more: the device tool brings back at most 8.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["devices.txt", *(f"{step}.{kind}" for step in ("seed", "population", "convnets") for kind in ("json", "log"))])
    assert "jax" in (out / "devices.txt").read_text()
    rows = lambda step: [(r["preset"], r["policy"], r["runs"]) for r in json.loads((out / f"{step}.json").read_text())["rows"]]
    assert rows("seed") == [("seed", "float32", 1), ("seed", "mixed_bfloat16", 1)]
    assert rows("convnets") == [(p, policy, 1) for p in ("cnn", "speedrun") for policy in ("float32", "mixed_bfloat16")]
    sizes = json.loads((out / "population.json").read_text())["sizes"]
    assert [s["members"] for s in sizes] == [1, 2] and all(s["epoch_s"] > 0 and s["peak_memory_gib"] > 0 for s in sizes)
    assert "== all in" in proc.stdout
