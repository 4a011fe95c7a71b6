"""Keras in and out, with Keras 3 (JAX backend) itself as the reference, on real MNIST.

Exported networks predict what mnistlab predicts; imported ones come back equal; from the
same weights and the same batches, Keras' optimizers move the weights where mnistlab's do
and report the same loss and accuracy. The agreement measured is printed (`-s` shows it).
"""

import re
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mnistlab
from mnistlab import engine, keras_io, model, optim, runs, spec as spec_lib
from mnistlab.errors import UserError
from mnistlab.predict_test import mnist, run_cli  # noqa: F401 (shared session fixtures)

keras = keras_io.import_keras()


def keras_weights(net, spec) -> dict[str, np.ndarray]:
    """A Keras model's weights under mnistlab's names (its layers carry mnistlab's names)."""
    return {f"{name}/{v.name}": np.asarray(v.numpy()) for name in model.layer_names(spec.model)
            for v in net.get_layer(name).weights}


# ------------------------------------------------------------------ out and back in


@pytest.fixture(scope="module")
def trained(mnist, tmp_path_factory):
    """preset name -> a run folder trained briefly (1 epoch on 2,000 images: weights not initial)."""
    folder, made = tmp_path_factory.mktemp("runs"), {}

    def run(preset):
        if preset not in made:
            spec = mnistlab.with_overrides(mnistlab.preset(preset), ["training.subset=2000", "training.epochs=1"])
            made[preset] = mnistlab.train(spec, arrays=mnist, runs_dir=folder).run_dir
        return made[preset]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["seed", "keras-mlp", "cnn"])
def test_an_exported_model_predicts_what_mnistlab_predicts_and_comes_back_equal(
        trained, preset, mnist, tmp_path, capsys, monkeypatch):
    run_dir = trained(preset)
    out = tmp_path / "model.keras"
    code, stdout, err = run_cli(["export", run_dir, "--format", "keras", "--out", out], capsys, monkeypatch)
    assert code == 0 and f"wrote {out} (keras)" in stdout, err
    run = runs.open_run(run_dir)
    params = run.params()
    assert any(np.abs(params[k] - v).max() > 0 for k, v in model.init(run.spec.model, run.spec.training.seed,
                                                                     (28, 28)).items())  # trained

    net = keras.saving.load_model(out)  # Keras alone: raw pixels in, probabilities out
    got = net.predict(mnist.test_images, batch_size=1000, verbose=0)  # all 10,000
    expected = np.asarray(model.probabilities(run.spec.model, params, mnist.test_images))
    assert got.shape == (10_000, 10)
    assert np.abs(got - expected).max() <= 1e-5
    assert net.optimizer is not None and net.loss == "sparse_categorical_crossentropy"

    code, stdout, err = run_cli(["import", out, "--runs-dir", tmp_path / "imported"], capsys, monkeypatch)
    assert code == 0, err
    back = runs.open_run(stdout.split("wrote ", 1)[1].strip())
    assert back.spec.model == run.spec.model and back.spec.optimizer == run.spec.optimizer
    assert back.spec.name == run.spec.name
    got_params = back.params()
    assert set(got_params) == set(params) and all(np.array_equal(got_params[k], params[k]) for k in params)
    assert back.status == "imported" and back.summary["imported_from"] == str(out.resolve())


