"""bench_search: its curves by hand, and its mnistlab side run for real on a tiny space."""
import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ has no __init__.py

import bench_search  # noqa: E402
import peers  # noqa: E402

# Three searches' finished trials, (seconds since launch, value); None: pruned or failed.
A = [(30, 0.97), (50, None), (60, 0.985), (90, 0.984), (200, 0.989)]
B = [(40, 0.98), (120, 0.988), (130, 0.99)]
C = [(10, None), (500, 0.95)]


def test_the_curve_steps_up_at_each_new_best_and_ignores_unfinished_values():
    assert bench_search.best_so_far(A) == [(30, 0.97), (60, 0.985), (200, 0.989)]
    assert bench_search.best_so_far(list(reversed(A))) == [(30, 0.97), (60, 0.985), (200, 0.989)]
    assert bench_search.best_so_far([(5, None)]) == []
    # float32's 5,928 / 6,000 reaches a 98.8% target
    assert bench_search.time_to(bench_search.best_so_far([(7, 0.98799997568130490)]), 0.988) == 7


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
    # at 300 s, mnistlab's A 0.989, B 0.99, C none (0): 0.989; the peer's B, B, A: 0.99
    assert summary["at_shorter_budget"] == {"seconds": 300, "mnistlab": 0.989, "kerastuner": 0.99}
    # the peer (B, B, A) at 300 s: 0.99, 0.99, 0.989 -> 0.99; at 600 and 900 s the same;
    # mnistlab to 0.99: only B gets there (130 s): the median search never does.
    assert summary["mnistlab_time_to_peer_at"] == [{"seconds": t, "peer": 0.99, "mnistlab_seconds": None}
                                                   for t in (300, 600, 900)]
    assert summary["sides"]["mnistlab"]["end_values"] == [0.989, 0.99, None]
    table = bench_search.markdown(summary, "mlp", {"cores_usable": 2, "cpu": "x", "flags": [], "python": "3"})
    assert table.startswith("Space `mlp`, KerasTuner on Keras' jax backend, ")
    assert "| kerastuner | 900 s | 0, 1, 2 | 3, 3, 5 | 99.00% (98.90% to 99.00%) | 120 s, 120 s, 200 s; **120 s** |" in table
    assert "| 600 s | 99.00% | not reached |" in table and "| 900 s | 99.00% | not reached |" in table
    assert "At 300 s, the median best validation was 98.90% for mnistlab and 99.00% for KerasTuner." in table
    assert "by its last epoch" not in table  # only when the peer's timelines have last epochs


def test_mnistlabs_time_to_each_of_the_peers_values_along_its_budget():
    runs = {"mnistlab": [{"seed": s, "trials": t} for s, t in enumerate((A, B, C))],
            "kerastuner": [{"seed": s, "trials": t} for s, t in enumerate((A, A, C))]}
    at = bench_search.summarize(runs, {"mnistlab": 300, "kerastuner": 900}, target=0.988)["mnistlab_time_to_peer_at"]
    # the peer at 300 s: A 0.989, A 0.989, C none -> 0.989 (at 600 and 900 s, C's 0.95 at 500 s: still 0.989);
    # mnistlab to 0.989: A at 200 s, B at 130 s, C never -> 200 s
    assert at == [{"seconds": t, "peer": 0.989, "mnistlab_seconds": 200} for t in (300, 600, 900)]


