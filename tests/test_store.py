"""Where runs are recorded (src/tracking/store.py): the tracking URI, the check that refuses an unusable store with a
message naming the fix, the UI hints a run prints, and connecting to (or creating) the run's experiment.

Offline: SQLite stores in tmp folders, a refused port for a server that does not answer, and a small
in-process HTTP stand-in for an MLflow server where the server's answers are under test.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from src.tracking import store as stores
from src.errors import UserError
from src.paths import PROJECT_ROOT
from src.preflight import FolderError

SERVER_FIX = (
    "Fix: start it (bash slurm/mlflow_server.sh), check the host and port, "
    "or drop tracking.tracking_uri to use the local SQLite store."
)


def refused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: opened and closed here, so a connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def fake_server(answers: dict[str, tuple[int, dict | str]]):
    """An HTTP server on 127.0.0.1 answering `answers[path] = (status, body)` (404 elsewhere); yields
    (its base URL, the list of (method, path, JSON body, Authorization header) it received)."""
    received: list[tuple[str, str, dict | None, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, method):
            path = urlparse(self.requestline.split()[1]).path  # as asked: http.server collapses a leading "//"
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            received.append((method, path, body, self.headers.get("Authorization")))
            status, body = answers.get(path, (404, {"error_code": "ENDPOINT_NOT_FOUND", "message": "no"}))
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._answer("GET")

        def do_POST(self):
            self._answer("POST")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_env(monkeypatch):
    """No MLflow HTTP settings of the user's, and whatever check() sets is undone after the test."""
    for var in stores.HTTP_DEFAULTS:
        monkeypatch.setenv(var, "placeholder")  # recorded as absent before, so the undo removes it again
        monkeypatch.delenv(var)
    return monkeypatch


@pytest.fixture
def tracking_restored():
    """connect() makes its store MLflow's current one: put the previous one back for the next tests."""
    before = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(before)


# -- the URI and what a run prints ---------------------------------------------------------------------------


def test_tracking_uri_prefers_the_config_then_the_environment_then_sqlite_under_mlruns(monkeypatch):
    """tracking.tracking_uri wins over $MLFLOW_TRACKING_URI, which wins over <project>/mlruns/mlflow.db."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    assert stores.tracking_uri("sqlite:////configured/mlflow.db") == "sqlite:////configured/mlflow.db"
    assert stores.tracking_uri(None) == "http://from-env:5000"
    assert stores.tracking_uri("") == "http://from-env:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert stores.tracking_uri(None) == f"sqlite:///{PROJECT_ROOT}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # set but empty counts as unset
    assert stores.tracking_uri(None) == f"sqlite:///{PROJECT_ROOT}/mlruns/mlflow.db"


@pytest.mark.parametrize(
    "uri, database, server",
    [
        ("sqlite:////abs/mlruns/mlflow.db", Path("/abs/mlruns/mlflow.db"), False),
        ("sqlite:///relative.db", Path("relative.db"), False),
        ("http://127.0.0.1:5000", None, True),
        ("https://mlflow.example.org/", None, True),
        ("file:///abs/mlruns", None, False),
        ("postgresql://user@db/mlflow", None, False),
    ],
    ids=["sqlite-absolute", "sqlite-relative", "http", "https", "file", "postgresql"],
)
def test_the_kind_of_store_a_uri_names(uri, database, server):
    """sqlite:/// URIs name a database file (what follows the three slashes); http(s) URIs name a server."""
    assert stores.sqlite_path(uri) == database
    assert stores.is_server(uri) is server


@pytest.mark.parametrize(
    "uri, command",
    [
        ("sqlite:////abs/mlflow.db", "mlflow ui --backend-store-uri sqlite:////abs/mlflow.db --host 127.0.0.1 --port 5000"),
        ("http://me:secret@login1:5000", "open http://me:***@login1:5000 (through an SSH tunnel if it runs on the login node)"),
        ("https://mlflow.example.org", "open https://mlflow.example.org (through an SSH tunnel if it runs on the login node)"),
    ],
    ids=["sqlite", "http-with-password", "https"],
)
def test_ui_command_opens_a_server_or_starts_the_ui_on_a_file_store_without_leaking_passwords(uri, command):
    """The command printed to look at the runs: the server's address (password hidden) or `mlflow ui` on the file."""
    assert stores.ui_command(uri) == command


