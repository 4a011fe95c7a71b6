"""Keras-exact optimizers as Optax transforms, with their numbers taken as data.

Each optimizer is an Optax `chain` of small transforms. Optax's own pieces are used where
they compute exactly what Keras computes; `scale_by_keras_adam` (Keras puts epsilon
elsewhere), the warm-up and most schedules are written here, each saying why. Formulas:
`shared/reference/keras-semantics.md`, from Keras 3's `keras/src/optimizers/*.py`.

The numbers (learning rate, betas, momentum, ...) come from a mapping `hp`, never from the
spec, so they may be traced: one compiled program serves a whole population under
`jax.vmap`. The spec only supplies the discrete choices, `structure(spec)`:

    hp = hyperparameters(spec)                  # {"learning_rate": 0.001, "beta_1": 0.9, ...}
    state = jax.vmap(lambda hp, p: build(spec, hp).init(p))(hp_batch, params_batch)
    updates, state = build(spec, hp).update(grads, state, params)   # inside the vmapped step
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mnistlab.spec import OptimizerSpec

# The numbers each optimizer reads from `hp`, besides learning_rate and decay.
_FAMILY_NUMBERS = {
    "sgd": ("momentum",),
    "adam": ("beta_1", "beta_2", "epsilon"),
    "adamw": ("beta_1", "beta_2", "epsilon", "weight_decay"),
    "rmsprop": ("rho", "momentum", "epsilon"),
    "adagrad": ("initial_accumulator_value", "epsilon"),
}
# The schedule's numbers, keyed "schedule.<name>".
_SCHEDULE_NUMBERS = {
    "constant": (),
    "exponential": ("decay_rate",),
    "inverse_time": ("decay_rate",),
    "step": ("decay_rate",),
    "cosine": ("alpha",),
}


class Structure(NamedTuple):
    """The discrete choices of an optimizer; fields that the family ignores are None."""

    name: str
    nesterov: bool | None
    amsgrad: bool | None
    has_momentum: bool | None  # momentum > 0: a velocity in the state
    schedule: str
    staircase: bool | None
    decay_steps: int | None
    warmup_steps: int


def structure(spec: OptimizerSpec) -> Structure:
    """What changes the program; specs with equal structures share one compiled step, and
    specs with different structures compile different programs (optim_test checks both)."""
    s = spec.schedule
    has_momentum = bool(spec.momentum) if spec.name in ("sgd", "rmsprop") else None
    # "step" is exponential decay with staircase: one program for both spellings.
    schedule = "exponential" if s.name == "step" else s.name
    return Structure(
        name=spec.name,
        nesterov=bool(spec.nesterov) if spec.name == "sgd" and has_momentum else None,
        amsgrad=bool(spec.amsgrad) if spec.name in ("adam", "adamw") else None,
        has_momentum=has_momentum,
        schedule=schedule,
        staircase=s.staircase or s.name == "step" if schedule in ("exponential", "inverse_time") else None,
        decay_steps=s.decay_steps if schedule != "constant" else None,
        warmup_steps=s.warmup_steps,
    )


def hyperparameters(spec: OptimizerSpec) -> dict[str, float]:
    """Every number the optimizer uses, keyed by plain names; the keys follow from `structure`."""
    names = ["learning_rate", "decay"] + [
        n for n in _FAMILY_NUMBERS[spec.name] if n != "momentum" or spec.momentum]
    hp = {n: float(getattr(spec, n)) for n in names}
    for n in _SCHEDULE_NUMBERS[spec.schedule.name]:
        hp[f"schedule.{n}"] = float(getattr(spec.schedule, n))
    return hp


# ------------------------------------------------------------------ learning rate


def _schedule(spec: OptimizerSpec, hp: Mapping[str, Any]) -> Callable[[jax.Array], jax.Array]:
    """step (int, from 0) -> learning rate: schedule, then warm-up, then Keras 2's `decay`.

    Schedules as keras/src/optimizers/schedules/learning_rate_schedule.py:

    - constant:     lr
    - exponential:  lr * decay_rate ** (step / decay_steps)        (Keras ExponentialDecay)
    - step:         lr * decay_rate ** floor(step / decay_steps)   (its staircase form)
    - inverse_time: lr / (1 + decay_rate * step / decay_steps)     (Keras InverseTimeDecay)
      (`staircase` floors step / decay_steps in both)
    - cosine:       lr * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps)) + alpha)
    - warm-up:      lr * step / warmup_steps before warmup_steps, then the schedule at
                    step - warmup_steps: Keras CosineDecay(initial_learning_rate=0,
                    warmup_target=lr), applied here to every schedule.
    - decay:        the result / (1 + decay * step)  (keras/optimizers.py, Keras 2).
    """
    st = structure(spec)  # only the structure, as in `build`
    lr = jnp.float32(hp["learning_rate"])
    decay = jnp.float32(hp["decay"])

    # exponential / inverse_time by hand: optax.exponential_decay tests `decay_rate == 0`
    # in Python, which fails when decay_rate is traced (a population's member axis);
    # Optax has no inverse-time schedule.
    def fraction(t):
        p = t / st.decay_steps
        return jnp.floor(p) if st.staircase else p

    if st.schedule == "constant":
        sched = lambda t: jnp.full_like(t, lr)
    elif st.schedule == "exponential":
        sched = lambda t: lr * jnp.power(jnp.float32(hp["schedule.decay_rate"]), fraction(t))
    elif st.schedule == "inverse_time":
        sched = lambda t: lr / (1 + jnp.float32(hp["schedule.decay_rate"]) * fraction(t))
    elif st.schedule == "cosine":  # Optax's formula is Keras' (schedules/learning_rate_schedule.py)
        sched = optax.cosine_decay_schedule(lr, st.decay_steps, alpha=jnp.float32(hp["schedule.alpha"]))
    else:
        raise ValueError(f"unknown schedule '{st.schedule}'")

    if st.warmup_steps:
        # Warm-up by hand: optax.linear_schedule computes lr - lr * (1 - t / warmup_steps),
        # which loses float32 digits near t = 0; Keras computes lr * t / warmup_steps.
        w = st.warmup_steps
        sched = optax.join_schedules([lambda t: lr * t / w, sched], [w])

    def rate(step):
        t = jnp.asarray(step, jnp.float32)
        return sched(t) / (1 + decay * t)

    return rate


def learning_rate(spec: OptimizerSpec, hp: Mapping[str, Any], step) -> jax.Array:
    """The learning rate of optimizer step `step` (0-based: the first update is step 0).

    After schedule, warm-up and `decay`; before Adam's bias correction (as Keras reports it).
    """
    return _schedule(spec, hp)(step)


# ------------------------------------------------------------------ Keras' Adam


class ScaleByKerasAdamState(NamedTuple):
    count: jax.Array  # int32: steps taken
    mu: optax.Updates  # first moment m
    nu: optax.Updates  # second moment v
    nu_max: optax.Updates | None  # amsgrad's running max of v, else None


def scale_by_keras_adam(b1, b2, eps, amsgrad: bool) -> optax.GradientTransformation:
    """Keras' Adam direction, to be scaled by -lr (keras/src/optimizers/adam.py).

        m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g;  (amsgrad: v = vhat = max(vhat, v))
        update = sqrt(1 - b2**t) / (1 - b1**t) * m / (sqrt(v) + eps),  t = 1, 2, ...

    Epsilon is added to the *uncorrected* sqrt(v) (Kingma & Ba's "epsilon hat" form).
    `optax.scale_by_adam` adds it to the bias-corrected sqrt(v) instead, which differs
    whenever sqrt(v) is not much larger than eps (small gradients, Keras' eps = 1e-7).
    """

    def init(params):
        zeros = lambda: optax.tree.zeros_like(params)
        return ScaleByKerasAdamState(jnp.zeros([], jnp.int32), zeros(), zeros(),
                                     zeros() if amsgrad else None)

    def update(updates, state, params=None):
        del params
        beta_1, beta_2, epsilon = jnp.float32(b1), jnp.float32(b2), jnp.float32(eps)
        mu = jax.tree.map(lambda g, m: beta_1 * m + (1 - beta_1) * g, updates, state.mu)
        nu = jax.tree.map(lambda g, v: beta_2 * v + (1 - beta_2) * g * g, updates, state.nu)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu) if amsgrad else None
        count = optax.safe_increment(state.count)
        correction = jnp.sqrt(_one_minus_power(beta_2, count)) / _one_minus_power(beta_1, count)
        updates = jax.tree.map(lambda m, v: correction * m / (jnp.sqrt(v) + epsilon),
                               mu, nu_max if amsgrad else nu)
        return updates, ScaleByKerasAdamState(count, mu, nu, nu_max)

    return optax.GradientTransformation(init, update)


def _one_minus_power(b, t):
    """1 - b**t, computed as -expm1(t * log1p(b - 1)).

    The same number as Keras' `1 - ops.power(b, t)`, without its float32 cancellation:
    float32 0.999**2 carries a rounding error of up to 6e-8, which is 3e-5 of
    1 - 0.999**2; this way the error stays near 1e-7 relative.
    """
    return -jnp.expm1(t * jnp.log1p(b - 1))  # int32 t times float32: float32


# ------------------------------------------------------------------ the optimizers


def build(spec: OptimizerSpec, hp: Mapping[str, Any]) -> optax.GradientTransformation:
    """The Keras optimizer `spec.name`, its numbers from `hp` (which may be traced).

    Only `structure(spec)` is read from `spec`, so the state's structure never depends on
    the numbers. Each chain, with lr the scheduled rate of the step (`learning_rate`):

    - sgd:     w -= lr*g;  momentum: v = momentum*v - lr*g, w += v;
               nesterov: w += momentum*v - lr*g (new v). With -lr applied before
               `optax.trace`, the trace is Keras' v: the rate is folded into the velocity
               (PyTorch's b = momentum*b + g; w -= lr*b differs when lr changes).
    - adam:    `scale_by_keras_adam`, then -lr.
    - adamw:   Adam plus w -= lr * weight_decay * w, decoupled, with the same lr.
    - rmsprop: v = rho*v + (1-rho)*g*g; w -= lr*g/sqrt(v + eps) (eps inside the root);
               momentum: m = momentum*m + lr*g/sqrt(v + eps), w -= m.
    - adagrad: a = initial_accumulator_value + sum of g*g; w -= lr*g/sqrt(a + eps).
    """
    st = structure(spec)
    num = lambda name: jnp.float32(hp[name])
    lr = optax.scale_by_learning_rate(_schedule(spec, hp))  # -lr(step) * updates
    momentum = [optax.trace(num("momentum"), nesterov=bool(st.nesterov))] if st.has_momentum else []
    if st.name == "sgd":
        parts = [lr, *momentum]
    elif st.name in ("adam", "adamw"):
        adam = scale_by_keras_adam(num("beta_1"), num("beta_2"), num("epsilon"), st.amsgrad)
        decay = [optax.add_decayed_weights(num("weight_decay"))] if st.name == "adamw" else []
        parts = [adam, *decay, lr]
    elif st.name == "rmsprop":
        # Optax's defaults, v from 0 with eps inside the root and no bias correction, are
        # Keras 3's (not Keras 2's) RMSprop; optim_test holds them to Keras' formula.
        rms = optax.scale_by_rms(num("rho"), num("epsilon"))
        parts = [rms, lr, *momentum]
    elif st.name == "adagrad":
        parts = [optax.scale_by_rss(num("initial_accumulator_value"), num("epsilon")), lr]
    else:
        raise ValueError(f"unknown optimizer '{st.name}'")
    return optax.chain(*parts)
