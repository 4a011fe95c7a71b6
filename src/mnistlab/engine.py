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

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mnistlab import model, optim
from mnistlab import spec as spec_lib
from mnistlab.spec import RunSpec


def enable_compile_cache() -> None:
    """Keep XLA's compiled programs between processes (JAX's persistent cache), in
    `$MNISTLAB_CACHE/xla` or the user cache; `import mnistlab` calls it.

    The second run of a configuration then skips compilation (measured: 1.7 s -> 0.4 s
    for the keras-mlp preset on 2 CPU cores). MNISTLAB_COMPILE_CACHE=0 turns it off, and a
    cache folder the user gave JAX is kept.
    """
    if os.environ.get("MNISTLAB_COMPILE_CACHE", "1") == "0" or jax.config.jax_compilation_cache_dir:
        return
    import pooch

    root = os.environ.get("MNISTLAB_CACHE") or pooch.os_cache("mnistlab")
    jax.config.update("jax_compilation_cache_dir", os.path.join(root, "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def use_cpu_cores(limit: int = 8) -> None:
    """One JAX CPU device per core this process may run on (at most `limit`); `import
    mnistlab` calls it, before JAX starts.

    XLA runs one program's small operations on about one core at a time; programs on
    separate devices run side by side. So a population's members are split across the
    devices, and a convolutional network's batch (`splits_batch`). Measured on 2 cores,
    epochs of 2 devices against 1: 4 `seed` members 2.98 / 3.51 s, 8 `fast` members 2.0 /
    2.5 s, 2 `cnn` members 5.4 / 6.8 s, one `cnn` member (its batch split) 11.5 / 14.1 ms
    a step; a single dense network is unchanged (it stays on one device). Left alone where
    the user chose (XLA_FLAGS' --xla_force_host_platform_device_count, JAX_NUM_CPU_DEVICES)
    or JAX has already started. At most `limit`: each device holds its own copy of the data.
    """
    chosen = "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    if chosen or jax.config.jax_num_cpu_devices != -1:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS: no affinity
    try:
        jax.config.update("jax_num_cpu_devices", max(1, min(limit, cores)))
    except RuntimeError:  # JAX already started in this process: its devices stay
        pass


def activations_per_weight(spec: RunSpec, input_shape: tuple[int, ...] = (28, 28)) -> float:
    """Activation values a training step writes (every layer's output for the batch) per
    trained weight: what splitting a batch across devices saves against what it costs
    (the gradient of every weight summed across the devices each step)."""
    shapes = spec_lib.output_shapes(spec.model.layers, model.as_shape(input_shape))
    activations = spec.training.batch_size * sum(int(np.prod(shape)) for shape in shapes[1:])
    weights = sum(int(np.prod(shape)) for name, shape in model.parameter_shapes(spec.model, input_shape).items()
                  if not model.is_statistic(name))
    return activations / max(weights, 1)


# Measured on 2 CPU cores, one member's step with its batch split across 2 devices against
# one device: `cnn` (76 activations a weight) 0.81x the time, at batch 128 (151) 0.80x,
# `cnn-best` (65) 0.94x; `speedrun` (4.5) 1.05x; `fast` and `seed` (below 0.2) 2.2-2.6x.
SPLIT_BATCH_FROM = 10.0
# Halves of 32 and 64 images were measured; smaller shares (a batch of 64 on 4 or more
# cores) are not, and stay whole.
SPLIT_SHARE_FROM = 32


def splits_batch(spec: RunSpec, devices: int, input_shape: tuple[int, ...] = (28, 28)) -> bool:
    """Whether a member of `spec` trains with each batch split across `devices` (data
    parallelism: the same numbers, summed in another order), when its population's members
    are not split across them."""
    batch = spec.training.batch_size
    return (devices > 1 and batch % devices == 0 and batch // devices >= SPLIT_SHARE_FROM
            and activations_per_weight(spec, input_shape) >= SPLIT_BATCH_FROM)


class State(NamedTuple):
    """Everything that changes during training, with a leading member axis."""

    params: model.Params  # trainable weights and batch normalization's moving statistics
    opt_state: optax.OptState
    step: jax.Array  # optimizer steps taken (int32), also the dropout stream position
    penalty: jax.Array  # the regularization loss of `params`, kept current by each step


class Sums(NamedTuple):
    """Running sums over an epoch's batches (Keras reports their sample-weighted means)."""

    loss: jax.Array  # sum over batches of batch_size * batch loss (penalty included)
    correct: jax.Array  # number of correct predictions
    count: jax.Array  # samples seen


def numbers(spec: RunSpec) -> dict[str, float]:
    """A member's inputs to the compiled program: the model's and optimizer's per-member numbers."""
    return {**model.hyperparameters(spec.model),
            **{f"optimizer.{k}": v for k, v in optim.hyperparameters(spec.optimizer).items()}}


def structure(spec: RunSpec) -> tuple:
    """Members whose structures are equal share one compiled program."""
    t = spec.training
    return (model.structure(spec.model), optim.structure(spec.optimizer),
            spec.model.input_rescale, spec.model.dtype_policy, t.batch_size, t.eval_batch_size, t.shuffle)


def _optimizer_hyper(hyper):
    return {k.removeprefix("optimizer."): v for k, v in hyper.items() if k.startswith("optimizer.")}


# ------------------------------------------------------------------ one member, one step


def loss_terms(spec: RunSpec, params, hyper, images, labels, valid, dropout_key=None, count=None):
    """(mean data loss over the valid samples, (logits, moved statistics)) for one batch.

    `labels` are class indices (B,), or a multi-hot label set per image (B, C) for images
    holding several things at once. Softmax outputs take categorical cross-entropy
    (against the normalised label set when there are several), sigmoid outputs binary
    cross-entropy averaged over the classes, as Keras' `binary_crossentropy`.
    `valid` masks the padding of the epoch's last batch: Keras trains on a last, smaller
    batch, and a mask gives its exact mean without a second compiled program of that shape.
    `count`, the number of valid samples, where the caller has it already (`make_chunk`).
    """
    z, moved = model.forward(spec.model, params, hyper, images, dropout_key, valid)
    targets = labels.astype(jnp.float32) if labels.ndim == 2 else jax.nn.one_hot(labels, z.shape[-1])
    if spec.model.output_activation == "softmax":
        if labels.ndim == 1:
            per_sample = optax.softmax_cross_entropy_with_integer_labels(z, labels)
        else:
            per_sample = optax.softmax_cross_entropy(z, targets / jnp.maximum(targets.sum(-1, keepdims=True), 1))
    else:
        per_sample = optax.sigmoid_binary_cross_entropy(z, targets).mean(-1)
    count = jnp.sum(valid) if count is None else count
    data_loss = jnp.sum(jnp.where(valid, per_sample, 0.0)) / jnp.maximum(count, 1)
    return data_loss, (z, moved)


def predicted_sets(z: jax.Array, activation: str) -> jax.Array:
    """Multi-hot predictions: sigmoid p >= 0.5; softmax p >= 0.25 (a digit sharing an
    image with another has ideal probability 0.5, an absent one 0)."""
    if activation == "sigmoid":
        return z >= 0.0  # sigmoid(z) >= 0.5
    return jax.nn.softmax(z) >= 0.25


def _hits(z, labels, valid, activation="softmax"):
    """Which valid samples are predicted correctly: the arg-max class, or for label sets
    the exact set."""
    if labels.ndim == 1:
        hit = jnp.argmax(z, -1) == labels
    else:
        hit = jnp.all(predicted_sets(z, activation) == (labels > 0), axis=-1)
    return valid & hit


def make_step(spec: RunSpec) -> Callable:
    """step(state, hyper, images, labels, valid, dropout_key[, count]) -> (state, (loss, hits)),
    hits: which samples of the batch were predicted correctly."""

    def step(state: State, hyper, images, labels, valid, dropout_key, count=None):
        # Batch normalization's moving statistics are weights but not trained: the
        # optimizer sees the rest, and the statistics come back moved by the batch.
        params, statistics = model.split_statistics(state.params)
        (data_loss, (z, moved)), grads = jax.value_and_grad(
            lambda p: loss_terms(spec, {**p, **statistics}, hyper, images, labels, valid, dropout_key, count),
            has_aux=True)(params)
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
        hits = _hits(z, labels, valid, spec.model.output_activation)
        return State({**params, **moved}, opt_state, state.step + 1, penalty), (loss, hits)

    return step


def make_chunk(spec: RunSpec) -> Callable:
    """chunk(state, hyper, key, images, labels, batches[n, b]) -> (state, Sums, learning rate).

    `batches` holds the sample indices of n consecutive steps, -1 for padding. The step's
    dropout key is the run's key folded with the global step number, so how an epoch is
    cut into chunks changes nothing.
    """
    step = make_step(spec)

    def chunk(state: State, hyper, key, images, labels, batches):
        # With a batch split across devices, whatever a step sums over the batch is summed
        # across the devices too, and each such sum makes them wait for each other. So each
        # step's number of real samples (the loss's mean needs it before the backward pass)
        # is counted for the whole chunk before it, and the correct predictions are counted
        # per position in the batch and summed after it: one sum across the devices a step,
        # the gradient's (measured in one process, 8 rounds alternating: the `cnn` preset's
        # step on 2 devices 0.97x as long as with two sums a step; the same numbers to the bit).
        counts = jnp.sum(batches >= 0, axis=-1, dtype=jnp.int32)

        def body(carry, batch):
            (state, sums), (idx, n) = carry, batch
            valid = idx >= 0
            idx = jnp.maximum(idx, 0)
            dropout_key = jax.random.fold_in(key, state.step)
            state, (loss, hits) = step(state, hyper, images[idx], labels[idx], valid, dropout_key, n)
            return (state, Sums(sums.loss + n * loss, sums.correct + hits, sums.count + n)), None

        zero = Sums(jnp.float32(0), jnp.zeros(batches.shape[-1], jnp.int32), jnp.int32(0))
        (state, sums), _ = jax.lax.scan(body, (state, zero), (batches, counts))
        sums = sums._replace(correct=jnp.sum(sums.correct))
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
            loss, (z, _) = loss_terms(spec, params, hyper, x, y, v)
            return loss * jnp.sum(v), jnp.sum(_hits(z, y, v, spec.model.output_activation))

        blocks = (images.reshape(-1, size, *images.shape[1:]), labels.reshape(-1, size, *labels.shape[1:]),
                  valid.reshape(-1, size))
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


# Compiled programs depend only on a structure, a member width and argument shapes, never
# on the numbers (those are inputs), so they are shared by every population alike.
_PROGRAMS: dict[tuple, Callable] = {}
COMPILATIONS: dict[str, int] = {}  # program name -> times compiled in this process
_COMPILING = threading.Lock()


def _placement(value) -> tuple | None:
    """Where an argument lives, as a compiled program depends on it: on how many devices,
    in pieces of which shape (None for host values, which go where the program runs)."""
    sharding = getattr(value, "sharding", None)
    return None if sharding is None else (len(sharding.device_set), sharding.shard_shape(value.shape))


class Slice(NamedTuple):
    """One slice of a population: `width` members trained side by side by one program."""

    members: np.ndarray  # population indices; a short last slice repeats its last member
    real: np.ndarray  # False for those padding repeats (kept frozen, results ignored)
    hyper: dict[str, jax.Array]
    shuffle_keys: jax.Array
    dropout_keys: jax.Array


@dataclass
class Population:
    """Members that share one structure, trained together with one compilation.

    `lanes` members run side by side in one vmapped program; a population larger than
    that is trained slice after slice by the same compiled program with other numbers.
    On a CPU a narrow program often wins (16 copies of the weights and Adam moments no
    longer fit in cache); on an accelerator the widest does. `choose_lanes` measures.
    """

    members: list[RunSpec]
    train_images: np.ndarray  # (N, ...) uint8
    train_labels: np.ndarray  # (N,) integer
    val_images: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    lanes: int | None = None  # None: every member side by side
    chunks_per_epoch: int = 10
    eval_batches_per_call: int = 16
    compile_seconds: float = 0.0
    # Train only the first `max_steps` batches of each epoch's order: `choose_lanes` times
    # the real step on the whole data set (gathers from all of it miss the cache as
    # training does) without paying for whole epochs.
    max_steps: int | None = None
    concurrency: int = 1  # slices trained at the same time (`choose_concurrency`); never changes a number

    def __post_init__(self):
        first = self.members[0]
        if any(structure(m) != structure(first) for m in self.members):
            raise ValueError("a population's members must share one structure; group them first")
        self.spec = first
        self.size = len(self.members)
        self.width = max(1, min(self.lanes or self.size, self.size))
        # Frozen members (diverged, stopped early, pruned): host-side flags, and for a
        # slice still training others, a snapshot to put their state back from.
        self._active = np.ones(self.size, bool)
        self._snapshots: dict[int, tuple[np.ndarray, State]] = {}
        self._device_data()
        hypers = [numbers(m) for m in self.members]
        names = list(hypers[0])
        values = np.asarray([[h[k] for k in names] for h in hypers], np.float32).reshape(self.size, len(names))
        seeds = [m.training.seed for m in self.members]
        self.slices: list[Slice] = []
        self.states: list[State] = []
        for start in range(0, self.size, self.width):
            idx = np.arange(start, start + self.width)
            real = idx < self.size
            idx = np.minimum(idx, self.size - 1)
            keys = self._shard(jnp.stack([jax.random.split(jax.random.PRNGKey(seeds[i]), 2) for i in idx]))
            hyper = self._shard({k: jnp.asarray(values[idx, j]) for j, k in enumerate(names)})
            self.slices.append(Slice(idx, real, hyper, keys[:, 0], keys[:, 1]))
            self.states.append(self._shard(self._init_state(idx, hyper)))
        self.diverged = np.zeros(self.size, bool)
        self.epochs_done = 0

    def _device_data(self):
        # With several devices the member axis is split across them (each device trains
        # its share of the members), or else, where it pays (`splits_batch`), each batch
        # is: every device holds all of the state and computes its share of the batch's
        # gradient, which XLA sums across them. The data set is copied to each device.
        devices = jax.devices()
        self.sharding = self.batch_sharding = None
        mesh = jax.sharding.Mesh(np.array(devices), ("devices",))
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        if len(devices) > 1 and self.width % len(devices) == 0:
            self.sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("devices"))
        elif splits_batch(self.spec, len(devices), self.train_images.shape[1:]):
            self.sharding = replicated
            # the sample indices of (members, steps, batch): split along the batch
            self.batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, None, "devices"))
        # The data set lives on the device as uint8: one transfer, ever.
        put = (lambda x: jax.device_put(x, replicated)) if self.sharding else jax.device_put
        self.images = put(self.train_images)
        self.labels = put(self.train_labels.astype(np.int32))
        self.has_validation = self.val_labels is not None and len(self.val_labels) > 0

    def _shard(self, tree):
        """Place a state-like tree: its member axis split across the devices, or the
        whole of it on each when batches are split; as it is on one device."""
        return tree if self.sharding is None else jax.device_put(tree, self.sharding)

    def _place_order(self, order):
        """An epoch's sample indices (members, steps, batch; -1 pads) placed as the epoch's
        program takes them: split across the devices along the members or the batch."""
        placement = self.batch_sharding or self.sharding
        return order if placement is None else jax.device_put(order, placement)

    def _on_one_device(self, tree):
        """A replicated tree's first copy: evaluation runs on one device, as on one."""
        if self.batch_sharding is None:
            return tree
        return jax.tree.map(lambda leaf: leaf.addressable_shards[0].data, tree)

    def _init_state(self, idx, hyper) -> State:
        shape = self.train_images.shape[1:]
        drawn = {i: model.init(self.members[i].model, self.members[i].training.seed, shape) for i in set(idx)}
        params = {k: jnp.asarray(np.stack([drawn[i][k] for i in idx])) for k in drawn[idx[0]]}
        args = (params, hyper)
        return self._run("init", *args)

    # -------------------------------------------------------------- compiled programs

    def _program(self, name: str, *args):
        """The compiled program `name` for these argument shapes (compiled once per process)."""
        # "order" closes over the training set's size; every other program takes its sizes
        # from its arguments' shapes.
        size = len(self.train_labels) if name == "order" else None
        key = (name, structure(self.spec), self.width, size) + tuple(
            (getattr(a, "shape", None), str(getattr(a, "dtype", "")), _placement(a)) for a in jax.tree.leaves(args))
        if key not in _PROGRAMS:
            start = time.perf_counter()
            compiled = self._build(name).lower(*args).compile()
            with _COMPILING:  # `compile_all` compiles side by side
                _PROGRAMS[key] = compiled
                self.compile_seconds += time.perf_counter() - start
                COMPILATIONS[name] = COMPILATIONS.get(name, 0) + 1
        return _PROGRAMS[key]

    def _run(self, name: str, *args):
        return self._program(name, *args)(*args)

    def _build(self, name: str):
        spec, width = self.spec, self.width
        if name == "init":
            def start(params, hyper):
                trainable, _ = model.split_statistics(params)
                opt_state = optim.build(spec.optimizer, _optimizer_hyper(hyper)).init(trainable)
                penalty = model.penalty(spec.model, params, hyper)
                return State(params, opt_state, jnp.int32(0), penalty)

            # One small compiled program instead of dozens of eagerly dispatched ones.
            return jax.jit(jax.vmap(start))
        if name == "chunk":
            fn = over_members(make_chunk(spec), width, (0, 0, 0, None, None, 0))
            # The state is donated: updated in place, no copy of the parameters per chunk.
            # With split batches, everything it returns is whole on each device.
            out = None if self.batch_sharding is None else self.sharding
            return jax.jit(fn, donate_argnums=(0,), out_shardings=out)
        if name == "evaluate":
            return jax.jit(over_members(make_evaluate(spec), width, (0, 0, None, None, None)))
        if name == "restore":
            def restore(mask, snapshot, state):
                pick = lambda a, b: jnp.where(mask.reshape(-1, *([1] * (a.ndim - 1))), a, b)
                return jax.tree.map(pick, snapshot, state)

            return jax.jit(restore)
        if name == "order":
            n, shuffle = len(self.train_labels), spec.training.shuffle
            b = spec.training.batch_size
            steps = -(-n // b)

            def order(key, epoch):
                perm = jax.random.permutation(jax.random.fold_in(key, epoch), n) if shuffle else jnp.arange(n)
                padded = jnp.full(steps * b, -1, jnp.int32).at[:n].set(perm.astype(jnp.int32))
                return padded.reshape(steps, b)

            return jax.jit(jax.vmap(order, in_axes=(0, None)))
        raise KeyError(name)

    def _chunk_args(self, k: int, batches):
        lane = self.slices[k]
        return (self.states[k], lane.hyper, lane.dropout_keys, self.images, self.labels, batches)

    def _gather(self, per_slice: list[np.ndarray]) -> np.ndarray:
        """Per-slice results (width each) -> one value per member, padding dropped."""
        out = np.zeros(self.size, np.asarray(per_slice[0]).dtype)
        for lane, values in zip(self.slices, per_slice):
            out[lane.members[lane.real]] = np.asarray(values)[lane.real]
        return out

    # -------------------------------------------------------------- public API

    def steps_per_epoch(self) -> int:
        """Keras' count: the last, smaller batch is a step too."""
        steps = -(-len(self.train_labels) // self.spec.training.batch_size)
        return steps if self.max_steps is None else min(steps, self.max_steps)

    @property
    def active(self) -> np.ndarray:
        return self._active.copy()

    def freeze(self, members) -> None:
        """Stop training these members (early stopping, pruning); the others go on.

        A frozen member's slice is skipped once all of its members are frozen. Until then
        the vmapped program still computes it (members side by side cannot be left out),
        so its state is snapshotted now and put back after each epoch. Freezing per step
        inside the program instead (a select over every weight, every step) measured 2x
        slower.
        """
        newly = [int(i) for i in members if self._active[int(i)]]
        if not newly:
            return
        self._active[newly] = False
        for k, lane in enumerate(self.slices):
            frozen = ~self._active[lane.members] | ~lane.real
            if self.width > 1 and frozen.any() and not frozen.all():
                old = self._snapshots.get(k)
                keep = jnp.asarray(frozen if old is None else frozen & ~old[0])
                snapshot = self.states[k] if old is None else self._run("restore", keep, self.states[k], old[1])
                self._snapshots[k] = (frozen, jax.tree.map(jnp.copy, snapshot))

    def train_epoch(self, on_progress: Callable[[Progress], None] | None = None,
                    on_slice: Callable[[int], None] | None = None) -> EpochResult:
        """Train every active member for one epoch; then evaluate on the validation data.

        Slice after slice (`concurrency` of them at once, each from its own thread): a
        slice's weights stay in cache for its whole epoch. A slice whose members are all
        frozen is skipped. `on_progress` hears of every chunk done; `on_slice(k)` of every
        slice done (the one wait a slice needs, for timing it).
        """
        epoch = self.epochs_done + 1
        steps = self.steps_per_epoch()
        plan = plan_chunks(steps, self.chunks_per_epoch)
        running = [k for k, lane in enumerate(self.slices) if self._active[lane.members[lane.real]].any()]
        total = steps * len(running)
        begin = time.perf_counter()
        sums_by_slice, rates, done = {}, {}, [0]
        lock, stop = threading.Lock(), threading.Event()

        def train_slice(k: int) -> None:
            order = self._place_order(self._run("order", self.slices[k].shuffle_keys, jnp.int32(epoch)))
            start, totals = 0, None
            for size in plan:
                if stop.is_set():  # the epoch was given up (Ctrl-C): leave after this chunk
                    return
                args = self._chunk_args(k, order[:, start:start + size])
                self.states[k], sums, rates[k] = self._run("chunk", *args)
                totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
                start += size
                if on_progress is not None:
                    jax.block_until_ready(sums)  # report progress when it happened, not when queued
                    with lock:
                        done[0] += size
                        on_progress(Progress(epoch, done[0], total))
            sums_by_slice[k] = totals
            if on_slice is not None:
                jax.block_until_ready(totals)
                on_slice(k)

        self._each_slice(train_slice, running, stop)
        jax.block_until_ready(sums_by_slice)  # the epoch's time is its compute, not its dispatch
        seconds = time.perf_counter() - begin
        for k, (mask, snapshot) in self._snapshots.items():
            if k in sums_by_slice:  # frozen members computed along: put their state back
                self.states[k] = self._run("restore", jnp.asarray(mask), snapshot, self.states[k])
        trained = self._active.copy()
        metrics = self._epoch_metrics(sums_by_slice, rates)
        for values in metrics.values():
            values[~trained] = np.nan  # frozen members did not train this epoch
        self.epochs_done = epoch
        diverged = trained & ~np.isfinite(metrics["loss"])
        self.diverged |= diverged
        self.freeze(np.flatnonzero(diverged))
        return EpochResult(epoch, {k: v.tolist() for k, v in metrics.items()}, seconds, self.diverged.tolist())

    def _each_slice(self, train_slice: Callable[[int], None], running: list[int], stop: threading.Event) -> None:
        """`train_slice(k)` for every running slice, `concurrency` of them at a time."""
        if self.concurrency > 1 and len(running) > 1:
            # XLA runs a small network's step on about one core; independent slices side by
            # side use the others (measured: 16 members of 784-100-10, 4 slices of 4 on 2
            # cores, 4.30 s an epoch one slice at a time, 3.39 s two at a time).
            pool = ThreadPoolExecutor(self.concurrency)
            try:
                list(pool.map(train_slice, running))  # list(): an exception in a thread is raised here
            except BaseException:
                stop.set()
                raise
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
        else:
            for k in running:
                train_slice(k)

    def _epoch_metrics(self, sums_by_slice: dict[int, Sums], rates: dict[int, jax.Array]) -> dict[str, np.ndarray]:
        """Per member: the epoch's mean loss and accuracy, the validation figures and the
        last step's learning rate; NaN for a slice that did not run."""
        nan = np.full(self.width, np.nan, np.float32)
        pick = lambda f: [np.asarray(f(sums_by_slice[k])) if k in sums_by_slice else nan  # noqa: E731
                          for k in range(len(self.slices))]
        metrics = {"loss": self._gather(pick(lambda t: t.loss / t.count)),
                   "accuracy": self._gather(pick(lambda t: t.correct / t.count))}
        if self.has_validation:
            val = self.evaluate(self.val_images, self.val_labels)
            metrics["val_loss"], metrics["val_accuracy"] = val["loss"], val["accuracy"]
        metrics["learning_rate"] = self._gather([np.asarray(rates[k]) if k in rates else nan
                                                 for k in range(len(self.slices))])
        return metrics

    def evaluate(self, images, labels) -> dict[str, np.ndarray]:
        """Loss (penalty included, as Keras) and accuracy of every member on a data set."""
        n = len(labels)
        block = self.spec.training.eval_batch_size * self.eval_batches_per_call
        images = np.asarray(images)
        labels = np.asarray(labels, np.int32)
        losses, accuracies = [], []
        for k, lane in enumerate(self.slices):
            totals, weights = None, self._on_one_device((self.states[k].params, lane.hyper))
            for start in range(0, n, block):
                x, y = images[start:start + block], labels[start:start + block]
                pad = block - len(y)
                valid = np.arange(block) < len(y)
                x = np.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) if pad else x
                y = np.pad(y, [(0, pad)] + [(0, 0)] * (y.ndim - 1)) if pad else y
                sums = self._run("evaluate", *weights, x, y, valid)
                totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
            # Keras' evaluate reports the penalty once on top of the mean data loss.
            losses.append(np.asarray(totals.loss / totals.count) + np.asarray(self.states[k].penalty))
            accuracies.append(np.asarray(totals.correct / totals.count))
        return {"loss": self._gather(losses), "accuracy": self._gather(accuracies)}

    def member_params(self, i: int) -> dict[str, np.ndarray]:
        k, lane = i // self.width, i % self.width
        return {name: np.asarray(v[lane]) for name, v in self.states[k].params.items()}

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Every member's state as flat named arrays, `<member><path>` (for checkpoints).

        Per member, not per slice: a resumed population may run at another width.
        """
        out = {}
        for lane, state in zip(self.slices, self.states):
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
                values = np.asarray(leaf)
                for j in np.flatnonzero(lane.real):
                    out[f"{lane.members[j]}{jax.tree_util.keystr(path)}"] = np.ascontiguousarray(values[j])
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray], epochs_done: int, diverged) -> None:
        """Put back what `state_arrays` gave, into a population built from the same members."""
        for k, (lane, state) in enumerate(zip(self.slices, self.states)):
            leaves, tree = jax.tree_util.tree_flatten_with_path(state)
            # reshape: a file format may hold a scalar as shape (1,)
            restored = [jnp.asarray(np.stack([np.reshape(arrays[f"{i}{jax.tree_util.keystr(path)}"], leaf.shape[1:])
                                              for i in lane.members]), leaf.dtype) for path, leaf in leaves]
            self.states[k] = self._shard(jax.tree_util.tree_unflatten(tree, restored))
        self.epochs_done = epochs_done
        self.diverged = np.asarray(diverged, bool)
        self.freeze(np.flatnonzero(self.diverged))

    def compile_all(self) -> None:
        """Compile every program an epoch needs now, so epoch times measure training only,
        and the evaluation's (a validation set's, or a test set's at the end: `evaluate`
        finds it compiled for one member's weights).

        They compile side by side, one thread each: XLA compiles with the GIL released, so
        the evaluation's compilation overlaps the epoch's (measured for `speedrun`: 0.4-0.8 s
        less wall in three alternating runs).
        """
        steps, b = self.steps_per_epoch(), self.spec.training.batch_size
        block = self.spec.training.eval_batch_size * self.eval_batches_per_call
        programs = [("order", self.slices[0].shuffle_keys, jnp.int32(1)),
                    *(("chunk", *self._chunk_args(0, self._place_order(jnp.zeros((self.width, size, b), jnp.int32))))
                      for size in set(plan_chunks(steps, self.chunks_per_epoch))),
                    ("evaluate", *self._on_one_device((self.states[0].params, self.slices[0].hyper)),
                     np.zeros((block, *self.images.shape[1:]), np.uint8),
                     np.zeros((block, *self.labels.shape[1:]), np.int32), np.zeros(block, bool))]
        with ThreadPoolExecutor(len(programs)) as threads:
            list(threads.map(lambda program: self._program(*program), programs))


def evaluate(spec: RunSpec, params, images, labels) -> dict[str, float]:
    """Loss (penalty included) and accuracy of one set of parameters on a data set."""
    population = Population([spec], np.zeros((1, *np.shape(images)[1:]), np.uint8),
                            np.zeros((1, *np.shape(labels)[1:]), np.int32))
    params = {k: jnp.asarray(v)[None] for k, v in params.items()}
    hyper = {k: v[0] for k, v in population.slices[0].hyper.items()}
    penalty = model.penalty(spec.model, {k: v[0] for k, v in params.items()}, hyper)
    population.states[0] = population.states[0]._replace(params=params, penalty=penalty[None])
    result = population.evaluate(images, labels)
    return {"loss": float(result["loss"][0]), "accuracy": float(result["accuracy"][0])}


# ------------------------------------------------------------------ sizing a population


def member_bytes(spec: RunSpec, input_shape: int | tuple[int, ...]) -> int:
    """About how much device memory one member needs: weights, optimizer state, activations."""
    shapes = spec_lib.output_shapes(spec.model.layers, model.as_shape(input_shape))
    widths = [int(np.prod(shape)) for shape in shapes]
    # What layers keep for backward besides their outputs (a convolution's patch matrix).
    widths += [layer.kept_for_backward(before, after)
               for layer, before, after in zip(spec.model.layers, shapes, shapes[1:])]
    weights = sum(int(np.prod(shape)) for shape in model.parameter_shapes(spec.model, input_shape).values())
    shapes = jax.eval_shape(lambda p: optim.build(spec.optimizer, optim.hyperparameters(spec.optimizer)).init(p),
                            {"w": jax.ShapeDtypeStruct((weights,), jnp.float32)})
    slots = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes)) // max(weights, 1)
    # weights + gradient + optimizer slots, and the batch's activations kept for backward
    activations = max(spec.training.batch_size, spec.training.eval_batch_size) * sum(widths) * 3
    return 4 * (weights * (2 + slots) + activations)


def device_memory() -> int:
    """Free memory of the first device in bytes (host memory for a CPU)."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


_LANES: dict[tuple, int] = {}


def choose_lanes(spec: RunSpec, images: np.ndarray, labels: np.ndarray, members: int, steps: int = 48) -> int:
    """How many members to train side by side on this device, decided by measurement.

    Times a short run of the real step, gathering from the whole data set, at widths 1, 2,
    4, ... (up to the population, at most 64) and keeps the width with the most member-steps
    per second; a width is timed three times and its fastest run counts (`_probe_seconds`),
    and the search stops early only once a width is far (40%) slower than the best, since a
    wider program can win after a slower one. On a CPU
    a narrow program often wins (the weights and optimizer moments of many members no
    longer fit in cache: measured, 16 side by side were 1.9x slower per member for the
    seed network); small networks and accelerators gain from width. The answer is
    remembered per structure and device for the rest of the process.
    """
    if members <= 1:
        return 1
    key = (structure(spec), jax.devices()[0].device_kind, members)
    if key in _LANES:
        return _LANES[key]
    best, best_rate, width = 1, 0.0, 1
    while width <= min(members, 64):
        count = max(2, width)  # at least two members, so the probe runs the population program
        rate = count / _probe_seconds(spec, images, labels, count, width, 1, steps)
        if rate > best_rate:
            best, best_rate = width, rate
        elif rate < 0.6 * best_rate:
            break
        if width == members:
            break
        width = min(width * 2, members)
    _LANES[key] = best
    return best


_CONCURRENCY: dict[tuple, int] = {}


def choose_concurrency(spec: RunSpec, images: np.ndarray, labels: np.ndarray, width: int, members: int,
                       steps: int = 48) -> int:
    """How many slices of `width` members to train at the same time, decided by measurement.

    On a CPU with several cores, two slices side by side can beat one after another (a small
    network's step does not fill the cores) or lose (a large one's does, and the two then
    share the caches). Times a short run of two slices both ways, fastest of three each; an
    accelerator runs one at a time. Remembered per structure, width and device.
    """
    slices = -(-members // width)
    if slices < 2 or jax.default_backend() != "cpu" or (os.cpu_count() or 1) < 2:
        return 1
    key = (structure(spec), width, jax.devices()[0].device_kind)
    if key not in _CONCURRENCY:
        one, two = (_probe_seconds(spec, images, labels, 2 * width, width, c, steps) for c in (1, 2))
        _CONCURRENCY[key] = 2 if two < 0.95 * one else 1
    return _CONCURRENCY[key]


def _probe_seconds(spec: RunSpec, images: np.ndarray, labels: np.ndarray, members: int, width: int,
                   concurrency: int, steps: int) -> float:
    """The fastest of three short epochs (`steps` batches from the whole data set) of `members`
    seeds of `spec`, `width` side by side, `concurrency` slices at once; compiled and warmed first."""
    probe = [spec.model_copy(update={"training": spec.training.model_copy(update={"seed": s})})
             for s in range(members)]
    population = Population(probe, images, labels, lanes=width, chunks_per_epoch=1, max_steps=steps,
                            concurrency=concurrency)
    population.compile_all()  # here, not in two threads at once
    population.train_epoch()  # warms the caches
    return min(population.train_epoch().seconds for _ in range(3))
