"""Tests for mnistlab.ablate (claims as data, grouping, analysis, the selection-bias
protocol) and, end to end through the CLI, `mnistlab ablate` with its report."""

import dataclasses
import html
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import t as scipy_t

from mnistlab import ablate, ablate_report, engine, populations, stats
from mnistlab import spec as spec_lib
from mnistlab.errors import UserError

pytestmark = pytest.mark.slow  # processes, servers, or training for seconds each

T95 = {2: 4.302652730}  # two-sided 95% Student-t quantile, from a table


# ------------------------------------------------------------------ claims as data


@pytest.mark.parametrize("budget", ["quick", "standard", "full", "test"])
def test_every_claim_builds_valid_members(budget):
    b = ablate.BUDGETS[budget]
    for claim in ablate.claims(b, list(ablate.CLAIMS)):
        names = {v.name for v in claim.variants}
        assert len(names) == len(claim.variants), f"{claim.key}: duplicate variant names"
        arms = {a.name for a in claim.arms} | ({"chosen on test", "chosen on validation"}
                                               if claim.analysis == "protocol" else set())
        for arm in claim.arms:
            assert set(arm.variants) <= names
        for c in claim.comparisons:
            assert {c.variant, c.baseline} <= names | arms, (claim.key, c.statement)
            assert c.figure in ablate.FIGURES and c.better in ("higher", "lower")
        assert set(claim.figures) <= set(ablate.FIGURES)
        members = ablate.members(claim, b.seeds)  # every spec validates
        assert len(members) == len(claim.variants) * b.seeds
        assert sorted({m.spec.training.seed for m in members}) == list(range(b.seeds))


def _groups(claim):
    return {populations.group_key(m.spec) for m in ablate.members(claim, 1)}


def test_variants_that_share_a_program_train_as_one_population():
    # Initializers are numbers drawn before training: one program per hidden activation.
    assert len(_groups(ablate.CLAIMS["initialization"](ablate.QUICK))) == 2
    # Dropout rates (0 included) and learning rates are per-member inputs.
    assert len(_groups(ablate.CLAIMS["dropout"](ablate.QUICK))) == 1
    assert len(_groups(ablate.CLAIMS["optimizer"](ablate.QUICK))) == 4  # sgd, momentum, nesterov, adam
    # Penalty strengths share a program once the terms present (l1, l2) are the same.
    reg = ablate.CLAIMS["regularization"](ablate.QUICK)
    assert len(_groups(reg)) == len({engine.structure(m.spec) for m in ablate.members(reg, 1)})
    assert len(reg.variants) == 1 + 3 * 4


def test_the_tutorial_claim_trains_the_tutorials_program():
    claim = ablate.CLAIMS["tutorial"](ablate.QUICK)
    tutorial = ablate.members(claim, 1)[0].spec
    layer = tutorial.model.layers[0]
    assert tutorial.training.batch_size == 32 and layer.units == 1000
    assert layer.kernel_regularizer.l2 == 0.01 and layer.kernel_initializer.name == "glorot_normal"
    assert tutorial.optimizer.name == "adam" and tutorial.training.epochs == ablate.QUICK.tutorial_epochs


def test_reductions_say_what_the_budget_cut():
    lines = ablate.reductions(ablate.QUICK, ("subset", "epochs", "units"))
    assert "seeds: 3 (full: 5)" in lines
    assert "epochs: 6 (full: 20)" in lines
    assert "hidden units: 256 (full: 1000)" in lines
    assert any(line.startswith("MNIST training images used") and "20000 (full: 60000)" in line for line in lines)
    assert ablate.reductions(ablate.FULL, ("subset", "epochs")) == []


def test_the_standard_budget_trains_at_the_tutorials_sizes():
    b = ablate.STANDARD
    assert (b.seeds, b.subset, b.validation, b.units, b.penalty_units) == (5, 60000, 0.1, 1000, 1000)
    assert ablate.look_seeds(b, b.seeds) == [5, 10, 20]  # sequential: open statements get 10, then 20 seeds
    regularization = ablate.CLAIMS["regularization"](b)
    assert regularization.base.model.dense_layers[0].units == 1000 and regularization.base.training.subset == 60000
    # Every grid reaches past the quick budget's edges (its choices at an edge: L1 and L2 at
    # 1e-5, its smallest strength; SGD at 1, its largest rate).
    assert min(b.strengths) < min(ablate.QUICK.strengths) and max(b.learning_rates["sgd"]) > 1.0
    assert {v.name for v in regularization.variants} == {"none", *(f"{k} {s:g}" for k in ("L1", "L2")
                                                                 for s in (*b.strengths, 0.01))}


