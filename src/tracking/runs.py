"""A run's lifecycle in MLflow: started (or reopened), and always ended FINISHED, FAILED or KILLED.

SIGTERM (SLURM's time limit, preemption, scancel) becomes an exception like Ctrl-C, so the run ends
KILLED with its reason. Epoch metrics are sent by one background thread (`send_later`), in order;
ending a run first waits for that queue. A process killed too hard to end its run (SIGKILL, a lost
node) leaves it RUNNING: its owner tags and heartbeat let the next process end it (src/tracking/liveness.py).
Imports MLflow, never Keras.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient

from . import liveness, names, status
from .outbox import Outbox
from .outbox import import_command as outbox_import_command
from .redaction import redact

log = logging.getLogger(__name__)


Terminated = status.Terminated  # what a SIGTERM raises (signals_raise): a run it ends is KILLED


# One worker, so epochs reach the store in order; shared by every run of the process.
_SENDER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-metrics")


def wait_for_metrics() -> None:
    """Wait until every queued epoch is sent (or kept in the outbox): the worker runs tasks in order."""
    with contextlib.suppress(Exception):  # a send's own error is raised to its callback, not here
        _SENDER.submit(lambda: None).result()


def log_final_metrics(outbox: Outbox, run_id: str, values: dict) -> None:
    """Metrics of the whole run (test_loss, test_accuracy), at step 0, through the outbox."""
    now = int(time.time() * 1000)
    outbox.log_metrics(run_id, [Metric(k, float(v), now, 0) for k, v in values.items()])


def send_later(function, *args) -> Future:
    """Run `function(*args)` on the sender thread, after everything queued before it."""
    return _SENDER.submit(function, *args)


@contextlib.contextmanager
def run(
    experiment_id: str,
    run_name: str,
    tags: dict,
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
    outbox: Outbox | None = None,
    system_metrics: float | None = None,
):
    """An MLflow run that always ends: FINISHED, FAILED (exception) or KILLED (Ctrl-C, SIGTERM, requeue).

    The reason of a failure goes into the `failure_reason` tag; metrics logged so far stay.
    `resume_run_id` reopens that run (a requeued job continues its run) instead of starting one.
    With an `outbox`, a store that stopped answering gets the end (and tag) later, from its file.
    `system_metrics`: MLflow's system metrics (system/cpu_utilization_percentage, ...) every that many
    seconds after a first minute sampled every second (SystemMetrics); None: off. First, runs of the experiment
    left RUNNING by a dead process are ended FAILED (src/tracking/liveness.py).
    """
    client = MlflowClient()
    try:
        liveness.reconcile(client, [experiment_id])
    except mlflow.exceptions.MlflowException as err:  # never a reason not to train
        log.warning("Could not check the experiment for runs left RUNNING: %s", err)
    tags = {**tags, **liveness.owner_tags()}
    resume_run_id = _reclaimed(client, resume_run_id, experiment_id, tags)
    if resume_run_id:
        mlflow.set_experiment(experiment_id=experiment_id)  # start_run refuses a run outside the active experiment
        active = mlflow.start_run(run_id=resume_run_id, tags=tags, log_system_metrics=False)
    else:
        active = mlflow.start_run(
            experiment_id=experiment_id, run_name=run_name, tags=tags, parent_run_id=parent_run_id,
            log_system_metrics=False,  # SystemMetrics below: MLflow's monitor on a schedule
        )
    uri = mlflow.get_tracking_uri()
    log.info(
        "MLflow run %s (%s) in experiment %s at %s%s",
        run_name, active.info.run_id, experiment_id, redact(uri), " (resumed)" if resume_run_id else "",
    )
    monitor = SystemMetrics(active.info.run_id, system_metrics).start() if system_metrics is not None else None
    restore = signals_raise()
    heartbeat = liveness.Heartbeat(client, active.info.run_id).start()  # within long epochs
    try:
        yield active
        raise_if_interrupted()  # one swallowed on the way still ends the run KILLED, not FINISHED
    except BaseException as err:  # SystemExit too: submitit's requeue exits so
        _end(active, *status.ending(err), outbox, monitor)
        raise
    else:
        _end(active, *status.ending(None), outbox, monitor)
    finally:
        heartbeat.stop()
        restore()
        if outbox is not None and outbox.path.exists():
            log.warning(
                "The MLflow store %s missed some of run %s's records; they are kept in %s.\n"
                "Import them when it answers again: %s", redact(uri), active.info.run_id, outbox.path,
                outbox_import_command(outbox.path),
            )


def open_member(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    tags: dict,
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
):
    """A run started (or reopened) through `client` without becoming the process's active run: MLflow's fluent API
    has one active run per process, and a fused group (src/fused/launch.py) has a run per member open at once. It gets the
    tags `run` gives (owner, MLflow's source tags); end it with `end_member`. `run` is unchanged for lone runs."""
    from mlflow.tracking.context import registry

    tags = {**tags, **liveness.owner_tags()}
    if resume_run_id := _reclaimed(client, resume_run_id, experiment_id, tags):
        client.update_run(resume_run_id, status=status.RUNNING)
        return client.get_run(resume_run_id)
    if parent_run_id:
        tags[names.PARENT_RUN] = parent_run_id
    return client.create_run(experiment_id, run_name=run_name, tags=registry.resolve_tags(tags))


def end_member(run_id: str, err: BaseException, outbox: Outbox) -> None:
    """End a run opened by `open_member` (after the metrics queued for it), through its outbox, with the status
    that `err` gives it (src/tracking/status.py)."""
    end, reason = status.ending(err)
    wait_for_metrics()
    if reason:
        outbox.set_tag(run_id, names.FAILURE_REASON, reason[:4000])
    outbox.end(run_id, end)
    if reason:
        log.error("Run %s ended %s: %s", run_id, end, reason)


@contextlib.contextmanager
def finishing(run_id: str, outbox: Outbox):
    """The last steps of a run opened by `open_member`, with it as MLflow's active run (mlflow.keras.log_model logs
    to the active run only), then its end: FINISHED, or FAILED / KILLED with the reason, as `run` ends a run."""
    mlflow.set_experiment(experiment_id=MlflowClient().get_run(run_id).info.experiment_id)  # start_run checks it
    active = mlflow.start_run(run_id=run_id, log_system_metrics=False)
    try:
        yield active
    except BaseException as err:
        _end(active, *status.ending(err), outbox)
        raise
    else:
        _end(active, *status.ending(None), outbox)


# MLflow's monitor says at INFO that it started, stopped, and skips GPU metrics on a CPU node: four lines of every
# run's log that tell nothing. Its warnings (a sample it could not log) still show.
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)