@pytest.mark.slow
def test_every_layer_type_and_setting_goes_out_and_comes_back(mnist, tmp_path):
    from mnistlab.export_test import CONV_TAILS, CONV_ZOO, DENSE_HEAD

    zoo = [layer for layer in CONV_ZOO if layer["type"] != "elastic_distortion"]
    zoo[0] = {**zoo[0], "fill_mode": "constant"}  # the augmentations, as one resampling, share fill settings
    zoo[1] = {**zoo[1], "fill_mode": "constant"}
    zoo[2] = {**zoo[2], "fill_mode": "constant", "width_factor": 0.2}
    head = [{**DENSE_HEAD[2], "kernel_initializer": {"name": "random_normal", "stddev": 0.1},
             "kernel_regularizer": {"l1": 0.001, "l2": 0.01}, "kernel_constraint": 3.0},
            *DENSE_HEAD[3:], {"type": "activation", "activation": "softmax"}]
    spec = spec_lib.from_dict({"name": "zoo", "model": {"input_rescale": 0.5 / 255, "layers": [
        *zoo, *CONV_TAILS["global_average_pooling2d"], *DENSE_HEAD[:2], *head]},
        "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True,
                      "schedule": {"name": "cosine", "decay_steps": 100, "warmup_steps": 10, "alpha": 0.1}}})
    rng = np.random.default_rng(0)
    # Every weight away from its initial value (moving variances kept positive).
    params = {k: v + np.abs(rng.normal(0, 0.2, v.shape)).astype(np.float32) if k.endswith("variance")
              else v + rng.normal(0, 0.2, v.shape).astype(np.float32)
              for k, v in model.init(spec.model, 1, (28, 28)).items()}
    out = tmp_path / "zoo.keras"
    keras_io.save(spec, params, out)
    net = keras.saving.load_model(out)
    images = mnist.test_images[:1000]
    expected = np.asarray(model.probabilities(spec.model, params, images))
    assert np.abs(net.predict(images, verbose=0) - expected).max() <= 1e-5
    back, got = keras_io.from_keras(net)
    assert back.model == spec.model and back.optimizer == spec.optimizer
    assert all(np.array_equal(got[k], params[k]) for k in params) and set(got) == set(params)


MIXED = {"name": "mixed", "model": {"dtype_policy": "mixed_bfloat16", "layers": [
    {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same"},
    {"type": "batch_normalization"}, {"type": "activation", "activation": "relu"},
    {"type": "max_pooling2d", "pool_size": 2}, {"type": "flatten"},
    {"type": "dense", "units": 64, "activation": "relu"}, {"type": "dropout", "rate": 0.5},
    {"type": "dense", "units": 10, "activation": "softmax"}]}}


def test_a_mixed_bfloat16_model_goes_out_under_keras_policy_and_comes_back(mnist):
    spec = spec_lib.from_dict(MIXED)
    single = spec_lib.with_values(spec, {"model.dtype_policy": "float32"})
    rng = np.random.default_rng(0)
    params = {k: v + np.abs(rng.normal(0, 0.2, v.shape)).astype(np.float32) if k.endswith("variance")
              else v + rng.normal(0, 0.2, v.shape).astype(np.float32)
              for k, v in model.init(spec.model, 1, (28, 28)).items()}
    net = keras_io.to_keras(spec, params)
    assert {net.get_layer(name).dtype_policy.name for name in model.layer_names(spec.model)} == {"mixed_bfloat16"}
    assert {v.dtype for v in net.weights} == {"float32"}  # Keras' variables stay float32 too
    images = mnist.test_images[:1000]
    theirs, theirs_single = net.predict(images, verbose=0), keras_io.to_keras(single, params).predict(images, verbose=0)
    assert theirs.dtype == "bfloat16"  # Keras computes it all in bfloat16, its softmax too
    ours = np.asarray(model.probabilities(spec.model, params, images))
    # The two compute in bfloat16 with roundings in other places (Keras' softmax in bfloat16,
    # XLA's convolution against mnistlab's patch products), so they agree as closely as
    # bfloat16 lets Keras agree with itself in float32, and on 99% of the classes at least.
    own_spread = np.abs(theirs.astype(np.float32) - theirs_single).max()
    print(f"mixed_bfloat16: |mnistlab - Keras| <= {np.abs(ours - theirs).max():.4f}, Keras' own bfloat16 vs "
          f"float32 {own_spread:.4f}")
    assert 1e-3 < np.abs(ours - theirs.astype(np.float32)).max() <= 2 * own_spread
    assert np.mean(ours.argmax(1) == theirs.argmax(1)) >= 0.99
    back, _ = keras_io.from_keras(net)
    assert back.model == spec.model


def test_a_keras_model_under_another_or_a_divided_dtype_policy_is_refused_naming_it():
    def net(*policies):
        return keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(dtype=policies[0]),
                                 keras.layers.Dense(8, dtype=policies[1], name="hidden"),
                                 keras.layers.Dense(10, dtype=policies[2], name="out"),
                                 keras.layers.Activation("softmax", dtype=policies[3], name="last")])
    with pytest.raises(UserError, match="layer 'hidden': dtype = 'mixed_float16': mnistlab computes under "
                                        "float32 or mixed_bfloat16"):
        keras_io.from_keras(net("float32", "mixed_float16", "mixed_float16", "float32"))
    with pytest.raises(UserError, match="different dtype policies \\('hidden' float32, 'out' mixed_bfloat16\\)"):
        keras_io.from_keras(net("float32", "float32", "mixed_bfloat16", "float32"))
    # Layers without weights may stay in float32, as Keras' guide has the output's softmax.
    spec, _ = keras_io.from_keras(net("float32", "mixed_bfloat16", "mixed_bfloat16", "float32"))
    assert spec.model.dtype_policy == "mixed_bfloat16"


