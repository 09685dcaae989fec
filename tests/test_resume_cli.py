"""README's resume recipe, followed literally with real processes: `python -m src.train` interrupted
after epoch 2 of 4 (Ctrl-C, SIGTERM or kill -9), then the printed (or documented) command.

The resumed run must be the same MLflow run, have epochs 1-4 exactly once, end FINISHED, start
epoch 3 from epoch 2's weights, and remove the checkpoint only once FINISHED.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest
from cli_runs import SLOW, printed_resume_command, run, start, wait_for_epochs
from conftest import base_overrides
from mlflow.tracking import MlflowClient
from mlflow_server import MlflowServer

# A shell without the venv activated: no venv on PATH, no VIRTUAL_ENV.
OUTSIDE_VENV = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
OUTSIDE_VENV["PATH"] = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if ".venv" not in p)
KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s")


@pytest.fixture
def experiment(store, request) -> str:
    """A fresh experiment per test, named without the brackets of parametrized ids (Hydra's grammar)."""
    return "test-" + request.node.name.replace("[", "-").replace("]", "")


def output_of_start(output: str) -> str:
    return "\n".join(line for line in output.splitlines()[:80])


def the_run(client: MlflowClient, experiment: str):
    [found] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return found


def steps(client, run_id):
    return {k: sorted(m.step for m in client.get_metric_history(run_id, k)) for k in KEYS}


def check_resumed(client, experiment, run_id, backup, output):
    finished = the_run(client, experiment)
    assert finished.info.run_id == run_id, output  # the same run, not a new one
    assert finished.info.status == "FINISHED"
    assert "failure_reason" not in finished.data.tags
    assert finished.data.params["trainer.backup_dir"] == "None"  # the first start's value stays,
    assert finished.data.tags["resumed.trainer.backup_dir"] == str(backup)  # the resume's is a tag
    assert steps(client, run_id) == {k: [1, 2, 3, 4] for k in KEYS}  # each epoch exactly once
    loss = {m.step: m.value for m in client.get_metric_history(run_id, "loss")}
    # Epoch 3 continued from epoch 2's weights: a restart from scratch would be back near epoch 1's loss.
    assert loss[3] < loss[1] / 10, loss
    assert not backup.exists()  # removed once the run FINISHED


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_interrupted_run_resumes_with_the_printed_command(signum, data_dir, store, experiment, tmp_path):
    args = [*base_overrides(data_dir, store, experiment), "trainer.epochs=4", *SLOW]
    process = start(args, tmp_path)
    try:
        backup = wait_for_epochs(process, tmp_path, 2)
        process.send_signal(signum)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, output
    client = MlflowClient(store)
    killed = the_run(client, experiment)
    assert killed.info.status == "KILLED"
    assert backup.is_dir()  # kept: the run did not finish

    # the interrupt names the folders (the start's lines may have scrolled away), then the command
    interrupted = output[output.index("Interrupted:"):]
    assert f"Output folder: {backup.parent}\n  checkpoint of the last finished epoch: {backup}\n" in interrupted
    command = printed_resume_command(interrupted)
    # this interpreter, by its path: it works outside an activated venv (a bare `python` has no Hydra there)
    assert command[:3] == [sys.executable, "-m", "src.train"] and command[-1] == f"trainer.backup_dir={backup}"
    assert command[3:-1] == args  # the original overrides, unchanged
    resumed = run(command, tmp_path, env=OUTSIDE_VENV)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "Resuming from" in resumed.stdout and "(resumed)" in resumed.stdout
    check_resumed(client, experiment, killed.info.run_id, backup, resumed.stdout)


@pytest.fixture(params=["sqlite", "server"])
def tracking_uri(request, store, tmp_path_factory):
    if request.param == "sqlite":
        yield store
        return
    server = MlflowServer(tmp_path_factory.mktemp("server")).start()
    try:
        yield server.uri
    finally:
        server.kill()


def test_killed_run_is_found_dead_then_resumed(tracking_uri, data_dir, experiment, tmp_path):
    """kill -9: nothing ends the run; compare finds it dead (FAILED), the documented command resumes it."""
    args = [*base_overrides(data_dir, tracking_uri, experiment), "trainer.epochs=4", *SLOW]
    process = start(args, tmp_path)
    try:
        backup = wait_for_epochs(process, tmp_path, 2)
        process.send_signal(signal.SIGKILL)
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    client = MlflowClient(tracking_uri)
    left = the_run(client, experiment)
    assert left.info.status == "RUNNING"  # the dead process could not end it
    logged = steps(client, left.info.run_id)["loss"]
    assert logged in ([1], [1, 2])  # epoch 2 may not have reached the store before the kill

    compared = run(["python", "-m", "src.compare", experiment, "--tracking-uri", tracking_uri,
                    "--out", str(tmp_path / "compare"), "--no-log"], tmp_path)
    assert compared.returncode == 0, compared.stdout[-3000:]
    failed = the_run(client, experiment)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["failure_reason"] == (
        f"Found dead by a later process: its process {process.pid} on {socket.gethostname()} is gone "
        "(killed or crashed without ending the run)"
    )
    assert steps(client, failed.info.run_id)["loss"] == logged  # its metrics stay
    assert "FAILED" in compared.stdout
    assert backup.is_dir()

    # The run said at its start where its checkpoint is and how to resume it: nothing to guess after a kill -9.
    started = output_of_start(output)
    assert f"checkpoint of the last finished epoch: {backup}" in started
    assert failed.data.tags["backup_dir"] == str(backup) and (Path(failed.data.tags["output_dir"]) / "backup") == backup
    command = printed_resume_command(started, prefix="if this run dies, resume it with:")
    assert command == [sys.executable, "-m", "src.train", *args, f"trainer.backup_dir={backup}"]
    resumed = run(command, tmp_path, env=OUTSIDE_VENV)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    check_resumed(client, experiment, failed.info.run_id, backup, resumed.stdout)
