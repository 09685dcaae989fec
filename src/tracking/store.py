"""Where runs are recorded: the tracking URI, a check that the store answers, and the run's experiment.

Imports MLflow but never Keras: `python -m src.compare` and `python -m src.outbox` use it too.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
from mlflow.entities import ViewType

from ..errors import UserError
from ..paths import PROJECT_ROOT
from ..preflight import check_folder
from . import auth, names
from .redaction import redact

log = logging.getLogger(__name__)

DEFAULT_STORE = PROJECT_ROOT / "mlruns"
SQLITE = "sqlite:///"
DEFAULT_URI = f"{SQLITE}{DEFAULT_STORE / 'mlflow.db'}"  # when neither tracking.tracking_uri nor the variable is set
# MLflow's HTTP client retries 7 times with a backoff factor of 2 (minutes) and waits 120 s per
# request by default: a lost server would stall every epoch. These short defaults give up after
# a few seconds and leave the rest to the Outbox; a user's own settings win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
STORE_SCHEMES = ("http://", "https://", SQLITE, "postgresql", "mysql", "mssql", "file:", "databricks")


class TrackingError(UserError):
    """The tracking store cannot be used; the message names the fix."""


def tracking_uri(configured: str | None) -> str:
    """tracking.tracking_uri, else $MLFLOW_TRACKING_URI, else SQLite under <project>/mlruns."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI, else None."""
    return Path(uri[len(SQLITE) :]) if uri.startswith(SQLITE) else None


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def ui_command(uri: str) -> str:
    if is_server(uri):
        return f"open {redact(uri)} (through an SSH tunnel if it runs on the login node)"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


# MLflow 3's UI opens an experiment on its GenAI pages (traces, agent versions); this query switches its sidebar to
# "Model training" (runs, models) and is remembered by the browser.
MODEL_TRAINING_VIEW = "?workflowType=machine_learning"


def ui_links(experiment_id: str, run_id: str | None = None, base: str = "http://127.0.0.1:5000") -> str:
    """Direct links into the MLflow UI, in its "Model training" view: the experiment's run table, and the run."""
    links = f"{base}/#/experiments/{experiment_id}/runs{MODEL_TRAINING_VIEW}"
    if run_id:
        links += f" ; this run: {base}/#/experiments/{experiment_id}/runs/{run_id}{MODEL_TRAINING_VIEW}"
    return links


def ui_hint(uri: str, experiment_id: str, run_id: str) -> str:
    """What a run prints at its start and end: how to open the UI, and links to its run table and its page."""
    base = redact(uri).rstrip("/") if is_server(uri) else "http://127.0.0.1:5000"
    table, run = ui_links(experiment_id, run_id, base).split(" ; this run: ")
    return f"MLflow UI: {ui_command(uri)}\n  runs table: {table}\n  this run:   {run}"


def check(uri: str) -> None:
    """Refuse a store that cannot be used: not a URI, a server that does not answer, an unwritable folder."""
    if not uri.startswith(STORE_SCHEMES) and not Path(uri).is_absolute():
        raise TrackingError(
            f"tracking.tracking_uri={uri!r} is not a tracking store URI.\n"
            "Fix: use http://127.0.0.1:5000 (a server), sqlite:////abs/path/mlflow.db (a file), "
            "or drop it for the default sqlite store under mlruns/."
        )
    database = sqlite_path(uri)
    if is_server(uri):
        for var, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(var, value)
        try:
            # a busy server is not a missing one: the patience of MLflow's own calls
            timeout = float(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"])
            with urllib.request.urlopen(_health_request(uri), timeout=timeout) as response:
                response.read()
        except (urllib.error.URLError, OSError) as err:
            raise TrackingError(
                f"the MLflow server at {redact(uri)} does not answer ({err}).\n"
                "Fix: start it (bash slurm/mlflow_server.sh), check the host and port, "
                "or drop tracking.tracking_uri to use the local SQLite store."
            ) from err
    elif database is not None:
        with contextlib.suppress(OSError):  # when it cannot be made, check_folder says why
            database.parent.mkdir(parents=True, exist_ok=True)
        check_folder(
            database.parent,
            "tracking store's folder",
            "free space or fix its permissions, or set tracking.tracking_uri / MLFLOW_TRACKING_URI to a writable place.",
        )
        not_sqlite(database)


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def not_sqlite(database: Path) -> None:
    """Refuse a file that is not an SQLite database (SQLAlchemy's own error is ~80 lines of traceback). A missing or
    empty file is fine: MLflow makes the database in it."""
    try:
        with open(database, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError:
        return  # missing (made on first use) or unreadable (check_folder or MLflow says why)
    if head and head != SQLITE_HEADER:
        raise TrackingError(
            f"{database} is not an SQLite database (it starts with {head[:16]!r}), so it cannot be the tracking store "
            f"sqlite:///{database}.\nFix: point tracking.tracking_uri / MLFLOW_TRACKING_URI at a new file or at the "
            f"right database (sqlite:////abs/path/mlflow.db), or move {database.name} out of the way."
        )


def _health_request(uri: str) -> urllib.request.Request:
    """GET <server>/health. urllib takes a URI's user:password@ for part of the host name: they go in a Basic
    auth header instead, as MLflow's own client (requests) sends them."""
    parts = urllib.parse.urlsplit(uri.rstrip("/"))
    userinfo, _, host = parts.netloc.rpartition("@")
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=host)) + "/health")
    if userinfo:
        user, _, password = userinfo.partition(":")
        credentials = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    return request


