"""Does an input look like a digit at all? A flag for faces, scribbles, blobs and noise.

    found = novelty.fit(validation_images, validation_logits)     # at training time
    found.reasons(images, logits)      # [None, "a filled shape, not strokes", ...]
    novelty.Novelty.from_dict(found.as_dict())                     # the run's summary is JSON

A softmax network answers every input with some digit, often confidently: a photo of a
face or a filled square gets "8, 97%". Calibration (`calibration`) cannot see that, since
it only rescales the answer. This module looks at the input itself and at how strongly
the network responds, each piece of evidence cheap and nameable:

    energy     -logsumexp of the logits (Liu et al., "Energy-based Out-of-distribution
               Detection", NeurIPS 2020): high when no class responds strongly
    thickness  the radius, in pixels, of the largest disc inside the strokes' cores
               (pixels >= half intensity): a pen stroke is 1-3 pixels, a filled shape more
    pieces     8-connected pieces of ink (pixels >= a quarter intensity): a digit is one
               stroke, rarely broken in two
    loops      closed background regions (holes) in that ink: an 8 has two, a tangle many

Each is high when the input is unusual. Fitted on the validation digits, each has a
table of the values that only a given share of digits exceed (`TAILS`). An input's
share on one piece of evidence is the smallest listed share it exceeds (1 if none: an
upper bound on the true share, so a value is never made rarer than it is; beyond the
table, an exponential tail), and its rarity the sum of -log(share) over the evidence
(Fisher's method: several moderately odd traits add up, as in a scribble with thick
strokes, a loop too many and a weak answer, while a digit that is bold or broken is odd
in one way only). The input is flagged when its rarity is above what `PASS` of the
validation digits stay under; the reason names its one or two most unusual traits.

Left out on purpose, having been measured (bench/nondigits.py, with the corrupted
digits of `robustness`): the amount of ink, and how blurred the strokes are (the share
of half-tones). With them 88.5% of the non-digit pictures were caught, not 81.5%, but
real digits that the network still reads well were flagged: blurred, scanned at low
resolution, photographed (41%, 97% and 58% of them at the middle severity, against 1% or
less without), and drawn with a fat marker. Pieces and loops are counted at a quarter
intensity for the same reason: a blurred stroke stays one piece there, where at half
intensity it falls apart.

Pure NumPy and SciPy over arrays already computed: no JAX, no files. `draw` makes the
non-digit pictures the flag is measured on (bench/nondigits.py, predict_test.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

# The share of real digits that must pass: 1 in 200 flagged is a rare annoyance for a
# user who wrote a digit, and leaves enough room to catch most non-digits (measured in
# bench/nondigits.py: 0.7% of the 10,000 MNIST test digits are flagged).
PASS = 0.995
# Rarity levels of the tables: dense where the decision is made (below 5%), down to 1 in
# 1,000, which a validation split of 6,000 digits still resolves.
TAILS = (0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01, 0.005, 0.002, 0.001)
CORE = 127  # a stroke's core: half intensity up (MNIST's strokes have cores of 255)
INK = 64  # ink for pieces and loops: a quarter intensity up, where a blurred stroke still joins
RARE = 0.05  # a trait is named in the reason when at most this share of digits exceed it
TINY = 1e-300  # the rarest share: its -log stays finite (690)
# What each piece of evidence says when it is why an input is flagged.
REASONS = {
    "energy": "the network recognises little",
    "thickness": "a filled shape, not strokes",
    "pieces": "in too many pieces",
    "loops": "too many closed loops",
}
EVIDENCE = tuple(REASONS)
_EIGHT = np.ones((3, 3), bool)  # 8-connectivity: a diagonal step joins two ink pixels


def shape(image: np.ndarray) -> tuple[float, int, int]:
    """(thickness of the cores (pixels >= CORE), pieces and loops of the ink (>= INK)) of
    one 2-D image."""
    image = np.pad(np.asarray(image), 1)  # a blank frame: ink touching the edge has an outside
    thickness = float(ndimage.distance_transform_edt(image >= CORE).max())
    ink = image >= INK
    pieces = ndimage.label(ink, structure=_EIGHT)[1]
    # Background is 4-connected where ink is 8-connected (otherwise a diagonal stroke would
    # both join two ink pixels and let the background through); the frame is the outside.
    loops = ndimage.label(~ink)[1] - 1
    return thickness, int(pieces), int(loops)


def evidence(images: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
    """Every piece of evidence (`EVIDENCE`) for (N, H, W) uint8 images and their (N, classes)
    logits: one float64 array of N values each, all higher for less digit-like inputs."""
    images, logits = np.asarray(images), np.asarray(logits, np.float64)
    top = logits.max(axis=1, initial=-np.inf, keepdims=True)
    # logsumexp by hand: scipy's costs 0.2 ms a call, as much as the rest for one image.
    log_total = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    shapes = np.array([shape(image) for image in images], np.float64).reshape(len(images), 3)
    return {"energy": -log_total, "thickness": shapes[:, 0], "pieces": shapes[:, 1], "loops": shapes[:, 2]}


def tail_shares(values: np.ndarray, limits, tails) -> np.ndarray:
    """Per value, the smallest share in `tails` whose limit it exceeds, 1 if none; beyond
    the last limit, ten times smaller for every further step as wide as the last tenfold
    step of the table (an exponential tail), so one trait far beyond every digit (25
    pieces, a solid block) is as rare as it looks, not merely "1 in 1,000"."""
    values, limits, tails = np.asarray(values, np.float64), np.asarray(limits, np.float64), np.asarray(tails)
    shares = np.where(values[:, None] > limits[None, :], tails[None, :], 1.0).min(axis=1, initial=1.0)
    step = _last_decade(limits, tails)
    if step > 0:  # (a table flat at its end, as a count that never varied, says nothing about the tail)
        far = tails[-1] * 10.0 ** (-np.maximum(values - limits[-1], 0.0) / step)
        shares = np.where(values > limits[-1], np.maximum(far, TINY), shares)
    return shares


def _last_decade(limits: np.ndarray, tails: np.ndarray) -> float:
    """How far the limits move per tenfold fall of the share at the table's end: from the
    share nearest ten times the last one (1% for TAILS) to the last (0.1%)."""
    other = int(np.argmin(np.abs(np.log10(tails / tails[-1]) - 1)))
    if other == len(tails) - 1:  # a table of one share
        return 0.0
    return float((limits[-1] - limits[other]) / np.log10(tails[other] / tails[-1]))


@dataclass(frozen=True)
class Novelty:
    limits: dict[str, list[float]]  # per evidence, the value at most `tails[i]` of digits exceed
    threshold: float  # rarity above which an input is flagged
    flagged_share: float  # of the validation digits it was fitted on, the share flagged
    samples: int  # validation digits it was fitted on
    tails: tuple[float, ...] = TAILS
    pass_share: float = PASS

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tails"] = list(self.tails)
        return out

    @classmethod
    def from_dict(cls, found: dict[str, Any]) -> "Novelty":
        return cls(limits={k: list(v) for k, v in found["limits"].items()}, threshold=float(found["threshold"]),
                   flagged_share=float(found["flagged_share"]), samples=int(found["samples"]),
                   tails=tuple(found["tails"]), pass_share=float(found["pass_share"]))

    def shares(self, found: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per evidence, the share of validation digits each input is rarer than (see `tail_shares`)."""
        return {k: tail_shares(found[k], self.limits[k], self.tails) for k in self.limits}

    def rarity(self, found: dict[str, np.ndarray]) -> np.ndarray:
        """Sum over the evidence of -log(tail share): 0 for an input typical in every way."""
        return _rarity(self.shares(found))

    def reasons(self, images: np.ndarray, logits: np.ndarray) -> list[str | None]:
        """Per input, None when it passes for a digit, else why not (its most unusual traits)."""
        shares = self.shares(evidence(images, logits))
        flagged = _rarity(shares) > self.threshold
        out: list[str | None] = []
        for i in range(len(flagged)):
            if not flagged[i]:
                out.append(None)
                continue
            ranked = sorted(shares, key=lambda k: shares[k][i])  # stable: EVIDENCE's order breaks ties
            named = [k for k in ranked[:2] if shares[k][i] <= RARE] or ranked[:1]
            out.append("; ".join(REASONS[k] for k in named))
        return out