@pytest.mark.parametrize("optimizer", [
    {"name": "adam", "amsgrad": True, "schedule": {"name": "exponential", "decay_steps": 10, "decay_rate": 0.5}},
    {"name": "adamw", "weight_decay": 0.01, "schedule": {"name": "step", "decay_steps": 5}},
    {"name": "rmsprop", "momentum": 0.5, "schedule": {"name": "inverse_time", "decay_steps": 3, "decay_rate": 0.1}},
    {"name": "adagrad", "initial_accumulator_value": 0.2},
])
def test_every_optimizer_and_schedule_goes_out_and_comes_back(optimizer):
    spec = spec_lib.from_dict({"model": {"layers": [{"type": "dense", "units": 10, "activation": "softmax"}]},
                               "optimizer": optimizer})
    back, _ = keras_io.from_keras(keras_io.to_keras(spec, model.init(spec.model, 0, (28, 28))))
    if spec.optimizer.schedule.name == "step":  # mnistlab's name for Keras' staircase ExponentialDecay
        spec = spec_lib.with_values(spec, {"optimizer.schedule.name": "exponential",
                                           "optimizer.schedule.staircase": True})
    assert back.optimizer == spec.optimizer


def test_what_keras_cannot_express_is_refused_naming_it():
    dense = {"type": "dense", "units": 10, "activation": "softmax"}
    cases = [
        ({"layers": [{"type": "elastic_distortion", "alpha": 2.0, "sigma": 3.0}, {"type": "flatten"}, dense]}, {},
         "layer 'elastic_distortion' (elastic_distortion): Keras has no such layer"),
        ({"layers": [dense]}, {"decay": 0.01, "schedule": {"name": "cosine", "decay_steps": 10}},
         "optimizer.decay = 0.01 with schedule 'cosine' has no Keras equivalent"),
        ({"layers": [dense]}, {"schedule": {"name": "exponential", "warmup_steps": 10}},
         "a warm-up before schedule 'exponential' has no Keras equivalent"),
    ]
    for model_table, optimizer, message in cases:
        spec = spec_lib.from_dict({"model": model_table, "optimizer": optimizer})
        with pytest.raises(UserError, match=re.escape(message)):
            keras_io.to_keras(spec, model.init(spec.model, 0, (28, 28)))


# ------------------------------------------------------------------ Keras' own MNIST example comes in


def mnist_convnet():
    """Keras' examples/vision/mnist_convnet.py, as written there (pixels scaled outside: x / 255)."""
    layers = keras.layers
    net = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(10, activation="softmax"),
    ])
    net.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return net