def test_ui_links_go_to_the_model_training_view_of_the_run_table_and_the_run():
    """Links into the local UI by default; the run's own link only when a run is named."""
    view = "?workflowType=machine_learning"
    assert stores.ui_links("7") == f"http://127.0.0.1:5000/#/experiments/7/runs{view}"
    assert stores.ui_links("7", "abc") == (
        f"http://127.0.0.1:5000/#/experiments/7/runs{view} ; this run: http://127.0.0.1:5000/#/experiments/7/runs/abc{view}"
    )
    assert stores.ui_links("7", None, "http://host:8080") == f"http://host:8080/#/experiments/7/runs{view}"


@pytest.mark.parametrize(
    "uri, command, base",
    [
        ("sqlite:////abs/mlflow.db",
         "mlflow ui --backend-store-uri sqlite:////abs/mlflow.db --host 127.0.0.1 --port 5000", "http://127.0.0.1:5000"),
        ("http://me:secret@login1:5000/",
         "open http://me:***@login1:5000/ (through an SSH tunnel if it runs on the login node)", "http://me:***@login1:5000"),
    ],
    ids=["sqlite", "server"],
)
def test_ui_hint_printed_by_a_run(uri, command, base):
    """Three lines: how to open the UI, the run table and the run's page, on the server itself when there is one."""
    view = "?workflowType=machine_learning"
    assert stores.ui_hint(uri, "7", "abc") == (
        f"MLflow UI: {command}\n"
        f"  runs table: {base}/#/experiments/7/runs{view}\n"
        f"  this run:   {base}/#/experiments/7/runs/abc{view}"
    )


# -- check: refusing a store that cannot be used --------------------------------------------------------------


@pytest.mark.parametrize("uri", ["mlruns/mlflow.db", "localhost:5000", "~/mlruns", "mlflow.db"])
def test_check_refuses_what_is_not_a_store_uri(uri):
    """A relative path or a bare host:port is refused with the forms that work."""
    with pytest.raises(stores.TrackingError) as refused:
        stores.check(uri)
    assert str(refused.value) == (
        f"tracking.tracking_uri={uri!r} is not a tracking store URI.\n"
        "Fix: use http://127.0.0.1:5000 (a server), sqlite:////abs/path/mlflow.db (a file), "
        "or drop it for the default sqlite store under mlruns/."
    )


@pytest.mark.parametrize(
    "uri",
    ["postgresql://user@db.invalid/mlflow", "mysql://user@db.invalid/mlflow", "mssql://user@db.invalid/mlflow",
     "file:///nonexistent/mlruns", "databricks", "databricks://profile", "/an/absolute/folder"],
    ids=["postgresql", "mysql", "mssql", "file", "databricks", "databricks-profile", "absolute-path"],
)
def test_check_accepts_every_store_scheme_and_absolute_paths(uri):
    """Stores MLflow knows (databases, file stores, Databricks) and absolute paths pass without a connection."""
    stores.check(uri)


def test_check_creates_the_sqlite_folder(tmp_path):
    """The folder of a new SQLite store is made (with its parents) so the first run can create the database."""
    folder = tmp_path / "new" / "mlruns"
    stores.check(f"sqlite:///{folder}/mlflow.db")
    assert folder.is_dir()
    stores.check(f"sqlite:///{folder}/mlflow.db")  # an existing folder is fine too