def _rarity(shares: dict[str, np.ndarray]) -> np.ndarray:
    return -sum(np.log(s) for s in shares.values())


def tail_limits(values: np.ndarray, tails=TAILS) -> list[float]:
    """The value at most share t of `values` exceed, for each t in `tails`: the lowest
    data point with at least a share 1 - t at or under it."""
    return [float(q) for q in np.quantile(np.asarray(values, np.float64), 1 - np.asarray(tails), method="higher")]


def fit(images: np.ndarray, logits: np.ndarray, pass_share: float = PASS) -> Novelty:
    """The tables and the rarity threshold, from validation digits (images as the network
    takes them, (N, H, W) uint8, and the network's logits for them)."""
    found = evidence(images, logits)
    tables = {k: tail_limits(v) for k, v in found.items()}
    fitted = Novelty(limits=tables, threshold=math.inf, flagged_share=0.0, samples=len(images),
                     pass_share=pass_share)
    rarity = fitted.rarity(found)
    # The same "higher" quantile: at most 1 - pass_share of the validation digits lie above it.
    threshold = float(np.quantile(rarity, pass_share, method="higher"))
    return Novelty(limits=tables, threshold=threshold, flagged_share=float((rarity > threshold).mean()),
                   samples=len(images), pass_share=pass_share)


