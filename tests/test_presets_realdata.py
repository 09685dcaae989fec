"""The presets' targets on the real MNIST/IMDB files (docs/results.md): slow, opt-in, skipped without the data.

    LE5_REAL_DATA_DIR=/path/to/data python -m pytest -m realdata tests/test_presets_realdata.py
"""

from __future__ import annotations

import statistics

import mlflow
import pytest

from conftest import REAL_DATA, compose, train_composed

TARGETS = {  # preset: minimum test accuracy (the targets; docs/results.md has the measured values)
    "mnist_baseline": 0.975,
    "imdb_best": 0.895,
}
# The median over these seeds must reach the target. MNIST's last epoch swings by a few tenths of a point with the
# seed and the backend (JAX at seed 42: 0.9730 after a 0.9766 validation peak; seeds 43, 44: 0.9758, 0.9784);
# imdb_best restores its best epoch (early stopping), so one seed says enough for its 5 minutes.
SEEDS = {"mnist_baseline": (42, 43, 44), "imdb_best": (42,)}


@pytest.mark.realdata
# imdb_best (230,000 columns, up to 20 epochs) takes about 5 min on 2 idle cores, and over 600 s (the suite's
# limit) under a load average of 6-12 on JAX: room for three times its idle time.
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("preset", sorted(TARGETS))
def test_preset_reaches_its_target_on_the_real_data(preset, store, tmp_path):
    dataset = "mnist" if preset.startswith("mnist") else "imdb"
    if not (REAL_DATA / f"{dataset}.npz").is_file():
        pytest.skip(f"{REAL_DATA / f'{dataset}.npz'} is absent (set LE5_DATA_DIR or LE5_REAL_DATA_DIR)")
    accuracies = []
    for seed in SEEDS[preset]:
        experiment = f"realdata-{preset}-{seed}"
        cfg = compose(
            [f"+experiment={preset}", f"data_dir={REAL_DATA}", "dataset.download=false", f"tracking.tracking_uri={store}",
             f"tracking.experiment_name={experiment}", "tracking.log_model=false", "trainer.verbose=0", f"seed={seed}"],
            output_dir=tmp_path / str(seed),
        )
        train_composed(cfg)
        run = mlflow.search_runs(experiment_names=[experiment], output_format="list")[0]
        accuracies.append(run.data.metrics["test_accuracy"])
    print(f"{preset} test accuracy, seeds {SEEDS[preset]}: {', '.join(f'{a:.4f}' for a in accuracies)}")
    assert statistics.median(accuracies) >= TARGETS[preset]
    if preset == "mnist_baseline":  # seed 42 is `python -m src.train` as it stands: the lab's 97%
        assert accuracies[0] >= 0.97
