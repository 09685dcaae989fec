"""Checkpoint and resume, in-process: a run interrupted at a chosen point resumes from its last
finished epoch into the same MLflow run, with every epoch exactly once.

The interruption is a KeyboardInterrupt raised from inside a real callback at the chosen instant,
which is what Ctrl-C (or SIGTERM, turned into runs.Terminated) does in the middle of `fit`.
"""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from src.training import callbacks, resume
from src import train

KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s")


def steps(run_id: str) -> dict[str, list[int]]:
    client = MlflowClient()
    return {k: sorted(m.step for m in client.get_metric_history(run_id, k)) for k in KEYS}


@pytest.fixture
def trainer(data_dir, store, experiment, tmp_path):
    """train.train with a fixed backup folder, like a requeued SLURM job finds its own again."""
    from conftest import base_overrides, compose, train_composed

    backup = tmp_path / "backup"

    def run(*overrides: str):
        cfg = compose(
            [*base_overrides(data_dir, store, experiment), "trainer.epochs=3", f"trainer.backup_dir={backup}", *overrides],
            output_dir=tmp_path,
        )
        return train_composed(cfg)

    run.backup = backup
    return run


def interrupt_at(monkeypatch, cls, epoch: int, before: bool):
    """Raise KeyboardInterrupt in `cls.on_epoch_end` at `epoch` (1-based), before or after its work."""
    original = cls.on_epoch_end

    def on_epoch_end(self, e, logs=None):
        if e + 1 == epoch and before:
            raise KeyboardInterrupt
        original(self, e, logs)
        if e + 1 == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(cls, "on_epoch_end", on_epoch_end)


def runs(experiment):
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def test_interrupted_run_resumes_into_the_same_run(trainer, experiment, monkeypatch):
    interrupt_at(monkeypatch, callbacks.MLflowMetrics, epoch=2, before=False)
    with pytest.raises(KeyboardInterrupt):
        trainer()
    (killed,) = runs(experiment)
    assert killed.info.status == "KILLED"
    state = json.loads((trainer.backup / "state.json").read_text())
    assert len(state["epochs"]) == 2 and state["run_id"] == killed.info.run_id  # Ctrl-C keeps the checkpoint
    assert (trainer.backup / state["weights"]).exists()

    monkeypatch.undo()
    trainer()
    (finished,) = runs(experiment)
    assert finished.info.run_id == killed.info.run_id
    assert finished.info.status == "FINISHED"
    assert "failure_reason" not in finished.data.tags
    assert steps(finished.info.run_id) == {k: [1, 2, 3] for k in KEYS}
    assert not trainer.backup.exists()  # a finished run leaves nothing to resume


def test_epoch_committed_but_not_logged_is_sent_on_resume(trainer, experiment, monkeypatch):
    # Killed after the backup committed epoch 2, before MLflow heard of it.
    interrupt_at(monkeypatch, callbacks.MLflowMetrics, epoch=2, before=True)
    with pytest.raises(KeyboardInterrupt):
        trainer()
    (killed,) = runs(experiment)
    assert steps(killed.info.run_id)["loss"] == [1]
    saved = json.loads((trainer.backup / "state.json").read_text())["epochs"][1]

    monkeypatch.undo()
    trainer()
    (finished,) = runs(experiment)
    assert finished.info.status == "FINISHED"
    assert steps(finished.info.run_id) == {k: [1, 2, 3] for k in KEYS}
    epoch2 = [m.value for m in MlflowClient().get_metric_history(finished.info.run_id, "loss") if m.step == 2]
    assert epoch2 == [pytest.approx(saved["loss"])]  # the backup's value, not a retrained one


