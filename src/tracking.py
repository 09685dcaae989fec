"""MLflow: where runs go, a run's lifecycle, its params/tags/artifacts, and per-epoch metrics.

Metric steps are epoch numbers counted from 1, as Keras prints them ("Epoch 1/5" is step 1).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

import keras

from .outbox import Outbox
from .outbox import import_command as outbox_import_command
from .preflight import check_folder

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STORE = PROJECT_ROOT / "mlruns"
# Names that must never reach MLflow as params, tags or artifacts.
SECRET_MARKERS = ("TOKEN", "PASSWORD", "SECRET", "KEY")
# MLflow's HTTP client retries 7 times with a backoff factor of 2 (minutes) and waits 120 s per
# request by default: a lost server would stall every epoch. These short defaults give up after
# a few seconds and leave the rest to the Outbox; a user's own settings win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
STORE_SCHEMES = ("http://", "https://", "sqlite:///", "postgresql", "mysql", "mssql", "file:", "databricks")


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the fix."""


class Terminated(BaseException):
    """SIGTERM (SLURM's time limit, preemption, scancel) turned into an exception, like Ctrl-C."""


def tracking_uri(configured: str | None) -> str:
    """tracking.tracking_uri, else $MLFLOW_TRACKING_URI, else SQLite under <project>/mlruns."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE / 'mlflow.db'}"


def ui_command(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {redact(uri)} (through an SSH tunnel if it runs on the login node)"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def connect(uri: str, experiment_name: str) -> str:
    """Check that the store answers and return the experiment's id, creating it if needed.

    Runs before any data is loaded, so an unreachable server or an unwritable folder costs seconds.
    """
    if not uri.startswith(STORE_SCHEMES) and not Path(uri).is_absolute():
        raise TrackingError(
            f"tracking.tracking_uri={uri!r} is not a tracking store URI.\n"
            "Fix: use http://127.0.0.1:5000 (a server), sqlite:////abs/path/mlflow.db (a file), "
            "or drop it for the default sqlite store under mlruns/."
        )
    if uri.startswith(("http://", "https://")):
        for var, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(var, value)
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as response:
                response.read()
        except (urllib.error.URLError, OSError) as err:
            raise TrackingError(
                f"the MLflow server at {redact(uri)} does not answer ({err}).\n"
                "Fix: start it (bash slurm/mlflow_server.sh), check the host and port, "
                "or drop tracking.tracking_uri to use the local SQLite store."
            ) from err
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        with contextlib.suppress(OSError):  # when it cannot be made, check_folder says why
            folder.mkdir(parents=True, exist_ok=True)
        check_folder(
            folder,
            "tracking store's folder",
            "free space or fix its permissions, or set tracking.tracking_uri / MLFLOW_TRACKING_URI to a writable place.",
        )
    mlflow.set_tracking_uri(uri)
    try:
        with _first_use_lock(uri):
            return _experiment_id(uri, experiment_name)
    except mlflow.exceptions.MlflowException as err:
        raise TrackingError(
            f"the tracking store {redact(uri)} cannot be used for experiment {experiment_name!r}: "
            f"{str(err).splitlines()[0]}\nFix: check tracking.tracking_uri / MLFLOW_TRACKING_URI."
        ) from err


@contextlib.contextmanager
def _first_use_lock(uri: str):
    """Serialise the first use of a SQLite store between processes.

    Jobs of an array that start together would otherwise all create a fresh store's tables at
    once (alembic: "table _alembic_tmp_experiments already exists"). An flock on a file beside the
    database; Linux NFS clients map it to NFS locks. Held only while connecting.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    with open(uri[len("sqlite:///") :] + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _experiment_id(uri: str, experiment_name: str) -> str:
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):  # artifacts beside the database, not in whatever folder we run from
        location = (Path(uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
    try:
        return mlflow.create_experiment(experiment_name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created by a concurrent job meanwhile
        return mlflow.get_experiment_by_name(experiment_name).experiment_id


@contextlib.contextmanager
def run(
    experiment_id: str,
    run_name: str,
    tags: dict,
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
    outbox: Outbox | None = None,
):
    """An MLflow run that always ends: FINISHED, FAILED (exception) or KILLED (Ctrl-C, SIGTERM, requeue).

    The reason of a failure goes into the `failure_reason` tag; metrics logged so far stay.
    `resume_run_id` reopens that run (a requeued job continues its run) instead of starting one.
    With an `outbox`, a store that stopped answering gets the end (and tag) later, from its file.
    """
    if resume_run_id and not _resumable(resume_run_id, experiment_id):
        resume_run_id = None
    if resume_run_id:
        mlflow.set_experiment(experiment_id=experiment_id)  # start_run refuses a run outside the active experiment
        active = mlflow.start_run(run_id=resume_run_id, tags=tags)
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # the reason of the last stop
            MlflowClient().delete_tag(resume_run_id, "failure_reason")
    else:
        active = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags, parent_run_id=parent_run_id)
    uri = mlflow.get_tracking_uri()
    log.info(
        "MLflow run %s (%s) in experiment %s at %s%s",
        run_name, active.info.run_id, experiment_id, redact(uri), " (resumed)" if resume_run_id else "",
    )
    restore = _sigterm_raises()
    try:
        yield active
    except (KeyboardInterrupt, Terminated, SystemExit) as err:  # SystemExit: submitit's requeue exits so
        _end(active, "KILLED", _interrupt_reason(err), outbox)
        raise
    except BaseException as err:
        _end(active, "FAILED", f"{type(err).__name__}: {err}", outbox)
        raise
    else:
        _end(active, "FINISHED", None, outbox)
        log.info("Run %s FINISHED. Compare runs: %s", active.info.run_id, ui_command(uri))
    finally:
        restore()
        if outbox is not None and outbox.path.exists():
            log.warning(
                "The MLflow store %s missed some of run %s's records; they are kept in %s.\n"
                "Import them when it answers again: %s", redact(uri), active.info.run_id, outbox.path,
                outbox_import_command(outbox.path),
            )


def _resumable(run_id: str, experiment_id: str) -> bool:
    try:
        found = MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        found = None
    if found is None or found.info.lifecycle_stage != "active" or found.info.experiment_id != experiment_id:
        log.warning("The backup's MLflow run %s is gone or elsewhere: starting a new run", run_id)
        return False
    return True


def _interrupt_reason(err: BaseException) -> str:
    if isinstance(err, Terminated):
        return f"Terminated: {err}: interrupted during training"  # "SIGTERM (signal 15)"
    if isinstance(err, KeyboardInterrupt):
        return "KeyboardInterrupt (Ctrl-C): interrupted during training"
    return f"{type(err).__name__}: interrupted"


def _end(active, status: str, reason: str | None, outbox: Outbox | None) -> None:
    run_id = active.info.run_id
    wait_for_metrics()  # epochs still queued by MLflowMetrics (fit interrupted before on_train_end) go first
    if outbox is None:
        try:
            if reason:
                mlflow.set_tag("failure_reason", reason[:4000])
        finally:
            mlflow.end_run(status)
    else:
        if reason:
            outbox.set_tag(run_id, "failure_reason", reason[:4000])
        outbox.end(run_id, status)  # sent, or kept in the outbox's file with the import command
        with contextlib.suppress(Exception):
            mlflow.end_run(status)  # clears MLflow's active run (its own set_terminated repeats the outbox's)
    if reason:
        log.error("Run %s ended %s: %s", run_id, status, reason)


def _sigterm_raises():
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise Terminated(f"{signal.Signals(signum).name} (signal {signum})")

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------------------
# What a run records


def is_secret(name: str) -> bool:
    return any(marker in name.upper() for marker in SECRET_MARKERS)


# `name=value` pairs (Hydra overrides, override_dirname) whose name looks secret, and the
# password of a URL's user:password@ part (a tracking URI with credentials).
_SECRET_ASSIGNMENT = re.compile(
    r"([\w.+~/@-]*(?:%s)[\w.-]*)=('[^']*'|\"[^\"]*\"|[^,\s]*)" % "|".join(SECRET_MARKERS), re.IGNORECASE
)
_URL_PASSWORD = re.compile(r"(://[^/:@\s]+):[^@/\s]+@")
REDACTED = "***"


def redact(text: str) -> str:
    """`text` with secret-looking override values and URL passwords replaced by ***."""
    text = _SECRET_ASSIGNMENT.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    return _URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)


def scrub(node):
    """A config/YAML container without secret-looking keys and with redacted strings."""
    if isinstance(node, dict):
        return {k: scrub(v) for k, v in node.items() if not is_secret(str(k))}
    if isinstance(node, list):
        return [scrub(v) for v in node]
    return redact(node) if isinstance(node, str) else node


def params(cfg) -> dict[str, str]:
    """The resolved config flattened to dotted keys, without secret-looking names or values."""
    flat: dict[str, str] = {}

    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
            else:
                flat[name] = str(value)

    walk(scrub(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)), "")
    return flat


