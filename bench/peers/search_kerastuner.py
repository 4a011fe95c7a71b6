"""KerasTuner's Hyperband over mnistlab's example spaces, seeded, with a timeline.

What a Keras user runs instead of `mnistlab tune`, for `bench/bench_search.py`. The `mlp`
space is ../shared/peers/tune_kerastuner.py's (examples/tune-mlp.toml: 1-3 hidden layers,
width, dropout, input dropout, L2 on every kernel, max-norm, Adam's rate, constant or
cosine; 20 epochs at most at batch 128); `cnn` is examples/tune-cnn.toml's (the `cnn`
preset's convnet: both convolutions' widths, dropout, rotation and shift strengths, Adam's
rate; cosine over 6 epochs at batch 64). Both rank on Keras' validation_split=0.1 (the
last 10% of the training set, as mnistlab's).

`search` runs until stopped from outside (`timeout`) and appends one line per finished
trial to WORK/timeline.jsonl: the wall clock (time.time()) at its end, its score (its best
epoch's validation accuracy, by which KerasTuner ranks), its last epoch's (by which mnistlab
ranks), the epochs it trained. `final` reloads the trials, retrains the best
on all 60,000 images for the space's full epochs and evaluates the test set once.

Usage: KERAS_BACKEND=jax python search_kerastuner.py search|final mlp|cnn SEED DATA_DIR WORK_DIR
"""
import json, sys, time
import numpy as np
import keras
import keras_tuner as kt
from keras import layers, regularizers, constraints

from mnist_idx import load

mode, space, seed, d, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
x, y, xt, yt = load(d)
shape = (784,) if space == "mlp" else (28, 28, 1)
x, xt = x.reshape(-1, *shape).astype("float32") / 255, xt.reshape(-1, *shape).astype("float32") / 255
# (max epochs, batch): as the spaces' `set` lines.
EPOCHS, BATCH = {"mlp": (20, 128), "cnn": (6, 64)}[space]


def mlp(hp, steps):
    l2 = hp.Float("l2", 1e-8, 1e-3, sampling="log")
    mn = hp.Choice("max_norm", [0.0, 2.0, 3.0, 4.0])
    kw = dict(kernel_initializer="glorot_normal", kernel_regularizer=regularizers.l2(l2),
              kernel_constraint=constraints.MaxNorm(mn) if mn else None)
    m = keras.Sequential([keras.Input(shape), layers.Dropout(hp.Float("input_dropout", 0.0, 0.3))])
    units, drop = hp.Choice("units", [512, 800, 1000, 1200]), hp.Float("dropout", 0.0, 0.5)
    for _ in range(hp.Choice("hidden_layers", [1, 2, 3])):
        m.add(layers.Dense(units, activation="relu", **kw))
        m.add(layers.Dropout(drop))
    m.add(layers.Dense(10, activation="softmax", **kw))
    lr = hp.Float("learning_rate", 1e-4, 3e-3, sampling="log")
    if hp.Choice("schedule", ["constant", "cosine"]) == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps)
    return m, lr


def cnn(hp, steps):
    shift = hp.Float("shift", 0.0, 0.15)
    m = keras.Sequential([
        keras.Input(shape),
        layers.RandomRotation(hp.Float("rotation", 0.0, 0.05), fill_mode="constant"),
        layers.RandomTranslation(shift, shift, fill_mode="constant"),
        layers.Conv2D(hp.Choice("filters_1", [16, 32, 48]), 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(hp.Choice("filters_2", [32, 64, 96]), 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dropout(hp.Float("dropout", 0.1, 0.6)),
        layers.Dense(10, activation="softmax"),
    ])
    lr = hp.Float("learning_rate", 3e-4, 1e-2, sampling="log")
    return m, keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps)


def build(hp, samples=len(x) - len(x) // 10):
    # The schedule spans the space's full epochs, as the TOML's decay_steps do.
    model, lr = (mlp if space == "mlp" else cnn)(hp, EPOCHS * -(-samples // BATCH))
    model.compile(keras.optimizers.Adam(lr), "categorical_crossentropy", metrics=["accuracy"])
    return model


class Timed(kt.Hyperband):
    """Hyperband that writes each finished trial's end time and score."""

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        seen = trial.metrics.exists("val_accuracy")  # not for a trial that failed before its first epoch
        with open(f"{work}/timeline.jsonl", "a") as f:
            f.write(json.dumps({"time": time.time(), "trial": trial.trial_id, "score": trial.score,
                                "last": trial.metrics.get_last_value("val_accuracy") if seen else None,
                                "epochs": trial.hyperparameters.values.get("tuner/epochs")}) + "\n")


keras.utils.set_random_seed(seed)
tuner = Timed(build, objective="val_accuracy", max_epochs=EPOCHS, factor=3, seed=seed,
              directory=work, project_name=space, overwrite=(mode == "search"))
one_hot = keras.utils.to_categorical(y, 10)
if mode == "search":
    tuner.search(x, one_hot, validation_split=0.1, batch_size=BATCH, verbose=0)
else:
    tuner.reload()
    best = tuner.oracle.get_best_trials(1)[0]
    t0 = time.perf_counter()
    model = build(best.hyperparameters, samples=len(x))
    model.fit(x, one_hot, batch_size=BATCH, epochs=EPOCHS, verbose=0)
    accuracy = float(np.mean(model.predict(xt, batch_size=1000, verbose=0).argmax(1) == yt))
    print(json.dumps({"trials": len(tuner.oracle.trials), "best_trial": best.trial_id,
                      "best_val_accuracy": best.score, "best": best.hyperparameters.values,
                      "final_train_s": round(time.perf_counter() - t0, 1), "test_accuracy": accuracy}))