# ------------------------------------------------------------- non-digit pictures
#
# What the flag is measured on: pictures a user might send that hold no digit, drawn
# dark on white paper at any size, to go through decoding and the MNIST preprocessing
# like any upload. Strokes range from a fine pen to a marker as thick as a digit's.

KINDS = ("face", "scribble", "noise", "texture", "shape", "hatch")


def _distance_to_segment(yy: np.ndarray, xx: np.ndarray, a, b) -> np.ndarray:
    (ay, ax), (by, bx) = a, b
    dy, dx = by - ay, bx - ax
    t = np.clip(((yy - ay) * dy + (xx - ax) * dx) / max(dy * dy + dx * dx, 1e-9), 0.0, 1.0)
    return np.hypot(yy - ay - t * dy, xx - ax - t * dx)


def _pen(distance: np.ndarray, width: float) -> np.ndarray:
    """Ink 0..1 of a pen `width` pixels wide at `distance` from its path (a 1-pixel soft edge)."""
    return np.clip(width / 2 - distance + 0.5, 0.0, 1.0)


def _polyline(yy: np.ndarray, xx: np.ndarray, points, width: float) -> np.ndarray:
    ink = np.zeros(yy.shape)
    for a, b in zip(points[:-1], points[1:]):
        ink = np.maximum(ink, _pen(_distance_to_segment(yy, xx, a, b), width))
    return ink


def _face(yy, xx, s, rng) -> np.ndarray:
    cy, cx = s / 2 + rng.uniform(-0.05, 0.05, 2) * s
    r, width = rng.uniform(0.32, 0.44) * s, rng.uniform(0.02, 0.12) * s
    ink = _pen(np.abs(np.hypot(yy - cy, xx - cx) - r), width)  # the head
    eye = rng.uniform(0.04, 0.08) * s
    for side in (-1, 1):
        ink = np.maximum(ink, _pen(np.maximum(np.hypot(yy - cy + 0.3 * r, xx - cx - side * 0.38 * r) - eye, 0), width))
    angle = np.linspace(0.2 * np.pi, 0.8 * np.pi, 12)
    smile = 0.55 * r * rng.uniform(0.4, 1.0)
    mouth = list(zip(cy + 0.05 * r + smile * np.sin(angle), cx + 0.55 * r * np.cos(angle)))
    return np.maximum(ink, _polyline(yy, xx, mouth, width))


