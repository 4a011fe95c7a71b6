"""novelty.py against ink drawn by hand, quantiles and sums done by hand, and its pictures.

How well it tells real digits from pictures that hold none, through a trained network:
predict_test.py (the Predictor end to end) and bench/nondigits.py (the figures)."""

import json
import math

import numpy as np
import pytest

from mnistlab import novelty


def canvas(*marks: tuple[slice, slice], value: int = 255) -> np.ndarray:
    image = np.zeros((28, 28), np.uint8)
    for rows, cols in marks:
        image[rows, cols] = value
    return image


def test_pieces_join_diagonally_and_loops_are_what_the_ink_closes():
    two = canvas((slice(4, 10), slice(4, 6)), (slice(4, 10), slice(20, 22)))
    assert novelty.shape(two)[1:] == (2, 0)
    stair = np.zeros((28, 28), np.uint8)
    stair[np.arange(5, 15), np.arange(5, 15)] = 255  # pixels touching only at their corners
    assert novelty.shape(stair)[1:] == (1, 0)
    ring = canvas((slice(5, 15), slice(5, 15)))
    ring[7:13, 7:13] = 0  # a square outline 2 pixels thick: one hole
    assert novelty.shape(ring)[1:] == (1, 1)
    eight = canvas((slice(3, 25), slice(8, 20)))
    eight[5:13, 10:18] = 0
    eight[15:23, 10:18] = 0  # two holes, one above the other, as in an 8
    assert novelty.shape(eight)[1:] == (1, 2)
    diamond = np.zeros((28, 28), np.uint8)
    for k in range(5):  # a diamond of single pixels meeting at corners: still closed
        for r, c in ((5 + k, 14 + k), (10 + k, 19 - k), (15 - k, 14 - k), (10 - k, 9 + k)):
            diamond[r, c] = 255
    assert novelty.shape(diamond)[1:] == (1, 1)
    faint = canvas((slice(5, 15), slice(5, 15)), value=novelty.INK - 1)  # under a quarter intensity: not ink
    assert novelty.shape(faint) == (0.0, 0, 0)
    grey = np.where(ring > 0, novelty.CORE - 1, 0).astype(np.uint8)  # ink, but no core: a grey ring
    assert novelty.shape(grey) == (0.0, 1, 1)


def test_thickness_is_the_radius_of_the_largest_disc_inside_the_ink():
    line = canvas((slice(4, 24), slice(14, 15)))
    bar = canvas((slice(4, 24), slice(13, 16)))  # 3 pixels wide: its middle column is 2 from outside
    block = canvas((slice(10, 17), slice(10, 17)))  # 7x7: the centre is 4 pixels from outside
    assert [novelty.shape(x)[0] for x in (line, bar, block)] == [1.0, 2.0, 4.0]
    # Ink up to the edge has an outside beyond it: a full image is 14 from it, not more.
    assert novelty.shape(np.full((28, 28), 255, np.uint8)) == (14.0, 1, 0)


def test_evidence_by_hand():
    image = np.zeros((28, 28), np.uint8)
    image[0, :8] = [0, 10, 63, 64, 126, 127, 0, 255]
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    found = novelty.evidence(np.stack([image, np.zeros((28, 28), np.uint8)]), logits)
    assert set(found) == set(novelty.EVIDENCE)
    assert found["energy"] == pytest.approx([-math.log(math.e + math.e ** 2 + math.e ** 3), -math.log(3)])
    # Ink from 64 up: 64, 126, 127 side by side, then 255 alone; cores from 127 up, one pixel thick.
    assert list(found["pieces"]) == [2, 0] and list(found["loops"]) == [0, 0]
    assert list(found["thickness"]) == [1.0, 0.0]


def test_tail_shares_are_the_smallest_share_whose_limit_is_exceeded_then_fall_tenfold_per_step():
    limits, tails = [1.0, 4.0, 8.0], [0.5, 0.1, 0.01]
    shares = novelty.tail_shares(np.array([0.0, 1.0, 5.0, 8.0, 10.0, 16.0]), limits, tails)
    # Beyond a limit, not at it (8 is 10%). Past the last one (8, at 1%), the step from 10%
    # to 1% was 4 wide: every further 4 divides the share by ten.
    assert shares == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01 * 10 ** -0.5, 0.01 * 10 ** -2])
    flat = novelty.tail_shares(np.array([2.0, 50.0]), [1.0, 1.0, 1.0], tails)
    assert list(flat) == [0.01, 0.01]  # a table that never moved: no tail to extend
    assert novelty.tail_shares(np.array([1e6]), limits, tails)[0] == novelty.TINY


def digit_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images of one stroke each (a bar or a ring of random size and place), and logits
    with one class well ahead: what the fit sees in validation digits, in miniature."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for image in images:
        top, left = rng.integers(3, 8, 2)
        height, width = rng.integers(12, 20), rng.integers(2, 12)
        image[top:top + height, left:left + width] = rng.integers(200, 256)
        if width > 6:
            image[top + 2:top + height - 2, left + 2:left + width - 2] = 0
    logits = rng.normal(0, 1, (n, 10))
    logits[np.arange(n), rng.integers(0, 10, n)] += rng.uniform(6, 14, n)
    return images, logits


