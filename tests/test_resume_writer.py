"""The checkpoint writer (src/training/resume.py): an epoch's end hands a host copy of the model's and optimizer's variables
to a background thread, which writes the weights file, then commits state.json. Real Keras training on the
synthetic data; slow or failing storage made with real files (a FIFO nobody reads yet, a folder where a weights
file should go). Resuming whole runs: tests/test_resume.py.
"""

from __future__ import annotations

import json
import os
import time

import keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY, compose
from src.training import callbacks, loop, models, resume
from src import config
from src.data import datasets as data


def build(data_dir):
    """A compiled model of the default config (mnist_dense, rmsprop) and its Keras-fit loop, from seed 0."""
    cfg = compose(["dataset.sha256=null", *TINY, "trainer.verbose=0"])
    ds = data.load(cfg.dataset, data_dir)
    keras.utils.set_random_seed(0)
    model = models.build_model(cfg.model, ds.spec)
    model.compile(optimizer=models.build_optimizer(cfg.optimizer), loss=ds.spec.loss, metrics=["accuracy"])
    return model, loop.trainer(loop.Resolved(config.Loop.fit, "test"), model, ds, cfg)


def values(model) -> list[np.ndarray]:
    """Every variable a checkpoint keeps, copied now: the model's weights, then the optimizer's variables."""
    return [np.array(keras.ops.convert_to_numpy(v)) for v in [*model.weights, *model.optimizer.variables]]


class Stalled:
    """A Writer whose thread is stuck on storage that does not answer (a FIFO nobody reads) until `release`."""

    def __init__(self, folder):
        folder.mkdir()
        self.fifo = folder / "slow"
        os.mkfifo(self.fifo)
        self.writer = resume.Writer()
        self.stuck = self.writer.commit(folder, {}, "slow", [np.zeros(1)])  # blocks in open() until a reader comes
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            with open(self.fifo, "rb") as f:
                f.read()  # until the writer closes it (its fsync of a pipe fails: that commit is not the test's)


@pytest.fixture
def stalled(tmp_path):
    stalled = Stalled(tmp_path / "stall")
    yield stalled
    stalled.release()  # never leave the (non-daemon) writer thread stuck


class InterruptAt(keras.callbacks.Callback):
    """Records every variable at each epoch's end; Ctrl-C at the end of epoch `epoch` (1-based). Put it before the
    Backup: that epoch is then never handed to the writer."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch, self.seen = epoch, {}

    def on_epoch_end(self, epoch, logs=None):
        self.seen[epoch + 1] = values(self.model)
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt


def test_a_checkpoint_holds_its_epochs_values_however_late_it_is_written(data_dir, tmp_path, stalled):
    """The writer gets a copy, not the variables: epoch 2's file, written only after epoch 3 trained, restores
    epoch 2's model and optimizer, exactly."""
    model, training = build(data_dir)
    backup = resume.Backup(tmp_path / "backup", "hash", writer=stalled.writer)
    record = InterruptAt(epoch=3)
    with pytest.raises(KeyboardInterrupt):
        training.fit(3, 0, [record, backup])
    assert not (tmp_path / "backup" / "state.json").exists()  # nothing written yet: the storage is stuck
    stalled.release()
    backup.wait()
    assert not np.array_equal(record.seen[2][0], record.seen[3][0])  # epoch 3 changed the variables after the copy

    fresh, _ = build(data_dir)
    assert resume.Backup(tmp_path / "backup", "hash").restore(fresh) == 2
    restored = values(fresh)
    assert len(restored) == len(record.seen[2]) > len(fresh.weights)  # the optimizer's variables too
    for now, then in zip(restored, record.seen[2]):
        np.testing.assert_array_equal(now, then)


def test_mlflow_hears_of_an_epoch_only_once_its_checkpoint_is_on_disk(data_dir, tmp_path, stalled, store,
                                                                        experiment):
    """So MLflow never has an epoch that a killed job's checkpoint lacks (src/training/resume.py's docstring)."""
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment(experiment)).info.run_id
    _, training = build(data_dir)
    backup = resume.Backup(tmp_path / "backup", "hash", writer=stalled.writer)

    class Look(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            time.sleep(1)  # time for the sender to log the epoch, were it not waiting for the commit
            assert client.get_metric_history(run_id, "loss") == []
            stalled.release()

    metrics = callbacks.MLflowMetrics(run_id, client, committed=backup.committed)
    training.fit(1, 0, [backup, metrics, Look()])  # its end waits for the commit, then for the sender
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1]
    assert len(json.loads((tmp_path / "backup" / "state.json").read_text())["epochs"]) == 1


def test_a_failed_write_keeps_the_previous_checkpoint_and_stops_training(data_dir, tmp_path):
    """A write that fails (here: a folder where epoch 2's weights go; a full disk, a lost mount) leaves state.json
    naming epoch 1's complete file, and its error ends training instead of being lost on the writer's thread."""
    folder = tmp_path / "backup"
    (folder / "epoch-2.weights.npz").mkdir(parents=True)
    _, training = build(data_dir)
    with pytest.raises(IsADirectoryError):
        training.fit(5, 0, [resume.Backup(folder, "hash")])
    state = json.loads((folder / "state.json").read_text())
    assert len(state["epochs"]) == 1 and state["weights"] == "epoch-1.weights.npz"
    fresh, _ = build(data_dir)
    assert resume.Backup(folder, "hash").restore(fresh) == 1


def test_a_checkpoint_that_save_weights_wrote_still_resumes(data_dir, tmp_path):
    """A job that checkpointed with Keras's .h5 (before the writer) and is requeued after an upgrade resumes it."""
    model, training = build(data_dir)
    training.fit(1, 0, [])
    folder = tmp_path / "backup"
    folder.mkdir()
    model.save_weights(folder / "epoch-1.weights.h5")
    state = {"config": "hash", "run_id": "r", "epochs": [{"loss": 1.0}], "weights": "epoch-1.weights.h5"}
    (folder / "state.json").write_text(json.dumps(state))
    fresh, _ = build(data_dir)
    assert resume.Backup(folder, "hash").restore(fresh) == 1
    for now, then in zip(values(fresh), values(model)):
        np.testing.assert_array_equal(now, then)
