"""MLflow's basic-auth app started by slurm/mlflow_server.sh (MLFLOW_AUTH=1) on 127.0.0.1: a real server.

The project's processes authenticate from the owner's credentials file alone (no variables set) or from
the variables; the password must not appear anywhere a test can look.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, base_overrides, child_env, compose, train_composed
from mlflow_server import AuthServer, MlflowServer
from src.errors import UserError
from src.tracking import auth, outbox

CREDENTIAL_VARS = (auth.USER_VAR, auth.PASSWORD_VAR, "LE5_MLFLOW_CREDENTIALS")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    started = AuthServer(tmp_path_factory.mktemp("auth-server")).start()
    yield started
    started.kill()


@pytest.fixture
def as_owner(server, monkeypatch):
    """This process authenticates through the owner's credentials file only, as a job on the shared home does."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(server.config_home))
    for var in CREDENTIAL_VARS:
        monkeypatch.setenv(var, "")  # recorded, so what auth.load() exports is removed after the test
        monkeypatch.delenv(var)
    return server


def file_only_env(server: AuthServer, **extra) -> dict[str, str]:
    """A child's environment whose only credentials are the owner's file (XDG_CONFIG_HOME)."""
    env = {k: v for k, v in child_env().items() if k not in CREDENTIAL_VARS}
    return {**env, "XDG_CONFIG_HOME": str(server.config_home), **extra}


def no_credentials_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in child_env().items() if k not in CREDENTIAL_VARS}
    return {**env, "XDG_CONFIG_HOME": str(tmp_path / "nobody")}


def test_credentials_file_is_private_and_unauthenticated_rest_is_refused(server):
    assert oct(server.credentials.stat().st_mode & 0o777) == "0o600"
    assert server.password() not in (server.folder / "server.log").read_text()  # the path is printed, never it
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.uri + "/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    assert err.value.code == 401


def test_file_readable_by_others_or_an_empty_password_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "mlflow-credentials"
    path.write_text("username=a\npassword=b\n")
    path.chmod(0o644)
    with pytest.raises(auth.AuthError, match=f"chmod 600 {path}"):
        auth.credentials({"LE5_MLFLOW_CREDENTIALS": str(path)})
    path.chmod(0o600)
    path.write_text("username=a\npassword=\n")
    with pytest.raises(auth.AuthError, match="non-empty password"):
        auth.credentials({"LE5_MLFLOW_CREDENTIALS": str(path)})
    with pytest.raises(auth.AuthError, match="both be set and non-empty"):
        auth.credentials({auth.USER_VAR: "a", auth.PASSWORD_VAR: ""})


