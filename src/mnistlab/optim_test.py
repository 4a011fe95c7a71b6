"""optim: each optimizer against Keras' formulas, written out here in float64 NumPy.

The references below are transcriptions of `shared/reference/keras-semantics.md` (Keras 3's
`keras/src/optimizers/*.py`, Keras 2's `decay`); they never call mnistlab. Each test runs
a few updates on a 3-element parameter vector with a fixed gradient sequence and compares
every update (the change of w) to ~1e-6 relative.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mnistlab import optim
from mnistlab.spec import OptimizerSpec, Schedule

G = np.array([[0.5, -1.0, 2.0], [0.3, -0.2, 1.5], [-0.4, 0.8, 1.0], [0.1, 0.6, -0.5], [0.7, -0.9, 0.2]])
W0 = np.array([1.0, -2.0, 0.5])
STEPS = np.arange(len(G))


def run(spec, grads=G, w0=W0):
    """Our updates, one row per step (float32 computed, returned as float64)."""
    tx = optim.build(spec, optim.hyperparameters(spec))
    update = jax.jit(tx.update)
    w = jnp.asarray(w0, jnp.float32)
    state = tx.init(w)
    rows = []
    for g in grads:
        u, state = update(jnp.asarray(g, jnp.float32), state, w)
        w = optax.apply_updates(w, u)
        rows.append(np.asarray(u, np.float64))
    return np.stack(rows)


def close(ours, ref, rtol=1e-6, atol=None):
    """1e-6 relative; an entry that nearly cancels (an update 20x smaller than the rest)
    may be off by 1e-7 of the largest one, float32's own resolution there."""
    ref = np.asarray(ref, np.float64)
    atol = 1e-7 * np.max(np.abs(ref)) if atol is None else atol
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol)


def rel_diff(a, b):
    return float(np.max(np.abs(a - b) / np.abs(b)))


# ------------------------------------------------------------------ references (Keras)


def keras_sgd(lrs, grads, momentum=0.0, nesterov=False):
    v, rows = np.zeros(3), []
    for lr, g in zip(lrs, grads):
        if momentum == 0:
            rows.append(-lr * g)
            continue
        v = momentum * v - lr * g
        rows.append(momentum * v - lr * g if nesterov else v)
    return np.array(rows)


def pytorch_sgd(lrs, grads, momentum):
    """PyTorch's rule: b = momentum*b + g; w -= lr*b (the rate outside the velocity)."""
    b, rows = np.zeros(3), []
    for lr, g in zip(lrs, grads):
        b = momentum * b + g
        rows.append(-lr * b)
    return np.array(rows)


def f32(x):
    """A number as the optimizer holds it (Keras too): float32. 0.999 is 0.99900001, so
    1 - beta_2 is off by 1.3e-5 relative, which shows where eps is not negligible."""
    return float(np.float32(x))


def keras_adam(lrs, grads, b1=0.9, b2=0.999, eps=1e-7, amsgrad=False, weight_decay=0.0, w0=W0):
    b1, b2, eps = f32(b1), f32(b2), f32(eps)
    m, v, vhat, w, rows = np.zeros(3), np.zeros(3), np.zeros(3), w0.copy(), []
    for t, (lr, g) in enumerate(zip(lrs, grads), start=1):
        w_before = w.copy()
        w = w - w * weight_decay * lr  # AdamW: decoupled, before the Adam step
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if amsgrad:
            vhat = np.maximum(vhat, v)
        alpha = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        w = w - alpha * m / (np.sqrt(vhat if amsgrad else v) + eps)
        rows.append(w - w_before)
    return np.array(rows)


def optax_style_adam(lrs, grads, b1=0.9, b2=0.999, eps=1e-7):
    """PyTorch / Optax: eps added to the bias-corrected sqrt(v). Not Keras."""
    b1, b2, eps = f32(b1), f32(b2), f32(eps)
    m, v, rows = np.zeros(3), np.zeros(3), []
    for t, (lr, g) in enumerate(zip(lrs, grads), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        rows.append(-lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps))
    return np.array(rows)


