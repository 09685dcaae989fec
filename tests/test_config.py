"""Composition: every option of every group, the schema's refusals, and the range checks."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from conftest import ROOT, compose
from src import config

# Derived from conf/, never typed by hand: a new option is composed and validated by the tests below.
GROUPS = {g: sorted(p.stem for p in (ROOT / "conf" / g).glob("*.yaml")) for g in ("dataset", "model", "optimizer", "hardware")}


@pytest.mark.parametrize(
    "group,option", [(g, o) for g, options in GROUPS.items() for o in options], ids=lambda v: str(v)
)
def test_every_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if group == "dataset":  # the default model must take the dataset: pick the first model that does
        kind = config.options("dataset")[option]["kind"]
        overrides.append("model=" + next(m for m, y in config.options("model").items() if y["accepts"] == kind))
    cfg = compose(overrides)
    assert cfg[group].name == option
    config.validate(cfg, {group: option})


def test_every_group_has_options_and_the_lab_defaults_exist():
    assert all(GROUPS.values()), GROUPS
    assert {"mnist", "imdb"} <= set(GROUPS["dataset"])
    assert {"mnist_dense", "imdb_dense", "imdb_dropout"} <= set(GROUPS["model"])


def test_every_model_yaml_names_a_builder():
    from src import models

    assert set(GROUPS["model"]) <= set(models.MODELS)


def test_default_is_the_labs_mnist_baseline():
    cfg = compose([])
    assert (cfg.model.name, cfg.dataset.name, cfg.optimizer.name) == ("mnist_dense", "mnist", "rmsprop")
    assert list(cfg.model.units) == [512]
    assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (5, 128)


@pytest.mark.parametrize("model", ["imdb_dense", "imdb_dropout"])
def test_imdb_model_selects_imdb_with_the_labs_defaults(model):
    cfg = compose([f"model={model}"])
    assert cfg.dataset.name == "imdb" and cfg.dataset.num_words == 10000 and cfg.dataset.validation_size == 10000
    assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (20, 512)
    assert cfg.model.rate == (0.5 if model == "imdb_dropout" else 0.0)


def test_command_line_beats_the_models_trainer_defaults():
    cfg = compose(["model=imdb_dense", "trainer.epochs=3"])
    assert cfg.trainer.epochs == 3 and cfg.trainer.batch_size == 512


def test_misspelled_key_fails_at_composition_naming_it():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["trainer.epocs=3"])
    assert "epocs" in str(err.value.__cause__ or err.value)


def test_wrong_type_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["trainer.epochs=abc"])
    assert isinstance(err.value.__cause__, ValidationError)


def test_unknown_enum_value_lists_the_choices():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["hardware.accelerator=tpu"])
    assert "auto" in str(err.value.__cause__) and "gpu" in str(err.value.__cause__)


def test_unknown_group_option_lists_the_available_ones():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["model=resnet"])
    assert "mnist_dense" in str(err.value) and "imdb_dropout" in str(err.value)


def test_explicit_model_dataset_mismatch_is_refused_naming_the_compatible_options():
    cfg = compose(["model=imdb_dense", "dataset=mnist"])
    with pytest.raises(config.ConfigError, match="model=imdb_dense takes sequences, but dataset=mnist gives images") as err:
        config.validate(cfg)
    message = str(err.value)
    assert "choose a dataset for imdb_dense: imdb" in message
    assert "a model for mnist: mnist_cnn, mnist_dense" in message


def test_a_shape_mismatch_is_refused_too():
    cfg = compose(["dataset.shape=[32,32,3]"])
    with pytest.raises(config.ConfigError, match=r"takes images of shape \[28, 28\], but dataset=mnist gives images of shape \[32, 32, 3\]"):
        config.validate(cfg)


def test_a_yaml_whose_name_differs_from_its_option_is_refused():
    cfg = compose(["model.name=mnist_dense"])
    config.validate(cfg, {"model": "mnist_dense"})
    with pytest.raises(config.ConfigError, match="conf/model/mlp.yaml says model.name='mnist_dense'"):
        config.validate(cfg, {"model": "mlp"})


def test_backend_is_checked_at_composition():
    assert compose(["backend=jax"]).backend.value == "jax"
    with pytest.raises(ConfigCompositionException) as err:
        compose(["backend=theano"])
    assert "tensorflow" in str(err.value.__cause__) and "jax" in str(err.value.__cause__)


def test_experiment_defaults_to_the_dataset_name():
    assert config.experiment_name(compose([])) == "mnist"
    assert config.experiment_name(compose(["model=imdb_dropout"])) == "imdb"
    assert config.experiment_name(compose(["tracking.experiment_name=mine"])) == "mine"


def test_metric_direction():
    assert config.best([0.3, 0.1, 0.2], "val_loss") == 0.1
    assert config.best([0.3, 0.1, 0.2], "val_accuracy") == 0.3
    assert config.lower_is_better("loss") and not config.lower_is_better("accuracy")


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("optimizer.learning_rate=0", "optimizer.learning_rate"),
        ("optimizer.learning_rate=-1e-3", "optimizer.learning_rate"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("model.rate=1.0", "model.rate"),
        ("model.rate=-0.1", "model.rate"),
        ("trainer.monitor=val_acc", "trainer.monitor"),
    ],
)
def test_out_of_range_values_are_refused(override, fragment):
    cfg = compose([override])
    with pytest.raises(config.ConfigError, match=fragment.replace(".", r"\.")):
        config.validate(cfg)