@contextlib.contextmanager
def stalling_server(stalled_requests: int):
    """A stand-in server on 127.0.0.1 that leaves its first `stalled_requests` requests unanswered (as an MLflow
    server busy with sixteen jobs' writes does) and answers the rest 200 {}."""
    release = threading.Event()
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            if len(seen) <= stalled_requests:
                release.wait(60)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def patient_for_one_second(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")


def test_the_credentials_probe_waits_and_retries_as_mlflows_own_calls_do(patient_for_one_second):
    with stalling_server(stalled_requests=1) as (uri, seen):
        assert auth.requires_auth(uri) is False  # the first request timed out after 1 s; the retry answered 200
    assert len(seen) == 2


def test_a_server_that_never_answers_the_probe_is_one_clear_error(patient_for_one_second):
    with stalling_server(stalled_requests=99) as (uri, _):
        with pytest.raises(UserError, match=r"(?s)did not answer the credentials check.*MLFLOW_HTTP_REQUEST_TIMEOUT"):
            auth.requires_auth(uri)


@pytest.mark.processes  # a real mlflow server
def test_credentials_for_a_server_without_authentication_warn_once_and_the_run_goes_on(tmp_path, monkeypatch,
                                                                                        caplog):
    from src.tracking import store

    plain = MlflowServer(tmp_path / "plain").start()
    try:
        monkeypatch.setenv(auth.USER_VAR, "me")
        monkeypatch.setenv(auth.PASSWORD_VAR, "unused-pw")
        with caplog.at_level("WARNING"):
            assert store.connect(plain.uri, "plain")
        warned = [r.getMessage() for r in caplog.records if "no authentication" in r.getMessage()]
        assert warned == [f"credentials are set ({auth.USER_VAR}) but the MLflow server at {plain.uri} has no "
                          "authentication; going on."]
        ok, line = auth.describe(plain.uri, "plain")
        assert ok and "requires none: anyone who can reach it can write" in line and "set but unused" in line
    finally:
        plain.kill()


@pytest.mark.processes  # src.doctor probes the other backends in processes
def test_owner_trains_and_others_get_only_the_permission_granted(as_owner, data_dir, tmp_path, monkeypatch, capsys):
    from mlflow.server import get_app_client

    from src.tracking import store

    uri, experiment = as_owner.uri, "owned"
    cfg = compose([*base_overrides(data_dir, uri, experiment), "trainer.epochs=1"], output_dir=tmp_path / "run")
    train_composed(cfg)
    [run] = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert run.info.status == "FINISHED"
    assert [m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, "val_loss")] == [1]
    ok, line = auth.describe(uri, experiment)
    assert ok and line.endswith(f"authenticates as {as_owner.username()!r}; "
                                f"experiment {experiment!r}: this user can write to it"), line
    ok, line = auth.describe(uri, "not-made-yet")
    assert ok and "it does not exist yet: this user's first run creates it" in line

    # README, cluster section: a labmate's account, then read access to one experiment (run here as the owner)
    auth.load()  # the owner's credentials, from the file
    admin = get_app_client("basic-auth", tracking_uri=uri)
    admin.create_user(username="labmate", password="labmate-pw-123")
    monkeypatch.setenv(auth.USER_VAR, "labmate")
    monkeypatch.setenv(auth.PASSWORD_VAR, "labmate-pw-123")
    with pytest.raises(auth.AuthError, match=f"no permission to write to experiment {experiment!r}"):
        store.connect(uri, experiment)  # NO_PERMISSIONS by default: not even read
    assert not auth.describe(uri, experiment)[0]

    monkeypatch.setenv(auth.USER_VAR, as_owner.username())
    monkeypatch.setenv(auth.PASSWORD_VAR, as_owner.password())
    experiment_id = MlflowClient(uri).get_experiment_by_name(experiment).experiment_id
    admin.grant_user_permission(username="labmate", resource_type="experiment", resource_id=experiment_id,
                                permission="READ")
    monkeypatch.setenv(auth.USER_VAR, "labmate")
    monkeypatch.setenv(auth.PASSWORD_VAR, "labmate-pw-123")
    assert MlflowClient(uri).get_run(run.info.run_id).info.status == "FINISHED"  # reads
    with pytest.raises(auth.AuthError, match=f"no permission to write to experiment {experiment!r}"):
        store.connect(uri, experiment)  # refused before any data loads, not at the run's first write
    ok, line = auth.describe(uri, experiment)
    assert not ok and line.endswith("(this user can read it)"), line
    from src import doctor

    capsys.readouterr()
    code = doctor.run([*base_overrides(data_dir, uri, experiment)])
    lines = capsys.readouterr().out.splitlines()
    assert f"✗ {line}" in lines and code == 1 and lines[-1].startswith("cannot run"), lines

    monkeypatch.setenv(auth.PASSWORD_VAR, "wrong")
    ok, line = auth.describe(uri, experiment)
    assert not ok and "as 'labmate' (401: authentication required)" in line and auth.PASSWORD_VAR in line


class KillServerAfter(__import__("keras").callbacks.Callback):
    def __init__(self, server, epoch: int):
        super().__init__()
        self.server, self.epoch = server, epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            from src.tracking.runs import wait_for_metrics

            wait_for_metrics()  # this epoch reaches the server before it goes
            self.server.kill()


def test_the_outbox_and_compare_authenticate_from_the_credentials_file(as_owner, data_dir, tmp_path, monkeypatch):
    """The server lost after epoch 1 and back: its backlog imported, then compared, with the file's credentials."""
    from src import train

    uri, experiment = as_owner.uri, "backlog"
    real = train._callbacks
    monkeypatch.setattr(train, "_callbacks", lambda *a: [*real(*a), KillServerAfter(as_owner, epoch=0)])
    output_dir = tmp_path / "run"
    try:
        train_composed(compose([*base_overrides(data_dir, uri, experiment), "trainer.epochs=3"], output_dir=output_dir))
    finally:
        as_owner.start()  # back, on the same store, port and users
    pending = output_dir / outbox.FILENAME
    importer = [sys.executable, "-m", "src.outbox", "import", str(pending)]

    refused = subprocess.run(importer, cwd=ROOT, env=no_credentials_env(tmp_path), capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "(401: authentication required)" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and pending.exists()  # kept for the next try

    imported = subprocess.run(importer, cwd=ROOT, env=file_only_env(as_owner), capture_output=True, text=True,
                              timeout=120)
    assert imported.returncode == 0, imported.stderr
    assert "imported" in imported.stdout and not pending.exists()
    [run] = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, "val_loss")) == [1, 2, 3]

    compare = [sys.executable, "-m", "src.compare", experiment, "--tracking-uri", uri, "--out", str(tmp_path / "c")]
    shown = subprocess.run(compare, cwd=ROOT, env=file_only_env(as_owner), capture_output=True, text=True, timeout=180)
    assert shown.returncode == 0, shown.stderr
    assert run.info.run_id[:8] in shown.stdout
    refused = subprocess.run(compare, cwd=ROOT, env=no_credentials_env(tmp_path), capture_output=True, text=True,
                             timeout=180)
    assert refused.returncode == 2 and "(401: authentication required)" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