def keras_rmsprop(lrs, grads, rho=0.9, eps=1e-7, momentum=0.0):
    v, mom, rows = np.zeros(3), np.zeros(3), []
    for lr, g in zip(lrs, grads):
        v = rho * v + (1 - rho) * g * g
        increment = lr * g / np.sqrt(v + eps)
        if momentum > 0:
            mom = momentum * mom + increment
            rows.append(-mom)
        else:
            rows.append(-increment)
    return np.array(rows)


def keras_adagrad(lrs, grads, initial=0.1, eps=1e-7):
    a, rows = np.full(3, initial), []
    for lr, g in zip(lrs, grads):
        a = a + g * g
        rows.append(-lr * g / np.sqrt(a + eps))
    return np.array(rows)


def keras_lr(t, lr, name="constant", decay_steps=1, decay_rate=0.96, staircase=False,
             alpha=0.0, warmup_steps=0, decay=0.0):
    """Learning rate at step t (from 0): schedule, warm-up, then Keras 2's decay."""
    if t < warmup_steps:
        scheduled = lr * t / warmup_steps
    else:
        s = t - warmup_steps
        p = s / decay_steps
        if staircase or name == "step":
            p = math.floor(p)
        scheduled = {
            "constant": lambda: lr,
            "exponential": lambda: lr * decay_rate**p,
            "step": lambda: lr * decay_rate**p,
            "inverse_time": lambda: lr / (1 + decay_rate * p),
            "cosine": lambda: lr * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * min(s, decay_steps) / decay_steps)) + alpha),
        }[name]()
    return scheduled / (1 + decay * t)


# ------------------------------------------------------------------ SGD


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd(momentum, nesterov):
    spec = OptimizerSpec(name="sgd", learning_rate=0.1, momentum=momentum, nesterov=nesterov)
    close(run(spec), keras_sgd([0.1] * 5, G, momentum, nesterov))


def test_sgd_momentum_folds_the_changing_rate_into_the_velocity():
    # Under legacy decay the rate changes every step: Keras' v = m*v - lr*g is not
    # PyTorch's b = m*b + g; w -= lr*b. With a constant rate the two agree.
    lrs = [0.1 / (1 + 0.5 * t) for t in STEPS]
    ours = run(OptimizerSpec(name="sgd", learning_rate=0.1, momentum=0.9, decay=0.5))
    close(ours, keras_sgd(lrs, G, 0.9))
    assert rel_diff(ours, pytorch_sgd(lrs, G, 0.9)) > 0.05
    close(keras_sgd([0.1] * 5, G, 0.9), pytorch_sgd([0.1] * 5, G, 0.9), rtol=1e-12, atol=0)


# ------------------------------------------------------------------ Adam, AdamW


def test_adam():
    # beta_1 = 0.5: G's moments stay away from 0 (with 0.8 one is exactly 0 at step 3).
    spec = OptimizerSpec(name="adam", learning_rate=0.01, beta_1=0.5, beta_2=0.99)
    close(run(spec), keras_adam([0.01] * 5, G, b1=0.5, b2=0.99))


def test_adam_adds_epsilon_to_the_uncorrected_root():
    # Gradients of 1e-6: sqrt(v) is of the order of eps = 1e-7, so where eps goes matters.
    tiny = G * 1e-6
    ours = run(OptimizerSpec(name="adam", learning_rate=0.001), grads=tiny)
    close(ours, keras_adam([0.001] * 5, tiny))
    assert rel_diff(ours, optax_style_adam([0.001] * 5, tiny)) > 0.1