def config_yaml(cfg) -> str:
    """The resolved config as YAML, with secret-looking keys removed."""
    return OmegaConf.to_yaml(OmegaConf.create(scrub(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))))


def hydra_files(hydra_dir: Path, into: Path) -> Path:
    """Copies of Hydra's .hydra/*.yaml (config, hydra, overrides) with secrets scrubbed, in `into`.

    overrides.yaml and hydra.yaml hold the command line verbatim, `hydra.job.env_set` included.
    """
    into.mkdir(parents=True, exist_ok=True)
    for source in sorted(hydra_dir.glob("*.yaml")):
        content = OmegaConf.to_container(OmegaConf.load(source), resolve=False)
        (into / source.name).write_text(OmegaConf.to_yaml(OmegaConf.create(scrub(content))))
    return into


def tags(choices: dict, overrides: list[str]) -> dict[str, str]:
    """Provenance: config-group choices, code version, software, machine, SLURM ids."""
    import tensorflow as tf

    found = {group: str(choice) for group, choice in choices.items() if "/" not in group and not group.startswith("hydra")}
    found["overrides"] = " ".join(redact(o) for o in overrides) or "(none)"
    commit, dirty = _git_state()
    found.update(
        {
            "mlflow.source.git.commit": commit,
            "git.dirty": dirty,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "host": socket.gethostname(),
        }
    )
    for var, tag in [
        ("SLURM_JOB_ID", "slurm.job_id"),
        ("SLURM_ARRAY_JOB_ID", "slurm.array_job_id"),
        ("SLURM_ARRAY_TASK_ID", "slurm.array_task_id"),
        ("SLURM_RESTART_COUNT", "slurm.restart_count"),  # > 0: a requeued job resumed this run
    ]:
        if os.environ.get(var):
            found[tag] = os.environ[var]
    return found