def test_where_a_validation_curve_flattens():
    curve = [96.0, 97.0, 98.0, 98.3, 98.1, 98.5]
    # trailing means of 3: 96, 96.5, 97, 97.7667, 98.1333, 98.3
    assert ablate.smoothed(curve) == pytest.approx([96.0, 96.5, 97.0, 97.76667, 98.13333, 98.3], abs=1e-5)
    assert ablate.flattens_at(ablate.smoothed(curve), 0.2) == 5  # 98.1333 >= 98.3 - 0.2
    assert ablate.flattens_at(np.array(curve), 0.2) == 4  # 98.3 >= 98.5 - 0.2
    assert ablate.flattens_at(np.array(curve), 0.0) == 6


def test_unknown_claim_is_a_user_error():
    with pytest.raises(UserError, match="did you mean 'dropout'"):
        ablate.claims(ablate.QUICK, ["dropuot"])


def test_only_takes_claims_repeated_or_comma_separated_in_their_own_order():
    chosen = ablate.claims(ablate.QUICK, ["decay, dropout", "activation,"])
    assert [c.key for c in chosen] == ["dropout", "activation", "decay"]
    with pytest.raises(UserError, match="'dropuot'"):
        ablate.claims(ablate.QUICK, ["dropout,dropuot"])


# ------------------------------------------------------------------ measurements


def test_kernel_rank_and_sparsity():
    assert ablate.kernel_rank(np.zeros((784, 16))) == 0
    u, v = np.arange(1, 785, dtype=float)[:, None], np.linspace(1, 2, 16)[None, :]
    assert ablate.kernel_rank(u * v) == 1  # every unit the same weights, scaled
    assert ablate.kernel_rank(np.eye(20)[:, :16]) == 16
    w = np.array([[1.0, 0.005], [-0.009, 0.5]])
    assert ablate.sparsity(w) == pytest.approx(0.5)  # |0.005|, |-0.009| < 0.01 * 1.0


def test_selection_bias_against_the_exact_expectation():
    # Two configurations on 4 test images: c0 right on images 0, 1; c1 right on 2, 3.
    # Validation prefers c0. Of the 6 ways to halve {0,1,2,3}: A = {0,1} -> test picks c0,
    # reports 1, fresh 0 (optimism 1); A = {2,3} -> picks c1, optimism 1; the other four
    # tie (both 0.5 on A and B): optimism 0. Expected optimism of choosing on test: 2/6.
    # Choosing on validation (always c0): +1 for A = {0,1}, -1 for {2,3}, else 0: 0.
    correct = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], bool)
    out = ablate.selection_bias(np.array([0.9, 0.1]), correct, resamples=6000, seed=0)
    assert out["chosen on test"]["optimism"] == pytest.approx(1 / 3, abs=0.03)
    assert out["chosen on validation"]["optimism"] == pytest.approx(0.0, abs=0.03)
    # Expected fresh accuracy: test's pick is 0 on B for the two decisive halvings, 0.5 else.
    assert out["chosen on test"]["fresh"] == pytest.approx(4 / 6 * 0.5, abs=0.03)
    for rule in out.values():
        assert rule["optimism"] == pytest.approx(rule["reported"] - rule["fresh"])


def _member(variant, seed, **figures):
    spec = spec_lib.with_values(ablate.CLAIMS["decay"](ablate.TEST).base, {"training.seed": seed})
    return ablate.Member(0, spec, tags={"variant": variant}, figures=figures)


