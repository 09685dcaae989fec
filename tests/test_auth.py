"""MLflow's basic-auth app started by slurm/mlflow_server.sh (MLFLOW_AUTH=1) on 127.0.0.1: a real server."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mlflow_server import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("auth-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LE5_"))}
    env.update(MLFLOW_AUTH="1", MLFLOW_PORT=str(port), MLFLOW_WORKERS="1", XDG_CONFIG_HOME=str(folder / "config"),
               MLFLOW_BACKEND_STORE_URI=f"sqlite:///{folder / 'mlflow.db'}",
               MLFLOW_ARTIFACTS_DESTINATION=str(folder / "artifacts"), MLFLOW_AUTH_DIR=str(folder / "auth"))
    log = open(folder / "server.log", "w")
    process = subprocess.Popen(["bash", str(ROOT / "slurm/mlflow_server.sh")], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, (folder / "server.log").read_text()
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).close()
            break
        except OSError:
            time.sleep(0.5)
    yield uri, folder
    os.killpg(process.pid, 9)
    process.wait(timeout=30)


def test_credentials_file_is_private_and_unauthenticated_rest_is_refused(server):
    uri, folder = server
    path = folder / "config" / "le5" / "mlflow-credentials"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    password = dict(line.split("=", 1) for line in path.read_text().splitlines())["password"]
    assert password not in (folder / "server.log").read_text()  # the script prints the path, never the password
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(uri + "/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    assert err.value.code == 401


def test_file_readable_by_others_is_refused_with_the_chmod(tmp_path):
    from src.tracking import auth

    path = tmp_path / "mlflow-credentials"
    path.write_text("username=a\npassword=b\n")
    path.chmod(0o644)
    with pytest.raises(auth.AuthError, match=f"chmod 600 {path}"):
        auth.credentials({"LE5_MLFLOW_CREDENTIALS": str(path)})
    with pytest.raises(auth.AuthError):
        auth.credentials({"MLFLOW_TRACKING_USERNAME": "a", "MLFLOW_TRACKING_PASSWORD": ""})


def test_owner_trains_and_a_second_user_cannot_write(server, data_dir, tmp_path, monkeypatch):
    import mlflow
    from mlflow.server import get_app_client

    from conftest import base_overrides, compose, train_composed
    from src.tracking import auth

    uri, folder = server
    monkeypatch.setenv("XDG_CONFIG_HOME", str(folder / "config"))
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    cfg = compose([*base_overrides(data_dir, uri, "owned"), "trainer.epochs=1"], output_dir=tmp_path / "run")
    train_composed(cfg)
    run = mlflow.search_runs(experiment_names=["owned"], output_format="list")[0]
    assert run.info.status == "FINISHED"
    password = os.environ["MLFLOW_TRACKING_PASSWORD"]
    assert password not in str(run.data.params) + str(run.data.tags)

    get_app_client("basic-auth", tracking_uri=uri).create_user(username="labmate", password="labmate-pw-123")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "labmate")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "labmate-pw-123")
    from src.tracking import store

    with pytest.raises(auth.AuthError, match="owned"):
        store.connect(uri, "owned")