@pytest.mark.slow
def test_keras_mnist_convnet_comes_in_and_predicts_what_keras_predicts(mnist, tmp_path, capsys, monkeypatch):
    net = mnist_convnet()
    x = mnist.train_images[:1024, :, :, None].astype("float32") / 255
    net.fit(x, keras.utils.to_categorical(mnist.train_labels[:1024], 10), batch_size=128, epochs=1, verbose=0)
    net.save(tmp_path / "mnist_convnet.keras")
    code, stdout, err = run_cli(["import", tmp_path / "mnist_convnet.keras", "--runs-dir", tmp_path / "runs"],
                                capsys, monkeypatch)
    assert code == 0, err
    run = runs.open_run(stdout.split("wrote ", 1)[1].strip())
    assert run.spec.name == "mnist_convnet" and run.spec.optimizer.name == "adam"
    assert [layer.type for layer in run.spec.model.layers] == [
        "conv2d", "max_pooling2d", "conv2d", "max_pooling2d", "flatten", "dropout", "dense"]
    assert run.spec.model.input_rescale == 1 / 255  # Keras' example scales outside the model
    images = mnist.test_images  # all 10,000
    expected = net.predict(images[:, :, :, None].astype("float32") / 255, batch_size=1000, verbose=0)
    got = np.asarray(model.probabilities(run.spec.model, run.params(), images))
    assert np.abs(got - expected).max() <= 1e-5


# ------------------------------------------------------------------ bad files


def saved_lstm(path):
    net = keras.Sequential([keras.Input((28, 28)), keras.layers.LSTM(8, name="lstm"),
                            keras.layers.Dense(10, activation="softmax")])
    net.save(path)
    return path


