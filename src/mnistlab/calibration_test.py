"""calibration.py against sums done by hand, brute force and data drawn at a known temperature."""

import numpy as np
import pytest

from mnistlab import calibration


def test_ece_is_the_weighted_gap_between_accuracy_and_confidence_per_bin():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.3, 0.7], [0.95, 0.05]])
    labels = np.array([0, 1, 0, 1, 1])
    # Two bins, (0, 0.5] and (0.5, 1]: every top probability is in the second; of its five
    # predictions three are right (0.6 and 0.95 are wrong), mean confidence 3.95 / 5.
    assert calibration.ece(probs, labels, bins=2) == pytest.approx(abs(3 / 5 - 3.95 / 5))
    # Ten bins: 0.6 | 0.7 | 0.8 | 0.9 | 0.95 each alone, (wrong, right, right, right, wrong).
    assert calibration.ece(probs, labels, bins=10) == pytest.approx((0.6 + 0.3 + 0.2 + 0.1 + 0.95) / 5)


def test_a_perfectly_calibrated_source_has_an_ece_near_zero():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10) * 0.3, size=50_000)
    labels = (probs.cumsum(axis=1) > rng.random((len(probs), 1))).argmax(axis=1)  # drawn from them
    assert calibration.ece(probs, labels) < 0.01


def drawn_at(temperature: float, n: int = 8_000, seed: int = 0):
    """Logits z, labels drawn from softmax(z / temperature): the true T is known."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, size=(n, 10))
    p = calibration.softmax(logits / temperature)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_at(true_t):
    logits, labels = drawn_at(true_t)
    fitted = calibration.fit_temperature(logits, labels)
    grid = np.exp(np.linspace(-3, 3, 301))  # brute force over the same range, steps of 2%
    best = grid[np.argmin([calibration.nll(logits, labels, t) for t in grid])]
    assert fitted == pytest.approx(best, rel=0.02)
    assert fitted == pytest.approx(true_t, rel=0.08)  # 8,000 draws


def test_fitting_keeps_every_prediction_and_shrinks_the_error_of_an_over_confident_network():
    logits, labels = drawn_at(2.0)  # the logits are twice too sharp for the labels
    found = calibration.fit(logits, labels)
    after = calibration.softmax(logits / found.temperature)
    assert (after.argmax(axis=1) == logits.argmax(axis=1)).all()
    assert found.ece_before == pytest.approx(calibration.ece(calibration.softmax(logits), labels))
    assert found.ece_after == pytest.approx(calibration.ece(after, labels))
    assert found.ece_before > 0.05 and found.ece_after < 0.01
    # The flag keeps its promise on the data it was chosen on, and flags no more than needed.
    confidence, correct = after.max(axis=1), after.argmax(axis=1) == labels
    sure = confidence >= found.unsure_below
    assert correct[sure].mean() >= calibration.TARGET and found.unsure_share == pytest.approx(1 - sure.mean())
    next_lower = confidence[confidence < found.unsure_below].max()
    assert correct[confidence >= next_lower].mean() < calibration.TARGET
    assert found.samples == len(labels) and found.as_dict()["temperature"] == found.temperature


@pytest.mark.parametrize("confidence, correct, target, threshold", [
    # accuracy of the k most confident: 1, 1, 2/3, 3/4, 3/5 -> the four most keep 0.75
    ([0.99, 0.95, 0.9, 0.8, 0.6], [1, 1, 0, 1, 0], 0.75, 0.8),
    ([0.99, 0.95, 0.9], [1, 1, 1], 0.99, 0.0),  # all right: nothing flagged
    ([0.99, 0.95, 0.9], [0, 1, 1], 0.99, 1.0),  # the most confident is wrong: all flagged
    ([0.6, 0.9, 0.8], [0, 1, 1], 0.9, 0.8),  # order does not matter
])
def test_the_unsure_threshold_is_the_least_that_keeps_the_promise(confidence, correct, target, threshold):
    found = calibration.unsure_threshold(np.array(confidence), np.array(correct, bool), target)
    assert found == threshold
    # By brute force: of the thresholds at the confidences, the least whose kept accuracy makes it.
    c, ok = np.array(confidence), np.array(correct, bool)
    keeping = [t for t in sorted(c) if ok[c >= t].mean() >= target]
    assert found == (0.0 if keeping and keeping[0] == c.min() else keeping[0] if keeping else 1.0)


def test_an_accurate_network_still_flags_half_of_its_mistakes():
    rng = np.random.default_rng(0)
    confidence, correct = rng.uniform(0.5, 1.0, 1000), np.ones(1000, bool)
    confidence[:5], correct[:5] = [0.97, 0.55, 0.8, 0.6, 0.7], False
    # 995 of 1,000 right: the 99% promise holds with nothing flagged ...
    assert calibration.unsure_threshold(confidence, correct) == 0.0
    # ... so the catch decides: ceil(0.5 x 5) = 3 mistakes under it, i.e. just above the third lowest.
    assert calibration.catch_threshold(confidence, correct) == np.nextafter(0.7, 1.0)
    assert calibration.catch_threshold(confidence, correct, catch=0.2) == np.nextafter(0.55, 1.0)
    assert calibration.catch_threshold(confidence, np.ones(1000, bool)) == 0.0


def test_fit_takes_the_higher_threshold_and_says_how_many_mistakes_it_flags():
    logits, labels = drawn_at(1.0)
    for catch in (0.0, 0.9):
        found = calibration.fit(logits, labels, catch=catch)
        after = calibration.softmax(logits / found.temperature)
        confidence, correct = after.max(axis=1), after.argmax(axis=1) == labels
        assert found.unsure_below == max(calibration.unsure_threshold(confidence, correct),
                                         calibration.catch_threshold(confidence, correct, catch))
        assert found.mistakes_flagged == pytest.approx((confidence[~correct] < found.unsure_below).mean())
        assert found.mistakes_flagged >= catch