def test_adam_amsgrad_uses_the_running_max_of_v():
    # A large gradient first, then small ones: v falls, vhat keeps its maximum.
    grads = G * np.array([[10.0], [1.0], [0.5], [0.2], [0.1]])
    ours = run(OptimizerSpec(name="adam", learning_rate=0.01, beta_2=0.9, amsgrad=True), grads=grads)
    close(ours, keras_adam([0.01] * 5, grads, b2=0.9, amsgrad=True))
    assert rel_diff(ours, keras_adam([0.01] * 5, grads, b2=0.9)) > 0.1


def test_adam_counts_steps_past_float32_integers():
    # The step count t is an integer: a float32 count would stop at 2**24 (16.8M steps,
    # 45 epochs of MNIST at batch 1) and freeze the bias correction's t.
    tx = optim.scale_by_keras_adam(0.9, 0.999, 1e-7, amsgrad=False)
    state = tx.init({"w": jnp.zeros(3)})
    state = state._replace(count=state.count + 2**24)
    _, state = tx.update({"w": jnp.ones(3)}, state)
    assert int(state.count) == 2**24 + 1


def test_adam_bias_correction_on_top_of_legacy_decay():
    lrs = [0.01 / (1 + 0.3 * t) for t in STEPS]
    close(run(OptimizerSpec(name="adam", learning_rate=0.01, decay=0.3)), keras_adam(lrs, G))


def test_adamw_decays_weights_by_the_current_rate():
    spec = OptimizerSpec(name="adamw", learning_rate=0.01, weight_decay=0.5, decay=0.2)
    lrs = [0.01 / (1 + 0.2 * t) for t in STEPS]
    ours = run(spec)
    close(ours, keras_adam(lrs, G, weight_decay=0.5))
    assert rel_diff(ours, keras_adam(lrs, G)) > 0.01


# ------------------------------------------------------------------ RMSprop, Adagrad


@pytest.mark.parametrize("momentum, decay", [(0.0, 0.0), (0.5, 0.0), (0.5, 0.5)])
def test_rmsprop(momentum, decay):
    # With a changing rate (decay), the rate is inside the momentum: m = mu*m + lr*g/sqrt(v+eps).
    spec = OptimizerSpec(name="rmsprop", learning_rate=0.01, rho=0.8, momentum=momentum, decay=decay)
    lrs = [0.01 / (1 + decay * t) for t in STEPS]
    close(run(spec), keras_rmsprop(lrs, G, rho=0.8, momentum=momentum))


def test_rmsprop_epsilon_inside_the_root():
    tiny = G * 1e-4  # g*g ~ 1e-8, of the order of eps = 1e-7
    close(run(OptimizerSpec(name="rmsprop"), grads=tiny), keras_rmsprop([0.001] * 5, tiny))


@pytest.mark.parametrize("epsilon", [1e-7, 0.5])
def test_adagrad(epsilon):
    spec = OptimizerSpec(name="adagrad", learning_rate=0.1, initial_accumulator_value=0.2, epsilon=epsilon)
    close(run(spec), keras_adagrad([0.1] * 5, G, initial=0.2, eps=epsilon))


# ------------------------------------------------------------------ learning rates


def test_legacy_decay_sequence():
    spec = OptimizerSpec(name="sgd", learning_rate=0.1, decay=0.5)
    hp = optim.hyperparameters(spec)
    rates = [float(optim.learning_rate(spec, hp, t)) for t in range(5)]
    close(rates, [0.1 / (1 + 0.5 * t) for t in range(5)])  # 0.1, 0.0667, 0.05, ...
    close(run(spec), keras_sgd(rates, G))  # the first update uses step 0


SCHEDULES = [
    dict(name="constant"),
    dict(name="exponential", decay_steps=3, decay_rate=0.5),
    dict(name="exponential", decay_steps=3, decay_rate=0.5, staircase=True),
    dict(name="step", decay_steps=4, decay_rate=0.1),
    dict(name="inverse_time", decay_steps=2, decay_rate=0.7),
    dict(name="inverse_time", decay_steps=2, decay_rate=0.7, staircase=True),
    dict(name="cosine", decay_steps=10),
    dict(name="cosine", decay_steps=10, alpha=0.1),
    dict(name="cosine", decay_steps=10, alpha=0.1, warmup_steps=4),
    dict(name="exponential", decay_steps=3, decay_rate=0.5, warmup_steps=5),
    dict(name="constant", warmup_steps=3),
    dict(name="constant", warmup_steps=1),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: "-".join(f"{v}" for v in s.values()))
