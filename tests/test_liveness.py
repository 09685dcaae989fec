"""No run left RUNNING by a dead process (src/tracking/liveness.py): owners, heartbeats, reconciling the store.

Runs are real, in a real SQLite store and behind a real `mlflow server`; their owners are real
processes (dead, alive, or a pid that now belongs to someone else) or tags of "another host".
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from cli_runs import SLOW, run, start, wait_for_epochs
from conftest import base_overrides
from mlflow.tracking import MlflowClient
from mlflow_server import MlflowServer

from src import compare
from src.tracking import liveness


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    found = MlflowServer(tmp_path_factory.mktemp("server")).start()
    yield found
    found.kill()


@pytest.fixture(params=["sqlite", "server"])
def uri(request, store, server):
    return store if request.param == "sqlite" else server.uri


@pytest.fixture
def experiment(store, request) -> str:
    return "test-" + request.node.name.replace("[", "-").replace("]", "")


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def me() -> dict:
    return liveness.owner_tags()


def test_reconcile_ends_dead_owners_only(uri, experiment, tmp_path, monkeypatch):
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(experiment)
    hour_ago = f"{time.time() - 3600:.0f}"
    owners = {
        "alive here": me(),
        "dead pid here": {**me(), liveness.PID: str(dead_pid())},
        "pid reused here": {**me(), liveness.STARTED: "1"},  # our pid, but started at another time
        "rebooted here": {**me(), liveness.BOOT: "another-boot"},
        "other host, fresh heartbeat": {liveness.HOST: "node-7", liveness.PID: "1", liveness.HEARTBEAT: f"{time.time():.0f}"},
        "other host, stale heartbeat": {liveness.HOST: "node-7", liveness.PID: "1", liveness.HEARTBEAT: hour_ago},
        "slurm job running": {liveness.HOST: "node-8", liveness.SLURM_JOB: "111", liveness.HEARTBEAT: hour_ago},
        "slurm job gone": {liveness.HOST: "node-8", liveness.SLURM_JOB: "222", liveness.HEARTBEAT: f"{time.time():.0f}"},
    }
    ids = {name: client.create_run(experiment_id, tags=tags, run_name=name).info.run_id for name, tags in owners.items()}
    for run_id in ids.values():
        client.log_metric(run_id, "loss", 0.5, step=1)
    # squeue as a SLURM controller answers: job 111 still runs, job 222 was purged after it ended
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text('#!/bin/sh\ncase "$*" in *111*) echo RUNNING;; '
                                   '*) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1;; esac\n')
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    assert compare.main([experiment, "--tracking-uri", uri, "--out", str(tmp_path / "out"), "--no-log"]) == 0

    found = {name: client.get_run(run_id) for name, run_id in ids.items()}
    status = {name: run.info.status for name, run in found.items()}
    assert status == {
        "alive here": "RUNNING", "dead pid here": "FAILED", "pid reused here": "FAILED", "rebooted here": "FAILED",
        "other host, fresh heartbeat": "RUNNING", "other host, stale heartbeat": "FAILED",
        "slurm job running": "RUNNING", "slurm job gone": "FAILED",
    }
    reason = {name: run.data.tags.get("failure_reason", "") for name, run in found.items()}
    assert "is gone (killed or crashed" in reason["dead pid here"]
    assert "the pid now belongs to another process" in reason["pid reused here"]
    assert "the host rebooted" in reason["rebooted here"]
    assert "no heartbeat from node-7 for 60 min (timeout 15 min)" in reason["other host, stale heartbeat"]
    assert "SLURM job 222 is no longer running" in reason["slurm job gone"]
    for run in found.values():
        assert run.data.metrics == {"loss": 0.5}  # metrics stay


def test_heartbeat_thread_refreshes_the_tag(store, experiment):
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment(experiment), tags={liveness.HEARTBEAT: "0"}).info.run_id
    beating = liveness.Heartbeat(client, run_id, interval=0.05).start()
    time.sleep(1)
    beating.stop()
    assert time.time() - float(client.get_run(run_id).data.tags[liveness.HEARTBEAT]) < 5


def test_short_epochs_do_not_each_beat(store, experiment, monkeypatch):
    """Sub-second epochs would write a tag each (CPU beside training): an epoch's end beats only when the last
    epoch beat is EPOCH_BEAT_S old; the run's Heartbeat thread beats in between."""
    from src.training import callbacks

    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment(experiment)).info.run_id
    metrics = callbacks.MLflowMetrics(run_id, client=client)

    def beat() -> str:
        return client.get_run(run_id).data.tags[liveness.HEARTBEAT]

    for epoch in range(3):
        metrics.on_epoch_end(epoch, {"loss": 0.5})
        metrics.on_train_end()
        if epoch == 0:
            assert time.time() - float(beat()) < 5
            client.set_tag(run_id, liveness.HEARTBEAT, "0")
    assert beat() == "0"  # epochs 2 and 3 came within EPOCH_BEAT_S of epoch 1's beat
    monkeypatch.setattr(liveness, "EPOCH_BEAT_S", 0.0)
    metrics.on_epoch_end(3, {"loss": 0.5})
    metrics.on_train_end()
    assert time.time() - float(beat()) < 5


