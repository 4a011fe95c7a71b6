"""A trained run, loaded once, answering batches of 28x28 images with class probabilities.

    predictor = Predictor.from_run("runs/20261127-101500-fast")
    probs = predictor.probabilities(images)        # (N, 28, 28) uint8 -> (N, classes) float32
    predictor.top(probs[0], k=3)                   # [(7, 0.998), (9, 0.001), (2, 0.0004)]
    probs, logits = predictor.outputs(images)      # both from one pass
    predictor.assess(probs[0], image=images[0], logits=logits[0])
                                                   # {"confidence", "unsure", "runner_up", "not_a_digit", ...}

A run trained with validation data carries its calibration (`calibration.fit`, in its
summary): the probabilities are then temperature-scaled, so the top one is a confidence,
and a prediction under the run's threshold is flagged unsure, naming the runner-up. Its
novelty fit (`novelty.fit`, in the calibration) flags an input that does not look like a
digit at all (a face, a scribble, a filled shape), saying why.

The parameters go to the device once. The prediction is one jitted program per batch
size in {1, 2, 4, ..., max_batch}: a batch is zero-padded up to the next of those sizes,
so at most log2(max_batch) + 1 programs are ever compiled (`warm_up` compiles them all
up front, for a server whose first requests should not wait for XLA). Larger inputs go
through in batches of `max_batch`. Inputs are uint8, as in training: `model.logits`
scales them by the spec's `input_rescale`.

`expand` and `predict_files` are `mnistlab predict`'s file handling: command-line
arguments to image files, then decode + preprocess (imaging) and predict, batch by batch,
with a failed file reported in its place instead of stopping the others.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np

from mnistlab import data, imaging, model, novelty, runs
from mnistlab.errors import UserError
from mnistlab.spec import RunSpec


class Predictor:
    """Class probabilities from a run's network (see the module docstring)."""

    def __init__(self, spec: RunSpec, params: dict[str, np.ndarray], *, max_batch: int = 256,
                 source: Path | None = None, summary: dict[str, Any] | None = None):
        import jax

        if max_batch < 1 or max_batch & (max_batch - 1):
            raise ValueError(f"max_batch must be a power of two, got {max_batch}")
        self.spec = spec
        self.source = source
        self.summary = summary or {}
        self.max_batch = max_batch
        info = data.DATASETS.get(spec.dataset)
        self.image_shape: tuple[int, ...] = info.image_shape if info else (28, 28)
        self.class_names: tuple[str, ...] = info.class_names if info else ()
        self.num_classes = int(params[f"{model.layer_names(spec.model)[self._last_dense()]}/kernel"].shape[1])
        self._params = {k: jax.device_put(np.asarray(v, np.float32)) for k, v in params.items()}
        # Temperature scaling is for a softmax's one answer; sigmoid outputs are left as trained.
        found = self.summary.get("calibration") if spec.model.output_activation == "softmax" else None
        self.calibration: dict[str, Any] | None = found
        # Runs from before the novelty fit (or without validation data) have none: no flag.
        self.novelty = novelty.Novelty.from_dict(found["novelty"]) if found and found.get("novelty") else None
        model_spec, temperature = spec.model, float(found["temperature"]) if found else 1.0
        # One function, traced once per padded batch size (jit's own cache holds them). It gives
        # the logits too, for `calibration` and `novelty`: XLA computes the network once for
        # both (it merges common subexpressions: the fast preset's program has one matrix
        # product per dense layer, as without the logits).
        self._fn = jax.jit(lambda p, x: (model.probabilities(model_spec, p, x, temperature),
                                         model.logits(model_spec, p, {}, x)))  # thread-safe to call

    @classmethod
    def from_run(cls, path: str | Path, **kwargs) -> "Predictor":
        run = runs.open_run(path)
        return cls(run.spec, run.params(), source=run.path, summary=run.summary, **kwargs)

    def _last_dense(self) -> int:
        return max(i for i, layer in enumerate(self.spec.model.layers) if layer.type == "dense")

    def buckets(self) -> list[int]:
        """The padded batch sizes, 1, 2, 4, ..., max_batch."""
        return [1 << i for i in range(self.max_batch.bit_length())]

    def warm_up(self) -> None:
        """Compile every bucket now rather than on the first request of its size."""
        for n in self.buckets():
            self._run(np.zeros((n, *self.image_shape), np.uint8))

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, logits = self._fn(self._params, batch)
        return np.asarray(probs), np.asarray(logits)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, *image_shape) uint8 -> (N, num_classes) float32 softmax (or sigmoid) outputs."""
        return self.outputs(images)[0]

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(N, *image_shape) uint8 -> (N, num_classes) float32, before the output activation
        (and any temperature): what `calibration.fit` and `novelty.fit` fit on."""
        return self.outputs(images)[1]

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, logits) of (N, *image_shape) uint8 images, from one pass."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != self.image_shape:
            raise ValueError(f"expected (N, {', '.join(map(str, self.image_shape))}) uint8 images, "
                             f"got {images.shape} {images.dtype}")
        n = len(images)
        probs, logits = (np.empty((n, self.num_classes), np.float32) for _ in range(2))
        for start in range(0, n, self.max_batch):
            batch = images[start:start + self.max_batch]
            size = 1 << (len(batch) - 1).bit_length()  # the next power of two
            if size != len(batch):
                padded = np.zeros((size, *self.image_shape), np.uint8)
                padded[: len(batch)] = batch
                batch = padded
            rows = slice(start, start + self.max_batch)
            kept = min(self.max_batch, n - start)
            batch_probs, batch_logits = self._run(batch)
            probs[rows], logits[rows] = batch_probs[:kept], batch_logits[:kept]
        return probs, logits

    def label(self, k: int) -> str:
        return self.class_names[k] if k < len(self.class_names) else str(k)

    @staticmethod
    def top(probs: np.ndarray, k: int = 3) -> list[tuple[int, float]]:
        """The k most probable classes of one output row, most probable first (ties: lower class)."""
        order = np.argsort(-probs, kind="stable")[:k]
        return [(int(c), float(probs[c])) for c in order]

    def assess(self, probs: np.ndarray, *, image: np.ndarray | None = None,
               logits: np.ndarray | None = None) -> dict[str, Any]:
        """How sure one prediction is: its confidence (calibrated when the run is), the
        runner-up, and `unsure` when under the run's threshold (None: a run without a
        calibration, trained before it existed or without validation data).

        Given the image and its logits too, `not_a_digit` says whether the input looks like
        no digit at all and `not_a_digit_reason` why (`novelty`); both None for a run
        without a novelty fit, or when the image or logits are not given.
        """
        (_, confidence), (second, chance) = self.top(probs, 2)
        threshold = self.calibration["unsure_below"] if self.calibration else None
        reason, checked = None, self.novelty is not None and image is not None and logits is not None
        if checked:
            (reason,) = self.novelty.reasons(np.asarray(image)[None], np.asarray(logits)[None])
        return {"confidence": confidence, "calibrated": threshold is not None,
                "unsure": None if threshold is None else confidence < threshold,
                "runner_up": {"class": second, "label": self.label(second), "probability": chance},
                "not_a_digit": (reason is not None) if checked else None, "not_a_digit_reason": reason}

    def description(self) -> dict[str, Any]:
        """What the network is: for `GET /api/model` and `mnistlab predict --json` users.

        `parameters` counts every weight, batch normalization's moving statistics
        included (Keras' total of trainable and non-trainable parameters).
        """
        names = model.layer_names(self.spec.model)
        layers = [describe_layer(name, layer) for name, layer in zip(names, self.spec.model.layers)]
        shapes = model.parameter_shapes(self.spec.model, self.image_shape)
        test = self.summary.get("test") or {}
        return {
            "name": self.spec.name,
            "run": self.source.name if self.source else None,  # its name: the path is the server's business
            "dataset": self.spec.dataset,
            "input": {"shape": list(self.image_shape), "dtype": "uint8",
                      "rescale": self.spec.model.input_rescale},
            "output_activation": self.spec.model.output_activation,
            "classes": [self.label(k) for k in range(self.num_classes)],
            "layers": layers,
            "parameters": sum(int(np.prod(shape)) for shape in shapes.values()),
            "test_accuracy": test.get("accuracy"),
        }