def test_check_refuses_a_sqlite_folder_it_cannot_write(tmp_path):
    """A database 'folder' that is a file (as good as unwritable, even for root) names the folder and the fix."""
    blocker = tmp_path / "mlruns"
    blocker.write_text("a file, not a folder")
    with pytest.raises(FolderError) as refused:
        stores.check(f"sqlite:///{blocker}/mlflow.db")
    assert isinstance(refused.value, UserError)
    assert str(refused.value) == (
        f"cannot write the tracking store's folder {blocker} (Not a directory).\n"
        "Fix: free space or fix its permissions, or set tracking.tracking_uri / MLFLOW_TRACKING_URI to a writable place."
    )


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_check_refuses_a_server_that_does_not_answer_without_showing_its_password(http_env, scheme):
    """Connection refused: the message names the server (password hidden), the cause, and how to fix it."""
    uri = f"{scheme}://me:secret@127.0.0.1:{refused_port()}"
    started = time.monotonic()
    with pytest.raises(stores.TrackingError) as refused:
        stores.check(uri)
    assert time.monotonic() - started < 5
    cause = refused.value.__cause__
    assert "refused" in str(cause).lower()
    assert str(refused.value) == (
        f"the MLflow server at {scheme}://me:***@127.0.0.1:{uri.rsplit(':', 1)[1]} does not answer ({cause}).\n"
        + SERVER_FIX
    )
    assert "secret" not in str(refused.value)


def test_check_asks_the_server_for_its_health_page(http_env):
    """A server answers on /health (a trailing slash in the URI included); one without it does not count."""
    with fake_server({"/health": (200, "OK")}) as (url, received):
        stores.check(url)
        stores.check(url + "/")
        assert [(path, auth) for _, path, _, auth in received] == [("/health", None), ("/health", None)]
    with fake_server({}) as (url, received):
        with pytest.raises(stores.TrackingError, match="does not answer .*404"):
            stores.check(url)


@pytest.mark.parametrize(
    "userinfo, credentials",
    [("me:secret@", b"me:secret"), ("me%40lab:p%3Ass@", b"me@lab:p:ss"), ("token@", b"token:"),
     ("me:p:ss@", b"me:p:ss"), ("me:p@ss@", b"me:p@ss")],  # unescaped, read as MLflow's client (requests) does
    ids=["user-password", "escaped", "token-only", "colon-in-password", "at-in-password"],
)
def test_check_sends_a_uris_credentials_as_basic_auth(http_env, userinfo, credentials):
    """http://user:password@host (as MLflow's client takes it): the server gets them as Basic auth, not as a host."""
    with fake_server({"/health": (200, "OK")}) as (url, received):
        stores.check(url.replace("http://", f"http://{userinfo}") + "/")
    (_, path, _, auth), = received
    assert (path, auth) == ("/health", "Basic " + base64.b64encode(credentials).decode())


def test_check_gives_mlflow_short_http_retries_unless_the_user_chose(http_env):
    """A lost server must not stall every epoch for minutes: short retry/timeout defaults, a user's own value wins."""
    http_env.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(stores.TrackingError):
        stores.check(f"http://127.0.0.1:{refused_port()}")
    assert {var: os.environ.get(var) for var in stores.HTTP_DEFAULTS} == {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }


def test_check_leaves_http_settings_alone_for_a_file_store(http_env, tmp_path):
    stores.check(f"sqlite:///{tmp_path}/mlflow.db")
    assert not any(var in os.environ for var in stores.HTTP_DEFAULTS)


# -- connect: the run's experiment ----------------------------------------------------------------------------


def test_connect_creates_the_experiment_beside_the_database_once(store, experiment, tracking_restored):
    """The first connect creates the experiment (artifacts beside the database); later ones find the same one."""
    mlflow.set_tracking_uri("sqlite:////nonexistent/elsewhere.db")  # connect makes its store the current one
    experiment_id = stores.connect(store, experiment)
    assert mlflow.get_tracking_uri() == store
    assert stores.connect(store, experiment) == experiment_id
    found = MlflowClient(store).get_experiment(experiment_id)
    assert found.name == experiment
    assert found.artifact_location == (Path(store[len("sqlite:///"):]).parent / "artifacts").as_uri()


