"""trainer.loop=compiled (JAX backend): every epoch is one compiled program over data kept on the device.

Keras 3.15's JAX `fit` calls one jitted step per batch from Python, even with steps_per_execution
(keras/src/backend/jax/trainer.py loops in Python), which costs ~2 ms per step on an H100: 50x what the
lab's nets need there. Here a `jax.lax.scan` runs all of an epoch's steps inside one `jax.jit` call.
Each step is the model's own `train_step` (Keras's JAX trainer: `stateless_call`, the compiled Keras
loss with the model's L2 losses, `optimizer.stateless_apply`, the loss/accuracy metrics updated
statelessly), so the arithmetic per step is fit's.

Semantics, the same as `fit(shuffle=True)`:
- Every sample once per epoch, in an order drawn on the device from the run's seed and the epoch number
  (jax.random.fold_in), so a resumed run shuffles its later epochs as an uninterrupted one would.
  The last `n % batch_size` samples of that order form one smaller final step, as in fit.
- Dropout draws from the model's SeedGenerator state, carried through the scan like any other variable.
- Epoch logs are Keras's metric results (loss and accuracy as means over samples), read after the scan.
- Validation and test run compiled too (`test_step` in a scan, no shuffle, final smaller step).
- Callbacks (the epoch backup, MLflowMetrics, EarlyStopping, TerminateOnNaN) are Keras's CallbackList,
  called per epoch: the trained values are written into the model before on_epoch_end, and read back
  from it before the next epoch (so a callback that sets weights is obeyed). TerminateOnNaN sees the
  epoch's loss once, as if the epoch were one batch: a NaN stops after that epoch, not mid-epoch.
- Ctrl-C/SIGTERM is raised between compiled calls; the model keeps the last finished epoch's values.

Memory: a split lives on the device only within hardware.device_data_budget x the device's free memory
(the host's available memory on a CPU). A split that does not fit is streamed: its epoch order is drawn
the same way, cut into chunks of whole batches that fit, and each chunk is gathered on the host, put on
the device and scanned. Images stay uint8 (the model's Rescaling layer scales them). Word-index rows
(CSR) go to the device as each review's distinct word indices padded to the split's longest review;
each batch's multi-hot rows are scattered on the device, so the dense matrix never exists on the host.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import keras
import numpy as np
import scipy.sparse

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The data as the device holds it


@dataclass
class Rows:
    """A split in its device form: x = uint8 images, or padded word indices (pad value = `width`)."""

    x: np.ndarray
    y: np.ndarray
    width: int | None = None  # multi-hot width for word-index rows; None: x is what the model takes

    def __len__(self) -> int:
        return len(self.y)

    @property
    def nbytes(self) -> int:
        return self.x.nbytes + self.y.nbytes


def index_dtype(width: int):
    """The smallest integer type holding every column index and the pad value `width`."""
    return np.uint16 if width < np.iinfo(np.uint16).max else np.int32


def device_bytes(split) -> int:
    """What `rows(split)` will take on the device, without building it."""
    if scipy.sparse.issparse(split.x):
        n, width = split.x.shape
        longest = int(np.diff(split.x.indptr).max(initial=0))
        return n * max(longest, 1) * np.dtype(index_dtype(width)).itemsize + split.y.nbytes
    return split.x.nbytes + split.y.nbytes


def rows(split) -> Rows:
    """The device form of a data.Split (host arrays; put on the device later, whole or in chunks)."""
    if not scipy.sparse.issparse(split.x):
        return Rows(np.asarray(split.x), np.asarray(split.y))
    csr = split.x
    n, width = csr.shape
    counts = np.diff(csr.indptr)
    padded = np.full((n, max(int(counts.max(initial=0)), 1)), width, dtype=index_dtype(width))
    row = np.repeat(np.arange(n), counts)
    padded[row, np.arange(csr.nnz) - csr.indptr[row]] = csr.indices
    return Rows(padded, np.asarray(split.y), width)


def _model_inputs(x, width: int | None):
    """A batch as the model takes it: multi-hot float32 rows scattered from word indices on the device."""
    if width is None:
        return x
    hot = jnp.zeros((x.shape[0], width), jnp.float32)
    # The pad value `width` is out of range: mode="drop" skips it.
    return hot.at[jnp.arange(x.shape[0])[:, None], x.astype(jnp.int32)].set(1.0, mode="drop")


def free_device_bytes(device) -> int:
    """Free memory of `device`: the allocator's limit minus what is in use; a CPU's available host memory."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    import psutil

    return int(psutil.virtual_memory().available)


