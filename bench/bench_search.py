"""Search against search: `mnistlab tune` and KerasTuner's Hyperband, one budget, several seeds.

For each search seed, one after the other on this machine, each side searches the same space
(examples/tune-mlp.toml or tune-cnn.toml; the peer, bench/peers/search_kerastuner.py, builds
the same networks with the same epochs cap, batch size and validation split) for a wall-time
budget, then retrains its best configuration once and reads the test set once:

  mnistlab    `mnistlab tune SPACE --seed S --timeout T --study-dir DIR`, then
              `mnistlab tune SPACE --study-dir DIR --final --with-validation`
  kerastuner  `timeout BUDGET python search_kerastuner.py search SPACE S ...`, then `final`

A search's curve is the best validation accuracy it would hand its user at each moment:
the best value among its finished trials (Optuna's complete trials; KerasTuner's completed
ones, whose score is their best epoch), at the wall-clock time each finished, counted from
the launch of the search's process (start-up, data and compilation included). Curves are
summarized across seeds by their median and range at each moment; the report gives each
side's time to reach `--target`, mnistlab's time to reach the peer's median best at a third,
two thirds and the end of the peer's budget, and both sides' median best at the shorter one.

One side can be run later on the same machine and joined to an earlier report of the other
(`--runs-from`, as in the second line below): the report says so. `--peer kerastuner-tf`
runs KerasTuner on Keras' TensorFlow backend instead of JAX (the third line: against the
mnistlab runs of an earlier report).

Usage (from the repository root; the peer's venv: `bench/peers.py install --peers kerastuner`):
    .venv/bin/python bench/bench_search.py --space mlp --budget 900 --mnistlab-budget 300 --seeds 3,4,5
    .venv/bin/python bench/bench_search.py --space mlp --sides mnistlab --mnistlab-budget 300 --seeds 3,4,5 \
        --mnistlab-options='--pruner median' --runs-from docs/bench-search-mlp.json --out /tmp/variant
    .venv/bin/python bench/bench_search.py --space cnn --sides kerastuner --peer kerastuner-tf --seeds 3,4,5 \
        --runs-from docs/bench-search-cnn.json
Writes bench-search-SPACE.json, .md and .png into --out (default docs/); with another --peer,
bench-search-SPACE-PEER.*.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import machine
import peers
from bench_tune import run  # a command timed, its output logged, mnistlab's src/ first on its path

ROOT = Path(__file__).resolve().parents[1]
SPACES = {"mlp": ROOT / "examples" / "tune-mlp.toml", "cnn": ROOT / "examples" / "tune-cnn.toml"}
SIDES = ("mnistlab", "kerastuner")

Curve = list[tuple[float, float]]  # (seconds since launch, best value so far), one step per improvement


# ------------------------------------------------------------------ curves (pure)


def best_so_far(finished: list[tuple[float, float | None]]) -> Curve:
    """The steps of the running best of (seconds, value) events; None values (a failed or
    pruned trial) never count. Values are rounded to 6 places: both tools write float32
    accuracies, and 5,928 of 6,000 images written as 0.98799997 is 98.8%."""
    curve: Curve = []
    for seconds, value in sorted((s, round(v, 6)) for s, v in finished if v is not None):
        if not curve or value > curve[-1][1]:
            curve.append((seconds, value))
    return curve


def value_at(curve: Curve, seconds: float) -> float | None:
    """The best value reached by `seconds` (None before the first finished trial)."""
    reached = [value for t, value in curve if t <= seconds]
    return reached[-1] if reached else None


def time_to(curve: Curve, target: float) -> float | None:
    """The first moment the curve reaches `target`, or None if it never does."""
    return next((t for t, value in curve if value >= target), None)


def median_time_to(curves: list[Curve], target: float) -> float | None:
    """The median over curves of the time to `target`, a curve that never gets there
    counting as infinitely late: None when half or more never get there."""
    times = sorted(time_to(c, target) or float("inf") for c in curves)
    middle = statistics.median(times)
    return None if middle == float("inf") else middle


def band(curves: list[Curve], grid: list[float]) -> list[dict]:
    """Median, min and max across curves at each moment of `grid` (a curve without a value
    yet counts as 0: no model to hand over)."""
    rows = []
    for t in grid:
        values = [value_at(c, t) or 0.0 for c in curves]
        rows.append({"seconds": t, "median": statistics.median(values), "min": min(values), "max": max(values)})
    return rows


def median_at(curves: list[Curve], seconds: float) -> float:
    """The median across curves of the best value by `seconds` (as `band` counts it)."""
    return band(curves, [seconds])[0]["median"]


# ------------------------------------------------------------------ the two sides


def mnistlab_timeout(budget: float) -> float:
    """`--timeout` for a budget: the search stops asking for trials then and stops those in
    training at the end of their epoch, so the start-up before it and that last epoch after
    it come out of the budget (about 15 s for the largest MLP on 2 cores)."""
    return max(1.0, budget - min(20.0, budget / 5))


def mnistlab_trials(study: Path, launched: float) -> list[tuple[float, float | None]]:
    """(seconds since launch, value) of the study's finished trials, from trials.json
    (the value only of complete trials, as Optuna's best counts)."""
    rows = json.loads((study / "trials.json").read_text()) if (study / "trials.json").exists() else []
    return [(dt.datetime.fromisoformat(r["finished"]).timestamp() - launched,
             r["value"] if r["state"] == "COMPLETE" else None) for r in rows if r.get("finished")]


def kerastuner_trials(work: Path, launched: float, key: str = "score") -> list[tuple[float, float | None]]:
    """(seconds since launch, value) of the peer's finished trials, from its timeline: by
    `score` (its best epoch, as KerasTuner ranks) or `last` (its last epoch, as mnistlab ranks)."""
    path = work / "timeline.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(e["time"] - launched, e.get(key)) for e in map(json.loads, lines)]


def search_mnistlab(space: Path, seed: int, budget: float, folder: Path, final: bool,
                    options: Sequence[str] = ()) -> dict:
    """`options`: more of `mnistlab tune`'s options for the search (another sampler, pruner...)."""
    base = [sys.executable, "-m", "mnistlab", "tune", str(space), "--study-dir", str(folder), "--quiet"]
    search = [*base, "--trials", "100000", "--seed", str(seed), "--timeout", f"{mnistlab_timeout(budget):g}",
              *options]
    launched = time.time()
    code, seconds = run(search, folder.with_suffix(".search.log"))
    record = {"command": " ".join(search[1:]), "exit": code, "seconds": seconds,
              "trials": mnistlab_trials(folder, launched)}
    if final and code == 0:
        code, seconds = run([*base, "--final", "--with-validation"], folder.with_suffix(".final.log"))
        evaluations = json.loads((folder / "final.json").read_text()) if (folder / "final.json").exists() else []
        test = (evaluations[-1].get("test") or {}) if evaluations else {}
        record.update(final_exit=code, final_seconds=seconds, test_accuracy=test.get("accuracy"))
    return record


def search_kerastuner(space: str, seed: int, budget: float, folder: Path, final: bool, venvs: Path,
                      peer: peers.Peer) -> dict:
    python, script = str(peers.venv_python(peer, venvs)), str(peers.script_path(peer))
    env = {**os.environ, **peer.env}
    folder.mkdir(parents=True, exist_ok=True)
    args = [space, str(seed), str(peers.default_data_dir()), str(folder)]
    launched = time.time()
    code, seconds = run([python, script, "search", *args], folder.with_suffix(".search.log"), env, budget)
    record = {"command": f"timeout {budget:g} {Path(python).name} {Path(script).name} search {' '.join(args)}",
              "exit": code, "seconds": seconds, "trials": kerastuner_trials(folder, launched),
              "trials_by_last_epoch": kerastuner_trials(folder, launched, "last")}
    if final and record["trials"]:
        log = folder.with_suffix(".final.log")
        code, seconds = run([python, script, "final", *args], log, env)
        result = json.loads(log.read_text().strip().splitlines()[-1]) if code == 0 else {}
        record.update(final_exit=code, final_seconds=seconds, test_accuracy=result.get("test_accuracy"))
    return record


def earlier_mismatch(earlier: dict, space: str, info: dict, peer: str | None = None) -> str | None:
    """Why an earlier report's runs cannot join this one (None: they can): another space, or
    another machine (its processor, flags or cores), since a comparison counts only on one;
    or, when its KerasTuner runs would join (`peer`), another peer than this report's."""
    if earlier.get("space") != space:
        return f"it searched the {earlier.get('space')!r} space, not {space!r}"
    if peer is not None and earlier.get("peer", "kerastuner") != peer:
        return f"its KerasTuner runs are the {earlier.get('peer', 'kerastuner')!r} peer's, not {peer!r}"
    for key in ("cpu", "flags", "cores_usable"):
        if earlier.get("machine", {}).get(key) != info.get(key):
            return f"it ran on another machine ({key}: {earlier.get('machine', {}).get(key)!r}, here {info.get(key)!r})"
    return None


# ------------------------------------------------------------------ the report


def summarize(runs: dict[str, list[dict]], budgets: dict[str, float], target: float, step: float = 5.0) -> dict:
    """Per side: curves, median time to `target`, median best at the end; and mnistlab's
    median time to the peer's median end value."""
    out: dict = {"target": target, "sides": {}}
    for side, records in runs.items():
        curves = [best_so_far(r["trials"]) for r in records]
        grid = [i * step for i in range(int(budgets[side] // step) + 1)]
        ends = [value_at(c, budgets[side]) for c in curves]
        out["sides"][side] = {
            "budget": budgets[side], "seeds": [r["seed"] for r in records], "curves": curves,
            "band": band(curves, grid), "finished_trials": [len(r["trials"]) for r in records],
            "end_values": ends, "median_end_value": statistics.median(v or 0.0 for v in ends),
            "times_to_target": [time_to(c, target) for c in curves],
            "median_time_to_target": median_time_to(curves, target),
            "test_accuracies": [r.get("test_accuracy") for r in records],
        }
        if all("trials_by_last_epoch" in r for r in records):  # the peer, judged as mnistlab judges
            out["sides"][side]["median_end_value_by_last_epoch"] = median_at(
                [best_so_far(r["trials_by_last_epoch"]) for r in records], budgets[side])
    if set(SIDES) <= set(out["sides"]):
        # Along the peer's budget: its median best at a third, two thirds and the end, and
        # mnistlab's median time to reach each (the ratio of the two is the speed-up there).
        curves = {side: out["sides"][side]["curves"] for side in SIDES}
        out["mnistlab_time_to_peer_at"] = [
            {"seconds": t, "peer": value, "mnistlab_seconds": median_time_to(curves["mnistlab"], value)}
            for t in (budgets["kerastuner"] / 3, 2 * budgets["kerastuner"] / 3, budgets["kerastuner"])
            for value in [median_at(curves["kerastuner"], t)]]
        # Both sides at the shorter budget: what each search had found by then.
        shorter = min(budgets[side] for side in SIDES)
        out["at_shorter_budget"] = {"seconds": shorter, **{side: median_at(curves[side], shorter) for side in SIDES}}
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _secs(v: float | None) -> str:
    return "not reached" if v is None else f"{v:.0f} s"


def markdown(summary: dict, space: str, info: dict, peer: peers.Peer = peers.KERASTUNER_PEERS["kerastuner"]) -> str:
    target = summary["target"]
    lines = [f"Space `{space}`, KerasTuner on Keras' {peer.env['KERAS_BACKEND']} backend, {machine.summary(info)}.", "",
             f"| search | budget | seeds | finished trials | best validation at the end (median, range) | "
             f"time to {_pct(target)} (each seed; median) | test after one retraining |",
             "| --- | ---: | --- | --- | --- | --- | --- |"]
    for side, s in summary["sides"].items():
        ends = [v or 0.0 for v in s["end_values"]]  # no finished trial: no model, 0
        lines.append(
            f"| {peer.name if side == 'kerastuner' else side} | {s['budget']:.0f} s | {', '.join(map(str, s['seeds']))} | "
            f"{', '.join(map(str, s['finished_trials']))} | {_pct(s['median_end_value'] or None)} "
            f"({_pct(min(ends) or None)} to {_pct(max(ends) or None)}) | "
            f"{', '.join(_secs(t) for t in s['times_to_target'])}; "
            f"**{_secs(s['median_time_to_target'])}** | {', '.join(_pct(a) for a in s['test_accuracies'])} |")
    if "mnistlab_time_to_peer_at" in summary:
        lines += ["", "| KerasTuner's median best at | is | mnistlab's median time to it |", "| ---: | ---: | ---: |"]
        lines += [f"| {r['seconds']:.0f} s | {_pct(r['peer'])} | {_secs(r['mnistlab_seconds'])} |"
                  for r in summary["mnistlab_time_to_peer_at"]]
        at = summary["at_shorter_budget"]
        lines += ["", f"At {at['seconds']:.0f} s, the median best validation was {_pct(at['mnistlab'])} for mnistlab "
                      f"and {_pct(at['kerastuner'])} for KerasTuner."]
        by_last = summary["sides"]["kerastuner"].get("median_end_value_by_last_epoch")
        if by_last is not None:
            lines += ["", f"KerasTuner ranks a trial by its best epoch; by its last epoch (as mnistlab ranks, and as "
                          f"the retrained model ends) its median end value is {_pct(by_last)}."]
    return "\n".join(lines) + "\n"


def figure(summary: dict, space: str, peer: str = "kerastuner"):
    """Best validation accuracy against wall time: each side's median over seeds, its range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for side, s in summary["sides"].items():
        t = [r["seconds"] / 60 for r in s["band"]]
        color = f"C{SIDES.index(side)}"  # one color a side, whichever side ran first
        ax.step(t, [100 * r["median"] for r in s["band"]], where="post", color=color,
                label=f"{peer if side == 'kerastuner' else side} (median)")
        ax.fill_between(t, [100 * r["min"] for r in s["band"]], [100 * r["max"] for r in s["band"]],
                        step="post", alpha=0.2, color=color)
    ax.axhline(100 * summary["target"], color="grey", linestyle=":", linewidth=1)
    finals = [100 * v for s in summary["sides"].values() for v in s["end_values"] if v]
    if finals:
        ax.set_ylim(min(finals) - 0.6, max(finals) + 0.15)
    ax.set(xlabel="wall time (minutes, from the search's launch)", ylabel="best validation accuracy (%)",
           title=f"Search on the `{space}` space: best model so far")
    ax.legend(loc="lower right")
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", choices=sorted(SPACES), default="mlp")
    parser.add_argument("--budget", type=float, default=900.0, help="seconds of search for each side")
    parser.add_argument("--mnistlab-budget", type=float, default=None, help="mnistlab's own (default: --budget)")
    parser.add_argument("--seeds", default="0,1,2", help="search seeds, each run by every side")
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--target", type=float, default=0.988, help="validation accuracy whose time is reported")
    parser.add_argument("--no-final", action="store_true", help="search only: no retraining, no test")
    parser.add_argument("--work", type=Path, default=None, help="study folders (default: a new folder in studies/)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--venvs-dir", type=Path, default=peers.DEFAULT_VENVS_DIR)
    parser.add_argument("--peer", choices=sorted(peers.KERASTUNER_PEERS), default="kerastuner",
                        help="the KerasTuner side's venv: Keras on JAX (kerastuner) or on TensorFlow (kerastuner-tf)")
    parser.add_argument("--mnistlab-space", type=Path, default=None,
                        help="mnistlab's space file (default: examples/tune-SPACE.toml), e.g. an earlier default's")
    parser.add_argument("--mnistlab-options", default="",
                        help="more `mnistlab tune` options for mnistlab's search, e.g. '--pruner none'")
    parser.add_argument("--runs-from", type=Path, default=None,
                        help="an earlier report's JSON (this machine, this space): its sides not run now join the report")
    args = parser.parse_args(argv)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = sorted(set(sides) - set(SIDES))
    if unknown:
        print(f"--sides: unknown {', '.join(unknown)}; choose from {', '.join(SIDES)}", file=sys.stderr)
        return 2
    peer = peers.KERASTUNER_PEERS[args.peer]
    if "kerastuner" in sides and not peers.is_installed(peer, args.venvs_dir):
        print(f"the {peer.name} peer is not installed: `.venv/bin/python bench/peers.py install --peers {peer.name}`",
              file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = {"mnistlab": args.mnistlab_budget or args.budget, "kerastuner": args.budget}
    work = args.work or ROOT / "studies" / f"bench-search-{dt.datetime.now():%Y%m%d-%H%M%S}"
    work.mkdir(parents=True, exist_ok=True)
    info = machine.describe()
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    earlier = {}
    if args.runs_from is not None:
        earlier = json.loads(args.runs_from.read_text())
        why = earlier_mismatch(earlier, args.space, info, None if "kerastuner" in sides else peer.name)
        if why:
            print(f"--runs-from {args.runs_from}: {why}; run both sides here instead", file=sys.stderr)
            return 2
    for seed in seeds:  # the sides alternate, so a drift of the machine falls on both
        for side in sides:
            folder = work / f"{side}-{args.space}-{seed}"
            print(f"{side}, seed {seed}: {budgets[side]:.0f} s", flush=True)
            if side == "mnistlab":
                space = args.mnistlab_space or SPACES[args.space]
                record = search_mnistlab(space, seed, budgets[side], folder, not args.no_final,
                                         shlex.split(args.mnistlab_options))
            else:
                record = search_kerastuner(args.space, seed, budgets[side], folder, not args.no_final, args.venvs_dir,
                                           peer)
            runs[side].append({"seed": seed, **record})
    joined: dict[str, str] = {}  # side -> the date of the report that ran it
    for side, records in earlier.get("runs", {}).items():
        if side not in runs:
            runs[side], budgets[side] = records, earlier["budgets"][side]
            joined[side] = earlier.get("runs_from", {}).get(side, earlier["date"])
    summary = summarize(runs, budgets, args.target)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench-search-{args.space}{'' if peer.name == 'kerastuner' else '-' + peer.name}"
    record = {"date": dt.datetime.now().isoformat(timespec="seconds"), "space": args.space, "peer": peer.name,
              "budgets": budgets, "peer_versions": (peers.peer_versions(peer, args.venvs_dir) if "kerastuner" in sides
                                else earlier.get("peer_versions")),
              "machine": info, "machine_after": machine.describe(), "runs": runs, "summary": summary}
    if joined:
        record["runs_from"] = joined
    Path(f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
    Path(f"{stem}.md").write_text(markdown(summary, args.space, info, peer) + "".join(
        f"\nThe {side} runs are those of the report of {date} on this machine (joined with --runs-from).\n"
        for side, date in joined.items()))
    figure(summary, args.space, peer.name).savefig(f"{stem}.png", dpi=120)
    print(Path(f"{stem}.md").read_text(), end="")
    failed = [r for rs in runs.values() for r in rs if r["exit"] not in (0, -15) or r.get("final_exit", 0) != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