def test_analysis_chooses_arms_on_validation_and_judges_on_the_paired_interval():
    base = ablate.CLAIMS["decay"](ablate.TEST).base
    claim = ablate.Claim(
        key="k", title="t", quote="q", base=base,
        variants=(ablate.Variant("a 1", {}), ablate.Variant("a 2", {}), ablate.Variant("b", {})),
        arms=(ablate.Arm("a best", ("a 1", "a 2")),),
        comparisons=(ablate.Comparison("a beats b", "a best", "b", "test_accuracy"),
                     ablate.Comparison("a 1 is worse than b", "a 1", "b", "test_accuracy", "lower")),
        figures=("test_accuracy",), budget_fields=())
    members = []
    for s, (a1, a2, b) in enumerate([(0.90, 0.95, 0.93), (0.91, 0.97, 0.94), (0.92, 0.96, 0.94)]):
        members += [_member("a 1", s, val_accuracy=0.5, test_accuracy=a1),
                    _member("a 2", s, val_accuracy=0.6, test_accuracy=a2),  # higher on validation
                    _member("b", s, val_accuracy=0.4, test_accuracy=b)]
    out = ablate.analyse(claim, members, ablate.TEST, seeds=3)
    assert out["arms"][0]["chosen"] == "a 2"
    first, second = out["comparisons"]
    # a 2 - b = 0.02, 0.03, 0.02: mean 0.02333, sd 0.005774, half-width 4.3027 * sd / sqrt(3)
    sd = math.sqrt(((0.02 - 0.07 / 3) ** 2 * 2 + (0.03 - 0.07 / 3) ** 2) / 2)
    half = T95[2] * sd / math.sqrt(3)
    assert first["difference"]["mean"] == pytest.approx(0.07 / 3)
    assert first["difference"]["low"] == pytest.approx(0.07 / 3 - half)
    assert first["verdict"] == stats.SUPPORTED  # 0.02333 - 0.01434 > 0
    # a 1 - b = -0.03, -0.03, -0.02, claimed lower: mean -0.02667, interval below 0
    assert second["difference"]["high"] < 0 and second["verdict"] == stats.SUPPORTED
    assert out["variants"][2]["figures"]["test_accuracy"]["mean"] == pytest.approx((0.93 + 0.94 + 0.94) / 3)


T975 = {1: 25.45169957, 2: 6.20535061, 3: 4.17653147}  # two-sided 97.5% Student-t quantiles, from a table


def _sequential_claim():
    base = ablate.CLAIMS["decay"](ablate.TEST).base
    return ablate.Claim(
        key="k", title="t", quote="q", base=base,
        variants=tuple(ablate.Variant(n, {}) for n in ("a 1", "a 2", "b", "c")),
        arms=(ablate.Arm("a best", ("a 1", "a 2")),),
        comparisons=(ablate.Comparison("c beats b", "c", "b", "test_accuracy"),  # decided after 2 seeds
                     ablate.Comparison("a beats b", "a best", "b", "test_accuracy"),  # 3 seeds would decide it
                     ablate.Comparison("a 1 beats c", "a 1", "c", "test_accuracy")),  # near zero: never
        figures=("test_accuracy",), budget_fields=())


# variant -> test accuracy by seed (validation: a 2 above a 1, so "a best" is a 2)
SEQUENTIAL_FIGURES = {"a 1": [0.91, 0.891, 0.95, 0.95], "a 2": [0.819, 0.821, 0.82, 0.82],
                      "b": [0.80, 0.80, 0.80, 0.80], "c": [0.90, 0.901, 0.5, 0.5]}
SEQUENTIAL_VALIDATION = {"a 1": 0.5, "a 2": 0.6, "b": 0.4, "c": 0.4}


def _fake_training(monkeypatch, trained, test=SEQUENTIAL_FIGURES, validation=SEQUENTIAL_VALIDATION):
    def run(batch, load, **hooks):
        trained.append(sorted((m.variant, m.seed) for m in batch))
        for m in batch:
            m.figures = {"test_accuracy": test[m.variant][m.seed], "val_accuracy": validation[m.variant]}
    monkeypatch.setattr(populations, "run", run)


def test_looks_double_the_seeds_up_to_the_most_and_share_the_five_percent():
    assert ablate.look_seeds(ablate.TEST, 2) == [2]  # no max_seeds: one look
    assert ablate.look_seeds(dataclasses.replace(ablate.TEST, max_seeds=4), 2) == [2, 4]
    assert ablate.look_seeds(dataclasses.replace(ablate.TEST, max_seeds=12), 5) == [5, 10, 12]
    assert ablate.look_seeds(dataclasses.replace(ablate.TEST, max_seeds=20), 5) == [5, 10, 20]
    assert ablate.look_seeds(dataclasses.replace(ablate.TEST, max_seeds=5), 5) == [5]
    assert ablate.look_levels(1) == [0.95]
    assert ablate.look_levels(2) == pytest.approx([0.975, 0.975])
    assert ablate.look_levels(3) == pytest.approx([0.975, 0.9875, 0.9875])
    assert ablate.look_levels(4) == pytest.approx([0.975, 1 - 0.025 / 3, 1 - 0.025 / 3, 1 - 0.025 / 3])
    for n in (2, 3, 4):  # the misses add up to 5%
        assert sum(1 - level for level in ablate.look_levels(n)) == pytest.approx(0.05)


