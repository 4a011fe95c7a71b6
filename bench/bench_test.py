"""Fast tests of the harness's parsing and arithmetic; they start no peer or training."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ has no __init__.py

import bench_cnn  # noqa: E402
import bench_precision  # noqa: E402
import bench_seed  # noqa: E402
import bench_speedrun  # noqa: E402
import machine  # noqa: E402
import peers  # noqa: E402

KERAS_OUT = """Epoch 1/1
1875/1875 - 3s - 2ms/step - accuracy: 0.8617 - loss: 1.7351
backend=jax epochs=1 opt=adam train_s=3.10 s_per_epoch=3.10 test_loss=0.5143 test_acc=0.9012
"""


def test_parse_result_line_reads_only_the_result_line():
    out = peers.parse_result_line(KERAS_OUT)
    assert out == {"backend": "jax", "epochs": 1, "opt": "adam", "train_s": 3.10,
                   "s_per_epoch": 3.10, "test_loss": 0.5143, "test_acc": 0.9012}


def test_parse_result_line_torch_version_stays_text():
    out = peers.parse_result_line("torch=2.13.0+cpu epochs=2 train_s=13.94 s_per_epoch=6.97 test_acc=0.9040")
    assert out["torch"] == "2.13.0+cpu" and out["s_per_epoch"] == 6.97


@pytest.mark.parametrize("text", ["", "Epoch 1/1\n", "train_s=1.0 test_acc=0.9"])
def test_parse_result_line_rejects_incomplete_output(text):
    with pytest.raises(ValueError):
        peers.parse_result_line(text)


def test_select_peers():
    assert [p.name for p in peers.select_peers("torch, keras-jax")] == ["torch", "keras-jax"]
    assert peers.select_peers("") == []
    with pytest.raises(SystemExit):
        peers.select_peers("mxnet")


def test_run_peer_times_the_process_and_parses(tmp_path):
    # A fake venv whose "python" is the current interpreter, running a fake peer script.
    peer = peers.Peer("fake", "fake_peer.py", ("nothing",), {"FAKE_ENV": "yes"})
    (tmp_path / "venvs" / "fake" / "bin").mkdir(parents=True)
    (tmp_path / "venvs" / "fake" / "bin" / "python").symlink_to(sys.executable)
    (tmp_path / "fake_peer.py").write_text(
        "import os, sys\nassert os.environ['FAKE_ENV'] == 'yes'\n"
        "print(f'epochs={sys.argv[2]} train_s=2.00 s_per_epoch=1.00 test_acc=0.5')\n")
    res = peers.run_peer(peer, tmp_path, 2, venvs_dir=tmp_path / "venvs", peers_dir=tmp_path)
    assert res["epochs"] == 2 and res["test_acc"] == 0.5 and res["wall_s"] > 0
    assert not peers.is_installed(peer, tmp_path / "venvs")  # no marker written


def test_run_peer_failure_raises(tmp_path):
    peer = peers.Peer("fake", "boom.py", ())
    (tmp_path / "venvs" / "fake" / "bin").mkdir(parents=True)
    (tmp_path / "venvs" / "fake" / "bin" / "python").symlink_to(sys.executable)
    (tmp_path / "boom.py").write_text("raise SystemExit(3)\n")
    with pytest.raises(RuntimeError, match="exited 3"):
        peers.run_peer(peer, tmp_path, 1, venvs_dir=tmp_path / "venvs", peers_dir=tmp_path)


def test_summarize_mnistlab_separates_first_epoch():
    summary = {"seconds_per_epoch": [5.0, 2.0, 3.0, 2.5], "train_seconds": 12.5,
               "compile_seconds": 2.4, "test": {"accuracy": 0.91, "loss": 0.6}}
    s = bench_seed.summarize_mnistlab(summary)
    assert s["epoch1_s"] == 5.0 and s["s_per_epoch_steady"] == 2.5
    assert s["s_per_epoch_mean"] == pytest.approx(3.125) and s["test_acc"] == 0.91
    one = bench_seed.summarize_mnistlab({**summary, "seconds_per_epoch": [5.0], "train_seconds": 5.0})
    assert one["s_per_epoch_steady"] is None and one["s_per_epoch_mean"] == 5.0


def test_ratios_and_table():
    seed = {"program": "mnistlab:seed", "kind": "mnistlab", "wall_s": 30.0, "train_s": 20.0,
            "epochs": 2, "epoch1_s": 12.0, "s_per_epoch_steady": 8.0, "s_per_epoch_mean": 10.0,
            "test_acc": 0.9, "compile_s": 1.0}
    peer = {"program": "peer:torch", "kind": "peer", "wall_s": 40.0, "train_s": 32.0, "epochs": 2,
            "epoch1_s": None, "s_per_epoch_steady": None, "s_per_epoch_mean": 16.0, "test_acc": 0.9}
    bad = {"program": "peer:keras-tf", "kind": "peer", "error": "RuntimeError: boom"}
    ratios = bench_seed.seed_ratios([seed, peer, bad])
    assert ratios == {"peer:torch": {"steady_over_peer_mean": 0.5, "mean_over_peer_mean": 0.625,
                                     "train_s": 0.625, "wall_s": 0.75}}
    table = bench_seed.markdown_table([seed, peer, bad], ratios)
    assert "| peer:torch | 2 | 40.0 | 32.0 | — | — | 16.00 | 0.9000 | 0.50 | 0.62 |" in table
    assert "failed: RuntimeError: boom" in table


def test_find_summary(tmp_path):
    (tmp_path / "run-1").mkdir()
    (tmp_path / "run-1" / "summary.json").write_text("{}")
    assert bench_seed.find_summary(tmp_path).parent.name == "run-1"
    (tmp_path / "run-2").mkdir()
    (tmp_path / "run-2" / "summary.json").write_text("{}")
    with pytest.raises(RuntimeError):
        bench_seed.find_summary(tmp_path)


def test_mnistlab_command():
    cmd = bench_seed.mnistlab_command("py", "seed", 20, Path("/tmp/r"), Path("/d"), ["--set", "a=b"])
    assert cmd == ["py", "-m", "mnistlab", "train", "--preset", "seed", "--set",
                   "training.epochs=20", "--test", "--runs-dir", "/tmp/r", "--data-dir", "/d",
                   "--set", "a=b"]
    assert "--set" not in bench_seed.mnistlab_command("py", "fast", None, Path("/r"), Path("/d"), [])


def test_error_headline():
    assert bench_seed.error_headline("Downloading...\nerror: Dataset 'mnist' is missing\nmore") \
        == "error: Dataset 'mnist' is missing"
    assert bench_seed.error_headline("a\nTraceback\nKeyError: 'x'\n") == "KeyError: 'x'"
    assert bench_seed.error_headline("") == "(no output on stderr)"


def test_cnn_peers_run_from_bench_peers_in_the_seed_peers_venvs(tmp_path):
    for name, seed_name in (("cnn-keras-jax", "keras-jax"), ("cnn-torch", "torch")):
        cnn, seed = peers.CNN_PEERS[name], peers.PEERS[seed_name]
        assert peers.script_path(cnn, tmp_path).is_file()  # bench/peers/, whatever --peers-dir
        assert peers.script_path(cnn).parent == peers.BENCH_PEERS_DIR
        assert peers.venv_python(cnn, tmp_path) == peers.venv_python(seed, tmp_path) \
            == tmp_path / seed_name / "bin" / "python"
        # Same package list, so installing either never rebuilds the other's venv.
        assert (cnn.packages, cnn.env, cnn.report) == (seed.packages, seed.env, seed.report)
    assert peers.script_path(peers.PEERS["torch"], tmp_path) == tmp_path / "seed_torch.py"
    assert peers.script_path(peers.PEERS["torch"]) == peers.default_peers_dir() / "seed_torch.py"


def test_select_peers_keeps_the_seed_and_cnn_peers_apart():
    assert [p.name for p in peers.select_peers(
        "cnn-torch,cnn-keras-jax", peers.CNN_PEERS)] == ["cnn-torch", "cnn-keras-jax"]
    assert list(peers.PEERS) == ["keras-jax", "keras-tf", "torch"]  # bench_seed's default
    with pytest.raises(SystemExit):
        peers.select_peers("cnn-torch")
    with pytest.raises(SystemExit):
        peers.select_peers("torch", peers.CNN_PEERS)
    assert [p.name for p in peers.select_peers("torch,cnn-torch", peers.ALL_PEERS)] \
        == ["torch", "cnn-torch"]


def test_run_peer_uses_the_peers_own_folder_and_shared_venv(tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    (own / "p.py").write_text("print('epochs=1 train_s=3.00 s_per_epoch=3.00 test_acc=0.7')\n")
    peer = peers.Peer("fake-cnn", "p.py", (), peers_dir=own, venv="fake")
    (tmp_path / "venvs" / "fake" / "bin").mkdir(parents=True)
    (tmp_path / "venvs" / "fake" / "bin" / "python").symlink_to(sys.executable)
    res = peers.run_peer(peer, tmp_path, 1, venvs_dir=tmp_path / "venvs",
                         peers_dir=tmp_path / "elsewhere")
    assert res["peer"] == "fake-cnn" and res["s_per_epoch"] == 3.0


def _cnn_records(mnistlab_steady):
    cnn = {"program": "mnistlab:cnn", "kind": "mnistlab", "wall_s": 30.0, "train_s": 20.0,
           "epochs": 2, "epoch1_s": 12.0, "s_per_epoch_steady": mnistlab_steady,
           "s_per_epoch_mean": 10.0, "test_acc": 0.98, "compile_s": 1.0}
    torch = {"program": "peer:cnn-torch", "kind": "peer", "wall_s": 40.0, "train_s": 32.0,
             "epochs": 2, "epoch1_s": None, "s_per_epoch_steady": None,
             "s_per_epoch_mean": 16.0, "test_acc": 0.98}
    keras = {**torch, "program": "peer:cnn-keras-jax", "s_per_epoch_mean": 40.0, "train_s": 80.0}
    bad = {"program": "peer:cnn-other", "kind": "peer", "error": "RuntimeError: boom"}
    return [cnn, keras, torch, bad]


def test_faster_peer_ratio_and_report():
    records = _cnn_records(8.0)
    ratios = bench_seed.seed_ratios(records, "cnn")
    assert ratios["peer:cnn-keras-jax"]["steady_over_peer_mean"] == 0.2
    faster = bench_cnn.faster_peer_ratio(records, ratios)
    assert faster == {"peer": "peer:cnn-torch", "peer_s_per_epoch": 16.0,
                      "mnistlab_figure": "s_per_epoch_steady", "ratio": 0.5,
                      "target": 0.6, "met": True}
    assert bench_cnn.s_per_epoch(records) == {"mnistlab:cnn": 8.0, "peer:cnn-keras-jax": 40.0,
                                              "peer:cnn-torch": 16.0}
    assert "**0.50** (target <= 0.6: met)" in bench_cnn.faster_line(faster)
    table = bench_seed.markdown_table(records, ratios, "cnn")
    assert "| cnn s/epoch ÷ this | cnn train ÷ this |" in table
    assert "| peer:cnn-torch | 2 | 40.0 | 32.0 | — | — | 16.00 | 0.9800 | 0.50 | 0.62 |" in table


def test_faster_peer_ratio_one_epoch_uses_the_mean_and_can_miss():
    records = _cnn_records(None)  # a 1-epoch run has no steady figure
    faster = bench_cnn.faster_peer_ratio(records, bench_seed.seed_ratios(records, "cnn"))
    assert faster["mnistlab_figure"] == "s_per_epoch_mean" and faster["ratio"] == 0.625
    records[0]["s_per_epoch_mean"] = 12.0
    faster = bench_cnn.faster_peer_ratio(records, bench_seed.seed_ratios(records, "cnn"))
    assert faster["ratio"] == 0.75 and not faster["met"]
    assert "missed" in bench_cnn.faster_line(faster)


def test_faster_peer_ratio_without_results():
    failed = [{"program": "mnistlab:cnn", "kind": "mnistlab", "error": "x"}, *_cnn_records(8.0)[1:]]
    assert bench_cnn.faster_peer_ratio(failed, bench_seed.seed_ratios(failed, "cnn")) is None
    assert bench_cnn.faster_peer_ratio(_cnn_records(8.0)[:1], {}) is None
    assert "no result" in bench_cnn.faster_line(None)


def test_bench_cnn_args():
    args = bench_cnn.parse_args([])
    assert args.epochs == 2 and args.peers == "cnn-keras-jax,cnn-torch"
    assert args.out == Path("docs/bench-cnn.json") and args.timeout == 3600
    assert bench_cnn.parse_args(["--peers", "", "--epochs", "1"]).peers == ""


CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 amx_tile
bogomips\t: 4800.00

processor\t: 1
model name\t: Another CPU
flags\t\t: fpu sse2
"""