# ---------------------------------------------------------------------------------------------
# The compiled epoch


class Epochs:
    """Trains and evaluates a compiled Keras model (JAX backend) on `ds` (a data.Data), one compiled call
    per epoch (or per streamed chunk). `budget_bytes`: at most this much data on the device.
    """

    def __init__(self, model: keras.Model, ds, batch_size: int, seed: int, budget_bytes: int, device=None,
                 verbose: int = 2):
        if keras.backend.backend() != "jax":
            raise RuntimeError("compiled epochs need the JAX backend")  # loop.check refuses it earlier, with the fix
        self.model, self.batch_size, self.budget = model, batch_size, int(budget_bytes)
        self.device = device or jax.devices()[0]
        self.key = jax.random.key(seed)
        self.verbose = verbose
        self._data = ds
        self._rows: dict[str, Rows] = {}
        self._resident: dict[int, tuple] = {}  # id(Rows) -> (x, y) on the device
        self._chunk: dict[int, int] = {}  # id(Rows) -> batches per chunk, for a streamed split
        self._train_epoch = jax.jit(self._resident_train_epoch, static_argnames=("width",))
        self._train_chunk = jax.jit(self._chunk_train, static_argnames=("width",))
        self._eval_chunk = jax.jit(self._chunk_eval, static_argnames=("width",))
        self._order = jax.jit(self._permutation, static_argnames=("n",))

    def rows(self, name: str) -> Rows:
        """The split `name` (train, val, test) in its device form, built once."""
        if name not in self._rows:
            self._rows[name] = rows(getattr(self._data, name))
        return self._rows[name]

    # Where each split lives --------------------------------------------------------------------

    def plan(self, *splits: Rows) -> dict[int, str]:
        """Put each split (in order) on the device if it fits what is left of the budget; the others are
        streamed, one at a time, in chunks of the batches that fit in what is left then. Says where each is."""
        left = self.budget - sum(x.nbytes + y.nbytes for x, y in self._resident.values())
        for split in splits:
            if id(split) not in self._resident and split.nbytes <= left:
                self._resident[id(split)] = (jax.device_put(split.x, self.device), jax.device_put(split.y, self.device))
                left -= split.nbytes
        where = {}
        for split in splits:
            if id(split) in self._resident:
                where[id(split)] = "on the device"
            else:
                per_batch = split.nbytes / max(len(split), 1) * self.batch_size
                self._chunk[id(split)] = max(1, int(left // max(per_batch, 1)))
                where[id(split)] = f"streamed in chunks of {self._chunk[id(split)]} batches"
        return where

    def release(self, split: Rows) -> None:
        self._resident.pop(id(split), None)

    # Traced functions (jax.jit) ------------------------------------------------------------------

    def _permutation(self, epoch, n: int):
        return jax.random.permutation(jax.random.fold_in(self.key, epoch), n)

    def _scan(self, step, state, x, y, order, width):
        """`step` over the batches of `order` (full batches in a scan, then one smaller step for the rest)."""
        b = self.batch_size
        full = (order.shape[0] // b) * b

        def body(state, idx):
            logs, state = step(state, (_model_inputs(x[idx], width), y[idx]))
            return state, None

        if full:
            state, _ = jax.lax.scan(body, state, order[:full].reshape(-1, b))
        if order.shape[0] > full:
            state, _ = body(state, order[full:])
        return state

    def _resident_train_epoch(self, state, x, y, epoch, width=None):
        return self._scan(self.model.train_step, state, x, y, self._permutation(epoch, x.shape[0]), width)

    def _chunk_train(self, state, x, y, width=None):
        return self._scan(self.model.train_step, state, x, y, jnp.arange(x.shape[0]), width)

    def _chunk_eval(self, state, x, y, width=None):
        return self._scan(self.model.test_step, state, x, y, jnp.arange(x.shape[0]), width)

    # Model state in and out ----------------------------------------------------------------------

    def _state(self, train: bool):
        m = self.model
        values = lambda variables: [v.value for v in variables]  # noqa: E731
        if train:
            state = (values(m.trainable_variables), values(m.non_trainable_variables),
                     values(m.optimizer.variables), values(m.metrics_variables))
        else:
            state = values(m.trainable_variables), values(m.non_trainable_variables), values(m.metrics_variables)
        # Committed to the device like the outputs of the last call: an uncommitted array (a fresh variable)
        # is another jit signature, and would compile the epoch a second time.
        return jax.device_put(state, self.device)

    def _write_back(self, state, train: bool) -> None:
        m = self.model
        groups = [m.trainable_variables, m.non_trainable_variables, m.optimizer.variables, m.metrics_variables]
        pairs = zip(groups, state) if train else [(m.metrics_variables, state[-1])]  # evaluation: metrics only
        for variables, values in pairs:
            for variable, value in zip(variables, values):
                variable.assign(value)

    def _logs(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.model.get_metrics_result().items()}

    def build(self, sample: Rows) -> None:
        """Create the metrics', loss's and optimizer's variables, as fit does before its first step."""
        x = np.asarray(_model_inputs(sample.x[:1], sample.width))
        self.model._symbolic_build(data_batch=(x, sample.y[:1]))  # Keras 3.15's fit calls this too

    # One pass over a split ---------------------------------------------------------------------

    def train_epoch(self, split: Rows, epoch: int) -> dict[str, float]:
        self.model.reset_metrics()
        state = self._state(train=True)
        if id(split) in self._resident:
            x, y = self._resident[id(split)]
            state = self._train_epoch(state, x, y, epoch, width=split.width)
        else:
            order = np.asarray(self._order(epoch, n=len(split)))  # the same order as on the device
            for x, y in self._chunks(split, order):
                state = self._train_chunk(state, x, y, width=split.width)
        self._write_back(state, train=True)
        return self._logs()

    def evaluate_rows(self, split: Rows) -> dict[str, float]:
        self.model.reset_metrics()
        state = self._state(train=False)
        if id(split) in self._resident:
            state = self._eval_chunk(state, *self._resident[id(split)], width=split.width)
        else:
            for x, y in self._chunks(split, np.arange(len(split))):
                state = self._eval_chunk(state, x, y, width=split.width)
        self._write_back(state, train=False)
        return self._logs()

    def _chunks(self, split: Rows, order: np.ndarray):
        """Chunks of whole batches in `order`, gathered on the host and put on the device; the last holds the rest."""
        size = self._chunk[id(split)] * self.batch_size
        for start in range(0, len(order), size):
            rows_ = order[start : start + size]
            yield jax.device_put(split.x[rows_], self.device), jax.device_put(split.y[rows_], self.device)

    # fit ---------------------------------------------------------------------------------------

    def fit(self, epochs: int, initial_epoch: int = 0, callbacks=None, verbose: int | None = None) -> dict[str, list[float]]:
        """Like keras.Model.fit(shuffle=True) on the training split, validating on `val` after every epoch;
        returns History.history of this call's epochs (the loop interface of src/training/loop.py)."""
        verbose = self.verbose if verbose is None else verbose
        model, train, validation = self.model, self.rows("train"), self.rows("val")
        self.build(train)
        where = self.plan(train, validation)
        log.info("Compiled epochs: training data (%d samples, %.1f MB) %s, validation data (%.1f MB) %s; "
                 "data budget %.1f MB on %s", len(train), train.nbytes / 1e6, where[id(train)],
                 validation.nbytes / 1e6, where[id(validation)], self.budget / 1e6, self.device)
        steps = math.ceil(len(train) / self.batch_size)
        callbacks = keras.callbacks.CallbackList(
            callbacks, add_history=True, add_progbar=verbose != 0, verbose=verbose,
            epochs=epochs, steps=steps, model=model,
        )
        model.stop_training = False
        logs = {}
        callbacks.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            callbacks.on_epoch_begin(epoch)
            logs = self.train_epoch(train, epoch)
            # The whole epoch is one batch to the callbacks: TerminateOnNaN checks its loss here.
            callbacks.on_train_batch_end(steps - 1, logs)
            logs.update({f"val_{k}": v for k, v in self.evaluate_rows(validation).items()})
            callbacks.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
        if isinstance(model.optimizer, keras.optimizers.Optimizer):
            model.optimizer.finalize_variable_values(model.trainable_weights)  # as fit does (EMA weights)
        callbacks.on_train_end(logs)
        self.release(train)  # the test split may need the room
        self.release(validation)
        return model.history.history

    def evaluate(self, name: str = "test") -> dict[str, float]:
        """Like keras.Model.evaluate(return_dict=True) on the split `name`, on the device when it fits."""
        split = self.rows(name)
        self.build(split)
        self.plan(split)
        try:
            return self.evaluate_rows(split)
        finally:
            self.release(split)
