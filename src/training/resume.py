"""Checkpoint every finished epoch; resume an interrupted or requeued run from the last one.

A backup folder holds the model's and optimizer's weights of the last finished epoch and a
`state.json` that is the commit point: it is replaced atomically after the weights are on disk,
and names the weights file, the MLflow run and every finished epoch's logs. So a job killed at
any instant leaves either the previous epoch's state or the new one, never a mix.

The training thread only copies the variables to the host at an epoch's end (one transfer; they may
change in place or be donated by the next step); a `Writer` thread writes and fsyncs the weights,
then commits state.json, in order. An epoch's end costs ~0.1 ms instead of the 13-160 ms of a
synchronous `save_weights` (docs/performance.md, "An epoch's host work"). The run's end, Ctrl-C and `discard` wait for it.

Together with `callbacks.MLflowMetrics` this gives each epoch exactly once in MLflow:
- the backup commits epoch k *before* MLflow hears of it (callback order in train.py, and MLflowMetrics's
  sender waits for the commit: `Backup.committed`), so MLflow never has an epoch the backup lacks; a
  resumed run never repeats a logged epoch;
- a job killed between the two leaves epoch k in the backup only: on resume MLflowMetrics sends
  the epochs that the backup has and MLflow lacks, so there is no gap either.

Where the backup lives decides whether a requeued job finds it: Hydra makes a new output folder
on every start, so under SLURM the folder is keyed on the job (and array task), which a requeue keeps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np

from ..tracking import names
from .callbacks import numeric_logs
from ..paths import CHECKPOINT_STATE, PROJECT_ROOT

log = logging.getLogger(__name__)

CHECKPOINTS = PROJECT_ROOT / "checkpoints"
STATE = CHECKPOINT_STATE


def backup_dir(configured: str | None, output_dir: Path, job_num: int | None = None) -> Path:
    """trainer.backup_dir, else <project>/checkpoints/<SLURM job> in a SLURM job, else <output_dir>/backup.

    `job_num` (a multirun job's number) keeps the jobs of a sweep that runs inside one SLURM job
    (basic launcher in sweep.sbatch) apart.
    """
    if configured:
        return Path(configured).expanduser().resolve()
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return output_dir / "backup"
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    name = f"{os.environ.get('SLURM_CLUSTER_NAME', 'slurm')}-{job}"
    if job_num is not None:
        name += f"-{job_num}"
    return CHECKPOINTS / name


def for_run(cfg, backend: str, data_sha256: str, output_dir: Path, job_num: int | None) -> "Backup":
    """The run's backup. It is resumed only where a restart can mean it: in a SLURM job (a requeue) or
    from a folder named in trainer.backup_dir. A local run's default folder is its own new output
    folder, so a local run never picks up another run's state by accident."""
    configured = cfg.trainer.backup_dir
    folder = backup_dir(configured, output_dir, job_num)
    resumable = bool(configured or os.environ.get("SLURM_JOB_ID"))
    return Backup(folder, fingerprint(cfg, backend, data_sha256), resume=resumable)


# What changes the training, and so must match for a backup to be resumed. Not: where things are written
# or logged (trainer.backup_dir, tracking.*, data_dir, hydra.*), how much is printed, how many epochs in
# all (a run may be extended), early stopping, or the hardware (a requeue may land on another GPU).
FINGERPRINT_KEYS = ("dataset", "model", "optimizer", "seed", "trainer.batch_size", "hardware.mixed_precision")
# Dataset keys that say where the file comes from, not what it holds (its sha256 is in the fingerprint).
DATA_SOURCE_KEYS = ("download", "url", "file", "sha256")


def fingerprint(cfg, backend: str, data_sha256: str) -> str:
    """A hash of what makes the training: the model, data (by content), optimizer, seed, batch size, backend."""
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    picked = {}
    for key in FINGERPRINT_KEYS:
        node = resolved
        for part in key.split("."):
            node = node[part]
        picked[key] = node
    picked["dataset"] = {k: v for k, v in picked["dataset"].items() if k not in DATA_SOURCE_KEYS}
    picked.update(backend=backend, data_sha256=data_sha256)
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


# The checkpoint on disk --------------------------------------------------------------------------------


def checkpoint_variables(model: keras.Model) -> list:
    """What a checkpoint keeps, in its order: the trainable, non-trainable and optimizer variables (the order of
    Keras's stateless API, in which a fused group holds its members' states too)."""
    return [*model.trainable_variables, *model.non_trainable_variables, *model.optimizer.variables]


def snapshot(model: keras.Model) -> list[np.ndarray]:
    """Host copies of the model's weights and its optimizer's variables (what `save_weights` keeps), taken now.

    Copies, not views: the next training step changes TensorFlow and PyTorch variables in place and may donate
    (reuse) JAX's buffers, while the writer thread is still writing these.
    """
    variables = checkpoint_variables(model)
    if keras.backend.backend() == "jax":
        import jax

        values = jax.device_get([v.value for v in variables])  # one transfer for all of them
    else:
        values = [keras.ops.convert_to_numpy(v) for v in variables]
    return [np.array(value, copy=True) for value in values]


def write_weights(path: Path, arrays: list[np.ndarray]) -> None:
    """`arrays` (a `snapshot`) to an .npz file, complete and fsynced when this returns."""
    with open(path, "wb") as f:
        np.savez(f, **{str(i): a for i, a in enumerate(arrays)})
        f.flush()
        os.fsync(f.fileno())


def read_weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as f:
        return [f[str(i)] for i in range(len(f.files))]


def assign(model: keras.Model, arrays: list[np.ndarray], source: Path) -> None:
    """Set the model's weights and optimizer variables (built) from a checkpoint's arrays, in its order."""
    variables = checkpoint_variables(model)
    shapes = [tuple(v.shape) for v in variables]
    if shapes != [a.shape for a in arrays]:
        raise ValueError(f"the checkpoint {source} holds {len(arrays)} arrays that do not match this model's "
                         f"{len(variables)} weights and optimizer variables (another model?). Fix: resume with "
                         "the configuration that wrote it, or remove the folder to start afresh.")
    for variable, value in zip(variables, arrays):
        variable.assign(value)


def commit(folder: Path, state: str, weights: str | None = None, arrays: list[np.ndarray] | None = None,
           previous: str | None = None) -> None:
    """Write one checkpoint into `folder`: the weights file `weights` (if `arrays`) complete and fsynced, then
    state.json (the JSON text `state`, which names that file) atomically replaced: the commit point; then the
    `previous` weights file removed. Killed at any instant, the folder holds the previous checkpoint or this one."""
    folder.mkdir(parents=True, exist_ok=True)
    if arrays is not None:
        write_weights(folder / weights, arrays)
    tmp = folder / f".{STATE}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(state)
        f.flush()
        os.fsync(f.fileno())  # on disk before it replaces the old state
    os.replace(tmp, folder / STATE)
    _fsync_dir(folder)  # the replacement itself on disk before the file it replaced the name of goes
    if previous and previous != weights:
        (folder / previous).unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a filesystem that cannot open folders: the rename is as durable as it makes it
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Writer:
    """One background thread that runs `commit`s in the order they are handed in.

    A training loop hands it a checkpoint (a `snapshot`, the state's JSON text) and goes on with the next epoch;
    the returned Future says when that checkpoint is on disk (or raises its error). One Writer may serve
    several folders (a group of models trained together): each caller waits for its own Futures.
    """

    def __init__(self) -> None:
        self._thread, self._pid = None, None

    def commit(self, folder: Path, state: dict, weights: str | None = None, arrays: list[np.ndarray] | None = None,
               previous: str | None = None) -> Future:
        """Hand over one checkpoint (see `commit`); `state` is serialised now, so the caller may change it."""
        if self._pid != os.getpid():  # first use, or a forked child, which has none of its parent's threads
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
            self._pid = os.getpid()
        return self._thread.submit(commit, Path(folder), json.dumps(state), weights, arrays, previous)


WRITER = Writer()  # the process's; its thread is not a daemon, so an exiting process finishes its last commit


class Backup(keras.callbacks.Callback):
    """The backup folder of one run, and the Keras callback that commits each finished epoch.

    Put it before `callbacks.MLflowMetrics` in the callback list, and give MLflowMetrics `committed`
    (see the module docstring). Call `wait` after training, whether it ended or was interrupted.
    """

    def __init__(self, folder: Path, config_hash: str, resume: bool = True, writer: Writer | None = None):
        super().__init__()
        self.folder = Path(folder)
        self.config_hash = config_hash
        self.state = self._read(resume)
        self.writer = writer or WRITER
        self._commits: dict[int, Future] = {}  # epoch (0-based) -> its commit, until it is known on disk
        self._epoch_start = 0.0

    def _read(self, resume: bool) -> dict:
        path = self.folder / STATE
        fresh = {"config": self.config_hash, "run_id": None, "epochs": [], "weights": None}
        if not resume or not path.exists():
            return fresh
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            log.warning("Unreadable backup %s (%s): starting afresh", path, err)
            return fresh
        if state.get("config") != self.config_hash:
            log.warning("The backup in %s was made by another configuration: starting afresh", self.folder)
            return fresh
        return state

    @property
    def run_id(self) -> str | None:
        """The MLflow run this backup belongs to (None: no run started yet)."""
        return self.state["run_id"]

    @property
    def epochs(self) -> list[dict[str, float]]:
        """Every finished epoch's logs (epoch k at index k-1), including `epoch_time_s`."""
        return self.state["epochs"]

    @property
    def history(self) -> dict[str, list[float]]:
        """The finished epochs as Keras's History.history, over all starts of the run."""
        keys = [k for k in (self.epochs[0] if self.epochs else {}) if k != names.EPOCH_TIME]
        return {k: [e[k] for e in self.epochs] for k in keys}

    def record_run(self, run_id: str) -> None:
        """Remember the MLflow run before the first epoch, so a requeue before it ends reopens it."""
        if self.state["run_id"] != run_id:
            self.state = {**self.state, "run_id": run_id}
            self.writer.commit(self.folder, self.state).result()

    def restore(self, model: keras.Model) -> int:
        """Load the last finished epoch's weights (model and optimizer); return the epoch to start from.

        Call inside the strategy scope, after `model.compile`.
        """
        if not self.state["weights"]:
            return 0
        model.optimizer.build(model.trainable_variables)  # an unbuilt optimizer would skip its variables
        path = self.folder / self.state["weights"]
        if path.suffix == ".h5":  # written by save_weights, before the Writer
            model.load_weights(path)
        else:  # written by the Writer, or by a fused group (commit_arrays): the same order
            assign(model, read_weights(path), path)
        done = len(self.epochs)
        log.info("Resuming from %s: %d epoch(s) already finished", self.folder, done)
        return done

    def committed(self, epoch: int) -> None:
        """Block until epoch `epoch` (0-based) is on disk, if it was handed to the writer; raise its error.

        MLflowMetrics calls it on its sender thread before it logs that epoch."""
        done = self._commits.get(epoch)
        if done is not None:
            done.result()

    def wait(self) -> None:
        """Block until every epoch handed to the writer is on disk; raise the first error of a write."""
        for epoch, done in sorted(self._commits.items()):
            done.result()
            self._commits.pop(epoch, None)

    def discard(self) -> None:
        """The run finished: nothing is left to resume."""
        self.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    # Keras callback ------------------------------------------------------------------------------

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        values = numeric_logs(logs)
        values[names.EPOCH_TIME] = time.perf_counter() - self._epoch_start
        for earlier, done in list(self._commits.items()):  # a write that failed stops training now
            if done.done():
                done.result()
                self._commits.pop(earlier, None)
        if not math.isfinite(values.get("loss", 0.0)):
            return  # a diverged epoch is not worth resuming from; the run fails after fit
        assert epoch == len(self.epochs), f"epoch {epoch + 1} does not follow the backup's {len(self.epochs)}"
        weights = f"epoch-{epoch + 1}.weights.npz"
        previous = self.state["weights"]
        self.state = {**self.state, "epochs": [*self.epochs, values], "weights": weights}
        self._commits[epoch] = self.writer.commit(self.folder, self.state, weights, snapshot(self.model), previous)

    def on_train_end(self, logs=None):
        self.wait()

    def commit_arrays(self, epochs: list[dict], state: tuple) -> None:
        """Commit a finished epoch of a fused group's member (src/fused/launch.py), on the group's writer thread:
        `state` = its (trainable, non-trainable, optimizer) variables' values as arrays (no Keras model needed: the
        order of `checkpoint_variables`), `epochs` = every finished epoch's logs. restore() reads it back."""
        weights = f"epoch-{len(epochs)}.weights.npz"
        previous = self.state["weights"]
        self.state = {**self.state, "epochs": list(epochs), "weights": weights}
        commit(self.folder, json.dumps(self.state), weights, [a for group in state for a in group], previous)
