"""No run left RUNNING by a dead process: who owns a run, its heartbeat, and reconciling the store.

A process that ends normally, or by Ctrl-C / SIGTERM, ends its run itself (src/tracking/runs.py). One killed
with SIGKILL (the OOM killer, `kill -9`, a node lost) cannot, and its run would stay RUNNING forever.
So every run records its owner as tags, and a heartbeat tag it refreshes every HEARTBEAT_S seconds (a
thread) and at an epoch's end (at most every EPOCH_BEAT_S: sub-second epochs would write one tag each).
`reconcile` (called by every `python -m src.train` for its experiment and every `python -m src.compare`)
ends FAILED each RUNNING run whose owner is provably gone:

- on this host (same `owner.host`): the pid is dead, or it was reused (its start time differs), or the
  host rebooted since (another boot id);
- in a SLURM job on another host: `squeue -h -j <job>` no longer lists it as pending/running;
- otherwise: its heartbeat is older than HEARTBEAT_TIMEOUT_S (15 minutes).

A run that may still be alive is never touched; one without owner tags (made by an older version)
is judged by its start time as if that were its heartbeat. Its metrics stay. Imports MLflow, never Keras.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
import time

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from . import names, store

log = logging.getLogger(__name__)

HOST, PID, STARTED, BOOT = names.OWNER_HOST, names.OWNER_PID, names.OWNER_START_TICKS, names.OWNER_BOOT_ID
HEARTBEAT, SLURM_JOB = names.HEARTBEAT, names.SLURM_JOB
HEARTBEAT_S = 120.0  # within a long epoch
EPOCH_BEAT_S = 10.0  # an epoch's end beats too, if the last epoch's beat is older than this
HEARTBEAT_TIMEOUT_S = 15 * 60  # a run on an unreachable host with no heartbeat for this long is dead
SLURM_ALIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUE_HOLD",
               "RESIZING", "SIGNALING", "STAGE_OUT"}


def owner_tags() -> dict[str, str]:
    """Tags naming this process: host, pid, its start time (clock ticks after boot), boot id, heartbeat."""
    tags = {HOST: socket.gethostname(), PID: str(os.getpid()), HEARTBEAT: _now()}
    started, boot = start_ticks(os.getpid()), _boot_id()
    if started:
        tags[STARTED] = started
    if boot:
        tags[BOOT] = boot
    if os.environ.get("SLURM_JOB_ID"):
        tags[SLURM_JOB] = os.environ["SLURM_JOB_ID"]
    return tags


def start_ticks(pid: int) -> str | None:
    """The process's start time from /proc/<pid>/stat (field 22), or None if there is no such process."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # after "(comm)", which may hold spaces: field 3 is index 0


def _boot_id() -> str | None:
    try:
        return open("/proc/sys/kernel/random/boot_id").read().strip()
    except OSError:
        return None


def _now() -> str:
    return f"{time.time():.0f}"


def beat(client: MlflowClient, run_id: str) -> None:
    """Refresh the run's heartbeat (one tag write). A store that does not answer is only logged."""
    try:
        client.set_tag(run_id, HEARTBEAT, _now())
    except Exception as err:  # a lost server: the outbox deals with metrics, a missed beat is harmless
        log.debug("Heartbeat of run %s not sent: %s", run_id, err)


class Heartbeat:
    """A daemon thread that beats every `interval` seconds until stopped: alive during a long epoch."""

    def __init__(self, client: MlflowClient, run_id: str, interval: float = HEARTBEAT_S):
        self.client, self.run_id, self.interval = client, run_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{run_id[:8]}", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            beat(self.client, self.run_id)


def why_dead(tags: dict, start_time_ms: int | None = None, now: float | None = None,
             job_returned: bool = False) -> str | None:
    """Why the run's owner is provably gone, or None if it may be alive.

    `job_returned`: the caller (a sweep's driver, at the sweep's end) knows the run's job has returned. A job
    that ran in the caller's own process (the basic launcher; also inside a SLURM allocation, where squeue
    still lists the driver's job), or outside SLURM, is dead although its owner's pid may be alive: the
    driver's. A job of its own in SLURM is judged by squeue as always (a requeued job comes back).
    """
    now = time.time() if now is None else now
    host, pid = tags.get(HOST), tags.get(PID)
    if job_returned and (not tags.get(SLURM_JOB) or _is_this_process(tags)):
        return "its job ended without ending the run (killed or crashed)"
    if host and pid and host == socket.gethostname():
        if tags.get(BOOT) and _boot_id() and tags[BOOT] != _boot_id():
            return f"its process {pid} on {host} is gone: the host rebooted since"
        current = start_ticks(int(pid))
        if current is None:
            return f"its process {pid} on {host} is gone (killed or crashed without ending the run)"
        if tags.get(STARTED) and current != tags[STARTED]:
            return f"its process {pid} on {host} is gone (the pid now belongs to another process)"
        return None
    job = tags.get(SLURM_JOB)
    if job:
        state = _squeue(job)
        if state is not None:
            return None if state in SLURM_ALIVE else (
                f"its SLURM job {job} is no longer running (squeue: {state or 'not listed'})")
    try:
        last = float(tags[HEARTBEAT]) if HEARTBEAT in tags else (start_time_ms or 0) / 1000
    except ValueError:
        return None
    if last and now - last > HEARTBEAT_TIMEOUT_S:
        age = (now - last) / 60
        where = f" from {host}" if host else ""
        return f"no heartbeat{where} for {age:.0f} min (timeout {HEARTBEAT_TIMEOUT_S // 60} min)"
    return None


def _is_this_process(tags: dict) -> bool:
    """The owner tags name the calling process (host, pid and, where recorded, its start time)."""
    if tags.get(HOST) != socket.gethostname() or tags.get(PID) != str(os.getpid()):
        return False
    return not tags.get(STARTED) or tags[STARTED] == start_ticks(os.getpid())


def _squeue(job: str) -> str | None:
    """The job's state per squeue ('' when it is not listed any more), or None when squeue cannot tell."""
    if not shutil.which("squeue"):
        return None
    try:
        done = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        # A job purged from the controller's memory: "Invalid job id specified"; anything else: cannot tell.
        return "" if "invalid job id" in done.stderr.lower() else None
    states = done.stdout.split()
    return next((s for s in states if s in SLURM_ALIVE), states[0] if states else "")


def reconcile(client: MlflowClient, experiment_ids: list[str] | None = None) -> list[str]:
    """End FAILED every RUNNING run (of these experiments; None: all) whose owner is gone; return their ids."""
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        return []
    ended = []
    running = store.search_runs(client, experiment_ids, "attributes.status = 'RUNNING'")
    for run in running:
        reason = why_dead(run.data.tags, run.info.start_time)
        if reason is None:
            continue
        reason = f"Found dead by a later process: {reason}"
        end_failed(client, run.info.run_id, reason)
        log.warning("Run %s was left RUNNING; ended FAILED: %s", run.info.run_id, reason)
        ended.append(run.info.run_id)
    return ended


def end_failed(client: MlflowClient, run_id: str, reason: str) -> None:
    """End a dead run FAILED with the reason; its metrics stay."""
    client.set_tag(run_id, names.FAILURE_REASON, reason)
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