def test_a_live_concurrent_run_is_never_touched(data_dir, store, experiment, tmp_path):
    """Process A trains; process B trains the same experiment and compare runs: A stays RUNNING."""
    client = MlflowClient(store)
    a = start([*base_overrides(data_dir, store, experiment), "trainer.epochs=10000", *SLOW], tmp_path / "a")
    try:
        wait_for_epochs(a, tmp_path / "a", 1)
        b = run(["python", "-m", "src.train", *base_overrides(data_dir, store, experiment)], tmp_path)
        assert b.returncode == 0, b.stdout[-3000:]
        compared = run(["python", "-m", "src.compare", experiment, "--tracking-uri", store,
                        "--out", str(tmp_path / "compare"), "--no-log"], tmp_path)
        assert compared.returncode == 0, compared.stdout[-3000:]
        runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        by_owner = {r.data.tags[liveness.PID]: r for r in runs}
        assert by_owner[str(a.pid)].info.status == "RUNNING"
        assert "failure_reason" not in by_owner[str(a.pid)].data.tags
        assert [r.info.status for r in runs if r.data.tags[liveness.PID] != str(a.pid)] == ["FINISHED"]
        assert a.poll() is None  # and A trains on
        a.send_signal(signal.SIGTERM)
        a.communicate(timeout=120)
        assert client.get_run(by_owner[str(a.pid)].info.run_id).info.status == "KILLED"
    finally:
        a.kill()


def test_a_sweep_whose_driver_died_is_ended(data_dir, store, experiment, tmp_path):
    """kill -9 of a local sweep's driver: the parent and its running child are ended FAILED by compare."""
    args = ["-m", *base_overrides(data_dir, store, experiment), "trainer.epochs=10000", *SLOW, "seed=0,1"]
    driver = start(args, tmp_path)
    try:
        wait_for_epochs(driver, tmp_path, 2, pattern="multirun/*/*/*/backup")  # epoch 1 is in MLflow
        driver.send_signal(signal.SIGKILL)
        driver.communicate(timeout=60)
    finally:
        driver.kill()
    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    assert {r.info.status for r in client.search_runs([experiment_id])} == {"RUNNING"}
    compared = run(["python", "-m", "src.compare", experiment, "--tracking-uri", store,
                    "--out", str(tmp_path / "compare"), "--no-log"], tmp_path)
    assert compared.returncode == 0, compared.stdout[-3000:]
    runs = client.search_runs([experiment_id])
    [parent] = [r for r in runs if "sweep.dir" in r.data.tags]
    [child] = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    expected = f"its process {driver.pid} on {socket.gethostname()} is gone"
    for found in (parent, child):
        assert found.info.status == "FAILED"
        assert expected in found.data.tags["failure_reason"]
    assert child.data.metrics["loss"] > 0  # its epochs stay


def test_every_epoch_beats(store, experiment):
    """MLflowMetrics refreshes the heartbeat at each epoch's end (on the sender thread)."""
    from src.training import callbacks

    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment(experiment), tags={liveness.HEARTBEAT: "0"}).info.run_id
    metrics = callbacks.MLflowMetrics(run_id, client=client)
    metrics.on_epoch_begin(0)
    metrics.on_epoch_end(0, {"loss": 0.5})
    metrics.on_train_end()
    assert time.time() - float(client.get_run(run_id).data.tags[liveness.HEARTBEAT]) < 5


def test_reconcile_and_the_sweep_summary_read_every_page_of_runs(store, experiment, monkeypatch):
    """Past one page of search results (1000 runs in MLflow; 2 here), no dead run and no child is missed."""
    from src.tracking import store as store_module
    from src.sweeps import sweep

    monkeypatch.setattr(store_module, "PAGE_SIZE", 2)
    client = MlflowClient(store)
    experiment_id = client.create_experiment(experiment)
    parent = client.create_run(experiment_id, run_name="sweep").info.run_id
    dead = {**me(), liveness.PID: str(dead_pid())}
    children = [
        client.create_run(experiment_id, tags={**dead, "mlflow.parentRunId": parent, "sweep.job_num": str(i)}).info.run_id
        for i in range(5)
    ]
    assert [r.info.run_id for r in sweep._children(client, parent)] == children
    assert sorted(liveness.reconcile(client, [experiment_id])) == sorted(children)


def test_at_a_sweeps_end_one_rule_judges_its_children(tmp_path, monkeypatch):
    """The sweep driver asks liveness, with its one set of SLURM states: a job that ran in the driver's own (live)
    process and returned without ending its run is dead, in a SLURM allocation too; a SLURM job of its own that
    squeue still lists (requeued) is not."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text('#!/bin/sh\ncase "$*" in *111*) echo REQUEUED;; *) echo COMPLETED;; esac\n')
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    local = me()  # the basic launcher: the child's owner is the driver itself, alive
    assert liveness.why_dead(local) is None
    assert "its job ended without ending the run" in liveness.why_dead(local, job_returned=True)
    # the basic launcher inside a SLURM allocation (salloc, an sbatch script): squeue still lists the driver's job
    in_allocation = {**local, liveness.SLURM_JOB: "111"}
    assert "its job ended without ending the run" in liveness.why_dead(in_allocation, job_returned=True)
    other = {**in_allocation, liveness.PID: str(os.getppid()), liveness.STARTED: liveness.start_ticks(os.getppid())}
    assert liveness.why_dead(other, job_returned=True) is None  # another live process's job is not the driver's
    requeued = {liveness.HOST: "node-8", liveness.SLURM_JOB: "111", liveness.HEARTBEAT: f"{time.time():.0f}"}
    assert liveness.why_dead(requeued, job_returned=True) is None
    ended = {**requeued, liveness.SLURM_JOB: "222"}
    assert "SLURM job 222 is no longer running (squeue: COMPLETED)" in liveness.why_dead(ended, job_returned=True)
