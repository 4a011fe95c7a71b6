"""console.py: the lines the commands print, from records written by hand."""

import io
import re

import pytest
from rich.console import Console
from rich.progress import Progress

from mnistlab import console, training

RECORD = {"epoch": 3, "seconds": 1.5, "loss": 0.23104, "accuracy": 0.93, "val_loss": 0.25,
          "val_accuracy": 0.9251, "learning_rate": 0.001, "epochs": 20}


def test_keras_line_reads_as_keras_prints_it():
    assert training.keras_line(RECORD, 20) == ("Epoch 3/20 - 1.50s - loss: 0.2310 - accuracy: 0.9300 - val_loss: 0.2500 "
                                              "- val_accuracy: 0.9251 - learning_rate: 0.001")


def test_the_final_retraining_prints_marked_keras_lines_unless_quiet(capsys):
    assert console.final_epochs(quiet=True) is None
    console.final_epochs(quiet=False)(RECORD)
    assert capsys.readouterr().out == "final: " + training.keras_line(RECORD, 20) + "\n"


# ------------------------------------------------------------------ bars (tune, ablate)


def _ansi_free(text: str) -> str:
    """What a terminal would have shown, less its colours and cursor moves."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", text)


@pytest.fixture
def screen(monkeypatch):
    """console's output recorded as a terminal shows it (bars drawn), and every Progress it makes."""
    written = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=written, force_terminal=True, width=200, soft_wrap=True))
    made: list[Progress] = []

    class Recorded(Progress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(console, "Progress", Recorded)
    return written, made


def _bar(progress: Progress, description: str):
    return next(t for t in progress.tasks if t.description.startswith(description))


@pytest.fixture(scope="module")
def space():
    from mnistlab import tune

    return tune.tune_from_dict({
        "name": "t", "base": "fast", "set": ["training.validation_split=0.25"],
        "search": {"params": {"optimizer.learning_rate": {"choice": [1e-3, 1e-2]},
                              "training.epochs": {"choice": [2, 4]}}},
        "tune": {"sampler": "random", "pruner": "none", "batch": 2, "seed": 0}})


def _trial(number, finished, value=0.9, status="completed"):
    return {"event": "trial", "trial": number, "status": status, "value": value, "epochs": 4,
            "params": {"optimizer.learning_rate": 0.01, "training.epochs": 4}, "best": True,
            "best_value": 0.9, "best_trial": 0, "finished": finished}


def test_a_study_shows_its_trial_lines_above_bars_of_its_trials_and_the_batch_s_epochs(screen, space):
    written, made = screen
    with console.study_events(space, quiet=False) as on_event:
        on_event({"event": "start", "trials": 3, "sampler": "random", "pruner": "none", "batch": 2,
                  "folder": "studies/t"})
        on_event({"event": "batch", "trials": [0, 1], "finished": 0, "target": 3, "epochs": 4})
        (bar,) = made
        trials, epochs = _bar(bar, "trials"), _bar(bar, "epochs")
        assert (trials.total, trials.completed) == (3, 0)
        assert (epochs.total, epochs.completed, epochs.visible) == (4, 0, True)  # the batch's most epochs
        for epoch in (1, 2, 3):
            on_event({"event": "epoch", "epoch": epoch, "trials": [0, 1], "running": 2, "seconds": 0.5})
        assert epochs.completed == 3 and epochs.fields["note"] == "2 training"
        on_event(_trial(0, finished=1))
        on_event(_trial(1, finished=2, value=None, status="pruned"))
        assert (trials.total, trials.completed) == (3, 2)
        on_event({"event": "batch", "trials": [2], "finished": 2, "target": 3, "epochs": 2})
        assert (epochs.completed, epochs.total, epochs.description) == (0, 2, "epochs, trials 2")  # starts over
        on_event({"event": "epoch", "epoch": 1, "trials": [2], "running": 1, "seconds": 0.5})
        on_event(_trial(2, finished=3))
        on_event({"event": "done", "seconds": 9.0})
        assert (trials.total, trials.completed) == (3, 3)
    shown = _ansi_free(written.getvalue())
    assert "t: 3 trials, sampler random, pruner none, batch 2, ranked by val_accuracy; study folder studies/t" in shown
    assert "training trials 0, 1 (0/3 finished)" in shown
    assert ("trial 0 completed: val_accuracy 0.9000 after 4 epochs - best 0.9000 (trial 0) - 1/3 - "
            "learning_rate=0.01, epochs=4") in shown
    assert "trial 1 pruned: val_accuracy - after 4 epochs" in shown
    # Each line is drawn with the bars below it, as they stood then: after trial 0's line,
    # 1 of 3 trials and 3 of the batch's 4 epochs.
    after_trial_0 = shown.split("trial 0 completed")[1].split("trial 1 pruned")[0]
    assert re.search(r"trials\s+\S+\s+1/3", after_trial_0), after_trial_0
    assert re.search(r"epochs, trials 0, 1\s+\S+\s+3/4\s+2 training", after_trial_0), after_trial_0
    assert bar.live.transient and not bar.live.is_started


def test_a_resumed_study_s_bar_starts_at_the_trials_already_finished(screen, space):
    _, made = screen
    with console.study_events(space, quiet=False) as on_event:
        on_event({"event": "start", "trials": 10, "sampler": "random", "pruner": "none", "batch": 2, "folder": "s"})
        on_event({"event": "wait", "running": 2, "finished": 6, "target": 10})
        on_event({"event": "batch", "trials": [8], "finished": 7, "target": 10, "epochs": 4})
        trials = _bar(made[0], "trials")
        # The 6 found finished were not done at this worker's pace: the time left counts from there.
        assert (trials.completed, trials.total, trials.fields["since"]) == (7, 10, 6)


def test_a_study_says_each_wait_once(screen, space):
    written, _ = screen
    with console.study_events(space, quiet=False) as on_event:
        for finished in (1, 1, 2):
            on_event({"event": "wait", "running": 2, "finished": finished, "target": 4})
        on_event({"event": "batch", "trials": [5], "finished": 2, "target": 4, "epochs": 4})
        on_event({"event": "wait", "running": 1, "finished": 3, "target": 4})
    assert _ansi_free(written.getvalue()).count("waiting:") == 2


def test_a_quiet_study_or_ablation_shows_nothing(screen, space):
    written, _ = screen
    with console.study_events(space, quiet=True) as on_event:
        on_event({"event": "start", "trials": 3, "sampler": "random", "pruner": "none", "batch": 2, "folder": "s"})
        on_event({"event": "batch", "trials": [0], "finished": 0, "target": 3, "epochs": 4})
        on_event({"event": "epoch", "epoch": 1, "trials": [0], "running": 1, "seconds": 0.5})
        on_event(_trial(0, finished=1))
    with console.ablate_events("test", quiet=True) as on_event:
        on_event({"event": "start", "claims": 1, "seeds": 2, "expected": "soon"})
        on_event({"event": "claim", "claim": "dropout", "title": "Dropout", "members": 8})
    assert written.getvalue() == ""


def test_an_ablation_shows_its_lines_above_bars_of_claims_members_and_epochs(screen):
    written, made = screen
    with console.ablate_events("test", quiet=False) as on_event:
        on_event({"event": "start", "claims": 2, "seeds": 2, "expected": "under a minute"})
        on_event({"event": "claim", "claim": "initialization", "title": "Initialization", "members": 16})
        (bar,) = made
        claims, members, epochs = (_bar(bar, d) for d in ("claims", "members", "epochs"))
        assert (claims.total, claims.completed, members.total, members.completed) == (2, 0, 16, 0)
        for group in (1, 2):
            on_event({"event": "group", "claim": "initialization", "group": group, "groups": 2, "members": 8,
                      "epochs": 3})
            assert (epochs.total, epochs.completed, members.fields["note"]) == (3, 0, f"group {group}/2")
            for epoch in (1, 2, 3):
                on_event({"event": "epoch", "claim": "initialization", "group": group, "groups": 2, "epoch": epoch,
                          "epochs": 3, "members": 16, "members_done": 8 * group if epoch == 3 else 8 * (group - 1)})
                assert epochs.completed == epoch
            assert members.completed == 8 * group
        on_event({"event": "claim done", "claim": "initialization", "seconds": 12.0,
                  "verdicts": ["supported", "inconclusive", "supported"]})
        assert (claims.completed, members.visible, epochs.visible) == (1, False, False)
        on_event({"event": "claim", "claim": "dropout", "title": "Dropout", "members": 8})
        assert (members.total, members.completed, members.visible) == (8, 0, True)
    shown = _ansi_free(written.getvalue())
    for line in ("ablate, budget test: 2 claims, 2 seeds (under a minute)", "initialization: Initialization",
                 "  group 2/2: 8 members x 3 epochs", "  done in 12 s: 2 supported, 1 inconclusive"):
        assert line in shown
    after_done = shown.split("done in 12 s")[1]
    assert re.search(r"claims\s+\S+\s+1/2", after_done), after_done


def test_time_left_is_at_the_average_pace_so_far():
    assert console.time_left(30.0, 3, 6) == 60.0
    assert console.time_left(30.0, 0, 6) is None  # nothing done yet: no pace
    assert console.time_left(None, 3, 6) is None  # not started
    assert console._clock(3725) == "1:02:05"


def test_json_mode_moves_people_to_stderr_and_writes_one_object(capsys):
    from pathlib import Path

    try:
        console.for_scripts(True)
        console.say("a line for people")
        console.emit(run_dir=Path("runs/x"), accuracy=0.5)
        console.emit(accuracy=0.75, loss=float("nan"))  # later fields win; NaN as Python's json reads it
        console.error("and then something failed")
        console.flush_json()
        console.flush_json()  # written once
    finally:
        console.for_scripts(False)
    captured = capsys.readouterr()
    assert "a line for people" in captured.err and "something failed" in captured.err
    assert captured.out == ('{"run_dir": "runs/x", "accuracy": 0.75, "loss": NaN, '
                            '"error": "and then something failed"}\n')
    console.say("back to stdout")
    console.emit(ignored=True)
    console.flush_json()
    assert capsys.readouterr().out == "back to stdout\n"


def test_a_completer_offers_the_names_that_start_with_what_was_typed():
    from mnistlab import data

    assert console.completer("data", "DATASETS", "dataset=")("dataset=f") == ["dataset=fashion-mnist"]
    assert console.completer("training", "SPLITS")("") == ["test", "validation", "train"]
    assert console.completer("spec", "presets")("zz") == []
    assert len(console.completer("data", "DATASETS")("")) == len(data.DATASETS)
