"""bench_workers: its grid is one cost per trial, and the benchmark runs whole at a tiny size."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ has no __init__.py

import bench_workers  # noqa: E402
from mnistlab import tune  # noqa: E402


def test_the_grid_is_the_mlp_spaces_network_with_one_cost_for_every_trial():
    t = tune.tune_from_dict(bench_workers.space(epochs=3, trials=4))
    assert tune.grid_size(t) == 4 and t.settings.sampler == "grid" and t.settings.pruner == "none"
    cost = tune.trial_cost(t)
    per_image = 784 * 512 + 512 * 10  # multiply-adds of 784-512-10
    fixed = {"mlp.dropout": 0.2, "mlp.input_dropout": 0.1, "mlp.l2": 1e-6}
    assert {cost({"optimizer.learning_rate": r, **fixed}) for r in bench_workers.RATES[:4]} == {per_image * 3}
    base = tune._base(t)
    assert base.optimizer.schedule.decay_steps == 3 * 422 and base.training.batch_size == 128


@pytest.mark.slow
def test_the_benchmark_times_each_setting_on_the_same_grid(tmp_path):
    out = tmp_path / "workers.json"
    assert bench_workers.main(["--workers", "1,2", "--epochs", "1", "--trials", "2", "--repeats", "1",
                               "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["workers"] for r in report["runs"]] == [1, 2]
    for r in report["runs"]:  # every setting trains the same two trials to the end
        assert r["exit"] == 0 and r["complete"] == 2 and len(r["val_accuracy"]) == 2
    one, two = (r["seconds"] for r in report["runs"])
    assert report["summary"]["2"]["speed-up"] == pytest.approx(one / two)
