"""The `mnistlab` command end to end, as a user runs it, on real MNIST."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

from mnistlab import runs

pytestmark = pytest.mark.slow  # processes, servers, or training for seconds each

QUICK = ["--preset", "fast", "--set", "training.subset=10000", "--set", "training.epochs=2",
         "--set", "training.validation_split=0.2"]


def mnistlab(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "mnistlab", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "250", **(env or {})}, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def trained(mnist_root, tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("runs")
    done = mnistlab("train", *QUICK, "--test", "--json", "--runs-dir", str(runs_dir),
                    env={"MNISTLAB_DATA": str(mnist_root)})
    assert done.returncode == 0, done.stderr + done.stdout
    (run_dir,) = list(runs_dir.iterdir())
    return done, run_dir


def test_train_records_a_complete_run(trained):
    done, run_dir = trained
    assert {p.name for p in run_dir.iterdir()} == {runs.CONFIG, runs.METRICS, runs.SUMMARY, runs.WEIGHTS}
    metrics = [json.loads(line) for line in (run_dir / runs.METRICS).read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert metrics[-1]["val_accuracy"] >= 0.90
    summary = json.loads((run_dir / runs.SUMMARY).read_text())
    assert summary["status"] == "completed"
    assert summary["train_samples"] == 8000 and summary["validation_samples"] == 2000
    assert summary["test"]["samples"] == 10000 and summary["test"]["accuracy"] >= 0.90
    assert "Epoch 2/2" in done.stderr and "val_accuracy" in done.stderr  # --json: people read stderr
    resolved = (run_dir / runs.CONFIG).read_text()
    assert "beta_2 = 0.999" in resolved and "subset = 10000" in resolved


def test_train_json_is_one_object_of_the_recorded_figures(trained):
    done, run_dir = trained
    shown = json.loads(done.stdout)  # stdout holds the object and nothing else
    summary = json.loads((run_dir / runs.SUMMARY).read_text())
    assert shown["run_dir"] == str(run_dir) and shown["status"] == "completed" and shown["epochs"] == 2
    assert shown["final"] == summary["final"] and shown["test"] == summary["test"]
    assert shown["best_epoch"] == summary["best_epoch"] and shown["wall_seconds"] == summary["wall_seconds"]


def test_runs_lists_newest_first_and_names_an_unreadable_folder(trained, tmp_path):
    _, run_dir = trained
    shutil.copytree(run_dir, tmp_path / "b-copy")
    shutil.copytree(run_dir, tmp_path / "c-broken")
    (tmp_path / "c-broken" / runs.SUMMARY).write_text("{cut")
    (tmp_path / "not-a-run").mkdir()
    os.utime(tmp_path / "c-broken" / runs.CONFIG, (1e9, 1e9))  # 2001: the oldest
    done = mnistlab("runs", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)["runs"]
    assert [Path(r["run_dir"]).name for r in listed] == ["b-copy", "c-broken"]
    summary = json.loads((run_dir / runs.SUMMARY).read_text())
    assert listed[0]["status"] == "completed" and listed[0]["epochs"] == 2
    assert listed[0]["val_accuracy"] == summary["final"]["val_accuracy"]
    assert listed[0]["test_accuracy"] == summary["test"]["accuracy"]
    assert listed[1]["status"] == "unreadable" and "not valid JSON" in listed[1]["problem"]
    assert listed[1]["started"].startswith("2001-09-")
    table = mnistlab("runs", str(tmp_path)).stdout
    assert table.index("b-copy") < table.index("c-broken") and "unreadable" in table
    missing = mnistlab("runs", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "nowhere: no such folder" in missing.stderr


def test_summary_of_a_run_and_of_a_preset_as_keras_prints_it(trained):
    _, run_dir = trained
    done = mnistlab("summary", str(run_dir), "--json")
    assert done.returncode == 0 and "Total params: 203,530 (795.04 KB)" in done.stderr, done.stderr
    shown = json.loads(done.stdout)  # the fast preset: 784-256-10
    assert (shown["total"], shown["trainable"], shown["non_trainable"]) == (784 * 256 + 256 + 2570, 203_530, 0)
    assert [(layer["name"], layer["output_shape"]) for layer in shown["layers"]] == [
        ("dense", [None, 256]), ("dense_1", [None, 10])]
    done = mnistlab("summary", "--preset", "seed", "--set", "model.layers.0.units=500")
    assert done.returncode == 0 and "dense (Dense)" in done.stdout and f"{784 * 500 + 500:,}" in done.stdout


def test_version_and_shell_completion():
    import importlib.metadata

    done = mnistlab("--version")
    assert done.returncode == 0 and done.stdout == f"mnistlab {importlib.metadata.version('mnistlab')}\n"
    program = str(Path(sys.executable).parent / "mnistlab")  # the installed script: completion keys on its name

    def complete(shell: str, words: str) -> list[str]:
        env = {**os.environ, "_MNISTLAB_COMPLETE": f"complete_{shell}", "_TYPER_COMPLETE_ARGS": words,
               "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
        if shell == "fish":
            env["_TYPER_COMPLETE_FISH_ACTION"] = "get-args"
        done = subprocess.run([program], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    from mnistlab import data, report, spec

    assert complete("bash", "mnistlab train --preset f") == [p for p in spec.presets() if p.startswith("f")] != []
    assert complete("fish", "mnistlab train --set d") == [f"dataset={name}" for name in data.DATASETS]
    zsh = " ".join(complete("zsh", "mnistlab plot run --what c"))  # zsh's _arguments line, each choice quoted
    assert [p for p in report.PLOTS if f'"{p}"' in zsh] == [p for p in report.PLOTS if p.startswith("c")] != []


def test_evaluate_reproduces_and_records_the_test_figure(trained, mnist_root):
    _, run_dir = trained
    before = json.loads((run_dir / runs.SUMMARY).read_text())
    done = mnistlab("evaluate", str(run_dir), "--split", "test", env={"MNISTLAB_DATA": str(mnist_root)})
    assert done.returncode == 0, done.stderr
    after = json.loads((run_dir / runs.SUMMARY).read_text())
    assert after["test"]["accuracy"] == pytest.approx(before["test"]["accuracy"], abs=1e-6)
    assert len(after["evaluations"]) == 2
    assert f"accuracy {before['test']['accuracy']:.4f}" in done.stdout
    scripted = mnistlab("evaluate", str(run_dir), "--split", "validation", "--json",
                        env={"MNISTLAB_DATA": str(mnist_root)})
    assert scripted.returncode == 0 and "accuracy" in scripted.stderr, scripted.stderr
    recorded = json.loads((run_dir / runs.SUMMARY).read_text())["evaluations"][-1]
    assert json.loads(scripted.stdout) == {"run_dir": str(run_dir), "split": "validation", "loss": recorded["loss"],
                                           "accuracy": recorded["accuracy"], "samples": 2000}


def test_help_shows_the_extras_in_brackets():
    # rich markup would read "[tensorboard]" as a style and drop it ("extras mnistlab, mnistlab")
    done = mnistlab("train", "--help")
    assert done.returncode == 0 and "extras mnistlab[tensorboard], mnistlab[mlflow]" in done.stdout


def test_presets_and_datasets_listings(mnist_root):
    done = mnistlab("presets")
    assert done.returncode == 0 and "seed" in done.stdout and "keras-mlp" in done.stdout
    done = mnistlab("datasets", env={"MNISTLAB_DATA": str(mnist_root)})
    assert done.returncode == 0 and str(mnist_root / "mnist") in done.stdout and "fashion-mnist" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["train", "--preset", "sead"], "did you mean 'seed'"),
    (["train", "--set", "optimizer.learning_rate=-1"], "optimizer.learning_rate: Input should be greater than 0"),
    (["train", "--set", "training.batch_size"], "expected key=value"),
    (["train", "nope.toml"], "nope.toml: no such file"),
    (["evaluate", "."], "not a run folder"),
    (["evaluate", ".", "--split", "tset"], "expected test, validation or train"),
    (["train", "--bogus"], "No such option"),
    # One setting spelt twice is an error, not a silent winner.
    (["train", "--set", "training.validation_split=0.2", "--set", "training.validation={fraction=0.1}"],
     "training.validation_split and training.validation set the same thing"),
    # An impossible subset is refused, not capped while config.toml records it.
    (["train", "--preset", "fast", "--set", "training.subset=10000000"],
     "training.subset = 10000000: 'mnist' has 60000 training images"),
    # Names become folder names: one plain path component, under the folder the user chose.
    (["train", "--set", "name='../../escaped'"], "becomes a folder name"),
    (["train", "--set", "name='a/b'"], "becomes a folder name"),
    (["train", "--set", "name=''"], "becomes a folder name"),
])
def test_bad_input_exits_2_with_a_message(args, message, tmp_path, mnist_root):
    env = {"MNISTLAB_DATA": str(mnist_root)}
    done = mnistlab(*args, "--runs-dir", str(tmp_path / "runs"), env=env) \
        if args[0] == "train" and "--bogus" not in args else mnistlab(*args, cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_missing_dataset_offline_exits_2_and_writes_nothing(tmp_path):
    env = {"MNISTLAB_DATA": str(tmp_path / "empty"), "MNISTLAB_CACHE": str(tmp_path / "cache"),
           "MNISTLAB_MIRRORS": "http://127.0.0.1:9/"}  # port 9 (discard): refused at once
    done = mnistlab("train", "--runs-dir", str(tmp_path / "runs"), env=env)
    assert done.returncode == 2, done.stderr
    assert "MNISTLAB_DATA" in done.stderr and "http://127.0.0.1:9/" in done.stderr
    assert not (tmp_path / "runs").exists()
    assert not any((tmp_path / "cache").rglob("*.gz"))


def test_a_diverging_run_says_so(mnist_root, tmp_path):
    done = mnistlab("train", *QUICK, "--set", "optimizer.learning_rate=1e30", "--runs-dir", str(tmp_path),
                    env={"MNISTLAB_DATA": str(mnist_root)})
    assert done.returncode == 2
    assert "diverged at epoch 1" in done.stderr and "learning_rate" in done.stderr
    (run_dir,) = list(tmp_path.iterdir())
    summary = json.loads((run_dir / runs.SUMMARY).read_text())
    assert summary["status"] == "diverged" and summary["diverged_at_epoch"] == 1
    assert not (run_dir / runs.WEIGHTS).exists()  # NaN weights are not worth keeping


def test_ctrl_c_keeps_finished_epochs(mnist_root, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "mnistlab", "train", *QUICK, "--set", "training.epochs=2000",
                             "--runs-dir", str(tmp_path)], env={**os.environ, "MNISTLAB_DATA": str(mnist_root)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # A shell that starts jobs in the background (as CI may) leaves SIGINT
                            # ignored in its children; Ctrl-C must reach this one as at a terminal.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    metrics = None
    while time.monotonic() < deadline:
        found = list(tmp_path.glob(f"*/{runs.METRICS}"))
        if found and found[0].read_text().count("\n") >= 1:
            metrics = found[0]
            break
        time.sleep(0.2)
    assert metrics is not None, "no epoch finished in time"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    summary = json.loads((metrics.parent / runs.SUMMARY).read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] >= 1


def test_sigterm_is_handled_as_ctrl_c_with_exit_143(mnist_root, tmp_path):
    # What `timeout`, `docker stop` and systemd send: the finished epochs and their weights stay.
    proc = subprocess.Popen([sys.executable, "-m", "mnistlab", "train", *QUICK, "--set", "training.epochs=2000",
                             "--runs-dir", str(tmp_path)], env={**os.environ, "MNISTLAB_DATA": str(mnist_root)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    metrics = None
    while time.monotonic() < deadline and metrics is None:
        found = list(tmp_path.glob(f"*/{runs.METRICS}"))
        if found and found[0].read_text().count("\n") >= 1:
            metrics = found[0]
        time.sleep(0.2)
    assert metrics is not None, "no epoch finished in time"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    run = runs.open_run(metrics.parent)
    assert run.summary["status"] == "interrupted" and run.summary["interrupted_by"] == "SIGTERM"
    assert len(run.metrics) == run.summary["epochs_completed"] >= 1
    assert set(run.params()) == {"dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias"}


@pytest.mark.parametrize("command", ["sweep", "tune"])
def test_a_study_or_sweep_name_cannot_leave_its_folder(command, tmp_path, mnist_root):
    raw = {"name": "../../escaped", "base": "fast", "set": ["training.validation_split=0.1"],
           "search": {"params": {"optimizer.learning_rate": [1e-3]}}}
    (tmp_path / "space.toml").write_text(tomli_w.dumps(raw))
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    done = mnistlab(command, str(tmp_path / "space.toml"), cwd=work, env={"MNISTLAB_DATA": str(mnist_root)})
    assert done.returncode == 2 and "becomes a folder name" in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.toml", "work"] and not list(work.iterdir())


@pytest.fixture
def mounted(tmp_path):
    """mount(size, read_only) -> a real tmpfs of that size (root only, as CI runs); unmounted after."""
    points = []

    def mount(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"mnt{len(points)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs ({done.stderr.strip()}): these tests need root, as CI has")
        points.append(point)
        return point

    yield mount
    for point in points:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_full_disk_keeps_the_trained_result_elsewhere_and_exits_2(mounted, mnist_root, tmp_path):
    small = mounted("2m")  # the 784-1000-10 network's weights alone are 3.2 MB
    done = mnistlab("train", "--preset", "seed", "--set", "training.subset=2000", "--set", "training.epochs=1",
                    "-q", "--runs-dir", str(small), env={"MNISTLAB_DATA": str(mnist_root), "TMPDIR": str(tmp_path)})
    assert done.returncode == 2, done.stderr
    said = " ".join(done.stderr.split())  # the console folds long lines
    assert "could not write the run (" in said and "No space left on device" in said and "Traceback" not in said
    (rescued,) = tmp_path.glob("mnistlab-rescued-*")
    assert str(rescued) in done.stderr.replace("\n", "")
    run = runs.open_run(rescued)
    assert run.status == "completed" and len(run.metrics) == 1
    assert run.params()["dense/kernel"].shape == (784, 1000)  # verified against its digest on the way


def test_a_read_only_runs_dir_is_refused_before_training(mounted, mnist_root):
    read_only = mounted("1m", read_only=True)
    done = mnistlab("train", *QUICK, "--runs-dir", str(read_only / "runs"), env={"MNISTLAB_DATA": str(mnist_root)})
    assert done.returncode == 2 and "cannot write there (Read-only file system)" in done.stderr, done.stderr


def test_a_network_the_machine_cannot_hold_is_refused_with_exit_2(mnist_root, tmp_path):
    # The estimate itself: training_test.
    done = mnistlab("train", "--preset", "fast", "--set", "model.layers.0.units=100000000", "--runs-dir",
                    str(tmp_path / "runs"), env={"MNISTLAB_DATA": str(mnist_root)})
    assert done.returncode == 2 and "GiB free, 80% of it usable" in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists()