@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_schedule(schedule, decay):
    spec = OptimizerSpec(name="sgd", learning_rate=0.5, decay=decay, schedule=Schedule(**schedule))
    hp = optim.hyperparameters(spec)
    steps = [0, 1, 2, 3, 4, 5, 6, 9, 10, 11, 13, 20]
    ours = [float(optim.learning_rate(spec, hp, t)) for t in steps]
    ref = [keras_lr(t, 0.5, decay=decay, **schedule) for t in steps]
    # atol: cosine reaches exactly 0 at decay_steps when alpha = 0 (float32 cos(pi) ~ -1).
    close(ours, ref, atol=1e-7)


def test_updates_follow_the_schedule():
    schedule = dict(name="cosine", decay_steps=3, alpha=0.2, warmup_steps=2)
    spec = OptimizerSpec(name="sgd", learning_rate=0.1, decay=0.1, momentum=0.5,
                         schedule=Schedule(**schedule))
    lrs = [keras_lr(t, 0.1, decay=0.1, **schedule) for t in STEPS]
    assert lrs[0] == 0.0  # warm-up starts from zero
    close(run(spec), keras_sgd(lrs, G, momentum=0.5))


# ------------------------------------------------------------------ populations


POPULATIONS = [
    (dict(name="adamw", amsgrad=True, schedule=Schedule(name="cosine", decay_steps=4, warmup_steps=1)),
     dict(learning_rate=0.01, beta_1=0.8, weight_decay=0.1, decay=0.1, schedule={"alpha": 0.1}),
     dict(learning_rate=0.003, beta_2=0.95, epsilon=1e-5, weight_decay=0.3, schedule={"alpha": 0.5})),
    (dict(name="sgd", nesterov=True, schedule=Schedule(name="exponential", decay_steps=2, staircase=True)),
     dict(learning_rate=0.1, momentum=0.9, schedule={"decay_rate": 0.5}),
     dict(learning_rate=0.02, momentum=0.3, decay=0.5, schedule={"decay_rate": 0.9})),
    (dict(name="rmsprop", schedule=Schedule(name="inverse_time", decay_steps=2)),
     dict(learning_rate=0.01, momentum=0.5, schedule={"decay_rate": 0.5}),
     dict(learning_rate=0.001, rho=0.5, momentum=0.1, epsilon=1e-3, schedule={"decay_rate": 2.0})),
    (dict(name="adagrad"),
     dict(learning_rate=0.1, initial_accumulator_value=0.5),
     dict(learning_rate=0.3, initial_accumulator_value=0.0, epsilon=1e-2, decay=1.0)),
]


def _member(shared, numbers):
    numbers = dict(numbers)
    schedule = shared.get("schedule", Schedule()).model_copy(update=numbers.pop("schedule", {}))
    return OptimizerSpec(**{**shared, **numbers, "schedule": schedule})


