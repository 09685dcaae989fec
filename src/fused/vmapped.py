"""The compiled epoch of a fused group (JAX backend): `lax.scan` over batches of `jax.vmap` over members.

A group's members share one Keras model's structure (the template: same layers, shapes, optimizer kind) and
differ in what Keras keeps in variables: weights (each member built under its own seed), the learning rate (an
optimizer variable), Dropout's seed-generator state (a non-trainable variable). Their states are stacked along a
leading member axis; the data are on the device once for the whole group.

One call trains every member one epoch and validates it (src/training/compiled.py's semantics per member):
- member i's order is `jax.random.permutation(fold_in(key(seed_i), epoch_i), n)`, as its lone compiled run
  draws it, so it sees the same batches in the same order; the last `n % batch_size` samples are one smaller
  step;
- each step is the template's own Keras `train_step` under `jax.vmap` over (member state, member batch), so a
  member's loss and gradients are its own, never averaged with the others';
- `at_once` members are vmapped at once (`jax.lax.map(..., batch_size=at_once)` over members of the epoch's
  scan): all of them on a GPU, where one member leaves the card idle; a few on a CPU, whose cores one member
  already keeps busy, so that the members' weights, gradients and optimizer state stay in the cache (16 members of
  mnist_dense at once: 0.78 s per member-epoch; 4 at a time: 0.68 s, as alone; docs/fused.md);
- validation runs `test_step` under `jax.vmap` over the states with the batches shared (in_axes=None);
- the epoch logs are each member's Keras metric results (means over samples).
What can differ from a lone run is the floating-point reduction order of the batched matrix products, so
results agree to ~1e-6 relative, not bit for bit (tests/test_fused.py).

`active` freezes members: a member whose run has stopped (early stopping, NaN, its last epoch, its pruner) keeps its
state (`jnp.where`) while the others go on, so its results are those of its last trained epoch. `live_epoch`
leaves frozen members out of the computation once the live ones fit in fewer vmapped chunks (a pruned study's
group shrinks epoch by epoch).

`put` refills a slot: a new member's state replaces a stopped one's, and trains from its own epoch 0 (its epoch
numbers are its own) beside members further on, in the same compiled program.

`compile_ahead` compiles a program on a background thread from the template's shapes (XLA compiles without the
GIL), so that the compilation overlaps what the host does meanwhile: setting up the members' runs.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading

import jax
import jax.numpy as jnp
import keras
import numpy as np

from ..training.compiled import Rows, _model_inputs, rows

log = logging.getLogger(__name__)


def _select(mask, new, old):
    """Per member (leading axis), `new` where mask else `old`, over a pytree."""

    def pick(a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree_util.tree_map(pick, new, old)


class Program:
    """The vmapped, compiled epochs of one group. `model`: a compiled Keras model of the group's structure (its
    variables' values are not used: every value comes from the members' stacked states)."""

    def __init__(self, model: keras.Model, ds, batch_size: int, device=None):
        if keras.backend.backend() != "jax":
            raise RuntimeError("fused epochs need the JAX backend")  # the launcher refuses it earlier, with the fix
        self.model, self.batch_size = model, batch_size
        self.device = device or jax.devices()[0]
        self._data = ds
        self._rows: dict[str, Rows] = {}
        self._resident: dict[str, tuple] = {}
        self._epoch = jax.jit(self._train_and_validate, static_argnames=("width", "at_once"))
        self._evaluate = jax.jit(self._evaluate_all, static_argnames=("width",))
        self.select = jax.jit(_select)
        self._take = jax.jit(lambda state, idx: jax.tree_util.tree_map(lambda a: a[idx], state))
        self._put = jax.jit(lambda state, idx, sub: jax.tree_util.tree_map(lambda a, b: a.at[idx].set(b), state, sub))
        self._ahead: dict[tuple, concurrent.futures.Future] = {}  # what compile_ahead started

    # The data, on the device once ------------------------------------------------------------------

    def rows(self, name: str) -> Rows:
        if name not in self._rows:
            self._rows[name] = rows(getattr(self._data, name))
        return self._rows[name]

    def resident(self, name: str):
        """The split `name` on the device (put there once; shared by every member)."""
        if name not in self._resident:
            split = self.rows(name)
            self._resident[name] = (jax.device_put(split.x, self.device), jax.device_put(split.y, self.device))
        return self._resident[name]

    def release(self, name: str) -> None:
        self._resident.pop(name, None)

    # Member states ---------------------------------------------------------------------------------

    @staticmethod
    def build(model: keras.Model, sample: Rows) -> None:
        """Create a member model's metrics', loss's and optimizer's variables, as fit does before its first step
        (`sample`: any split of the dataset in its device form)."""
        x = np.asarray(_model_inputs(sample.x[:1], sample.width))
        model._symbolic_build(data_batch=(x, sample.y[:1]))

    @staticmethod
    def state_of(model: keras.Model) -> tuple:
        """A built member model's training state (trainable, non-trainable, optimizer variables) as arrays."""
        values = lambda variables: [np.asarray(v.value) for v in variables]  # noqa: E731
        return (values(model.trainable_variables), values(model.non_trainable_variables),
                values(model.optimizer.variables))

    def stack(self, states: list[tuple]):
        """The members' states stacked along a leading member axis, on the device."""
        return jax.device_put(jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *states), self.device)

    @staticmethod
    def member(stacked, i: int):
        """Member i's state (host arrays) out of a stacked state."""
        return jax.tree_util.tree_map(lambda leaf: np.asarray(leaf[i]), stacked)

    def put(self, stacked, i: int, state: tuple):
        """`stacked` with member i's state replaced by `state` (unstacked host arrays): a refilled slot."""
        return self._put(stacked, np.asarray([i]), self.stack([state]))

    def assign(self, state) -> None:
        """Write one member's state (unstacked) into the template model: for predict, save, log_model."""
        m = self.model
        for variables, values in zip((m.trainable_variables, m.non_trainable_variables, m.optimizer.variables), state):
            for variable, value in zip(variables, values):
                variable.assign(value)

    # Traced functions --------------------------------------------------------------------------------

    def _fresh_metrics(self, members: int):
        """Every member's metrics variables at their initial values (what reset_metrics gives)."""
        return [jnp.broadcast_to(jnp.zeros(v.shape, v.dtype), (members, *v.shape)) for v in self.model.metrics_variables]

    def _results(self, metrics_values):
        """One member's Keras metric results from its metrics variables' values (traced)."""
        mapping = list(zip(self.model.metrics_variables, metrics_values))
        with keras.StatelessScope(state_mapping=mapping):
            found = {}
            for metric in self.model.metrics:
                result = metric.result()
                found.update(result if isinstance(result, dict) else {metric.name: result})
            return found

    def _batches(self, step, state, order):
        """`step(state, idx)` over the batches of `order` (n row numbers): full batches in a scan, then the rest."""
        b, n = self.batch_size, order.shape[0]
        full = (n // b) * b
        if full:
            state, _ = jax.lax.scan(lambda s, i: (step(s, i), None), state, order[:full].reshape(-1, b))
        if n > full:
            state = step(state, order[full:])
        return state

    def _validate(self, trainable, non_trainable, x, y, width):
        """test_step over `x, y` in order for every member (vmapped over states, the batches shared)."""
        members = trainable[0].shape[0]

        def step(state, idx):
            batch = (_model_inputs(x[idx], width), y[idx])
            return jax.vmap(lambda s: self.model.test_step(s, batch)[1])(state)

        state = (trainable, non_trainable, self._fresh_metrics(members))
        state = self._batches(step, state, jnp.arange(x.shape[0]))  # one order, shared
        return jax.vmap(self._results)(state[2])

    def _train_and_validate(self, state, keys, epochs, active, x, y, vx, vy, width=None, at_once=None):
        trainable, non_trainable, optimizer = state
        members, n = keys.shape[0], x.shape[0]
        orders = jax.vmap(lambda k, e: jax.random.permutation(jax.random.fold_in(k, e), n))(keys, epochs)

        def step(s, idx):  # one member's state and batch; vmapped over the members below
            return self.model.train_step(s, (_model_inputs(x[idx], width), y[idx]))[1]

        def epoch(member):  # its epoch: scan over its batches (under the vmap: a scan of vmapped steps)
            s, order = member
            return self._batches(step, s, order)

        start = (trainable, non_trainable, optimizer, self._fresh_metrics(members))
        at_once = at_once or members
        if at_once >= members:
            end = jax.vmap(epoch)((start, orders))
        else:  # vmapped `at_once` at a time, the chunks one after another
            end = jax.lax.map(epoch, (start, orders), batch_size=at_once)
        logs = jax.vmap(self._results)(end[3])
        # stopped members keep what they had: their results are frozen
        trained = _select(active, end[:3], state)
        val = self._validate(trained[0], trained[1], vx, vy, width)
        return trained, logs, val

    def _evaluate_all(self, trainable, non_trainable, x, y, width=None):
        return self._validate(trainable, non_trainable, x, y, width)

    # Compilation ahead ------------------------------------------------------------------------------

    def compile_ahead(self, members: int, at_once: int | None = None) -> None:
        """Compile the epoch (`at_once` members vmapped at a time) and the test evaluation for `members` members
        on a background thread; epoch() and evaluate() with as many members take them (waiting if need be)."""
        on = jax.sharding.SingleDeviceSharding(self.device)
        spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=on)  # noqa: E731
        state = jax.tree_util.tree_map(lambda a: spec((members, *a.shape), a.dtype), self.state_of(self.model))
        keys = spec((members,), jax.random.key(0).dtype)
        (x, y), (vx, vy), width, test = self.resident("train"), self.resident("val"), self.rows("train").width, \
            self.rows("test")
        work = {
            ("epoch", members, at_once): lambda: self._epoch.lower(
                state, keys, spec((members,), jnp.int32), spec((members,), jnp.bool_), x, y, vx, vy, width=width,
                at_once=at_once).compile(),
            ("test", members): lambda: self._evaluate.lower(
                state[0], state[1], spec(test.x.shape, test.x.dtype), spec(test.y.shape, test.y.dtype),
                width=test.width).compile(),
        }
        futures = {key: concurrent.futures.Future() for key in work}

        def run():
            for key, compile_it in work.items():
                try:
                    futures[key].set_result(compile_it())
                except BaseException as err:  # noqa: BLE001 - the call compiles again, and raises it there
                    futures[key].set_exception(err)

        self._ahead.update(futures)
        threading.Thread(target=run, name="fused-compile", daemon=True).start()

    def _compiled(self, key: tuple):
        """The executable compiled ahead for `key`, once ready; None if there is none or its compilation failed
        (then jit compiles it in this thread, and raises the error here)."""
        future = self._ahead.get(key)
        if future is None:
            return None
        try:
            return future.result()
        except Exception as err:  # noqa: BLE001
            log.debug("compiling %s ahead failed (%s: %s); compiling it now", key, type(err).__name__, err)
            del self._ahead[key]
            return None

    # One epoch, one evaluation -----------------------------------------------------------------------

    def epoch(self, state, keys, epochs, active, at_once: int | None = None):
        """Train every active member one epoch (member i's epoch number epochs[i]), `at_once` members vmapped at
        a time (None: all), and validate every member. Returns (new state, train logs, validation logs): dicts of
        arrays with one value per member, on the device."""
        (x, y), (vx, vy) = self.resident("train"), self.resident("val")
        put = lambda a: jax.device_put(a, self.device)  # noqa: E731 - where the executables expect them
        args = (state, put(keys), put(np.asarray(epochs, np.int32)), put(np.asarray(active, bool)), x, y, vx, vy)
        ahead = self._compiled(("epoch", len(epochs), at_once))
        if ahead is not None:
            return ahead(*args)
        return self._epoch(*args, width=self.rows("train").width, at_once=at_once)  # one dataset's splits: one width

    def live_epoch(self, state, keys, epochs, active, at_once: int | None = None):
        """`epoch`, computing only the active members (a frozen member costs as much as a training one inside the
        program): when they fit in fewer vmapped chunks of `at_once`, they are gathered into a smaller program
        (padded with frozen members to whole chunks, or exactly the live ones when fewer than a chunk: one
        compilation per size), trained, and put back. Returns (new state, train logs, validation logs), the logs
        host arrays over every member (a frozen member's entries are not its own)."""
        n = len(active)
        live = [i for i, a in enumerate(active) if a]
        width = at_once or n
        # fewer than one chunk: exactly the live ones; else whole chunks
        size = max(1, len(live)) if len(live) < width else min(n, math.ceil(len(live) / width) * width)
        if size == n:
            state, train, val = self.epoch(state, keys, epochs, active, at_once)
            return (state, *jax.device_get((train, val)))
        idx = np.asarray(live + [i for i in range(n) if not active[i]][: size - len(live)])
        sub, train, val = self.epoch(self._take(state, idx), keys[idx], [epochs[i] for i in idx],
                                     [i < len(live) for i in range(size)], min(width, size))
        state = self._put(state, idx, sub)

        def spread(logs):
            full = {k: np.zeros((n,), np.asarray(v).dtype) for k, v in logs.items()}
            for k, v in logs.items():
                full[k][idx] = v
            return full

        train, val = jax.device_get((train, val))
        return state, spread(train), spread(val)

    def evaluate(self, state, name: str = "test", members: list[int] | None = None, keep: bool = False) -> dict:
        """Every member's metrics on the split `name` (like keras.Model.evaluate(return_dict=True)), or those of
        `members` (indices, in that order). The split leaves the device afterwards unless `keep` (more to come)."""
        split = self.rows(name)
        x, y = self.resident(name)
        if members is not None:
            state = self._take(state, np.asarray(members))
        ahead = self._compiled((name, state[0][0].shape[0]))
        try:
            if ahead is not None:
                return jax.device_get(ahead(state[0], state[1], x, y))
            return jax.device_get(self._evaluate(state[0], state[1], x, y, width=split.width))
        finally:
            if not keep:
                self.release(name)

    @staticmethod
    def keys(seeds: list[int]):
        """Each member's data-order key, as its lone compiled run makes it (jax.random.key(seed))."""
        return jnp.stack([jax.random.key(s) for s in seeds])