def files_holding(secret: str, *folders: Path) -> list[str]:
    """Every file under `folders` whose bytes contain `secret`."""
    files = [p for f in map(Path, folders) for p in ([f] if f.is_file() else f.rglob("*")) if p.is_file()]
    return [str(p) for p in files if secret.encode() in p.read_bytes()]


def assert_nowhere_in_the_store(secret: str, uri: str, experiment: str, tmp_path: Path) -> int:
    """Not in any run's params, tags, metric keys or artifacts (downloaded whole). Returns the runs searched."""
    auth.load()  # this process reads as the owner too (the file)
    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    for run in found:
        assert secret not in repr(run.data.params) + repr(run.data.tags) + repr(run.data.metrics)
        local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts" / run.info.run_id)))
        assert not files_holding(secret, local)
    return len(found)


def test_no_secret_in_a_sweeps_output_records_or_store(as_owner, data_dir, tmp_path):
    """A 2-point sweep whose only credentials are the file: the password is in no log line, output file, MLflow
    param, tag or artifact (the resolved config and provenance among them), nor in the server's own files."""
    experiment, secret = "no-secret", as_owner.password()
    sweep_dir = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "src.train", "-m", *base_overrides(data_dir, as_owner.uri, experiment),
         "trainer.epochs=1", "seed=1,2", f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT, env=file_only_env(as_owner), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert secret not in result.stdout + result.stderr
    assert not files_holding(secret, sweep_dir)
    assert assert_nowhere_in_the_store(secret, as_owner.uri, experiment, tmp_path) == 3  # the parent and 2 points
    assert not files_holding(secret, as_owner.folder / "artifacts", as_owner.folder / "mlflow.db",
                             as_owner.folder / "server.log")


@pytest.mark.slurm
def test_slurm_jobs_authenticate_from_the_environment_and_show_no_secret(server, data_dir, tmp_path):
    """train.sbatch and a hydra/launcher=slurm sweep, their credentials exported in the submitting shell only:
    both FINISH on the auth server, and squeue, scontrol, sacct, the job logs and submitit's files never show the
    password."""
    from test_slurm import LAUNCHER, _cluster_problem, log_of, sbatch, wait_done

    if problem := _cluster_problem():
        pytest.skip(problem)
    secret, experiment = server.password(), "slurm-no-secret"
    env = {**no_credentials_env(tmp_path), auth.USER_VAR: server.username(), auth.PASSWORD_VAR: secret}
    base = [*base_overrides(data_dir, server.uri, experiment), "trainer.epochs=1"]
    shown = []

    def slurm_says(*command: str) -> None:
        shown.append(subprocess.run(command, capture_output=True, text=True, timeout=60).stdout)

    job_id = sbatch("slurm/train.sbatch", [*base, f"hydra.run.dir={tmp_path}/run"], tmp_path, env=env)
    slurm_says("squeue", "-h", "-o", "%all")
    slurm_says("scontrol", "show", "job", "-d", job_id)
    end = wait_done(job_id)
    assert end["JobState"] == "COMPLETED", log_of(tmp_path, job_id)[-3000:]
    sweep_dir = tmp_path / "sweep"
    swept = subprocess.run([sys.executable, "-m", "src.train", "-m", *LAUNCHER, *base, "seed=1,2",
                            f"hydra.sweep.dir={sweep_dir}"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert swept.returncode == 0, swept.stderr[-3000:]
    slurm_says("sacct", "-P", "-j", job_id, "-o", "JobID,JobName,State,SubmitLine,WorkDir")
    slurm_says("scontrol", "show", "job", "-d")  # every job, ended ones too (for MinJobAge): Command=, args

    assert f"JobId={job_id} " in shown[-1] and shown[-1].count("JobState=COMPLETED") >= 3  # it saw the jobs
    for text in [*shown, swept.stdout, swept.stderr]:
        assert secret not in text
    assert not files_holding(secret, tmp_path / "run", sweep_dir, *tmp_path.glob("*.out"))
    os.environ[auth.USER_VAR], os.environ[auth.PASSWORD_VAR] = server.username(), secret
    try:
        client = MlflowClient(server.uri)
        found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        assert [r.info.status for r in found] == ["FINISHED"] * 4  # the lone job, the sweep's parent, 2 points
        assert_nowhere_in_the_store(secret, server.uri, experiment, tmp_path)
    finally:
        del os.environ[auth.USER_VAR], os.environ[auth.PASSWORD_VAR]
