"""bench_search: its curves by hand, and its mnistlab side run for real on a tiny space."""
import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ has no __init__.py

import bench_search  # noqa: E402

# Three searches' finished trials, (seconds since launch, value); None: pruned or failed.
A = [(30, 0.97), (50, None), (60, 0.985), (90, 0.984), (200, 0.989)]
B = [(40, 0.98), (120, 0.988), (130, 0.99)]
C = [(10, None), (500, 0.95)]


def test_the_curve_steps_up_at_each_new_best_and_ignores_unfinished_values():
    assert bench_search.best_so_far(A) == [(30, 0.97), (60, 0.985), (200, 0.989)]
    assert bench_search.best_so_far(list(reversed(A))) == [(30, 0.97), (60, 0.985), (200, 0.989)]
    assert bench_search.best_so_far([(5, None)]) == []


def test_value_and_time_to_a_target_read_the_steps():
    curve = bench_search.best_so_far(A)
    assert [bench_search.value_at(curve, t) for t in (0, 29.9, 30, 199, 1e9)] == [None, None, 0.97, 0.985, 0.989]
    assert bench_search.time_to(curve, 0.985) == 60
    assert bench_search.time_to(curve, 0.9895) is None


def test_the_median_time_counts_a_search_that_never_gets_there_as_infinitely_late():
    curves = [bench_search.best_so_far(x) for x in (A, B, C)]
    assert bench_search.median_time_to(curves, 0.988) == 200  # 200, 120, never -> sorted 120, 200, inf
    assert bench_search.median_time_to(curves, 0.9895) is None  # 130 and twice never


def test_the_band_is_the_median_and_range_across_seeds_with_no_model_as_zero():
    curves = [bench_search.best_so_far(x) for x in (A, B, C)]
    rows = bench_search.band(curves, [0, 45, 125, 600])
    assert rows[0] == {"seconds": 0, "median": 0.0, "min": 0.0, "max": 0.0}
    assert rows[1] == {"seconds": 45, "median": 0.97, "min": 0.0, "max": 0.98}
    assert rows[2] == {"seconds": 125, "median": 0.985, "min": 0.0, "max": 0.988}
    assert rows[3] == {"seconds": 600, "median": 0.989, "min": 0.95, "max": 0.99}


def test_the_summary_compares_mnistlab_with_the_peers_median_end():
    runs = {"mnistlab": [{"seed": s, "trials": t} for s, t in enumerate((A, B, C))],
            "kerastuner": [{"seed": s, "trials": t, "test_accuracy": 0.98} for s, t in enumerate((B, B, A))]}
    summary = bench_search.summarize(runs, {"mnistlab": 300, "kerastuner": 900}, target=0.988)
    peer = summary["sides"]["kerastuner"]
    assert peer["end_values"] == [0.99, 0.99, 0.989] and peer["median_end_value"] == 0.99
    assert peer["times_to_target"] == [120, 120, 200] and peer["median_time_to_target"] == 120
    # mnistlab to 0.99: only B gets there (130 s): the median search never does.
    assert summary["mnistlab_time_to_peer_end"] is None
    assert summary["sides"]["mnistlab"]["end_values"] == [0.989, 0.99, None]
    table = bench_search.markdown(summary, "mlp", {"cores_usable": 2, "cpu": "x", "flags": [], "python": "3"})
    assert "| kerastuner | 900 s | 0, 1, 2 | 3, 3, 5 | 99.00% (98.90% to 99.00%) | 120 s, 120 s, 200 s; **120 s** |" in table
    assert "mnistlab reaches KerasTuner's median end value (99.00%) in **not reached**" in table


def test_the_peers_timeline_is_read_against_its_launch(tmp_path):
    lines = [{"time": 1000.5, "trial": "0000", "score": 0.97, "epochs": 2},
             {"time": 1010.0, "trial": "0001", "score": None, "epochs": 2}]
    (tmp_path / "timeline.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert bench_search.kerastuner_trials(tmp_path, launched=1000.0) == [(0.5, 0.97), (10.0, None)]
    assert bench_search.kerastuner_trials(tmp_path / "none", launched=0.0) == []


@pytest.mark.slow
def test_the_mnistlab_side_searches_within_its_budget_and_tests_its_best_once(tmp_path):
    space = tmp_path / "tiny.toml"
    space.write_text('name = "tiny"\nbase = "seed"\n'
                     'set = ["training.epochs=1", "training.subset=3000", "training.validation_split=0.2", '
                     '"training.batch_size=100", "model.layers.0.units=32"]\nmetric = "val_accuracy"\n'
                     '[search.params]\n"optimizer.learning_rate" = { choice = [1e-4, 1e-3, 3e-3] }\n'
                     '[tune]\nsampler = "random"\npruner = "none"\nbatch = 1\n')
    started = time.time()
    record = bench_search.search_mnistlab(space, seed=3, budget=25, folder=tmp_path / "study", final=True)
    elapsed = time.time() - started
    assert record["exit"] == 0 and record["final_exit"] == 0, (tmp_path / "study.search.log").read_text()[-2000:]
    assert "--seed 3" in record["command"] and "--timeout 20" in record["command"]
    rows = json.loads((tmp_path / "study" / "trials.json").read_text())
    complete = sorted(r["value"] for r in rows if r["state"] == "COMPLETE")
    assert len(complete) >= 2 and sorted(v for _, v in record["trials"] if v is not None) == complete
    # Each trial finished after the launch and before the search ended (1 s: trials.json's resolution).
    assert all(-1 <= t <= record["seconds"] + 1 for t, _ in record["trials"])
    assert record["seconds"] <= elapsed
    final = json.loads((tmp_path / "study" / "final.json").read_text())
    assert len(final) == 1 and record["test_accuracy"] == final[0]["test"]["accuracy"] > 0.5
