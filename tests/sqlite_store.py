"""An empty, migrated SQLite MLflow store in a second instead of ~10 s.

MLflow creates a new store's tables through its whole chain of schema migrations. Tests that need a fresh
store in every process (mutmut reruns them once per mutant) copy an empty store migrated once per MLflow
version and kept in the temp folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient


def empty_store(folder: Path, current: bool = True) -> str:
    """A copy of the migrated empty store as `folder`/mlflow.db; returns its URI. With `current`, it becomes
    MLflow's current store (mlflow.set_tracking_uri, which also exports MLFLOW_TRACKING_URI)."""
    template = Path(tempfile.gettempdir()) / f"le5-tests-mlflow-{mlflow.__version__}-empty.db"
    if not template.exists():
        building = Path(tempfile.mkdtemp(dir=template.parent)) / "mlflow.db"
        MlflowClient(f"sqlite:///{building}").search_experiments()  # runs the migrations
        os.replace(building, template)  # atomic: a concurrent process sees no half-made template
        shutil.rmtree(building.parent, ignore_errors=True)
    database = Path(folder) / "mlflow.db"
    shutil.copyfile(template, database)
    uri = f"sqlite:///{database}"
    if current:
        mlflow.set_tracking_uri(uri)
    return uri