def test_machine_reads_the_first_processor_and_its_kernel_flags():
    model, flags = machine._cpuinfo(CPUINFO)
    assert model == "Intel(R) Xeon(R) Processor"
    assert flags == {"fpu", "sse2", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"}
    assert machine._mem_total_gib("MemTotal:       24513716 kB\nMemFree: 1 kB\n") == 23.4  # 24513716 / 2**20


def test_machine_summary_names_cores_cpu_flags_and_memory():
    info = {"cores_usable": 2, "cpu": "Intel Xeon", "flags": ["avx2", "avx512f"], "mem_total_gib": 23.4,
            "python": "3.11.7"}
    assert machine.summary(info) == "2 cores of Intel Xeon (avx2, avx512f), 23.4 GiB, Python 3.11.7"
    assert machine.summary({**info, "flags": [], "mem_total_gib": None}) == "2 cores of Intel Xeon (no AVX2), Python 3.11.7"
    described = machine.describe()
    assert set(described["flags"]) <= set(machine.KERNEL_FLAGS) and described["cores"] >= 1


def _run(acc, wall, steady, program="mnistlab:x"):
    return {"program": program, "kind": "mnistlab", "epochs": 4, "test_acc": acc, "wall_s": wall,
            "s_per_epoch_steady": steady, "s_per_epoch_mean": steady}


def test_precision_rows_compare_each_policy_with_float32_of_the_same_preset():
    names = ["mnistlab:seed:float32:0", "mnistlab:seed:mixed_bfloat16:0", "mnistlab:seed:float32:1",
             "mnistlab:seed:mixed_bfloat16:1", "mnistlab:cnn:float32:0", "mnistlab:cnn:mixed_bfloat16:0"]
    records = [_run(0.90, 40, 2.0), _run(0.89, 50, 3.0), _run(0.92, 42, 4.0), _run(0.93, 48, 5.0),
               _run(0.99, 30, 12.0), {"program": "mnistlab:cnn", "kind": "mnistlab", "error": "boom"}]
    rows = {(r["preset"], r["policy"]): r for r in bench_precision.summarize(names, records)}
    seed32, seed16 = rows["seed", "float32"], rows["seed", "mixed_bfloat16"]
    # Medians of the seeds' s/epoch (2 and 4 -> 3; 3 and 5 -> 4), means of their accuracy.
    assert (seed32["s_per_epoch"], seed16["s_per_epoch"]) == (3.0, 4.0)
    assert seed16["over_float32"] == pytest.approx(4 / 3) and seed32["over_float32"] == 1.0
    assert seed16["accuracy_change"] == pytest.approx(0.91 - 0.91) and seed16["wall_s"] == 49
    cnn16 = rows["cnn", "mixed_bfloat16"]
    assert cnn16["runs"] == 0 and cnn16["failed"] == 1 and cnn16["over_float32"] is None
    table = bench_precision.markdown_table(list(rows.values()))
    assert "| seed | mixed_bfloat16 | 4 | 2 | 4.00 | 1.33 | 49.0 | 0.9100 | +0.00 |" in table
    assert "| cnn | mixed_bfloat16 | — | 0 | — | — | — | — | — |" in table


def test_precision_jobs_alternate_the_policies_within_each_seed(tmp_path):
    args = bench_precision.parse_args(["--seeds", "2"])
    names = [name for name, _ in bench_precision.jobs(["seed", "cnn"], 2, None, args, tmp_path)]
    assert names[:4] == ["mnistlab:seed:float32:0", "mnistlab:seed:mixed_bfloat16:0",
                         "mnistlab:seed:float32:1", "mnistlab:seed:mixed_bfloat16:1"] and len(names) == 8


def test_speedrun_rows_hold_each_program_to_the_targets():
    names = [f"{p}:{s}" for s in range(3) for p in ("mnistlab:speedrun", "peer:speedrun-torch")]
    records = [_run(0.991, 13.0, 2.0), _run(0.990, 14.0, 2.5), _run(0.992, 14.0, 2.2), _run(0.990, 15.5, 2.6),
               _run(0.990, 12.0, 2.1), _run(0.989, 14.5, 2.7)]
    rows = {r["program"]: r for r in bench_speedrun.summarize(names, records)}
    ours, torch = rows["mnistlab:speedrun"], rows["peer:speedrun-torch"]
    assert ours["acc_mean"] == pytest.approx(0.991) and ours["acc_sd"] == pytest.approx(0.001)
    assert (ours["wall_mean"], ours["wall_max"], ours["meets"]) == (13.0, 14.0, True)
    # 99.0% mean but one run over 15 s: missed.
    assert torch["acc_mean"] == pytest.approx(0.98966, abs=1e-5) and not torch["meets"]
    table = bench_speedrun.markdown_table(list(rows.values()))
    assert "| mnistlab:speedrun | 3 | 99.10% | 99.00% | 99.20% | 0.10 | 13.0 | 14.0 | 2.10 | yes |" in table
    assert "| peer:speedrun-torch | 3 | 98.97% |" in table and table.count("| no |") == 1


def test_speedrun_jobs_seed_both_programs(tmp_path):
    args = bench_speedrun.parse_args(["--seeds", "2"])
    planned = bench_speedrun.jobs(2, [peers.SPEEDRUN_PEER], args, tmp_path)
    assert [name for name, _ in planned] == ["mnistlab:speedrun:0", "peer:speedrun-torch:0",
                                             "mnistlab:speedrun:1", "peer:speedrun-torch:1"]
    assert bench_speedrun.EPOCHS == 3 and peers.ALL_PEERS["speedrun-torch"].venv == "torch"
