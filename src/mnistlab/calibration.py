"""Confidence that means what it says, and a flag for predictions that are guesses.

    found = calibration.fit(validation_logits, validation_labels)
    found.temperature, found.ece_before, found.ece_after, found.unsure_below
    probs = calibration.softmax(logits / found.temperature)

A network trained with cross-entropy is over-confident: of the digits it calls "99%
sure", fewer than 99% are right. Temperature scaling (Guo et al., "On Calibration of
Modern Neural Networks", 2017) divides the logits by one number T, fitted on validation
data by minimising the negative log-likelihood; it changes no prediction (argmax is kept)
and makes the top probability a confidence. The expected calibration error (ECE) measures
the gap: the mean, over equal-width confidence bins weighted by their share of the
samples, of |accuracy - mean confidence|.

`unsure_below` is the confidence under which a prediction is flagged: the least threshold
such that the predictions at or above it are right at least `target` of the time on
validation (99% by default), so "sure" keeps a stated promise, and under which at least
half of the validation mistakes fall, so an accurate network still says when it doubts.

Pure NumPy and SciPy over arrays already computed: no JAX, no files.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

BINS = 15  # Guo et al.'s choice; what most calibration papers report
TARGET = 0.99  # the accuracy a "sure" prediction promises, on validation
# The share of validation mistakes that must fall under the threshold. Without it a network
# more accurate than TARGET keeps the promise with no threshold at all (`robust` is 99.3%
# right on validation) and would never say it is unsure, not even of a 50/50 answer.
CATCH = 0.5
# T is searched over [e^-3, e^3]: a network needing more than a 20x correction is broken
# in a way scaling does not fix.
LOG_T_BOUNDS = (-3.0, 3.0)


@dataclass(frozen=True)
class Calibration:
    temperature: float  # logits are divided by it
    ece_before: float  # on the validation data it was fitted on, at T = 1
    ece_after: float  # the same, at `temperature`
    unsure_below: float  # calibrated confidence under which a prediction is flagged
    unsure_share: float  # of the validation predictions, the share flagged
    samples: int  # validation samples it was fitted on
    mistakes_flagged: float = 0.0  # of the validation mistakes, the share flagged (>= CATCH)
    target: float = TARGET

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(np.asarray(logits, np.float64), axis=-1))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / T)."""
    logp = log_softmax(np.asarray(logits, np.float64) / temperature, axis=-1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error of the top class: bins (0, 1/B], ..., ((B-1)/B, 1]."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising the validation NLL (searched over log T: the loss is smooth there)."""
    found = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))), bounds=LOG_T_BOUNDS,
                            method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


def unsure_threshold(confidence: np.ndarray, correct: np.ndarray, target: float = TARGET) -> float:
    """The least t such that predictions with confidence >= t are right at least `target`
    of the time (1.0 when even the most confident fall short; 0.0 when all clear it)."""
    order = np.argsort(-confidence, kind="stable")
    kept_accuracy = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)  # of the k most confident
    meets = np.flatnonzero(kept_accuracy >= target)
    if len(meets) == 0:
        return 1.0
    k = meets[-1]  # the most predictions that still keep the promise
    return 0.0 if k == len(order) - 1 else float(confidence[order][k])


def catch_threshold(confidence: np.ndarray, correct: np.ndarray, catch: float = CATCH) -> float:
    """The least t such that at least `catch` of the wrong predictions have confidence < t
    (0.0 when there are none)."""
    wrong = np.sort(confidence[~correct])
    if len(wrong) == 0:
        return 0.0
    k = math.ceil(catch * len(wrong))  # mistakes to flag
    return float(np.nextafter(wrong[k - 1], np.inf))


def fit(logits: np.ndarray, labels: np.ndarray, target: float = TARGET, catch: float = CATCH) -> Calibration:
    """Temperature, the ECE before and after, and the unsure threshold, from validation:
    the higher of the promise's (`unsure_threshold`) and the catch's (`catch_threshold`)."""
    labels = np.asarray(labels)
    temperature = fit_temperature(logits, labels)
    before, after = softmax(logits), softmax(np.asarray(logits, np.float64) / temperature)
    confidence = after.max(axis=1)
    correct = after.argmax(axis=1) == labels
    threshold = max(unsure_threshold(confidence, correct, target), catch_threshold(confidence, correct, catch))
    flagged = confidence < threshold
    return Calibration(temperature=temperature, ece_before=ece(before, labels), ece_after=ece(after, labels),
                       unsure_below=threshold, unsure_share=float(flagged.mean()), samples=int(len(labels)),
                       mistakes_flagged=float(flagged[~correct].mean()) if (~correct).any() else 0.0,
                       target=target)
