"""`python -m src.train` as users run it: a run, a local multirun, and refusals before training."""

from __future__ import annotations

import mlflow
import pytest

from conftest import base_overrides, run_cli


@pytest.fixture
def cli_args(data_dir, store, experiment, tmp_path):
    return [*base_overrides(data_dir, store, experiment), f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"]


def _runs(experiment):
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def test_imdb_dropout_from_the_command_line(cli_args, experiment):
    result = run_cli([*cli_args, "model=imdb_dropout"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Training on CPU" in result.stdout and "val_accuracy:" in result.stdout  # Keras's epoch line
    # TensorFlow's C++ start-up lines (printed twice before its log level applies) are not in the run's log
    assert "oneDNN custom operations" not in result.stderr and "cudart_stub" not in result.stderr, result.stderr
    assert "absl::InitializeLog" not in result.stderr
    # nor MLflow's system-metrics monitor saying it started, stopped and skips GPU metrics
    assert "system metrics" not in result.stderr.lower(), result.stderr
    # the UI command once at the start and once at the end, not twice at the end
    assert result.stdout.count("mlflow ui --backend-store-uri") == 2
    (run,) = _runs(experiment)
    assert run.info.status == "FINISHED" and run.data.tags["model"] == "imdb_dropout"
    assert run.info.run_name == "imdb_dropout"  # not every override, store URI included
    assert run.info.run_id in result.stdout and "mlflow ui --backend-store-uri" in result.stdout


def test_local_multirun_makes_one_finished_run_per_point(cli_args, experiment):
    result = run_cli(["-m", *cli_args, "optimizer.learning_rate=0.01,0.001"])
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [r for r in _runs(experiment) if "optimizer.learning_rate" in r.data.params]
    assert sorted(r.data.params["optimizer.learning_rate"] for r in runs) == ["0.001", "0.01"]
    # named after what each job trains: the model and its own overrides, no store URI or folder
    assert sorted(r.info.run_name for r in runs) == [f"mnist_dense optimizer.learning_rate={lr}" for lr in ("0.001", "0.01")]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_typo_fails_at_composition_naming_the_key(cli_args, experiment):
    result = run_cli([*cli_args, "trainer.epocs=3"])
    assert result.returncode != 0
    assert "Could not override 'trainer.epocs'" in result.stderr and "Key 'epocs' not in 'TrainerConfig'" in result.stderr
    assert _runs(experiment) == []


def test_model_dataset_mismatch_is_refused_before_a_run_exists(cli_args, experiment):
    result = run_cli([*cli_args, "model=imdb_dense", "dataset=mnist"])
    assert result.returncode == 2
    assert "model=imdb_dense takes sequences, but dataset=mnist gives images" in result.stderr
    assert "Traceback" not in result.stderr
    assert _runs(experiment) == []


def test_a_batch_larger_than_the_training_split_is_refused_with_its_size(cli_args, experiment):
    """trainer.batch_size=100000000 trained one step per epoch, silently (synthetic MNIST: 500 training samples)."""
    result = run_cli([*cli_args, "backend=jax", "trainer.batch_size=100000000"])
    assert result.returncode == 2, result.stderr[-3000:]
    assert "trainer.batch_size=100000000 is larger than the training split (500 samples)" in result.stderr
    assert "Fix: trainer.batch_size <= 500" in result.stderr and "Traceback" not in result.stderr
    assert _runs(experiment) == []
