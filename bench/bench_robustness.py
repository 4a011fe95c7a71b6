"""docs/robustness.md: how the `fast`, `cnn` and `robust` presets read digits unlike MNIST's.

Trains each preset as a user would (`mnistlab train --preset P --test`), or takes the run
folders given, then measures each on the MNIST test set under every corruption family of
`mnistlab.robustness` (three severities), on digits drawn on the real page by Playwright
(`mnistlab.drawing`, when chromium is installed), and writes the Markdown report and one
figure per preset. Every figure in the report comes from this run of the script.

    .venv/bin/python bench/bench_robustness.py [--run fast=DIR --run cnn=DIR ...] [--out docs/robustness.md]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import machine

PRESETS = ("fast", "cnn", "robust")


def train(preset: str, runs_dir: Path) -> tuple[Path, float]:
    import mnistlab

    started = time.perf_counter()
    result = mnistlab.train(mnistlab.preset(preset), runs_dir=runs_dir, test=True, verbose=0)
    return result.run_dir, time.perf_counter() - started


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def family_table() -> list[str]:
    from mnistlab import robustness

    lines = ["| family | what it stands for | severities 1 / 2 / 3 | held out |", "| --- | --- | --- | --- |"]
    for f in robustness.FAMILIES:
        levels = " / ".join(map(str, f.levels))
        held = "**yes**" if f.name in robustness.HELD_OUT else "no: " + TRAINED_LIKE[f.name]
        lines.append(f"| `{f.name}` | {f.description} | {levels} ({f.unit}) | {held} |")
    return lines


# What in `robust`'s training makes a change of the family's kind (other operation, other numbers).
TRAINED_LIKE = {
    "thin_strokes": "`random_stroke_width` (a fraction of a cross erosion, not a whole one)",
    "thick_strokes": "`random_stroke_width` (a fraction of a cross dilation)",
    "rotation_shear": "`random_rotation` up to 14 degrees and per-axis `random_zoom` (no shear)",
    "small_off_centre": "`random_translation` and `random_zoom` (the preprocessing re-centres anyway)",
}


# What was tried while choosing `robust`, each measured with `mnistlab robustness RUN --split
# validation` (the run's own last 10% of the training images; the test set was not read),
# on 2026-12-01: history, so written down once rather than measured again by this script.
CHOSEN = [
    "## How `robust` was chosen",
    "",
    "On the validation side only (`mnistlab robustness RUN --split validation`: the last 10% of the training "
    "images, which `robust` holds out; the test set was read once, by the runs above). Mean of the held-out "
    "families at the middle severity, then the families its augmentation resembles:",
    "",
    "| tried | held-out mean | thin strokes | rotation, shear | clean validation |",
    "| --- | ---: | ---: | ---: | ---: |",
    "| `cnn` (rotation 9 degrees, shifts 8%) | 98.50% | 77.50% | 90.07% | 99.38% |",
    "| + per-axis zoom 15%, rotation 14 degrees, `random_stroke_width` 0.8: **`robust`** | **98.75%** | 91.82% "
    "| 94.15% | 99.25% |",
    "| the same with rotation 18 degrees and stroke width 1.0 | 98.59% | 94.53% | 95.62% | 99.23% |",
    "",
    "The second is kept: the best on the held-out families, which are the target; the third trades 0.16 points "
    "there for the families it trains more like. The photo family was measured then with an earlier light "
    "flattening (subtracted, not divided); the figures above are with the final one.",
    "",
]


def results_table(results: dict) -> list[str]:
    from mnistlab import robustness

    names = list(results)
    lines = ["| family, middle severity | " + " | ".join(f"`{n}`" for n in names) + " |",
             "| --- |" + " ---: |" * len(names)]
    first = next(iter(results.values()))
    for family in first.families():
        severity = 0 if family == "clean" else robustness.MIDDLE
        label = "clean MNIST test" if family == "clean" else f"`{family}`" + (" (held out)" if family in robustness.HELD_OUT else "")
        cells = []
        for n in names:
            try:
                cells.append(pct(results[n].accuracy(family, severity)))
            except StopIteration:
                cells.append("–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| **mean of the held-out families** | " + " | ".join(
        f"**{pct(results[n].held_out_mean())}**" for n in names) + " |")
    return lines


def detail_table(result) -> list[str]:
    lines = ["| family | mild | middle | severe |", "| --- | ---: | ---: | ---: |"]
    for row in result.table():
        if row["family"] == "clean":
            lines.append(f"| clean | {pct(row['severity 1'])} | | |")
        else:
            lines.append(f"| `{row['family']}` | " + " | ".join(pct(row[f"severity {s}"]) for s in (1, 2, 3)) + " |")
    return lines


def nondigit_section(run_dirs: dict) -> list[str]:
    """How often pictures without a digit are refused or flagged (bench/nondigits.py's
    measure), for the runs that carry the flag (trained with validation data)."""
    import nondigits
    from mnistlab import data, novelty
    from mnistlab.predict import Predictor

    digits = data.load("mnist").test_images
    lines = ["## Pictures without a digit", "",
             "200 generated pictures of each kind (`mnistlab.novelty.pictures`), as PNG through `predict`'s decoding "
             "and preprocessing; *refused*: no ink found (a blank page); *flagged*: answered \"not a digit?\" with "
             "the reason; then the MNIST test digits, which should not be. Only runs trained with validation data "
             "carry the flag (`novelty`, fitted beside the calibration).", ""]
    for preset, run_dir in run_dirs.items():
        predictor = Predictor.from_run(run_dir)
        if predictor.novelty is None:
            continue
        lines += [f"`{preset}`:", "", "| pictures | refused | flagged not a digit | refused or flagged | or unsure |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        kinds = {kind: nondigits.judge(predictor, novelty.pictures(kind, 200, 0)) for kind in novelty.KINDS}
        kinds["MNIST test digits (10,000)"] = nondigits.judge(predictor, list(digits))
        for kind, row in kinds.items():
            lines.append(f"| {kind} | {pct(row['refused'] / row['pictures'])} | {pct(row['share_not_a_digit'])} | "
                         f"{pct(row['share_refused_or_flagged'])} | {pct(row['share_no_confident_digit'])} |")
        lines.append("")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], help="PRESET=RUN_DIR: measure this run, do not train")
    parser.add_argument("--out", type=Path, default=Path("docs/robustness.md"))
    parser.add_argument("--no-page", action="store_true", help="skip the digits drawn on the page")
    parser.add_argument("--per-digit", type=int, default=5, help="page drawings per digit and severity")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from mnistlab import figures, robustness, runs

    given = dict(item.split("=", 1) for item in args.run)
    scratch = Path(tempfile.mkdtemp(prefix="bench-robustness-"))
    run_dirs, trained, results, page_seconds = {}, {}, {}, {}
    for preset in PRESETS:
        if preset in given:
            run_dirs[preset] = Path(given[preset])
        else:
            run_dirs[preset], trained[preset] = train(preset, scratch)
            print(f"trained {preset} in {trained[preset]:.0f} s: {run_dirs[preset]}", file=sys.stderr)
        result = robustness.run(run_dirs[preset])
        if not args.no_page:
            from mnistlab import drawing

            started = time.perf_counter()
            rows = drawing.measure(run_dirs[preset], per_digit=args.per_digit)
            page_seconds[preset] = time.perf_counter() - started
            result = robustness.Result(result.rows + tuple(rows), result.split, result.seed)
        results[preset] = result
        print(f"{preset}: held-out middle {pct(result.held_out_mean())}, clean {pct(result.clean)}", file=sys.stderr)

    figure_dir = args.out.with_suffix("")
    figure_dir.mkdir(parents=True, exist_ok=True)
    for preset, result in results.items():
        table = result.table()[1:]
        fig = figures.robustness({row["family"]: [row[f"severity {s}"] for s in (1, 2, 3)] for row in table},
                                 robustness.HELD_OUT, result.clean, title=f"`{preset}`: test accuracy under corruption")
        (figure_dir / f"{preset}.png").write_bytes(figures.png_bytes(fig))

    calibrations = {p: runs.open_run(d).summary.get("calibration") for p, d in run_dirs.items()}
    lines = [
        "# Robustness: digits that are not MNIST's",
        "",
        "Generated by `bench/bench_robustness.py` on " + dt.date.today().isoformat() + ", " + machine.summary(machine.describe()) + ".",
        "Each preset trained as a user would (`mnistlab train --preset P --test`) and measured with "
        "`mnistlab robustness RUN` (the 10,000 MNIST test images under each corruption; the figures are in each "
        "run's report too) and on digits drawn on the real page (`mnistlab.drawing`: Playwright draws generated "
        f"strokes on the page's canvas in chromium, {args.per_digit} drawings per digit and severity, and reads the "
        "page's answer).",
        "",
        "## The families",
        "",
        "Pixel families change the 28x28 image; scene families draw a picture (a 140x140 pad, a 112x112 photo) "
        "that goes through the same MNIST preprocessing as `predict` and the page. *Held out*: nothing in any "
        "preset's training makes a change of that kind; `robust`'s target is the mean over those at the middle "
        "severity (>= 97%, keeping >= 99.3% on clean test).",
        "",
        *family_table(),
        "",
        "## Results at the middle severity",
        "",
        *results_table(results),
        "",
    ]
    for preset, result in results.items():
        lines += [f"### `{preset}`", "", f"![{preset}](robustness/{preset}.png)", "", *detail_table(result), ""]
        cal = calibrations[preset]
        if cal:
            lines += [f"Calibration (validation, {cal['samples']} images): temperature {cal['temperature']:.3f}, "
                      f"expected calibration error {100 * cal['ece_before']:.2f}% before, {100 * cal['ece_after']:.2f}% "
                      f"after; predictions under {100 * cal['unsure_below']:.1f}% confidence are flagged unsure "
                      f"({100 * cal['unsure_share']:.1f}% of validation, "
                      f"{100 * cal.get('mistakes_flagged', 0):.0f}% of its mistakes).", ""]
        else:
            lines += ["No calibration: the preset trains without a validation split (`robust` holds out 10%).", ""]
    lines += CHOSEN + nondigit_section(run_dirs)
    if page_seconds:
        lines += ["Page drawings took " + ", ".join(f"{s:.0f} s ({p})" for p, s in page_seconds.items()) + ".", ""]
    args.out.write_text("\n".join(lines))
    (figure_dir / "results.json").write_text(json.dumps({p: r.as_dict() for p, r in results.items()}, indent=1,
                                                        default=str))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
