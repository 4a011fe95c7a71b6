"""Prediction from a real trained run: the Predictor, and `mnistlab predict` on real files.

The trained run and the MNIST arrays are made once per test session and shared with
serve_test and export_test (they import the fixtures from here).
"""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mnistlab
from mnistlab import cli, data, imaging, model, novelty, runs
from mnistlab.predict import Predictor

_SHARED: dict = {}  # one training per session, whichever test module asks first


@pytest.fixture(scope="session")
def mnist(mnist_root) -> data.Arrays:
    if "mnist" not in _SHARED:
        _SHARED["mnist"] = data.load("mnist", mnist_root)
    return _SHARED["mnist"]


@pytest.fixture(scope="session")
def trained_run(mnist, tmp_path_factory) -> Path:
    """A small real network (784-256-10, 2 epochs on 10,000 images: ~93% test accuracy)."""
    if "run" not in _SHARED:
        spec = mnistlab.with_overrides(mnistlab.preset("fast"), ["training.subset=10000", "training.epochs=2"])
        result = mnistlab.train(spec, arrays=mnist, runs_dir=tmp_path_factory.mktemp("runs"), test=True)
        assert result.summary["test"]["accuracy"] >= 0.9
        _SHARED["run"] = result.run_dir
    return _SHARED["run"]


# A small convolutional network with every weight kind a conv run saves (kernels, biases,
# batch normalization's gamma, beta and moving statistics).
CONV_SPEC = {
    "name": "small-cnn",
    "model": {"layers": [
        {"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"},      # 26x26x8
        {"type": "batch_normalization"},
        {"type": "max_pooling2d", "pool_size": 2},                                     # 13x13x8
        {"type": "conv2d", "filters": 16, "kernel_size": 3, "strides": 2, "padding": "same",
         "activation": "relu"},                                                        # 7x7x16
        {"type": "flatten"},                                                           # 784
        {"type": "dropout", "rate": 0.25},
        {"type": "dense", "units": 10, "activation": "softmax"},
    ]},
    "optimizer": {"name": "adam", "learning_rate": 0.003},
    "training": {"epochs": 1, "subset": 3000, "batch_size": 32},
}
# Its weights counted by hand: conv 3*3*1*8 + 8, batch normalization 4 * 8,
# conv 3*3*8*16 + 16, dense 784*10 + 10.
CONV_PARAMETERS = 80 + 32 + 1168 + 7850


@pytest.fixture(scope="session")
def trained_conv_run(mnist, tmp_path_factory) -> Path:
    """CONV_SPEC trained for 1 epoch on 3,000 images (86% test accuracy)."""
    if "conv_run" not in _SHARED:
        result = mnistlab.train(mnistlab.spec.from_dict(CONV_SPEC), arrays=mnist,
                                runs_dir=tmp_path_factory.mktemp("conv_runs"))
        assert result.status == "completed"
        _SHARED["conv_run"] = result.run_dir
    return _SHARED["conv_run"]


@pytest.fixture(scope="session")
def validated_run(mnist, tmp_path_factory) -> Path:
    """The fast preset as it is (784-256-10, 5 epochs: ~98% test accuracy) with Keras'
    validation_split=0.1: its summary carries a calibration and a novelty fit (~5 s)."""
    if "validated_run" not in _SHARED:
        spec = mnistlab.with_overrides(mnistlab.preset("fast"), ["training.validation_split=0.1"])
        result = mnistlab.train(spec, arrays=mnist, runs_dir=tmp_path_factory.mktemp("validated_runs"),
                                test=True, verbose=0)
        assert result.summary["test"]["accuracy"] >= 0.97
        _SHARED["validated_run"] = result.run_dir
    return _SHARED["validated_run"]


def first_face_flagged(predictor: Predictor) -> tuple[np.ndarray, str]:
    """The first of `novelty.pictures("face")` that `predictor` flags, and why."""
    for face in novelty.pictures("face", 10):
        pixels = imaging.load(imaging.to_png(face))
        probs, logits = predictor.outputs(pixels[None])
        reason = predictor.assess(probs[0], image=pixels, logits=logits[0])["not_a_digit_reason"]
        if reason:
            return face, reason
    raise AssertionError("none of 10 faces flagged (bench/nondigits.py measured 99%)")


@pytest.fixture(scope="module")
def predictor(trained_run) -> Predictor:
    return Predictor.from_run(trained_run)