def describe_layer(name: str, layer) -> dict[str, Any]:
    """{"name", "type", and the settings the layer type describes itself by}, pairs as JSON lists."""
    entry: dict[str, Any] = {"name": name, "type": layer.type}
    for key in layer.described:
        value = getattr(layer, key)
        entry[key] = list(value) if isinstance(value, tuple) else value
    return entry


# ------------------------------------------------------------------------ files


STDIN = "-"


def expand(inputs: Iterable[str], stdin: BinaryIO | None = None) -> list[tuple[str, Path | bytes]]:
    """Command-line inputs -> (name, path) per image; `-` is one image read from `stdin`
    (default: the process's), as bytes.

    A folder gives its image files (by suffix: .png .jpg .jpeg .bmp .gif, any case),
    sorted by name, not recursing. A missing path is kept: it fails on its own when read,
    so the other images are still predicted.
    """
    inputs = list(inputs)
    if inputs.count(STDIN) > 1:
        raise UserError("- (stdin) can be given once: it holds one image")
    items: list[tuple[str, Path | bytes]] = []
    for text in inputs:
        if text == STDIN:
            items.append(("<stdin>", (stdin or sys.stdin.buffer).read()))
            continue
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in imaging.SUFFIXES and p.is_file())
            if not found:
                raise UserError(f"{path}: the folder holds no image files ({', '.join(imaging.SUFFIXES)}). "
                                "Give image files or a folder of them.")
            items.extend((str(p), p) for p in found)
        else:
            items.append((text, path))
    return items


def _prepare(item: tuple[str, Path | bytes], raw_input: bool) -> np.ndarray | imaging.ImageError:
    name, source = item
    try:
        return imaging.load(source, name=name, raw_input=raw_input)
    except imaging.ImageError as e:
        return e


def predict_files(predictor: Predictor, items: list[tuple[str, Path | bytes]], *, raw_input: bool = False,
                  batch: int = 256) -> Iterator[tuple[str, np.ndarray | None, np.ndarray | imaging.ImageError,
                                                       np.ndarray | None]]:
    """(name, 28x28 pixels or None, probabilities or the ImageError, logits or None) per
    item, in order (the pixels and logits: for `Predictor.assess`'s novelty check).

    Files are decoded `batch` at a time, then the batch's good images go through the
    network together. Decoding is sequential: a pool of 2 threads gained nothing
    measurable here (3,000 MNIST PNGs: 1.5-2.0 s either way; 60 1200x1200 PNGs: the same).
    """
    for start in range(0, len(items), batch):
        part = items[start:start + batch]
        prepared = [_prepare(item, raw_input) for item in part]
        good = [p for p in prepared if isinstance(p, np.ndarray)]
        answers = zip(*predictor.outputs(np.stack(good))) if good else iter([])
        for (name, _), p in zip(part, prepared):
            if isinstance(p, np.ndarray):
                yield name, p, *next(answers)
            else:
                yield name, None, p, None
