"""robustness: each corruption does what its name says (checked on hand-made images against
numbers computed here), the measurement counts right, and a real run is measured through
the command line and its report."""

import json

import numpy as np
import pytest

from mnistlab import imaging, robustness
from mnistlab.predict_test import mnist, run_cli, trained_run  # noqa: F401 (fixtures)


def bar(width: int) -> np.ndarray:
    """One 28x28 image: a vertical bar `width` pixels wide, rows 4..23, full ink."""
    image = np.zeros((1, 28, 28), np.uint8)
    left = 14 - width // 2
    image[0, 4:24, left:left + width] = 255
    return image


def ink_width(image: np.ndarray) -> int:
    """How many columns of row 14 hold ink."""
    return int((image[0, 14] > 0).sum())


@pytest.mark.parametrize("severity, thin, thick", [(1, 2, 4), (2, 1, 5), (3, 1, 5)])
def test_stroke_families_make_a_3_pixel_bar_thinner_or_thicker(severity, thin, thick):
    # 2x2: one pixel on one side; the cross and 3x3: one pixel on each side.
    assert ink_width(robustness.corrupt("thin_strokes", bar(3), severity)) == thin
    assert ink_width(robustness.corrupt("thick_strokes", bar(3), severity)) == thick


def test_the_3x3_footprint_also_thins_the_bar_from_its_ends_and_the_cross_does_too():
    rows = lambda image: int((image[0, :, 14] > 0).sum())  # noqa: E731
    assert rows(bar(3)) == 20
    assert rows(robustness.corrupt("thin_strokes", bar(3), 2)) == 18
    assert rows(robustness.corrupt("thick_strokes", bar(3), 3)) == 22


@pytest.mark.parametrize("severity, sigma", [(1, 0.7), (2, 1.0), (3, 1.4)])
def test_blur_spreads_a_point_as_a_gaussian_of_its_sigma_with_the_peak_kept(severity, sigma):
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 14, 14] = 255
    out = robustness.corrupt("blur", image, severity).astype(float)
    assert out[0, 14, 14] == 255
    for d in (1, 2):
        assert out[0, 14, 14 + d] == pytest.approx(255 * np.exp(-d * d / (2 * sigma * sigma)), abs=0.5 + 255 * 0.01)


def test_low_resolution_keeps_only_what_side_x_side_pixels_hold():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 28, 28)).astype(np.uint8)
    # 14 a side: every 2x2 block is averaged, so a checkerboard of 1-pixel squares goes grey.
    checker = (np.indices((28, 28)).sum(0) % 2 * 255).astype(np.uint8)[None]
    assert np.all(np.abs(robustness.corrupt("low_resolution", checker, 1).astype(int) - 128) <= 1)
    # Blocks constant over 2x2 (pixel-replicated from 14x14) survive the round trip away
    # from the edges' interpolation, up to the bilinear upsampling's mixing of neighbours.
    small = rng.integers(0, 256, (14, 14))
    blocky = np.kron(small, np.ones((2, 2)))[None].astype(np.uint8)
    out = robustness.corrupt("low_resolution", blocky, 1).astype(float)
    assert np.corrcoef(out.ravel(), blocky.ravel().astype(float))[0, 1] > 0.8
    assert robustness.corrupt("low_resolution", image, 3).shape == (1, 28, 28)


def test_rotation_shear_moves_a_point_where_the_forward_map_sends_it():
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 13:16, 20:23] = 255  # a 3x3 blob at (14, 21): 7.5 px right of the centre 13.5
    severity, degrees = 2, 25
    out = robustness.corrupt("rotation_shear", image, severity, seed=3)
    # The signs drawn for this seed, family and severity (the module's stream).
    rng = np.random.default_rng([3, [f.name for f in robustness.FAMILIES].index("rotation_shear"), severity])
    theta = np.deg2rad(degrees) * rng.choice([-1.0, 1.0], 1)[0]
    shear = degrees / 100 * rng.choice([-1.0, 1.0], 1)[0]
    # Output pixel o reads input R(-theta)-then-unshear(o): the forward map is its inverse.
    read = np.array([[1, 0], [-shear, 1]]) @ np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    expected = np.linalg.solve(read, np.array([14 - 13.5, 21 - 13.5])) + 13.5
    mass = out[0].astype(float)
    got = np.array([mass.sum(1) @ np.arange(28), mass.sum(0) @ np.arange(28)]) / mass.sum()
    assert got == pytest.approx(expected, abs=0.3)


def test_jpeg_loses_more_at_lower_quality(mnist):  # noqa: F811
    images = mnist.test_images[:50]
    error = [np.abs(robustness.corrupt("jpeg", images, s).astype(int) - images).mean() for s in (1, 2, 3)]
    assert 0 < error[0] < error[1] < error[2]


