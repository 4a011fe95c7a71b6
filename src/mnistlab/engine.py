"""Compiled training: a population of members, one epoch in a few compiled chunks.

Everything that runs per step is inside `jax.jit(lax.scan(...))`: the batch gather from
the device-resident uint8 images, scaling to float, forward, backward, penalty,
optimizer update and constraint. Python only runs between chunks (about ten per epoch)
to report progress, so a step costs what its arithmetic costs.

A run is a population of one. Parameters, optimizer state, hyper-parameters and keys
carry a leading member axis of size M. For M > 1 the step is `jax.vmap`-ed over it;
for M == 1 the axis is squeezed inside the compiled program and the plain step runs
(measured: a vmap over an axis of size 1 made an epoch up to 4x slower on CPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mnistlab import model, optim
from mnistlab.spec import RunSpec


class State(NamedTuple):
    """Everything that changes during training, with a leading member axis."""

    params: model.Params
    opt_state: optax.OptState
    step: jax.Array  # optimizer steps taken (int32), also the dropout stream position
    penalty: jax.Array  # the regularization loss of `params`, kept current by each step


class Sums(NamedTuple):
    """Running sums over an epoch's batches (Keras reports their sample-weighted means)."""

    loss: jax.Array  # sum over batches of batch_size * batch loss (penalty included)
    correct: jax.Array  # number of correct predictions
    count: jax.Array  # samples seen


@dataclass(frozen=True)
class Member:
    """One configuration of a population: its spec and the numbers drawn from it."""

    spec: RunSpec

    @property
    def hyper(self) -> dict[str, float]:
        return {**model.hyperparameters(self.spec.model),
                **{f"optimizer.{k}": v for k, v in optim.hyperparameters(self.spec.optimizer).items()}}


def structure(spec: RunSpec) -> tuple:
    """Members whose structures are equal share one compiled program."""
    t = spec.training
    return (model.structure(spec.model), optim.structure(spec.optimizer),
            spec.model.input_rescale, t.batch_size, t.eval_batch_size, t.shuffle)


def _optimizer_hyper(hyper):
    return {k.removeprefix("optimizer."): v for k, v in hyper.items() if k.startswith("optimizer.")}


# ------------------------------------------------------------------ one member, one step


def loss_terms(spec: RunSpec, params, hyper, images, labels, dropout_key=None):
    """(data loss, (logits)) for one batch: the batch-mean cross-entropy from logits."""
    z = model.logits(spec.model, params, hyper, images, dropout_key)
    if spec.model.output_activation == "softmax":
        data_loss = optax.softmax_cross_entropy_with_integer_labels(z, labels).mean()
    else:
        targets = jax.nn.one_hot(labels, z.shape[-1])
        data_loss = optax.sigmoid_binary_cross_entropy(z, targets).mean()
    return data_loss, z


def make_step(spec: RunSpec) -> Callable:
    """step(state, hyper, images, labels, dropout_key) -> (state, (loss, correct))."""

    def step(state: State, hyper, images, labels, dropout_key):
        params = state.params
        (data_loss, z), grads = jax.value_and_grad(loss_terms, argnums=1, has_aux=True)(
            spec, params, hyper, images, labels, dropout_key)
        # Penalty gradient added in closed form: it fuses into the update (see model.penalty_grad).
        for name, g in model.penalty_grad(spec.model, params, hyper).items():
            grads[name] = grads[name] + g
        loss = data_loss + state.penalty  # Keras: the penalty of the weights this batch saw
        tx = optim.build(spec.optimizer, _optimizer_hyper(hyper))
        updates, opt_state = tx.update(grads, state.opt_state, params)
        params = model.constrain(spec.model, optax.apply_updates(params, updates), hyper)
        # The next step's penalty, computed from the weights just written: XLA fuses this
        # sum into the update loop instead of reading the kernel again next step
        # (measured: 0.13 s/epoch of the seed network's 2.35 s).
        penalty = model.penalty(spec.model, params, hyper)
        correct = jnp.sum(jnp.argmax(z, -1) == labels)
        return State(params, opt_state, state.step + 1, penalty), (loss, correct)

    return step


