"""MLflow: where runs go, a run's lifecycle, its params/tags/artifacts, and per-epoch metrics.

Metric steps are epoch numbers counted from 1, as Keras prints them ("Epoch 1/5" is step 1).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

import keras

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STORE = PROJECT_ROOT / "mlruns"
# Names that must never reach MLflow as params, tags or artifacts.
SECRET_MARKERS = ("TOKEN", "PASSWORD", "SECRET", "KEY")


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the fix."""


class Terminated(BaseException):
    """SIGTERM (SLURM's time limit, preemption, scancel) turned into an exception, like Ctrl-C."""


def tracking_uri(configured: str | None) -> str:
    """tracking.tracking_uri, else $MLFLOW_TRACKING_URI, else SQLite under <project>/mlruns."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE / 'mlflow.db'}"


def ui_command(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {uri} (through an SSH tunnel if it runs on the login node)"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def connect(uri: str, experiment_name: str) -> str:
    """Check that the store answers and return the experiment's id, creating it if needed.

    Runs before any data is loaded, so an unreachable server or an unwritable folder costs seconds.
    """
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as response:
                response.read()
        except (urllib.error.URLError, OSError) as err:
            raise TrackingError(
                f"the MLflow server at {uri} does not answer ({err}).\n"
                "Fix: start it (bash slurm/mlflow_server.sh), check the host and port, "
                "or drop tracking.tracking_uri to use the local SQLite store."
            ) from err
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise TrackingError(
                f"cannot write the tracking store's folder {folder} ({err.strerror}).\n"
                "Fix: free space or fix its permissions, or set tracking.tracking_uri / MLFLOW_TRACKING_URI "
                "to a writable place."
            ) from err
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.get_experiment_by_name(experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if uri == tracking_uri(None):  # the default store keeps artifacts beside its database
            location = (DEFAULT_STORE / "artifacts").as_uri()
        try:
            return mlflow.create_experiment(experiment_name, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created by a concurrent job meanwhile
            return mlflow.get_experiment_by_name(experiment_name).experiment_id
    except mlflow.exceptions.MlflowException as err:
        raise TrackingError(f"the tracking store {uri} refused the experiment {experiment_name!r}: {err}") from err


@contextlib.contextmanager
def run(experiment_id: str, run_name: str, tags: dict, parent_run_id: str | None = None):
    """An MLflow run that always ends: FINISHED, FAILED (exception) or KILLED (Ctrl-C, SIGTERM).

    The reason of a failure goes into the `failure_reason` tag; metrics logged so far stay.
    """
    active = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags, parent_run_id=parent_run_id)
    uri = mlflow.get_tracking_uri()
    log.info("MLflow run %s (%s) in experiment %s at %s", run_name, active.info.run_id, experiment_id, uri)
    restore = _sigterm_raises()
    try:
        yield active
    except (KeyboardInterrupt, Terminated) as err:
        _end(active, "KILLED", f"{type(err).__name__}: interrupted")
        raise
    except BaseException as err:
        _end(active, "FAILED", f"{type(err).__name__}: {err}")
        raise
    else:
        mlflow.end_run("FINISHED")
        log.info("Run %s FINISHED. Compare runs: %s", active.info.run_id, ui_command(uri))
    finally:
        restore()


def _end(active, status: str, reason: str) -> None:
    try:
        mlflow.set_tag("failure_reason", reason[:4000])
    finally:
        mlflow.end_run(status)
    log.error("Run %s ended %s: %s", active.info.run_id, status, reason)


def _sigterm_raises():
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------------------
# What a run records


def is_secret(name: str) -> bool:
    return any(marker in name.upper() for marker in SECRET_MARKERS)


def params(cfg) -> dict[str, str]:
    """The resolved config flattened to dotted keys, without secret-looking names."""
    flat: dict[str, str] = {}

    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if is_secret(str(key)):
                continue
            if isinstance(value, dict):
                walk(value, name + ".")
            else:
                flat[name] = str(value)

    walk(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "")
    return flat


def config_yaml(cfg) -> str:
    """The resolved config as YAML, with secret-looking keys removed."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)

    def scrub(node):
        if isinstance(node, dict):
            return {k: scrub(v) for k, v in node.items() if not is_secret(str(k))}
        return node

    return OmegaConf.to_yaml(OmegaConf.create(scrub(container)))


def tags(choices: dict, overrides: list[str]) -> dict[str, str]:
    """Provenance: config-group choices, code version, software, machine, SLURM ids."""
    import tensorflow as tf

    found = {group: str(choice) for group, choice in choices.items() if "/" not in group and not group.startswith("hydra")}
    found["overrides"] = " ".join(o for o in overrides if not is_secret(o.split("=")[0])) or "(none)"
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


class MLflowMetrics(keras.callbacks.Callback):
    """Logs every epoch's logs (loss, accuracy, val_loss, val_accuracy) once, at step = epoch + 1.

    One batched request per epoch; MLflow's own Keras callback would also re-log validation
    metrics at step 0 when evaluation runs, which this one does not. The request is queued
    (MLflow's asynchronous logging), so the next epoch does not wait for the store: a
    synchronous SQLite write costs 15-20 ms, 3-4% of a 0.5 s IMDB epoch on 2 CPU cores
    (benchmarks/bench_tracking.py). on_train_end waits for the queue, so every epoch is in the
    store, and any logging error raised, before fit returns.
    """

    def __init__(self, run_id: str, client: MlflowClient | None = None):
        super().__init__()
        self.run_id = run_id
        self.client = client or MlflowClient()
        self._epoch_start = 0.0
        self._pending = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = int(time.time() * 1000)
        values = {k: float(v) for k, v in (logs or {}).items() if _is_number(v)}
        values["epoch_time_s"] = time.perf_counter() - self._epoch_start
        metrics = [Metric(k, v, now, epoch + 1) for k, v in values.items()]
        self._pending.append(self.client.log_batch(self.run_id, metrics=metrics, synchronous=False))

    def on_train_end(self, logs=None):
        pending, self._pending = self._pending, []
        for operation in pending:
            operation.wait()


def _is_number(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False