def _git_state() -> tuple[str, str]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        return commit, str(bool(status.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"


# One worker, so epochs reach the store in order; shared by every run of the process.
_SENDER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-metrics")


def wait_for_metrics() -> None:
    """Wait until every queued epoch is sent (or kept in the outbox): the worker runs tasks in order."""
    with contextlib.suppress(Exception):  # a send's own error is raised to its callback, not here
        _SENDER.submit(lambda: None).result()


class MLflowMetrics(keras.callbacks.Callback):
    """Logs every epoch's logs (loss, accuracy, val_loss, val_accuracy) once, at step = epoch + 1.

    One batched request per epoch; MLflow's own Keras callback would also re-log validation
    metrics at step 0 when evaluation runs, which this one does not.

    A resumed run passes the backup's finished epochs: those MLflow lacks (the job died between
    committing the backup and logging) are sent at the start, and no step MLflow already has is
    sent again, so each epoch is in the run exactly once. Through an `outbox`, an epoch the store
    does not take is kept in a file instead of stopping training.

    Each epoch's request goes to one background thread, in order, so the next epoch does not wait
    for the store (a synchronous SQLite write costs 15-20 ms, 3-4% of a 0.5 s IMDB epoch on 2 CPU
    cores; a lost server costs seconds of retries). on_train_end waits for the queue, so every
    epoch is in the store (or the outbox's file), and any logging error raised, before fit returns.
    """

    def __init__(
        self,
        run_id: str,
        client: MlflowClient | None = None,
        finished_epochs: list[dict] | None = None,
        outbox: Outbox | None = None,
    ):
        super().__init__()
        self.run_id = run_id
        self.client = client or MlflowClient()
        self.finished_epochs = finished_epochs or []
        self._logged: dict[str, set[int]] = {}
        self.outbox = outbox
        self._epoch_start = 0.0
        self._pending: list[Future] = []

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
        values["epoch_time_s"] = time.perf_counter() - self._epoch_start
        metrics = [Metric(k, v, now, epoch + 1) for k, v in values.items() if epoch + 1 not in self._logged.get(k, ())]
        if metrics:
            send = self.client.log_batch if self.outbox is None else self.outbox.log_metrics
            self._pending.append(_SENDER.submit(send, self.run_id, metrics))

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
