"""The synthetic hand (pure: templates, sizes, places, shaking) and, slow, its drawings on
the real page in Debian's Chromium, read back as a user would see them."""

import numpy as np
import pytest

from mnistlab import drawing
from mnistlab.predict_test import mnist, trained_run  # noqa: F401 (shared session fixtures)

# The sizes each severity promises, worked out here from the pad's 280 pixels: the larger
# side of a drawing's path is 60-80% of it neat, 25-40% hurried, 15-20% in a corner.
SIDES = {1: (168.0, 224.0), 2: (70.0, 112.0), 3: (42.0, 56.0)}
PEN_RADIUS = 9.0  # the page's pen is 18 px wide: a path point closer to an edge loses ink


def boxes(severity: int, per_digit: int = 3, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(low corner, high corner) of every drawing's points at `severity`."""
    out = []
    for d in drawing.drawings(severity, per_digit, seed):
        points = np.concatenate(d.strokes)
        out.append((points.min(axis=0), points.max(axis=0)))
    return out


# ------------------------------------------------------------------ the templates


def test_every_digit_has_forms_of_one_or_two_strokes_in_the_unit_square():
    assert sorted(drawing.TEMPLATES) == list(range(10))
    for digit, forms in drawing.TEMPLATES.items():
        assert forms, digit
        for form in forms:
            assert 1 <= len(form) <= 2, (digit, form)
            points = np.concatenate([np.asarray(stroke, float) for stroke in form])
            assert all(len(stroke) >= 2 for stroke in form), digit
            assert points.min() >= 0.0 and points.max() <= 1.0, digit
            # drawn one unit tall: `person_drawing` sets the size, the form only the shape
            assert points[:, 1].min() == 0.0 and points[:, 1].max() == 1.0, digit


def test_digits_people_write_differently_have_their_forms():
    ones, fours, sevens = drawing.TEMPLATES[1], drawing.TEMPLATES[4], drawing.TEMPLATES[7]
    assert [len(stroke) for (stroke,) in ones] == [2, 3]  # a bar; a flag, then the bar
    assert len(fours) == 2 and fours[0][0][0] != fours[1][0][0]  # open and closed start differently
    assert [len(form) for form in sevens] == [1, 2]  # without and with the bar


# ------------------------------------------------------------------ resampling


def test_resample_puts_points_at_equal_steps_along_the_path():
    # An L: 30 px right, then 40 px down; 70 px in 5 px steps is 15 points.
    path = drawing.resample(np.array([[0, 0], [30, 0], [30, 40]]), 5.0)
    assert path.shape == (15, 2)
    np.testing.assert_allclose(path[6], [30, 0])  # 30 px along: the corner
    np.testing.assert_allclose(path[7], [30, 5])  # 35 px along: 5 px down the second leg
    np.testing.assert_allclose(path[-1], [30, 40])
    # 12 px does not divide into 5s: 3 equal steps of 4 px, both ends kept.
    np.testing.assert_allclose(drawing.resample(np.array([[0, 0], [12, 0]]), 5.0)[:, 0], [0, 4, 8, 12])
    np.testing.assert_allclose(drawing.resample(np.array([[3, 4], [3, 4]]), 5.0), [[3, 4]])  # a dot


def test_a_drawing_is_as_many_points_as_a_mouse_reports():
    for d in drawing.drawings(1, 1, seed=0):
        for stroke in d.strokes:
            steps = np.linalg.norm(np.diff(stroke, axis=0), axis=1)
            assert 6.0 <= np.median(steps) <= 10.0  # ~8 px apart, shaking aside


# ------------------------------------------------------------------ sizes and places


def test_the_same_seed_draws_the_same_and_another_seed_does_not():
    def flat(seed):
        return np.concatenate([np.concatenate(d.strokes) for d in drawing.drawings(2, 2, seed)])

    np.testing.assert_array_equal(flat(3), flat(3))
    assert flat(3).shape != flat(4).shape or not np.allclose(flat(3), flat(4))


@pytest.mark.parametrize("severity", [1, 2, 3])
def test_the_larger_side_of_every_drawing_is_in_its_severitys_range(severity):
    low, high = SIDES[severity]
    sides = [float((top - bottom).max()) for bottom, top in boxes(severity)]
    assert len(sides) == 30
    assert all(low - 1e-9 <= side <= high + 1e-9 for side in sides), sides
    assert max(sides) - min(sides) > (high - low) / 3  # drawn across the range, not at one size


@pytest.mark.parametrize("severity", [1, 2, 3])
def test_every_point_stays_on_the_pad_with_room_for_the_pen(severity):
    for d in drawing.drawings(severity, 3, seed=1):
        points = np.concatenate(d.strokes)
        assert points.min() >= PEN_RADIUS - 1e-9 and points.max() <= 280 - PEN_RADIUS + 1e-9


def test_neat_drawings_are_centred_and_hurried_ones_anywhere():
    neat = np.array([(bottom + top) / 2 for bottom, top in boxes(1)])
    assert np.abs(neat - 140).max() <= 14 + 1e-9  # 5% of the pad from the middle
    hurried = np.array([(bottom + top) / 2 for bottom, top in boxes(2, per_digit=5)])
    # across the pad: both halves, both ways (a box of at most 112 + the pen leaves its
    # centre 65..215)
    for axis in (0, 1):
        assert hurried[:, axis].min() < 110 and hurried[:, axis].max() > 170


def test_tiny_drawings_sit_in_a_corner():
    corners = set()
    for bottom, top in boxes(3, per_digit=4):
        # within the pen's radius plus 5% of the pad (14 px) of two edges that meet
        left, right = bottom[0] <= 9 + 14 + 1e-9, top[0] >= 280 - 9 - 14 - 1e-9
        upper, lower = bottom[1] <= 9 + 14 + 1e-9, top[1] >= 280 - 9 - 14 - 1e-9
        assert (left or right) and (upper or lower), (bottom, top)
        corners.add((right, lower))
    assert len(corners) == 4  # every corner is used


def test_shaking_grows_with_severity_relative_to_the_drawing():
    def roughness(severity):
        # a path's bend from point to point (second differences), over the drawing's size
        out = []
        for d in drawing.drawings(severity, 2, seed=0):
            side = np.ptp(np.concatenate(d.strokes), axis=0).max()
            out += [np.linalg.norm(np.diff(s, n=2, axis=0), axis=1).mean() / side for s in d.strokes if len(s) > 2]
        return float(np.mean(out))

    neat, hurried, tiny = roughness(1), roughness(2), roughness(3)
    assert neat < hurried < tiny and tiny > 3 * neat


def test_a_severity_outside_1_to_3_is_refused():
    with pytest.raises(ValueError, match="severity must be one of"):
        drawing.person_drawing(drawing.TEMPLATES[0][0], 4, np.random.default_rng(0))


# ------------------------------------------------------------------ on the real page


@pytest.fixture(scope="module")
def url(trained_run):
    with drawing.serving(trained_run) as served:
        yield served


@pytest.mark.slow
def test_neat_drawings_on_the_page_are_read_right(url):
    drawn = drawing.drawings(1, 2, seed=0)
    readings = drawing.draw_on_page(url, [d.strokes for d in drawn[:1]] + drawn[1:])  # strokes or Drawings
    assert len(readings) == 20
    previous = None
    for d, r in zip(drawn, readings):
        assert r.error == "" and r.label != "–", (d.digit, r)  # an answer for every drawing
        assert r.confidence  # "97.1% sure", or the page's doubt in words: shown either way
        # The page really drew it: what the network saw has ink, fitted as MNIST's digits
        # are (20 px on the longer side), and is not the previous drawing's.
        rows, cols = np.nonzero(r.seen)
        assert len(rows) >= 20
        assert max(np.ptp(rows), np.ptp(cols)) + 1 == 20
        assert previous is None or not np.array_equal(r.seen, previous)
        previous = r.seen
    right = np.mean([r.label == str(d.digit) for d, r in zip(drawn, readings)])
    # Measured for this fixture (784-256-10, ~93% on MNIST's test set): these 20 all right,
    # and 49 of 50 at per_digit=5 (a flagged 1 read as 9). The floor, 14 of 20, leaves room
    # for another hand or a retrained fixture: most, not all.
    assert right >= 0.7, right


@pytest.mark.slow
def test_measure_serves_the_run_and_gives_a_row_per_severity(trained_run):
    rows = drawing.measure(trained_run, per_digit=1)
    assert [(r.family, r.severity, r.samples) for r in rows] == [("page_drawing", s, 10) for s in (1, 2, 3)]
    assert [r.level for r in rows] == [drawing.describe(s) for s in (1, 2, 3)]
    assert rows[0].level == "60%-80% of the pad, centred, slant +-10 deg, tremor 0.5 px"
    assert all(0.0 <= r.accuracy <= 1.0 for r in rows)
    assert rows[0].accuracy >= 0.7  # as above
