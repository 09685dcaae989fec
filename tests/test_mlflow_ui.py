"""The documented UI one-liner: the real `mlflow ui` on a SQLite store, bound to 127.0.0.1, finds the runs.

    mlflow ui --backend-store-uri sqlite:///$PWD/mlruns/mlflow.db --host 127.0.0.1 --port 5000
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from src.tracking import store as stores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, payload: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read()


@pytest.fixture
def ui(store, tmp_path):
    """`mlflow ui` exactly as the docs start it (store.ui_command), on a free port; stopped afterwards."""
    port = free_port()
    command = stores.ui_command(store).replace("--port 5000", f"--port {port}").split()
    assert command[:2] == ["mlflow", "ui"] and "127.0.0.1" in command
    log = open(tmp_path / "ui.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", *command[1:]], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if get(url + "/health")[0] == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow ui did not start:\n{(tmp_path / 'ui.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_ui_finds_the_runs_through_its_rest_api(train_run, experiment, store, ui):
    _, first = train_run("tracking.log_model=false")
    _, second = train_run("tracking.log_model=false", "model.activation=tanh")

    status, body = get(f"{ui}/api/2.0/mlflow/experiments/get-by-name?experiment_name={urllib.parse.quote(experiment)}")
    experiment_id = json.loads(body)["experiment"]["experiment_id"]
    status, body = get(f"{ui}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})
    assert status == 200
    found = {r["info"]["run_id"]: r for r in json.loads(body)["runs"]}
    assert set(found) == {first.info.run_id, second.info.run_id}
    for run in (first, second):
        metrics = {m["key"]: m["value"] for m in found[run.info.run_id]["data"]["metrics"]}
        assert metrics["test_accuracy"] == pytest.approx(run.data.metrics["test_accuracy"])
        params = {p["key"]: p["value"] for p in found[run.info.run_id]["data"]["params"]}
        assert params["model.activation"] == run.data.params["model.activation"]

    # The per-epoch history the UI's charts draw, and the history plot its artifact view shows.
    status, body = get(f"{ui}/api/2.0/mlflow/metrics/get-history?run_id={first.info.run_id}&metric_key=val_loss")
    assert [m["step"] for m in json.loads(body)["metrics"]] == [1]
    status, body = get(f"{ui}/get-artifact?path=plots/history.png&run_uuid={first.info.run_id}")
    assert body[:8] == b"\x89PNG\r\n\x1a\n"
    status, body = get(ui + "/")
    assert status == 200 and b"<html" in body.lower()
