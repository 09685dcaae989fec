"""Keras backends: the choice (backend=, $KERAS_BACKEND, the default), no TensorFlow on the JAX path,
modules that do not train import no Keras, and config refusals before any backend is imported."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import mlflow
import pytest

from conftest import ROOT, base_overrides, run_cli
from src.training import backend
from src.tracking import provenance
from src.config import Backend

BLOCK_TENSORFLOW = """
import sys
class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError("import tensorflow made to fail by the test")
sys.meta_path.insert(0, _Refuse())
"""


def _runs(store: str, experiment: str):
    mlflow.set_tracking_uri(store)
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def test_choice_precedence(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert backend.choose(None) == (Backend.tensorflow, "the default (no backend= and no $KERAS_BACKEND)")
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert backend.choose(None) == (Backend.jax, "$KERAS_BACKEND=jax")
    assert backend.choose("torch")[0] == Backend.torch  # backend= wins over the environment
    monkeypatch.setenv("KERAS_BACKEND", "theano")
    with pytest.raises(backend.BackendError, match="not a backend this project runs"):
        backend.choose(None)


@pytest.mark.parametrize("model", ["mnist_dense", "imdb_dropout"])
def test_jax_trains_with_tensorflow_unimportable(model, data_dir, store, experiment, tmp_path):
    """The headline commands with backend=jax on a machine where `import tensorflow` fails."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(BLOCK_TENSORFLOW)
    args = [*base_overrides(data_dir, store, experiment), f"model={model}", "trainer.epochs=2", "backend=jax",
            f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_cli(args, env={"PYTHONPATH": str(hook)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Backend: jax (backend= in the config or on the command line)" in result.stdout
    [run] = _runs(store, experiment)
    assert run.info.status == "FINISHED"
    assert run.data.tags["backend"] == "jax" and run.data.tags["backend.version"] == provenance.version("jax")
    assert run.data.params["backend"] == "jax"


def test_keras_backend_variable_is_the_default(data_dir, store, experiment, tmp_path):
    args = [*base_overrides(data_dir, store, experiment), f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_cli(args, env={"KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Backend: jax ($KERAS_BACKEND=jax)" in result.stdout
    assert _runs(store, experiment)[0].data.tags["backend"] == "jax"


def test_a_model_saved_on_jax_loads_in_this_process(data_dir, store, experiment, tmp_path):
    import keras
    import numpy as np

    args = [*base_overrides(data_dir, store, experiment), "backend=jax", f"hydra.run.dir={tmp_path / 'run'}"]
    assert run_cli(args).returncode == 0
    [run] = _runs(store, experiment)
    model = mlflow.keras.load_model(f"runs:/{run.info.run_id}/mnist_dense")  # MLflow's Keras flavour, safe mode on
    assert isinstance(model, keras.Model)
    x = np.zeros((2, 28, 28), dtype="uint8")
    assert model.predict(x, verbose=0).shape == (2, 10)


@pytest.mark.parametrize("module", ["src.compare", "src.tracking.outbox", "src.config", "src.data.datasets", "src.tracking.store", "src.tracking.runs",
                                    "src.sweeps.manifest", "src.tracking.names", "src.sweeps.sweep"])
def test_modules_that_do_not_train_import_no_keras(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("override,code,message", [
    ("trainer.epocs=3", 1, "Key 'epocs' not in 'TrainerConfig'"),
    ("trainer.epochs=0", 2, "trainer.epochs=0: must be >= 1"),
    ("backend=theano", 1, "Invalid value 'theano'"),
])
def test_config_refusals_print_no_backend_start_up_lines(override, code, message):
    result = subprocess.run([sys.executable, "-m", "src.train", override], cwd=ROOT, capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert result.returncode == code and message in result.stderr, result.stderr
    output = result.stdout + result.stderr
    for chatter in ("tensorflow/", "cuInit", "oneDNN", "E0000", "I0000", "absl", "cudart"):
        assert chatter not in output, output


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed (pip install -e '.[torch]')")
def test_torch_trains_the_headline_command(data_dir, store, experiment, tmp_path):
    args = [*base_overrides(data_dir, store, experiment), "model=imdb_dropout", "backend=torch",
            f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = _runs(store, experiment)
    assert run.info.status == "FINISHED" and run.data.tags["backend"] == "torch"


def test_compare_shows_the_backend_when_runs_differ_in_it(store, experiment):
    from mlflow.tracking import MlflowClient

    from src import compare

    client = MlflowClient(store)
    experiment_id = client.create_experiment(experiment)
    for name in ("tensorflow", "jax"):
        run = client.create_run(experiment_id, tags={"backend": name})
        client.log_param(run.info.run_id, "backend", name)
        client.log_param(run.info.run_id, "seed", "42")
        client.set_terminated(run.info.run_id)
    summaries = [compare.summarise(client, r) for r in compare.resolve(client, [experiment])]
    header, rows = compare.table(summaries)
    assert "backend" in header and "seed" not in header
    assert sorted(row[header.index("backend")] for row in rows) == ["jax", "tensorflow"]
