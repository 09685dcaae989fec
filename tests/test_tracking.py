"""What a training run records in a real SQLite MLflow store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from src.tracking import redaction, runs
from src.tracking import store as stores

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def test_three_epochs_give_exactly_one_point_per_epoch_at_steps_1_to_3(train_run):
    objective, run = train_run("trainer.epochs=3")
    client = MlflowClient()
    for key in EPOCH_METRICS:
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2, 3], key
    val_losses = [m.value for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert objective == pytest.approx(min(val_losses))
    for key in ("test_loss", "test_accuracy"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 1
    assert run.info.status == "FINISHED"


def test_params_tags_and_artifacts(train_run, store, tmp_path):
    _, run = train_run("trainer.epochs=1", "optimizer=adam")
    assert run.info.artifact_uri.startswith((Path(store[len("sqlite:///") :]).parent / "artifacts").as_uri())
    params, tags = run.data.params, run.data.tags
    assert params["model.name"] == "mnist_dense" and params["optimizer.name"] == "adam"
    assert params["optimizer.learning_rate"] == "0.001" and params["trainer.epochs"] == "1"
    assert params["model.units"] == "[512]" and params["hardware.accelerator"] == "cpu"
    assert (tags["model"], tags["dataset"], tags["optimizer"], tags["hardware"]) == ("mnist_dense", "mnist", "adam", "cpu")
    for key in ("mlflow.source.git.commit", "git.dirty", "backend", "backend.version", "keras", "host", "device", "overrides"):
        assert tags.get(key), key
    assert tags["device"].startswith("CPU")
    assert "optimizer=adam" in tags["overrides"]

    client = MlflowClient()
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "predictions.csv", "plots"} <= top  # the model: a logged model (tests/test_run_record.py)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/history.png"]
    mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path))
    predictions = (tmp_path / "predictions.csv").read_text().splitlines()
    assert predictions[0] == "index,label,predicted,confidence" and len(predictions) == 11
    assert "name: mnist_dense" in (tmp_path / "config.yaml").read_text()


def test_imdb_run_records_binary_predictions(train_run):
    _, run = train_run("model=imdb_dropout", "trainer.epochs=2")
    assert run.info.status == "FINISHED"
    assert run.data.params["model.rate"] == "0.5" and run.data.tags["dataset"] == "imdb"
    assert len(MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")) == 2


def test_run_that_raises_ends_failed_with_the_reason_and_its_metrics(train_run, experiment, monkeypatch):
    def broken_predictions(*args, **kwargs):
        raise RuntimeError("prediction broke")

    monkeypatch.setattr("src.training.record.predictions", broken_predictions)
    with pytest.raises(RuntimeError, match="prediction broke"):
        train_run("trainer.epochs=2")
    (run,) = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == "RuntimeError: prediction broke"
    assert len(MlflowClient().get_metric_history(run.info.run_id, "loss")) == 2  # kept
    assert "mnist_dense" not in {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}  # nothing half-done


def test_interrupt_ends_killed(store, experiment):
    experiment_id = stores.connect(store, experiment)
    with pytest.raises(KeyboardInterrupt):
        with runs.run(experiment_id, "interrupted", {}) as run:
            raise KeyboardInterrupt
    finished = MlflowClient().get_run(run.info.run_id)
    assert finished.info.status == "KILLED" and "KeyboardInterrupt" in finished.data.tags["failure_reason"]


def test_secret_looking_names_are_not_params():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"tracking": {"api_token": "abc", "experiment_name": "x"}, "db_password": "p", "seed": 1})
    assert redaction.params(cfg) == {"tracking.experiment_name": "x", "seed": "1"}
    assert "abc" not in redaction.config_yaml(cfg) and "db_password" not in redaction.config_yaml(cfg)
