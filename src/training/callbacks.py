"""Keras callbacks of a run: every epoch's metrics to MLflow, once, at step = epoch number counted from 1."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import keras
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from ..tracking import liveness, names, runs
from ..tracking.outbox import Outbox

log = logging.getLogger(__name__)


class MLflowMetrics(keras.callbacks.Callback):
    """Logs every epoch's logs (loss, accuracy, val_loss, val_accuracy) once, at step = epoch + 1.

    One batched request per epoch (or per several, see below); MLflow's own Keras callback would also
    re-log validation metrics at step 0 when evaluation runs, which this one does not.

    A resumed run passes the backup's finished epochs: those MLflow lacks (the job died between
    committing the backup and logging) are sent at the start, and no step MLflow already has is
    sent again, so each epoch is in the run exactly once. Through an `outbox`, an epoch the store
    does not take is kept in a file instead of stopping training.

    Each epoch's request goes to one background thread, in order, so the next epoch does not wait
    for the store (a synchronous SQLite write costs 15-20 ms, 3-4% of a 0.5 s IMDB epoch on 2 CPU
    cores; a lost server costs seconds of retries). Epochs that finish while a request is under way
    go together in the next one, so sub-second epochs do not each cost a request's CPU beside training.
    on_train_end waits for the queue, so every epoch is in the store (or the outbox's file), and any
    logging error raised, before fit returns.

    `committed(epoch)` (resume.Backup.committed) blocks until the epoch's checkpoint is on disk: the sender
    calls it before logging the epoch, so MLflow never has an epoch that the checkpoint writer might lose.
    """

    def __init__(
        self,
        run_id: str,
        client: MlflowClient | None = None,
        finished_epochs: list[dict] | None = None,
        outbox: Outbox | None = None,
        committed: Callable[[int], None] | None = None,
    ):
        super().__init__()
        self.run_id = run_id
        self.committed = committed
        self.client = client or MlflowClient()
        self.finished_epochs = finished_epochs or []
        self._logged: dict[str, set[int]] = {}
        self.outbox = outbox
        self._epoch_start = 0.0
        self._pending: list[Future] = []
        self._beaten = -math.inf  # when an epoch's end last beat (time.monotonic)
        self._unsent: list[tuple[int, list[Metric]]] = []  # (epoch, its metrics), for the sender to take
        self._lock = threading.Lock()

    def on_train_begin(self, logs=None):
        if not self.finished_epochs:
            return
        keys = set().union(*self.finished_epochs)
        self._logged = {k: {m.step for m in self.client.get_metric_history(self.run_id, k)} for k in keys}
        now = int(time.time() * 1000)
        missing = [
            Metric(k, float(v), now, step)
            for step, values in enumerate(self.finished_epochs, start=1)
            for k, v in values.items()
            if step not in self._logged[k]
        ]
        for start in range(0, len(missing), 1000):  # log_batch takes at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=missing[start : start + 1000])
        if missing:
            log.info("Sent %d metric values of finished epochs that the run lacked", len(missing))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = int(time.time() * 1000)
        values = numeric_logs(logs)
        values[names.EPOCH_TIME] = time.perf_counter() - self._epoch_start
        metrics = [Metric(k, v, now, epoch + 1) for k, v in values.items() if epoch + 1 not in self._logged.get(k, ())]
        if metrics:
            with self._lock:
                self._unsent.append((epoch, metrics))
            self._pending.append(runs.send_later(self._send_unsent))
        due = time.monotonic() - self._beaten >= liveness.EPOCH_BEAT_S
        if due and (self.outbox is None or not self.outbox.path.exists()):  # no beat into a store known to be lost
            # On the sender thread: the run's owner is alive (src/tracking/liveness.py). Not every epoch: sub-second epochs
            # would each write a tag (a SQLite write of CPU beside training); the run's Heartbeat thread beats too.
            self._beaten = time.monotonic()
            self._pending.append(runs.send_later(liveness.beat, self.client, self.run_id))

    def _send_unsent(self) -> None:
        """On the sender thread: every epoch handed over and not sent yet, in one request. Epochs shorter than a
        request (a SQLite write costs 5-15 ms of CPU) then cost one request per several epochs, not one each."""
        with self._lock:
            batch, self._unsent = self._unsent, []
        if not batch:
            return  # an earlier call sent them
        if self.committed is not None:
            for epoch, _ in batch:
                self.committed(epoch)
        send = self.client.log_batch if self.outbox is None else self.outbox.log_metrics
        metrics = [m for _, epoch_metrics in batch for m in epoch_metrics]
        for start in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
            send(self.run_id, metrics[start : start + 1000])

    def on_train_end(self, logs=None):
        pending, self._pending = self._pending, []
        for operation in pending:
            operation.result()  # re-raises a logging error of the background thread


def numeric_logs(logs: dict | None) -> dict[str, float]:
    """Keras's epoch logs as plain floats, leaving out anything that is not a number."""
    values = {}
    for key, value in (logs or {}).items():
        try:
            values[key] = float(value)
        except (TypeError, ValueError):
            pass
    return values


class StopOnSignal(keras.callbacks.Callback):
    """Ends training at the next batch once Ctrl-C or SIGTERM arrived (runs.raise_if_interrupted says why)."""

    def on_train_batch_end(self, batch, logs=None):
        runs.raise_if_interrupted()

    def on_test_batch_end(self, batch, logs=None):
        runs.raise_if_interrupted()


class ReportToTrial(keras.callbacks.Callback):
    """An Optuna sweep's job (src/sweeps/search.py JobTrial): reports `monitor` after every epoch to its trial, and stops
    training at the end of an epoch its pruner prunes (the run then ends FINISHED, tagged pruned). After the last
    epoch there is nothing left to save: the trial completes, whatever the pruner would say."""

    def __init__(self, trial, monitor: str, epochs: int):
        super().__init__()
        self.trial = trial
        self.monitor = monitor
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        value = numeric_logs(logs).get(self.monitor)
        if value is not None and self.trial.report(epoch + 1, value, may_prune=epoch + 1 < self.epochs):
            self.model.stop_training = True
