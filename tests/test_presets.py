"""Every conf/experiment preset composes, validates and trains one tiny epoch on synthetic data.

Parametrised over the files, so a preset added without passing fails here. Sweep presets are run
at the first point of each swept key (hydra.sweeper.params), the way `-m` would start.
"""

from __future__ import annotations

import mlflow
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import ROOT, base_overrides, compose, train_composed
from src import config, train

PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def first_sweep_point(overrides: list[str]) -> list[str]:
    """`key=first value` for every key the preset sweeps; none for a single-run preset."""
    compose(overrides)
    params = HydraConfig.get().sweeper.get("params") or {}
    parser = OverridesParser.create()
    points = []
    for key, values in params.items():
        override = parser.parse_override(f"{key}={values}")
        if override.is_interval_sweep():  # an Optuna search space (hydra/sweeper=optuna): its low end
            points.append(f"{key}={override.value().start}")
        else:
            points.append(f"{key}={next(iter(override.sweep_string_iterator()))}" if override.is_sweep_override()
                          else f"{key}={values}")
    return points


def test_the_labs_steps_are_all_there():
    assert {"mnist_baseline", "mnist_epochs", "mnist_units", "mnist_optimizer", "mnist_learning_rate",
            "mnist_activation", "mnist_cnn", "imdb_baseline", "imdb_early_stopping", "imdb_dropout",
            "imdb_best"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_starts_with_what_it_studies_and_holds_fixed(name):
    text = (ROOT / "conf" / "experiment" / f"{name}.yaml").read_text()
    lines = text.splitlines()
    assert lines[0] == "# @package _global_"
    header = "\n".join(line for line in lines[1:] if line.startswith("#"))
    assert "Studies:" in header and "Holds fixed:" in header, f"{name}.yaml: say what it studies and holds fixed"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_trains_one_epoch(name, data_dir, store, tmp_path):
    experiment = f"test-preset-{name}"  # the `experiment` fixture's name has brackets, which overrides cannot hold
    overrides = [f"+experiment={name}", *base_overrides(data_dir, store, experiment)]
    cfg = compose([*overrides, *first_sweep_point(overrides)], output_dir=tmp_path)
    config.validate(cfg)
    assert cfg.tracking.experiment_name == experiment  # the command line wins over the preset

    train_composed(cfg)

    run = mlflow.search_runs(experiment_names=[experiment], output_format="list")[0]
    assert run.info.status == "FINISHED"
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
    assert run.data.tags["experiment"] == name  # the preset is recorded as a config choice


def test_sweep_presets_vary_exactly_one_thing():
    for name in ("mnist_epochs", "mnist_units", "mnist_optimizer", "mnist_learning_rate", "mnist_activation"):
        compose([f"+experiment={name}"])
        params = HydraConfig.get().sweeper.params
        assert len(params) == 1, f"{name} sweeps {dict(params)}"


def test_early_stopping_preset_restores_the_best_epoch(data_dir, store, tmp_path, monkeypatch):
    import keras

    made = []

    class Recorded(keras.callbacks.EarlyStopping):  # the real callback, remembered when train() makes it
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(keras.callbacks, "EarlyStopping", Recorded)
    overrides = ["+experiment=imdb_early_stopping", *base_overrides(data_dir, store, "test-preset-early-stopping")]
    train_composed(compose(overrides, output_dir=tmp_path))
    assert len(made) == 1
    assert (made[0].monitor, made[0].patience, made[0].restore_best_weights) == ("val_loss", 2, True)


def test_imdb_presets_differ_from_the_baseline_only_where_they_say():
    base = compose(["+experiment=imdb_baseline"])
    assert (base.model.units, base.trainer.epochs, base.trainer.batch_size) == ([16, 16], 20, 512)
    dropout = compose(["+experiment=imdb_dropout"])
    assert dropout.model.rate > 0 and dropout.model.units == base.model.units
    assert dropout.trainer.early_stopping_patience is None