def run_cli(args: list[str], capsys, monkeypatch, stdin: bytes | None = None) -> tuple[int, str, str]:
    """`mnistlab ARGS` through the real entry point (cli.main), in this process."""
    monkeypatch.setattr(sys, "argv", ["mnistlab", *map(str, args)])
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    captured = capsys.readouterr()
    return exit_.value.code or 0, captured.out, captured.err


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray) -> list[Path]:
    folder.mkdir(exist_ok=True)
    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        path = folder / f"{i:05d}_{label}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------ Predictor


def test_predictor_matches_the_model_and_is_independent_of_batching(predictor, trained_run, mnist):
    run = runs.open_run(trained_run)
    images = mnist.test_images[:300]
    expected = np.asarray(model.probabilities(run.spec.model, run.params(), images))
    got = predictor.probabilities(images)  # 256 + a chunk of 44 padded to 64
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    small = Predictor(run.spec, run.params(), max_batch=4)
    np.testing.assert_allclose(small.probabilities(images[:11]), expected[:11], atol=1e-6)
    one = np.stack([predictor.probabilities(images[i:i + 1])[0] for i in range(5)])
    np.testing.assert_allclose(one, expected[:5], atol=1e-6)
    accuracy = (got.argmax(1) == mnist.test_labels[:300]).mean()
    assert accuracy >= 0.88


def calibrated(run_dir: Path, tmp_path: Path, **calibration) -> Path:
    """A copy of a run whose summary carries the calibration given (as training records it)."""
    copy = tmp_path / f"calibrated-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(run_dir, copy)
    summary = json.loads((copy / runs.SUMMARY).read_text())
    (copy / runs.SUMMARY).write_text(json.dumps({**summary, "calibration": calibration}))
    return copy


def test_a_calibrated_run_scales_its_logits_and_flags_what_falls_under_its_threshold(trained_run, mnist, tmp_path):
    run = runs.open_run(trained_run)
    images = mnist.test_images[:200]
    z = np.asarray(model.logits(run.spec.model, run.params(), {}, images), np.float64)
    scaled = np.exp(z / 2.5 - z.max(axis=1, keepdims=True) / 2.5)
    scaled /= scaled.sum(axis=1, keepdims=True)  # softmax(z / T) by hand
    threshold = float(np.median(scaled.max(axis=1)))  # half the answers fall under it
    p = Predictor.from_run(calibrated(trained_run, tmp_path, temperature=2.5, unsure_below=threshold))
    probs = p.probabilities(images)
    np.testing.assert_allclose(probs, scaled, atol=1e-6)
    assert (probs.argmax(axis=1) == z.argmax(axis=1)).all()  # scaling changes no answer
    for row in probs[:40]:
        sure = p.assess(row)
        second = int(np.argsort(-row, kind="stable")[1])
        assert sure["calibrated"] and sure["confidence"] == pytest.approx(row.max())
        assert sure["unsure"] == (row.max() < threshold)
        assert sure["runner_up"] == {"class": second, "label": str(second), "probability": pytest.approx(row[second])}
    # A calibration from before the novelty fit: the input is not checked (None), as in such runs.
    assert {p.assess(probs[0], image=images[0], logits=z[0].astype(np.float32))[k]
            for k in ("not_a_digit", "not_a_digit_reason")} == {None}
    uncalibrated = Predictor(run.spec, run.params())  # a run from before calibration: no flag, as trained
    np.testing.assert_allclose(uncalibrated.probabilities(images[:5]),
                               np.asarray(model.probabilities(run.spec.model, run.params(), images[:5])), atol=1e-6)
    assert uncalibrated.assess(probs[0])["unsure"] is None and not uncalibrated.assess(probs[0])["calibrated"]


def test_predict_names_the_runner_up_of_an_unsure_answer(trained_run, mnist, tmp_path, capsys, monkeypatch):
    run_dir = calibrated(trained_run, tmp_path, temperature=1.0, unsure_below=1.01)  # nothing is sure
    (path,) = write_pngs(tmp_path / "png", mnist.test_images[:1], mnist.test_labels[:1])
    probs = Predictor.from_run(run_dir).probabilities(imaging.load(path.read_bytes(), name=path.name)[None])[0]
    first, second = np.argsort(-probs, kind="stable")[:2]
    code, out, _ = run_cli(["predict", run_dir, path], capsys, monkeypatch)
    assert code == 0 and out.rstrip().endswith(f"unsure: {first}? could be {second}")
    code, out, _ = run_cli(["predict", run_dir, path, "--json"], capsys, monkeypatch)
    shown = json.loads(out)
    assert (shown["unsure"], shown["calibrated"], shown["runner_up"]["class"]) == (True, True, second)
    assert shown["confidence"] == pytest.approx(float(probs.max()))


