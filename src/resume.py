"""Checkpoint every finished epoch; resume an interrupted or requeued run from the last one.

A backup folder holds the model's and optimizer's weights of the last finished epoch and a
`state.json` that is the commit point: it is replaced atomically after the weights are on disk,
and names the weights file, the MLflow run and every finished epoch's logs. So a job killed at
any instant leaves either the previous epoch's state or the new one, never a mix.

Together with `callbacks.MLflowMetrics` this gives each epoch exactly once in MLflow:
- the backup commits epoch k *before* MLflow hears of it (callback order in train.py), so MLflow
  never has an epoch the backup lacks; a resumed run never repeats a logged epoch;
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
from pathlib import Path

import keras
import numpy as np

from . import names
from .callbacks import numeric_logs
from .paths import PROJECT_ROOT

log = logging.getLogger(__name__)

CHECKPOINTS = PROJECT_ROOT / "checkpoints"
STATE = "state.json"


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


class Backup(keras.callbacks.Callback):
    """The backup folder of one run, and the Keras callback that commits each finished epoch.

    Put it before `callbacks.MLflowMetrics` in the callback list (see the module docstring).
    """

    def __init__(self, folder: Path, config_hash: str, resume: bool = True):
        super().__init__()
        self.folder = Path(folder)
        self.config_hash = config_hash
        self.state = self._read(resume)
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
            self.state["run_id"] = run_id
            self._commit()

    def restore(self, model: keras.Model) -> int:
        """Load the last finished epoch's weights (model and optimizer); return the epoch to start from.

        Call inside the strategy scope, after `model.compile`.
        """
        if not self.state["weights"]:
            return 0
        model.optimizer.build(model.trainable_variables)  # an unbuilt optimizer would skip its variables
        if self.state["weights"].endswith(".npz"):  # written by a fused group (commit_arrays)
            load_arrays(model, self.folder / self.state["weights"])
        else:
            model.load_weights(self.folder / self.state["weights"])
        done = len(self.epochs)
        log.info("Resuming from %s: %d epoch(s) already finished", self.folder, done)
        return done

    def discard(self) -> None:
        """The run finished: nothing is left to resume."""
        shutil.rmtree(self.folder, ignore_errors=True)

    # Keras callback ------------------------------------------------------------------------------

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        values = numeric_logs(logs)
        values[names.EPOCH_TIME] = time.perf_counter() - self._epoch_start
        if not math.isfinite(values.get("loss", 0.0)):
            return  # a diverged epoch is not worth resuming from; the run fails after fit
        assert epoch == len(self.epochs), f"epoch {epoch + 1} does not follow the backup's {len(self.epochs)}"
        weights = f"epoch-{epoch + 1}.weights.h5"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.model.save_weights(self.folder / weights)
        previous = self.state["weights"]
        self.state = {**self.state, "epochs": [*self.epochs, values], "weights": weights}
        self._commit()
        if previous and previous != weights:
            (self.folder / previous).unlink(missing_ok=True)

    def commit_arrays(self, epochs: list[dict], state: tuple) -> None:
        """Commit a finished epoch of a fused group's member (src/fused.py): `state` = its (trainable,
        non-trainable, optimizer) variables' values as arrays, written as one .npz (no Keras model needed, so the
        group's writer thread can do it), and `epochs` = every finished epoch's logs. restore() reads it back."""
        weights = f"epoch-{len(epochs)}.npz"
        self.folder.mkdir(parents=True, exist_ok=True)
        save_arrays(self.folder / weights, state)
        previous = self.state["weights"]
        self.state = {**self.state, "epochs": list(epochs), "weights": weights}
        self._commit()
        if previous and previous != weights:
            (self.folder / previous).unlink(missing_ok=True)

    def _commit(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{STATE}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.state, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before it replaces the old state
        os.replace(tmp, self.folder / STATE)



ARRAY_GROUPS = ("trainable", "non_trainable", "optimizer")  # the variable lists of a model, in Keras's order


def save_arrays(path: Path, state: tuple) -> None:
    """A model's (trainable, non-trainable, optimizer) variable values, in order, as one .npz."""
    with open(path, "wb") as f:
        np.savez(f, **{f"{group}_{i:04d}": value for group, values in zip(ARRAY_GROUPS, state)
                       for i, value in enumerate(values)})


def load_arrays(model: keras.Model, path: Path) -> None:
    """Assign what save_arrays wrote to the model's variables (a built model and optimizer of the same config)."""
    with np.load(path) as found:
        groups = (model.trainable_variables, model.non_trainable_variables, model.optimizer.variables)
        for group, variables in zip(ARRAY_GROUPS, groups):
            for i, variable in enumerate(variables):
                variable.assign(found[f"{group}_{i:04d}"])
