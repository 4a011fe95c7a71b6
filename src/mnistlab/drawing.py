"""Digits drawn on the real page by a synthetic hand: the robustness family `page_drawing`.

    rows = drawing.measure("runs/20261201-101500-fast")           # one robustness.Row per severity
    strokes = drawing.person_drawing(drawing.TEMPLATES[7][1], 2, np.random.default_rng(0))
    with drawing.serving(run) as url:
        readings = drawing.draw_on_page(url, [strokes])            # what the page answered

The other families corrupt MNIST's own images. This one starts from nothing MNIST has
seen: a hand-written table of stroke paths for the ten digits (a few forms where people
write a digit differently), turned into one person's drawing by a seeded generator
(slant, aspect, size, place, wobbly vertices, a shaking hand, and as many points as a
mouse would report). Playwright then draws each one with the mouse on the page's own
canvas in Chromium, and the page does the rest as it does for a user: it sends the
drawing to `POST /api/predict` and shows the answer, which is what is read back. So
the number measures the whole path a user's digit takes: the canvas's stroke width and
anti-aliasing, the page's 140x140 PNG, the server's MNIST preprocessing and the network.

Severities, as the benchmark's: 1 a neat digit, large and centred; 2 small, anywhere on
the pad and shaky; 3 tiny, in a corner, very shaky (the page's fixed 18 px pen then
makes strokes a third of the digit's height or more).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from mnistlab import robustness

FAMILY = "page_drawing"
PAD = 280  # the page's canvas #pad, pixels a side (index.html)
LINE_WIDTH = 18  # the page's pen (app.js): ink reaches LINE_WIDTH / 2 beyond the path
MARGIN = LINE_WIDTH / 2  # the path keeps this far from the edges, so no ink is cut off
CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright's own download is not needed
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# ------------------------------------------------------------------ the templates
# Points (x, y) in a unit square, y downwards as on the canvas; each form is one or two
# strokes, in the order and direction people usually draw them. Only the shape matters:
# `person_drawing` sets the size and place, so a form is drawn one unit tall, at its
# natural width.

Stroke = tuple[tuple[float, float], ...]
Form = tuple[Stroke, ...]

_OVAL = ((0.50, 0.00), (0.32, 0.06), (0.22, 0.22), (0.18, 0.50), (0.22, 0.78), (0.32, 0.94),
         (0.50, 1.00), (0.68, 0.94), (0.78, 0.78), (0.82, 0.50), (0.78, 0.22), (0.68, 0.06),
         (0.52, 0.01))
_LOOP_OF_NINE = ((0.75, 0.15), (0.60, 0.02), (0.40, 0.00), (0.25, 0.12), (0.22, 0.30),
                 (0.35, 0.45), (0.55, 0.46), (0.72, 0.32), (0.75, 0.15))
_BODY_OF_FIVE = ((0.30, 0.00), (0.25, 0.42), (0.45, 0.36), (0.65, 0.40), (0.78, 0.55), (0.78, 0.78),
                 (0.65, 0.95), (0.45, 1.00), (0.20, 0.92))

TEMPLATES: dict[int, tuple[Form, ...]] = {
    0: ((_OVAL,),),
    1: (
        (((0.50, 0.00), (0.50, 1.00)),),  # a plain bar
        (((0.30, 0.22), (0.55, 0.00), (0.55, 1.00)),),  # with a flag
    ),
    2: (
        (((0.20, 0.22), (0.32, 0.06), (0.50, 0.00), (0.68, 0.06), (0.78, 0.22), (0.75, 0.40),
          (0.60, 0.58), (0.20, 1.00), (0.82, 1.00)),),  # a round top
        (((0.20, 0.10), (0.50, 0.00), (0.78, 0.15), (0.75, 0.35), (0.20, 1.00), (0.82, 1.00)),),  # angular
    ),
    3: (
        (((0.20, 0.12), (0.40, 0.00), (0.65, 0.02), (0.78, 0.15), (0.75, 0.32), (0.60, 0.45), (0.42, 0.48),
          (0.60, 0.51), (0.78, 0.62), (0.80, 0.80), (0.68, 0.95), (0.45, 1.00), (0.20, 0.90)),),  # two bowls
        (((0.22, 0.00), (0.78, 0.00), (0.45, 0.42), (0.65, 0.48), (0.80, 0.65), (0.78, 0.85), (0.60, 0.98),
          (0.40, 1.00), (0.20, 0.90)),),  # a flat top
    ),
    4: (
        (((0.32, 0.00), (0.18, 0.62), (0.85, 0.62)), ((0.65, 0.25), (0.65, 1.00))),  # open
        (((0.65, 0.00), (0.15, 0.65), (0.85, 0.65)), ((0.65, 0.00), (0.65, 1.00))),  # closed
    ),
    5: (
        (_BODY_OF_FIVE, ((0.30, 0.00), (0.80, 0.00))),  # the body, then the flag
        (((0.80, 0.00),) + _BODY_OF_FIVE,),  # in one stroke, the flag first
    ),
    6: (
        (((0.70, 0.00), (0.45, 0.15), (0.28, 0.40), (0.20, 0.65), (0.25, 0.88), (0.42, 1.00), (0.62, 0.97),
          (0.77, 0.82), (0.77, 0.65), (0.62, 0.52), (0.42, 0.52), (0.25, 0.65)),),
    ),
    7: (
        (((0.18, 0.00), (0.82, 0.00), (0.40, 1.00)),),  # plain
        (((0.18, 0.00), (0.82, 0.00), (0.40, 1.00)), ((0.40, 0.50), (0.80, 0.50))),  # with a bar
    ),
    8: (
        (((0.72, 0.12), (0.50, 0.00), (0.28, 0.10), (0.26, 0.30), (0.50, 0.47), (0.75, 0.65), (0.78, 0.87),
          (0.60, 1.00), (0.40, 1.00), (0.22, 0.87), (0.25, 0.65), (0.50, 0.47), (0.72, 0.30),
          (0.72, 0.12)),),  # one crossing stroke
        (((0.50, 0.00), (0.30, 0.10), (0.30, 0.35), (0.50, 0.45), (0.70, 0.35), (0.70, 0.10), (0.50, 0.00)),
         ((0.50, 0.45), (0.25, 0.58), (0.22, 0.85), (0.50, 1.00), (0.78, 0.85), (0.75, 0.58),
          (0.50, 0.45))),  # two loops
    ),
    9: (
        (_LOOP_OF_NINE + ((0.72, 0.50), (0.65, 1.00)),),  # the loop running into a curved stem
        (_LOOP_OF_NINE, ((0.75, 0.05), (0.75, 1.00))),  # the loop, then a straight stem
    ),
}

# ------------------------------------------------------------------ a person's hand


@dataclass(frozen=True)
class Hand:
    """How one severity's people draw. Lengths in pad pixels unless said otherwise."""
    size: tuple[float, float]  # the drawing's larger side, as fractions of the pad (drawn uniformly)
    place: str  # "centre" (near the middle), "anywhere" or "corner"
    slant: float  # degrees, drawn uniformly in +-slant: the top leans right for positive
    aspect: tuple[float, float]  # width multiplier (log-uniform between the two)
    jitter: float  # each template vertex moves by this much (standard deviation, fraction of the height)
    tremor: float  # standard deviation of the shaking hand along the path, pixels