# p - q by seed: open after 2 seeds (6 would decide it at 97.5%), open after 4 (5 would at
# 98.75%), decided after 8; r - q decided after 2.
THREE_LOOKS = {"p": [0.81, 0.83, 0.815, 0.825, 0.82, 0.82, 0.82, 0.82], "q": [0.80] * 8, "r": [0.90, 0.901]}


def test_a_third_look_reads_what_the_second_left_open_at_its_own_level(monkeypatch):
    trained, events = [], []
    _fake_training(monkeypatch, trained, THREE_LOOKS, {"p": 0.5, "q": 0.5, "r": 0.5})
    base = ablate.CLAIMS["decay"](ablate.TEST).base
    claim = ablate.Claim(
        key="k", title="t", quote="q", base=base, variants=tuple(ablate.Variant(n, {}) for n in ("p", "q", "r")),
        comparisons=(ablate.Comparison("r beats q", "r", "q", "test_accuracy"),
                     ablate.Comparison("p beats q", "p", "q", "test_accuracy")),
        figures=("test_accuracy",), budget_fields=())
    budget = dataclasses.replace(ablate.TEST, max_seeds=8)
    result, group = ablate.run_claim(claim, budget, 2, load=None, on_event=events.append)
    assert trained == [sorted((v, s) for v in "pqr" for s in (0, 1)),
                       [("p", 2), ("p", 3), ("q", 2), ("q", 3)],
                       sorted((v, s) for v in "pq" for s in range(4, 8))]
    assert [(e["look"], e["members"], e["seeds"]) for e in events if e["event"] == "another look"] == [
        (2, 4, 4), (3, 8, 8)]
    decided, late = result["comparisons"]
    assert (decided["look"], decided["level"], decided["difference"]["n"]) == (1, pytest.approx(0.975), 2)
    d = np.array(THREE_LOOKS["p"]) - 0.80
    half = scipy_t.ppf(1 - 0.0125 / 2, 7) * np.std(d, ddof=1) / math.sqrt(8)
    assert (late["look"], late["level"], late["difference"]["n"]) == (3, pytest.approx(0.9875), 8)
    assert late["difference"]["low"] == pytest.approx(d.mean() - half) and late["verdict"] == stats.SUPPORTED
    # The variants' own figures stay at the first look's level, over every seed they have.
    p = result["variants"][0]["figures"]["test_accuracy"]
    assert p["low"] == pytest.approx(0.82 - scipy_t.ppf(1 - 0.025 / 2, 7) * np.std(THREE_LOOKS["p"], ddof=1) / math.sqrt(8))
    # The looks before: 97.5% after 2 seeds said 6 would decide it; 98.75% after 4, 5.
    for n, level, needed in ((2, 0.975, 6), (4, 0.9875, 5)):
        sd = np.std(d[:n], ddof=1)
        assert scipy_t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n) > 0.02  # open at that look
        assert [k for k in range(2, 9) if scipy_t.ppf(0.5 + level / 2, k - 1) * sd / math.sqrt(k) < 0.02][0] == needed


def test_a_second_look_trains_only_what_the_open_statements_compare_and_keeps_the_first_verdicts(monkeypatch):
    trained, events = [], []
    _fake_training(monkeypatch, trained)
    budget = dataclasses.replace(ablate.TEST, max_seeds=4)
    result, group = ablate.run_claim(_sequential_claim(), budget, 2, load=None, on_event=events.append)
    # First look: every variant, seeds 0 and 1. Second: "a beats b" only, with "a best" kept
    # at its first choice (a 2) and b, seeds 2 and 3; "a 1 beats c" has a mean of exactly 0.
    assert trained == [sorted((v, s) for v in SEQUENTIAL_FIGURES for s in (0, 1)),
                       [("a 2", 2), ("a 2", 3), ("b", 2), ("b", 3)]]
    assert [e for e in events if e["event"] == "another look"] == [
        {"event": "another look", "claim": "k", "look": 2, "statements": 1, "members": 4, "seeds": 4}]
    decided, reopened, near_zero = result["comparisons"]
    # c - b = 0.10, 0.101: mean 0.1005, sd 0.000707, half-width t(1) at 97.5% x sd / sqrt(2)
    sd = 0.001 / math.sqrt(2)
    assert decided["look"] == 1 and decided["difference"]["n"] == 2 and decided["verdict"] == stats.SUPPORTED
    assert decided["difference"]["low"] == pytest.approx(0.1005 - T975[1] * sd / math.sqrt(2))
    # a 2 - b = 0.019, 0.021, 0.02, 0.02: mean 0.02, sd sqrt(0.000002 / 3), t(3) at 97.5%
    sd = math.sqrt(2e-6 / 3)
    assert reopened["look"] == 2 and reopened["difference"]["n"] == 4 and reopened["verdict"] == stats.SUPPORTED
    assert reopened["difference"]["low"] == pytest.approx(0.02 - T975[3] * sd / 2)
    assert near_zero["look"] == 1 and near_zero["difference"]["n"] == 2 and near_zero["verdict"] == "inconclusive"
    assert near_zero["seeds_to_decide"] is None
    assert [a["chosen"] for a in result["arms"]] == ["a 2"] and result["seeds"] == [0, 1, 2, 3]
    assert len(group) == 4 * 2 + 4