@pytest.mark.parametrize("shared, a, b", POPULATIONS, ids=[p[0]["name"] for p in POPULATIONS])
def test_population_under_vmap_matches_each_member_alone(shared, a, b):
    members = [_member(shared, a), _member(shared, b)]
    assert optim.structure(members[0]) == optim.structure(members[1])
    spec = members[0]  # the structure; the numbers come from hp
    hps = [optim.hyperparameters(m) for m in members]
    hp = {k: jnp.array([h[k] for h in hps], jnp.float32) for k in hps[0]}
    w0s = [W0, -2 * W0]
    grads = [G, G[::-1] * 0.5]

    params = jnp.asarray(np.stack(w0s), jnp.float32)
    state = jax.vmap(lambda hp, p: optim.build(spec, hp).init(p))(hp, params)

    @jax.jit
    def step(hp, g, state, params):
        def one(hp, g, state, p):
            updates, state = optim.build(spec, hp).update(g, state, p)
            return optax.apply_updates(p, updates), state
        return jax.vmap(one)(hp, g, state, params)

    for t in STEPS:
        params, state = step(hp, jnp.asarray(np.stack([grads[0][t], grads[1][t]]), jnp.float32),
                             state, params)
    for i, member in enumerate(members):
        alone = w0s[i] + run(member, grads[i], w0s[i]).sum(0)
        close(np.asarray(params[i]), alone, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ structure


def program(spec: OptimizerSpec) -> str:
    """The jaxpr of a first update, its numbers traced: what XLA compiles for a member."""
    def update(hp, g, w):
        tx = optim.build(spec, hp)
        return tx.update(g, tx.init(w), w)
    g, w = jnp.asarray(G[0], jnp.float32), jnp.asarray(W0, jnp.float32)
    return str(jax.make_jaxpr(update)(optim.hyperparameters(spec), g, w))


FAMILIES = [dict(name="sgd"), dict(name="sgd", momentum=0.5), dict(name="sgd", momentum=0.5, nesterov=True),
            dict(name="adam"), dict(name="adam", amsgrad=True), dict(name="adamw"),
            dict(name="adamw", amsgrad=True), dict(name="rmsprop"), dict(name="rmsprop", momentum=0.5),
            dict(name="adagrad")]
SCHEDULE_CHOICES = [dict(name=name, staircase=staircase, decay_steps=steps, warmup_steps=warmup)
                    for name in ("constant", "exponential", "inverse_time", "step", "cosine")
                    for staircase in (False, True) for steps in (3, 5) for warmup in (0, 1, 2)]
# Every number a spec may hold, changed: never a reason for another program.
OTHER_NUMBERS = dict(learning_rate=0.123, decay=0.25, momentum=0.9, beta_1=0.5, beta_2=0.75, epsilon=0.01,
                     weight_decay=0.5, rho=0.6, initial_accumulator_value=0.3)


def _renumbered(spec: OptimizerSpec) -> OptimizerSpec:
    numbers = {k: v for k, v in OTHER_NUMBERS.items()
               if k in ("learning_rate", "decay") or getattr(spec, k)}  # keeps momentum 0 at 0
    return spec.model_copy(update={**numbers, "schedule": spec.schedule.model_copy(
        update={"decay_rate": 0.5, "alpha": 0.2})})


def test_equal_structures_are_exactly_the_equal_programs():
    """`structure` is the compile key of a population: specs it calls equal must compile to
    one program (else members would train as the first one does), and specs it tells apart
    should not (else a sweep compiles the same program twice)."""
    specs = [OptimizerSpec(**family) for family in FAMILIES]
    specs += [OptimizerSpec(name="sgd", schedule=Schedule(**choice)) for choice in SCHEDULE_CHOICES]
    specs += [_renumbered(spec) for spec in specs]
    programs = [program(spec) for spec in specs]
    structures = [optim.structure(spec) for spec in specs]
    # Schedules by warm-up (3 choices): constant alone; exponential and inverse_time by
    # staircase and decay_steps; "step" is exponential's staircase; cosine by decay_steps.
    # The first constant one is FAMILIES[0].
    assert len(set(structures)) == len(FAMILIES) + 3 * (1 + 2 * 2 * 2 + 2) - 1
    for i, (a, pa) in enumerate(zip(structures, programs)):
        for b, pb in zip(structures[i + 1:], programs[i + 1:]):
            assert (a == b) == (pa == pb), (a, b)


def test_a_name_the_spec_knows_but_optim_does_not_is_refused_by_name():
    # Guards a spec that grows an optimizer or a schedule before optim does.
    unknown = OptimizerSpec.model_construct(name="lion", schedule=Schedule())
    with pytest.raises(ValueError, match=r"^unknown optimizer 'lion'$"):
        optim.build(unknown, {"learning_rate": 0.1, "decay": 0.0})
    unknown = OptimizerSpec(name="sgd").model_copy(update={"schedule": Schedule.model_construct(name="linear")})
    with pytest.raises(ValueError, match=r"^unknown schedule 'linear'$"):
        optim.learning_rate(unknown, {"learning_rate": 0.1, "decay": 0.0}, 0)


def test_numbers_stay_float32_when_a_process_turns_on_float64():
    # The gradient checks turn on jax_enable_x64 in-process; Python floats in `hp` must
    # still make a float32 optimizer, as every population's parameters are float32.
    spec = OptimizerSpec(name="adam", schedule=Schedule(name="cosine", decay_steps=4, warmup_steps=2))
    jax.config.update("jax_enable_x64", True)
    try:
        hp = optim.hyperparameters(spec)
        w = jnp.asarray(W0, jnp.float32)
        tx = optim.build(spec, hp)
        updates, state = tx.update(jnp.asarray(G[0], jnp.float32), tx.init(w), w)
        rate = optim.learning_rate(spec, hp, 3)
    finally:
        jax.config.update("jax_enable_x64", False)
    assert updates.dtype == rate.dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(state)} == {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}


