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
    active: jax.Array  # False once a member is frozen (diverged, stopped early, pruned)


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


def loss_terms(spec: RunSpec, params, hyper, images, labels, valid, dropout_key=None):
    """(mean data loss over the valid samples, logits) for one batch.

    `valid` masks the padding of the epoch's last batch: Keras trains on a last, smaller
    batch, and a mask gives its exact mean without a second compiled program of that shape.
    """
    z = model.logits(spec.model, params, hyper, images, dropout_key)
    if spec.model.output_activation == "softmax":
        per_sample = optax.softmax_cross_entropy_with_integer_labels(z, labels)
    else:
        per_sample = optax.sigmoid_binary_cross_entropy(z, jax.nn.one_hot(labels, z.shape[-1])).mean(-1)
    data_loss = jnp.sum(jnp.where(valid, per_sample, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
    return data_loss, z


def _correct(z, labels, valid):
    return jnp.sum(valid & (jnp.argmax(z, -1) == labels))


def make_step(spec: RunSpec, freeze: bool) -> Callable:
    """step(state, hyper, images, labels, valid, dropout_key) -> (state, (loss, correct)).

    With `freeze`, a member whose loss is not finite keeps its last finite state and
    becomes inactive, as does an already inactive member: the others go on unaffected.
    """

    def step(state: State, hyper, images, labels, valid, dropout_key):
        params = state.params
        (data_loss, z), grads = jax.value_and_grad(loss_terms, argnums=1, has_aux=True)(
            spec, params, hyper, images, labels, valid, dropout_key)
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
        new = State(params, opt_state, state.step + 1, penalty, state.active)
        if freeze:
            keep = state.active & jnp.isfinite(loss)
            new = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, state)._replace(active=keep)
        return new, (loss, _correct(z, labels, valid))

    return step


def make_chunk(spec: RunSpec, freeze: bool = False) -> Callable:
    """chunk(state, hyper, key, images, labels, batches[n, b]) -> (state, Sums, learning rate).

    `batches` holds the sample indices of n consecutive steps, -1 for padding. The step's
    dropout key is the run's key folded with the global step number, so how an epoch is
    cut into chunks changes nothing.
    """
    step = make_step(spec, freeze)

    def chunk(state: State, hyper, key, images, labels, batches):
        def body(carry, idx):
            state, sums = carry
            valid = idx >= 0
            idx = jnp.maximum(idx, 0)
            dropout_key = jax.random.fold_in(key, state.step)
            state, (loss, correct) = step(state, hyper, images[idx], labels[idx], valid, dropout_key)
            n = jnp.sum(valid)
            return (state, Sums(sums.loss + n * loss, sums.correct + correct, sums.count + n)), None

        zero = Sums(jnp.float32(0), jnp.int32(0), jnp.int32(0))
        (state, sums), _ = jax.lax.scan(body, (state, zero), batches)
        rate = optim.learning_rate(spec.optimizer, _optimizer_hyper(hyper), state.step - 1)
        return state, sums, rate

    return chunk


def make_evaluate(spec: RunSpec) -> Callable:
    """evaluate(params, hyper, images[k*b], labels, valid) -> Sums of the data loss.

    One block of k evaluation batches; callers loop over blocks (padding the last with
    valid=False), so one compiled program serves validation and test sets of any size.
    The batch size changes nothing but speed and memory, as in Keras.
    """
    size = spec.training.eval_batch_size

    def evaluate(params, hyper, images, labels, valid):
        def batch(block):
            x, y, v = block
            loss, z = loss_terms(spec, params, hyper, x, y, v)
            return loss * jnp.sum(v), _correct(z, y, v)

        blocks = (images.reshape(-1, size, images.shape[-1]), labels.reshape(-1, size), valid.reshape(-1, size))
        loss, correct = jax.lax.map(batch, blocks)
        return Sums(loss.sum(), correct.sum(), jnp.sum(valid))

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
    eval_batches_per_call: int = 16
    compile_seconds: float = 0.0

    def __post_init__(self):
        first = self.members[0]
        if any(structure(m) != structure(first) for m in self.members):
            raise ValueError("a population's members must share one structure; group them first")
        self.spec = first
        self.size = len(self.members)
        self._device_data()
        names = Member(first).hyper
        self.hyper = {k: jnp.asarray([Member(m).hyper[k] for m in self.members], jnp.float32) for k in names}
        # Each member's stream: init from its seed (NumPy, see model.init), shuffling and
        # dropout from JAX keys split from the same seed.
        keys = jnp.stack([jax.random.split(jax.random.PRNGKey(m.training.seed), 2) for m in self.members])
        self._shuffle_keys, self._dropout_keys = keys[:, 0], keys[:, 1]
        self.state = self._init_state()
        self.diverged = np.zeros(self.size, bool)
        self.epochs_done = 0
        self._compiled: dict[tuple, Callable] = {}

    def _device_data(self):
        # The data set lives on the device as uint8, flattened: one transfer, ever.
        n = len(self.train_labels)
        self.images = jax.device_put(self.train_images.reshape(n, -1))
        self.labels = jax.device_put(self.train_labels.astype(np.int32))
        self.has_validation = self.val_labels is not None and len(self.val_labels) > 0

    def _init_state(self) -> State:
        input_dim = int(np.prod(self.train_images.shape[1:]))
        drawn = [model.init(m.model, m.training.seed, input_dim) for m in self.members]
        params = {k: jnp.asarray(np.stack([d[k] for d in drawn])) for k in drawn[0]}
        spec = self.spec

        def start(params, hyper):
            opt_state = optim.build(spec.optimizer, _optimizer_hyper(hyper)).init(params)
            return State(params, opt_state, jnp.int32(0), model.penalty(spec.model, params, hyper), jnp.bool_(True))

        # One small compiled program instead of dozens of eagerly dispatched ones.
        return jax.jit(jax.vmap(start))(params, self.hyper)

    @property
    def active(self) -> np.ndarray:
        return np.asarray(self.state.active)

    def freeze(self, members) -> None:
        """Stop training these members (early stopping, pruning); the others go on."""
        active = self.state.active.at[jnp.asarray(list(members), jnp.int32)].set(False)
        self.state = self.state._replace(active=active)

    # -------------------------------------------------------------- compiled programs

    def _program(self, name: str, *args):
        """The compiled program `name` for these argument shapes (compiled once, timed)."""
        key = (name,) + tuple(getattr(a, "shape", None) for a in jax.tree.leaves(args))
        if key not in self._compiled:
            start = time.perf_counter()
            self._compiled[key] = self._build(name).lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
        return self._compiled[key]

    def _build(self, name: str):
        m = self.size
        if name == "chunk":
            fn = over_members(make_chunk(self.spec, freeze=m > 1), m, (0, 0, 0, None, None, 0))
            # The state is donated: updated in place, no copy of the parameters per chunk.
            return jax.jit(fn, donate_argnums=(0,))
        if name == "evaluate":
            return jax.jit(over_members(make_evaluate(self.spec), m, (0, 0, None, None, None)))
        if name == "order":
            n, shuffle = len(self.train_labels), self.spec.training.shuffle
            b = self.spec.training.batch_size
            steps = -(-n // b)

            def order(key, epoch):
                perm = jax.random.permutation(jax.random.fold_in(key, epoch), n) if shuffle else jnp.arange(n)
                padded = jnp.full(steps * b, -1, jnp.int32).at[:n].set(perm.astype(jnp.int32))
                return padded.reshape(steps, b)

            return jax.jit(jax.vmap(order, in_axes=(0, None)))
        raise KeyError(name)

    def _chunk_args(self, batches):
        return (self.state, self.hyper, self._dropout_keys, self.images, self.labels, batches)

    # -------------------------------------------------------------- public API

    def steps_per_epoch(self) -> int:
        """Keras' count: the last, smaller batch is a step too."""
        return -(-len(self.train_labels) // self.spec.training.batch_size)

    def train_epoch(self, on_progress: Callable[[Progress], None] | None = None) -> EpochResult:
        """Train every active member for one epoch; then evaluate on the validation data."""
        epoch = self.epochs_done + 1
        total = self.steps_per_epoch()
        begin = time.perf_counter()
        args = (self._shuffle_keys, jnp.int32(epoch))
        order = self._program("order", *args)(*args)  # (members, steps, batch), -1 pads
        totals, done, start = None, 0, 0
        for size in plan_chunks(total, self.chunks_per_epoch):
            args = self._chunk_args(order[:, start:start + size])
            self.state, sums, rate = self._program("chunk", *args)(*args)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
            start += size
            if on_progress is not None:
                jax.block_until_ready(sums)  # report progress when it happened, not when queued
                on_progress(Progress(epoch, start, total))
        metrics = {"loss": np.asarray(totals.loss / totals.count),
                   "accuracy": np.asarray(totals.correct / totals.count)}
        seconds = time.perf_counter() - begin
        if self.has_validation:
            val = self.evaluate(self.val_images, self.val_labels)
            metrics["val_loss"], metrics["val_accuracy"] = val["loss"], val["accuracy"]
        metrics["learning_rate"] = np.asarray(rate)
        self.epochs_done = epoch
        self.diverged |= ~np.isfinite(metrics["loss"])
        return EpochResult(epoch, {k: v.tolist() for k, v in metrics.items()}, seconds, self.diverged.tolist())

    def evaluate(self, images, labels) -> dict[str, np.ndarray]:
        """Loss (penalty included, as Keras) and accuracy of every member on a data set."""
        n = len(labels)
        block = self.spec.training.eval_batch_size * self.eval_batches_per_call
        images = np.asarray(images).reshape(n, -1)
        labels = np.asarray(labels, np.int32)
        totals = None
        for start in range(0, n, block):
            x, y = images[start:start + block], labels[start:start + block]
            valid = np.arange(block) < len(y)
            pad = block - len(y)
            x = np.pad(x, ((0, pad), (0, 0))) if pad else x
            y = np.pad(y, (0, pad)) if pad else y
            args = (self.state.params, self.hyper, x, y, valid)
            sums = self._program("evaluate", *args)(*args)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        # Keras' evaluate reports the penalty once on top of the mean data loss.
        loss = np.asarray(totals.loss / totals.count) + np.asarray(self.state.penalty)
        return {"loss": loss, "accuracy": np.asarray(totals.correct / totals.count)}

    def member_params(self, i: int) -> dict[str, np.ndarray]:
        return {k: np.asarray(v[i]) for k, v in self.state.params.items()}

    def compile_all(self) -> None:
        """Compile every program an epoch needs now, so epoch times measure training only."""
        steps, b = self.steps_per_epoch(), self.spec.training.batch_size
        args = (self._shuffle_keys, jnp.int32(1))
        self._program("order", *args)
        for size in set(plan_chunks(steps, self.chunks_per_epoch)):
            self._program("chunk", *self._chunk_args(jnp.zeros((self.size, size, b), jnp.int32)))
        if self.has_validation:
            block = self.spec.training.eval_batch_size * self.eval_batches_per_call
            self._program("evaluate", self.state.params, self.hyper, np.zeros((block, self.images.shape[1]), np.uint8),
                          np.zeros(block, np.int32), np.zeros(block, bool))


def evaluate(spec: RunSpec, params, images, labels) -> dict[str, float]:
    """Loss (penalty included) and accuracy of one set of parameters on a data set."""
    population = Population([spec], np.zeros((1, *np.shape(images)[1:]), np.uint8), np.zeros(1, np.int32))
    params = {k: jnp.asarray(v)[None] for k, v in params.items()}
    hyper = {k: v[0] for k, v in population.hyper.items()}
    penalty = model.penalty(spec.model, {k: v[0] for k, v in params.items()}, hyper)
    population.state = population.state._replace(params=params, penalty=penalty[None])
    result = population.evaluate(images, labels)
    return {"loss": float(result["loss"][0]), "accuracy": float(result["accuracy"][0])}