@pytest.mark.slow  # ~15 s: 300 pictures and 2,000 digits through decoding and preprocessing
def test_pictures_without_a_digit_are_flagged_and_test_digits_are_not(validated_run, mnist):
    predictor = Predictor.from_run(validated_run)
    fitted = predictor.summary["calibration"]["novelty"]  # recorded by training, on its validation split
    assert fitted["samples"] == 6000 and fitted["flagged_share"] <= 1 - novelty.PASS

    def not_given_a_digit(pictures: list[np.ndarray]) -> float:
        """The share refused as blank (ImageError) or flagged as not a digit, as `predict` does it."""
        prepared = []
        for grey in pictures:
            try:
                prepared.append(imaging.load(imaging.to_png(grey)))
            except imaging.ImageError:
                continue
        images = np.stack(prepared) if prepared else np.zeros((0, 28, 28), np.uint8)
        probs, logits = predictor.outputs(images)
        flags = [predictor.assess(p, image=x, logits=z)["not_a_digit"] for p, x, z in zip(probs, images, logits)]
        assert all(f in (True, False) for f in flags)
        return (len(pictures) - len(prepared) + sum(flags)) / len(pictures)

    shares = {kind: not_given_a_digit(novelty.pictures(kind, 50)) for kind in novelty.KINDS}
    # Measured here (seeds 0, 1, 2): face 86, 74, 74%; scribble 40-44%; noise 100%; texture
    # 82-96%; shape 86-88%; hatch 94-98%; all kinds 81-83%. A scribble is often a fair digit.
    assert min(shares[k] for k in ("face", "texture", "shape")) >= 0.7, shares
    assert min(shares["noise"], shares["hatch"]) >= 0.85 and shares["scribble"] >= 0.25, shares
    assert np.mean(list(shares.values())) >= 0.75, shares
    # Real digits pass: MNIST test digits as PNG files, preprocessed as an upload is (0.35% measured).
    assert not_given_a_digit(list(mnist.test_images[:2000])) <= 0.02


def test_predict_says_what_is_not_a_digit(validated_run, mnist, tmp_path, capsys, monkeypatch):
    predictor = Predictor.from_run(validated_run)
    face, reason = first_face_flagged(predictor)
    Image.fromarray(face).save(tmp_path / "a-face.png")
    Image.fromarray(mnist.test_images[0]).save(tmp_path / "b-digit.png")  # a 7, not flagged
    code, out, _ = run_cli(["predict", validated_run, tmp_path, "--json"], capsys, monkeypatch)
    face_row, digit_row = map(json.loads, out.splitlines())
    assert code == 0 and (face_row["not_a_digit"], face_row["not_a_digit_reason"]) == (True, reason)
    assert (digit_row["not_a_digit"], digit_row["not_a_digit_reason"], digit_row["class"]) == (False, None, 7)
    code, out, _ = run_cli(["predict", validated_run, tmp_path], capsys, monkeypatch)
    face_line, digit_line = out.splitlines()
    assert face_line.endswith(f"  - not a digit? ({reason})") and "not a digit" not in digit_line


def test_warm_up_compiles_each_bucket_once(trained_run, monkeypatch):
    traced = []  # Python code in a jitted function runs once per trace, i.e. per compilation
    real = model.probabilities
    monkeypatch.setattr(model, "probabilities",
                        lambda spec, params, x, *rest: traced.append(x.shape[0]) or real(spec, params, x, *rest))
    p = Predictor.from_run(trained_run, max_batch=8)
    assert p.buckets() == [1, 2, 4, 8]
    p.warm_up()
    assert traced == [1, 2, 4, 8]
    p.probabilities(np.zeros((3, 28, 28), np.uint8))
    p.probabilities(np.zeros((20, 28, 28), np.uint8))
    assert traced == [1, 2, 4, 8]  # 3 -> 4, 20 -> 8 + 8 + 4: nothing new compiled