def test_the_fit_is_the_quantiles_and_the_rarity_threshold_done_by_hand():
    images, logits = digit_like(400)
    found = novelty.fit(images, logits)
    values = novelty.evidence(images, logits)
    n = len(images)
    for k in novelty.EVIDENCE:
        ordered = np.sort(values[k])
        # The lowest value with at least a share 1 - t of the data at or under it.
        assert found.limits[k] == pytest.approx([ordered[math.ceil((1 - t) * (n - 1) - 1e-9)] for t in novelty.TAILS])
    rarity = []  # (the last limits are the largest values: nothing lies in the tail beyond)
    for i in range(n):
        total = 0.0
        for k in novelty.EVIDENCE:
            beyond = [t for t, limit in zip(novelty.TAILS, found.limits[k]) if values[k][i] > limit]
            total -= math.log(min(beyond, default=1.0))
        rarity.append(total)
    np.testing.assert_allclose(found.rarity(values), rarity)
    assert found.threshold == pytest.approx(sorted(rarity)[math.ceil(novelty.PASS * (n - 1) - 1e-9)])
    assert found.flagged_share == pytest.approx(np.mean(np.array(rarity) > found.threshold))
    assert found.flagged_share <= 1 - novelty.PASS and found.samples == n
    assert sum(r is not None for r in found.reasons(images, logits)) == round(found.flagged_share * n)


# A table by hand: 10%, 1% and 0.1% of digits lie beyond each row's numbers.
HAND = novelty.Novelty(limits={"energy": [-8.0, -5.0, -3.0], "thickness": [3.0, 4.0, 5.0],
                               "pieces": [1.0, 2.0, 3.0], "loops": [2.0, 3.0, 4.0]},
                       threshold=9.0, flagged_share=0.005, samples=1000, tails=(0.1, 0.01, 0.001))


def sure(k: int = 3) -> np.ndarray:
    z = np.zeros(10)
    z[k] = 12.0  # energy about -12: as confident as most digits
    return z


def test_flags_name_the_most_unusual_traits_and_typical_input_passes():
    stroke = canvas((slice(4, 24), slice(13, 16)))  # a 1: 2 thick, one piece, no loop
    block = canvas((slice(2, 26), slice(2, 26)))  # 12 thick: 7 steps of 1 past the last limit
    dots = np.zeros((28, 28), np.uint8)
    dots[4:24:4, 4:24:4] = 255  # 25 specks: 22 steps past the last limit of 3 pieces
    window = canvas((slice(4, 17), slice(4, 17)))
    for rows in (slice(6, 10), slice(11, 15)):
        for cols in (slice(6, 10), slice(11, 15)):
            window[rows, cols] = 0  # four panes: 4 loops, beyond 1% of digits (3) but not 0.1% (4)
    lost = np.full(10, 4.0 - math.log(10))  # all logits alike: energy -4, beyond 1% of digits (-5)
    images = np.stack([stroke, block, dots, stroke, window, window, block])
    logits = np.stack([sure(), sure(), sure(), np.full(10, -5.0), sure(), lost, np.full(10, -5.0)])
    assert HAND.reasons(images, logits) == [
        None,
        "a filled shape, not strokes",
        "in too many pieces",
        "the network recognises little",  # energy 2.7: 2.9 steps of 2 past the last limit
        None,  # 1 in 100 in one way only: rarity -log(0.01) = 4.6, under 9
        "the network recognises little; too many closed loops",  # 1 in 100 twice: 9.2; ties in EVIDENCE's order
        "a filled shape, not strokes; the network recognises little"]  # the rarer first (7 steps against 2.9)
    assert HAND.rarity(novelty.evidence(images[4:6], logits[4:6])) == pytest.approx([math.log(100), 2 * math.log(100)])


def test_a_fit_is_json_and_comes_back_the_same():
    images, logits = digit_like(300)
    found = novelty.fit(images, logits)
    back = novelty.Novelty.from_dict(json.loads(json.dumps(found.as_dict())))
    assert back == found
    odd = np.stack([canvas((slice(2, 26), slice(2, 26))), images[0]])
    assert back.reasons(odd, logits[:2]) == found.reasons(odd, logits[:2])


@pytest.mark.parametrize("kind", novelty.KINDS)
def test_pictures_are_repeatable_grey_and_hold_ink(kind):
    first = novelty.pictures(kind, 4, seed=3)
    assert [p.tobytes() for p in first] == [p.tobytes() for p in novelty.pictures(kind, 4, seed=3)]
    assert [p.tobytes() for p in first] != [p.tobytes() for p in novelty.pictures(kind, 4, seed=4)]
    for p in first:
        assert p.dtype == np.uint8 and p.ndim == 2 and p.shape[0] == p.shape[1] and 64 <= p.shape[0] < 200
        assert p.min() < 128 < p.max()  # dark ink on light paper, or light and shade


def test_an_unknown_kind_is_refused_with_the_kinds():
    with pytest.raises(ValueError, match="face, scribble, noise, texture, shape, hatch, got 'cat'"):
        novelty.draw("cat", np.random.default_rng(0))
