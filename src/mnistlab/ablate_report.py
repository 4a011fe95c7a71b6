"""The report of `mnistlab ablate`: Markdown and one self-contained HTML page, same content.

The page is built once as a list of blocks (headings, paragraphs, lists, tables,
figures, code) from the ablation's results; `markdown` and `html` render the same blocks,
so the two never disagree. Every number and verdict comes from the results dict (which
`ablate.run` computed with `stats`); nothing here judges anything. Figures are PNGs:
files beside the Markdown, `data:` URIs inside the HTML, which loads nothing else.

    page = ablate_report.build(results, members)
    ablate_report.write(page, "ablations/x/report.md", "ablations/x/report.html", "figures")
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import matplotlib
import numpy as np
import tomli_w
from matplotlib.figure import Figure

from mnistlab import ablate, figures, runs, stats
from mnistlab.ablate import FIGURES, Member
from mnistlab.errors import UserError

VERDICT_COLOURS = {stats.SUPPORTED: "#2b8a3e", stats.NOT_SUPPORTED: "#c92a2a", stats.INCONCLUSIVE: "#868e96"}

# ------------------------------------------------------------------ blocks


@dataclass
class Page:
    title: str
    blocks: list[tuple] = field(default_factory=list)
    pngs: dict[str, bytes] = field(default_factory=dict)  # figure file name -> PNG

    def add(self, *block) -> None:
        self.blocks.append(block)

    def figure(self, name: str, fig: Figure, caption: str) -> None:
        self.pngs[name] = figures.png_bytes(fig)
        self.add("figure", name, caption)


def _interval_text(i: dict[str, Any], figure: str, signed: bool = False) -> str:
    _, scale, digits = FIGURES.get(figure, (figure, 1, 4))
    if i["n"] == 0 or not _finite(i["mean"]):
        return "n/a"
    f = (lambda v: f"{v * scale:+.{digits}f}") if signed else (lambda v: f"{v * scale:.{digits}f}")
    if i["n"] < 2:
        return f"{f(i['mean'])} (1 seed)"
    return f"{f(i['mean'])} [{f(i['low'])}, {f(i['high'])}]"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _label(figure: str) -> str:
    return FIGURES.get(figure, (figure,))[0]


def difference_text(c: dict[str, Any]) -> str:
    """A comparison's paired difference as shown everywhere: '+0.52 [0.10, 0.94]' (in the figure's unit)."""
    return _interval_text(c["difference"], c["figure"], signed=True)


def _corrected_text(c: dict[str, Any]) -> str:
    """'p = 0.012: **supported**', 'p < 0.001: ...' (results from before the correction: '–')."""
    if "corrected_verdict" not in c:
        return "–"
    p, verdict = c["p_value"], f"**{c['corrected_verdict']}**"
    if p is None or not math.isfinite(p):
        return verdict
    return f"{'p < 0.001' if p < 0.001 else f'p = {p:.3f}'}: {verdict}"


def _verdict_line(c: dict[str, Any]) -> str:
    d = _interval_text(c["difference"], c["figure"], signed=True)
    v = _interval_text(c["variant_interval"], c["figure"])
    b = _interval_text(c["baseline_interval"], c["figure"])
    tol = (f"; claimed not worse by more than {c['tolerance'] * FIGURES.get(c['figure'], ('', 1))[1]:g}"
           if c["tolerance"] else "")
    better = "higher" if c["better"] == "higher" else "lower"
    return (f"**{c['verdict']}**: {c['statement']} ({c['source']}). {_label(c['figure'])}, {better} claimed{tol}: "
            f"{c['variant']} {v} vs {c['baseline']} {b}; difference {d} over {c['difference']['n']} paired seeds.")


# An open statement whose measured mean and spread would need more seeds than this to clear
# its boundary is called a difference near zero: the run says how small it is, not its sign.
NEAR_ZERO_SEEDS = 30

OPEN_RULE = (
    "Each statement still inconclusive, with the largest difference its interval allows (in the figure's unit) "
    "and the number of paired seeds that would decide it if its mean difference and spread stayed as measured "
    "(the smallest n with t({quantile}, n-1) x sd / sqrt(n) under the mean's distance from the boundary). This run "
    "has {seeds}; more than {near_zero} is called a difference near zero: more seeds would narrow the interval "
    "around a difference too small to matter, not settle its sign.")


def largest_difference_text(c: dict[str, Any]) -> str:
    """The largest |variant - baseline| the interval allows, in the figure's unit ('0.18')."""
    d = c["difference"]
    if d["n"] < 2 or not (_finite(d["low"]) and _finite(d["high"])):
        return "n/a"
    _, scale, digits = FIGURES.get(c["figure"], (c["figure"], 1, 4))
    return f"{max(abs(d['low']), abs(d['high'])) * scale:.{digits}f}"


def _seeds_text(needed: int | None) -> str:
    return "more than 10,000" if needed is None else f"{needed:,}"