def test_connect_finds_an_experiment_a_concurrent_job_created_meanwhile(
    store, experiment, monkeypatch, tracking_restored
):
    """Jobs of an array start together: one that saw no experiment and then fails to create it (another job just
    did) uses the other job's experiment instead of failing."""
    existing = MlflowClient(store).create_experiment(experiment)
    lookups = []
    real = mlflow.get_experiment_by_name

    def not_yet_then_real(name):
        lookups.append(name)
        return None if len(lookups) == 1 else real(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", not_yet_then_real)
    assert stores.connect(store, experiment) == existing
    assert lookups == [experiment, experiment]


def test_connect_waits_while_another_process_sets_up_the_same_sqlite_store(store, experiment, tracking_restored):
    """The first use of a SQLite store is serialised by an flock beside the database: connect waits for its holder."""
    database = Path(store[len("sqlite:///"):])
    result = {}
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another job is creating the store's tables
        waiting = threading.Thread(target=lambda: result.setdefault("id", stores.connect(store, experiment)))
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive() and not result  # still waiting for the lock
        fcntl.flock(lock, fcntl.LOCK_UN)
    waiting.join(30)
    assert result["id"] == MlflowClient(store).get_experiment_by_name(experiment).experiment_id
    with open(f"{database}.lock", "a") as lock:  # and connect let go of it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_connect_refuses_an_experiment_the_store_cannot_create(store, tracking_restored):
    """The store's refusal is a one-screen TrackingError naming the experiment and the store, not a traceback."""
    name = "x" * 600
    with pytest.raises(stores.TrackingError) as refused:
        stores.connect(store, name)
    assert str(refused.value) == (
        f"the tracking store {store} cannot be used for experiment {name!r}: "
        "'name' exceeds the maximum length of 500 characters\n"
        "Fix: check tracking.tracking_uri / MLFLOW_TRACKING_URI."
    )


def test_connect_reports_the_first_line_of_a_server_refusal_without_its_password(http_env, tracking_restored):
    """A server that answers /health but refuses the experiment: its first line, the server without its password."""
    refusal = {"error_code": "PERMISSION_DENIED", "message": "no access to experiments\nrequest id 123"}
    answers = {"/health": (200, "OK"), "/api/2.0/mlflow/experiments/get-by-name": (403, refusal)}
    with fake_server(answers) as (url, _):
        uri = url.replace("http://", "http://me:secret@")
        with pytest.raises(stores.TrackingError) as refused:
            stores.connect(uri, "mnist")
    assert str(refused.value) == (
        f"the tracking store {url.replace('http://', 'http://me:***@')} cannot be used for experiment 'mnist': "
        "PERMISSION_DENIED: no access to experiments\n"
        "Fix: check tracking.tracking_uri / MLFLOW_TRACKING_URI."
    )


def test_connect_creates_an_experiment_on_a_server_where_the_server_keeps_artifacts(http_env, tracking_restored):
    """On a server, the new experiment's artifact location is the server's choice, not a local folder."""
    answers = {
        "/health": (200, "OK"),
        "/api/2.0/mlflow/experiments/get-by-name": (404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "none"}),
        "/api/2.0/mlflow/experiments/create": (200, {"experiment_id": "42"}),
    }
    with fake_server(answers) as (url, received):
        assert stores.connect(url, "mnist") == "42"
    (created,) = [body for method, path, body, _ in received if path.endswith("/experiments/create")]
    assert created["name"] == "mnist" and not created.get("artifact_location")


def test_connect_checks_the_store_first(http_env, tracking_restored):
    """An unreachable server fails in check(), before MLflow is pointed at it."""
    before = mlflow.get_tracking_uri()
    with pytest.raises(stores.TrackingError, match="does not answer"):
        stores.connect(f"http://127.0.0.1:{refused_port()}", "mnist")
    assert mlflow.get_tracking_uri() == before
