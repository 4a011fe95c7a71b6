"""How a trained network reads digits that are not MNIST's: accuracy under named corruptions.

    result = robustness.measure(predictor, images, labels)        # every family, every severity
    result = robustness.run("runs/20261201-101500-cnn")           # the test set; saved in the run
    result.table(), result.accuracy("blur", 2), result.held_out_mean()

Each family is a way real digits differ from MNIST's, at three severities (1 mild, 2
middle, 3 severe), applied to the 28x28 MNIST images with their labels kept:

- pixel families change the 28x28 image the network reads (a low-resolution scan, blur,
  a fine or a fat pen, a slanted hand, JPEG compression);
- scene families draw a picture a user would give `predict` or the page (the digit small
  somewhere on a larger canvas; dark ink on light paper photographed under uneven light,
  with sensor noise) and send it through the real decode-free path, `imaging.mnist_preprocess`,
  so the preprocessing is measured with the network.

Every corruption is a pure function of the images, the severity and a seed (NumPy, SciPy
and Pillow, no JAX), so a figure is reproducible and the same corrupted images can be
read by several runs. `HELD_OUT` names the families no preset trains on in any form
(low resolution, blur, JPEG, photos): the `robust` preset's augmentation (rotation, zoom
per axis, shifts, `random_stroke_width`) makes changes of the other families' kind, with
other operations and parameters, so its score on those is not a held-out one.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from mnistlab import imaging

SEVERITIES = (1, 2, 3)
MIDDLE = 2
FILE = "robustness.json"  # in the run folder: what `report` shows
SIZE = imaging.SIZE


# ------------------------------------------------------------------ pixel families
# (N, 28, 28) uint8 light-on-dark in, the same out.


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def low_resolution(images: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """A scan at `side` x `side` pixels (area-averaged), enlarged back to 28 (bilinear)."""
    from PIL import Image

    def one(image):
        small = Image.fromarray(image).resize((side, side), Image.Resampling.BOX)
        return np.asarray(small.resize((SIZE, SIZE), Image.Resampling.BILINEAR))

    return np.stack([one(image) for image in images])


def blur(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """An out-of-focus picture: a Gaussian of `sigma` pixels (of 28), the ink's total kept."""
    out = ndimage.gaussian_filter(images.astype(np.float32), sigma=(0, sigma, sigma), mode="constant")
    # Blur spreads the ink thin; a camera's exposure would bring the peak back up.
    peak = out.max(axis=(1, 2), keepdims=True)
    return _to_uint8(out * (255.0 / np.maximum(peak, 1.0)))


# Footprints from mild to severe: one pixel wider or thinner on one side (2x2), then on
# every side along the axes (a cross), then diagonally as well (3x3).
_FOOTPRINTS = {"2x2": np.ones((2, 2), bool), "cross": ndimage.generate_binary_structure(2, 1),
               "3x3": np.ones((3, 3), bool)}


def thin_strokes(images: np.ndarray, footprint: str, rng: np.random.Generator) -> np.ndarray:
    """A fine pen: grey-level erosion of every stroke by the named footprint."""
    return ndimage.grey_erosion(images, footprint=_FOOTPRINTS[footprint][None], mode="constant", cval=0)


def thick_strokes(images: np.ndarray, footprint: str, rng: np.random.Generator) -> np.ndarray:
    """A fat marker: grey-level dilation of every stroke by the named footprint."""
    return ndimage.grey_dilation(images, footprint=_FOOTPRINTS[footprint][None], mode="constant", cval=0)