class SystemMetrics(SystemMetricsMonitor):
    """MLflow's system-metrics monitor, sampling every FIRST_INTERVAL_S for the first FIRST_MINUTE_S of the run,
    then every `interval` seconds.

    At a fixed 10 s, a 12 s run got one sample and the UI drew a bar, not a curve; at 1 s throughout, an hour-long
    run would write 3,600 points per metric. MLflow's loop reads `sampling_interval` before each wait, so the
    schedule is that one attribute. Samples are logged one by one (samples_before_logging=1).
    """

    FIRST_INTERVAL_S = 1.0
    FIRST_MINUTE_S = 60.0

    def __init__(self, run_id: str, interval: float):
        self._started = time.monotonic()
        self._interval = float(interval)
        super().__init__(run_id, sampling_interval=interval, samples_before_logging=1, resume_logging=True)

    @property
    def sampling_interval(self) -> float:
        early = time.monotonic() - self._started < self.FIRST_MINUTE_S
        return min(self.FIRST_INTERVAL_S, self._interval) if early else self._interval

    @sampling_interval.setter
    def sampling_interval(self, value) -> None:  # MLflow's __init__ sets it; the schedule above decides
        pass

    def start(self) -> "SystemMetrics":
        super().start()
        return self


class GroupSystemMetrics(SystemMetrics):
    """One system-metrics monitor for the runs of a fused group (one process, one machine): each sample goes to
    every member's run, so a member's record has the system/ metrics a lone run has. It samples every `interval`
    from the start: at 1 s, 16 members would write 16 requests a second for the first minute."""

    FIRST_MINUTE_S = 0.0

    def __init__(self, run_ids: list[str], interval: float):
        self._run_ids = list(run_ids)
        self._published = False
        super().__init__(self._run_ids[0], interval)

    def add(self, run_id: str) -> None:
        """A run that joins the group (a refilled slot): it gets the samples from now on."""
        self._run_ids = [*self._run_ids, run_id]  # a new list: the sampling thread may be iterating the old one

    def finish(self) -> None:
        """Stop sampling; a group that trained for less than one interval still logs what was sampled."""
        super().finish()
        if not self._published:
            with contextlib.suppress(Exception):  # never a reason not to end the runs
                if metrics := self.aggregate_metrics():
                    self.publish_metrics(metrics)

    def publish_metrics(self, metrics) -> None:
        self._published = True
        now, step = int(time.time() * 1000), self._logging_step
        values = [Metric(f"{self._metrics_prefix}{k}", float(v), now, step) for k, v in metrics.items()]
        client = MlflowClient()
        for run_id in self._run_ids:
            client.log_batch(run_id, metrics=values)
        self._logging_step += 1
        for monitor in self.monitors:
            monitor.clear_metrics()


