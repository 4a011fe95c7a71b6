"""console.py: the lines the commands print, from records written by hand."""

from mnistlab import console

RECORD = {"epoch": 3, "seconds": 1.5, "loss": 0.23104, "accuracy": 0.93, "val_loss": 0.25,
          "val_accuracy": 0.9251, "learning_rate": 0.001, "epochs": 20}


def test_keras_line_reads_as_keras_prints_it():
    assert console.keras_line(RECORD, 20) == ("Epoch 3/20 - 1.50s - loss: 0.2310 - accuracy: 0.9300 - val_loss: 0.2500 "
                                              "- val_accuracy: 0.9251 - learning_rate: 0.001")


def test_the_final_retraining_prints_marked_keras_lines_unless_quiet(capsys):
    assert console.final_epochs(quiet=True) is None
    console.final_epochs(quiet=False)(RECORD)
    assert capsys.readouterr().out == "final: " + console.keras_line(RECORD, 20) + "\n"