def connect(uri: str, experiment_name: str) -> str:
    """Check that the store answers and return the experiment's id, creating it if needed.

    Runs before any data is loaded, so an unreachable server or an unwritable folder costs seconds.
    """
    check(uri)
    authenticated = authenticate(uri)
    mlflow.set_tracking_uri(uri)
    try:
        with _first_use_lock(sqlite_path(uri)):
            experiment_id = _experiment_id(sqlite_path(uri), experiment_name)
    except mlflow.exceptions.MlflowException as err:
        if authenticated:
            _refuse_permission(uri, experiment_name, err)
        raise TrackingError(
            f"the tracking store {redact(uri)} cannot be used for experiment {experiment_name!r}: "
            f"{str(err).splitlines()[0]}\nFix: check tracking.tracking_uri / MLFLOW_TRACKING_URI."
        ) from err
    # READ permission opens the experiment; the run itself would be refused after the data loaded
    if authenticated and not auth.can_write(redact(uri), experiment_id, auth.credentials()):
        raise auth.AuthError(auth.refusal(redact(uri), 403, experiment_name))
    return experiment_id


def authenticate(uri: str) -> bool:
    """Before a server is used (src.train, src.compare, src.outbox): its credentials loaded, from the variables or
    the owner's file; missing or wrong ones refused (auth.AuthError). True where the server requires them."""
    return is_server(uri) and auth.check_server(redact(uri)) is not None


def _refuse_permission(uri: str, experiment_name: str, err: Exception) -> None:
    """A 401/403 from a basic-auth server: the one screen of src.tracking.auth instead of MLflow's message."""
    code = getattr(err, "get_http_status_code", lambda: None)()
    if code in (401, 403) or "PERMISSION_DENIED" in str(err) or "UNAUTHENTICATED" in str(err):
        raise auth.AuthError(auth.refusal(redact(uri), 401 if code == 401 or "UNAUTHENTICATED" in str(err)
                                          else 403, experiment_name)) from err


@contextlib.contextmanager
def _first_use_lock(database: Path | None):
    """Serialise the first use of a SQLite store between processes.

    Jobs of an array that start together would otherwise all create a fresh store's tables at
    once (alembic: "table _alembic_tmp_experiments already exists"). An flock on a file beside the
    database; Linux NFS clients map it to NFS locks. Held only while connecting.
    """
    if database is None:
        yield
        return
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _experiment_id(database: Path | None, experiment_name: str) -> str:
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    # artifacts beside the database, not in whatever folder we run from
    location = (database.parent / "artifacts").as_uri() if database is not None else None
    try:
        return mlflow.create_experiment(experiment_name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        experiment = mlflow.get_experiment_by_name(experiment_name)
        if experiment is None:  # not created by a concurrent job meanwhile: the store refused the name
            raise
        return experiment.experiment_id


PAGE_SIZE = 1000  # the most runs MLflow's search_runs returns in one call


def search_runs(client, experiment_ids: list[str], filter_string: str = "") -> list:
    """Every matching active run, oldest first, following search_runs' pages (every caller needs all of them:
    a reconcile or a sweep summary that stopped at the first page would miss runs)."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string, ViewType.ACTIVE_ONLY, max_results=PAGE_SIZE,
            order_by=["attributes.start_time ASC"], page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


RUN_ID = re.compile(r"[0-9a-f]{32}")
# The 8-character ids the project's tables print, and anything longer: a shorter prefix is taken as a name.
MIN_PREFIX = 6
RUN_ID_PREFIX = re.compile(r"[0-9a-f]{%d,31}" % MIN_PREFIX)


def run_id_of(client, text: str) -> str | None:
    """`text` as a run id: a full id as it is; a hex prefix of >= MIN_PREFIX characters as the one active run whose
    id starts with it (None when no run does, or when `text` is no id at all). An ambiguous prefix is refused,
    naming the runs it matches."""
    if RUN_ID.fullmatch(text):
        return text
    if not RUN_ID_PREFIX.fullmatch(text):
        return None
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = search_runs(client, experiments, f"attributes.run_id LIKE '{text}%'") if experiments else []
    if len(found) > 1:
        listed = "\n".join(f"  {r.info.run_id}  {r.info.run_name or ''}" for r in found[:20])
        more = f"\n  ... and {len(found) - 20} more" if len(found) > 20 else ""
        raise TrackingError(f"the run id prefix {text!r} matches {len(found)} runs:\n{listed}{more}\n"
                            "Fix: give more characters of the id (or all 32).")
    return found[0].info.run_id if found else None


def children(client, parent_run_id: str, experiment_id: str | None = None, where: str = "") -> list:
    """Every active child run of `parent_run_id` (a sweep's jobs), oldest first, all pages; `where`: a further
    search filter (e.g. one point's tag). The one spelling of that query."""
    if experiment_id is None:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
    query = f"tags.`{names.PARENT_RUN}` = '{parent_run_id}'" + (f" and {where}" if where else "")
    return search_runs(client, [experiment_id], query)