def _max_seeds_option(results: dict[str, Any]) -> str:
    return f" --max-seeds {results['max_seeds']}" if results.get("looks", 1) > 1 else ""


def _later_looks(results: dict[str, Any]) -> list[int]:
    """The seeds of the looks after the first ([10, 20]); none with one look."""
    return results.get("look_seeds", [results["seeds"], results.get("max_seeds")])[1:] if _max_seeds_option(results) \
        else []


def _seeds_read(results: dict[str, Any]) -> str:
    """'5', or '5, or 10 and 20 where read again' with later looks."""
    later = _later_looks(results)
    return f"{results['seeds']}" + (f", or {' and '.join(map(str, later))} where read again" if later else "")


def why_open(c: dict[str, Any], seeds: int) -> str:
    """'a difference near zero' or 'too few seeds' (see OPEN_RULE), for an inconclusive statement."""
    needed = c.get("seeds_to_decide")
    if c["difference"]["n"] < 2:
        return "fewer than two seeds gave a number"
    if needed is None or needed > NEAR_ZERO_SEEDS:
        return "a difference near zero"
    return f"too few seeds ({seeds})"


# ------------------------------------------------------------------ figures


def _styled(fn):
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(figures.STYLE):
            return fn(*args, **kwargs)
    return wrapper


@_styled
def differences_figure(comparisons: list[dict[str, Any]]) -> Figure:
    """One row per comparison: the paired difference's mean and 95% interval, the boundary
    the verdict is read against (0, or -tolerance on the claimed side), coloured by verdict."""
    k = len(comparisons)
    fig = Figure(figsize=(8.6, 1.12 * k + 0.2), layout="constrained")
    fig.get_layout_engine().set(hspace=0.08)
    axes = np.atleast_1d(fig.subplots(k, 1, squeeze=False)).ravel()
    for ax, c in zip(axes, comparisons):
        _, scale, _ = FIGURES.get(c["figure"], ("", 1, 4))
        d, colour = c["difference"], VERDICT_COLOURS[c["verdict"]]
        sign = 1 if c["better"] == "higher" else -1
        boundary = -sign * c["tolerance"] * scale
        ax.axvline(0, color="#adb5bd", lw=1)
        if c["tolerance"]:
            ax.axvline(boundary, color="#495057", lw=1, ls=":")
        points = [v * scale for v in (d["low"], d["high"], d["mean"]) if _finite(v)]
        if _finite(d["mean"]):
            if _finite(d["low"]):
                ax.plot([d["low"] * scale, d["high"] * scale], [0, 0], color=colour, lw=3, solid_capstyle="butt")
            ax.plot([d["mean"] * scale], [0], "o", color=colour, ms=6)
        lo, hi = min([boundary, 0, *points]), max([boundary, 0, *points])
        pad = (hi - lo) * 0.12 or 1.0
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(-1, 1)
        ax.set_yticks([])
        ax.grid(axis="y", visible=False)
        ax.spines["left"].set_visible(False)
        statement = c["statement"] if len(c["statement"]) <= 100 else c["statement"][:99] + "…"
        ax.set_title(f"{statement}  [{c['verdict']}]", fontsize=8.5, color=colour, fontweight="bold")
        claimed = "claimed: to the right" if sign > 0 else "claimed: to the left"
        ax.set_xlabel(f"{_label(c['figure'])}: {c['variant']} − {c['baseline']}  ({claimed})", fontsize=7.5,
                      labelpad=1)
        ax.tick_params(axis="x", labelsize=7.5, pad=1)
    return fig


@_styled
def bars_figure(variants: list[dict[str, Any]], shown: list[str], chosen: set[str]) -> Figure:
    """Per figure, one bar per variant: mean over seeds, the 95% interval as an error bar,
    each seed as a dot. Variants chosen on validation (arms) are outlined."""
    shown = [f for f in shown if any(f in v["figures"] for v in variants)]
    n = len(variants)
    width = max(6.0, 0.5 * n + 2.4)
    fig = Figure(figsize=(min(width, 13.0) if len(shown) == 1 else 5.4 * min(len(shown), 2),
                          (3.3 if n <= 6 else 3.9) * math.ceil(len(shown) / 2)), layout="constrained")
    cols = 1 if len(shown) == 1 else 2
    axes = np.atleast_1d(fig.subplots(math.ceil(len(shown) / cols), cols, squeeze=False)).ravel()
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    for ax, f in zip(axes, shown):
        _, scale, _ = FIGURES.get(f, (f, 1, 4))
        xs = np.arange(n)
        for x, v in zip(xs, variants):
            s = v["figures"].get(f)
            if s is None or not _finite(s["mean"]):
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, color="#c92a2a")
                continue
            colour = figures.SERIES[x % len(figures.SERIES)]
            ax.bar(x, s["mean"] * scale, color=colour, alpha=0.75, width=0.7,
                   edgecolor="#212529" if v["name"] in chosen else "none", linewidth=1.6)
            if _finite(s["low"]):
                ax.errorbar(x, s["mean"] * scale, yerr=[[(s["mean"] - s["low"]) * scale],
                                                        [(s["high"] - s["mean"]) * scale]],
                            color="#212529", capsize=3, lw=1.1)
            seeds = [val * scale for val in s["values"] if _finite(val)]
            ax.plot([x] * len(seeds), seeds, ".", color="#212529", ms=3.5, alpha=0.7)
        values = [val * scale for v in variants for val in (v["figures"].get(f) or {}).get("values", [])
                  if _finite(val)]
        if values and min(values) > 0 and (max(values) - min(values)) < 0.25 * max(values):
            lo, hi = min(values), max(values)
            ax.set_ylim(lo - (hi - lo) * 0.6 - 1e-9, hi + (hi - lo) * 0.35 + 1e-9)
        ax.set_xticks(xs, [v["name"] for v in variants], rotation=35 if n > 4 else 0, ha="right" if n > 4 else "center",
                      fontsize=7.5 if n > 6 else 8.5)
        ax.set_title(_label(f))
        ax.grid(axis="x", visible=False)
    return fig