def test_the_report_of_two_looks_says_so_and_doubles_every_p_value(monkeypatch, mnist_root):
    monkeypatch.setenv("MNISTLAB_DATA", str(mnist_root))
    _fake_training(monkeypatch, [])
    claim = _sequential_claim()
    monkeypatch.setattr(ablate, "CLAIMS", {"k": lambda budget: claim})
    budget = dataclasses.replace(ablate.TEST, max_seeds=4, claims=None)
    results, kept = ablate.run(budget, seeds=2)
    assert (results["looks"], results["level"], results["max_seeds"]) == (2, pytest.approx(0.975), 4)
    for c in results["claims"][0]["comparisons"]:
        v, b = c["variant_values"], c["baseline_values"]
        pairs = [x - y for x, y in zip(v, b) if not (math.isnan(x) or math.isnan(y))]
        t = np.mean(pairs) / (np.std(pairs, ddof=1) / math.sqrt(len(pairs)))
        p = 2 * (2 * (1 - scipy_t.cdf(abs(t), len(pairs) - 1))) if np.std(pairs) else math.nan
        assert (math.isnan(p) and math.isnan(c["p_value"])) or c["p_value"] == pytest.approx(min(1.0, p), rel=1e-6)
    md = ablate_report.markdown(ablate_report.build(results, kept), "figures")
    assert ablate_report.sequential_text(results) in md
    assert ("the first look's intervals at 97.5%, the second's at 97.5% (2.5% + 2.5%)" in md
            and "(times 2)" in md and "read again after 4," in md)
    assert "| variant - baseline [97.5% CI] |" in md and "[95% CI]" not in md
    assert "over 4 paired seeds" in md and "over 2 paired seeds" in md


def test_the_report_of_three_looks_gives_each_statement_its_looks_level_and_p_value(monkeypatch, mnist_root):
    monkeypatch.setenv("MNISTLAB_DATA", str(mnist_root))
    _fake_training(monkeypatch, [], THREE_LOOKS, {"p": 0.5, "q": 0.5, "r": 0.5})
    claim = ablate.Claim(
        key="k", title="t", quote="q", base=ablate.CLAIMS["decay"](ablate.TEST).base,
        variants=tuple(ablate.Variant(n, {}) for n in ("p", "q", "r")),
        comparisons=(ablate.Comparison("r beats q", "r", "q", "test_accuracy"),
                     ablate.Comparison("p beats q", "p", "q", "test_accuracy")),
        figures=("test_accuracy",), budget_fields=())
    monkeypatch.setattr(ablate, "CLAIMS", {"k": lambda budget: claim})
    results, kept = ablate.run(dataclasses.replace(ablate.TEST, max_seeds=8, claims=None), seeds=2)
    assert (results["looks"], results["look_seeds"], results["max_seeds"]) == (3, [2, 4, 8], 8)
    assert results["levels"] == pytest.approx([0.975, 0.9875, 0.9875]) and results["level"] == pytest.approx(0.975)
    first, third = results["claims"][0]["comparisons"]
    # p-values on the 5% scale of the last look read: x2 at the first (2.5%), x4 at the third (1.25%).
    for c, n, factor in ((first, 2, 2), (third, 8, 4)):
        pairs = np.array(c["variant_values"][:n]) - np.array(c["baseline_values"][:n])
        t = pairs.mean() / (np.std(pairs, ddof=1) / math.sqrt(n))
        assert c["p_value"] == pytest.approx(min(1.0, factor * 2 * scipy_t.sf(abs(t), n - 1)), rel=1e-6)
    md = ablate_report.markdown(ablate_report.build(results, kept), "figures")
    assert "the first look's intervals at 97.5%, the 2 later ones' at 98.75% each (2.5% + 1.25% + 1.25%)" in md
    assert "(times 2 or times 4)" in md and "read again after 4 and then 8," in md
    assert "| variant - baseline [97.5% CI (98.75% where read again)] |" in md
    assert "bar = 97.5% interval (98.75% where read again);" in md
    assert "over 8 paired seeds" in md and "over 2 paired seeds" in md
    assert "`mnistlab ablate --budget test --seeds 2 --max-seeds 8`" in md