def test_bad_files_are_refused_naming_what_is_wrong_and_write_nothing(tmp_path, capsys, monkeypatch):
    (tmp_path / "notes.keras").write_text("not a model, a text file renamed")
    good = tmp_path / "good.keras"
    spec = spec_lib.from_dict({"model": {"layers": [{"type": "dense", "units": 10, "activation": "softmax"}]}})
    keras_io.save(spec, model.init(spec.model, 0, (28, 28)), good)
    (tmp_path / "cut.keras").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "notes.h5").write_text("not HDF5 either")
    # A whole zip archive whose weights file inside is cut short.
    with zipfile.ZipFile(good) as whole, zipfile.ZipFile(tmp_path / "cut-inside.keras", "w") as cut:
        for item in whole.infolist():
            content = whole.read(item)
            cut.writestr(item, content[: len(content) // 2] if item.filename.endswith(".h5") else content)
    # Named: Keras numbers its automatic names across the whole process.
    gru = keras.Sequential([keras.Input((28, 28)), keras.layers.GRU(4, name="gru"),
                            keras.layers.Dense(10, activation="softmax")])
    gru.save(tmp_path / "gru.keras")
    dilated = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, dilation_rate=2, name="conv2d"),
                                keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    dilated.save(tmp_path / "dilated.keras")
    cases = [
        ("notes.keras", "notes.keras: not a Keras model: a .keras file is a zip archive, and this is not one"),
        ("cut.keras", "cut.keras: not a Keras model: a .keras file is a zip archive"),
        ("cut-inside.keras", "cut-inside.keras: not a Keras model that Keras"),
        ("notes.h5", "notes.h5: not a Keras model that Keras"),
        ("lstm.keras", "layer 'lstm' (LSTM): mnistlab has no LSTM layer, so the model cannot be imported"),
        ("gru.keras", "layer 'gru' (GRU): mnistlab has no GRU layer"),
        ("dilated.keras", "layer 'conv2d' (Conv2D): dilation_rate = (2, 2): mnistlab computes only "
                          "dilation_rate = (1, 1)"),
        ("missing.keras", "missing.keras: no such file"),
        ("model.onnx", "give a Keras model file, model.keras (or model.h5)"),
    ]
    saved_lstm(tmp_path / "lstm.keras")
    for name, message in cases:
        with pytest.raises(UserError) as err:
            keras_io.import_run(tmp_path / name, tmp_path / "runs")
        assert message in str(err.value), str(err.value)
        code, _, stderr = run_cli(["import", tmp_path / name, "--runs-dir", tmp_path / "runs"], capsys, monkeypatch)
        assert code == 2 and name in stderr, stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert zipfile.is_zipfile(good)  # the truncated file was cut from a good one


def test_a_model_mnistlab_cannot_train_as_it_is_says_why():
    layers = keras.layers
    nets = {
        "activity_regularizer = 'L2'": keras.Sequential([keras.Input((784,)), layers.Dense(
            10, activation="softmax", activity_regularizer="l2")]),
        "the last activation must be 'softmax'": keras.Sequential([keras.Input((784,)), layers.Dense(10)]),
        "takes inputs of shape (32,)": keras.Sequential([keras.Input((32,)), layers.Dense(10, activation="softmax")]),
        "layer 'dense' (Dense) gives (28, 10) per sample in Keras, where mnistlab's computes (10,)":
            keras.Sequential([keras.Input((28, 28)), layers.Dense(10, activation="softmax", name="dense")]),
        "kernel_initializer: initializer = 'Orthogonal': mnistlab has glorot_normal,": keras.Sequential([
            keras.Input((784,)), layers.Dense(10, activation="softmax", kernel_initializer="orthogonal")]),
        "mnistlab draws from a range symmetric about 0": keras.Sequential([
            keras.Input((28, 28, 1)), layers.RandomRotation((-0.1, 0.2)), layers.Flatten(),
            layers.Dense(10, activation="softmax")]),
    }
    for message, net in nets.items():
        with pytest.raises(UserError, match=re.escape(message)):
            keras_io.from_keras(net)
    net = keras.Sequential([keras.Input((784,)), layers.Dense(10, activation="softmax")])
    net.compile(optimizer=keras.optimizers.Nadam(), loss="sparse_categorical_crossentropy")
    with pytest.raises(UserError, match="optimizer: class = 'Nadam'"):
        keras_io.from_keras(net)
    net.compile(optimizer="adam", loss="mse")
    with pytest.raises(UserError, match="loss: loss = 'mse'"):
        keras_io.from_keras(net)


# ------------------------------------------------------------------ training: Keras' numbers


def train_mnistlab(spec, params, images, labels):
    """mnistlab's compiled step, driven batch by batch over `images` in order, as the engine's
    epoch does it; (weights, the epoch's loss and accuracy as Keras reports them)."""
    step = jax.jit(engine.make_step(spec))
    hyper = {k: jnp.float32(v) for k, v in engine.numbers(spec).items()}
    opt_hyper = {k.removeprefix("optimizer."): v for k, v in hyper.items() if k.startswith("optimizer.")}
    params = {k: jnp.asarray(v) for k, v in params.items()}
    trainable, _ = model.split_statistics(params)
    state = engine.State(params, optim.build(spec.optimizer, opt_hyper).init(trainable), jnp.int32(0),
                         model.penalty(spec.model, params, hyper))
    b = spec.training.batch_size
    loss_sum, correct = 0.0, 0
    for start in range(0, len(labels), b):
        x, y = images[start:start + b], labels[start:start + b].astype(np.int32)
        state, (loss, hits) = step(state, hyper, x, y, jnp.ones(len(y), bool), jax.random.PRNGKey(0))
        loss_sum, correct = loss_sum + float(loss) * len(y), correct + int(hits.sum())
    return {k: np.asarray(v) for k, v in state.params.items()}, loss_sum / len(labels), correct / len(labels)


SEED_NETWORK = spec_lib.preset("seed").model.model_dump(mode="json", exclude_unset=True)  # l2(0.01) on both kernels
AGREEMENT: dict[str, float] = {}  # case -> max |Keras - mnistlab| / max distance moved, over the tensors


def train_both(mnist, case, optimizer, steps, change):
    """The seed network (its dense layers changed by `change`) trained `steps` batches of 32
    in order from the same weights, by mnistlab and by Keras' `fit(shuffle=False)`:
    (mnistlab's weights, Keras', the start, mnistlab's (loss, accuracy), Keras' history)."""
    layers = [{**layer, **change} if layer["type"] == "dense" else layer for layer in SEED_NETWORK["layers"]]
    spec = spec_lib.from_dict({"name": case, "model": {**SEED_NETWORK, "layers": layers}, "optimizer": optimizer,
                               "training": {"batch_size": 32, "shuffle": False}})
    start = model.init(spec.model, 0, (28, 28))
    n = steps * spec.training.batch_size
    images, labels = mnist.train_images[:n], mnist.train_labels[:n]
    mine, loss, accuracy = train_mnistlab(spec, start, images, labels)
    net = keras_io.to_keras(spec, start)
    history = net.fit(images.astype(np.float32), labels, batch_size=spec.training.batch_size, epochs=1,
                      shuffle=False, verbose=0).history
    return mine, keras_weights(net, spec), start, (loss, accuracy), history


NESTEROV = {"name": "sgd", "momentum": 0.9, "nesterov": True}


@pytest.mark.slow
@pytest.mark.parametrize("case, optimizer, steps, change", [
    ("adam", {"name": "adam"}, 10, {}),
    ("sgd-nesterov", NESTEROV, 50, {}),
    ("rmsprop", {"name": "rmsprop"}, 10, {}),
    ("adagrad", {"name": "adagrad", "learning_rate": 0.01}, 10, {}),
    ("adamw", {"name": "adamw", "weight_decay": 0.05}, 10, {}),
    # L1 and max-norm without l2 under SGD: see the Adam test below for why not under Adam.
    ("l1", NESTEROV, 50, {"kernel_regularizer": {"l1": 0.001}}),
    ("max-norm", NESTEROV, 50, {"kernel_regularizer": None, "kernel_constraint": 0.5}),
    ("decay", {"name": "adam", "decay": 0.1}, 10, {}),
])
def test_keras_trains_to_the_same_weights_loss_and_accuracy(mnist, case, optimizer, steps, change):
    mine, theirs, start, (loss, accuracy), history = train_both(mnist, case, optimizer, steps, change)
    ratios = {}
    for name, w in mine.items():
        moved = np.abs(w - start[name]).max()
        assert moved > 0, name
        ratios[name] = np.abs(theirs[name] - w).max() / moved
    AGREEMENT[case] = max(ratios.values())
    print(f"\n{case}: max |Keras - mnistlab| / distance moved = {AGREEMENT[case]:.2e} ({steps} steps); "
          f"loss {history['loss'][0]:.6f} vs {loss:.6f}, accuracy {history['accuracy'][0]:.4f} vs {accuracy:.4f}")
    assert AGREEMENT[case] <= 1e-3, ratios
    # Keras' epoch loss is the running mean of its batches' losses, penalty included, as mnistlab's.
    assert abs(history["loss"][0] - loss) <= 1e-4
    assert abs(history["accuracy"][0] - accuracy) <= 1e-4


@pytest.mark.slow
def test_mnistlab_train_unshuffled_reports_and_ends_where_keras_fit_does(mnist, tmp_path):
    """The whole engine (mnistlab.train, its compiled epoch and its History), not a step loop."""
    spec = spec_lib.from_dict({"name": "seed", "model": SEED_NETWORK, "training": {
        "epochs": 1, "batch_size": 32, "shuffle": False, "subset": 320}})
    result = mnistlab.train(spec, arrays=mnist, runs_dir=tmp_path)
    net = keras_io.to_keras(spec, model.init(spec.model, spec.training.seed, (28, 28)))
    history = net.fit(mnist.train_images[:320].astype(np.float32), mnist.train_labels[:320], batch_size=32,
                      shuffle=False, verbose=0).history
    assert abs(history["loss"][0] - result.history[0]["loss"]) <= 1e-4
    assert abs(history["accuracy"][0] - result.history[0]["accuracy"]) <= 1e-4
    mine, theirs = runs.open_run(result.run_dir).params(), keras_weights(net, spec)
    start = model.init(spec.model, spec.training.seed, (28, 28))
    assert all(np.abs(theirs[k] - w).max() <= 1e-3 * np.abs(w - start[k]).max() for k, w in mine.items())


def test_a_legacy_h5_file_comes_in_too(mnist, tmp_path):
    net = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(
        32, activation="relu", kernel_regularizer="l2"), keras.layers.Dense(10, activation="softmax")], name="mlp")
    net.compile(optimizer=keras.optimizers.RMSprop(0.002), loss="sparse_categorical_crossentropy")
    net.save(tmp_path / "mlp.h5")  # Keras' older HDF5 format
    run = runs.open_run(keras_io.import_run(tmp_path / "mlp.h5", tmp_path / "runs"))
    assert run.spec.name == "mlp" and run.spec.optimizer.name == "rmsprop" and run.spec.optimizer.learning_rate == 0.002
    assert run.spec.model.layers[1].kernel_regularizer == spec_lib.Regularizer(l2=0.01)
    images = mnist.test_images[:1000]
    expected = net.predict(images.astype(np.float32) / 255, verbose=0)
    assert np.abs(np.asarray(model.probabilities(run.spec.model, run.params(), images)) - expected).max() <= 1e-5
    assert "no Rescaling layer" in run.summary["input_scaling"]
    other = keras_io.import_run(tmp_path / "mlp.h5", tmp_path / "runs", dataset="fashion-mnist")
    assert runs.open_run(other).spec.dataset == "fashion-mnist"
    with pytest.raises(UserError, match="Unknown dataset 'fashoin'"):
        keras_io.import_run(tmp_path / "mlp.h5", tmp_path / "runs", dataset="fashoin")