def curves_figure(series: dict[str, list[dict[str, Any]]], target: float | None) -> Figure:
    fig = figures.overlaid_curves(series, metrics=("loss", "accuracy"), show_train=True)
    if target is not None and len(fig.axes) > 1:
        fig.axes[1].axhline(target, color="#495057", ls=":", lw=1)
        fig.axes[1].text(fig.axes[1].get_xlim()[0], target, f" target {target:.0%}", va="bottom", fontsize=7.5)
    return fig


@_styled
def spectra_figure(spectra: dict[str, list[float]]) -> Figure:
    """Singular values of each variant's learned first-layer kernel (seed 0), largest first."""
    fig = Figure(figsize=(8.4, 3.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, act in zip(axes, ("relu", "sigmoid")):
        for i, (name, s) in enumerate((k, v) for k, v in spectra.items() if k.startswith(act)):
            s = np.asarray(s)
            s = np.maximum(s, 1e-8)  # an all-zero kernel plots on the floor
            ax.plot(np.arange(1, len(s) + 1), s, color=figures.SERIES[i], lw=1.6, label=name.split(", ")[1])
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_title(f"{act} hidden layer")
        ax.set_xlabel("singular value index")
        ax.legend(fontsize=7.5)
    axes[0].set_ylabel("singular value (1e-8: zero)")
    return fig


@_styled
def f1_figure(variants: list[dict[str, Any]]) -> Figure:
    fig = Figure(figsize=(8.6, 3.0), layout="constrained")
    ax = fig.subplots()
    with_f1 = [v for v in variants if "f1" in v["extra"]]
    w = 0.8 / max(len(with_f1), 1)
    for i, v in enumerate(with_f1):
        ax.bar(np.arange(10) + (i - (len(with_f1) - 1) / 2) * w, np.asarray(v["extra"]["f1"]) * 100, width=w,
               color=figures.SERIES[i], label=v["name"])
    ax.set_xticks(np.arange(10), [str(d) for d in range(10)])
    ax.set_xlabel("digit")
    ax.set_ylabel("test F1 (%), mean over seeds")
    lo = min([min(v["extra"]["f1"]) for v in with_f1] + [1.0]) * 100
    ax.set_ylim(max(0, lo - 5), 100)
    ax.legend(fontsize=7.5, ncols=2)
    ax.grid(axis="x", visible=False)
    return fig


@_styled
def samples_figure(images: np.ndarray, labels: np.ndarray) -> Figure:
    k = len(images)
    fig = Figure(figsize=(1.45 * k, 1.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, k, squeeze=False)).ravel()
    for ax, im, lab in zip(axes, images, labels):
        ax.imshow(im, cmap="gray_r")
        ax.set_axis_off()
        ax.set_title("{" + ", ".join(str(d) for d in np.flatnonzero(lab)) + "}", fontsize=8.5, loc="center")
    return fig


@_styled
def selection_figure(selection: dict[str, dict[str, dict[str, Any]]]) -> Figure:
    fig = Figure(figsize=(8.4, 3.0), layout="constrained")
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
    rules = list(selection)
    for i, rule in enumerate(rules):
        for j, (f, colour) in enumerate((("reported", figures.VALIDATION), ("fresh", figures.TEST))):
            s = selection[rule][f]
            x = i + (j - 0.5) * 0.38
            axes[0].bar(x, s["mean"] * 100, width=0.36, color=colour, alpha=0.8, label=f if i == 0 else None)
            if _finite(s["low"]):
                axes[0].errorbar(x, s["mean"] * 100, yerr=[[(s["mean"] - s["low"]) * 100], [(s["high"] - s["mean"]) * 100]],
                                 color="#212529", capsize=3, lw=1.1)
        s = selection[rule]["optimism"]
        axes[1].bar(i, s["mean"] * 100, width=0.6, color=figures.SERIES[i], alpha=0.8)
        if _finite(s["low"]):
            axes[1].errorbar(i, s["mean"] * 100, yerr=[[(s["mean"] - s["low"]) * 100], [(s["high"] - s["mean"]) * 100]],
                             color="#212529", capsize=3, lw=1.1)
    values = [selection[r][f][k] * 100 for r in rules for f in ("reported", "fresh") for k in ("low", "high", "mean")
              if _finite(selection[r][f][k])]
    if values:
        axes[0].set_ylim(min(values) - 0.3, max(values) + 0.2)
    axes[0].set_xticks(range(len(rules)), rules)
    axes[0].set_title("test accuracy (%): reported (half A) and fresh (half B)")
    axes[0].legend(fontsize=7.5)
    axes[1].axhline(0, color="#adb5bd", lw=1)
    axes[1].set_xticks(range(len(rules)), rules)
    axes[1].set_title("optimism: reported - fresh (points)")
    for ax in axes:
        ax.grid(axis="x", visible=False)
    return fig


# ------------------------------------------------------------------ the page


def level_text(results: dict[str, Any]) -> str:
    """The level of the first look's intervals, and of every figure shown for the variants:
    '95%', or '97.5%' with later looks (`ablate.look_levels`)."""
    return f"{results.get('level', stats.LEVEL) * 100:g}%"


def _later_level(results: dict[str, Any]) -> float | None:
    """The later looks' level where it differs from the first's (three looks or more)."""
    levels = results.get("levels", [results.get("level", stats.LEVEL)])
    return levels[-1] if levels[-1] != levels[0] else None


def ci_text(results: dict[str, Any], noun: str = "CI") -> str:
    """What a statement's interval is: '97.5% CI', or '97.5% CI (98.75% where read again)'."""
    later = _later_level(results)
    return f"{level_text(results)} {noun}" + (f" ({later * 100:g}% where read again)" if later else "")


VERDICT_RULE = (
    "Each statement compares a variant with a baseline on one figure, trained with the same seeds (seed s of both "
    "shares its initial-weight stream, its shuffling and its dropout masks). The verdict reads the {level} Student-t "
    "interval of the paired differences d_s = variant_s - baseline_s, signed so that the claimed direction is "
    "positive: **supported** when the whole interval is above the boundary, **not supported** when the whole "
    "interval is below it, **inconclusive** when it straddles it (or fewer than two seeds gave a number). The "
    "boundary is 0, or -tolerance for a claim of 'at least as good (within a tolerance)'. Every figure is shown "
    "as mean [{level} interval] over seeds. Each interval leaves out the true difference {miss} of the time, so among "
    "many statements a few verdicts are decided by chance alone: the summary also gives each verdict with the "
    "false discovery rate held at 5% over all the statements (Benjamini-Hochberg on the paired t-tests' p-values, "
    "the tests the intervals are; scipy's false_discovery_control), which withdraws a verdict whose p-value is "
    "not small enough among so many.")

SEQUENTIAL_RULE = (
    "Sequential testing: every statement is first read after {seeds} seeds; one still inconclusive that {most} "
    "seeds would decide at its measured mean and spread is read again after {later}, each time only while "
    "still open, with only the variants it compares trained for more seeds (an arm keeps the variant chosen at "
    "the first look); a statement decided at a look is never read again. Each look at one statement could be "
    "wrong by chance, so the looks share the 5% (Bonferroni): {shares}, and each p-value is put on the 5% "
    "scale of its last look ({scales}): a verdict is still wrong at most 5% of the time. Each statement says "
    "after how many seeds it was decided.")


def sequential_text(results: dict[str, Any]) -> str:
    """SEQUENTIAL_RULE for this run's looks."""
    levels, later = results["levels"], _later_looks(results)
    misses = [f"{(1 - level) * 100:g}%" for level in levels]
    first = f"the first look's intervals at {levels[0] * 100:g}%"
    rest = (f"the second's at {levels[1] * 100:g}%" if len(levels) == 2
            else f"the {len(levels) - 1} later ones' at {levels[1] * 100:g}% each")
    factors = sorted({(1 - stats.LEVEL) / (1 - level) for level in levels})
    scales = " or ".join(f"times {f:g}" for f in factors)
    return SEQUENTIAL_RULE.format(seeds=results["seeds"], most=results["max_seeds"],
                                  later=" and then ".join(map(str, later)),
                                  shares=f"{first}, {rest} ({' + '.join(misses)})", scales=scales)


def build(results: dict[str, Any], kept: dict[str, list[Member]] | None = None) -> Page:
    """The report's blocks and figures, from `ablate.run`'s results (and its members, for pictures)."""
    budget = results["budget"]
    page = Page(f"Are the tutorial's claims true? (mnistlab ablate, budget {budget['name']})")
    env = results["environment"]
    load = results.get("load_average")
    minutes = results["seconds"] / 60
    page.add("h1", page.title)
    page.add("p", f"Produced by `mnistlab ablate --budget {budget['name']} --seeds {results['seeds']}"
                  f"{_max_seeds_option(results)}` on "
                  f"{results['started']}: **{minutes:.1f} minutes** wall time on {env['device']} "
                  f"({env['cpu_count']} CPU cores{', load average at the end ' + '/'.join(map(str, load)) if load else ''}), "
                  f"JAX {env['jax']}. Seeds 0 to {results['seeds'] - 1}"
                  + (f" (to {results['max_seeds'] - 1} for statements read again)" if _max_seeds_option(results) else "")
                  + ". The tutorial is part 6 of Atishay Jain's "
                  "deep-learning series (L1/L2, dropout, activations, initialization, momentum/Adam, decay, "
                  "train/validation/test); its statements are quoted in each section.")
    page.add("p", "Data: the first images of MNIST's training set, the last part of them held out for validation "
                  "(Keras' validation_split); every choice (penalty strength, learning rate, prediction rule, "
                  "best configuration) is made on validation accuracy; the 10,000 test images are evaluated once "
                  "per member at the end and choose nothing, except in the protocol claim, which measures what "
                  "choosing on test would cost.")
    page.add("h2", "How a verdict is computed")
    level = level_text(results)
    miss = f"{100 - results.get('level', stats.LEVEL) * 100:g}%"
    page.add("p", VERDICT_RULE.format(level=level, miss=miss))
    if results.get("looks", 1) > 1:
        page.add("p", sequential_text(results))

    page.add("h2", "Summary")
    rows = []
    comparisons = [comp for c in results["claims"] for comp in c["comparisons"]]
    for i, c in enumerate(results["claims"], 1):
        for comp in c["comparisons"]:
            rows.append([f"{i}. {c['key']}", comp["statement"], _label(comp["figure"]), difference_text(comp),
                         f"**{comp['verdict']}**", _corrected_text(comp)])
    page.add("table", ["claim", "statement", "figure", f"variant - baseline [{ci_text(results)}]", "verdict",
                       "p-value; verdict at 5% false discovery rate"], rows)
    counts = {v: sum(comp["verdict"] == v for comp in comparisons) for v in VERDICT_COLOURS}
    page.add("p", ", ".join(f"{n} {v}" for v, n in counts.items()) + f" of {len(rows)} statements.")
    if all("corrected_verdict" in comp for comp in comparisons):
        corrected = {v: sum(comp["corrected_verdict"] == v for comp in comparisons) for v in VERDICT_COLOURS}
        decided = len(rows) - counts[stats.INCONCLUSIVE]
        once = ("each 95% interval leaves out the true difference 1 time in 20" if results.get("looks", 1) == 1 else
                "the looks at one statement together leave out its true difference at most 1 time in 20")
        page.add("p", f"By chance alone: {once}, so of these "
                      f"{len(rows)} statements about {0.05 * len(rows):.1f} verdicts could be decided wrongly if no "
                      f"difference were real ({decided} are decided). With the false discovery rate held at 5% over "
                      "all of them: " + ", ".join(f"{n} {v}" for v, n in corrected.items())
                      + "; of those decided, at most 5% are expected wrong.")

    left_open = [(i, c, comp) for i, c in enumerate(results["claims"], 1) for comp in c["comparisons"]
                 if comp["verdict"] == stats.INCONCLUSIVE]
    if left_open:
        page.add("h2", "The statements left open")
        later = _later_level(results)
        quantile = f"{0.5 + results.get('level', stats.LEVEL) / 2:g}" + (
            f"; {0.5 + later / 2:g} for a statement read again" if later else "")
        page.add("p", OPEN_RULE.format(seeds=_seeds_read(results), near_zero=NEAR_ZERO_SEEDS, quantile=quantile))
        page.add("table", ["claim", "statement", f"variant - baseline [{ci_text(results)}]", "largest difference the interval "
                           "allows", "seeds that would decide it", "why it is open"],
                 [[f"{i}. {c['key']}", comp["statement"], difference_text(comp), largest_difference_text(comp),
                   _seeds_text(comp.get("seeds_to_decide")), why_open(comp, comp["difference"]["n"])]
                  for i, c, comp in left_open])

    page.add("h2", f"What the {budget['name']} budget reduced")
    estimate = results.get("full_estimate_seconds") if budget["name"] != "test" else None
    full_text = (f" The full budget (`mnistlab ablate --budget full`) would take about "
                 f"{estimate / 3600:.1f} hours on this machine, scaled from this run's measured speed per claim."
                 if estimate else "")
    page.add("p", f"This run: {budget['expected'] and 'expected ' + budget['expected'] + '; '}measured "
                  f"{minutes:.1f} minutes.{full_text} The verdicts hold for the reduced setting: fewer seeds widen "
                  "the intervals (more 'inconclusive'), while shorter training, fewer images and smaller networks "
                  "can change which variant wins (dropout and penalties pay off late), so each section lists its "
                  "own reductions.")

    for i, c in enumerate(results["claims"], 1):
        _claim_section(page, i, c, results, (kept or {}).get(c["key"], []))
    return page


def _claim_section(page: Page, i: int, c: dict[str, Any], results: dict[str, Any], members: list[Member]) -> None:
    key = c["key"]
    page.add("h2", f"{i}. {c['title']}", key)
    page.add("list", [_verdict_line(comp) for comp in c["comparisons"]])
    page.add("quote", c["quote"])
    if c["arms"]:
        page.add("p", "Chosen on validation: " + "; ".join(
            f"{a['name']} = **{a['chosen']}** ({a['by']} {a['scores'][a['chosen']] * 100:.2f}%"
            + (", at the edge of its grid: a value beyond it might do better" if a.get("at_edge") else "") + ")"
            for a in c["arms"]) + ".")
    page.figure(f"{key}-verdicts.png", differences_figure(c["comparisons"]),
                "Each statement's paired difference (variant - baseline): dot = mean over seeds, bar = "
                f"{ci_text(results, 'interval')}; "
                "grey line at 0, dotted line at the tolerance; colour = verdict.")
    chosen = {a["chosen"] for a in c["arms"]}
    if key == "protocol":
        sel = c["extra"].get("selection")
        if sel:
            page.figure(f"{key}-selection.png", selection_figure(sel),
                        f"Mean over seeds of the means over test-set halvings; bars: {level_text(results)} "
                        "intervals over seeds.")
            page.add("table", ["rule", *[_label(f) for f in ("reported", "fresh", "optimism")]],
                     [[rule, *[_interval_text(sel[rule][f], f) for f in ("reported", "fresh", "optimism")]]
                      for rule in sel])
        page.figure(f"{key}-pool.png", bars_figure(c["variants"], ["val_accuracy", "test_accuracy"], set()),
                    f"The pool of {len(c['variants'])} configurations each seed chooses from.")
    else:
        page.figure(f"{key}-bars.png", bars_figure(c["variants"], c["figures_shown"], chosen),
                    f"Mean over seeds (bar), {level_text(results)} interval (error bar), each seed (dots); outlined: "
                    "chosen on validation.")
    series = _curve_series(c)
    if series:
        target = results["budget"]["target"] if any(comp["figure"].endswith("to_target") for comp in c["comparisons"]) else None
        page.figure(f"{key}-curves.png", curves_figure(series, target),
                    "Learning curves, mean over seeds: validation solid, training dashed (training figures are "
                    "Keras' running means during each epoch).")
    if key == "initialization":
        _symmetry(page, c, members)
    if key == "output":
        _sets(page, c)

    page.add("h3", "Numbers")
    shown = [f for f in dict.fromkeys([*c["figures_shown"], "val_accuracy", "test_accuracy"])
             if any(f in v["figures"] for v in c["variants"])]
    page.add("table", ["variant", *[_label(f) for f in shown]],
             [[v["name"] + (" (chosen)" if v["name"] in chosen else "") + (f" — diverged: seeds {v['diverged']}" if v["diverged"] else ""),
               *[_interval_text(v["figures"][f], f) for f in shown]] for v in c["variants"]])
    if c["notes"]:
        page.add("list", c["notes"])

    page.add("h3", "Reproduce")
    seeds = c["seeds"]
    page.add("p", f"`mnistlab ablate --budget {results['budget']['name']} --only {key} --seeds {results['seeds']}"
                  f"{_max_seeds_option(results)}` "
                  f"(seeds {', '.join(map(str, seeds))}; {c['members']} members in {c['groups']} compiled "
                  f"group(s), {c['seconds']:.0f} s). Reduced from the full budget: "
                  + ("; ".join(c["reduced"]) if c["reduced"] else "nothing") + ".")
    page.add("p", "Each member is the base configuration below with its variant's settings and "
                  "`training.seed` = the seed (`mnistlab train base.toml --set key=value ...`).")
    page.add("details", "base configuration (TOML)", ("code", "toml", tomli_w.dumps(c["base"])))
    page.add("table", ["variant", "settings over the base"],
             [[v["name"], "`" + json.dumps(v["values"]) + "`" if v["values"] else "(the base)"] for v in c["variants"]])


def _curve_series(c: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The variants whose curves are drawn: each arm's choice and every variant in no arm
    (and, for penalties, the tutorial's strength 0.01), at most 10."""
    if c["key"] == "protocol":
        return {}
    by_name = {v["name"]: v for v in c["variants"]}
    in_arms = {n for a in c["arms"] for n in a["scores"]}
    names = [a["chosen"] for a in c["arms"]] + [n for n in by_name if n not in in_arms]
    if c["key"] == "regularization":
        names += [n for n in by_name if n.endswith(" 0.01")]
    names = list(dict.fromkeys(names))[:10]
    return {n: by_name[n]["curve"] for n in names if by_name[n]["curve"]}


def _symmetry(page: Page, c: dict[str, Any], members: list[Member]) -> None:
    spectra = c["extra"].get("spectra")
    if spectra:
        page.figure("initialization-spectra.png", spectra_figure(spectra),
                    "Singular values of the learned first-layer kernel (seed 0). Zeros in a sigmoid layer: one "
                    "non-zero singular value (every unit learned the same weights); zeros in a ReLU layer: none "
                    "(ReLU's gradient at 0 is 0, so the layer never moves).")
    kernels = {m.variant: m.kernel for m in members if m.kernel is not None}
    for name in ("sigmoid, zeros", "sigmoid, glorot_normal"):
        if name in kernels:
            k = kernels[name]
            fig = figures.first_layer_weights(k, units=list(range(min(10, k.shape[1]))),
                                              title=f"{name}: the first 10 hidden units' incoming weights")
            page.figure(f"initialization-units-{name.split(', ')[1]}.png", fig,
                        f"{name}, seed 0, after training: each unit's 784 incoming weights as a 28x28 picture.")


def _sets(page: Page, c: dict[str, Any]) -> None:
    samples = c["extra"].get("samples")
    if samples:
        page.figure("output-samples.png", samples_figure(np.asarray(samples["images"], np.uint8),
                                                         np.asarray(samples["labels"])),
                    "mnist-multi test images and their label sets.")
    page.figure("output-f1.png", f1_figure(c["variants"]),
                "Per-digit F1 on the test set under each member's rule chosen on validation, mean over seeds.")
    rows = []
    for v in c["variants"]:
        if "f1" in v["extra"]:
            rules = ", ".join(f"{k} {x:g}" for k, x in v["extra"].get("rules", []))
            rows.append([v["name"], *[f"{x * 100:.1f}" for x in v["extra"]["f1"]], rules])
    if rows:
        page.add("table", ["variant", *[f"F1 {d}" for d in range(10)], "rule chosen per seed"], rows)


# ------------------------------------------------------------------ rendering

_INLINE = [(re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"), (re.compile(r"`(.+?)`"), r"<code>\1</code>")]


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(page: Page, figure_dir: str) -> str:
    lines: list[str] = []
    for block in page.blocks:
        lines += _md_block(block, figure_dir)
    return "\n".join(lines).rstrip() + "\n"


def _md_block(block: tuple, figure_dir: str) -> list[str]:
    kind = block[0]
    if kind == "h1":
        return [f"# {block[1]}", ""]
    if kind == "h2":
        return [f"## {block[1]}", ""]
    if kind == "h3":
        return [f"### {block[1]}", ""]
    if kind == "p":
        return [block[1], ""]
    if kind == "quote":
        return [f"> {block[1]}", ""]
    if kind == "list":
        return [f"- {item}" for item in block[1]] + [""]
    if kind == "table":
        head, rows = block[1], block[2]
        return (["| " + " | ".join(map(_md_cell, head)) + " |", "|" + "---|" * len(head)]
                + ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows] + [""])
    if kind == "figure":
        return [f"![{block[1].removesuffix('.png')}]({figure_dir}/{block[1]})", "", f"*{block[2]}*", ""]
    if kind == "details":
        inner = _md_block(block[2], figure_dir)
        return [f"<details><summary>{block[1]}</summary>", "", *inner, "</details>", ""]
    if kind == "code":
        return [f"```{block[1]}", block[2].rstrip(), "```", ""]
    raise ValueError(f"unknown block {kind}")


CSS = """
:root { --ink:#212529; --muted:#6c757d; --line:#dee2e6; --soft:#f1f3f5; }
body { margin:0; background:#f8f9fa; color:var(--ink); line-height:1.5; font-size:15px;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; }
main { max-width:1100px; margin:0 auto; padding:28px 32px 64px; background:white; min-height:100vh;
  box-shadow:0 0 0 1px var(--line); }
h1 { font-size:27px; margin:4px 0 10px; }
h2 { font-size:20px; margin:40px 0 10px; padding-top:16px; border-top:1px solid var(--line); }
h3 { font-size:16px; margin:22px 0 8px; }
nav { display:flex; flex-wrap:wrap; gap:4px 14px; font-size:13px; margin:8px 0 4px; }
nav a, a { color:#1c7ed6; text-decoration:none; }
blockquote { margin:10px 0; padding:6px 14px; border-left:3px solid #ffc9a8; background:#fff9f5; color:#495057;
  font-style:italic; }
ul { padding-left:22px; } li { margin:4px 0; }
table { border-collapse:collapse; font-size:13px; margin:8px 0 14px; font-variant-numeric:tabular-nums; }
th, td { padding:4px 9px; border-bottom:1px solid var(--soft); text-align:left; vertical-align:top; }
th { border-bottom:1px solid var(--line); color:#495057; }
td:first-child { white-space:nowrap; }
.scroll { overflow-x:auto; max-width:100%; }
figure { margin:14px 0 20px; } figure img { max-width:100%; height:auto; border:1px solid var(--soft); }
figcaption { font-size:13px; color:var(--muted); max-width:85ch; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size:12.5px; }
pre { background:var(--soft); padding:12px 14px; border-radius:6px; overflow:auto; max-height:480px; }
summary { cursor:pointer; color:#1c7ed6; font-size:14px; }
strong.v-supported { color:#2b8a3e; } strong.v-not-supported { color:#c92a2a; } strong.v-inconclusive { color:#868e96; }
"""


def _verdict_classes(fragment: str) -> str:
    for v in VERDICT_COLOURS:
        fragment = fragment.replace(f"<strong>{v}</strong>", f'<strong class="v-{v.replace(" ", "-")}">{v}</strong>')
    return fragment


def _html_block(block: tuple, page: Page) -> str:
    kind = block[0]
    if kind == "h1":
        return f"<h1>{_inline(block[1])}</h1>"
    if kind in ("h2", "h3"):
        anchor = f' id="{block[2]}"' if len(block) > 2 else ""
        return f"<{kind}{anchor}>{_inline(block[1])}</{kind}>"
    if kind == "p":
        return f"<p>{_verdict_classes(_inline(block[1]))}</p>"
    if kind == "quote":
        return f"<blockquote>{_inline(block[1])}</blockquote>"
    if kind == "list":
        return "<ul>" + "".join(f"<li>{_verdict_classes(_inline(i))}</li>" for i in block[1]) + "</ul>"
    if kind == "table":
        head = "".join(f"<th>{_inline(h)}</th>" for h in block[1])
        body = "".join("<tr>" + "".join(f"<td>{_verdict_classes(_inline(str(c)))}</td>" for c in r) + "</tr>"
                       for r in block[2])
        return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    if kind == "figure":
        data = base64.b64encode(page.pngs[block[1]]).decode()
        return (f'<figure><img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_inline(block[2])}</figcaption></figure>")
    if kind == "details":
        return f"<details><summary>{_inline(block[1])}</summary>{_html_block(block[2], page)}</details>"
    if kind == "code":
        return f"<pre><code>{html.escape(block[2])}</code></pre>"
    raise ValueError(f"unknown block {kind}")


def to_html(page: Page) -> str:
    toc = "".join(f'<a href="#{b[2]}">{_inline(b[1])}</a>' for b in page.blocks if b[0] == "h2" and len(b) > 2)
    parts = []
    for b in page.blocks:
        parts.append(_html_block(b, page))
        if b[0] == "h1":
            parts.append(f"<nav>{toc}</nav>")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(page.title)}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(parts)}</main></body></html>\n")


def write(page: Page, md_path: Path, html_path: Path, figure_dir: str) -> None:
    """Markdown at `md_path` with its PNGs in `figure_dir` (relative to it), and the HTML page."""
    md_path, html_path = Path(md_path), Path(html_path)
    folder = md_path.parent / figure_dir
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / name for name in page.pngs] + [md_path, html_path]
    for name, png in page.pngs.items():
        runs.atomic_write(folder / name, png)
    runs.atomic_write(md_path, markdown(page, figure_dir))
    runs.atomic_write(html_path, to_html(page))
    # Readable by all, like any report meant to be shared (atomic_write's temporary files are 0600).
    umask = os.umask(0)
    os.umask(umask)
    for path in written:
        os.chmod(path, 0o644 & ~umask)


# ------------------------------------------------------------------ the whole command


@dataclass
class Ablation:
    """A finished `run_and_report`: its results, members and the files written."""

    results: dict[str, Any]
    kept: dict[str, list[Member]]
    folder: Path
    written: list[Path]  # the reports, in the folder and in `docs`


def run_and_report(budget: str = "quick", *, seeds: int | None = None, max_seeds: int | None = None,
                   only: list[str] | None = None,
                   out_dir: str | Path = "ablations", docs: str | Path | None = None, data_dir: str | None = None,
                   on_event: Callable[[dict[str, Any]], None] | None = None) -> Ablation:
    """`mnistlab ablate`: run the claims, then write a new folder `out_dir/<time>-ablate-<budget>`
    (`ablation.json`, `members.jsonl`, report.md / report.html with their figures) and, with
    `docs`, the report again as `docs/ablate-<budget>.md / .html`.

    Nothing is written until every claim has run: an interrupted ablation leaves no folder.
    """
    if budget not in ablate.BUDGETS:
        raise UserError(f"--budget {budget!r}: expected one of {', '.join(ablate.BUDGETS)}")
    plan = ablate.BUDGETS[budget]
    ablate.claims(plan, only)  # a bad --only fails before any training
    if docs is not None and not Path(docs).is_dir():
        raise UserError(f"--docs {docs}: no such folder")
    results, kept = ablate.run(plan, seeds=seeds, max_seeds=max_seeds, only=only, data_dir=data_dir,
                               on_event=on_event)
    folder = runs.new_run_dir(Path(out_dir), f"ablate-{budget}")
    ablate.write_results(folder, results, kept)
    page = build(results, kept)
    reports = [(folder / "report.md", folder / "report.html", "figures")]
    if docs is not None:
        reports.append((Path(docs) / f"ablate-{budget}.md", Path(docs) / f"ablate-{budget}.html", f"ablate-{budget}"))
    for md_path, html_path, figure_dir in reports:
        write(page, md_path, html_path, figure_dir)
    return Ablation(results, kept, folder, [path for *pages, _ in reports for path in pages])
