"""The compiled epoch of a fused group (JAX backend): `lax.scan` over batches of `jax.vmap` over members.

A group's members share one Keras model's structure (the template: same layers, shapes, optimizer kind) and
differ in what Keras keeps in variables: weights (each member built under its own seed), the learning rate (an
optimizer variable), Dropout's seed-generator state (a non-trainable variable). Their states are stacked along a
leading member axis; the data are on the device once for the whole group.

One call trains every member one epoch and validates it (src/compiled.py's semantics per member):
- member i's order is `jax.random.permutation(fold_in(key(seed_i), epoch_i), n)`, as its lone compiled run
  draws it, so it sees the same batches in the same order; the last `n % batch_size` samples are one smaller
  step;
- each step is the template's own Keras `train_step` under `jax.vmap` over (member state, member batch), so a
  member's loss and gradients are its own, never averaged with the others';
- `vmap_members` members are vmapped at once (`jax.lax.map(..., batch_size=vmap_members)` over members of the
  epoch's scan): all of them on a GPU, where one member leaves the card idle; a few on a CPU, whose cores one member
  already keeps busy, so that the members' weights, gradients and optimizer state stay in the cache (16 members of
  mnist_dense at once: 0.78 s per member-epoch; 4 at a time: 0.68 s, as alone; docs/fused.md);
- validation runs `test_step` under `jax.vmap` over the states with the batches shared (in_axes=None);
- the epoch logs are each member's Keras metric results (means over samples).
What can differ from a lone run is the floating-point reduction order of the batched matrix products, so
results agree to ~1e-6 relative, not bit for bit (tests/test_fused.py).

`active` freezes members: a member whose run has stopped (early stopping, NaN, its last epoch) keeps its
state (`jnp.where`) while the others go on, so its results are those of its last trained epoch.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import keras
import numpy as np

from .compiled import Rows, _model_inputs, rows

log = logging.getLogger(__name__)


def _select(mask, new, old):
    """Per member (leading axis), `new` where mask else `old`, over a pytree."""

    def pick(a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree_util.tree_map(pick, new, old)


class Program:
    """The vmapped, compiled epochs of one group. `model`: a compiled Keras model of the group's structure (its
    variables' values are not used: every value comes from the members' stacked states)."""

    def __init__(self, model: keras.Model, ds, batch_size: int, device=None, vmap_members: int | None = None):
        if keras.backend.backend() != "jax":
            raise RuntimeError("fused epochs need the JAX backend")  # the launcher refuses it earlier, with the fix
        self.model, self.batch_size, self.vmap_members = model, batch_size, vmap_members
        self.device = device or jax.devices()[0]
        self._data = ds
        self._rows: dict[str, Rows] = {}
        self._resident: dict[str, tuple] = {}
        self._epoch = jax.jit(self._train_and_validate, static_argnames=("width",))
        self._evaluate = jax.jit(self._evaluate_all, static_argnames=("width",))
        self.select = jax.jit(_select)

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

    def _train_and_validate(self, state, keys, epochs, active, x, y, vx, vy, width=None):
        trainable, non_trainable, optimizer = state
        members, n = keys.shape[0], x.shape[0]
        orders = jax.vmap(lambda k, e: jax.random.permutation(jax.random.fold_in(k, e), n))(keys, epochs)

        def step(s, idx):  # one member's state and batch; vmapped over the members below
            return self.model.train_step(s, (_model_inputs(x[idx], width), y[idx]))[1]

        def epoch(member):  # its epoch: scan over its batches (under the vmap: a scan of vmapped steps)
            s, order = member
            return self._batches(step, s, order)

        start = (trainable, non_trainable, optimizer, self._fresh_metrics(members))
        at_once = self.vmap_members or members
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

    # One epoch, one evaluation -----------------------------------------------------------------------

    def epoch(self, state, keys, epochs, active):
        """Train every active member one epoch (member i's epoch number epochs[i]) and validate every member.
        Returns (new state, train logs, validation logs): dicts of arrays with one value per member, on the device."""
        train = self.rows("train")
        (x, y), (vx, vy) = self.resident("train"), self.resident("val")
        return self._epoch(state, keys, jnp.asarray(epochs, jnp.int32), jnp.asarray(active, bool), x, y, vx, vy,
                           width=train.width)  # the splits of one dataset: one width

    def evaluate(self, state, name: str = "test") -> dict:
        """Every member's metrics on the split `name` (like keras.Model.evaluate(return_dict=True))."""
        split = self.rows(name)
        x, y = self.resident(name)
        try:
            return jax.device_get(self._evaluate(state[0], state[1], x, y, width=split.width))
        finally:
            self.release(name)

    @staticmethod
    def keys(seeds: list[int]):
        """Each member's data-order key, as its lone compiled run makes it (jax.random.key(seed))."""
        return jnp.stack([jax.random.key(s) for s in seeds])