@pytest.mark.parametrize("family", ["small_off_centre", "photo"])
def test_scene_families_come_back_through_the_mnist_preprocessing(mnist, family):  # noqa: F811
    images = mnist.test_images[:20]
    for severity in (1, 2):
        out = robustness.corrupt(family, images, severity)
        for image in out:
            ink = image > 0.2 * image.max()
            rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
            assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= imaging.BOX + 1
            assert imaging.centre_of_mass(image.astype(float)) == pytest.approx((14, 14), abs=0.75)
        # Still the same digits: each correlates best with its own original.
        corr = np.corrcoef(out.reshape(20, -1).astype(float), images.reshape(20, -1).astype(float))[:20, 20:]
        assert (corr.argmax(1) == np.arange(20)).mean() >= 0.9


def test_a_photo_under_uneven_light_is_cropped_to_the_digit_not_the_sheet(mnist):  # noqa: F811
    # Before the preprocessing flattened the light, the darker side of the paper passed
    # for ink: the crop kept a grey square. Now the corners of the result stay black.
    out = robustness.corrupt("photo", mnist.test_images[:20], 2)
    corners = np.concatenate([out[:, :3, :3], out[:, :3, -3:], out[:, -3:, :3], out[:, -3:, -3:]], 1)
    assert corners.max() < 40


def test_corruptions_are_reproducible_and_drawn_per_seed(mnist):  # noqa: F811
    images = mnist.test_images[:30]
    for family in ("rotation_shear", "photo"):
        a, b = robustness.corrupt(family, images, 2, seed=1), robustness.corrupt(family, images, 2, seed=1)
        assert np.array_equal(a, b)
        assert not np.array_equal(a, robustness.corrupt(family, images, 2, seed=2))
    # Where on the pad the small digit sits is drawn per seed, and the preprocessing's crop
    # makes it not matter at all: whole-pixel moves give the very same input.
    a, b = (robustness.corrupt("small_off_centre", images, 2, seed=s) for s in (1, 2))
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="severity"):
        robustness.corrupt("blur", images, 4)


def test_measure_counts_right_answers_per_family_and_severity():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, 40)
    known = {image.tobytes(): label for image, label in zip(images, labels)}

    def oracle(batch):  # right on the clean images, class 3 on anything else
        out = np.zeros((len(batch), 10))
        out[np.arange(len(batch)), [known.get(image.tobytes(), 3) for image in batch]] = 1
        return out

    result = robustness.measure(oracle, images, labels, families=("blur", "jpeg"))
    assert result.clean == 1.0
    chance = float(np.mean(labels == 3))
    assert [r.accuracy for r in result.rows[1:]] == [chance] * 6
    assert [(r.family, r.severity) for r in result.rows] == [
        ("clean", 0), *((f, s) for f in ("blur", "jpeg") for s in (1, 2, 3))]
    again = robustness.Result.from_dict(json.loads(json.dumps(result.as_dict(), default=str)))
    assert again.rows[1:] == tuple(r.__class__(r.family, r.severity, r.level, r.accuracy, r.samples)
                                   for r in result.rows[1:])


def test_held_out_mean_is_the_mean_of_the_held_out_families():
    rows = [robustness.Row("clean", 0, None, 0.99, 10)]
    value = {}
    for i, family in enumerate(robustness.FAMILIES):
        for s in (1, 2, 3):
            value[family.name, s] = 0.5 + 0.01 * i + 0.1 * s
            rows.append(robustness.Row(family.name, s, family.levels[s - 1], value[family.name, s], 10))
    result = robustness.Result(tuple(rows), "test", 0)
    expected = sum(value[name, 2] for name in robustness.HELD_OUT) / len(robustness.HELD_OUT)
    assert result.held_out_mean() == pytest.approx(expected)
    assert set(robustness.HELD_OUT) < set(robustness.BY_NAME)


@pytest.mark.slow
def test_the_command_measures_a_run_saves_it_and_the_report_shows_it(trained_run, mnist, capsys, monkeypatch):  # noqa: F811
    code, out, _ = run_cli(["robustness", trained_run, "--json"], capsys, monkeypatch)
    assert code == 0
    found = json.loads(out)
    saved = robustness.load(trained_run)
    assert saved is not None and saved.as_dict()["rows"] == json.loads(json.dumps(found["rows"]))
    # The clean row is the test accuracy `train --test` recorded for the same network.
    summary = json.loads((trained_run / "summary.json").read_text())
    assert saved.clean == pytest.approx(summary["test"]["accuracy"], abs=1e-4)
    assert found["held_out_mean"]["2"] == pytest.approx(saved.held_out_mean())
    code, _, _ = run_cli(["report", trained_run], capsys, monkeypatch)
    page = (trained_run / "report.html").read_text()
    assert code == 0 and 'id="robustness"' in page and "low_resolution" in page
    code, _, err = run_cli(["robustness", trained_run, "--split", "validation"], capsys, monkeypatch)
    assert code == 2 and "without validation data" in err