@pytest.mark.slow
@pytest.mark.parametrize("case, change", [
    ("l1-adam", {"kernel_regularizer": {"l1": 0.001}}),
    ("max-norm-adam", {"kernel_regularizer": None, "kernel_constraint": 0.5}),
    ("max-norm-l2-adam", {"kernel_constraint": 0.5}),  # l2 on the kernels; the biases have none
])
def test_adam_without_the_l2_floor_agrees_but_for_a_few_weights_it_amplifies_rounding_on(mnist, case, change):
    """Adam divides each gradient by its own running size. Without l2's 2 * 0.01 * w in every
    gradient, some weights' gradients are near zero (pixels that are rarely lit, units the
    ReLU turns off for most of a batch, and the unpenalized biases); there float32 rounding
    differences between Keras' arithmetic and mnistlab's become steps of up to the learning
    rate, and L1's sign(w) turns a weight that lands next to zero into a full step either
    way. Measured over 10 steps, weights of the 795,010 that differ by more than 1e-3 of the
    distance moved: L1 3, max-norm 359, max-norm with l2 40 (by at most 4.3e-3). The formulas agree
    (the SGD cases above, to 5e-7), and so do all other weights here."""
    mine, theirs, start, (loss, accuracy), history = train_both(mnist, case, {"name": "adam"}, 10, change)
    outside = sum(int((np.abs(theirs[k] - w) > 1e-3 * np.abs(w - start[k]).max()).sum()) for k, w in mine.items())
    total = sum(w.size for w in mine.values())
    AGREEMENT[case] = max(np.abs(theirs[k] - w).max() / np.abs(w - start[k]).max() for k, w in mine.items())
    print(f"\n{case}: {outside} of {total} weights differ by more than 1e-3 of the distance moved; "
          f"max {AGREEMENT[case]:.2e}; loss {history['loss'][0]:.6f} vs {loss:.6f}")
    assert outside <= 1e-3 * total
    assert abs(history["loss"][0] - loss) <= 1e-4 and abs(history["accuracy"][0] - accuracy) <= 1e-4


def test_where_mnistlab_differs_on_purpose_the_loss_of_a_confident_mistake():
    """mnistlab takes the cross-entropy from the logits; Keras' from the softmax's
    probabilities clipped to [1e-7, 1 - 1e-7]. Equal wherever no probability is below 1e-7
    (the training test above); for a confident mistake Keras' loss stops at -log(1e-7) = 16.12,
    mnistlab's goes on (here 40), and so does its gradient."""
    logits = np.array([[40.0, 0.0, 0.0]], np.float32)
    label = np.array([1])
    mine = float(optax_loss(logits, label))
    theirs = float(keras.losses.sparse_categorical_crossentropy(label, keras.ops.softmax(logits))[0])
    assert mine == pytest.approx(40.0, abs=1e-5)
    assert theirs == pytest.approx(-np.log(1e-7), abs=1e-3)
    assert mine - theirs == pytest.approx(40 + np.log(1e-7), abs=1e-3)  # 23.88: the measured difference


def optax_loss(logits, labels):
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), jnp.asarray(labels))[0]


def test_the_keras_backend_is_jax_unless_chosen():
    assert keras.backend.backend() == "jax"  # KERAS_BACKEND unset in the test environment
