"""A run's lifecycle (src/tracking/runs.py) in a real SQLite MLflow store, without training: how it ends (FINISHED,
FAILED, KILLED) and with which reason, Ctrl-C and SIGTERM sent to this very process, reopening a run,
params of a resumed run, and the sender thread's ordering.

Signals are real (os.kill on this process); a guard handler makes a signal that the run failed to catch
fail the test instead of ending pytest.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from src.tracking import outbox, runs
from src.tracking import store as stores


class Stray(Exception):
    """A signal that reached the handler the test had installed: the run did not take it."""


@pytest.fixture
def guard():
    """SIGINT and SIGTERM raise Stray outside a run; the handlers are put back after the test."""
    def stray(signum, frame):
        raise Stray(signum)

    previous = {s: signal.signal(s, stray) for s in (signal.SIGINT, signal.SIGTERM)}
    yield stray
    for s, handler in previous.items():
        signal.signal(s, handler)


@pytest.fixture
def experiment_id(store, experiment) -> str:
    return stores.connect(store, experiment)


def send(signum: int) -> None:
    """Send `signum` to this process and give its handler the chance to run (it raises)."""
    os.kill(os.getpid(), signum)
    for _ in range(200):
        time.sleep(0.005)
    raise AssertionError(f"signal {signum} was not raised")


@contextmanager
def interrupted_by(raised: type[BaseException]):
    """pytest.raises for exactly `raised`: another interruption fails the test rather than escaping it (a
    KeyboardInterrupt that leaves a test stops the whole pytest session)."""
    with pytest.raises(BaseException) as caught:
        yield caught
    assert type(caught.value) is raised, f"{type(caught.value).__name__}: {caught.value}"


def ended(run_id: str):
    return MlflowClient().get_run(run_id)


class Recording(MlflowClient):
    """The real store's client, recording what reaches it through the outbox, in order."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def log_batch(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        super().log_batch(run_id, metrics=metrics, params=params, tags=tags, **kwargs)
        self.calls.append(("log_batch", run_id, [m.key for m in metrics], {t.key: t.value for t in tags}))

    def set_terminated(self, run_id, status=None, end_time=None):
        super().set_terminated(run_id, status, end_time)
        self.calls.append(("end", run_id, status))