HANDS: dict[int, Hand] = {
    # Neat: what the page invites, a digit filling most of the pad; jitter and tremor are
    # what a steady hand with a mouse still does (a couple of percent, half a pixel).
    1: Hand(size=(0.60, 0.80), place="centre", slant=10.0, aspect=(0.9, 1.1), jitter=0.02, tremor=0.5),
    # Someone in a hurry: small, wherever the pointer was, more slanted and shaky.
    2: Hand(size=(0.25, 0.40), place="anywhere", slant=20.0, aspect=(0.8, 1.25), jitter=0.04, tremor=1.5),
    # A scribble in a corner with a trackpad: tiny, very shaky; the 18 px pen is then a
    # third of the digit's height, which no MNIST digit looks like.
    3: Hand(size=(0.15, 0.20), place="corner", slant=25.0, aspect=(0.75, 1.33), jitter=0.06, tremor=2.5),
}
CENTRE_WOBBLE = 0.05  # a neat drawing's centre is within +-5% of the pad of the middle
CORNER_INSET = 0.05  # a corner drawing starts within 5% of the pad of its two edges
# Pixels between the points of a drawing: the browser hands the page one pointer move a
# frame (60 Hz), and at a steady ~500 px/s that is 8 px. It also sets the time a drawing
# takes: Chromium acknowledges each of Playwright's moves at the next frame (~17 ms, a
# measured floor no launch flag moved), so a neat 8 takes ~1 s, about a person's pace.
SPACING = 8.0
TREMOR_SPAN = 3  # points one shake lasts (a moving average): ~24 px of path, a wobble, not grain

