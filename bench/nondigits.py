"""How often `mnistlab predict` flags pictures that hold no digit, and real digits wrongly.

Draws non-digit pictures of each kind of `novelty.KINDS` (a smiley face, scribbles,
pixel noise, smooth blurry textures, filled shapes, grids and text-like dashes), dark on
white at 64-200 pixels, encodes each as PNG and sends it through what `mnistlab predict`
does: decode, MNIST preprocessing, the network, `Predictor.assess`. Per kind it counts
the pictures refused outright (no ink, as a blank page), flagged "not a digit", and, of
the rest, flagged unsure; then the same for MNIST test digits, as 28x28 PNGs through the
same preprocessing and as the arrays themselves (`--raw`), and for real digits unlike
MNIST's: the first --corrupted test digits under each corruption of `robustness` (blur,
low resolution, a fine pen, a fat marker, JPEG, photos, slant, small drawings), at its
three severities, as that module gives them to the network.

Without --run, the fast preset (784-256-10, 5 epochs) is trained with a 10% validation
split, which calibration and the novelty fit need, into a temporary folder (~10 s).

    .venv/bin/python bench/nondigits.py [--run RUN] [--count 200] [--digits 10000] [--corrupted 1000]
                                        [--seed 0] [--out result.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def train_fast_network(runs_dir: Path) -> Path:
    import mnistlab

    spec = mnistlab.with_overrides(mnistlab.preset("fast"), ["training.validation_split=0.1"])
    return mnistlab.train(spec, runs_dir=runs_dir, test=True, verbose=0).run_dir


def judge(predictor, pictures: list[np.ndarray], raw: bool = False) -> dict:
    """Counts of refused, not-a-digit and (of the rest) unsure answers for grey pictures."""
    from mnistlab import imaging

    prepared, refused = [], 0
    for grey in pictures:
        try:
            prepared.append(imaging.load(imaging.to_png(grey), raw_input=raw))
        except imaging.ImageError:  # no ink, as a blank page: refused, never given a digit
            refused += 1
    return judge_prepared(predictor, prepared, len(pictures))


def judge_prepared(predictor, prepared: list[np.ndarray] | np.ndarray, pictures: int) -> dict:
    """`judge` for 28x28 images as the network takes them (`pictures - len(prepared)` refused)."""
    refused = pictures - len(prepared)
    flagged = unsure = 0
    reasons: dict[str, int] = {}
    if len(prepared):
        images = np.stack(prepared)
        probs, logits = predictor.outputs(images)
        for row, image, row_logits in zip(probs, images, logits):
            sure = predictor.assess(row, image=image, logits=row_logits)
            if sure["not_a_digit"]:
                flagged += 1
                for reason in sure["not_a_digit_reason"].split("; "):
                    reasons[reason] = reasons.get(reason, 0) + 1
            elif sure["unsure"]:
                unsure += 1
    n = pictures
    return {"pictures": n, "refused": refused, "not_a_digit": flagged, "unsure": unsure,
            "share_not_a_digit": round(flagged / n, 4),
            "share_refused_or_flagged": round((refused + flagged) / n, 4),
            "share_no_confident_digit": round((refused + flagged + unsure) / n, 4),
            "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1]))}


def corrupted_digits(predictor, digits: np.ndarray, seed: int) -> dict | None:
    """Per corruption family of `robustness` and severity 1-3, `judge_prepared` of the digits."""
    if not len(digits):
        return None
    from mnistlab import robustness

    return {family.name: {f"severity {s}": judge_prepared(predictor, robustness.corrupt(family.name, digits, s, seed),
                                                          len(digits))
                          for s in robustness.SEVERITIES}
            for family in robustness.FAMILIES}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a run trained with validation data (default: train one)")
    parser.add_argument("--count", type=int, default=200, help="pictures per kind")
    parser.add_argument("--digits", type=int, default=10_000, help="MNIST test digits")
    parser.add_argument("--corrupted", type=int, default=1000, help="test digits per corruption and severity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from mnistlab import data, novelty
    from mnistlab.predict import Predictor

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mnistlab-bench-nondigits-") as tmp:
        run = args.run or train_fast_network(Path(tmp) / "runs")
        predictor = Predictor.from_run(run)
        if predictor.novelty is None:
            parser.error(f"{run}: no novelty fit in its summary: train with a validation split")
        kinds = {kind: judge(predictor, novelty.pictures(kind, args.count, args.seed)) for kind in novelty.KINDS}
        digits = data.load("mnist").test_images[: args.digits]
        mnist = {"preprocessed": judge(predictor, list(digits)), "raw": judge(predictor, list(digits), raw=True)}
        corrupted = corrupted_digits(predictor, digits[: args.corrupted], args.seed)
    every = sum(k["pictures"] for k in kinds.values())
    caught = sum(k["refused"] + k["not_a_digit"] for k in kinds.values())
    report = {
        "run": str(run), "test_accuracy": (predictor.summary.get("test") or {}).get("accuracy"),
        "novelty": {k: predictor.novelty.as_dict()[k] for k in ("threshold", "flagged_share", "samples", "pass_share")},
        "non_digits": kinds,
        "non_digits_share_refused_or_flagged": round(caught / every, 4),
        "mnist_test_digits": mnist,
        "corrupted_test_digits": corrupted,
        "seconds": round(time.perf_counter() - started, 1), "loadavg": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv),
    }
    print(f"{'kind':10} {'refused':>8} {'not a digit':>12} {'refused or flagged':>19} {'+ unsure':>9}")
    for name, row in [*kinds.items(), *(("mnist " + k, v) for k, v in mnist.items())]:
        print(f"{name:10} {row['refused'] / row['pictures']:8.1%} {row['share_not_a_digit']:12.1%} "
              f"{row['share_refused_or_flagged']:19.1%} {row['share_no_confident_digit']:9.1%}")
    for name, row in (corrupted or {}).items():
        print(f"{name:22} flagged " + "  ".join(f"{r['share_not_a_digit']:6.1%}" for r in row.values()))
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