def _hatch(yy, xx, s, rng) -> np.ndarray:
    if rng.random() < 0.5:  # a grid, as on squared paper
        step, width = rng.uniform(0.08, 0.25) * s, rng.uniform(0.02, 0.08) * s
        return _pen(np.minimum(np.abs(yy % step - step / 2), np.abs(xx % step - step / 2)), width)
    ink, rows = np.zeros(yy.shape), int(rng.integers(3, 7))  # lines of word-like dashes
    width = rng.uniform(0.02, 0.06) * s
    for row in range(rows):
        y, x = (0.1 + 0.8 * (row + 0.5) / rows) * s, 0.1 * s
        while x < 0.85 * s:
            length = rng.uniform(0.03, 0.12) * s
            ink = np.maximum(ink, _polyline(yy, xx, [(y, x), (y + rng.uniform(-0.03, 0.03) * s, x + length)], width))
            x += length + rng.uniform(0.03, 0.06) * s
    return ink


def _shape(yy, xx, s, rng) -> np.ndarray:
    cy, cx = rng.uniform(0.3, 0.7, 2) * s
    h = rng.uniform(0.15, 0.4) * s
    w = h * np.exp(rng.uniform(-0.7, 0.7))  # at most 2:1: a blob, not a bar (a bar is a 1)
    kind = rng.integers(3)
    if kind == 0:
        inside = ((yy - cy) / h) ** 2 + ((xx - cx) / w) ** 2 <= 1
    elif kind == 1:
        inside = (np.abs(yy - cy) <= h) & (np.abs(xx - cx) <= w)
    else:  # a triangle standing on its base
        inside = (yy >= cy - h) & (yy <= cy + h) & (np.abs(xx - cx) <= w * (yy - cy + h) / (2 * h))
    return inside.astype(np.float64)


def draw(kind: str, rng: np.random.Generator, size: int = 112) -> np.ndarray:
    """One picture of `kind` (`KINDS`), size x size uint8 grey, dark ink on white."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    s = float(size)
    if kind == "face":  # a smiley: a circle, two eyes and a mouth
        ink = _face(yy, xx, s, rng)
    elif kind == "scribble":  # random strokes
        n = int(rng.integers(5, 16))
        ink = _polyline(yy, xx, list(zip(*rng.uniform(0.1, 0.9, (2, n)) * s)), rng.uniform(0.03, 0.15) * s)
    elif kind == "noise":  # every pixel random
        uniform = rng.random() < 0.5
        ink = rng.uniform(0, 1, (size, size)) if uniform else np.clip(rng.normal(0.5, 0.25, (size, size)), 0, 1)
    elif kind == "texture":  # smooth random light and shade, as a blurry photo
        g = ndimage.gaussian_filter(rng.normal(size=(size, size)), rng.uniform(0.04, 0.15) * s, mode="wrap")
        ink = (g - g.min()) / (g.max() - g.min())
    elif kind == "shape":  # a filled ellipse, rectangle or triangle
        ink = _shape(yy, xx, s, rng)
    elif kind == "hatch":  # a grid, or lines of text-like dashes
        ink = _hatch(yy, xx, s, rng)
    else:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return np.round(255 * (1 - ink)).astype(np.uint8)


def pictures(kind: str, count: int, seed: int = 0, sizes: tuple[int, int] = (64, 200)) -> list[np.ndarray]:
    """`count` pictures of `kind`, each of a random size in [sizes[0], sizes[1]) pixels."""
    rng = np.random.default_rng([seed, KINDS.index(kind) if kind in KINDS else len(KINDS)])
    return [draw(kind, rng, int(rng.integers(*sizes))) for _ in range(count)]
