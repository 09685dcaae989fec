"""The presets' targets on the real MNIST/IMDB files (docs/results.md): slow, opt-in, skipped without the data.

    LE5_REAL_DATA_DIR=/path/to/data python -m pytest -m realdata tests/test_presets_realdata.py
"""

from __future__ import annotations

import mlflow
import pytest

from conftest import REAL_DATA, compose, train_composed
from src import train

TARGETS = {  # preset: minimum test accuracy (the targets; docs/results.md has the measured values)
    "mnist_baseline": 0.975,
    "imdb_best": 0.895,
}


@pytest.mark.realdata
@pytest.mark.parametrize("preset", sorted(TARGETS))
def test_preset_reaches_its_target_on_the_real_data(preset, store, tmp_path):
    dataset = "mnist" if preset.startswith("mnist") else "imdb"
    if not (REAL_DATA / f"{dataset}.npz").is_file():
        pytest.skip(f"{REAL_DATA / f'{dataset}.npz'} is absent (set LE5_REAL_DATA_DIR)")
    experiment = f"realdata-{preset}"
    cfg = compose(
        [f"+experiment={preset}", f"data_dir={REAL_DATA}", "dataset.download=false", f"tracking.tracking_uri={store}",
         f"tracking.experiment_name={experiment}", "tracking.log_model=false", "trainer.verbose=0"],
        output_dir=tmp_path,
    )
    train_composed(cfg)
    run = mlflow.search_runs(experiment_names=[experiment], output_format="list")[0]
    assert run.data.metrics["test_accuracy"] >= TARGETS[preset]