def test_variants_compared_are_the_variants_the_chosen_arms_or_the_whole_pool():
    claim = _sequential_claim()
    c = {x.statement: x for x in claim.comparisons}
    assert ablate.variants_compared(claim, [c["c beats b"]], {"a best": "a 2"}) == {"b", "c"}
    assert ablate.variants_compared(claim, [c["a beats b"], c["a 1 beats c"]], {"a best": "a 2"}) == {
        "a 1", "a 2", "b", "c"}
    protocol = ablate.CLAIMS["protocol"](ablate.TEST)
    assert ablate.variants_compared(protocol, list(protocol.comparisons), {}) == {v.name for v in protocol.variants}


def test_a_missing_seed_drops_out_of_the_pairing():
    claim = ablate.Claim(key="k", title="t", quote="q", base=ablate.CLAIMS["decay"](ablate.TEST).base,
                        variants=(ablate.Variant("a", {}), ablate.Variant("b", {})),
                        comparisons=(ablate.Comparison("a beats b", "a", "b", "test_accuracy"),),
                        figures=("test_accuracy",), budget_fields=())
    members = [_member("a", 0, test_accuracy=0.9), _member("b", 0, test_accuracy=0.8),
               _member("a", 1, test_accuracy=math.nan), _member("b", 1, test_accuracy=0.8)]
    c = ablate.analyse(claim, members, ablate.TEST, seeds=2)["comparisons"][0]
    assert c["difference"]["n"] == 1 and c["verdict"] == stats.INCONCLUSIVE  # one pair: no interval


# ------------------------------------------------------------------ progress events


def test_a_claim_reports_each_epoch_of_each_group_and_the_members_done(synthetic):
    # Two programs (ReLU, sigmoid) of 4 initializers x 2 seeds each, 2 epochs: 16 members.
    budget = dataclasses.replace(ablate.TEST, epochs=2)
    claim = ablate.CLAIMS["initialization"](budget)
    events = []
    _, group = ablate.run_claim(claim, budget, 2, lambda name: synthetic, lanes=1, on_event=events.append)
    assert len(group) == 16
    shown = [(e["event"], e["group"], e.get("epoch"), e.get("members_done")) for e in events]
    assert shown == [("group", 1, None, None), ("epoch", 1, 1, 0), ("epoch", 1, 2, 8),
                     ("group", 2, None, None), ("epoch", 2, 1, 8), ("epoch", 2, 2, 16)]
    for e in events:
        assert e["claim"] == "initialization" and e["groups"] == 2 and e["epochs"] == 2
        assert e["members"] == (16 if e["event"] == "epoch" else 8)  # the claim's, the group's


def test_a_claim_event_says_how_many_members_it_trains():
    budget = dataclasses.replace(ablate.TEST, claims=("initialization",))
    events = []
    with pytest.raises(RuntimeError, match="stop here"):
        def on_event(e):
            events.append(e)
            if e["event"] == "claim":
                raise RuntimeError("stop here")  # before any training
        ablate.run(budget, on_event=on_event)
    claim = events[-1]
    assert claim["claim"] == "initialization"
    assert claim["members"] == len(ablate.members(ablate.CLAIMS["initialization"](budget), budget.seeds)) == 16


# ------------------------------------------------------------------ end to end


def mnistlab(*args, env=None):
    return subprocess.run([sys.executable, "-m", "mnistlab", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **(env or {})}, timeout=600)