Strokes = tuple[np.ndarray, ...]  # each (n, 2) float: x, y in pad pixels


def resample(points: np.ndarray, spacing: float) -> np.ndarray:
    """A polyline as points every `spacing` along it (both ends kept): what a mouse reports."""
    points = np.asarray(points, float)
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    along = np.concatenate([[0.0], np.cumsum(steps)])
    if along[-1] == 0:  # a dot
        return points[:1]
    count = max(int(np.ceil(along[-1] / spacing)), 1) + 1
    at = np.linspace(0.0, along[-1], count)
    return np.stack([np.interp(at, along, points[:, 0]), np.interp(at, along, points[:, 1])], axis=1)


def _tremor(count: int, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """(count, 2) smooth noise of standard deviation `amplitude`: a moving average of
    TREMOR_SPAN unit normals has deviation 1/sqrt(TREMOR_SPAN), scaled back up."""
    noise = rng.normal(size=(count + TREMOR_SPAN - 1, 2))
    kernel = np.full(TREMOR_SPAN, 1.0 / TREMOR_SPAN)
    smooth = np.stack([np.convolve(noise[:, k], kernel, mode="valid") for k in range(2)], axis=1)
    return smooth * amplitude * np.sqrt(TREMOR_SPAN)


def _fit(strokes: Sequence[np.ndarray], side: float, centre: np.ndarray) -> Strokes:
    """The strokes scaled so their bounding box's larger side is `side`, centred at `centre`."""
    points = np.concatenate(strokes)
    low, high = points.min(axis=0), points.max(axis=0)
    scale = side / max(float((high - low).max()), 1e-9)
    middle = (low + high) / 2
    return tuple((s - middle) * scale + centre for s in strokes)


def _place(extent: np.ndarray, hand: Hand, rng: np.random.Generator) -> np.ndarray:
    """Where the centre of a drawing `extent` (width, height) pixels goes on the pad."""
    if hand.place == "centre":
        return PAD / 2 + rng.uniform(-CENTRE_WOBBLE, CENTRE_WOBBLE, 2) * PAD
    if hand.place == "anywhere":
        return rng.uniform(MARGIN + extent / 2, PAD - MARGIN - extent / 2)
    if hand.place == "corner":
        inset = MARGIN + rng.uniform(0, CORNER_INSET * PAD, 2) + extent / 2
        far = rng.integers(0, 2, 2).astype(bool)  # right and/or bottom corner
        return np.where(far, PAD - inset, inset)
    raise ValueError(f"place must be 'centre', 'anywhere' or 'corner', got {hand.place!r}")


def person_drawing(form: Form, severity: int, rng: np.random.Generator) -> Strokes:
    """One person's drawing of a template form at `severity` (see HANDS): strokes of
    points every ~SPACING pixels on the pad, in drawing order."""
    if severity not in HANDS:
        raise ValueError(f"severity must be one of {tuple(HANDS)}, got {severity!r}")
    hand = HANDS[severity]
    strokes = [np.asarray(stroke, float) for stroke in form]
    # The shape: every vertex a little off, then slanted and narrowed or widened about the
    # middle (one affine map for the whole digit, as a hand keeps its slant).
    strokes = [s + rng.normal(0.0, hand.jitter, s.shape) for s in strokes]
    slant = np.tan(np.deg2rad(rng.uniform(-hand.slant, hand.slant)))
    aspect = np.exp(rng.uniform(*np.log(hand.aspect)))
    middle = np.concatenate(strokes).mean(axis=0)
    strokes = [np.stack([(s[:, 0] - middle[0]) * aspect - slant * (s[:, 1] - middle[1]), s[:, 1] - middle[1]],
                        axis=1) for s in strokes]
    # The size first, so the mouse's points and the tremor are in pixels...
    side = rng.uniform(*hand.size) * PAD
    strokes = _fit(strokes, side, np.zeros(2))
    strokes = [resample(s, SPACING) for s in strokes]
    strokes = [s + _tremor(len(s), hand.tremor, rng) for s in strokes]
    # ...and again after the shaking, so the drawing is exactly `side` and stays on the pad.
    strokes = _fit(strokes, side, np.zeros(2))
    extent = np.ptp(np.concatenate(strokes), axis=0)
    centre = _place(extent, hand, rng)
    return tuple(s + centre for s in strokes)


@dataclass(frozen=True)
class Drawing:
    digit: int
    form: int  # which of TEMPLATES[digit]
    severity: int
    strokes: Strokes


def drawings(severity: int, per_digit: int, seed: int = 0) -> list[Drawing]:
    """`per_digit` drawings of each digit at `severity`, the forms taken in turn."""
    # One stream per severity: more drawings at one severity change no other's.
    rng = np.random.default_rng([seed, severity])
    out = []
    for digit, forms in TEMPLATES.items():
        for i in range(per_digit):
            form = i % len(forms)
            out.append(Drawing(digit, form, severity, person_drawing(forms[form], severity, rng)))
    return out


# ------------------------------------------------------------------ the page


@dataclass(frozen=True)
class Reading:
    """What the page showed for one drawing."""
    label: str  # #label as shown: the class's name ("–": no answer; anything else counts as wrong)
    confidence: str  # #confidence: "97.1% sure", or "3? could be 8" under the run's threshold
    seen: np.ndarray  # #seen: the (28, 28) uint8 image the network read
    error: str  # #error's text, "" when none


# Shown: no request on its way (the page sends the newest drawing after the one in flight,
# and sets data-busy before its pointerup handler returns) and an answer or an error.
_SHOWN = ("() => !document.body.dataset.busy && (document.getElementById('label').textContent !== '–'"
          " || !document.getElementById('error').hidden)")
_SEEN = "() => Array.from(document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data)"
# Pages drawing at once. Each mouse move waits for its page's next frame, and pages wait
# side by side. Measured, 150 drawings on 2 cores under load: 1 page 118 s, 3 pages 72 s,
# 6 pages 67 s (the CPUs, drawing and answering, are then the limit).
PAGES = 3


async def _draw(page, strokes: Strokes) -> None:
    """The strokes with the mouse on #pad: press, one move per point, release. One step a
    point: the points are already the mouse's reports, and each step is a pointer event of
    its own (a frame's wait), so more steps would only interpolate straight lines, slower."""
    box = await page.locator("#pad").bounding_box()
    k = box["width"] / PAD  # CSS pixels per pad pixel (the canvas may be shown scaled)
    for stroke in strokes:
        x, y = stroke[0]
        await page.mouse.move(box["x"] + x * k, box["y"] + y * k)
        await page.mouse.down()
        for x, y in stroke[1:]:
            await page.mouse.move(box["x"] + x * k, box["y"] + y * k, steps=1)
        await page.mouse.up()


async def _read(page) -> Reading:
    seen = np.array(await page.evaluate(_SEEN), np.uint8).reshape(28, 28, 4)[..., 0]
    error = page.locator("#error")
    return Reading(await page.locator("#label").text_content(), await page.locator("#confidence").text_content(),
                   seen, "" if await error.is_hidden() else await error.text_content())


async def _draw_all(url: str, strokes: Sequence[Strokes], pages: int, executable_path: str | None,
                    timeout_ms: float) -> list[Reading]:
    from playwright.async_api import async_playwright

    readings: list[Reading | None] = [None] * len(strokes)
    todo = iter(range(len(strokes)))  # shared: each page takes the next drawing when it is free
    problems: list[str] = []

    async def one_page(browser) -> None:
        page = await browser.new_page(viewport={"width": 900, "height": 700})
        page.on("pageerror", lambda e: problems.append(str(e)))
        await page.goto(url.rstrip("/") + "/")
        await page.wait_for_selector("body[data-ready=true]", timeout=timeout_ms)
        for i in todo:
            await page.keyboard.press("Escape")  # the page's Clear
            await _draw(page, strokes[i])
            await page.wait_for_function(_SHOWN, timeout=timeout_ms)
            readings[i] = await _read(page)

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable_path, args=CHROMIUM_ARGS)
        try:
            await asyncio.gather(*(one_page(browser) for _ in range(max(1, min(pages, len(strokes))))))
        finally:
            await browser.close()
    if problems:  # a script error means the page, not the network, decided the answers
        raise RuntimeError("the page failed while drawing: " + "; ".join(problems))
    return readings


