"""Runs start the way users start them: a child process sees only the environment a shell would give it,
and `tracking.tracking_uri` wins over a different store exported as MLFLOW_TRACKING_URI."""

from __future__ import annotations

import os

import mlflow
from mlflow.tracking import MlflowClient

from conftest import base_overrides, child_env, run_cli


def test_child_env_drops_what_fixtures_exported(store, monkeypatch):
    mlflow.set_tracking_uri(store)  # what the store fixture does: it exports MLFLOW_TRACKING_URI
    monkeypatch.setenv("LE5_DATA_DIR", "/leaked")
    assert os.environ["MLFLOW_TRACKING_URI"] == store
    env = child_env({"MLFLOW_TRACKING_PASSWORD": "given"})
    assert not {k for k in env if k.startswith(("MLFLOW_", "LE5_"))} - {"MLFLOW_TRACKING_PASSWORD"}
    assert env["PATH"] == os.environ["PATH"] and env["MLFLOW_TRACKING_PASSWORD"] == "given"


def test_multirun_puts_parent_and_children_in_the_configured_store(data_dir, experiment, tmp_path):
    """MLFLOW_TRACKING_URI names another store: every run must still go to tracking.tracking_uri."""
    configured = f"sqlite:///{tmp_path / 'configured.db'}"
    exported = f"sqlite:///{tmp_path / 'exported.db'}"
    result = run_cli(
        ["-m", *base_overrides(data_dir, configured, experiment), f"hydra.sweep.dir={tmp_path / 'sweep'}",
         "tracking.log_model=false", "optimizer.learning_rate=0.001,0.01"],
        env={"MLFLOW_TRACKING_URI": exported},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(configured)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 3, [r.info.run_name for r in runs]
    assert all(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id for r in runs if r not in parents)
    assert all(r.info.status == "FINISHED" for r in runs)
    if (tmp_path / "exported.db").exists():  # nothing at all went to the exported store
        other = MlflowClient(exported)
        assert [e.name for e in other.search_experiments()] in ([], ["Default"])
        assert other.search_runs([e.experiment_id for e in other.search_experiments()]) == []


def test_every_hydra_plugin_of_the_project_is_installed_with_it():
    """A plugin folder missing from pyproject's packages works from the repository root (the current folder is on
    sys.path) and nowhere else: `hydra/launcher=fused` would be unknown to a job started in another folder."""
    import tomllib

    from conftest import ROOT

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    plugins = {f"hydra_plugins.{p.parent.name}" for p in (ROOT / "hydra_plugins").glob("*/__init__.py")}
    assert plugins and plugins <= listed, sorted(plugins - listed)
