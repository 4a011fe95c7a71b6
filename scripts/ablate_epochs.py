"""Where do validation curves flatten? The measurement behind the `standard` ablation budget's epochs.

Trains the base networks of the claims whose verdicts depend most on training length (no
penalty and a small L2 penalty at the tutorial's 1000 units; dropout off and on at the
dropout claim's width) at the given budget's sizes for `--epochs` epochs, and prints each
one's mean validation curve over seeds, smoothed over 3 epochs (one seed's 6,000
validation images move by ~0.2 points from epoch to epoch), the first epoch whose smoothed
accuracy is within `--within` points of the best it reached (training past it buys less
than that), and how far below that best each epoch of `--at` is. Only validation images
are read (the test set is not evaluated).

    .venv/bin/python scripts/ablate_epochs.py --budget standard --epochs 30 --seeds 2
"""

import argparse
import dataclasses

import numpy as np

from mnistlab import ablate, populations
from mnistlab.ablate import flattens_at, smoothed

# (claim, variant) pairs whose curves the budget's epochs are chosen from.
WATCHED = {"regularization": ("none", "L2 0.0001"), "dropout": ("none", "hidden 0.5", "input 0.2 + hidden 0.5")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="standard", choices=sorted(ablate.BUDGETS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--within", type=float, default=0.2, help="points of validation accuracy")
    parser.add_argument("--at", type=int, nargs="*", default=[10, 20], help="epochs to report the shortfall at")
    args = parser.parse_args()
    budget = dataclasses.replace(ablate.BUDGETS[args.budget], epochs=args.epochs, long_epochs=args.epochs,
                                 strengths=(1e-4,))
    load = populations.loader(None)
    for key, names in WATCHED.items():
        claim = ablate.CLAIMS[key](budget)
        group = [m for m in ablate.members(claim, args.seeds) if m.variant in names]
        populations.run(group, load, lanes=1)
        for name in names:
            runs = [m for m in group if m.variant == name]
            curve = smoothed(100 * np.mean([[r["val_accuracy"] for r in m.history] for m in runs], axis=0))
            short = ", ".join(f"epoch {e}: {curve.max() - curve[e - 1]:.2f} below" for e in args.at if e <= len(curve))
            print(f"{key}, {name}: flattens at epoch {flattens_at(curve, args.within)} of {len(curve)} "
                  f"(best {curve.max():.2f}%; {short}); smoothed validation accuracy by epoch: "
                  + " ".join(f"{v:.2f}" for v in curve))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