def rotation_shear(images: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """A slanted hand: rotated by +-`degrees` and sheared by +-degrees/100 (signs drawn per
    image) about the centre, bilinear."""
    n = len(images)
    angle = np.deg2rad(degrees) * rng.choice([-1.0, 1.0], n)
    shear = degrees / 100 * rng.choice([-1.0, 1.0], n)
    c = (SIZE - 1) / 2
    rows, cols = np.meshgrid(np.arange(SIZE) - c, np.arange(SIZE) - c, indexing="ij")
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    # Where each output pixel reads: the inverse rotation, then the inverse shear.
    r = cos * rows + sin * cols
    q = -sin * rows + cos * cols - shear[:, None, None] * r
    index = np.broadcast_to(np.arange(n)[:, None, None], r.shape)
    out = ndimage.map_coordinates(images.astype(np.float32), [index, r + c, q + c], order=1, mode="constant")
    return _to_uint8(out)


def jpeg(images: np.ndarray, quality: int, rng: np.random.Generator) -> np.ndarray:
    """A picture saved as JPEG at `quality` (Pillow's 1..95 scale), read back."""
    from PIL import Image

    def one(image):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
        return np.asarray(Image.open(buf))

    return np.stack([one(image) for image in images])


# ------------------------------------------------------------------ scene families
# A picture of the digit, then the MNIST preprocessing `predict` and the page use.

CANVAS = 140  # the page sends 140x140 pictures


def _preprocess(pictures) -> np.ndarray:
    """Each picture through imaging.mnist_preprocess; one with no digit left in it (all
    noise) becomes a blank input, which the network gets wrong, as a user's would be."""
    out = []
    for picture in pictures:
        try:
            out.append(imaging.mnist_preprocess(picture))
        except imaging.ImageError:
            out.append(np.zeros((SIZE, SIZE), np.uint8))
    return np.stack(out)


def _paste(image: np.ndarray, side: int, rng: np.random.Generator, canvas: int) -> np.ndarray:
    """The 28x28 image scaled to side x side, put at a random place of a black canvas."""
    from PIL import Image

    scaled = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR))
    top, left = rng.integers(0, canvas - side + 1, 2)
    picture = np.zeros((canvas, canvas), np.uint8)
    picture[top:top + side, left:left + side] = scaled
    return picture


def small_off_centre(images: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """The digit drawn small anywhere on a 140x140 pad: its 28-pixel frame `side` pixels wide."""
    return _preprocess(_paste(image, side, rng, CANVAS) for image in images)


def photo(images: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """A phone photo of paper: dark ink on grey-white paper, 4x the size, lit unevenly
    (brightness falling linearly by `level` of white across a random direction), with
    Gaussian sensor noise of level / 6 of white."""
    from PIL import Image

    side = 4 * SIZE
    rows, cols = np.meshgrid(np.linspace(-0.5, 0.5, side), np.linspace(-0.5, 0.5, side), indexing="ij")

    def one(image):
        ink = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR)) / 255.0
        theta = rng.uniform(0, 2 * np.pi)
        light = 1.0 - level * (0.5 + np.cos(theta) * rows + np.sin(theta) * cols)
        paper, pen = 0.9 * light, 0.15 * light
        grey = paper + (pen - paper) * ink + rng.normal(0.0, level / 6, (side, side))
        return _to_uint8(grey * 255.0)

    return _preprocess(one(image) for image in images)


# ------------------------------------------------------------------ the families


@dataclass(frozen=True)
class Family:
    name: str
    description: str  # what a user would see, for tables and figures
    unit: str  # what the severity numbers are
    levels: tuple  # the parameter at severities 1, 2, 3
    corrupt: Callable[[np.ndarray, object, np.random.Generator], np.ndarray]


FAMILIES: tuple[Family, ...] = (
    Family("low_resolution", "a low-resolution scan", "pixels a side", (14, 10, 8), low_resolution),
    Family("blur", "out of focus", "Gaussian sigma, pixels", (0.7, 1.0, 1.4), blur),
    Family("thin_strokes", "a fine pen", "erosion footprint", ("2x2", "cross", "3x3"), thin_strokes),
    Family("thick_strokes", "a fat marker", "dilation footprint", ("2x2", "cross", "3x3"), thick_strokes),
    Family("jpeg", "JPEG artefacts", "quality", (40, 20, 10), jpeg),
    Family("photo", "a photo of paper, uneven light and noise", "light falloff", (0.2, 0.4, 0.6), photo),
    Family("rotation_shear", "a slanted hand", "degrees (shear degrees/100)", (15, 25, 35), rotation_shear),
    Family("small_off_centre", "small and off-centre on the pad", "pixels of 140", (40, 28, 20), small_off_centre),
)
BY_NAME = {family.name: family for family in FAMILIES}
# Families nothing in a preset trains on, in any form (see the module docstring).
HELD_OUT = ("low_resolution", "blur", "jpeg", "photo")
# What the rows measured elsewhere are (`drawing`: strokes drawn on the real page).
DESCRIPTIONS = {"clean": "MNIST as it is", "page_drawing": "drawn on the page with the mouse"}


def corrupt(name: str, images: np.ndarray, severity: int, seed: int = 0) -> np.ndarray:
    """(N, 28, 28) uint8 MNIST images under family `name` at `severity` (1, 2 or 3)."""
    family = BY_NAME[name]
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    images = np.ascontiguousarray(images, np.uint8)
    # One stream per (family, severity): adding a family changes no other's images.
    rng = np.random.default_rng([seed, FAMILIES.index(family), severity])
    return family.corrupt(images, family.levels[severity - 1], rng)