def test_hyperparameters_are_the_numbers_the_family_uses():
    assert optim.hyperparameters(OptimizerSpec(name="adam")) == {
        "learning_rate": 0.001, "decay": 0.0, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
    assert optim.hyperparameters(OptimizerSpec(name="sgd")) == {"learning_rate": 0.01, "decay": 0.0}
    assert optim.hyperparameters(OptimizerSpec(name="rmsprop", momentum=0.5)).keys() == {
        "learning_rate", "decay", "rho", "momentum", "epsilon"}
    assert optim.hyperparameters(OptimizerSpec(name="adagrad", schedule=Schedule(name="cosine"))) == {
        "learning_rate": 0.001, "decay": 0.0, "initial_accumulator_value": 0.1, "epsilon": 1e-7,
        "schedule.alpha": 0.0}
    assert set(optim.hyperparameters(OptimizerSpec(name="adamw", schedule="step"))) == {
        "learning_rate", "decay", "beta_1", "beta_2", "epsilon", "weight_decay", "schedule.decay_rate"}


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_state_depends_only_on_structure(name):
    momentum = {"momentum": 0.5} if name in ("sgd", "rmsprop") else {}
    a = OptimizerSpec(name=name, learning_rate=0.1, **momentum)
    b = OptimizerSpec(name=name, learning_rate=0.2, decay=0.3, **({"momentum": 0.9} if momentum else {}))
    w = jnp.zeros(3, jnp.float32)
    sa = optim.build(a, optim.hyperparameters(a)).init(w)
    sb = optim.build(b, optim.hyperparameters(b)).init(w)
    assert jax.tree.structure(sa) == jax.tree.structure(sb)
    leaves = jax.tree.leaves(sa)
    assert all(x.dtype in (jnp.float32, jnp.int32) for x in leaves)
    assert any(x.dtype == jnp.int32 and x.shape == () for x in leaves)  # a step count


@pytest.mark.parametrize("name, amsgrad, slots", [("adam", False, 2), ("adam", True, 3), ("adamw", False, 2),
                                                   ("sgd", None, 0), ("rmsprop", None, 1), ("adagrad", None, 1)])
def test_state_holds_only_the_slots_the_optimizer_uses(name, amsgrad, slots):
    # Each slot is one more copy of the weights in every member's memory (engine.member_bytes).
    spec = OptimizerSpec(name=name, **({} if amsgrad is None else {"amsgrad": amsgrad}))
    w = jnp.zeros(3, jnp.float32)
    state = optim.build(spec, optim.hyperparameters(spec)).init(w)
    assert sum(x.shape == (3,) for x in jax.tree.leaves(state)) == slots