def test_bad_arrays_and_batch_sizes_are_refused(predictor, trained_run):
    with pytest.raises(ValueError, match=r"expected \(N, 28, 28\) uint8"):
        predictor.probabilities(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(ValueError, match="power of two"):
        Predictor.from_run(trained_run, max_batch=48)


def test_top_and_description(predictor, trained_run):
    assert Predictor.top(np.array([0.1, 0.5, 0.1, 0.3]), 3) == [(1, 0.5), (3, 0.3), (0, 0.1)]
    d = predictor.description()
    assert d["dataset"] == "mnist" and d["classes"] == [str(k) for k in range(10)]
    assert [l["units"] for l in d["layers"] if l["type"] == "dense"] == [256, 10]
    assert d["parameters"] == 784 * 256 + 256 + 256 * 10 + 10
    assert d["test_accuracy"] >= 0.9 and d["input"]["shape"] == [28, 28]


def test_a_conv_run_predicts_what_its_network_computes(trained_conv_run, mnist):
    run = runs.open_run(trained_conv_run)
    params = run.params()
    assert params["batch_normalization/moving_variance"].min() != 1.0  # training moved the statistics
    images = mnist.test_images[:300]
    expected = np.asarray(model.probabilities(run.spec.model, params, images))
    p = Predictor.from_run(trained_conv_run, max_batch=8)
    p.warm_up()  # zero images of every bucket size go through the network
    got = p.probabilities(images)  # 37 full chunks of 8 and one of 4
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert (got.argmax(1) == mnist.test_labels[:300]).mean() >= 0.8


def test_a_conv_run_is_described_layer_by_layer(trained_conv_run):
    d = Predictor.from_run(trained_conv_run).description()
    assert [(l["name"], l["type"]) for l in d["layers"]] == [
        ("conv2d", "conv2d"), ("batch_normalization", "batch_normalization"), ("max_pooling2d", "max_pooling2d"),
        ("conv2d_1", "conv2d"), ("flatten", "flatten"), ("dropout", "dropout"), ("dense", "dense")]
    assert d["layers"][3] == {"name": "conv2d_1", "type": "conv2d", "filters": 16, "kernel_size": [3, 3],
                              "strides": [2, 2], "padding": "same", "activation": "relu"}
    assert d["layers"][2] == {"name": "max_pooling2d", "type": "max_pooling2d", "pool_size": [2, 2],
                              "strides": [2, 2], "padding": "valid"}
    assert d["parameters"] == CONV_PARAMETERS
    assert d["test_accuracy"] is None  # trained without a test evaluation
    json.dumps(d)  # served as JSON as it is


def test_mnistlab_predict_on_a_conv_run_gives_its_networks_numbers(trained_conv_run, mnist, tmp_path, capsys,
                                                                   monkeypatch):
    images, labels = mnist.test_images[:20], mnist.test_labels[:20]
    write_pngs(tmp_path, images, labels)
    code, out, err = run_cli(["predict", trained_conv_run, tmp_path, "--json", "--raw", "--top", "10"],
                             capsys, monkeypatch)
    assert code == 0, err
    got = np.array([json.loads(line)["probabilities"] for line in out.splitlines()], np.float32)
    run = runs.open_run(trained_conv_run)
    np.testing.assert_allclose(got, np.asarray(model.probabilities(run.spec.model, run.params(), images)), atol=1e-6)


# ------------------------------------------------------------------------ mnistlab predict


@pytest.fixture(scope="module")
def digits(mnist, tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """200 MNIST test digits written as PNG files."""
    folder = tmp_path_factory.mktemp("digits")
    images, labels = mnist.test_images[:200], mnist.test_labels[:200]
    write_pngs(folder, images, labels)
    return folder, images, labels


def test_predict_a_folder_of_pngs_keeps_mnist_accuracy(digits, predictor, capsys, monkeypatch, trained_run):
    folder, images, labels = digits
    code, out, err = run_cli(["predict", trained_run, folder, "--json"], capsys, monkeypatch)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["file"]).name for r in rows] == sorted(p.name for p in folder.iterdir())
    predicted = np.array([r["class"] for r in rows])
    accuracy_files = (predicted == labels).mean()
    accuracy_memory = (predictor.probabilities(images).argmax(1) == labels).mean()
    assert accuracy_files >= 0.85
    assert accuracy_files >= accuracy_memory - 0.03  # preprocessing an MNIST digit again costs little


def test_raw_predictions_equal_the_in_memory_model_output_exactly(digits, predictor, capsys, monkeypatch, trained_run):
    folder, images, _ = digits
    code, out, err = run_cli(["predict", trained_run, folder, "--json", "--raw", "--top", "10"], capsys, monkeypatch)
    assert code == 0, err
    from_files = np.array([json.loads(line)["probabilities"] for line in out.splitlines()], np.float32)
    np.testing.assert_array_equal(from_files, predictor.probabilities(images))


def test_text_output_shows_the_top_k(digits, capsys, monkeypatch, trained_run):
    folder, _, labels = digits
    files = sorted(folder.iterdir())[:3]
    code, out, _ = run_cli(["predict", trained_run, *files, "--top", "2"], capsys, monkeypatch)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3
    for path, line in zip(files, lines):
        name, _, rest = line.partition(": ")
        assert name == str(path)
        pairs = rest.split("  ")
        assert len(pairs) == 2
        probs = [float(pair.split(" (")[1].rstrip(")")) for pair in pairs]
        assert probs[0] >= probs[1] and 0 <= probs[1] <= 1
    code, out, _ = run_cli(["predict", trained_run, files[0], "--json", "--top", "50"], capsys, monkeypatch)
    assert len(json.loads(out)["top"]) == 10  # clamped to the number of classes