def log_params(active, params: dict[str, str]) -> None:
    """Log the run's config. A resumed run keeps the values it was started with (MLflow refuses to change
    a param); one given differently now (trainer.backup_dir, more trainer.epochs, another tracking or
    data path: none of them changes the training) is kept as a `resumed.<key>` tag instead."""
    before = active.data.params  # empty for a new run
    changed = {k: v for k, v in params.items() if k in before and before[k] != v[:6000]}
    client = MlflowClient()
    client.log_batch(
        active.info.run_id,
        params=[Param(k, v) for k, v in params.items() if k not in before],
        tags=[RunTag(f"resumed.{k}"[:250], v[:5000]) for k, v in changed.items()],
    )


def _reclaimed(client: MlflowClient, run_id: str | None, experiment_id: str, tags: dict) -> str | None:
    """The run a checkpoint names (`run_id`), reclaimed before it is RUNNING again: its tags (this process's
    ownership among them, so a concurrent reconcile never ends it) and its last stop's reason cleared; None when there
    is none, or it is gone or elsewhere (then a new run starts). Both ways to open a run (`run`, `open_member`) go
    through it."""
    if not run_id or not _resumable(run_id, experiment_id):
        return None
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    with contextlib.suppress(mlflow.exceptions.MlflowException):  # the reason of the last stop
        client.delete_tag(run_id, names.FAILURE_REASON)
    return run_id


def _resumable(run_id: str, experiment_id: str) -> bool:
    try:
        found = MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        found = None
    if found is None or found.info.lifecycle_stage != "active" or found.info.experiment_id != experiment_id:
        log.warning("The backup's MLflow run %s is gone or elsewhere: starting a new run", run_id)
        return False
    return True


def _end(active, end: str, reason: str | None, outbox: Outbox | None, monitor=None) -> None:
    run_id = active.info.run_id
    if monitor is not None:
        with contextlib.suppress(Exception):  # its last samples; never a reason not to end the run
            monitor.finish()
    wait_for_metrics()  # epochs still queued by MLflowMetrics (fit interrupted before on_train_end) go first
    if outbox is None:
        try:
            if reason:
                mlflow.set_tag(names.FAILURE_REASON, reason[:4000])
        finally:
            mlflow.end_run(end)
    else:
        if reason:
            outbox.set_tag(run_id, names.FAILURE_REASON, reason[:4000])
        outbox.end(run_id, end)  # sent, or kept in the outbox's file with the import command
        with contextlib.suppress(Exception):
            mlflow.end_run(end)  # clears MLflow's active run (its own set_terminated repeats the outbox's)
    if reason:
        log.error("Run %s ended %s: %s", run_id, end, reason)


_INTERRUPTED: list[BaseException] = []  # the Ctrl-C or SIGTERM that arrived (see raise_if_interrupted)


def interruption() -> BaseException | None:
    """The Ctrl-C or SIGTERM that arrived during this process's last run or fused group, if one did."""
    return _INTERRUPTED[0] if _INTERRUPTED else None


def raise_if_interrupted() -> None:
    """Raise again the Ctrl-C (KeyboardInterrupt) or SIGTERM (Terminated) that arrived during the run.

    The signal handler raises at once too, but where that exception lands is chance: one raised inside a
    framework's data iterator can be swallowed there (seen with Keras's JAX trainer, for both signals), and
    training would go on to FINISHED. So per-batch callbacks and the end of the run ask again. Signals reach the
    main thread only: a run in another thread is never stopped by the one an earlier main-thread run saw.
    """
    if _INTERRUPTED and threading.current_thread() is threading.main_thread():
        raise _INTERRUPTED[0]


def signals_raise():
    """Ctrl-C and SIGTERM raise (KeyboardInterrupt, Terminated) and are remembered (raise_if_interrupted) until the
    returned function is called; in the main thread only (a run, a fused group)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    _INTERRUPTED.clear()

    def handler(signum, frame):
        if not _INTERRUPTED:
            _INTERRUPTED.append(
                KeyboardInterrupt() if signum == signal.SIGINT
                else Terminated(f"{signal.Signals(signum).name} (signal {signum})")
            )
        raise _INTERRUPTED[0]

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(signum, old) for signum, old in previous.items()]