def test_the_peer_is_also_judged_by_its_trials_last_epochs():
    runs = {"kerastuner": [{"seed": 0, "trials": B, "trials_by_last_epoch": A},
                           {"seed": 1, "trials": B, "trials_by_last_epoch": C},
                           {"seed": 2, "trials": B, "trials_by_last_epoch": B}]}
    summary = bench_search.summarize(runs, {"kerastuner": 150}, target=0.988)
    assert "mnistlab_time_to_peer_at" not in summary  # one side: nothing to compare
    # by 150 s: A's best 0.985, C's none (0), B's 0.99 -> median 0.985
    assert summary["sides"]["kerastuner"]["median_end_value_by_last_epoch"] == 0.985
    runs["mnistlab"] = [{"seed": 0, "trials": A}]
    table = bench_search.markdown(bench_search.summarize(runs, {"kerastuner": 150, "mnistlab": 150}, 0.988), "mlp",
                                  {"cores_usable": 2, "cpu": "x", "flags": [], "python": "3"},
                                  peers.KERASTUNER_PEERS["kerastuner-tf"])
    assert table.startswith("Space `mlp`, KerasTuner on Keras' tensorflow backend, ")
    assert "\n| kerastuner-tf | 150 s | 0, 1, 2 |" in table
    assert "by its last epoch (as mnistlab ranks, and as the retrained model ends) its median end value is 98.50%" in table


def test_an_earlier_report_joins_only_from_the_same_space_and_machine():
    here = {"cpu": "Xeon", "flags": ["avx2"], "cores_usable": 2, "python": "3.11"}
    earlier = {"space": "mlp", "machine": {**here, "python": "3.12"}}
    assert bench_search.earlier_mismatch(earlier, "mlp", here) is None
    assert bench_search.earlier_mismatch(earlier, "cnn", here) == "it searched the 'mlp' space, not 'cnn'"
    assert bench_search.earlier_mismatch(earlier, "mlp", {**here, "flags": ["avx2", "avx512f"]}) == (
        "it ran on another machine (flags: ['avx2'], here ['avx2', 'avx512f'])")
    assert "cores_usable: 2, here 4" in bench_search.earlier_mismatch(earlier, "mlp", {**here, "cores_usable": 4})
    # its KerasTuner runs join only a report of the same peer (a report before --peer: Keras on JAX)
    assert bench_search.earlier_mismatch(earlier, "mlp", here, peer="kerastuner") is None
    assert bench_search.earlier_mismatch(earlier, "mlp", here, peer="kerastuner-tf") == (
        "its KerasTuner runs are the 'kerastuner' peer's, not 'kerastuner-tf'")
    assert bench_search.earlier_mismatch({**earlier, "peer": "kerastuner-tf"}, "mlp", here, peer="kerastuner-tf") is None


def test_the_peers_timeline_is_read_against_its_launch(tmp_path):
    lines = [{"time": 1000.5, "trial": "0000", "score": 0.97, "last": 0.96, "epochs": 2},
             {"time": 1010.0, "trial": "0001", "score": None, "last": None, "epochs": 2}]
    (tmp_path / "timeline.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert bench_search.kerastuner_trials(tmp_path, launched=1000.0) == [(0.5, 0.97), (10.0, None)]
    assert bench_search.kerastuner_trials(tmp_path, 1000.0, "last") == [(0.5, 0.96), (10.0, None)]
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
    record = bench_search.search_mnistlab(space, seed=3, budget=25, folder=tmp_path / "study", final=True,
                                          options=["--sampler", "grid"])
    elapsed = time.time() - started
    assert record["exit"] == 0 and record["final_exit"] == 0, (tmp_path / "study.search.log").read_text()[-2000:]
    assert "--seed 3" in record["command"] and "--timeout 20 --sampler grid" in record["command"]
    rows = json.loads((tmp_path / "study" / "trials.json").read_text())
    # the options reach the search: the grid's 3 points once each (the table's random sampler would repeat)
    assert sorted(r["params"]["optimizer.learning_rate"] for r in rows) == [1e-4, 1e-3, 3e-3]
    complete = sorted(r["value"] for r in rows if r["state"] == "COMPLETE")
    assert len(complete) >= 2 and sorted(v for _, v in record["trials"] if v is not None) == complete
    # Each trial finished after the launch and before the search ended (1 s: trials.json's resolution).
    assert all(-1 <= t <= record["seconds"] + 1 for t, _ in record["trials"])
    assert record["seconds"] <= elapsed
    final = json.loads((tmp_path / "study" / "final.json").read_text())
    assert len(final) == 1 and record["test_accuracy"] == final[0]["test"]["accuracy"] > 0.5
