"""`mnistlab ablate`: every claim of the tutorial (part 6), measured over seeds.

A claim is data (`Claim`): the tutorial's words, a base configuration, variants (spec
overrides of the base), arms (one variant, or the best of several variants chosen on
validation accuracy: a penalty at its best strength, an optimizer at its tuned learning
rate) and comparisons. A comparison is one statement, judged on one figure (test
accuracy, train-minus-validation gap, epochs to a validation-accuracy target, ...) in a
stated direction; its verdict comes from `stats.verdict` on the paired 95% interval of
(variant arm - baseline arm) over seeds, never from text written by hand.

    result = ablate.run(ablate.BUDGETS["quick"])          # a JSON-able dict
    result["claims"][0]["comparisons"][0]["verdict"]     # 'supported', ...

Running: a claim's members (variants x seeds) train through the one driver
(`populations.run`), grouped by program and data: penalty strengths, dropout rates,
learning rates, initializers, seeds and epoch counts of one network family share a single
compilation. Hyper-parameters are tuned on a
validation split of MNIST's training images only; every member is then evaluated once
on the test set, which is never used to choose anything (except in the `protocol` claim,
which measures what choosing on the test set would cost).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from mnistlab import data, model, multilabel, populations, stats
from mnistlab import spec as spec_lib
from mnistlab.errors import UserError, suggest

# ------------------------------------------------------------------ budgets


@dataclass(frozen=True)
class Budget:
    """How much computation an ablation spends; `FULL` is the reference the others reduce."""

    name: str
    seeds: int
    subset: int  # MNIST training images used: training part + validation part
    validation: float  # the last fraction of those, held out (Keras' validation_split)
    epochs: int  # most claims
    long_epochs: int  # dropout (it pays off late)
    time_epochs: int  # the time-to-target claims: activation, optimizer, decay
    units: int  # hidden units of the claims' network
    penalty_units: int  # hidden units of the regularization claim (the tutorial: 1000)
    dropout_units: int  # each of the dropout claim's two hidden layers
    batch: int
    target: float  # validation accuracy for "epochs / seconds to reach"
    strengths: tuple[float, ...]  # penalty strengths swept (0.01, the tutorial's, always in)
    penalty_kinds: tuple[str, ...]  # of "L1", "L2", "L1+L2": the penalties swept
    learning_rates: dict[str, tuple[float, ...]]  # per optimizer, the grid it is tuned on
    tutorial_epochs: int  # the epoch budget of the tutorial's program (it trains 20)
    multi_subset: int | None  # mnist-multi composites used (None: all ~39,900)
    pool_units: int  # the protocol claim's pool of configurations
    pool_epochs: int
    pool_learning_rates: tuple[float, ...]
    pool_l2: tuple[float, ...]
    resamples: int  # random test-set halvings in the protocol claim
    claims: tuple[str, ...] | None = None  # the claims run by default (None: all)
    # Sequential testing: a statement still open after `seeds` gets more, doubling up to this
    # many (None: one look). See `look_seeds` and `run_claim`.
    max_seeds: int | None = None
    expected: str = ""  # how long it takes, as measured / estimated


FULL = Budget(
    name="full", seeds=5, subset=60000, validation=0.1, epochs=20, long_epochs=40, time_epochs=20,
    units=1000, penalty_units=1000, dropout_units=1024, batch=128, target=0.97,
    strengths=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2), penalty_kinds=("L1", "L2", "L1+L2"),
    learning_rates={"sgd": (0.03, 0.1, 0.3, 1.0), "momentum": (0.01, 0.03, 0.1, 0.3),
                    "nesterov": (0.01, 0.03, 0.1, 0.3), "adam": (3e-4, 1e-3, 3e-3, 1e-2)},
    tutorial_epochs=20, multi_subset=None, pool_units=256, pool_epochs=10,
    pool_learning_rates=(3e-4, 1e-3, 3e-3, 1e-2), pool_l2=(0.0, 1e-5, 1e-4, 1e-3), resamples=1000,
    expected="about 8.5 hours on a 2-core CPU (estimated from the quick run's measured speed per claim, "
             "docs/ablate-quick.md)")

QUICK = dataclasses.replace(
    FULL, name="quick", seeds=3, subset=20000, validation=0.25, epochs=6, long_epochs=8, time_epochs=8,
    units=256, penalty_units=256, dropout_units=512, target=0.95, strengths=(1e-5, 1e-4, 1e-3, 1e-2),
    learning_rates={"sgd": (0.1, 0.3, 1.0), "momentum": (0.03, 0.1, 0.3), "nesterov": (0.03, 0.1, 0.3),
                    "adam": (1e-3, 3e-3, 1e-2)},
    tutorial_epochs=3, multi_subset=20000, pool_units=128, pool_epochs=4, resamples=200,
    expected="under 20 minutes on a 2-core CPU")

# For the test suite: seconds, not minutes. Numbers from it mean nothing.
TEST = dataclasses.replace(
    QUICK, name="test", seeds=2, subset=2000, epochs=1, long_epochs=1, time_epochs=1, units=32,
    penalty_units=32, dropout_units=32, target=0.8, strengths=(1e-4, 1e-2),
    learning_rates={"sgd": (0.1,), "momentum": (0.03,), "nesterov": (0.03,), "adam": (1e-3,)},
    tutorial_epochs=1, multi_subset=2000, pool_units=32, pool_epochs=1, pool_learning_rates=(1e-3, 1e-2),
    pool_l2=(0.0, 1e-4), resamples=20, claims=("regularization", "output"), expected="under a minute")

# The tutorial's sizes (all 60,000 images, 1000 hidden units, 5 seeds) in about 70 minutes on 2
# cores. Epochs: where validation curves flatten. scripts/ablate_epochs.py measured (2 seeds,
# 25 epochs, smoothed over 3) the 1000-unit network within 0.2 points of its best by epoch 9-10
# with or without L2, and the dropout claim's network by epoch 10-15 (hidden 0.5: 13; input 0.2
# + hidden 0.5: 15), so 10 epochs, and 20 for dropout. Dropout's two layers have 512 units, as
# Keras' mnist_mlp example (20 epochs, dropout 0.2), not 1024: a quarter of the time. Grids
# widened past the quick run's edges (L1 and L2 best at its smallest strength, 1e-5; SGD at
# its largest rate, 1); L1+L2, which no statement compares, is left out. Sequential testing:
# a statement open after 5 seeds that 20 could decide is read again after 10 and, still
# open, after 20 (`run_claim`): at 10 alone, dropout 0.5 against none stayed open at +0.16
# [-0.03, +0.35] points, 16 seeds needed at its spread.
STANDARD = dataclasses.replace(
    FULL, name="standard", max_seeds=20, epochs=10, long_epochs=20, time_epochs=10, dropout_units=512,
    strengths=(1e-7, 1e-6, 1e-5, 1e-4, 1e-3), penalty_kinds=("L1", "L2"),
    learning_rates={"sgd": (0.1, 0.3, 1.0, 3.0), "momentum": (0.03, 0.1, 0.3), "nesterov": (0.03, 0.1, 0.3),
                    "adam": (3e-4, 1e-3, 3e-3)},
    tutorial_epochs=10, pool_epochs=10,
    expected="about 70 minutes on a 2-core CPU")

BUDGETS = {b.name: b for b in (QUICK, STANDARD, FULL, TEST)}

# What each budget field means to a reader, for "what this budget reduced".
_FIELDS = {
    "seeds": "seeds", "subset": "MNIST training images used (training + validation)",
    "epochs": "epochs", "long_epochs": "epochs", "time_epochs": "epochs", "units": "hidden units",
    "penalty_units": "hidden units", "dropout_units": "hidden units per layer", "target": "target accuracy",
    "strengths": "penalty strengths", "penalty_kinds": "penalties", "learning_rates": "learning rates tried",
    "tutorial_epochs": "epochs",
    "multi_subset": "mnist-multi images used", "pool_units": "hidden units", "pool_epochs": "epochs",
    "resamples": "test-set halvings",
}


def _show(value: Any) -> str:
    if value is None:
        return "all"
    if isinstance(value, dict):
        return "; ".join(f"{k} " + ", ".join(f"{x:g}" for x in v) for k, v in value.items())
    if isinstance(value, tuple):
        return ", ".join(x if isinstance(x, str) else f"{x:g}" for x in value)
    if isinstance(value, float) and value < 1:
        return f"{value:.0%}"
    return str(value)


def reductions(budget: Budget, fields: tuple[str, ...]) -> list[str]:
    """'epochs: 6 (full: 20)' for every setting where `budget` differs from FULL."""
    out = [f"{_FIELDS[f]}: {_show(getattr(budget, f))} (full: {_show(getattr(FULL, f))})"
           for f in ("seeds", *fields) if getattr(budget, f) != getattr(FULL, f)]
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------ claims as data


@dataclass(frozen=True)
class Variant:
    name: str
    values: dict[str, Any]  # spec overrides of the claim's base (`spec.with_values`)


@dataclass(frozen=True)
class Arm:
    """The best of several variants, chosen by mean validation accuracy over seeds."""

    name: str
    variants: tuple[str, ...]
    grid: bool = True  # the variants are a grid of one number (a choice at its edge is flagged)


@dataclass(frozen=True)
class Comparison:
    statement: str  # what is claimed, in words
    variant: str  # an arm or a variant
    baseline: str
    figure: str  # a key of FIGURES
    better: stats.Better = "higher"  # the claimed direction of variant - baseline
    tolerance: float = 0.0  # > 0: the claim is "not worse by more than this" (see stats.verdict)
    source: str = "tutorial"  # tutorial | literature | question


@dataclass(frozen=True)
class Claim:
    key: str
    title: str
    quote: str  # the tutorial's words
    base: spec_lib.RunSpec
    variants: tuple[Variant, ...]
    comparisons: tuple[Comparison, ...]
    figures: tuple[str, ...]  # the figures the report tabulates and plots
    budget_fields: tuple[str, ...]  # which budget settings shape it (for "what was reduced")
    arms: tuple[Arm, ...] = ()
    analysis: str | None = None  # extra measurement: "sets" | "protocol" | "symmetry"
    notes: tuple[str, ...] = ()


# figure -> (label, unit scale for display, digits)
FIGURES: dict[str, tuple[str, float, int]] = {
    "test_accuracy": ("test accuracy (%)", 100, 2),
    "val_accuracy": ("validation accuracy (%)", 100, 2),
    "train_accuracy": ("training accuracy (%)", 100, 2),
    "gap": ("train - validation accuracy (points)", 100, 2),
    "test_loss": ("test loss", 1, 4),
    "train_loss": ("training loss", 1, 4),
    "sparsity": ("first-layer weights near 0 (%)", 100, 1),
    "rank": ("rank of the first-layer kernel", 1, 1),
    "epochs_to_target": ("epochs to the target validation accuracy", 1, 2),
    "seconds_to_target": ("seconds to the target validation accuracy", 1, 2),
    "seconds_per_epoch": ("seconds per epoch (one member)", 1, 3),
    "set_accuracy": ("test exact-set accuracy (%)", 100, 2),
    "macro_f1": ("test per-digit F1, mean over digits (%)", 100, 2),
    "optimism": ("reported - fresh accuracy (points)", 100, 3),
    "reported": ("reported test accuracy (%)", 100, 2),
    "fresh": ("accuracy on fresh data (%)", 100, 2),
}


def _dense(units: int, activation: str = "relu", init: Any = "glorot_normal", penalty: bool = False) -> dict:
    layer = {"type": "dense", "units": units, "activation": activation, "kernel_initializer": init}
    if penalty:
        layer["kernel_regularizer"] = {"l1": 0.0, "l2": 0.0}
    return layer


def _spec(budget: Budget, name: str, layers: list[dict], *, epochs: int, optimizer: dict | None = None,
          batch: int | None = None) -> spec_lib.RunSpec:
    return spec_lib.from_dict({
        "name": name, "dataset": "mnist", "model": {"layers": layers},
        "optimizer": optimizer or {"name": "adam"},
        "training": {"epochs": epochs, "batch_size": batch or budget.batch, "subset": budget.subset,
                     "validation": {"fraction": budget.validation}, "seed": 0}}, f"claim {name}")


def train_size(budget: Budget, subset: int | None = None) -> int:
    """Training images after the validation hold-out (data.holdout's 'last' rule)."""
    n = subset or budget.subset
    return int(math.floor(n * (1.0 - budget.validation)))


def _steps(budget: Budget, epochs: int, batch: int | None = None, subset: int | None = None) -> int:
    return epochs * -(-train_size(budget, subset) // (batch or budget.batch))


def _regularization(b: Budget) -> Claim:
    strengths = tuple(dict.fromkeys((*b.strengths, 0.01)))
    kinds = {"L1": lambda s: {"l1": s, "l2": 0.0}, "L2": lambda s: {"l1": 0.0, "l2": s},
             "L1+L2": lambda s: {"l1": s, "l2": s}}
    kinds = {k: fn for k, fn in kinds.items() if k in b.penalty_kinds}
    both = lambda reg: {f"model.layers.{i}.kernel_regularizer": reg for i in (0, 1)}  # noqa: E731
    variants = [Variant("none", both({"l1": 0.0, "l2": 0.0}))]
    variants += [Variant(f"{k} {s:g}", both(fn(s))) for k, fn in kinds.items() for s in strengths]
    arms = tuple(Arm(f"{k} best", tuple(f"{k} {s:g}" for s in strengths)) for k in kinds)
    return Claim(
        key="regularization", title="L1 and L2 penalties",
        quote="We use sometimes the L1 loss which is the average of the values of A, but mostly L2 loss is "
              "better (average of squares) [...] optimize for giving these A and b as uniform as possible "
              "so that it generalizes.",
        base=_spec(b, "regularization", [_dense(b.penalty_units, penalty=True),
                                         _dense(10, "softmax", penalty=True)], epochs=b.epochs),
        variants=tuple(variants), arms=arms,
        comparisons=(
            Comparison("L2 is better than L1, each at its best strength", "L2 best", "L1 best", "test_accuracy"),
            Comparison("L2 is better than L1 at the tutorial's strength 0.01", "L2 0.01", "L1 0.01",
                       "test_accuracy"),
            Comparison("A penalty (L2 at its best strength) generalizes better than none", "L2 best", "none",
                       "test_accuracy"),
            Comparison("A penalty (L2 at its best strength) narrows the train - validation gap", "L2 best",
                       "none", "gap", "lower"),
            Comparison("The tutorial's l2(0.01) generalizes better than no penalty", "L2 0.01", "none",
                       "test_accuracy"),
            Comparison("L1 drives more weights to zero than L2 (each at its best strength)", "L1 best",
                       "L2 best", "sparsity", source="literature"),
        ),
        figures=("test_accuracy", "val_accuracy", "gap", "sparsity"),
        budget_fields=("subset", "epochs", "penalty_units", "strengths", "penalty_kinds"),
        notes=("Penalties on both kernels, as the tutorial's program. Strengths matched: L1, L2 and L1+L2 "
               "(l1 = l2 = s) share the same grid of s; 'none' is s = 0. The strengths of one kind share one "
               "compiled program (the engine leaves zero-strength terms out, so each kind is its own).",
               "'best' = the strength with the highest mean validation accuracy over seeds; test accuracy "
               "is reported for that strength (the test set chose nothing).",
               "Sparsity: the fraction of first-layer weights with |w| < 1% of the largest |w| (Adam takes "
               "sub-gradient steps on |w|, so L1 leaves weights jittering near 0, not at 0)."))


def _dropout(b: Budget) -> Claim:
    u = b.dropout_units
    layers = [{"type": "dropout", "rate": 0.0}, _dense(u), {"type": "dropout", "rate": 0.0}, _dense(u),
              {"type": "dropout", "rate": 0.0}, _dense(10, "softmax")]
    rates = lambda i, h: {"model.layers.0.rate": i, "model.layers.2.rate": h, "model.layers.4.rate": h}  # noqa: E731
    return Claim(
        key="dropout", title="Dropout",
        quote="After seeing an image, we randomly select some teams to walk out and not give any feedback. "
              "[...] This diversification makes our network stronger.",
        base=_spec(b, "dropout", layers, epochs=b.long_epochs),
        variants=(Variant("none", rates(0.0, 0.0)), Variant("hidden 0.2", rates(0.0, 0.2)),
                  Variant("hidden 0.5", rates(0.0, 0.5)), Variant("input 0.2 + hidden 0.5", rates(0.2, 0.5))),
        comparisons=(
            Comparison("Dropout 0.5 on the hidden units generalizes better than none", "hidden 0.5", "none",
                       "test_accuracy"),
            Comparison("Dropout 0.2 on the hidden units generalizes better than none", "hidden 0.2", "none",
                       "test_accuracy"),
            Comparison("Dropout 0.2 on the input and 0.5 on the hidden units generalizes better than none",
                       "input 0.2 + hidden 0.5", "none", "test_accuracy", source="literature"),
            Comparison("Dropout 0.5 narrows the train - validation gap", "hidden 0.5", "none", "gap", "lower"),
        ),
        figures=("test_accuracy", "val_accuracy", "gap", "train_accuracy"),
        budget_fields=("subset", "long_epochs", "dropout_units"),
        notes=(f"Two hidden ReLU layers of {u} units (larger than the tutorial's one layer, where dropout is "
               "known to matter: Srivastava et al. 2014 used 1024-8192 units); 'none' is rate 0 in the same "
               "compiled program. Dropout needs long training to pay off (Srivastava et al. trained for "
               "hundreds of epochs): a short budget tests it where it is weakest.",))


def _activation(b: Budget) -> Claim:
    names = ("relu", "sigmoid", "tanh", "softmax")
    comparisons = [Comparison(f"ReLU reaches {b.target:.0%} validation accuracy in fewer epochs than {n}",
                              "relu", n, "epochs_to_target", "lower") for n in names[1:]]
    comparisons += [Comparison(f"ReLU ends with a higher test accuracy than {n}", "relu", n, "test_accuracy")
                    for n in names[1:]]
    comparisons.append(Comparison("ReLU is faster to compute than sigmoid (seconds per epoch)", "relu", "sigmoid",
                                  "seconds_per_epoch", "lower"))
    return Claim(
        key="activation", title="Hidden activation: ReLU, sigmoid, tanh, softmax",
        quote="We used softmax as our activation function for the inner layer. [...] The most popular one is "
              "ReLU. [...] ReLU is fast. [...] Unless you are a researcher, ReLU should be the default middle "
              "layer.",
        base=_spec(b, "activation", [_dense(b.units), _dense(10, "softmax")], epochs=b.time_epochs),
        variants=tuple(Variant(n, {"model.layers.0.activation": n}) for n in names),
        comparisons=tuple(comparisons),
        figures=("test_accuracy", "epochs_to_target", "seconds_to_target", "seconds_per_epoch"),
        budget_fields=("subset", "time_epochs", "units", "target"),
        notes=(f"Epochs to target: the first epoch whose validation accuracy is >= {b.target:.0%}; a member "
               f"that never gets there counts as {b.time_epochs + 1} (one more than trained), which keeps the "
               "order of the arms but understates the gap; seconds to target leave such members out.",
               "Seconds are per member (a population's epoch time over its members) on a shared machine: "
               "compare them within one report only."))


def _output(b: Budget) -> Claim:
    multi = {"dataset": "mnist-multi", "training.subset": b.multi_subset}
    return Claim(
        key="output", title="Output activation: softmax or sigmoid, one digit or several",
        quote="With softmax the sum of probabilities has to be 1, which means a neuron can give only one "
              "useful signal. Now suppose we had both cat and dog in the picture, softmax would get lost. In "
              "this case a sigmoid would be better.",
        base=_spec(b, "output", [_dense(b.units), _dense(10, "softmax")], epochs=b.epochs),
        variants=(Variant("digits, softmax", {}), Variant("digits, sigmoid", {"model.layers.1.activation": "sigmoid"}),
                  Variant("mnist-multi, softmax", multi),
                  Variant("mnist-multi, sigmoid", {**multi, "model.layers.1.activation": "sigmoid"})),
        comparisons=(
            Comparison("On images holding one or two digits, sigmoid finds the exact set of digits more often "
                       "than softmax", "mnist-multi, sigmoid", "mnist-multi, softmax", "set_accuracy"),
            Comparison("On images holding one or two digits, sigmoid has a higher per-digit F1 than softmax",
                       "mnist-multi, sigmoid", "mnist-multi, softmax", "macro_f1"),
            Comparison("On single digits, softmax (one signal) is at least as accurate as sigmoid (within 0.2 "
                       "points)", "digits, softmax", "digits, sigmoid", "test_accuracy", tolerance=0.002),
        ),
        figures=("test_accuracy", "set_accuracy", "macro_f1"),
        budget_fields=("subset", "epochs", "units", "multi_subset"),
        analysis="sets",
        notes=("mnist-multi: 28x56 images, one digit (half of them) or two digits of different classes side by "
               "side; the label is the set of digits (see `mnistlab.multilabel`). Softmax trains against the "
               "normalised set (1/2 each for two digits), sigmoid with binary cross-entropy.",
               "Each member's prediction rule (a probability threshold, or top-1 / top-2) is chosen on its "
               "validation set for the highest exact-set accuracy, then applied once to the test set; "
               "'test accuracy' is the engine's fixed rule (sigmoid p >= 0.5, softmax p >= 0.25; for single "
               "digits the arg-max)."))


def _initialization(b: Budget) -> Claim:
    inits = {"glorot_normal": "glorot_normal", "zeros": "zeros",
             "random_normal(0.05)": {"name": "random_normal", "stddev": 0.05}, "he_normal": "he_normal"}
    variants = tuple(Variant(f"{act}, {name}", {"model.layers.0.activation": act,
                                                "model.layers.0.kernel_initializer": init,
                                                "model.layers.1.kernel_initializer": init})
                     for act in ("relu", "sigmoid") for name, init in inits.items())
    return Claim(
        key="initialization", title="Initialization: Glorot, zeros, random normal, He",
        quote="Why not 0? [...] Xavier et. al did that and found an initial state that works "
              "better(glorot_normal). [...] It is a better parameter for softmax in most cases and worth being "
              "the default. For sigmoid, 0 is a good default.",
        base=_spec(b, "initialization", [_dense(b.units), _dense(10, "softmax")], epochs=b.epochs),
        variants=variants,
        comparisons=(
            Comparison("glorot_normal beats zeros (ReLU hidden layer)", "relu, glorot_normal", "relu, zeros",
                       "test_accuracy"),
            Comparison("glorot_normal beats random_normal(0.05) (ReLU hidden layer)", "relu, glorot_normal",
                       "relu, random_normal(0.05)", "test_accuracy"),
            Comparison("glorot_normal beats random_normal(0.05) (sigmoid hidden layer)", "sigmoid, glorot_normal",
                       "sigmoid, random_normal(0.05)", "test_accuracy"),
            Comparison("For sigmoid, 0 is a good default: zeros is within 0.5 points of glorot_normal",
                       "sigmoid, zeros", "sigmoid, glorot_normal", "test_accuracy", tolerance=0.005),
            Comparison("Zeros in a hidden layer makes every unit identical: a lower-rank first layer than "
                       "glorot_normal (sigmoid)", "sigmoid, zeros", "sigmoid, glorot_normal", "rank", "lower",
                       source="literature"),
            Comparison("he_normal beats glorot_normal for a ReLU layer (He et al. 2015)", "relu, he_normal",
                       "relu, glorot_normal", "test_accuracy", source="literature"),
        ),
        figures=("test_accuracy", "val_accuracy", "rank"),
        budget_fields=("subset", "epochs", "units"),
        analysis="symmetry",
        notes=("The initializer is set on both kernels (the tutorial sets glorot_normal on both); biases start "
               "at 0, as Keras'. Initializers are numbers drawn before training, so all four share one "
               "compiled program per activation.",
               "Rank: the number of singular values of the learned first-layer kernel above 1e-3 x the largest "
               "(0 for an all-zero kernel)."))


def _optimizer(b: Budget) -> Claim:
    families = {"SGD": {"optimizer": {"name": "sgd"}},
                "momentum": {"optimizer": {"name": "sgd", "momentum": 0.9}},
                "nesterov": {"optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True}},
                "Adam": {"optimizer": {"name": "adam"}}}
    grid = {"SGD": "sgd", "momentum": "momentum", "nesterov": "nesterov", "Adam": "adam"}
    variants, arms = [], []
    for fam, values in families.items():
        names = []
        for lr in b.learning_rates[grid[fam]]:
            names.append(f"{fam} lr {lr:g}")
            variants.append(Variant(names[-1], {"optimizer": {**values["optimizer"], "learning_rate": lr}}))
        arms.append(Arm(f"{fam} tuned", tuple(names)))
    t = f"{b.target:.0%}"
    return Claim(
        key="optimizer", title="SGD, momentum, Nesterov, Adam",
        quote="Momentum gives a good boost over raw SGD. The overshooting problem was later solved by other "
              "methods and we should be using ADAM to get to the results faster.",
        base=_spec(b, "optimizer", [_dense(b.units), _dense(10, "softmax")], epochs=b.time_epochs),
        variants=tuple(variants), arms=tuple(arms),
        comparisons=(
            Comparison(f"Momentum reaches {t} validation accuracy in fewer epochs than SGD", "momentum tuned",
                       "SGD tuned", "epochs_to_target", "lower"),
            Comparison("Momentum ends more accurate than SGD", "momentum tuned", "SGD tuned", "test_accuracy"),
            Comparison(f"Adam reaches {t} in fewer epochs than momentum", "Adam tuned", "momentum tuned",
                       "epochs_to_target", "lower"),
            Comparison(f"Adam reaches {t} in fewer epochs than SGD", "Adam tuned", "SGD tuned",
                       "epochs_to_target", "lower"),
            Comparison("Adam ends more accurate than momentum", "Adam tuned", "momentum tuned", "test_accuracy"),
            Comparison("Nesterov momentum (less overshooting) ends more accurate than plain momentum",
                       "nesterov tuned", "momentum tuned", "test_accuracy", source="literature"),
        ),
        figures=("test_accuracy", "epochs_to_target", "seconds_to_target", "val_accuracy"),
        budget_fields=("subset", "time_epochs", "units", "learning_rates", "target"),
        notes=("'tuned' = the learning rate with the highest mean final validation accuracy over seeds, from "
               "the grid listed in the configurations; momentum 0.9. Epochs to target: as in the activation "
               "claim (a member that never reaches it counts as one epoch more than trained).",))


def _decay(b: Budget) -> Claim:
    steps = _steps(b, b.time_epochs)
    to_tenth = 9.0 / steps  # lr / (1 + decay * steps) = lr / 10 at the last step
    return Claim(
        key="decay", title="Learning-rate decay",
        quote="The learning rate we talked about is defined in keras, but the default decay is 0. Adding some "
              "decay can get a little bit closer to the local optimum than before.",
        base=_spec(b, "decay", [_dense(b.units), _dense(10, "softmax")], epochs=b.time_epochs),
        variants=(Variant("none", {}), Variant("inverse-time 1e-6", {"optimizer.decay": 1e-6}),
                  Variant("inverse-time to lr/10", {"optimizer.decay": to_tenth}),
                  Variant("cosine", {"optimizer.schedule": {"name": "cosine", "decay_steps": steps}})),
        comparisons=(
            Comparison("Inverse-time decay (to lr/10) gets closer to the optimum: lower final training loss",
                       "inverse-time to lr/10", "none", "train_loss", "lower"),
            Comparison("Inverse-time decay (to lr/10) ends more accurate", "inverse-time to lr/10", "none",
                       "test_accuracy"),
            Comparison("Keras 2's usual decay=1e-6 ends more accurate", "inverse-time 1e-6", "none",
                       "test_accuracy"),
            Comparison("Cosine decay gets closer to the optimum: lower final training loss", "cosine", "none",
                       "train_loss", "lower", source="question"),
            Comparison("Cosine decay ends more accurate", "cosine", "none", "test_accuracy", source="question"),
        ),
        figures=("test_accuracy", "train_loss", "val_accuracy"),
        budget_fields=("subset", "time_epochs", "units"),
        notes=(f"Adam at 1e-3 (the tutorial's optimizer). The tutorial's decay is Keras 2's `decay` argument: "
               f"lr / (1 + decay x step). 'to lr/10' sets decay = 9 / {steps} steps; 1e-6 is the value Keras' "
               f"own examples used. Cosine decays to 0 over the {steps} steps.",
               "Training loss: evaluated after training on training images (no penalty here), not the "
               "running mean during the last epoch."))


def _protocol(b: Budget) -> Claim:
    variants = tuple(Variant(f"lr {lr:g}, l2 {l2:g}", {"optimizer.learning_rate": lr,
                                                       "model.layers.0.kernel_regularizer.l2": l2,
                                                       "model.layers.1.kernel_regularizer.l2": l2})
                     for lr in b.pool_learning_rates for l2 in b.pool_l2)
    return Claim(
        key="protocol", title="Choosing on validation, verifying on test",
        quote="If we are experimenting, it is a good idea to split the training set into a training a "
              "validation set. We can then use the training set for training, validation set to try out "
              "various hyper parameters and the test set for the final verification.",
        base=_spec(b, "protocol", [_dense(b.pool_units, penalty=True), _dense(10, "softmax", penalty=True)],
                   epochs=b.pool_epochs),
        variants=variants,
        comparisons=(
            Comparison("Choosing the configuration by test accuracy overstates it: its reported test accuracy "
                       "exceeds its accuracy on fresh data by more than when choosing by validation",
                       "chosen on test", "chosen on validation", "optimism"),
            Comparison("Choosing by validation loses nothing on fresh data (within 0.2 points of choosing by "
                       "test)", "chosen on validation", "chosen on test", "fresh", tolerance=0.002),
        ),
        figures=("reported", "fresh", "optimism"),
        budget_fields=("subset", "pool_epochs", "pool_units", "resamples"),
        analysis="protocol",
        notes=(f"A pool of {len(variants)} configurations (learning rate x L2 strength) is trained per seed. "
               f"The 10,000 test images are split at random into halves A and B, {b.resamples} times per seed: "
               "'chosen on test' takes the configuration with the best accuracy on A and reports that accuracy; "
               "'chosen on validation' takes the best on the validation split and reports its accuracy on A. "
               "B is fresh data for both. Optimism = reported (A) - fresh (B), averaged over the halvings.",))


def _tutorial(b: Budget) -> Claim:
    seed = spec_lib.preset("seed")
    base = spec_lib.with_values(seed, {"name": "tutorial", "training.epochs": b.tutorial_epochs,
                                       "training.subset": b.subset,
                                       "training.validation": {"fraction": b.validation}})
    steps = _steps(b, b.tutorial_epochs, 128)
    wide = {"model.layers.0.kernel_regularizer": None, "model.layers.2.kernel_regularizer": None,
            "training.batch_size": 128,
            "optimizer.schedule": {"name": "cosine", "decay_steps": steps}}
    fast = {**wide, "model.layers.0.units": 256, "optimizer.learning_rate": 0.003}
    candidates = ("l2 1e-4", "1000 units, no penalty, cosine, batch 128", "256 units, Adam 3e-3, cosine, batch 128")
    return Claim(
        key="tutorial", title="The tutorial's program against the best found in the same epochs",
        quote="Again all the numbers I have put in are hyper parameters and playing with them you might find "
              "better results.",
        base=base,
        variants=(Variant("tutorial", {}),
                  Variant(candidates[0], {"model.layers.0.kernel_regularizer.l2": 1e-4,
                                          "model.layers.2.kernel_regularizer.l2": 1e-4}),
                  Variant(candidates[1], wide), Variant(candidates[2], fast)),
        arms=(Arm("best found", candidates, grid=False),),
        comparisons=(
            Comparison("Playing with the hyper-parameters finds a better program (test accuracy, same epochs)",
                       "best found", "tutorial", "test_accuracy"),
            Comparison("... and one that over-fits no more (train - validation gap within 1 point)", "best found",
                       "tutorial", "gap", "lower", tolerance=0.01),
        ),
        figures=("test_accuracy", "val_accuracy", "gap"),
        budget_fields=("subset", "tutorial_epochs"),
        notes=("The tutorial's program: 784-1000-10, ReLU, softmax, glorot_normal, l2(0.01) on both kernels, "
               "Adam, batch 32 (the `seed` preset). The candidates get the same number of epochs; 'best found' "
               "is the candidate with the highest mean validation accuracy.",))


CLAIMS: dict[str, Callable[[Budget], Claim]] = {
    "regularization": _regularization, "dropout": _dropout, "activation": _activation, "output": _output,
    "initialization": _initialization, "optimizer": _optimizer, "decay": _decay, "protocol": _protocol,
    "tutorial": _tutorial,
}


def claims(budget: Budget, only: list[str] | None = None) -> list[Claim]:
    """The claims to run: `only` (in CLAIMS' order; an item may name several, comma-separated),
    else the budget's default set."""
    only = [k.strip() for item in only or [] for k in item.split(",") if k.strip()]
    if only:
        unknown = [k for k in only if k not in CLAIMS]
        if unknown:
            raise UserError(f"--only {unknown[0]!r}: unknown claim; "
                            f"{suggest(unknown[0], tuple(CLAIMS))}")
        keys = [k for k in CLAIMS if k in only]
    else:
        keys = [k for k in CLAIMS if budget.claims is None or k in budget.claims]
    return [CLAIMS[k](budget) for k in keys]


# ------------------------------------------------------------------ running


@dataclass
class Member(populations.Member):
    """A claim's member: the driver's record, plus what the analysis measures of it."""

    figures: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    kernel: np.ndarray | None = None  # first-layer kernel (kept for the symmetry picture)
    test_correct: np.ndarray | None = None  # per test image (kept for the protocol claim)

    @property
    def variant(self) -> str:
        return self.tags["variant"]

    @property
    def diverged(self) -> bool:
        return self.status == populations.DIVERGED


def members(claim: Claim, seeds: int, *, first_seed: int = 0, variants: set[str] | None = None,
            first_index: int = 0) -> list[Member]:
    """The claim's members: each variant (of `variants`, default all) with seeds
    first_seed ... seeds - 1, numbered from `first_index`."""
    out = []
    for v in claim.variants:
        if variants is not None and v.name not in variants:
            continue
        spec = spec_lib.with_values(claim.base, v.values, source=f"claim {claim.key}, variant {v.name!r}")
        for s in range(first_seed, seeds):
            seeded = spec.model_copy(update={"training": spec.training.model_copy(update={"seed": s})})
            out.append(Member(first_index + len(out), seeded, tags={"variant": v.name}))
    return out


def look_seeds(budget: Budget, seeds: int) -> list[int]:
    """The seeds after which a statement is read (sequential testing): `seeds`, then, for
    a statement still open, twice as many each time up to `budget.max_seeds` (5, 10, 20)."""
    out = [seeds]
    while budget.max_seeds is not None and out[-1] < budget.max_seeds:
        out.append(min(2 * out[-1], budget.max_seeds))
    return out


def look_levels(n_looks: int) -> list[float]:
    """Each look's interval level, Bonferroni over the looks so that a statement's chance
    of a wrong verdict stays at most 5% however many looks it gets: 95% with one look; with
    more, the first (which reads every statement and decides most) at 97.5% and the later
    ones sharing the other 2.5%: 97.5% with two looks, 98.75% each with three."""
    miss = 1 - stats.LEVEL
    if n_looks == 1:
        return [stats.LEVEL]
    return [1 - miss / 2] + [1 - miss / 2 / (n_looks - 1)] * (n_looks - 1)


def default_lanes() -> int | None:
    """Members side by side: one at a time on a CPU, all at once on an accelerator.

    Measured on this project's 2-core CPU (784-256-10, 15,000 images, batch 128): 0.23 s
    per member-epoch one at a time, 0.32 three side by side, 0.34 six; and every width is
    one more compilation (~6 s each), which an ablation with ~25 structures cannot afford.
    """
    return 1 if jax.default_backend() == "cpu" else None


def _first_kernel(params: dict[str, np.ndarray]) -> np.ndarray:
    return params[min((k for k in params if k.endswith("/kernel")), key=lambda k: (len(k), k))]


def kernel_rank(kernel: np.ndarray, rel_tol: float = 1e-3) -> int:
    """Singular values above rel_tol x the largest (0 for an all-zero kernel)."""
    s = np.linalg.svd(np.asarray(kernel, np.float64), compute_uv=False)
    return int(np.sum(s > rel_tol * s[0])) if s.size and s[0] > 0 else 0


def sparsity(kernel: np.ndarray) -> float:
    """The fraction of weights with |w| < 1% of the largest |w|."""
    w = np.abs(np.asarray(kernel))
    return float(np.mean(w < 0.01 * w.max())) if w.size and w.max() > 0 else 1.0


def _probabilities(spec: spec_lib.RunSpec, params, images: np.ndarray, batch: int = 4096) -> np.ndarray:
    p = {k: jax.numpy.asarray(v) for k, v in params.items()}
    return np.concatenate([np.asarray(model.probabilities(spec.model, p, images[i:i + batch]))
                           for i in range(0, len(images), batch)])


def _one_hot(labels: np.ndarray, classes: int = 10) -> np.ndarray:
    labels = np.asarray(labels)
    return labels if labels.ndim == 2 else np.eye(classes, dtype=np.uint8)[labels]


def measure_part(part: populations.Part, target: float, analysis: str | None) -> None:
    """A trained part's figures: test and training-set evaluations, and the claim's analysis."""
    arrays = part.arrays
    test = part.evaluate(arrays.test_images, arrays.test_labels)
    n_eval = min(len(part.y_train), len(part.y_val))
    train_eval = part.evaluate(part.x_train[:n_eval], part.y_train[:n_eval])
    for i, m in enumerate(part.members):
        params = part.params(m)
        _measure(m, params, test["accuracy"][i], test["loss"][i], train_eval, i, target)
        if m.diverged:
            continue
        if analysis == "symmetry" and m.seed == 0:
            m.kernel = _first_kernel(params)
        if analysis == "sets":
            rule = multilabel.choose_rule(_probabilities(m.spec, params, part.x_val), _one_hot(part.y_val))
            p_test = _probabilities(m.spec, params, arrays.test_images)
            sets = multilabel.set_metrics(_one_hot(arrays.test_labels), multilabel.apply_rule(p_test, rule))
            m.figures.update(set_accuracy=sets["exact"], macro_f1=sets["macro_f1"])
            m.extra.update(rule=list(rule), f1=sets["f1"], precision=sets["precision"], recall=sets["recall"])
        if analysis == "protocol":
            m.test_correct = np.argmax(_probabilities(m.spec, params, arrays.test_images), 1) == arrays.test_labels


def _measure(m: Member, params, test_accuracy, test_loss, train_eval, i: int, target: float) -> None:
    nan = math.nan
    if m.diverged or not m.history:
        m.figures = {k: nan for k in ("val_accuracy", "test_accuracy", "gap", "epochs_to_target")}
        return
    last = m.history[-1]
    reached = [r["epoch"] for r in m.history if r.get("val_accuracy", 0.0) >= target]
    epochs = len(m.history)
    seconds = np.cumsum([r["seconds"] for r in m.history])
    kernel = _first_kernel(params)
    m.figures = {
        "val_accuracy": last["val_accuracy"], "val_loss": last["val_loss"],
        "test_accuracy": float(test_accuracy), "test_loss": float(test_loss),
        "train_accuracy": float(train_eval["accuracy"][i]), "train_loss": float(train_eval["loss"][i]),
        "gap": float(train_eval["accuracy"][i]) - last["val_accuracy"],
        "epochs_to_target": float(reached[0] if reached else epochs + 1),
        "seconds_to_target": float(seconds[reached[0] - 1]) if reached else nan,
        # The first epoch's first member also pays for warming up the programs: left out.
        "seconds_per_epoch": float(np.mean([r["seconds"] for r in m.history[1:] or m.history])),
        "sparsity": sparsity(kernel), "rank": float(kernel_rank(kernel)),
    }
    m.extra["reached_target"] = bool(reached)


# ------------------------------------------------------------------ analysis


def smoothed(curve: np.ndarray, width: int = 3) -> np.ndarray:
    """The mean of each epoch and the ones before it, `width` in all (fewer at the start):
    one seed's validation accuracy moves by a few tenths of a point from epoch to epoch."""
    curve = np.asarray(curve, np.float64)
    return np.array([curve[max(0, i - width + 1): i + 1].mean() for i in range(len(curve))])


def flattens_at(curve: np.ndarray, within: float) -> int:
    """The first epoch (1-based) whose value is within `within` of the curve's best: how the
    budgets' epochs are chosen (scripts/ablate_epochs.py)."""
    curve = np.asarray(curve)
    return int(np.argmax(curve >= curve.max() - within)) + 1


def selection_bias(val_accuracy: np.ndarray, test_correct: np.ndarray, resamples: int,
                   seed: int) -> dict[str, dict[str, float]]:
    """What choosing on a test half costs, against choosing on validation, for one seed's pool.

    `val_accuracy` (C,) and `test_correct` (C, N) for C configurations. Each of `resamples`
    random halvings of the N test images into A and B: 'chosen on test' is the best
    configuration on A, 'chosen on validation' the best on validation; each reports its
    accuracy on A and is checked on B. Returns, per rule, the means over halvings of
    `reported` (A), `fresh` (B) and `optimism` (A - B).
    """
    correct = np.asarray(test_correct, np.float64)
    n = correct.shape[1]
    rng = np.random.default_rng([seed, 20170607])
    half = np.zeros((resamples, n), bool)
    for r in range(resamples):
        half[r, rng.permutation(n)[: n // 2]] = True
    acc_a = half.astype(np.float64) @ correct.T / half.sum(1, keepdims=True)  # (R, C)
    acc_b = (~half).astype(np.float64) @ correct.T / (~half).sum(1, keepdims=True)
    rows = np.arange(resamples)
    picks = {"chosen on test": np.argmax(acc_a, axis=1),
             "chosen on validation": np.full(resamples, int(np.argmax(val_accuracy)))}
    out = {}
    for rule, pick in picks.items():
        reported, fresh = acc_a[rows, pick], acc_b[rows, pick]
        out[rule] = {"reported": float(reported.mean()), "fresh": float(fresh.mean()),
                     "optimism": float((reported - fresh).mean())}
    return out


def _mean_curve(runs: list[Member]) -> list[dict[str, float]]:
    """Epoch records averaged over seeds (seeds that trained every epoch)."""
    full = [m.history for m in runs if m.history and not m.diverged]
    if not full:
        return []
    n = min(len(h) for h in full)
    keys = [k for k in full[0][0] if k != "epoch"]
    return [{"epoch": e + 1, **{k: float(np.mean([h[e][k] for h in full])) for k in keys}} for e in range(n)]


def _selection_per_seed(group: list[Member], budget: Budget, seeds: int) -> dict[str, dict[str, list[float]]]:
    """The protocol claim's figures: rule ("chosen on test", ...) -> figure -> one value per
    seed, from `selection_bias` over that seed's pool (NaN for a seed with no pool)."""
    per_rule: dict[str, dict[str, list[float]]] = {}
    for s in range(seeds):
        pool = [m for m in group if m.seed == s and m.test_correct is not None]
        if not pool:
            continue
        found = selection_bias(np.array([m.figures["val_accuracy"] for m in pool]),
                               np.stack([m.test_correct for m in pool]), budget.resamples, s)
        for rule, figs in found.items():
            for f, value in figs.items():
                per_rule.setdefault(rule, {}).setdefault(f, [math.nan] * seeds)[s] = value
    return per_rule


def analyse(claim: Claim, group: list[Member], budget: Budget, seeds: int, level: float = stats.LEVEL,
            choices: dict[str, str] | None = None, verdict_level: float | None = None) -> dict[str, Any]:
    """Intervals (at `level`) per variant and figure, arm choices (or the `choices` made
    already, arm -> variant), comparisons with verdicts (read at `verdict_level`, default
    `level`: a later look of sequential testing reads its verdicts at its own level)."""
    verdict_level = level if verdict_level is None else verdict_level
    by_variant: dict[str, list[Member]] = {}
    for m in group:
        by_variant.setdefault(m.variant, []).append(m)
    for runs in by_variant.values():
        runs.sort(key=lambda m: m.seed)

    def per_seed(variant: str, figure: str) -> list[float]:
        values = {m.seed: m.figures.get(figure, math.nan) for m in by_variant[variant]}
        return [float(values.get(s, math.nan)) for s in range(seeds)]

    figures_measured = sorted({k for m in group for k in m.figures})
    variants_out = []
    for v in claim.variants:
        runs = by_variant[v.name]
        variants_out.append({
            "name": v.name, "values": v.values,
            "figures": {f: {"values": per_seed(v.name, f), **stats.mean_ci(per_seed(v.name, f), level).as_dict()}
                        for f in figures_measured},
            "diverged": [m.seed for m in runs if m.diverged],
            "curve": _mean_curve(runs),
            "extra": _merge_extra(runs),
        })

    arm_values: dict[str, Callable[[str], list[float]]] = {v.name: (lambda f, n=v.name: per_seed(n, f))
                                                           for v in claim.variants}
    arms_out = []
    for arm in claim.arms:
        # A seed that diverged scores 0: a setting that sometimes blows up is not the best one.
        scores = {n: float(np.mean(np.nan_to_num(per_seed(n, "val_accuracy"), nan=0.0))) for n in arm.variants}
        chosen = (choices or {}).get(arm.name) or max(arm.variants, key=lambda n: scores[n])
        arm_values[arm.name] = lambda f, n=chosen: per_seed(n, f)
        edge = arm.grid and len(arm.variants) > 2 and chosen in (arm.variants[0], arm.variants[-1])
        arms_out.append({"name": arm.name, "chosen": chosen, "by": "mean validation accuracy", "scores": scores,
                         "variants": list(arm.variants), "at_edge": edge})

    extra: dict[str, Any] = {}
    if claim.analysis == "protocol":
        per_rule = _selection_per_seed(group, budget, seeds)
        for rule, figs in per_rule.items():
            arm_values[rule] = lambda f, figs=figs: figs.get(f, [math.nan] * seeds)
        extra["selection"] = {rule: {f: {"values": vals, **stats.mean_ci(vals, level).as_dict()}
                                     for f, vals in figs.items()}
                              for rule, figs in per_rule.items()}
        extra["pool_size"] = len(claim.variants)
    if claim.analysis == "symmetry":
        extra["spectra"] = {m.variant: np.linalg.svd(m.kernel.astype(np.float64), compute_uv=False).tolist()
                            for m in group if m.kernel is not None}

    comparisons = []
    for c in claim.comparisons:
        v, b = arm_values[c.variant](c.figure), arm_values[c.baseline](c.figure)
        diff = stats.paired_difference(v, b, verdict_level)
        comparisons.append({
            **dataclasses.asdict(c),
            "variant_values": v, "baseline_values": b,
            "variant_interval": stats.mean_ci(v, level).as_dict(),
            "baseline_interval": stats.mean_ci(b, level).as_dict(),
            "difference": diff.as_dict(), "verdict": stats.verdict(diff, c.better, c.tolerance),
            "seeds_to_decide": stats.seeds_to_decide(diff, c.better, c.tolerance, verdict_level),
            "level": verdict_level,
        })
    return {"variants": variants_out, "arms": arms_out, "comparisons": comparisons, "extra": extra}


def _merge_extra(runs: list[Member]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    good = [m for m in runs if not m.diverged and m.extra]
    for key in ("f1", "precision", "recall"):
        if good and all(key in m.extra for m in good):
            out[key] = np.mean([m.extra[key] for m in good], axis=0).tolist()
    if good and all("rule" in m.extra for m in good):
        out["rules"] = [m.extra["rule"] for m in good]
    if good and "reached_target" in good[0].extra:
        out["reached_target"] = sum(m.extra["reached_target"] for m in good)
    return out


def run_claim(claim: Claim, budget: Budget, seeds: int, load: Callable[[str], data.Arrays],
              lanes: int | None = None, on_event: Callable[[dict[str, Any]], None] | None = None
              ) -> tuple[dict[str, Any], list[Member]]:
    """Train and measure one claim's members; its results (see `analyse`) and the members.

    Sequential testing (`budget.max_seeds`): every statement is read after `seeds`; one
    still open whose measured mean and spread `budget.max_seeds` would decide
    (`stats.seeds_to_decide`) is read again at the next of `look_seeds`, and so on: only the
    variants it compares are trained for the seeds they lack, the arms keeping the choice
    made at the first look. Each look reads its verdicts at its level of `look_levels`; a
    statement decided at a look keeps that verdict and its numbers (it is never read again).
    Every figure of the variants is shown at the first look's level.
    """
    started = time.perf_counter()
    work: list[dict[str, Any]] = []
    mark = [time.perf_counter()]

    def train(batch: list[Member]) -> None:
        groups = len(populations.groups(batch))

        def on_epoch(m: populations.Member, part: populations.Part) -> None:
            if on_event and m is part.members[0] and m.epochs == 1:
                on_event({"event": "group", "claim": claim.key, "group": int(part.key.split(".")[0]) + 1,
                          "groups": groups, "members": len(part.members),
                          "epochs": max(x.spec.training.epochs for x in part.members)})

        def after_epoch(part: populations.Part, result) -> None:
            # After the part's members are updated: the ones that just finished count as done.
            # "members" here are the batch's (a progress bar's length); a "group" event's are the group's.
            if on_event:
                on_event({"event": "epoch", "claim": claim.key, "group": int(part.key.split(".")[0]) + 1,
                          "groups": groups, "epoch": result.epoch,
                          "epochs": max(x.spec.training.epochs for x in part.members),
                          "members": len(batch), "members_done": sum(not m.training for m in batch)})

        def after_part(part: populations.Part) -> None:
            measure_part(part, budget.target, claim.analysis)
            now = time.perf_counter()
            work.append({"members": len(part.members), "cost": sum(_cost(m.spec) for m in part.members),
                         "seconds": now - mark[0], "compile_seconds": part.population.compile_seconds})
            mark[0] = now

        populations.run(batch, load, lanes=lanes, on_epoch=on_epoch, after_epoch=after_epoch, after_part=after_part)

    seeds_at = look_seeds(budget, seeds)
    levels = look_levels(len(seeds_at))
    group = members(claim, seeds)
    train(group)
    result = analyse(claim, group, budget, seeds, levels[0])
    for c in result["comparisons"]:
        c["look"] = 1
    for look in range(2, len(seeds_at) + 1):
        result, group = _next_look(claim, budget, look, seeds_at, levels, result, group, train, on_event)
    if claim.analysis == "sets":
        multi = load("mnist-multi")
        result["extra"]["samples"] = {"images": multi.test_images[:8].tolist(),
                                      "labels": multi.test_labels[:8].tolist()}
    result.update({
        "key": claim.key, "title": claim.title, "quote": claim.quote, "notes": list(claim.notes),
        "figures_shown": list(claim.figures), "base": claim.base.resolved(),
        "seeds": sorted({m.seed for m in group}), "reduced": reductions(budget, claim.budget_fields),
        "members": len(group), "groups": len(populations.groups(group)), "work": work,
        "seconds": time.perf_counter() - started,
    })
    return result, group


def _next_look(claim: Claim, budget: Budget, look: int, seeds_at: list[int], levels: list[float],
               before: dict[str, Any], group: list[Member], train: Callable[[list[Member]], None],
               on_event: Callable[[dict[str, Any]], None] | None) -> tuple[dict[str, Any], list[Member]]:
    """`run_claim`'s look number `look` (2, 3, ...): more seeds for the statements still open
    that `budget.max_seeds` could decide; the others keep what they had."""
    assert budget.max_seeds is not None
    reopened = [i for i, c in enumerate(before["comparisons"]) if c["verdict"] == stats.INCONCLUSIVE
                and c["seeds_to_decide"] is not None and c["seeds_to_decide"] <= budget.max_seeds]
    if not reopened:
        return before, group
    seeds = seeds_at[look - 1]
    choices = {arm["name"]: arm["chosen"] for arm in before["arms"]}
    needed = variants_compared(claim, [claim.comparisons[i] for i in reopened], choices)
    # A statement open at this look was read at the one before, so its variants have the
    # seeds before that look's: they need seeds_at[look - 2] ... seeds - 1.
    more = members(claim, seeds, first_seed=seeds_at[look - 2], variants=needed, first_index=len(group))
    if on_event:
        on_event({"event": "another look", "claim": claim.key, "look": look, "statements": len(reopened),
                  "members": len(more), "seeds": seeds})
    train(more)
    group = group + more
    now = analyse(claim, group, budget, seeds, levels[0], choices, verdict_level=levels[look - 1])
    comparisons = [{**now["comparisons"][i], "look": look} if i in reopened else c
                   for i, c in enumerate(before["comparisons"])]
    return {**now, "arms": before["arms"], "comparisons": comparisons}, group


def variants_compared(claim: Claim, comparisons: list[Comparison], choices: dict[str, str]) -> set[str]:
    """The variants whose members `comparisons` read: a variant itself, an arm's chosen
    variant, and for the protocol's rules (chosen on test / on validation) the whole pool."""
    names = {v.name for v in claim.variants}
    out: set[str] = set()
    for c in comparisons:
        for side in (c.variant, c.baseline):
            out |= {side} if side in names else {choices[side]} if side in choices else names
    return out


# Composites in mnist-multi's training split (seed 0), for estimates without loading it.
MULTI_TRAIN_IMAGES = 39880


def _cost(spec: spec_lib.RunSpec) -> float:
    """A member's training work: epochs x training images x weights (multiply-adds / 2)."""
    multi = spec.dataset == "mnist-multi"
    images = spec.training.subset or (MULTI_TRAIN_IMAGES if multi else 60000)
    dims = [1568 if multi else 784] + [layer.units for layer in spec.model.dense_layers]
    weights = sum(a * b for a, b in zip(dims, dims[1:]))
    return spec.training.epochs * math.floor(images * (1 - spec.training.validation.fraction)) * weights


def run(budget: Budget, *, seeds: int | None = None, max_seeds: int | None = None, only: list[str] | None = None,
        data_dir: str | None = None, lanes: int | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None) -> tuple[dict[str, Any], dict[str, list[Member]]]:
    """Run the claims; returns (results as JSON-able data, members per claim kept in memory).
    `max_seeds` (default: the budget's) turns on sequential testing (see `run_claim`)."""
    seeds = budget.seeds if seeds is None else seeds
    if seeds < 2:
        raise UserError(f"--seeds {seeds}: a confidence interval needs at least 2 seeds")
    if max_seeds is not None:
        if max_seeds <= seeds:
            raise UserError(f"--max-seeds {max_seeds}: a later look needs more seeds than the first ({seeds}); "
                            f"give more than {seeds}, or leave it out for one look")
        budget = dataclasses.replace(budget, max_seeds=max_seeds)
    selected = claims(budget, only)
    lanes = lanes if lanes is not None else default_lanes()
    load = populations.loader(data_dir)

    started, wall = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M:%S")
    if on_event:
        on_event({"event": "start", "claims": len(selected), "seeds": seeds, "expected": budget.expected})
    out, kept = [], {}
    for claim in selected:
        if on_event:
            on_event({"event": "claim", "claim": claim.key, "title": claim.title,
                      "members": len(claim.variants) * seeds})  # as `members` makes them
        result, group = run_claim(claim, budget, seeds, load, lanes, on_event)
        out.append(result)
        kept[claim.key] = group
        if on_event:
            on_event({"event": "claim done", "claim": claim.key, "seconds": result["seconds"],
                      "verdicts": [c["verdict"] for c in result["comparisons"]]})
    from mnistlab import runs

    seeds_at = look_seeds(budget, seeds)
    correct_for_multiplicity(out)
    summary = {
        "budget": {**dataclasses.asdict(budget), "seeds": seeds}, "seeds": seeds,
        "claims": out, "seconds": time.perf_counter() - started,
        "started": wall,
        "environment": runs.environment(), "load_average": _load_average(),
        "data_source": str(load("mnist").source),
        "lanes": lanes, "full_estimate_seconds": estimate(out, budget, seeds),
        "looks": len(seeds_at), "look_seeds": seeds_at, "levels": look_levels(len(seeds_at)),
        "level": look_levels(len(seeds_at))[0], "max_seeds": seeds_at[-1] if len(seeds_at) > 1 else None,
    }
    return summary, kept


def _load_average() -> list[float] | None:
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def correct_for_multiplicity(claims_out: list[dict[str, Any]]) -> None:
    """Give every comparison its p-value (on the 5% scale for the level its last look read it
    at, `stats.adjusted_p_value`) and its verdict with the false discovery rate held at 5%
    over all the run's statements (`stats.corrected_verdicts`): many statements at 95% each
    make a few verdicts likely by chance alone."""
    comparisons = [c for claim in claims_out for c in claim["comparisons"]]
    tests = [(stats.Interval(**c["difference"]), c["better"], c["tolerance"]) for c in comparisons]
    levels = [c.get("level", stats.LEVEL) for c in comparisons]
    for c, test, level, corrected in zip(comparisons, tests, levels, stats.corrected_verdicts(tests, levels=levels)):
        c["p_value"], c["corrected_verdict"] = stats.adjusted_p_value(*test, level=level), corrected


def estimate(claims_out: list[dict[str, Any]], budget: Budget, seeds: int) -> float | None:
    """Seconds the full budget would take here, scaled from this run's measured groups.

    A claim's training time is taken as proportional to its members' training work
    (`_cost`: epochs x training images x weights), calibrated per claim on this run;
    compilation is added as measured (the programs are the same size in both budgets).
    Evaluation is in the calibration, which makes the estimate lean high.
    """
    if budget.name == "full":
        return None
    total = 0.0
    for c in claims_out:
        work = sum(w["cost"] for w in c["work"])
        compiling = sum(w["compile_seconds"] for w in c["work"])
        full_work = sum(_cost(m.spec) for m in members(CLAIMS[c["key"]](FULL), FULL.seeds))
        if work > 0:
            total += compiling + (c["seconds"] - compiling) * full_work / work
    return total


# ------------------------------------------------------------------ records


RESULTS, MEMBERS = "ablation.json", "members.jsonl"


def write_results(folder, results: dict[str, Any], kept: dict[str, list[Member]]) -> None:
    """`ablation.json` (everything the report shows) and `members.jsonl` (every member's
    epochs and figures), written atomically into `folder`."""
    import json

    from mnistlab import runs

    folder = Path(folder)
    dump = lambda value: json.dumps(_strict(value), default=_json_default, allow_nan=False)  # noqa: E731
    runs.atomic_write(folder / RESULTS, dump(results) + "\n")
    lines = [dump({"claim": key, "variant": m.variant, "seed": m.seed, "diverged": m.diverged,
                   "figures": m.figures, "extra": m.extra, "history": m.history})
             for key, group in kept.items() for m in group]
    runs.atomic_write(folder / MEMBERS, "\n".join(lines) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _strict(value: Any) -> Any:
    """NaN and infinities as null: strict JSON, readable by any parser (a browser's too)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value
