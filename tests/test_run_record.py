"""What each run records beyond its metrics: dataset inputs, the Keras-flavour model, system metrics, UI links."""

from __future__ import annotations

import json

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from src.data import datasets as data
from src.training import batches
from src.tracking import inputs, outbox, store
from src.training import record
from tests.conftest import compose


def _system_metrics(run_id: str) -> set[str]:
    return {k for k in MlflowClient().get_run(run_id).data.metrics if k.startswith("system/")}


def test_run_records_its_data_model_and_system_metrics(train_run, data_dir, tmp_path, caplog):
    caplog.set_level("INFO")
    _, run = train_run("trainer.epochs=2", "tracking.system_metrics_interval=0.2")
    run_id = run.info.run_id

    # the data: one input per split, digest = the file's sha256, its size as profile and tag
    sha = data.sha256(data_dir / "mnist.npz")
    found = {d.dataset.name: d for d in MlflowClient().get_run(run_id).inputs.dataset_inputs}
    assert sorted(found) == ["mnist/test", "mnist/train", "mnist/val"]
    sizes = {"train": 500, "val": 100, "test": 200}  # 600 synthetic training samples, validation_size=100
    for split, samples in sizes.items():
        d = found[f"mnist/{split}"]
        tags = {t.key: t.value for t in d.tags}
        assert d.dataset.digest == sha[: inputs.DIGEST_CHARS] and tags["sha256"] == sha
        assert tags["mlflow.data.context"] == inputs.CONTEXTS[split] and tags["samples"] == str(samples)
        assert str(data_dir / "mnist.npz") in d.dataset.source
        assert f'"num_rows": {samples}' in d.dataset.profile

    # the model: a logged model of the run named after the model option, loaded by runs:/<id>/<name>, predicting
    # what the run predicted
    [logged] = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert logged.name == "mnist_dense" and logged.source_run_id == run_id
    # with its signature (input and output tensors): without one MLflow warns at every run's end
    signature = mlflow.models.get_model_info(f"runs:/{run_id}/mnist_dense").signature
    assert signature is not None and signature.inputs.to_dict() and signature.outputs.to_dict()
    assert "signature" not in caplog.text.lower()
    model = mlflow.keras.load_model(f"runs:/{run_id}/mnist_dense")  # Keras safe mode (the default) stays on
    ds = data.load(compose([f"data_dir={data_dir}", "dataset.sha256=null", "dataset.validation_size=100"]).dataset,
                   data_dir)
    recorded = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions.csv",
                                                   dst_path=str(tmp_path))
    again = record.predictions(model.predict(batches.first(ds.test, 10), verbose=0), ds.test.y[:10])
    assert again + "\n" == open(recorded).read()

    # system metrics, sampled every 0.2 s
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= _system_metrics(run_id)
    assert MlflowClient().get_metric_history(run_id, "system/cpu_utilization_percentage")

    # the links into the UI, at start and end
    links = store.ui_hint(mlflow.get_tracking_uri(), run.info.experiment_id, run_id)
    assert caplog.text.count(links.splitlines()[2].strip()) == 2
    assert f"#/experiments/{run.info.experiment_id}/runs/{run_id}?workflowType=machine_learning" in links


def test_no_system_metrics_and_no_model_when_off(train_run):
    # a short interval, so that only tracking.system_metrics=false can explain finding none
    _, run = train_run("tracking.system_metrics=false", "tracking.system_metrics_interval=0.2",
                       "tracking.log_model=false", "trainer.epochs=2")
    assert _system_metrics(run.info.run_id) == set()
    assert mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list") == []


def test_model_the_store_refused_is_kept_and_loads_after_import(store, experiment, tmp_path, monkeypatch):
    """An unreachable server at the end of a run: the MLflow model folder waits in the outbox, then loads."""
    import keras

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    run_id = MlflowClient(store).create_run(MlflowClient(store).create_experiment(experiment)).info.run_id
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")], name="tiny")
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    mlflow.set_tracking_uri(dead)
    kept = outbox.Outbox(tmp_path / outbox.FILENAME, MlflowClient(dead))
    record.log_model(model, kept, run_id)
    assert [json.loads(line)["op"] for line in kept.path.read_text().splitlines()] == ["artifacts"]
    assert list((tmp_path / "mlflow-pending-artifacts").glob("*/data/model.keras"))  # the file itself is kept

    mlflow.set_tracking_uri(store)
    assert outbox.replay(kept.path, MlflowClient(store)) == 1
    loaded = mlflow.keras.load_model(f"runs:/{run_id}/tiny")
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)



def test_dataset_inputs_the_store_refused_arrive_with_the_import(store, experiment, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    run_id = MlflowClient(store).create_run(MlflowClient(store).create_experiment(experiment)).info.run_id
    kept = outbox.Outbox(tmp_path / outbox.FILENAME, MlflowClient("http://127.0.0.1:9"))  # nothing listens there
    kept.log_inputs(run_id, inputs.records("mnist", tmp_path / "mnist.npz", "ab" * 32, {"train": 5, "test": 2}))
    assert kept.path.exists()
    assert outbox.replay(kept.path, MlflowClient(store)) == 1
    found = {d.dataset.name: d for d in MlflowClient(store).get_run(run_id).inputs.dataset_inputs}
    assert sorted(found) == ["mnist/test", "mnist/train"] and found["mnist/train"].dataset.digest == "ab" * 16
    assert {t.key: t.value for t in found["mnist/test"].tags}["samples"] == "2"