# ------------------------------------------------------------------ measuring


@dataclass(frozen=True)
class Row:
    family: str
    severity: int  # 0: the clean images
    level: object
    accuracy: float
    samples: int


@dataclass(frozen=True)
class Result:
    rows: tuple[Row, ...]
    split: str  # "test" or "validation"
    seed: int

    def accuracy(self, family: str, severity: int) -> float:
        return next(r.accuracy for r in self.rows if r.family == family and r.severity == severity)

    @property
    def clean(self) -> float:
        return self.accuracy("clean", 0)

    def held_out_mean(self, severity: int = MIDDLE) -> float | None:
        """The mean accuracy over the held-out families at `severity`: the `robust` target
        (None when some of them were not measured)."""
        found = [r.accuracy for r in self.rows if r.family in HELD_OUT and r.severity == severity]
        return float(np.mean(found)) if len(found) == len(HELD_OUT) else None

    def families(self) -> list[str]:
        """The measured families, in the order measured (clean first)."""
        return list(dict.fromkeys(r.family for r in self.rows))

    def table(self) -> list[dict]:
        """One row per family: its accuracy at each severity (clean's is the same three times)."""
        out = []
        for name in self.families():
            known = BY_NAME.get(name)
            out.append({"family": name, "description": known.description if known else DESCRIPTIONS.get(name, name),
                        "held_out": None if name == "clean" else name in HELD_OUT,
                        **{f"severity {s}": self.accuracy(name, 0 if name == "clean" else s) for s in SEVERITIES}})
        return out

    def as_dict(self) -> dict:
        return {"split": self.split, "seed": self.seed, "held_out": list(HELD_OUT),
                "held_out_mean": {str(s): self.held_out_mean(s) for s in SEVERITIES},
                "rows": [asdict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, found: dict) -> "Result":
        return cls(tuple(Row(**row) for row in found["rows"]), found["split"], found["seed"])


def measure(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray, *,
            families: tuple[str, ...] | None = None, seed: int = 0, split: str = "test") -> Result:
    """Accuracy of `predict` ((N, 28, 28) uint8 -> (N, classes) scores) on the clean images
    and on every family at every severity."""
    labels = np.asarray(labels)

    def score(x):
        return float(np.mean(np.argmax(predict(x), axis=1) == labels))

    rows = [Row("clean", 0, None, score(images), len(labels))]
    for name in families or tuple(BY_NAME):
        family = BY_NAME[name]
        rows += [Row(name, severity, family.levels[severity - 1], score(corrupt(name, images, severity, seed)),
                     len(labels)) for severity in SEVERITIES]
    return Result(tuple(rows), split, seed)


def images_for(run, split: str, data_dir=None, limit: int | None = None):
    """The (images, labels) a run is measured on: the test set, or its own validation
    split (what the `robust` preset was chosen on: the test set is read once, at the end)."""
    from mnistlab import data, populations

    arrays = data.load(run.spec.dataset, data_dir)
    if split == "test":
        images, labels = arrays.test_images, arrays.test_labels
    elif split == "validation":
        _, _, images, labels = populations.split(run.spec, arrays)
        if not len(labels):
            from mnistlab.errors import UserError
            raise UserError(f"{run.path}: trained without validation data; measure it on the test set "
                            "(--split test), or train with training.validation.fraction > 0")
    else:
        raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
    return images[:limit], labels[:limit]


def run(path: str | Path, *, split: str = "test", data_dir=None, limit: int | None = None, seed: int = 0,
        save: bool = True) -> Result:
    """Measure a run folder's network; the test set's result is saved in the run for `report`."""
    from mnistlab import predict, runs

    opened = runs.open_run(path)
    predictor = predict.Predictor.from_run(opened.path)
    images, labels = images_for(opened, split, data_dir, limit)
    result = measure(predictor.probabilities, images, labels, seed=seed, split=split)
    if save and split == "test" and limit is None:
        runs.atomic_write(opened.path / FILE, json.dumps(result.as_dict(), indent=2) + "\n")
    return result


def load(run_dir: Path) -> Result | None:
    """A run's saved result, or None."""
    path = Path(run_dir) / FILE
    return Result.from_dict(json.loads(path.read_text())) if path.exists() else None