def make_chunk(spec: RunSpec) -> Callable:
    """chunk(state, hyper, key, images, labels, batches[n, b]) -> (state, Sums) for one member.

    `batches` holds the sample indices of n consecutive steps; the step's dropout key is
    the run's dropout key folded with the global step number, so chunking changes nothing.
    """
    step = make_step(spec)

    def chunk(state: State, hyper, key, images, labels, batches):
        def body(carry, idx):
            state, sums = carry
            dropout_key = jax.random.fold_in(key, state.step)
            state, (loss, correct) = step(state, hyper, images[idx], labels[idx], dropout_key)
            n = idx.shape[0]
            return (state, Sums(sums.loss + n * loss, sums.correct + correct, sums.count + n)), None

        zero = Sums(jnp.float32(0), jnp.int32(0), jnp.int32(0))
        # unroll=2: two steps per loop iteration let XLA overlap their bookkeeping
        # (measured: 2.23 -> 2.19 s/epoch for the seed network on 2 CPU cores).
        (state, sums), _ = jax.lax.scan(body, (state, zero), batches, unroll=2)
        return state, sums

    return chunk


def make_evaluate(spec: RunSpec) -> Callable:
    """evaluate(params, hyper, images, labels) -> Sums, in batches of eval_batch_size."""
    size = spec.training.eval_batch_size

    def batch_sums(params, hyper, images, labels):
        data_loss, z = loss_terms(spec, params, hyper, images, labels)
        return data_loss * labels.shape[0], jnp.sum(jnp.argmax(z, -1) == labels)

    def evaluate(params, hyper, images, labels):
        n = labels.shape[0]
        full = (n // size) * size
        blocks = (images[:full].reshape(-1, size, *images.shape[1:]), labels[:full].reshape(-1, size))
        loss, correct = jax.lax.map(lambda b: batch_sums(params, hyper, *b), blocks)
        loss, correct = loss.sum(), correct.sum()
        if full < n:
            rest_loss, rest_correct = batch_sums(params, hyper, images[full:], labels[full:])
            loss, correct = loss + rest_loss, correct + rest_correct
        # Keras' evaluate reports the penalty once on top of the mean data loss.
        mean = loss / n + model.penalty(spec.model, params, hyper)
        return Sums(mean * n, correct, jnp.int32(n))

    return evaluate


# ------------------------------------------------------------------ the member axis


def over_members(fn: Callable, members: int, in_axes, out_axes=0) -> Callable:
    """`fn` applied to every member: vmap for several, squeeze/expand for one."""
    if members > 1:
        return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes)

    def single(*args):
        args = [a if ax is None else jax.tree.map(lambda x: x[0], a) for a, ax in zip(args, in_axes)]
        return jax.tree.map(lambda x: x[None], fn(*args))

    return single