def test_epoch_logged_but_not_committed_is_not_logged_twice(trainer, experiment, monkeypatch):
    # The reverse window: MLflow has epoch 2, the backup only epoch 1 (its commit was lost).
    original = resume.Backup.on_epoch_end

    def lose_epoch_2(self, epoch, logs=None):
        if epoch + 1 != 2:
            original(self, epoch, logs)

    monkeypatch.setattr(resume.Backup, "on_epoch_end", lose_epoch_2)
    interrupt_at(monkeypatch, callbacks.MLflowMetrics, epoch=2, before=False)
    with pytest.raises(KeyboardInterrupt):
        trainer()
    (killed,) = runs(experiment)
    assert steps(killed.info.run_id)["loss"] == [1, 2]
    assert len(json.loads((trainer.backup / "state.json").read_text())["epochs"]) == 1

    monkeypatch.undo()
    trainer()  # redoes epoch 2 from epoch 1's weights; MLflow keeps its first epoch 2
    (finished,) = runs(experiment)
    assert finished.info.status == "FINISHED"
    assert steps(finished.info.run_id) == {k: [1, 2, 3] for k in KEYS}


def test_backup_of_another_configuration_is_not_resumed(trainer, experiment, monkeypatch):
    interrupt_at(monkeypatch, callbacks.MLflowMetrics, epoch=1, before=False)
    with pytest.raises(KeyboardInterrupt):
        trainer()
    monkeypatch.undo()
    trainer("optimizer.learning_rate=0.01")
    by_status = {r.info.status: r for r in runs(experiment)}
    assert set(by_status) == {"KILLED", "FINISHED"}  # a new run, the old one untouched
    assert steps(by_status["FINISHED"].info.run_id)["loss"] == [1, 2, 3]


def test_only_slurm_jobs_and_named_folders_are_resumed(monkeypatch, tmp_path):
    from conftest import compose

    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_CLUSTER_NAME"):
        monkeypatch.delenv(var, raising=False)
    cfg = compose([])
    mark = resume.fingerprint(cfg, "tensorflow", "sha")
    resume.Backup(tmp_path / "backup", mark).record_run("run-1")
    # The same folder and configuration, but nobody asked to resume (e.g. two runs given one hydra.run.dir).
    assert resume.for_run(cfg, "tensorflow", "sha", tmp_path, None).run_id is None
    named = compose([f"trainer.backup_dir={tmp_path / 'backup'}"])
    assert resume.for_run(named, "tensorflow", "sha", tmp_path, None).run_id == "run-1"  # asked for
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setattr(resume, "CHECKPOINTS", tmp_path / "checkpoints")
    resume.Backup(resume.backup_dir(None, tmp_path), mark).record_run("run-2")
    assert resume.for_run(cfg, "tensorflow", "sha", tmp_path / "new-output", None).run_id == "run-2"  # a requeued job


def test_fingerprint_covers_what_changes_the_training_only(tmp_path):
    from conftest import compose

    base = resume.fingerprint(compose([]), "tensorflow", "sha")
    same = [f"trainer.backup_dir={tmp_path}", "tracking.tracking_uri=sqlite:///x.db", "tracking.experiment_name=e",
            "data_dir=/elsewhere", "trainer.verbose=0", "trainer.epochs=9", "hardware=gpu", "dataset.download=false"]
    for override in same:
        assert resume.fingerprint(compose([override]), "tensorflow", "sha") == base, override
    for override in ["optimizer.learning_rate=0.01", "seed=1", "trainer.batch_size=64", "model.units=[64]",
                     "dataset.validation_size=100", "optimizer=adam"]:
        assert resume.fingerprint(compose([override]), "tensorflow", "sha") != base, override
    assert resume.fingerprint(compose([]), "jax", "sha") != base
    assert resume.fingerprint(compose([]), "tensorflow", "other data") != base


def test_backup_folder_survives_a_requeue(monkeypatch, tmp_path):
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_CLUSTER_NAME"):
        monkeypatch.delenv(var, raising=False)
    assert resume.backup_dir(None, tmp_path) == tmp_path / "backup"  # local: beside the run's outputs
    assert resume.backup_dir(str(tmp_path / "mine"), tmp_path) == tmp_path / "mine"
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    monkeypatch.setenv("SLURM_CLUSTER_NAME", "hpc")
    # Keyed on the job, not on Hydra's output folder (a requeued job gets a new one).
    assert resume.backup_dir(None, tmp_path / "first") == resume.backup_dir(None, tmp_path / "second")
    assert resume.backup_dir(None, tmp_path).name == "hpc-41"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "40")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert resume.backup_dir(None, tmp_path, job_num=3).name == "hpc-40_3-3"