def draw_on_page(url: str, drawn: Sequence[Drawing | Strokes], *, pages: int = PAGES,
                 executable_path: str | None = CHROMIUM, timeout_ms: float = 10_000) -> list[Reading]:
    """Draw each drawing (a Drawing, or just its strokes) on the page at `url` in headless
    Chromium and read its answer: one Reading per drawing, in order.

    Each drawing starts on a cleared pad (Escape, the page's shortcut for Clear), is drawn
    stroke by stroke with the mouse, and is read once the page shows its answer for the
    whole drawing. `pages` tabs draw at once, each a user of its own. `executable_path`
    None uses Playwright's own browser download. Runs its own event loop (asyncio.run),
    so it cannot be called from inside one.
    """
    if executable_path and not Path(executable_path).exists():
        raise FileNotFoundError(f"{executable_path}: no Chromium there; install Debian's chromium, "
                                "or pass executable_path=None for Playwright's own")
    strokes = [d.strokes if isinstance(d, Drawing) else d for d in drawn]
    return asyncio.run(_draw_all(url, strokes, pages, executable_path, timeout_ms))


# ------------------------------------------------------------------ the server


@contextlib.contextmanager
def serving(run_path: str | Path, *, start_timeout: float = 120.0) -> Iterator[str]:
    """`python -m mnistlab serve RUN --port 0`, the real command on a free loopback port:
    gives its URL, stops it on leaving."""
    proc = subprocess.Popen([sys.executable, "-m", "mnistlab", "serve", str(run_path), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    found = threading.Event()

    def drain():  # keep reading so the pipe never fills; remember what it said
        for line in proc.stdout:
            lines.append(line)
            if re.search(r"http://127\.0\.0\.1:\d+", line):
                found.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        if not found.wait(start_timeout):
            raise RuntimeError(f"`mnistlab serve {run_path}` did not say where it listens within "
                               f"{start_timeout:.0f} s:\n" + "".join(lines))
        yield re.search(r"http://127\.0\.0\.1:\d+", "".join(lines)).group(0)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------ measuring


def describe(severity: int) -> str:
    """A severity in words, for a Row's `level` and for tables."""
    hand = HANDS[severity]
    where = {"centre": "centred", "anywhere": "anywhere", "corner": "in a corner"}[hand.place]
    return (f"{hand.size[0]:.0%}-{hand.size[1]:.0%} of the pad, {where}, slant +-{hand.slant:g} deg, "
            f"tremor {hand.tremor:g} px")


def measure_at(url: str, *, per_digit: int = 5, seed: int = 0, severities: Sequence[int] = (1, 2, 3),
               pages: int = PAGES, executable_path: str | None = CHROMIUM) -> list[robustness.Row]:
    """Accuracy of the page served at `url` on `per_digit` generated drawings of each digit
    at each severity: one robustness.Row per severity. All drawings go through one browser."""
    drawn = [d for severity in severities for d in drawings(severity, per_digit, seed)]
    readings = draw_on_page(url, drawn, pages=pages, executable_path=executable_path)
    rows = []
    for severity in severities:
        right = [r.label == str(d.digit) for d, r in zip(drawn, readings) if d.severity == severity]
        rows.append(robustness.Row(FAMILY, severity, describe(severity), float(np.mean(right)), len(right)))
    return rows


def measure(run_path: str | Path, *, per_digit: int = 5, seed: int = 0, severities: Sequence[int] = (1, 2, 3),
            pages: int = PAGES, executable_path: str | None = CHROMIUM) -> list[robustness.Row]:
    """Serve the run (`mnistlab serve` on a free loopback port) and measure its page with
    `measure_at`: what a docs generator calls. 150 drawings by default."""
    with serving(run_path) as url:
        return measure_at(url, per_digit=per_digit, seed=seed, severities=severities, pages=pages,
                          executable_path=executable_path)