def plan_chunks(steps: int, target: int = 10) -> list[int]:
    """Split an epoch's steps into about `target` chunks of at most two distinct sizes.

    Each distinct size is one compilation; progress is reported between chunks.
    A divisor of `steps` near steps/target gives one size; otherwise the remainder
    goes into a last, shorter chunk.
    """
    if steps <= target:
        return [steps] if steps else []
    ideal = steps / target
    for size in sorted(range(1, steps + 1), key=lambda s: abs(s - ideal)):
        if abs(size - ideal) > ideal / 2:
            break
        if steps % size == 0:
            return [size] * (steps // size)
    size = int(np.ceil(ideal))
    sizes = [size] * (steps // size)
    return sizes + ([steps % size] if steps % size else [])


# ------------------------------------------------------------------ training


@dataclass
class EpochResult:
    epoch: int  # 1-based, as Keras prints it
    metrics: dict[str, list[float]]  # name -> one value per member
    seconds: float
    diverged: list[bool]


@dataclass
class Progress:
    epoch: int
    steps_done: int
    steps_total: int


@dataclass
class Population:
    """Members that share one structure, trained together as one compiled program."""

    members: list[RunSpec]
    train_images: np.ndarray  # (N, ...) uint8
    train_labels: np.ndarray  # (N,) integer
    val_images: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    chunks_per_epoch: int = 10
    compile_seconds: float = 0.0
    state: State = field(init=False)
    diverged: np.ndarray = field(init=False)

    def __post_init__(self):
        first = self.members[0]
        if any(structure(m) != structure(first) for m in self.members):
            raise ValueError("a population's members must share one structure; group them first")
        self.spec = first
        self.size = len(self.members)
        self._device_data()
        self.hyper = {k: jnp.asarray([Member(m).hyper[k] for m in self.members], jnp.float32)
                      for k in Member(first).hyper}
        keys = [jax.random.split(jax.random.PRNGKey(m.training.seed), 3) for m in self.members]
        self._init_keys = jnp.stack([k[0] for k in keys])
        self._shuffle_keys = jnp.stack([k[1] for k in keys])
        self._dropout_keys = jnp.stack([k[2] for k in keys])
        self.state = self._init_state()
        self.diverged = np.zeros(self.size, bool)
        self.epochs_done = 0
        self._compiled: dict[tuple, Callable] = {}

    def _device_data(self):
        # The data set lives on the device as uint8, flattened: one transfer, ever.
        n = len(self.train_labels)
        self.images = jax.device_put(self.train_images.reshape(n, -1))
        self.labels = jax.device_put(self.train_labels.astype(np.int32))
        if self.val_images is not None and len(self.val_labels):
            self.val_x = jax.device_put(self.val_images.reshape(len(self.val_labels), -1))
            self.val_y = jax.device_put(self.val_labels.astype(np.int32))
        else:
            self.val_x = self.val_y = None

    def _init_state(self) -> State:
        input_dim = int(np.prod(self.train_images.shape[1:]))

        # Members differ in initializer arguments only through their own specs, so each
        # member is initialised from its own spec, then the results are stacked.
        states = []
        for i, member in enumerate(self.members):
            hyper_i = {k: v[i] for k, v in self.hyper.items()}
            params = model.init(member.model, self._init_keys[i], input_dim)
            opt_state = optim.build(member.optimizer, _optimizer_hyper(hyper_i)).init(params)
            penalty = model.penalty(member.model, params, hyper_i)
            states.append(State(params, opt_state, jnp.int32(0), penalty))
        return jax.tree.map(lambda *xs: jnp.stack(xs), *states)

    # -------------------------------------------------------------- compiled programs

    def _program(self, name: str, *args):
        """The compiled program `name` for these argument shapes (compiled once, timed)."""
        key = (name,) + tuple(getattr(a, "shape", None) for a in jax.tree.leaves(args))
        if key not in self._compiled:
            fn = self._build(name)
            start = time.perf_counter()
            self._compiled[key] = fn.lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
        return self._compiled[key]

    def _build(self, name: str):
        m = self.size
        if name == "chunk":
            fn = over_members(make_chunk(self.spec), m, (0, 0, 0, None, None, 0))
            # The state is donated: updated in place, no copy of the parameters per chunk.
            return jax.jit(fn, donate_argnums=(0,))
        if name == "evaluate":
            return jax.jit(over_members(make_evaluate(self.spec), m, (0, 0, None, None)))
        if name == "batches":
            n = len(self.train_labels)
            shuffle = self.spec.training.shuffle

            def order(key, epoch):
                key = jax.random.fold_in(key, epoch)
                return jax.random.permutation(key, n) if shuffle else jnp.arange(n)

            return jax.jit(jax.vmap(order, in_axes=(0, None)))
        raise KeyError(name)

    # -------------------------------------------------------------- public API

    def steps_per_epoch(self) -> int:
        return -(-len(self.train_labels) // self.spec.training.batch_size)

    def train_epoch(self, on_progress: Callable[[Progress], None] | None = None) -> EpochResult:
        """Train every member for one epoch; then evaluate on the validation data."""
        epoch = self.epochs_done + 1
        b = self.spec.training.batch_size
        n = len(self.train_labels)
        full = n // b
        order = self._program("batches", self._shuffle_keys, jnp.int32(epoch))(
            self._shuffle_keys, jnp.int32(epoch))
        blocks = order[:, : full * b].reshape(self.size, full, b)
        pieces = []
        start = 0
        for size in plan_chunks(full, self.chunks_per_epoch):
            pieces.append(blocks[:, start:start + size])
            start += size
        if full * b < n:  # Keras trains on the last, smaller batch too
            pieces.append(order[:, full * b:][:, None, :])

        total_steps = sum(p.shape[1] for p in pieces)
        begin = time.perf_counter()
        totals = None
        done = 0
        for batches in pieces:
            args = (self.state, self.hyper, self._dropout_keys, self.images, self.labels, batches)
            self.state, sums = self._program("chunk", *args)(*args)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
            done += batches.shape[1]
            if on_progress is not None:
                jax.block_until_ready(sums)  # report progress when it happened, not when queued
                on_progress(Progress(epoch, done, total_steps))
        metrics = {"loss": np.asarray(totals.loss / totals.count),
                   "accuracy": np.asarray(totals.correct / totals.count)}
        seconds = time.perf_counter() - begin
        if self.val_x is not None:
            val = self.evaluate(self.val_x, self.val_y)
            metrics["val_loss"], metrics["val_accuracy"] = val["loss"], val["accuracy"]
        steps = np.asarray(self.state.step) - 1
        metrics["learning_rate"] = np.asarray([
            float(optim.learning_rate(m.optimizer, _optimizer_hyper({k: v[i] for k, v in self.hyper.items()}),
                                      int(steps[i])))
            for i, m in enumerate(self.members)])
        self.diverged |= ~np.isfinite(metrics["loss"])
        self.epochs_done = epoch
        return EpochResult(epoch, {k: v.tolist() for k, v in metrics.items()}, seconds,
                           self.diverged.tolist())

    def evaluate(self, images, labels) -> dict[str, np.ndarray]:
        """Loss (penalty included, as Keras) and accuracy of every member on a data set."""
        images = jnp.asarray(images).reshape(len(labels), -1)
        labels = jnp.asarray(labels, jnp.int32)
        args = (self.state.params, self.hyper, images, labels)
        sums = self._program("evaluate", *args)(*args)
        return {"loss": np.asarray(sums.loss / sums.count), "accuracy": np.asarray(sums.correct / sums.count)}

    def member_params(self, i: int) -> dict[str, np.ndarray]:
        return {k: np.asarray(v[i]) for k, v in self.state.params.items()}

    def compile_all(self) -> None:
        """Compile every program an epoch needs now, so epoch times measure training only."""
        b = self.spec.training.batch_size
        n = len(self.train_labels)
        full = n // b
        idx = lambda steps, size: jnp.zeros((self.size, steps, size), jnp.int32)
        shapes = {(s, b) for s in plan_chunks(full, self.chunks_per_epoch)}
        if full * b < n:
            shapes.add((1, n - full * b))
        for steps, size in shapes:
            self._program("chunk", self.state, self.hyper, self._dropout_keys, self.images, self.labels,
                          idx(steps, size))
        self._program("batches", self._shuffle_keys, jnp.int32(1))
        if self.val_x is not None:
            self._program("evaluate", self.state.params, self.hyper, self.val_x, self.val_y)


def evaluate(spec: RunSpec, params, images, labels) -> dict[str, float]:
    """Loss (penalty included) and accuracy of one set of parameters on a data set."""
    hyper = {k: jnp.float32(v) for k, v in Member(spec).hyper.items()}
    params = {k: jnp.asarray(v) for k, v in params.items()}
    sums = jax.jit(make_evaluate(spec))(params, hyper, jnp.asarray(images).reshape(len(labels), -1),
                                        jnp.asarray(labels, jnp.int32))
    return {"loss": float(sums.loss / sums.count), "accuracy": float(sums.correct / sums.count)}