# -- how a run ends ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_outbox", [False, True], ids=["direct", "outbox"])
def test_a_run_ends_finished_without_a_failure_reason(experiment_id, with_outbox, tmp_path, caplog):
    """A run whose body returns ends FINISHED, with no failure_reason, and leaves no active MLflow run behind."""
    caplog.set_level(logging.INFO, logger="src.tracking.runs")
    box = outbox.Outbox(tmp_path / outbox.FILENAME, Recording()) if with_outbox else None
    with runs.run(experiment_id, "fine", {"kind": "test"}, outbox=box) as active:
        pass
    run = ended(active.info.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "fine"
    assert run.data.tags["kind"] == "test" and "failure_reason" not in run.data.tags
    assert mlflow.active_run() is None
    assert [r.getMessage() for r in caplog.records if r.name == "src.tracking.runs" and r.levelno >= logging.WARNING] == []
    if with_outbox:
        assert box.client.calls == [("end", active.info.run_id, "FINISHED")] and not box.path.exists()


@pytest.mark.parametrize("with_outbox", [False, True], ids=["direct", "outbox"])
def test_an_exception_ends_the_run_failed_with_its_reason(experiment_id, with_outbox, tmp_path, caplog):
    """The exception's type and message become failure_reason (cut to 4000 characters), logged as an error."""
    box = outbox.Outbox(tmp_path / outbox.FILENAME, Recording()) if with_outbox else None
    message = "broken " + "x" * 5000
    with pytest.raises(RuntimeError):
        with runs.run(experiment_id, "broken", {}, outbox=box) as active:
            raise RuntimeError(message)
    reason = f"RuntimeError: {message}"[:4000]
    run = ended(active.info.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == reason
    assert mlflow.active_run() is None
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "src.tracking.runs"]
    assert (logging.ERROR, f"Run {active.info.run_id} ended FAILED: RuntimeError: {message}") in logged  # in full
    if with_outbox:  # the reason first, then the end, both through the outbox
        run_id = active.info.run_id
        assert box.client.calls == [("log_batch", run_id, [], {"failure_reason": reason}), ("end", run_id, "FAILED")]
        assert not box.path.exists()


@pytest.mark.parametrize(
    "interrupt, reason",
    [
        (KeyboardInterrupt(), "KeyboardInterrupt (Ctrl-C): interrupted during training"),
        (runs.Terminated("SIGTERM (signal 15)"), "Terminated: SIGTERM (signal 15): interrupted during training"),
        (SystemExit(3), "SystemExit: interrupted"),  # submitit's requeue
    ],
    ids=["ctrl-c", "sigterm", "requeue"],
)
@pytest.mark.parametrize("with_outbox", [False, True], ids=["direct", "outbox"])
def test_an_interrupted_run_ends_killed_with_what_interrupted_it(
    experiment_id, interrupt, reason, with_outbox, tmp_path
):
    box = outbox.Outbox(tmp_path / outbox.FILENAME, Recording()) if with_outbox else None
    with interrupted_by(type(interrupt)):
        with runs.run(experiment_id, "interrupted", {}, outbox=box) as active:
            raise interrupt
    run = ended(active.info.run_id)
    assert (run.info.status, run.data.tags["failure_reason"]) == ("KILLED", reason)
    assert mlflow.active_run() is None


def test_the_end_waits_for_epochs_still_queued(experiment_id):
    """Metrics queued on the sender thread reach the store before the run's end."""
    client = MlflowClient()

    def slow_epoch(run_id, step):
        time.sleep(0.05)
        client.log_metric(run_id, "loss", 1 / step, step=step)

    with runs.run(experiment_id, "queued", {}) as active:
        for step in (1, 2, 3):
            runs.send_later(slow_epoch, active.info.run_id, step)
    run = ended(active.info.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
    assert run.info.end_time >= max(m.timestamp for m in client.get_metric_history(run.info.run_id, "loss"))


def test_a_store_that_fails_the_end_gets_it_later_from_the_outbox(experiment_id, tmp_path, monkeypatch, caplog):
    """The store stops answering before an interrupted run ends: the interruption still propagates (not MLflow's
    error), the reason and the end wait in the outbox's file, and importing that file ends the run KILLED."""
    box = outbox.Outbox(tmp_path / outbox.FILENAME, MlflowClient())

    def down(*args, **kwargs):
        raise mlflow.exceptions.MlflowException("store down")

    with interrupted_by(KeyboardInterrupt):
        with runs.run(experiment_id, "lost", {}, outbox=box) as active:
            monkeypatch.setattr(MlflowClient, "log_batch", down)
            monkeypatch.setattr(MlflowClient, "set_terminated", down)
            raise KeyboardInterrupt
    monkeypatch.undo()  # the store answers again
    assert mlflow.active_run() is None
    assert [json.loads(line)["op"] for line in box.path.read_text().splitlines()] == ["tags", "end"]
    assert f"Import them when it answers again: python -m src.outbox import {box.path}" in caplog.text
    assert ended(active.info.run_id).info.status == "RUNNING"
    outbox.replay(box.path, MlflowClient())
    run = ended(active.info.run_id)
    assert (run.info.status, run.data.tags["failure_reason"]) == (
        "KILLED", "KeyboardInterrupt (Ctrl-C): interrupted during training"
    )


def test_a_run_still_ends_when_the_sender_takes_no_more_work(experiment_id, monkeypatch):
    """At interpreter shutdown the sender thread refuses new work: waiting for it must not stop the run's end."""
    stopped = ThreadPoolExecutor(max_workers=1)
    stopped.shutdown()
    monkeypatch.setattr(runs, "_SENDER", stopped)
    with runs.run(experiment_id, "at exit", {}) as active:
        pass
    assert ended(active.info.run_id).info.status == "FINISHED"


# -- Ctrl-C and SIGTERM --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signum, raised, reason",
    [
        (signal.SIGINT, KeyboardInterrupt, "KeyboardInterrupt (Ctrl-C): interrupted during training"),
        (signal.SIGTERM, runs.Terminated, "Terminated: SIGTERM (signal 15): interrupted during training"),
    ],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_during_the_run_ends_it_killed_and_the_handlers_are_restored(
    experiment_id, guard, signum, raised, reason
):
    """SLURM's time limit (SIGTERM) and Ctrl-C raise inside the run; afterwards the previous handlers are back."""
    with interrupted_by(raised):
        with runs.run(experiment_id, "signalled", {}) as active:
            send(signum)
    run = ended(active.info.run_id)
    assert (run.info.status, run.data.tags["failure_reason"]) == ("KILLED", reason)
    assert signal.getsignal(signal.SIGINT) is guard and signal.getsignal(signal.SIGTERM) is guard


@pytest.mark.parametrize(
    "signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, runs.Terminated)], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_swallowed_by_the_framework_still_ends_the_run_killed(experiment_id, guard, signum, raised):
    """A framework's data iterator may swallow the exception: per-batch checks and the run's end raise it again."""
    with interrupted_by(raised):
        with runs.run(experiment_id, "swallowed", {}) as active:
            with interrupted_by(raised):  # stands for the framework swallowing it
                send(signum)
            with interrupted_by(raised):  # what the per-batch callback does
                runs.raise_if_interrupted()
    assert ended(active.info.run_id).info.status == "KILLED"


def test_the_first_signal_is_the_one_raised_again(experiment_id, guard):
    """SIGTERM, then an impatient Ctrl-C: both raise the SIGTERM, so the run ends with the time limit's reason."""
    with interrupted_by(runs.Terminated):
        with runs.run(experiment_id, "twice", {}) as active:
            with interrupted_by(runs.Terminated):
                send(signal.SIGTERM)
            with interrupted_by(runs.Terminated):
                send(signal.SIGINT)
    assert ended(active.info.run_id).data.tags["failure_reason"] == (
        "Terminated: SIGTERM (signal 15): interrupted during training"
    )


def test_a_new_run_forgets_the_previous_runs_interruption(experiment_id, guard):
    """A sweep goes on after one trial was interrupted: the next run is not killed by the old signal."""
    with interrupted_by(KeyboardInterrupt):
        with runs.run(experiment_id, "first", {}):
            send(signal.SIGINT)
    with runs.run(experiment_id, "second", {}) as active:
        runs.raise_if_interrupted()
    assert ended(active.info.run_id).info.status == "FINISHED"


def test_a_run_outside_the_main_thread_leaves_signals_alone(experiment_id, guard):
    """Python sets signal handlers only in the main thread: a run in another thread still works and ends, and the
    signal an earlier run of the main thread saw does not kill it (it did when this test ran after another that
    ended KILLED: CI, 2026-12-07)."""
    with interrupted_by(runs.Terminated):
        with runs.run(experiment_id, "earlier", {}):
            send(signal.SIGTERM)
    result = {}

    def in_thread():
        try:
            with runs.run(experiment_id, "threaded", {}) as active:
                result["handler"] = signal.getsignal(signal.SIGTERM)
            result["run_id"] = active.info.run_id
        except BaseException as err:  # reported below
            result["error"] = err

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join(60)
    assert "error" not in result and result["handler"] is guard
    assert ended(result["run_id"]).info.status == "FINISHED"


# -- reopening a run (a requeued job) ------------------------------------------------------------------------


def test_a_requeued_job_reopens_its_run_and_clears_the_last_stop_reason(experiment_id):
    with interrupted_by(runs.Terminated):
        with runs.run(experiment_id, "requeued", {}) as first:
            raise runs.Terminated("SIGTERM (signal 15)")
    with runs.run(experiment_id, "requeued", {"attempt": "2"}, resume_run_id=first.info.run_id) as again:
        assert again.info.run_id == first.info.run_id
    run = ended(first.info.run_id)
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags and run.data.tags["attempt"] == "2"


@pytest.mark.parametrize("where", ["unknown", "deleted", "other experiment"])
def test_a_run_that_is_gone_or_elsewhere_is_not_reopened(experiment_id, store, where, caplog):
    """A backup whose run was deleted, never existed here, or belongs to another experiment starts a new run."""
    client = MlflowClient()
    if where == "unknown":
        old = "0" * 32
    else:
        home = experiment_id if where == "deleted" else stores.connect(store, f"elsewhere-{experiment_id}")
        old = client.create_run(home).info.run_id
        client.set_terminated(old, "KILLED")
        if where == "deleted":
            client.delete_run(old)
    with runs.run(experiment_id, "fresh", {}, resume_run_id=old) as active:
        pass
    assert active.info.run_id != old
    run = ended(active.info.run_id)
    assert (run.info.experiment_id, run.info.run_name, run.info.status) == (experiment_id, "fresh", "FINISHED")
    assert f"The backup's MLflow run {old} is gone or elsewhere: starting a new run" in caplog.messages


# -- params of a new and of a resumed run --------------------------------------------------------------------


def test_a_new_run_logs_every_param(experiment_id):
    client = MlflowClient()
    active = client.get_run(client.create_run(experiment_id).info.run_id)
    runs.log_params(active, {"seed": "1", "trainer.epochs": "3"})
    run = client.get_run(active.info.run_id)
    assert run.data.params == {"seed": "1", "trainer.epochs": "3"}
    assert not [k for k in run.data.tags if k.startswith("resumed.")]


def test_a_resumed_run_keeps_its_params_and_tags_what_changed(experiment_id):
    """MLflow refuses to change a param: a value given differently now becomes a `resumed.<key>` tag (key and
    value cut to MLflow's limits); a value MLflow had cut to 6000 characters is the same value; new keys are params."""
    client = MlflowClient()
    long_key = "k" * 250
    run_id = client.create_run(experiment_id).info.run_id
    for key, value in {"seed": "1", "trainer.epochs": "3", "long": "x" * 6000, long_key: "old"}.items():
        client.log_param(run_id, key, value)
    active = client.get_run(run_id)
    runs.log_params(active, {
        "seed": "1",  # unchanged
        "trainer.epochs": "5",  # more epochs on resume
        "long": "x" * 6001,  # stored cut at 6000: unchanged
        long_key: "w" * 6000,
        "trainer.backup_dir": "/new",  # a key the run did not have
    })
    run = client.get_run(run_id)
    assert run.data.params == {
        "seed": "1", "trainer.epochs": "3", "long": "x" * 6000, long_key: "old", "trainer.backup_dir": "/new",
    }
    resumed = {k: v for k, v in run.data.tags.items() if k.startswith("resumed.")}
    assert resumed == {"resumed.trainer.epochs": "5", f"resumed.{long_key}"[:250]: "w" * 5000}


# -- the sender thread and final metrics ---------------------------------------------------------------------


def test_sends_run_in_order_and_wait_for_metrics_waits_for_all_of_them():
    done = []

    def slow(i):
        time.sleep(0.05 if i == 0 else 0)
        done.append(i)
        return i * 10

    futures = [runs.send_later(slow, i) for i in range(4)]
    runs.wait_for_metrics()
    assert done == [0, 1, 2, 3]
    assert [f.result(0) for f in futures] == [0, 10, 20, 30]


def test_a_failed_send_does_not_break_waiting_or_later_sends():
    """A send's error goes to its own future (its callback reports it); waiting and later sends go on."""
    def broken():
        raise OSError("store down")

    failed = runs.send_later(broken)
    later = runs.send_later(lambda: "sent")
    runs.wait_for_metrics()
    assert isinstance(failed.exception(0), OSError)
    assert later.result(0) == "sent"


class Down:
    """A store that answers nothing: every record stays in the outbox's file."""

    tracking_uri = "http://down:5000"

    def log_batch(self, *args, **kwargs):
        raise OSError("down")


def test_final_metrics_are_kept_at_step_0_with_the_current_time(tmp_path):
    """test_loss/test_accuracy at step 0, now, as plain floats (Keras may hand numpy numbers) so the outbox can
    keep them while the store is down."""
    box = outbox.Outbox(tmp_path / outbox.FILENAME, Down())
    before = int(time.time() * 1000)
    runs.log_final_metrics(box, "r", {"test_loss": np.float32(0.25), "test_accuracy": 1})
    after = int(time.time() * 1000)
    (record,) = [json.loads(line) for line in box.path.read_text().splitlines()]
    assert (record["run_id"], record["op"]) == ("r", "metrics")
    points = [(key, value, step) for key, value, _, step in record["metrics"]]
    assert points == [("test_loss", 0.25, 0), ("test_accuracy", 1.0, 0)]
    assert all(type(value) is float for _, value, _, _ in record["metrics"])
    assert all(before <= timestamp <= after for _, _, timestamp, _ in record["metrics"])



def test_a_short_run_gets_a_curve_of_system_metrics_at_the_default_interval(experiment_id):
    """At the default 10 s interval a 12 s run had one sample (a bar in the UI): the first minute is sampled every
    second, so a 6 s run has at least 5 points, at consecutive steps."""
    with runs.run(experiment_id, "short", {}, system_metrics=10.0) as active:
        time.sleep(6.2)
    history = MlflowClient().get_metric_history(active.info.run_id, "system/cpu_utilization_percentage")
    steps = sorted(m.step for m in history)
    assert len(steps) >= 5, steps
    assert steps == list(range(len(steps)))


def test_after_the_first_minute_the_configured_interval_applies():
    monitor = runs.SystemMetrics.__new__(runs.SystemMetrics)  # the schedule alone: no run, no thread
    monitor._interval, monitor._started = 10.0, time.monotonic()
    assert monitor.sampling_interval == 1.0
    monitor._started -= runs.SystemMetrics.FIRST_MINUTE_S
    assert monitor.sampling_interval == 10.0
    monitor._interval = 0.2  # a shorter interval than the first minute's is kept
    assert monitor.sampling_interval == 0.2