def test_bad_budget_and_claim_are_refused_before_training(tmp_path):
    done = mnistlab("ablate", "--budget", "huge", "--out-dir", str(tmp_path))
    assert done.returncode == 2 and "--budget 'huge'" in done.stderr
    done = mnistlab("ablate", "--budget", "test", "--only", "regularisation", "--out-dir", str(tmp_path))
    assert done.returncode == 2 and "did you mean 'regularization'" in done.stderr
    assert not list(tmp_path.iterdir())
    with pytest.raises(UserError, match=r"^--docs .*nowhere: no such folder$"):
        ablate_report.run_and_report("test", out_dir=tmp_path, docs=tmp_path / "nowhere")
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def ablated(mnist_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    docs = root / "docs"
    docs.mkdir()
    done = mnistlab("ablate", "--budget", "test", "--out-dir", str(root / "out"), "--docs", str(docs), "--json",
                    env={"MNISTLAB_DATA": str(mnist_root)})
    assert done.returncode == 0, done.stderr + done.stdout
    (folder,) = list((root / "out").iterdir())
    return done, folder, docs


def test_ablate_writes_results_and_reports(ablated):
    done, folder, docs = ablated
    for name in (ablate.RESULTS, ablate.MEMBERS, "report.md", "report.html"):
        assert (folder / name).is_file()
    assert (docs / "ablate-test.md").is_file() and (docs / "ablate-test.html").is_file()
    md = (docs / "ablate-test.md").read_text()
    for ref in (line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")):
        assert (docs / ref).is_file(), ref  # every figure the Markdown shows is there
    results = json.loads((folder / ablate.RESULTS).read_text())
    assert [c["key"] for c in results["claims"]] == ["regularization", "output"]
    members = [json.loads(line) for line in (folder / ablate.MEMBERS).read_text().splitlines()]
    # test budget: regularization none + 3 kinds x 2 strengths, output 4 variants; 2 seeds each
    assert len(members) == sum(c["members"] for c in results["claims"]) == (7 + 4) * 2
    assert {m["claim"] for m in members} == {"regularization", "output"}
    assert "verdicts" in done.stderr  # --json: the table goes to stderr


def test_ablate_json_is_the_folder_and_every_verdict(ablated):
    done, folder, docs = ablated
    shown = json.loads(done.stdout)
    results = json.loads((folder / ablate.RESULTS).read_text())
    assert shown["ablation_dir"] == str(folder) and shown["results"] == str(folder / ablate.RESULTS)
    assert str(docs / "ablate-test.html") in shown["reports"] and shown["seconds"] == results["seconds"]
    assert shown["verdicts"] == [{"claim": claim["key"], "statement": c["statement"], "difference": c["difference"],
                                  "verdict": c["verdict"]} for claim in results["claims"] for c in claim["comparisons"]]


def test_every_verdict_follows_from_the_recorded_numbers(ablated):
    _, folder, _ = ablated
    results = json.loads((folder / ablate.RESULTS).read_text())
    for claim in results["claims"]:
        for c in claim["comparisons"]:
            v = [math.nan if x is None else x for x in c["variant_values"]]
            b = [math.nan if x is None else x for x in c["baseline_values"]]
            diff = stats.paired_difference(v, b)
            assert stats.verdict(diff, c["better"], c["tolerance"]) == c["verdict"]
            if diff.n:
                assert c["difference"]["mean"] == pytest.approx(diff.mean)


def test_the_corrected_verdicts_hold_the_false_discovery_rate_over_every_statement(ablated):
    _, folder, _ = ablated
    results = json.loads((folder / ablate.RESULTS).read_text())
    comparisons = [c for claim in results["claims"] for c in claim["comparisons"]]
    tests = []
    for c in comparisons:
        v = [math.nan if x is None else x for x in c["variant_values"]]
        b = [math.nan if x is None else x for x in c["baseline_values"]]
        tests.append((stats.paired_difference(v, b), c["better"], c["tolerance"]))
    assert [c["corrected_verdict"] for c in comparisons] == stats.corrected_verdicts(tests)
    for c, test in zip(comparisons, tests):
        p = stats.p_value(*test)
        assert (math.isnan(p) and math.isnan(c["p_value"])) or c["p_value"] == pytest.approx(p)
        if c["corrected_verdict"] != stats.INCONCLUSIVE:  # the correction only ever withdraws a verdict
            assert c["corrected_verdict"] == c["verdict"]
    report = (folder / "report.md").read_text()
    assert "false discovery rate held at 5% over all of them" in report


def test_reports_show_each_verdict_with_the_json_numbers(ablated):
    _, folder, docs = ablated
    results = json.loads((folder / ablate.RESULTS).read_text())
    md = (folder / "report.md").read_text()
    page = (docs / "ablate-test.html").read_text()
    assert md == (docs / "ablate-test.md").read_text().replace("](ablate-test/", "](figures/")
    for claim in results["claims"]:
        assert claim["title"] in md and claim["title"] in page
        for c in claim["comparisons"]:
            # The difference as the report prints it, recomputed from the JSON numbers.
            n = c["difference"]["n"]
            scale, digits = ablate.FIGURES[c["figure"]][1:]
            text = f"{c['difference']['mean'] * scale:+.{digits}f}"
            if n >= 2:
                text += f" [{c['difference']['low'] * scale:+.{digits}f}, {c['difference']['high'] * scale:+.{digits}f}]"
            line = next(line for line in md.splitlines() if line.startswith("- ") and c["statement"] in line)
            assert line.startswith(f"- **{c['verdict']}**: ") and f"difference {text}" in line
            assert text in page and html.escape(c["statement"], quote=False) in page
    # Self-contained: figures are data URIs; nothing is fetched from anywhere.
    assert page.count('src="data:image/png;base64,') >= 6
    assert "src=\"http" not in page and "href=\"http" not in page and "<script" not in page
    assert "<link" not in page and "@import" not in page


def test_each_open_statement_says_how_small_its_difference_is_and_what_would_decide_it(ablated):
    _, folder, _ = ablated
    results = json.loads((folder / ablate.RESULTS).read_text())
    md = (folder / "report.md").read_text()
    rows = {line.split(" | ")[1]: line for line in md.split("## The statements left open")[1].split("\n## ")[0].splitlines()
            if line.startswith("| ") and " | " in line[2:]}
    inconclusive = [c for claim in results["claims"] for c in claim["comparisons"] if c["verdict"] == "inconclusive"]
    assert inconclusive and len(rows) == len(inconclusive) + 1  # and the header
    for c in inconclusive:
        v = [math.nan if x is None else x for x in c["variant_values"]]
        b = [math.nan if x is None else x for x in c["baseline_values"]]
        needed = stats.seeds_to_decide(stats.paired_difference(v, b), c["better"], c["tolerance"])
        assert c["seeds_to_decide"] == needed
        row = rows[c["statement"]]
        scale, digits = ablate.FIGURES[c["figure"]][1:]
        if c["difference"]["n"] >= 2:
            largest = max(abs(c["difference"]["low"]), abs(c["difference"]["high"])) * scale
            assert f" | {largest:.{digits}f} | " in row
        assert (" | more than 10,000 | " if needed is None else f" | {needed:,} | ") in row


def _open(mean, sd, n=5):
    half = T95.get(n - 1, stats.t_quantile(n - 1)) * sd / math.sqrt(n)
    d = stats.Interval(mean, mean - half, mean + half, n, sd)
    return {"difference": d.as_dict(), "figure": "test_accuracy", "better": "higher", "tolerance": 0.0,
            "seeds_to_decide": stats.seeds_to_decide(d)}


def test_an_open_statement_is_near_zero_when_only_many_seeds_would_decide_it():
    # Mean 0.1 points, sd 0.2: 18 seeds would decide it (stats_test); mean 0.03: about
    # (1.96 x 0.2 / 0.03)^2 = 171.
    assert ablate_report.why_open(_open(0.001, 0.002), 5) == "too few seeds (5)"
    assert ablate_report.why_open(_open(0.0003, 0.002), 5) == "a difference near zero"
    assert ablate_report.why_open(_open(0.0, 0.002), 5) == "a difference near zero"
    assert ablate_report.why_open(_open(math.nan, math.nan, n=1), 5) == "fewer than two seeds gave a number"
    # test accuracy is shown in points: the interval 0.001 +- 2.7764 x 0.002 / sqrt(5)
    assert ablate_report.largest_difference_text(_open(0.001, 0.002)) == f"{(0.001 + 2.776445 * 0.002 / 5 ** .5) * 100:.2f}"


def test_report_rendering_of_blocks():
    page = ablate_report.Page("t")
    page.add("p", "**supported** and `code` & <tag>")
    page.add("table", ["a", "b|c"], [["1", "x|y"]])
    md = ablate_report.markdown(page, "figs")
    assert "| a | b\\|c |" in md and "| 1 | x\\|y |" in md
    html = ablate_report.to_html(page)
    assert '<strong class="v-supported">supported</strong>' in html
    assert "<code>code</code> &amp; &lt;tag&gt;" in html


def test_sigterm_stops_an_ablation_with_exit_143_and_writes_nothing(mnist_root, tmp_path):
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "mnistlab", "ablate", "--budget", "test", "--out-dir",
                             str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MNISTLAB_DATA": str(mnist_root)})
    deadline = time.monotonic() + 120
    line = ""
    while "group" not in line:  # a claim's first population is training
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        line = proc.stdout.readline()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "interrupted" in err and "Traceback" not in err and not (tmp_path / "out").exists()