def test_any_size_and_colour_is_preprocessed_to_the_same_answer(mnist, predictor, tmp_path, capsys, monkeypatch, trained_run):
    # Confident test digits, drawn as a user would have them: big, dark on light, in
    # colour, as JPEG / BMP / GIF; each must get the label the network gives the original.
    probs = predictor.probabilities(mnist.test_images[:40])
    confident = [i for i in range(40) if probs[i].max() > 0.99][:4]
    files, expected = [], []
    for i, fmt in zip(confident, ["JPEG", "BMP", "GIF", "PNG"]):
        digit = mnist.test_images[i]
        big = Image.fromarray(255 - digit).resize((300, 240), Image.Resampling.BICUBIC)  # stretched too
        rgb = Image.merge("RGB", [big, big, big.point(lambda v: v // 2 + 100)])  # ink dark blue on yellow-white
        path = tmp_path / f"d{i}.{fmt.lower()}"
        rgb.save(path, format=fmt)
        files.append(path)
        expected.append(int(mnist.test_labels[i]))
    code, out, err = run_cli(["predict", trained_run, *files, "--json", "--top", "1"], capsys, monkeypatch)
    assert code == 0, err
    assert [json.loads(line)["class"] for line in out.splitlines()] == expected


def test_stdin_is_one_image(mnist, predictor, capsys, monkeypatch, trained_run):
    png = imaging.to_png(mnist.test_images[0])
    code, out, _ = run_cli(["predict", trained_run, "-", "--json", "--raw"], capsys, monkeypatch, stdin=png)
    assert code == 0
    row = json.loads(out)
    assert row["file"] == "<stdin>"
    assert row["class"] == int(predictor.probabilities(mnist.test_images[:1]).argmax())


def test_bad_files_fail_alone_and_the_exit_code_is_2(digits, tmp_path, capsys, monkeypatch, trained_run):
    folder, _, labels = digits
    good = sorted(folder.iterdir())[:2]
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes(good[0].read_bytes()[:70])
    Image.new("L", (64, 64), 255).save(tmp_path / "blank.png")
    bad = {"notes.png": "not an image", "empty.png": "the file is empty", "cut.png": "corrupt or truncated",
           "blank.png": "no digit found", "missing.png": "cannot read it"}
    args = [good[0], *[tmp_path / name for name in bad], good[1]]
    code, out, err = run_cli(["predict", trained_run, *args], capsys, monkeypatch)
    assert code == 2
    assert [line.split(":")[0] for line in out.splitlines()] == [str(good[0]), str(good[1])]
    for name, words in bad.items():
        line = next(l for l in err.splitlines() if f"{tmp_path / name}:" in l)
        assert words in line, line
    assert "5 of 7 images could not be used" in err

    code, out, err = run_cli(["predict", trained_run, *args, "--json"], capsys, monkeypatch)
    assert code == 2
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r.get("error") for r in rows] == [None, "not_image", "empty", "unreadable", "no_ink", "unreadable", None]


def test_bad_arguments_exit_2_with_the_fix(tmp_path, capsys, monkeypatch, trained_run):
    (tmp_path / "nothing").mkdir()
    code, _, err = run_cli(["predict", trained_run, tmp_path / "nothing"], capsys, monkeypatch)
    assert code == 2 and "holds no image files" in err
    code, _, err = run_cli(["predict", tmp_path, tmp_path / "x.png"], capsys, monkeypatch)
    assert code == 2 and "not a run folder" in err
    code, _, err = run_cli(["predict", trained_run, "-", "-"], capsys, monkeypatch, stdin=b"")
    assert code == 2 and "stdin" in err


@pytest.mark.slow  # a process
def test_the_installed_command_reads_stdin_and_exits_2_on_a_bad_file(mnist, trained_run, tmp_path):
    # Once through a real process: the console script, a pipe on stdin, the exit status.
    bad = tmp_path / "bad.gif"
    bad.write_bytes(b"GIF89a garbage")
    done = subprocess.run([sys.executable, "-m", "mnistlab", "predict", str(trained_run), "-", str(bad)],
                          input=imaging.to_png(255 - mnist.test_images[1]), capture_output=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 2
    assert done.stdout.decode().startswith(f"<stdin>: {mnist.test_labels[1]} (")
    assert f"{bad}: " in done.stderr.decode()
